"""PromoteOperator and kept_versions: stable moves to the candidate, older versions unload, registry records it."""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowFailException

from tests.unit.operators.conftest import MODEL, TARGET, FakeRegistry, FakeService, exported, inject, make_context
from tfdeploy.core.errors import ServingReloadError
from tfdeploy.core.models_config import ServedModel
from tfdeploy.core.states import ModelState
from tfdeploy.operators.promote import PromoteOperator, kept_versions


@pytest.mark.parametrize(
    ("loaded", "candidate", "keep", "kept"),
    [
        ((1, 2), 2, 2, (1, 2)),
        ((1, 2, 3), 3, 2, (2, 3)),
        ((1, 2, 3), 3, 5, (1, 2, 3)),
        ((1, 2, 3), 3, 1, (3,)),
        ((2, 5, 7), 2, 2, (2, 7)),  # the candidate is the oldest: still kept, with the newest other
        ((2, 5, 7), 2, 1, (2,)),
        ((2, 5, 7), 2, 3, (2, 5, 7)),
        ((5,), 3, 2, (3, 5)),  # not loaded yet: added
        ((), 4, 2, (4,)),
    ],
)
def test_kept_versions(loaded: tuple, candidate: int, keep: int, kept: tuple) -> None:
    assert kept_versions(loaded, candidate, keep) == kept


@pytest.mark.parametrize("keep", [1, 2, 3, 4])
def test_kept_versions_never_drops_the_candidate(keep: int) -> None:
    for candidate in range(1, 7):
        kept = kept_versions((1, 2, 3, 4, 5, 6), candidate, keep)
        assert candidate in kept
        assert len(kept) == keep
        assert list(kept) == sorted(kept)


def promote(registry: FakeRegistry, service: FakeService, **kwargs) -> PromoteOperator:
    return inject(PromoteOperator(task_id="promote", model_name=MODEL, **kwargs), registry=registry, service=service)


def context() -> dict:
    return make_context("promote", {"export": exported(3)})


def canary_beside(registry: FakeRegistry, service: FakeService, *loaded: int) -> None:
    """v3 canary beside stable v2 (and older versions ``loaded``)."""
    for version in loaded:
        registry.seed(version, "superseded")
    registry.seed(2, "production")
    registry.seed(3, "canary")
    registry.deployments[(MODEL, TARGET, "canary")] = 3
    registry.deployments[(MODEL, TARGET, "stable")] = 2
    service.serve(*loaded, 2, 3, stable=2, canary=3)


def test_stable_moves_to_the_candidate(registry: FakeRegistry, service: FakeService) -> None:
    canary_beside(registry, service)

    result = promote(registry, service).execute(context())

    assert result == {"model": MODEL, "version": 3, "loaded": [2, 3], "unloaded": []}
    assert service.config[MODEL] == ServedModel(MODEL, f"/models/{MODEL}", (2, 3), {"stable": 3})
    assert registry.transitions() == [(2, "production", "superseded"), (3, "canary", "production")]
    assert registry.deployments == {(MODEL, TARGET, "stable"): 3}
    [cleared] = registry.writes_of("clear_deployment")
    assert (cleared.args["label"], cleared.args["reason"]) == ("canary", "promoted to stable")


def test_versions_beyond_keep_unload_oldest_first(registry: FakeRegistry, service: FakeService) -> None:
    canary_beside(registry, service, 1)

    result = promote(registry, service, keep_versions=2).execute(context())

    assert (result["loaded"], result["unloaded"]) == ([2, 3], [1])
    assert (MODEL, 1) not in service.staged
    assert {(MODEL, 2), (MODEL, 3)} <= service.staged


def test_keep_one_leaves_only_the_candidate(registry: FakeRegistry, service: FakeService) -> None:
    canary_beside(registry, service, 1)

    result = promote(registry, service, keep_versions=1).execute(context())

    assert (result["loaded"], result["unloaded"]) == ([3], [1, 2])


def test_candidate_older_than_the_others_is_never_dropped(registry: FakeRegistry, service: FakeService) -> None:
    registry.seed(5, "production")
    registry.seed(3, "canary")
    service.serve(3, 4, 5, stable=5, canary=3)

    result = promote(registry, service, keep_versions=2).execute(context())

    assert result["loaded"] == [3, 5]
    assert dict(service.config[MODEL].labels) == {"stable": 3}


def test_rerun_changes_nothing_again(registry: FakeRegistry, service: FakeService) -> None:
    canary_beside(registry, service, 1)

    first = promote(registry, service).execute(context())
    config = dict(service.config)
    second = promote(registry, service).execute(context())

    assert second["loaded"] == first["loaded"] and second["unloaded"] == []
    assert service.config == config
    assert [c.phases for c in service.changes] == [1, 0]
    assert registry.transitions() == [(2, "production", "superseded"), (3, "canary", "production")]
    assert registry.deployments == {(MODEL, TARGET, "stable"): 3}


@pytest.mark.parametrize("served", [None, (1, 2)])
def test_candidate_not_served_fails(registry: FakeRegistry, service: FakeService, served: tuple | None) -> None:
    registry.seed(2, "production")
    registry.seed(3, "canary")
    if served:
        service.serve(*served, stable=2)

    with pytest.raises(AirflowFailException, match=f"v3 is not served on {TARGET}: roll it out first"):
        promote(registry, service).execute(context())
    assert registry.writes == []


def test_serving_failure_records_nothing(registry: FakeRegistry, service: FakeService) -> None:
    canary_beside(registry, service)
    service.fail_change = ServingReloadError("reload failed", code="UNAVAILABLE", details="down")

    with pytest.raises(ServingReloadError):
        promote(registry, service).execute(context())
    assert registry.writes == []
    assert registry.state(3) == ModelState.CANARY


def test_keep_versions_checks(registry: FakeRegistry, service: FakeService) -> None:
    with pytest.raises(ValueError, match="keep_versions must be >= 1"):
        PromoteOperator(task_id="promote", model_name=MODEL, keep_versions=0)
    canary_beside(registry, service)
    with pytest.raises(TypeError, match="keep_versions must be int"):
        promote(registry, service, keep_versions="2").execute(context())
    op = promote(registry, service, keep_versions="{{ params.keep_versions }}")
    op.keep_versions = 0  # as rendered
    with pytest.raises(AirflowFailException, match="keep_versions must be >= 1"):
        op.execute(context())
    assert service.calls["change"] == 0
    assert registry.writes == []
