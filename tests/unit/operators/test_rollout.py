"""RolloutOperator: stage the candidate into the canary pool, serve it there labelled canary, route calls naming
it there, record it; the stable pool is never touched (fakes only)."""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from tests.unit.operators.conftest import (
    MODEL,
    TARGET,
    FakeModelStore,
    FakeRegistry,
    FakeRouter,
    FakeService,
    exported,
    inject,
    make_context,
)
from tfdeploy.core.errors import ChecksumMismatch, RouterError, ServingReloadError, VersionNotAvailable
from tfdeploy.core.models_config import ServedModel
from tfdeploy.core.states import ModelState
from tfdeploy.operators import rollout as rollout_module
from tfdeploy.operators.rollout import RolloutOperator

CANDIDATE_SHA = "ee" * 32
CANARY_ENTRY = ServedModel(MODEL, f"/models/{MODEL}", (2,), {"canary": 2})


@pytest.fixture
def fake_store(monkeypatch: pytest.MonkeyPatch, store: FakeModelStore) -> FakeModelStore:
    monkeypatch.setattr(rollout_module, "ModelStoreHook", store)
    return store


def rollout(registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter) -> RolloutOperator:
    op = RolloutOperator(task_id="rollout", model_name=MODEL)
    return inject(op, registry=registry, service=service, canary=canary, router=router)


def context(action: str = "release") -> dict:
    return make_context("rollout", {"export": exported(2, action=action)})


def with_stable(registry: FakeRegistry, service: FakeService) -> ServedModel:
    registry.seed(1, "production")
    registry.seed(2, "validated", manifest_sha256=CANDIDATE_SHA)
    return service.serve(1, stable=1)


def untouched(service: FakeService, entry: ServedModel | None) -> None:
    """The stable pool: not even read, its config as it was."""
    assert service.calls == {}
    assert service.stage_calls == [] and service.changes == [] and service.discarded == []
    assert service.config.get(MODEL) == entry


def test_candidate_served_in_the_canary_pool_and_routed_there(
    registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter, fake_store: FakeModelStore
) -> None:
    stable_entry = with_stable(registry, service)

    result = rollout(registry, service, canary, router).execute(context())

    assert result == {"model": MODEL, "version": 2, "target": TARGET, "stable": 1}
    [staged] = canary.stage_calls
    assert (staged["store"], staged["model"], staged["version"], staged["sha"]) == (fake_store, MODEL, 2, CANDIDATE_SHA)
    assert fake_store.constructed == [(("webhdfs_default",), {})]
    assert canary.config == {MODEL: CANARY_ENTRY}  # the candidate alone, labelled canary
    [change] = canary.changes
    assert change.phases == 2  # the canary label waits until v2 is AVAILABLE
    assert change.container_created
    assert router.calls == [("unroute_candidates", MODEL), ("route_candidate", MODEL, 2)]
    assert router.routes == {f"{MODEL}/2": "canary"}
    untouched(service, stable_entry)  # production traffic cannot reach the candidate
    assert registry.transitions() == [(2, "validated", "canary")]
    [transition] = registry.writes_of("transition")
    assert transition.args["reason"] == f"serving in {TARGET}'s canary pool"
    [deployment] = registry.writes_of("set_deployment")
    assert (deployment.args["target"], deployment.args["label"], deployment.args["version"]) == (TARGET, "canary", 2)
    assert registry.deployments == {(MODEL, TARGET, "canary"): 2}
    assert registry.state(1) == ModelState.PRODUCTION


def test_routed_only_once_the_candidate_serves_in_the_canary_pool(
    registry: FakeRegistry, service: FakeService, canary: FakeService, fake_store: FakeModelStore
) -> None:
    with_stable(registry, service)
    seen: list = []

    class Watching(FakeRouter):
        def route_candidate(self, model: str, version: int) -> None:
            seen.append((canary.config.get(model), registry.writes_of("transition")))
            super().route_candidate(model, version)

    rollout(registry, service, canary, Watching()).execute(context())

    assert seen == [(CANARY_ENTRY, [])]  # after the canary pool serves it, before the registry records it


def test_first_deployment_serves_the_candidate_alone(
    registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter, fake_store: FakeModelStore
) -> None:
    registry.seed(2, "validated")

    result = rollout(registry, service, canary, router).execute(context())

    assert result["stable"] is None
    assert canary.config == {MODEL: CANARY_ENTRY}
    assert router.routes == {f"{MODEL}/2": "canary"}
    untouched(service, None)
    assert registry.transitions() == [(2, "validated", "canary")]


def test_a_leftover_candidate_in_the_canary_pool_is_replaced(
    registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter, fake_store: FakeModelStore
) -> None:
    stable_entry = with_stable(registry, service)
    canary.serve(3, canary=3)

    rollout(registry, service, canary, router).execute(context())

    assert canary.config == {MODEL: CANARY_ENTRY}
    assert canary.changes[0].dropped == [3]
    untouched(service, stable_entry)


def test_rerun_when_already_canary_changes_nothing(
    registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter, fake_store: FakeModelStore
) -> None:
    stable_entry = with_stable(registry, service)

    first = rollout(registry, service, canary, router).execute(context())
    config = dict(canary.config)
    second = rollout(registry, service, canary, router).execute(context())

    assert first == second
    assert canary.config == config
    assert [c.phases for c in canary.changes] == [2, 0]
    assert router.calls == [("unroute_candidates", MODEL), ("route_candidate", MODEL, 2)] * 2
    assert router.routes == {f"{MODEL}/2": "canary"}
    untouched(service, stable_entry)
    assert registry.transitions() == [(2, "validated", "canary")]
    assert registry.deployments == {(MODEL, TARGET, "canary"): 2}


def test_rolled_back_version_may_be_tried_again(
    registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter, fake_store: FakeModelStore
) -> None:
    registry.seed(1, "production")
    registry.seed(2, "rolled_back")
    stable_entry = service.serve(1, stable=1)

    rollout(registry, service, canary, router).execute(context())

    assert registry.transitions() == [(2, "rolled_back", "canary")]
    assert canary.config == {MODEL: CANARY_ENTRY}
    untouched(service, stable_entry)


def nothing_touched(service: FakeService, canary: FakeService, router: FakeRouter, registry: FakeRegistry) -> None:
    assert service.calls == {} and canary.calls == {}
    assert router.calls == []
    assert registry.writes == []


def test_noop_release_skips_when_the_stable_pool_serves_production(
    registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter, fake_store: FakeModelStore
) -> None:
    registry.seed(2, "production")
    service.serve(2, stable=2)

    with pytest.raises(AirflowSkipException, match="test"):
        rollout(registry, service, canary, router).execute(context(action="noop"))
    # no change to any config: only the unchanged entry re-applied, which makes sure the replicas run
    assert [c.phases for c in service.changes] == [0] and service.calls["stage"] == 0
    assert canary.changes == [] and router.calls == [] and registry.writes == []


def test_production_missing_from_the_stable_pool_is_served_again(
    registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter, fake_store: FakeModelStore
) -> None:
    # the registry says v2 is in production, but its serving containers and config are gone (`make down`)
    registry.seed(2, "production")

    with pytest.raises(AirflowSkipException):
        rollout(registry, service, canary, router).execute(context())
    assert service.config[MODEL] == ServedModel(MODEL, f"/models/{MODEL}", (2,), {"stable": 2})
    assert [(c["version"], c["sha"]) for c in service.stage_calls] == [
        (2, registry.get_version(MODEL, 2).manifest_sha256)
    ]
    assert canary.changes == [] and router.calls == [] and registry.writes == []


@pytest.mark.parametrize("state", ["rejected", "superseded", "registered", "archived"])
def test_version_not_validated_fails(
    registry: FakeRegistry,
    service: FakeService,
    canary: FakeService,
    router: FakeRouter,
    fake_store: FakeModelStore,
    state: str,
) -> None:
    registry.seed(2, state)

    with pytest.raises(AirflowFailException, match=f"v2 is {state}; only a validated version"):
        rollout(registry, service, canary, router).execute(context())
    nothing_touched(service, canary, router, registry)


@pytest.mark.parametrize(
    "error",
    [
        VersionNotAvailable("v2 did not load", model=MODEL, version=2, state="END", error_message="bad graph"),
        ServingReloadError("reload refused", code="INVALID_ARGUMENT", details="bad config"),
    ],
)
def test_serving_failure_routes_and_records_nothing(
    registry: FakeRegistry,
    service: FakeService,
    canary: FakeService,
    router: FakeRouter,
    fake_store: FakeModelStore,
    error: Exception,
) -> None:
    stable_entry = with_stable(registry, service)
    canary.fail_change = error

    with pytest.raises(type(error)):
        rollout(registry, service, canary, router).execute(context())
    assert canary.config == {}
    assert router.calls == []
    untouched(service, stable_entry)
    assert registry.writes == []
    assert registry.state(2) == ModelState.VALIDATED


def test_staging_failure_changes_nothing(
    registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter, fake_store: FakeModelStore
) -> None:
    stable_entry = with_stable(registry, service)
    canary.fail_stage = ChecksumMismatch("variables.index: sha256 differs", path="variables/variables.index")

    with pytest.raises(ChecksumMismatch):
        rollout(registry, service, canary, router).execute(context())
    assert canary.calls["change"] == 0
    assert router.calls == []
    untouched(service, stable_entry)
    assert registry.writes == []


def test_router_failure_propagates_and_records_nothing(
    registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter, fake_store: FakeModelStore
) -> None:
    stable_entry = with_stable(registry, service)
    router.fail = RouterError("the router's runtime API did not answer")

    with pytest.raises(RouterError, match="did not answer"):
        rollout(registry, service, canary, router).execute(context())
    # the canary pool already serves it (rollback cleans it up); nothing routes to it, nothing is recorded
    assert canary.config == {MODEL: CANARY_ENTRY}
    assert router.calls == [("unroute_candidates", MODEL)]
    assert router.routes == {}
    untouched(service, stable_entry)
    assert registry.writes == []
    assert registry.state(2) == ModelState.VALIDATED


def test_missing_export_result_fails(
    registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter
) -> None:
    with pytest.raises(RuntimeError, match="nothing to release"):
        rollout(registry, service, canary, router).execute(make_context("rollout"))
    nothing_touched(service, canary, router, registry)


def test_a_route_left_by_an_earlier_run_goes_before_the_new_one(
    registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter, fake_store: FakeModelStore
) -> None:
    with_stable(registry, service)
    router.routes[f"{MODEL}/7"] = "canary"  # a run whose rollback failed left its candidate routed
    rollout(registry, service, canary, router).execute(context())
    assert router.routes == {f"{MODEL}/2": "canary"}


def test_the_history_says_which_replicas_serve_the_candidate_and_where_calls_naming_it_go(
    registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter, fake_store: FakeModelStore
) -> None:
    with_stable(registry, service)
    rollout(registry, service, canary, router).execute(context())
    kinds = [(kind, version) for kind, _model, version, _reason, _details in registry.events]
    assert kinds == [("serving", None), ("router", 2)]
    serving, route = registry.events[0][4], registry.events[1][4]
    assert serving["replicas"] == ["tfserving-local-canary"] and serving["versions"] == [2]
    assert serving["labels"] == {"canary": 2}
    assert route == {"target": TARGET, "route": f"{MODEL}/2", "pool": "canary"}
