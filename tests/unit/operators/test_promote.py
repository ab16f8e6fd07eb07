"""PromoteOperator and kept_versions: the candidate joins the stable pool as stable, older versions beyond
keep_versions and every version above the candidate unload, its routes and the canary pool let it go, the
registry records it (fakes only)."""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowFailException

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
from tfdeploy.core.errors import RouterError, ServingReloadError
from tfdeploy.core.models_config import ServedModel
from tfdeploy.core.states import ModelState
from tfdeploy.operators import promote as promote_module
from tfdeploy.operators.promote import PromoteOperator, kept_versions

CANDIDATE_SHA = "33" * 32


@pytest.mark.parametrize(
    ("loaded", "candidate", "keep", "kept"),
    [
        ((1, 2), 2, 2, (1, 2)),
        ((1, 2, 3), 3, 2, (2, 3)),
        ((1, 2, 3), 3, 5, (1, 2, 3)),
        ((1, 2, 3), 3, 1, (3,)),
        ((2,), 3, 2, (2, 3)),  # not loaded yet: added beside the newest older one
        ((1, 2), 3, 2, (2, 3)),
        ((2, 5, 7), 2, 2, (2,)),  # versions above the candidate are dropped, whatever keep says
        ((2, 5, 7), 2, 1, (2,)),
        ((2, 5, 7), 2, 3, (2,)),
        ((5,), 3, 2, (3,)),
        ((1, 2, 5), 4, 2, (2, 4)),
        ((1, 2, 4, 6), 5, 3, (2, 4, 5)),
        ((3, 3), 3, 2, (3,)),
        ((), 4, 2, (4,)),
    ],
)
def test_kept_versions(loaded: tuple, candidate: int, keep: int, kept: tuple) -> None:
    assert kept_versions(loaded, candidate, keep) == kept


@pytest.mark.parametrize("keep", [1, 2, 3, 4])
def test_kept_versions_keeps_the_candidate_as_the_highest(keep: int) -> None:
    for candidate in range(1, 7):
        kept = kept_versions((1, 2, 3, 4, 5, 6), candidate, keep)
        # the candidate and the newest older ones, none above it: unversioned calls reach the candidate
        assert kept == tuple(range(max(1, candidate - keep + 1), candidate + 1))
        assert max(kept) == candidate


@pytest.fixture
def fake_store(monkeypatch: pytest.MonkeyPatch, store: FakeModelStore) -> FakeModelStore:
    monkeypatch.setattr(promote_module, "ModelStoreHook", store)
    return store


def promote(
    registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter, **kwargs
) -> PromoteOperator:
    op = PromoteOperator(task_id="promote", model_name=MODEL, **kwargs)
    return inject(op, registry=registry, service=service, canary=canary, router=router)


def context() -> dict:
    return make_context("promote", {"export": exported(3)})


def candidate_in_canary(
    registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter, *loaded: int
) -> None:
    """v3 canary in the canary pool, routed there; stable v2 (and older versions ``loaded``) in the stable pool."""
    for version in loaded:
        registry.seed(version, "superseded")
    registry.seed(2, "production")
    registry.seed(3, "canary", manifest_sha256=CANDIDATE_SHA)
    registry.deployments[(MODEL, TARGET, "canary")] = 3
    registry.deployments[(MODEL, TARGET, "stable")] = 2
    service.serve(*loaded, 2, stable=2)
    canary.serve(3, canary=3)
    router.routes[f"{MODEL}/3"] = "canary"


def released_from_canary(canary: FakeService, router: FakeRouter) -> None:
    assert router.calls == [("unroute_candidates", MODEL)]
    assert router.routes == {}
    assert MODEL not in canary.config
    assert [c.after for c in canary.changes] == [None]
    assert canary.stage_calls == []


def test_stable_moves_to_the_candidate(
    registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter, fake_store: FakeModelStore
) -> None:
    candidate_in_canary(registry, service, canary, router)

    result = promote(registry, service, canary, router).execute(context())

    assert result == {"model": MODEL, "version": 3, "loaded": [2, 3], "unloaded": []}
    [staged] = service.stage_calls  # staged into the stable pool, pinned to the registered manifest
    assert (staged["store"], staged["model"], staged["version"], staged["sha"]) == (fake_store, MODEL, 3, CANDIDATE_SHA)
    assert fake_store.constructed == [(("webhdfs_default",), {})]
    assert service.config[MODEL] == ServedModel(MODEL, f"/models/{MODEL}", (2, 3), {"stable": 3})
    released_from_canary(canary, router)
    assert registry.transitions() == [(2, "production", "superseded"), (3, "canary", "production")]
    assert registry.deployments == {(MODEL, TARGET, "stable"): 3}
    [cleared] = registry.writes_of("clear_deployment")
    assert (cleared.args["label"], cleared.args["reason"]) == ("canary", "promoted to stable")


def test_routes_move_only_once_the_stable_pool_serves_the_candidate(
    registry: FakeRegistry, service: FakeService, canary: FakeService, fake_store: FakeModelStore
) -> None:
    seen: list = []

    class Watching(FakeRouter):
        def unroute_candidates(self, model: str) -> list[str]:
            seen.append((service.config[model].labels, canary.config.get(model), registry.writes_of("transition")))
            return super().unroute_candidates(model)

    router = Watching()
    candidate_in_canary(registry, service, canary, router)

    promote(registry, service, canary, router).execute(context())

    # stable serves v3, the canary pool still does (calls routed there keep an answer), nothing recorded yet
    assert seen == [({"stable": 3}, ServedModel(MODEL, f"/models/{MODEL}", (3,), {"canary": 3}), [])]


def test_versions_beyond_keep_unload_oldest_first(
    registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter, fake_store: FakeModelStore
) -> None:
    candidate_in_canary(registry, service, canary, router, 1)

    result = promote(registry, service, canary, router, keep_versions=2).execute(context())

    assert (result["loaded"], result["unloaded"]) == ([2, 3], [1])
    assert (MODEL, 1) not in service.staged
    assert {(MODEL, 2), (MODEL, 3)} <= service.staged


def test_keep_one_leaves_only_the_candidate(
    registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter, fake_store: FakeModelStore
) -> None:
    candidate_in_canary(registry, service, canary, router, 1)

    result = promote(registry, service, canary, router, keep_versions=1).execute(context())

    assert (result["loaded"], result["unloaded"]) == ([3], [1, 2])
    assert service.config[MODEL] == ServedModel(MODEL, f"/models/{MODEL}", (3,), {"stable": 3})


def test_versions_above_the_candidate_unload(
    registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter, fake_store: FakeModelStore
) -> None:
    registry.seed(1, "superseded")
    registry.seed(5, "production")
    registry.seed(3, "canary")
    service.serve(1, 4, 5, stable=5)
    canary.serve(3, canary=3)
    router.routes[f"{MODEL}/3"] = "canary"

    result = promote(registry, service, canary, router, keep_versions=2).execute(context())

    # an unversioned gRPC call answers from the highest loaded version: nothing above the candidate stays
    assert (result["loaded"], result["unloaded"]) == ([1, 3], [4, 5])
    assert service.config[MODEL] == ServedModel(MODEL, f"/models/{MODEL}", (1, 3), {"stable": 3})
    assert {(MODEL, 4), (MODEL, 5)}.isdisjoint(service.staged)
    released_from_canary(canary, router)
    assert registry.transitions() == [(5, "production", "superseded"), (3, "canary", "production")]


def test_first_promotion_creates_the_stable_entry(
    registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter, fake_store: FakeModelStore
) -> None:
    registry.seed(3, "canary")
    canary.serve(3, canary=3)
    router.routes[f"{MODEL}/3"] = "canary"

    result = promote(registry, service, canary, router).execute(context())

    assert (result["loaded"], result["unloaded"]) == ([3], [])
    assert service.config[MODEL] == ServedModel(MODEL, f"/models/{MODEL}", (3,), {"stable": 3})
    assert service.changes[0].container_created
    released_from_canary(canary, router)
    assert registry.transitions() == [(3, "canary", "production")]
    assert registry.deployments == {(MODEL, TARGET, "stable"): 3}


def test_rerun_changes_nothing_again(
    registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter, fake_store: FakeModelStore
) -> None:
    candidate_in_canary(registry, service, canary, router, 1)

    first = promote(registry, service, canary, router).execute(context())
    stable_config, canary_config = dict(service.config), dict(canary.config)
    second = promote(registry, service, canary, router).execute(context())

    assert second["loaded"] == first["loaded"] and second["unloaded"] == []
    assert service.config == stable_config and canary.config == canary_config
    assert [c.phases for c in service.changes][1:] == [0]
    assert [c.phases for c in canary.changes][1:] == [0]
    assert router.calls == [("unroute_candidates", MODEL)] * 2 and router.routes == {}
    assert registry.transitions() == [(2, "production", "superseded"), (3, "canary", "production")]
    assert registry.deployments == {(MODEL, TARGET, "stable"): 3}


@pytest.mark.parametrize("state", ["registered", "validated", "rolled_back", "superseded", "rejected"])
def test_candidate_not_rolled_out_fails(
    registry: FakeRegistry,
    service: FakeService,
    canary: FakeService,
    router: FakeRouter,
    fake_store: FakeModelStore,
    state: str,
) -> None:
    registry.seed(2, "production")
    registry.seed(3, state)
    service.serve(2, stable=2)

    with pytest.raises(AirflowFailException, match=f"{MODEL} v3 is {state}: roll it out first"):
        promote(registry, service, canary, router).execute(context())
    assert service.calls == {} and canary.calls == {}
    assert router.calls == []
    assert registry.writes == []


def test_serving_failure_records_nothing_and_keeps_the_canary(
    registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter, fake_store: FakeModelStore
) -> None:
    candidate_in_canary(registry, service, canary, router)
    before = dict(service.config)
    service.fail_change = ServingReloadError("reload failed", code="UNAVAILABLE", details="down")

    with pytest.raises(ServingReloadError):
        promote(registry, service, canary, router).execute(context())
    assert service.config == before
    assert router.calls == [] and router.routes == {f"{MODEL}/3": "canary"}
    assert canary.calls["change"] == 0 and canary.config[MODEL].versions == (3,)
    assert registry.writes == []
    assert registry.state(3) == ModelState.CANARY


def test_router_failure_after_the_stable_change_records_nothing(
    registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter, fake_store: FakeModelStore
) -> None:
    candidate_in_canary(registry, service, canary, router)
    router.fail = RouterError("the router's runtime API did not answer")

    with pytest.raises(RouterError):
        promote(registry, service, canary, router).execute(context())
    # the stable pool serves the candidate already (rollback restores v2 there); the canary pool still has it
    assert service.config[MODEL] == ServedModel(MODEL, f"/models/{MODEL}", (2, 3), {"stable": 3})
    assert canary.calls["change"] == 0 and canary.config[MODEL].versions == (3,)
    assert registry.writes == []
    assert registry.state(3) == ModelState.CANARY


def test_keep_versions_checks(
    registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter, fake_store: FakeModelStore
) -> None:
    with pytest.raises(ValueError, match="keep_versions must be >= 1"):
        PromoteOperator(task_id="promote", model_name=MODEL, keep_versions=0)
    candidate_in_canary(registry, service, canary, router)
    with pytest.raises(TypeError, match="keep_versions must be int"):
        promote(registry, service, canary, router, keep_versions="2").execute(context())
    op = promote(registry, service, canary, router, keep_versions="{{ params.keep_versions }}")
    op.keep_versions = 0  # as rendered
    with pytest.raises(AirflowFailException, match="keep_versions must be >= 1"):
        op.execute(context())
    assert service.calls == {} and canary.calls == {}
    assert router.calls == []
    assert registry.writes == []
