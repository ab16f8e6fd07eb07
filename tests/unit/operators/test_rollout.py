"""RolloutOperator: stage the candidate, serve it beside stable labelled canary, record it (fakes only)."""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from tests.unit.operators.conftest import (
    MODEL,
    TARGET,
    FakeModelStore,
    FakeRegistry,
    FakeService,
    exported,
    inject,
    make_context,
)
from tfdeploy.core.errors import ChecksumMismatch, ServingReloadError, VersionNotAvailable
from tfdeploy.core.models_config import ServedModel
from tfdeploy.core.states import ModelState
from tfdeploy.operators import rollout as rollout_module
from tfdeploy.operators.rollout import RolloutOperator

CANDIDATE_SHA = "ee" * 32


@pytest.fixture
def fake_store(monkeypatch: pytest.MonkeyPatch, store: FakeModelStore) -> FakeModelStore:
    monkeypatch.setattr(rollout_module, "ModelStoreHook", store)
    return store


def rollout(registry: FakeRegistry, service: FakeService) -> RolloutOperator:
    return inject(RolloutOperator(task_id="rollout", model_name=MODEL), registry=registry, service=service)


def context(action: str = "release") -> dict:
    return make_context("rollout", {"export": exported(2, action=action)})


def with_stable(registry: FakeRegistry, service: FakeService) -> None:
    registry.seed(1, "production")
    registry.seed(2, "validated", manifest_sha256=CANDIDATE_SHA)
    service.serve(1, stable=1)


def test_candidate_served_beside_stable_labelled_canary(
    registry: FakeRegistry, service: FakeService, fake_store: FakeModelStore
) -> None:
    with_stable(registry, service)

    result = rollout(registry, service).execute(context())

    assert result == {"model": MODEL, "version": 2, "target": TARGET, "stable": 1}
    [staged] = service.stage_calls
    assert (staged["store"], staged["model"], staged["version"], staged["sha"]) == (fake_store, MODEL, 2, CANDIDATE_SHA)
    assert fake_store.constructed == [(("webhdfs_default",), {})]
    assert service.config[MODEL] == ServedModel(MODEL, f"/models/{MODEL}", (1, 2), {"stable": 1, "canary": 2})
    [change] = service.changes
    assert change.phases == 2  # the canary label waits until v2 is AVAILABLE
    assert registry.transitions() == [(2, "validated", "canary")]
    assert registry.deployments == {(MODEL, TARGET, "canary"): 2}
    assert registry.state(1) == ModelState.PRODUCTION


def test_first_deployment_serves_the_candidate_alone(
    registry: FakeRegistry, service: FakeService, fake_store: FakeModelStore
) -> None:
    registry.seed(2, "validated")

    result = rollout(registry, service).execute(context())

    assert result["stable"] is None
    assert service.config[MODEL].versions == (2,)
    assert dict(service.config[MODEL].labels) == {"canary": 2}
    assert registry.transitions() == [(2, "validated", "canary")]


def test_rerun_when_already_canary_changes_nothing(
    registry: FakeRegistry, service: FakeService, fake_store: FakeModelStore
) -> None:
    with_stable(registry, service)

    first = rollout(registry, service).execute(context())
    config = dict(service.config)
    second = rollout(registry, service).execute(context())

    assert first == second
    assert service.config == config
    assert [c.phases for c in service.changes] == [2, 0]
    assert registry.transitions() == [(2, "validated", "canary")]
    assert registry.deployments == {(MODEL, TARGET, "canary"): 2}


def test_rolled_back_version_may_be_tried_again(
    registry: FakeRegistry, service: FakeService, fake_store: FakeModelStore
) -> None:
    registry.seed(1, "production")
    registry.seed(2, "rolled_back")
    service.serve(1, stable=1)

    rollout(registry, service).execute(context())

    assert registry.transitions() == [(2, "rolled_back", "canary")]


def test_noop_release_skips(registry: FakeRegistry, service: FakeService, fake_store: FakeModelStore) -> None:
    registry.seed(2, "production")

    with pytest.raises(AirflowSkipException, match="test"):
        rollout(registry, service).execute(context(action="noop"))
    assert service.calls == {}
    assert registry.writes == []


def test_version_in_production_skips(registry: FakeRegistry, service: FakeService, fake_store: FakeModelStore) -> None:
    registry.seed(2, "production")

    with pytest.raises(AirflowSkipException, match="already in production"):
        rollout(registry, service).execute(context())
    assert service.calls == {}
    assert registry.writes == []


@pytest.mark.parametrize("state", ["rejected", "superseded", "registered", "archived"])
def test_version_not_validated_fails(
    registry: FakeRegistry, service: FakeService, fake_store: FakeModelStore, state: str
) -> None:
    registry.seed(2, state)

    with pytest.raises(AirflowFailException, match=f"v2 is {state}; only a validated version"):
        rollout(registry, service).execute(context())
    assert service.calls == {}
    assert registry.writes == []


@pytest.mark.parametrize(
    "error",
    [
        VersionNotAvailable("v2 did not load", model=MODEL, version=2, state="END", error_message="bad graph"),
        ServingReloadError("reload refused", code="INVALID_ARGUMENT", details="bad config"),
    ],
)
def test_serving_failure_records_nothing(
    registry: FakeRegistry, service: FakeService, fake_store: FakeModelStore, error: Exception
) -> None:
    with_stable(registry, service)
    before = dict(service.config)
    service.fail_change = error

    with pytest.raises(type(error)):
        rollout(registry, service).execute(context())
    assert service.config == before
    assert registry.writes == []
    assert registry.state(2) == ModelState.VALIDATED


def test_staging_failure_changes_nothing(
    registry: FakeRegistry, service: FakeService, fake_store: FakeModelStore
) -> None:
    with_stable(registry, service)
    service.fail_stage = ChecksumMismatch("variables.index: sha256 differs", path="variables/variables.index")

    with pytest.raises(ChecksumMismatch):
        rollout(registry, service).execute(context())
    assert service.calls["change"] == 0
    assert registry.writes == []


def test_missing_export_result_fails(registry: FakeRegistry, service: FakeService) -> None:
    with pytest.raises(RuntimeError, match="nothing to release"):
        rollout(registry, service).execute(make_context("rollout"))
