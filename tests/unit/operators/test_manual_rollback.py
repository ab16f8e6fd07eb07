"""ManualRollbackOperator: a superseded version back in production by hand, with a reason (fakes only)."""

from __future__ import annotations

from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException

from tests.unit.operators.conftest import (
    MODEL,
    TARGET,
    FakeModelStore,
    FakeRegistry,
    FakeRouter,
    FakeService,
    inject,
    make_context,
)
from tfdeploy.core.errors import ChecksumMismatch, NotFound
from tfdeploy.core.models_config import ServedModel
from tfdeploy.core.states import ModelState
from tfdeploy.operators import manual_rollback as manual_module
from tfdeploy.operators.manual_rollback import ManualRollbackOperator

V1_SHA = "11" * 32
REASON = "manual rollback to v1: p99 regression"


@pytest.fixture
def fake_store(monkeypatch: pytest.MonkeyPatch, store: FakeModelStore) -> FakeModelStore:
    monkeypatch.setattr(manual_module, "ModelStoreHook", store)
    return store


def manual(registry: FakeRegistry, service: FakeService, **kwargs: Any) -> ManualRollbackOperator:
    kwargs.setdefault("version", 1)
    kwargs.setdefault("reason", "p99 regression")
    op = ManualRollbackOperator(task_id="rollback_to", model_name=MODEL, **kwargs)
    # no canary pool or router injected: using one would fail the test (conftest's guard)
    return inject(op, registry=registry, service=service)


def context() -> dict:
    return make_context("rollback_to", dag_id="model_rollback")


def promoted_v2(registry: FakeRegistry, service: FakeService, *loaded: int) -> None:
    registry.seed(1, "superseded", manifest_sha256=V1_SHA)
    registry.seed(2, "production")
    registry.deployments[(MODEL, TARGET, "stable")] = 2
    service.serve(*loaded, 2, stable=2)


@pytest.mark.parametrize("loaded", [(), (1,)])
def test_superseded_version_back_in_production(
    registry: FakeRegistry, service: FakeService, fake_store: FakeModelStore, loaded: tuple
) -> None:
    promoted_v2(registry, service, *loaded)

    result = manual(registry, service).execute(context())

    assert result == {"model": MODEL, "version": 1, "previous": 2, "changed": True}
    [staged] = service.stage_calls
    assert (staged["store"], staged["version"], staged["sha"]) == (fake_store, 1, V1_SHA)
    # v1 alone: the rolled-back v2 leaves the stable pool, so every unversioned call reaches v1
    assert service.config == {MODEL: ServedModel(MODEL, f"/models/{MODEL}", (1,), {"stable": 1})}
    [change] = service.changes
    assert change.dropped == [2]
    assert (MODEL, 2) not in service.staged and (MODEL, 1) in service.staged
    assert service.calls["label_version"] == 1
    assert registry.transitions() == [(2, "production", "rolled_back"), (1, "superseded", "production")]
    assert {w.args["reason"] for w in registry.writes_of("transition")} == {REASON}
    [deployment] = registry.writes_of("set_deployment")
    assert (deployment.args["label"], deployment.args["version"], deployment.args["reason"]) == ("stable", 1, REASON)
    assert deployment.args["context"]["dagId"] == "model_rollback"
    assert registry.deployments == {(MODEL, TARGET, "stable"): 1}


def test_canary_pool_and_router_are_not_used(
    registry: FakeRegistry,
    service: FakeService,
    canary: FakeService,
    router: FakeRouter,
    fake_store: FakeModelStore,
) -> None:
    promoted_v2(registry, service, 1)
    canary.serve(3, canary=3)
    op = inject(manual(registry, service), canary=canary, router=router)

    op.execute(context())

    assert canary.calls == {} and router.calls == []
    assert canary.config[MODEL].versions == (3,)


def test_every_other_loaded_version_unloads(
    registry: FakeRegistry, service: FakeService, fake_store: FakeModelStore
) -> None:
    registry.seed(2, "superseded")
    registry.seed(3, "production")
    service.serve(1, 2, 3, stable=3)

    manual(registry, service, version=2).execute(context())

    assert service.config[MODEL] == ServedModel(MODEL, f"/models/{MODEL}", (2,), {"stable": 2})
    assert service.changes[0].dropped == [1, 3]
    assert {(MODEL, 1), (MODEL, 3)}.isdisjoint(service.staged)


def test_rerun_is_a_noop(registry: FakeRegistry, service: FakeService, fake_store: FakeModelStore) -> None:
    promoted_v2(registry, service, 1)
    manual(registry, service).execute(context())
    writes, config = list(registry.writes), dict(service.config)

    result = manual(registry, service).execute(context())

    assert result == {"model": MODEL, "version": 1, "previous": 1, "changed": False}
    assert registry.writes == writes
    assert service.config == config
    assert service.calls["stage"] == 1 and service.calls["change"] == 1


@pytest.mark.parametrize(
    "reason",
    [
        "",
        "   ",
        None,
    ],
)
def test_reason_is_required(
    registry: FakeRegistry, service: FakeService, fake_store: FakeModelStore, reason: str | None
) -> None:
    promoted_v2(registry, service)
    op = manual(registry, service)
    op.reason = reason  # as rendered from the trigger form

    with pytest.raises(AirflowFailException, match="needs a reason"):
        op.execute(context())
    assert service.calls == {}
    assert registry.writes == []


@pytest.mark.parametrize("state", ["registered", "validated", "canary", "rolled_back", "rejected", "archived"])
def test_only_a_superseded_version_can_be_rolled_back_to(
    registry: FakeRegistry, service: FakeService, fake_store: FakeModelStore, state: str
) -> None:
    registry.seed(1, state)
    registry.seed(2, "production")
    service.serve(2, stable=2)

    with pytest.raises(AirflowFailException, match=f"v1 is {state}: only a version that was in production"):
        manual(registry, service).execute(context())
    assert service.calls == {}
    assert registry.writes == []


def test_stable_answering_from_another_version_fails(
    registry: FakeRegistry, service: FakeService, fake_store: FakeModelStore
) -> None:
    promoted_v2(registry, service, 1)
    service.label_answers["stable"] = 2

    with pytest.raises(AirflowFailException, match="stable answers from v2, not v1"):
        manual(registry, service).execute(context())
    assert registry.writes == []
    assert registry.state(2) == ModelState.PRODUCTION


def test_staging_failure_changes_nothing(
    registry: FakeRegistry, service: FakeService, fake_store: FakeModelStore
) -> None:
    promoted_v2(registry, service)
    service.fail_stage = ChecksumMismatch("saved_model.pb differs", path="saved_model.pb")

    with pytest.raises(ChecksumMismatch):
        manual(registry, service).execute(context())
    assert service.calls["change"] == 0
    assert registry.writes == []


def test_version_of_the_wrong_type_is_refused(
    registry: FakeRegistry, service: FakeService, fake_store: FakeModelStore
) -> None:
    promoted_v2(registry, service)

    with pytest.raises(TypeError, match="version must be int"):
        manual(registry, service, version="1").execute(context())
    assert registry.writes == []


def test_unknown_version(registry: FakeRegistry, service: FakeService, fake_store: FakeModelStore) -> None:
    promoted_v2(registry, service)

    with pytest.raises(NotFound):
        manual(registry, service, version=9).execute(context())
    assert service.calls == {}


def test_no_version_goes_back_to_the_newest_superseded(
    registry: FakeRegistry, service: FakeService, fake_store: FakeModelStore
) -> None:
    registry.seed(1, "superseded", manifest_sha256=V1_SHA)
    registry.seed(2, "superseded")
    registry.seed(3, "production")
    registry.seed(4, "rolled_back")  # newer, but never rolled back to
    service.serve(3, stable=3)

    result = manual(registry, service, version=None).execute(context())

    assert result == {"model": MODEL, "version": 2, "previous": 3, "changed": True}
    assert service.config[MODEL].versions == (2,)
    assert registry.transitions() == [(3, "production", "rolled_back"), (2, "superseded", "production")]
    assert ("list_versions", MODEL) in registry.reads


def test_no_version_and_none_superseded_changes_nothing(
    registry: FakeRegistry, service: FakeService, fake_store: FakeModelStore
) -> None:
    registry.seed(1, "rolled_back")
    registry.seed(2, "production")
    service.serve(2, stable=2)

    with pytest.raises(AirflowFailException, match="no earlier version to go back to"):
        manual(registry, service, version=None).execute(context())
    assert service.calls == {}
    assert registry.writes == []


def test_an_automatic_rollback_is_recorded_as_such(
    registry: FakeRegistry, service: FakeService, fake_store: FakeModelStore
) -> None:
    promoted_v2(registry, service)
    why = "automatic: model_health found v2 failing: served outputs via the router differ"

    manual(registry, service, version=None, reason=why).execute(context())

    reason = f"automatic rollback to v1: {why}"
    assert {w.args["reason"] for w in registry.writes_of("transition")} == {reason}
    assert registry.writes_of("set_deployment")[0].args["reason"] == reason


def test_the_traffic_split_is_recorded_all_on_the_version(
    registry: FakeRegistry, service: FakeService, fake_store: FakeModelStore
) -> None:
    promoted_v2(registry, service)

    manual(registry, service).execute(context())

    [traffic] = registry.writes_of("set_traffic")
    assert traffic.args == {
        "stable_version": 1,
        "canary_version": None,
        "canary_weight": 0,
        "reason": REASON,
        "context": traffic.args["context"],
    }
    assert traffic.args["context"]["dagId"] == "model_rollback"
    split = registry.traffic[MODEL]
    assert (split.stable_version, split.stable_weight, split.canary_version, split.canary_weight) == (1, 100, None, 0)


def test_a_serving_event_names_the_reason(
    registry: FakeRegistry, service: FakeService, fake_store: FakeModelStore
) -> None:
    promoted_v2(registry, service)

    manual(registry, service).execute(context())

    [(kind, model, _, reason, details)] = registry.events
    assert (kind, model, reason) == ("serving", MODEL, REASON)
    assert details["versions"] == [1] and details["labels"] == {"stable": 1}
