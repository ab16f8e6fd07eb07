"""RollbackOperator: the candidate leaves the router and the canary pool; the stable pool serves the previous
stable again only if a failed promote changed it (or the first deployment is unloaded); recorded, alerted."""

from __future__ import annotations

from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from tests.unit.operators.conftest import (
    MODEL,
    TARGET,
    FakeModelStore,
    FakeRegistry,
    FakeRouter,
    FakeService,
    RecordingAlertNotifier,
    RecordingNotifier,
    exported,
    inject,
    make_context,
)
from tfdeploy.core.errors import RouterError, ServingReloadError
from tfdeploy.core.models_config import ServedModel
from tfdeploy.core.states import ModelState
from tfdeploy.notifiers import DeploymentAlertNotifier, alert_notifiers
from tfdeploy.operators import rollback as rollback_module
from tfdeploy.operators import rollout as rollout_module
from tfdeploy.operators.rollback import RollbackOperator
from tfdeploy.operators.rollout import RolloutOperator

STABLE_V1 = ServedModel(MODEL, f"/models/{MODEL}", (1,), {"stable": 1})


class Rollback:
    """The operator with its fakes and notifiers."""

    def __init__(self, registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter) -> None:
        self.alert = RecordingAlertNotifier()
        self.other = RecordingNotifier()
        op = RollbackOperator(task_id="rollback", model_name=MODEL, notifiers=[self.alert, self.other])
        self.op = inject(op, registry=registry, service=service, canary=canary, router=router)

    def execute(self, context: dict) -> Any:
        return self.op.execute(context)


def context(**xcoms: Any) -> dict:
    return make_context("rollback", xcoms)


ROLLOUT = {"model": MODEL, "version": 2, "target": TARGET, "stable": 1}
GRAY = {"model": MODEL, "version": 2, "steps": [], "outcome": "passed"}  # the gray release passed
APPROVAL = {"approved": True, "by": None, "required": False}  # no approval was required


def smoke_failed(registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter) -> dict:
    """v2 canary in the canary pool (routed there), stable v1 in the stable pool; smoke found v2 unhealthy."""
    registry.seed(1, "production")
    registry.seed(2, "canary")
    registry.deployments.update({(MODEL, TARGET, "stable"): 1, (MODEL, TARGET, "canary"): 2})
    registry.record_health(
        MODEL, version=2, target=TARGET, status="failing", details={"problems": ["parity off by 0.37"]}, context={}
    )
    registry.writes.clear()
    service.serve(1, stable=1)
    canary.serve(2, canary=2)
    router.routes[f"{MODEL}/2"] = "canary"
    return context(export=exported(2), rollout=ROLLOUT)


def promote_failed(
    registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter, *, state: str = "canary"
) -> dict:
    """Promote changed the stable pool to v2 labelled stable (v1 still loaded), then failed: at the router (the
    canary pool still serves v2, still routed) or, with ``state="production"``, after it recorded production."""
    if state == "production":
        registry.seed(1, "superseded")
        registry.seed(2, "production")
    else:
        registry.seed(1, "production")
        registry.seed(2, "canary")
        canary.serve(2, canary=2)
        router.routes[f"{MODEL}/2"] = "canary"
    service.serve(1, 2, stable=2)
    return context(export=exported(2), rollout=ROLLOUT, smoke={"version": 2}, approval=APPROVAL, gray_release=GRAY)


def canary_cleaned(canary: FakeService, router: FakeRouter) -> None:
    """The router sends nothing of the model to the canary pool, which serves none of it, v2 unstaged there."""
    assert router.calls == [("unroute_candidates", MODEL)]
    assert router.routes == {}
    assert MODEL not in canary.config
    assert canary.discarded == [(MODEL, 2)]
    assert (MODEL, 2) not in canary.staged


def test_defaults() -> None:
    op = RollbackOperator(task_id="rollback", model_name=MODEL)
    assert op.trigger_rule == "one_failed"
    assert op.notifiers is None  # alert_notifiers(): the log and alerts.log, and a mail when ALERT_EMAIL_TO is set
    assert DeploymentAlertNotifier in {type(n) for n in alert_notifiers("subject", "message")}


def test_nothing_exported_skips(
    registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter
) -> None:
    with pytest.raises(AirflowSkipException, match="nothing was exported"):
        Rollback(registry, service, canary, router).execute(context())
    assert service.calls == {} and canary.calls == {}
    assert router.calls == []
    assert registry.writes == []


def test_candidate_that_never_reached_serving_is_discarded_and_skipped(
    registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter
) -> None:
    registry.seed(1, "production")
    registry.seed(2, "validated")
    service.serve(1, stable=1)
    canary.staged.add((MODEL, 2))  # staged, then the canary pool's config change failed
    rb = Rollback(registry, service, canary, router)

    with pytest.raises(AirflowSkipException, match=r"v2 never reached serving \(validated\): production untouched"):
        rb.execute(context(export=exported(2)))

    assert canary.discarded == [(MODEL, 2)] and service.discarded == [(MODEL, 2)]
    assert (MODEL, 2) not in canary.staged
    assert canary.calls["change"] == 0 and service.calls["change"] == 0
    assert service.config == {MODEL: STABLE_V1}
    assert router.calls == []
    assert registry.writes == []
    assert rb.alert.sent == [] and rb.other.notified == []


def test_canary_only_candidate_leaves_the_stable_pool_untouched(
    registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter
) -> None:
    ctx = smoke_failed(registry, service, canary, router)
    rb = Rollback(registry, service, canary, router)

    result = rb.execute(ctx)

    assert result == {"model": MODEL, "version": 2, "restored": 1, "failed_step": "smoke", "served": [1]}
    # production was never touched: the stable pool is only read, not changed, relabelled, staged or discarded
    assert service.calls == {"entry": 1}
    assert service.changes == [] and service.stage_calls == [] and service.discarded == []
    assert service.config == {MODEL: STABLE_V1}
    canary_cleaned(canary, router)
    assert registry.transitions() == [(2, "canary", "rolled_back")]
    [transition] = registry.writes_of("transition")
    assert transition.args["reason"] == "smoke failed: parity off by 0.37"
    assert transition.args["details"] == {"target": TARGET}
    assert registry.deployments == {(MODEL, TARGET, "stable"): 1}
    message = f"{MODEL} v2 rolled back on {TARGET} after smoke failed: parity off by 0.37; v1 serves as stable"
    assert rb.alert.sent == [message]
    assert rb.other.notified == [ctx]


def test_canary_pool_leaves_the_candidate_only_after_it_is_unrouted(
    registry: FakeRegistry, service: FakeService, canary: FakeService
) -> None:
    seen: list = []

    class Watching(FakeRouter):
        def unroute_candidates(self, model: str) -> list[str]:
            seen.append(canary.config.get(model))
            return super().unroute_candidates(model)

    router = Watching()
    ctx = smoke_failed(registry, service, canary, router)

    Rollback(registry, service, canary, router).execute(ctx)

    assert seen == [ServedModel(MODEL, f"/models/{MODEL}", (2,), {"canary": 2})]
    assert MODEL not in canary.config


def test_rollout_that_failed_at_the_router_is_cleaned_up(
    registry: FakeRegistry,
    service: FakeService,
    canary: FakeService,
    router: FakeRouter,
    store: FakeModelStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rollout_module, "ModelStoreHook", store)
    registry.seed(1, "production")
    registry.seed(2, "validated")
    service.serve(1, stable=1)
    router.fail = RouterError("the router's runtime API did not answer")
    op = inject(RolloutOperator(task_id="rollout", model_name=MODEL), registry=registry, canary=canary, router=router)
    with pytest.raises(RouterError):
        op.execute(make_context("rollout", {"export": exported(2)}))
    assert canary.config[MODEL].versions == (2,)  # left behind in the canary pool
    router.fail, router.calls = None, []

    result = Rollback(registry, service, canary, router).execute(context(export=exported(2)))

    # no rollout result: the previous stable comes from the registry; v2 never became canary, nothing to mark
    assert (result["failed_step"], result["restored"], result["served"]) == ("rollout", 1, [1])
    canary_cleaned(canary, router)
    assert service.calls == {"entry": 1} and service.config == {MODEL: STABLE_V1}
    assert registry.transitions() == []
    assert registry.state(2) == ModelState.VALIDATED


def test_failed_promotion_restores_the_previous_stable(
    registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter
) -> None:
    ctx = promote_failed(registry, service, canary, router)
    rb = Rollback(registry, service, canary, router)

    result = rb.execute(ctx)

    assert result == {"model": MODEL, "version": 2, "restored": 1, "failed_step": "promote", "served": [1]}
    assert service.config == {MODEL: STABLE_V1}
    assert service.calls["label_version"] == 1
    assert service.discarded == [(MODEL, 2)]
    assert (MODEL, 2) not in service.staged and (MODEL, 1) in service.staged
    assert service.stage_calls == []  # v1 was still loaded
    canary_cleaned(canary, router)
    assert registry.transitions() == [(2, "canary", "rolled_back")]
    assert registry.deployments == {(MODEL, TARGET, "stable"): 1}
    assert rb.alert.sent[0].endswith("after promote failed; v1 serves as stable")


def test_previous_superseded_by_a_failed_promotion_goes_back_to_production(
    registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter
) -> None:
    ctx = promote_failed(registry, service, canary, router, state="production")
    rb = Rollback(registry, service, canary, router)

    result = rb.execute(ctx)

    assert (result["failed_step"], result["restored"], result["served"]) == ("promote", 1, [1])
    assert registry.transitions() == [(2, "production", "rolled_back"), (1, "superseded", "production")]
    assert registry.writes_of("transition")[1].args["reason"] == "restored by rollback of v2"
    assert registry.deployments == {(MODEL, TARGET, "stable"): 1}
    assert service.config == {MODEL: STABLE_V1}
    assert router.calls == [("unroute_candidates", MODEL)]
    assert canary.discarded == [(MODEL, 2)]
    assert rb.alert.sent[0].endswith("after promote failed; v1 serves as stable")


def test_restore_keeps_no_version_above_the_one_restored(
    registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter
) -> None:
    registry.seed(1, "superseded")
    registry.seed(2, "production")
    service.serve(1, 2, 3, stable=2)  # a v3 left over in the stable pool

    result = Rollback(registry, service, canary, router).execute(
        context(export=exported(2), rollout=ROLLOUT, smoke={"version": 2}, approval=APPROVAL, gray_release=GRAY)
    )

    assert result["served"] == [1]
    assert service.config == {MODEL: STABLE_V1}
    assert {(MODEL, 2), (MODEL, 3)}.isdisjoint(service.staged)


def test_restore_keeps_older_versions(
    registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter
) -> None:
    registry.seed(1, "superseded")
    registry.seed(2, "superseded")
    registry.seed(3, "production")
    service.serve(1, 2, 3, stable=3)

    result = Rollback(registry, service, canary, router).execute(
        context(
            export=exported(3),
            rollout={**ROLLOUT, "version": 3, "stable": 2},
            smoke={"version": 3},
            approval=APPROVAL,
            gray_release={**GRAY, "version": 3},
        )
    )

    assert result["served"] == [1, 2]
    assert service.config[MODEL] == ServedModel(MODEL, f"/models/{MODEL}", (1, 2), {"stable": 2})


def test_first_deployment_unloads_the_candidate(
    registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter
) -> None:
    registry.seed(2, "canary")
    canary.serve(2, canary=2)
    router.routes[f"{MODEL}/2"] = "canary"
    rb = Rollback(registry, service, canary, router)

    result = rb.execute(context(export=exported(2), rollout={**ROLLOUT, "stable": None}))

    assert (result["restored"], result["served"], result["failed_step"]) == (None, [], "smoke")
    canary_cleaned(canary, router)
    assert service.calls == {"entry": 1} and service.config == {}
    assert registry.transitions() == [(2, "canary", "rolled_back")]
    assert [w.args["label"] for w in registry.writes_of("clear_deployment")] == ["stable", "canary"]
    assert registry.writes_of("clear_deployment")[0].args["reason"] == "first deployment rolled back"
    assert rb.alert.sent[0].endswith("no version of it is served")


def test_failed_first_promotion_empties_the_stable_pool(
    registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter
) -> None:
    registry.seed(2, "canary")
    service.serve(2, stable=2)  # promote loaded it, then failed

    result = Rollback(registry, service, canary, router).execute(
        context(
            export=exported(2),
            rollout={**ROLLOUT, "stable": None},
            smoke={"version": 2},
            approval=APPROVAL,
            gray_release=GRAY,
        )
    )

    assert (result["restored"], result["served"], result["failed_step"]) == (None, [], "promote")
    assert service.config == {}
    assert service.calls["label_version"] == 0
    assert (MODEL, 2) not in service.staged
    assert router.calls == [("unroute_candidates", MODEL)]
    assert registry.transitions() == [(2, "canary", "rolled_back")]


def by_hand_checks(text: str, previous: str) -> None:
    assert f"ROLLBACK OF {MODEL} v2 ON {TARGET} FAILED: " in text
    assert "By hand" in text
    assert "containers `tfserving-local` and `tfserving-local-canary` (local/tfserving-compat:latest)" in text
    assert f"make /srv/models.config serve {previous} and /srv-canary/models.config none of it" in text
    assert "reload them (or restart the containers)" in text
    assert f"remove {MODEL}/2 from the router's candidates map" in text


def test_router_failure_says_what_to_do_by_hand(
    registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter
) -> None:
    ctx = smoke_failed(registry, service, canary, router)
    router.fail = RouterError("the router's runtime API did not answer")
    rb = Rollback(registry, service, canary, router)

    with pytest.raises(AirflowFailException) as err:
        rb.execute(ctx)

    by_hand_checks(str(err.value), "v1 labelled stable")
    assert "FAILED: the router's runtime API did not answer" in str(err.value)
    assert isinstance(err.value.__cause__, RouterError)
    assert canary.calls["change"] == 0 and canary.config[MODEL].versions == (2,) and canary.discarded == []
    assert service.calls == {"entry": 1}
    assert registry.writes == []
    assert rb.alert.sent == [] and rb.other.notified == []


def test_canary_pool_failure_says_what_to_do_by_hand(
    registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter
) -> None:
    ctx = smoke_failed(registry, service, canary, router)
    canary.fail_change = ServingReloadError("reload failed", code="UNAVAILABLE", details="server down")
    rb = Rollback(registry, service, canary, router)

    with pytest.raises(AirflowFailException) as err:
        rb.execute(ctx)

    by_hand_checks(str(err.value), "v1 labelled stable")
    assert isinstance(err.value.__cause__, ServingReloadError)
    assert router.routes == {}  # unrouted before the canary pool failed
    assert canary.config[MODEL].versions == (2,) and canary.discarded == []
    assert service.calls == {"entry": 1}
    assert registry.writes == []
    assert rb.alert.sent == [] and rb.other.notified == []


def test_failed_restore_says_what_to_do_by_hand(
    registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter
) -> None:
    ctx = promote_failed(registry, service, canary, router)
    before = dict(service.config)
    service.fail_change = ServingReloadError("reload failed", code="UNAVAILABLE", details="server down")
    rb = Rollback(registry, service, canary, router)

    with pytest.raises(AirflowFailException) as err:
        rb.execute(ctx)

    by_hand_checks(str(err.value), "v1 labelled stable")
    assert f"ROLLBACK OF {MODEL} v2 ON {TARGET} FAILED: reload failed" in str(err.value)
    assert isinstance(err.value.__cause__, ServingReloadError)
    assert service.config == before
    assert service.discarded == []
    assert MODEL not in canary.config  # the canary pool was cleaned before the stable pool failed
    assert registry.writes == []
    assert rb.alert.sent == [] and rb.other.notified == []


def test_failed_rollback_of_a_first_deployment(
    registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter
) -> None:
    registry.seed(2, "canary")
    canary.serve(2, canary=2)
    canary.fail_change = ServingReloadError("reload failed", code="UNAVAILABLE", details="down")

    with pytest.raises(AirflowFailException) as err:
        Rollback(registry, service, canary, router).execute(
            context(export=exported(2), rollout={**ROLLOUT, "stable": None})
        )
    by_hand_checks(str(err.value), f"no version of {MODEL}")


def test_stable_answering_from_another_version_fails(
    registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter
) -> None:
    ctx = promote_failed(registry, service, canary, router)
    service.label_answers["stable"] = 2

    with pytest.raises(AirflowFailException, match="FAILED: after the rollback, stable answers from v2, not v1"):
        Rollback(registry, service, canary, router).execute(ctx)
    assert service.discarded == []
    assert registry.writes == []


def test_rerun_after_a_rollback_changes_nothing(
    registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter
) -> None:
    ctx = smoke_failed(registry, service, canary, router)
    Rollback(registry, service, canary, router).execute(ctx)
    writes, stable_config, canary_config = list(registry.writes), dict(service.config), dict(canary.config)
    rb = Rollback(registry, service, canary, router)

    with pytest.raises(AirflowSkipException, match=r"never reached serving \(rolled_back\)"):
        rb.execute(ctx)

    assert registry.writes == writes
    assert service.config == stable_config and canary.config == canary_config
    assert service.calls["change"] == 0 and canary.calls["change"] == 1
    assert router.calls == [("unroute_candidates", MODEL)]
    assert rb.alert.sent == []


def test_rerun_after_the_rollback_of_a_failed_promotion_changes_nothing(
    registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter
) -> None:
    ctx = promote_failed(registry, service, canary, router)
    Rollback(registry, service, canary, router).execute(ctx)
    writes, stable_config = list(registry.writes), dict(service.config)

    with pytest.raises(AirflowSkipException, match=r"never reached serving \(rolled_back\)"):
        Rollback(registry, service, canary, router).execute(ctx)

    assert registry.writes == writes
    assert service.config == stable_config == {MODEL: STABLE_V1}
    assert service.calls["change"] == 1


def test_unknown_failed_step(
    registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter
) -> None:
    smoke_failed(registry, service, canary, router)
    ctx = context(export=exported(2), rollout=ROLLOUT, smoke={}, approval={}, gray_release={}, promote={})
    rb = Rollback(registry, service, canary, router)

    assert rb.execute(ctx)["failed_step"] == "unknown"
    assert "after unknown failed" in rb.alert.sent[0]


def test_preset_alert_message_is_kept(
    registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter
) -> None:
    ctx = smoke_failed(registry, service, canary, router)
    rb = Rollback(registry, service, canary, router)
    rb.alert.message = "custom page"

    rb.execute(ctx)

    assert rb.alert.sent == ["custom page"]


def test_previous_unloaded_by_a_failed_promotion_is_staged_again(
    registry: FakeRegistry,
    service: FakeService,
    canary: FakeService,
    router: FakeRouter,
    monkeypatch: pytest.MonkeyPatch,
    store: FakeModelStore,
) -> None:
    monkeypatch.setattr(rollback_module, "ModelStoreHook", store)
    registry.seed(1, "production")
    registry.seed(2, "canary")
    # promote with keep_versions=1 dropped v1 and its staged copy from the stable pool, then failed
    service.serve(2, stable=2)

    result = Rollback(registry, service, canary, router).execute(
        context(export=exported(2), rollout=ROLLOUT, smoke={"version": 2}, approval=APPROVAL, gray_release=GRAY)
    )

    assert result["served"] == [1]
    assert service.config == {MODEL: STABLE_V1}
    # staged again into the stable pool from the model store, pinned to the registered manifest
    assert [(c["model"], c["version"], c["sha"]) for c in service.stage_calls] == [
        (MODEL, 1, registry.get_version(MODEL, 1).manifest_sha256)
    ]
    assert canary.stage_calls == []
