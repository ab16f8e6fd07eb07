"""GrayReleaseOperator: each step sets the candidate's weight at the router, records it in the registry and
defers to the step's trigger; the trigger's event decides what follows (the next step, promotion, or a failure
that the rollback follows). The router unreachable leaves the weight where it was and says how to finish by hand.
The live metrics are a fake (``ReleaseMetrics``), the trigger's own behaviour is in test_release_trigger.py."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred

from tests.unit.operators.conftest import (
    MODEL,
    TARGET,
    FakeRegistry,
    FakeRouter,
    FakeService,
    RecordingAlertNotifier,
    exported,
    inject,
    make_context,
)
from tfdeploy.core.errors import RegistryUnavailable, RouterError
from tfdeploy.core.release import Side, plan_release
from tfdeploy.operators import gray_release as gray_module
from tfdeploy.operators.gray_release import GrayReleaseOperator
from tfdeploy.operators.rollback import RollbackOperator
from tfdeploy.triggers.release import ReleaseStepTrigger

PLAN = plan_release("canary", steps=[10, 50, 100], step_seconds=30, check_seconds=5).to_dict()
BASELINE = {"stable": Side(1000, 4, 1, ((1000.0, 990.0), (float("inf"), 1000.0))), "canary": Side(7, 0, 0)}
VALUES = {"candidate_requests": 120, "candidate_errors": 0, "stable_requests": 1100, "stable_errors": 2}


class FakeMetrics:
    """``ReleaseMetrics``: ``sample`` answers ``BASELINE`` (logged in the router's calls, to see the order), or
    raises ``fail``."""

    def __init__(self, router: FakeRouter) -> None:
        self.router = router
        self.targets: list[str] = []
        self.fail: RouterError | None = None

    def __call__(self, target: str, **_: Any) -> FakeMetrics:  # stands in for the class
        self.targets.append(target)
        return self

    def sample(self, model: str) -> dict[str, Side]:
        self.router.calls.append(("sample", model))
        if self.fail is not None:
            raise self.fail
        return dict(BASELINE)


@pytest.fixture
def metrics(router: FakeRouter, monkeypatch: pytest.MonkeyPatch) -> FakeMetrics:
    fake = FakeMetrics(router)
    monkeypatch.setattr(gray_module, "ReleaseMetrics", fake)
    return fake


@pytest.fixture
def released(registry: FakeRegistry) -> FakeRegistry:
    """v1 in production, v2 the candidate (rolled out: in the canary pool, weight 0)."""
    registry.seed(1, "production")
    registry.seed(2, "canary")
    registry.set_traffic(
        MODEL, stable_version=1, canary_version=2, canary_weight=0, reason="rolled out", context={"actor": "alice"}
    )
    registry.writes.clear()
    return registry


def gray(registry: FakeRegistry, router: FakeRouter, plan: dict | None = None) -> GrayReleaseOperator:
    op = GrayReleaseOperator(task_id="gray_release", model_name=MODEL, plan=PLAN if plan is None else plan)
    return inject(op, registry=registry, router=router)


def context() -> dict:
    return make_context("gray_release", {"export": exported(2)})


def deferred(call: Any, *args: Any, **kwargs: Any) -> TaskDeferred:
    with pytest.raises(TaskDeferred) as caught:
        call(*args, **kwargs)
    return caught.value


def event(status: str, weight: int, **more: Any) -> dict[str, Any]:
    return {"status": status, "weight": weight, "values": VALUES, "extensions": 0, **more}


def weights_recorded(registry: FakeRegistry) -> list[int]:
    return [w.args["canary_weight"] for w in registry.writes_of("set_traffic")]


# --------------------------------------------------------------------------- nothing to release gradually


def test_all_at_once_leaves_it_to_promote(released: FakeRegistry, router: FakeRouter, metrics: FakeMetrics) -> None:
    op = gray(released, router, plan_release("all_at_once").to_dict())
    assert op.execute(context()) == {"model": MODEL, "version": 2, "steps": [], "outcome": "all_at_once"}
    assert router.calls == [] and metrics.targets == [] and released.writes == []


def test_a_first_release_has_no_stable_to_share_with(
    registry: FakeRegistry, router: FakeRouter, metrics: FakeMetrics
) -> None:
    registry.seed(1, "canary")
    op = gray(registry, router)
    out = op.execute(make_context("gray_release", {"export": exported(1)}))
    assert out == {"model": MODEL, "version": 1, "steps": [], "outcome": "first release"}
    assert router.calls == [] and metrics.targets == [] and registry.writes == []


# --------------------------------------------------------------------------- the steps


def test_the_first_step_sets_its_weight_records_it_and_defers(
    released: FakeRegistry, router: FakeRouter, metrics: FakeMetrics
) -> None:
    before = time.time()
    deferral = deferred(gray(released, router).execute, context())
    after = time.time()

    # the window starts before the weight moves
    assert router.calls == [("sample", MODEL), ("set_weight", MODEL, 10)]
    assert router.weight_map == {MODEL: 10} and metrics.targets == [TARGET]
    [write] = released.writes_of("set_traffic")
    assert write.args["stable_version"] == 1 and write.args["canary_version"] == 2
    assert write.args["canary_weight"] == 10
    assert "step 1/3: 10% of unversioned calls to v2" in write.args["reason"]
    assert write.args["context"]["taskId"] == "gray_release"
    assert released.traffic[MODEL].canary_weight == 10

    assert deferral.method_name == "step_done"
    assert deferral.kwargs == {"index": 0, "stable": 1, "done": []}
    trigger = deferral.trigger
    assert isinstance(trigger, ReleaseStepTrigger)
    path, kwargs = trigger.serialize()
    assert path == "tfdeploy.triggers.release.ReleaseStepTrigger"
    assert kwargs["model"] == MODEL and kwargs["candidate"] == 2 and kwargs["weight"] == 10
    assert kwargs["plan"] == PLAN and kwargs["serving_target"] == TARGET and kwargs["extensions"] == 0
    assert kwargs["baseline"] == {side: values.to_dict() for side, values in BASELINE.items()}
    assert before + 30 <= kwargs["deadline"] <= after + 30


def test_a_passed_step_goes_on_to_the_next_weight(
    released: FakeRegistry, router: FakeRouter, metrics: FakeMetrics
) -> None:
    router.weight_map[MODEL] = 10
    op = gray(released, router)
    deferral = deferred(op.step_done, context(), event=event("passed", 10), index=0, stable=1, done=[])
    assert router.weight_map == {MODEL: 50}
    assert weights_recorded(released) == [50]
    assert "step 2/3" in released.writes_of("set_traffic")[0].args["reason"]
    assert deferral.trigger.serialize()[1]["weight"] == 50
    assert deferral.kwargs == {
        "index": 1,
        "stable": 1,
        "done": [{"weight": 10, "status": "passed", "values": VALUES}],
    }


def test_the_last_step_passed_hands_over_to_promote(
    released: FakeRegistry, router: FakeRouter, metrics: FakeMetrics
) -> None:
    router.weight_map[MODEL] = 100
    done = [{"weight": 10, "status": "passed", "values": {}}, {"weight": 50, "status": "passed", "values": {}}]
    out = gray(released, router).step_done(context(), event=event("passed", 100), index=2, stable=1, done=done)
    assert out["outcome"] == "passed" and out["version"] == 2
    assert [s["weight"] for s in out["steps"]] == [10, 50, 100]
    assert router.calls == [] and released.writes == []  # promote moves the rest


def test_promote_now_clears_the_request_and_hands_over(
    released: FakeRegistry, router: FakeRouter, metrics: FakeMetrics
) -> None:
    released.release_control(MODEL, "promote", reason="looks good", context={})
    released.writes.clear()
    out = gray(released, router).step_done(context(), event=event("promote", 10), index=0, stable=1, done=[])
    assert out["outcome"] == "promoted early" and out["steps"] == [
        {"weight": 10, "status": "promote", "values": VALUES}
    ]
    assert [w.method for w in released.writes] == ["clear_pending_action"]
    assert released.traffic[MODEL].pending_action is None
    assert router.calls == []


# --------------------------------------------------------------------------- stopped: the rollback follows


def test_a_breach_is_recorded_and_fails_the_task_with_the_metric_and_the_lag(
    released: FakeRegistry, router: FakeRouter, metrics: FakeMetrics
) -> None:
    breach = event(
        "breach",
        50,
        metric="error_rate",
        message="error rate 12.00% (12/100) on the candidate against 0.10% (1/1000) on stable",
        detected_at=1000.0,
        weight_zero_at=1000.25,
    )
    with pytest.raises(AirflowFailException) as failed:
        gray(released, router).step_done(context(), event=breach, index=1, stable=1, done=[])
    message = str(failed.value)
    assert "gray release of demo_regressor v2 stopped at 50%: error rate 12.00%" in message
    assert "candidate weight set to 0 0.25s after the breach was seen" in message

    [(model, health)] = released.health
    assert model == MODEL and health.version == 2 and health.target == TARGET and health.status == "failing"
    assert health.details["check"] == "gray_release" and health.details["metric"] == "error_rate"
    assert health.details["weight"] == 50 and health.details["values"] == VALUES
    assert health.details["problems"] == [message]  # what the rollback's reason and alert quote
    assert weights_recorded(released) == [0]
    assert released.writes_of("set_traffic")[0].args["reason"] == message
    assert router.calls == []  # the trigger set the weight to 0 already


def test_a_breach_whose_weight_could_not_go_to_0_says_so_and_records_no_0(
    released: FakeRegistry, router: FakeRouter, metrics: FakeMetrics
) -> None:
    breach = event("breach", 10, metric="candidate_available", message="no replica up", weight_zero_error="router gone")
    with pytest.raises(AirflowFailException, match=r"could NOT be set to 0 \(router gone\): the rollback retries it"):
        gray(released, router).step_done(context(), event=breach, index=0, stable=1, done=[])
    assert released.writes_of("set_traffic") == []
    assert released.health[0][1].details["metric"] == "candidate_available"


def test_an_abort_fails_the_task_and_clears_the_request(
    released: FakeRegistry, router: FakeRouter, metrics: FakeMetrics
) -> None:
    released.release_control(MODEL, "abort", reason="wrong model", context={})
    with pytest.raises(AirflowFailException) as failed:
        gray(released, router).step_done(
            context(), event=event("aborted", 10, weight_zero_at=1000.0), index=0, stable=1, done=[]
        )
    assert str(failed.value) == (
        "gray release of demo_regressor v2 aborted at 10% from the registry; candidate weight set to 0"
    )
    assert released.health[0][1].details["metric"] == "aborted"
    assert weights_recorded(released) == [0]
    assert released.traffic[MODEL].pending_action is None
    assert released.writes_of("clear_pending_action")[0].args["cleared"] == "abort"


def test_low_traffic_fails_the_task(released: FakeRegistry, router: FakeRouter, metrics: FakeMetrics) -> None:
    low = event("low_traffic", 10, metric="candidate_requests", message="only 3 unversioned inference calls ...")
    with pytest.raises(AirflowFailException, match=r"stopped at 10%: only 3 unversioned inference calls"):
        gray(released, router).step_done(context(), event=low, index=0, stable=1, done=[])
    assert released.health[0][1].details["metric"] == "candidate_requests"


def test_a_registry_error_while_recording_a_breach_still_fails_without_retry(
    released: FakeRegistry, router: FakeRouter, metrics: FakeMetrics
) -> None:
    """A plain exception would be retried: the retry would start the release again and move traffic back to
    the candidate that just breached."""
    released.fail["record_health"] = RegistryUnavailable("registry down")
    breach = event("breach", 50, metric="error_rate", message="error rate", detected_at=1.0, weight_zero_at=1.1)
    with pytest.raises(AirflowFailException, match=r"the registry did not record it \(registry down\)"):
        gray(released, router).step_done(context(), event=breach, index=1, stable=1, done=[])


def test_the_rollback_after_a_breach_names_the_gray_release_and_its_problem(
    released: FakeRegistry, router: FakeRouter, metrics: FakeMetrics, service: FakeService, canary: FakeService
) -> None:
    service.serve(1, stable=1)
    canary.serve(2, canary=2)
    router.routes[f"{MODEL}/2"] = "canary"
    router.weight_map[MODEL] = 50  # the trigger could not set it to 0: the rollback does
    breach = event("breach", 50, metric="error_rate", message="error rate 12.00%", weight_zero_error="timeout")
    with pytest.raises(AirflowFailException):
        gray(released, router).step_done(context(), event=breach, index=1, stable=1, done=[])

    alert = RecordingAlertNotifier()
    rollback = inject(
        RollbackOperator(task_id="rollback", model_name=MODEL, notifiers=[alert]),
        registry=released,
        service=service,
        canary=canary,
        router=router,
    )
    rollout = {"model": MODEL, "version": 2, "target": TARGET, "stable": 1}
    out = rollback.execute(
        make_context(
            "rollback", {"export": exported(2), "rollout": rollout, "smoke": {}, "approval": {"approved": True}}
        )
    )
    assert out["failed_step"] == "gray_release" and out["restored"] == 1
    assert router.weight_map == {} and router.routes == {}
    assert released.state(2) == "rolled_back"
    assert (
        "after gray_release failed: gray release of demo_regressor v2 stopped at 50%: error rate 12.00%"
        in (alert.sent[0])
    )
    last = released.writes_of("set_traffic")[-1].args
    assert last["canary_version"] is None and last["canary_weight"] == 0 and last["stable_version"] == 1


# --------------------------------------------------------------------------- the router unreachable


def test_the_router_unreachable_during_a_bake_leaves_the_weight_and_says_how_to_finish(
    released: FakeRegistry, router: FakeRouter, metrics: FakeMetrics
) -> None:
    router.weight_map[MODEL] = 50
    error = event("error", 50, message="the router's runtime API at /run/haproxy.sock did not answer `show`")
    with pytest.raises(AirflowFailException) as failed:
        gray(released, router).step_done(context(), event=error, index=1, stable=1, done=[])
    message = str(failed.value)
    assert "THE ROUTER DID NOT ANSWER during the gray release of demo_regressor v2" in message
    assert "did not answer `show`" in message
    assert "stays where it was (50% of demo_regressor's unversioned inference calls)" in message
    assert "del map /state/haproxy/weights.map demo_regressor" in message and router.socket_path in message
    assert "rollback task" in message
    assert released.writes_of("set_traffic") == [] and released.health == []
    assert router.weight_map == {MODEL: 50}


def test_the_router_refusing_a_weight_fails_the_task_with_the_by_hand_message(
    released: FakeRegistry, router: FakeRouter, metrics: FakeMetrics
) -> None:
    router.fail = RouterError("the router refused `add map`")
    with pytest.raises(AirflowFailException) as failed:
        gray(released, router).execute(context())
    assert "THE ROUTER DID NOT ANSWER" in str(failed.value) and "stays where it was (0%" in str(failed.value)
    assert "the router refused `add map`" in str(failed.value)
    assert released.writes == []


def test_the_router_unreachable_for_the_baseline_changes_nothing(
    released: FakeRegistry, router: FakeRouter, metrics: FakeMetrics
) -> None:
    metrics.fail = RouterError("no socket")
    router.weight_map[MODEL] = 10
    with pytest.raises(AirflowFailException, match=r"stays where it was \(10%"):
        gray(released, router).step_done(context(), event=event("passed", 10), index=0, stable=1, done=[])
    assert router.calls == [("sample", MODEL)] and router.weight_map == {MODEL: 10}
    assert released.writes == []


# --------------------------------------------------------------------------- construction


def test_defaults_and_checks() -> None:
    op = GrayReleaseOperator(task_id="gray_release", model_name=MODEL, plan="{{ ti.xcom_pull('plan_release') }}")
    assert op.execution_timeout == timedelta(hours=6) and "plan" in op.template_fields
    with pytest.raises(ValueError, match="release_timeout must be positive"):
        GrayReleaseOperator(task_id="g", model_name=MODEL, plan={}, release_timeout=timedelta(0))


def test_a_plan_not_rendered_as_a_dict_is_refused(released: FakeRegistry, router: FakeRouter) -> None:
    with pytest.raises(TypeError, match="plan must be dict"):
        gray(released, router, "{'strategy': 'canary'}").execute(context())  # type: ignore[arg-type]
