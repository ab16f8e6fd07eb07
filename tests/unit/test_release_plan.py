"""core.release: the gray release's plan (built from the DAG's Params, refused with the reason before anything
changes), the latency histogram read from real TF Serving metrics pages, Prometheus' quantile, and the judgement
of a step (candidate against stable)."""

from __future__ import annotations

import json
import math

import pytest
from tfserving_compat.metrics import BUCKETS, Metrics  # the project's TF-Serving-compatible server (include/)

from tfdeploy.core.release import (
    InvalidReleasePlan,
    LowTraffic,
    Outcome,
    ReleasePlan,
    Side,
    Strategy,
    judge,
    latency_buckets,
    plan_release,
    quantile,
)

INF = math.inf

# --------------------------------------------------------------------------- the plan


def test_defaults() -> None:
    plan = plan_release("canary", steps=[10, 50, 100])
    assert plan == ReleasePlan(
        Strategy.CANARY,
        (10, 50, 100),
        step_seconds=10.0,
        check_seconds=2.0,
        max_error_rate=0.01,
        max_p99_ratio=2.0,
        min_requests=20,
        low_traffic=LowTraffic.EXTEND,
        max_extensions=2,
    )


def test_all_at_once_has_no_steps_whatever_steps_says() -> None:
    assert plan_release("all_at_once", steps=[50, 10]).steps == ()
    assert plan_release("all_at_once").strategy == Strategy.ALL_AT_ONCE


@pytest.mark.parametrize(
    "steps",
    [[1, 5, 25, 50, 100], [100], [5, 50], (1, 2, 3)],
)
def test_canary_steps_are_kept_as_given(steps: list[int]) -> None:
    assert plan_release("canary", steps=steps).steps == tuple(steps)


@pytest.mark.parametrize(
    ("linear_step", "steps"),
    [(25, (25, 50, 75, 100)), (30, (30, 60, 90, 100)), (50, (50, 100)), (100, (100,)), (40, (40, 80, 100))],
)
def test_linear_steps_end_at_100(linear_step: int, steps: tuple[int, ...]) -> None:
    # the DAG always passes its steps Param too: linear ignores it
    assert plan_release("linear", linear_step=linear_step, steps=[50, 10]).steps == steps


@pytest.mark.parametrize(
    ("strategy", "options", "message"),
    [
        ("blue_green", {}, r"unknown strategy 'blue_green'; choose one of all_at_once, canary, linear"),
        ("canary", {"steps": [5, 5]}, r"steps must rise strictly: steps\[1\]=5 after 5 in \[5, 5\]"),
        ("canary", {"steps": [50, 10]}, r"steps must rise strictly: steps\[1\]=10 after 50 in \[50, 10\]"),
        ("canary", {"steps": [0, 50]}, r"steps\[0\] is 0: each step is a whole percent 1-100"),
        ("canary", {"steps": [50, 101]}, r"steps\[1\] is 101: each step is a whole percent 1-100"),
        ("canary", {"steps": [True, 50]}, r"steps\[0\] is True: each step is a whole percent"),
        ("canary", {"steps": [10, 50.5]}, r"steps\[1\] is 50.5"),
        ("canary", {"steps": []}, r"the canary strategy needs steps, e\.g\. \[5, 25, 50, 100\]"),
        ("linear", {"linear_step": 0}, r"linear_step must be a whole percent 1-100, got 0"),
        ("linear", {"linear_step": 101}, r"linear_step must be a whole percent 1-100, got 101"),
        ("linear", {"linear_step": True}, r"linear_step must be a whole percent 1-100, got True"),
        ("canary", {"steps": [10], "step_seconds": 0}, r"step_seconds must be a number of seconds > 0, got 0"),
        ("canary", {"steps": [10], "step_seconds": -5}, r"step_seconds must be a number of seconds > 0, got -5"),
        ("canary", {"steps": [10], "step_seconds": INF}, r"step_seconds must be a number of seconds > 0, got inf"),
        ("canary", {"steps": [10], "check_seconds": 0}, r"check_seconds must be a number of seconds > 0, got 0"),
        (
            "canary",
            {"steps": [10], "step_seconds": 5, "check_seconds": 6},
            r"check_seconds \(6\) must not exceed step_seconds \(5\)",
        ),
        ("canary", {"steps": [10], "max_error_rate": 1.5}, r"max_error_rate is a fraction 0-1, got 1.5"),
        ("canary", {"steps": [10], "max_error_rate": -0.1}, r"max_error_rate is a fraction 0-1, got -0.1"),
        ("canary", {"steps": [10], "max_p99_ratio": 0.5}, r"max_p99_ratio must be >= 1 .* got 0.5"),
        ("canary", {"steps": [10], "max_p99_ratio": math.nan}, r"max_p99_ratio must be >= 1 .* got nan"),
        ("canary", {"steps": [10], "min_requests": 0}, r"min_requests must be a whole number >= 1, got 0"),
        ("canary", {"steps": [10], "min_requests": True}, r"min_requests must be a whole number >= 1, got True"),
        ("canary", {"steps": [10], "max_extensions": -1}, r"max_extensions must be a whole number >= 0, got -1"),
        ("canary", {"steps": [10], "low_traffic": "retry"}, r"low_traffic must be extend or fail, got 'retry'"),
    ],
)
def test_refusals_name_the_problem(strategy: str, options: dict, message: str) -> None:
    with pytest.raises(InvalidReleasePlan, match=message):
        plan_release(strategy, **options)


def test_a_refusal_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        plan_release("canary", steps=[])


def test_the_plan_round_trips_through_json() -> None:
    plan = plan_release(
        "linear",
        linear_step=30,
        step_seconds=60,
        check_seconds=5,
        max_error_rate=0.02,
        max_p99_ratio=1.5,
        min_requests=50,
        low_traffic="fail",
        max_extensions=0,
    )
    data = json.loads(json.dumps(plan.to_dict()))  # what an XCom carries
    assert data["strategy"] == "linear" and data["low_traffic"] == "fail" and data["steps"] == [30, 60, 90, 100]
    assert ReleasePlan.from_dict(data) == plan
    assert ReleasePlan.from_dict(plan_release("all_at_once").to_dict()).steps == ()


# --------------------------------------------------------------------------- quantile


BUCKETS_50_100 = ((10.0, 0.0), (20.0, 50.0), (40.0, 100.0), (INF, 100.0))


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0.25, 15.0),  # rank 25 of 50 in (10, 20]: 10 + 10 * 25/50
        (0.5, 20.0),  # rank 50: the top of (10, 20]
        (0.75, 30.0),  # rank 75 in (20, 40]: 20 + 20 * 25/50
        (0.99, 39.6),  # rank 99 in (20, 40]: 20 + 20 * 49/50
        (1.0, 40.0),
    ],
)
def test_quantile_interpolates_within_the_bucket(q: float, expected: float) -> None:
    assert quantile(q, BUCKETS_50_100) == pytest.approx(expected)


def test_quantile_edges() -> None:
    assert quantile(0.5, ((100.0, 10.0), (INF, 10.0))) == pytest.approx(50.0)  # the first bucket starts at 0
    assert quantile(0.99, ((10.0, 90.0), (INF, 100.0))) == 10.0  # in +Inf: the highest finite bound
    assert quantile(0.99, ()) is None
    assert quantile(0.99, ((10.0, 0.0), (INF, 0.0))) is None  # no request in the window


# --------------------------------------------------------------------------- latency from TF Serving's page


def page(*requests: tuple[str, str, str, float]) -> str:
    """A TF Serving Prometheus page (the project's compatible server renders it as TF Serving does)."""
    metrics = Metrics()
    for model, entrypoint, status, seconds in requests:
        metrics.request(model, "predict", entrypoint, status, seconds)
    return metrics.exposition().decode()


def bound(i: int) -> float:
    """The i-th bucket's upper bound as the page prints it (six significant digits)."""
    return float(f"{BUCKETS[i]:.6g}")


# 1 ms falls in bucket 8 (612.2, 1102] microseconds, 10 ms in bucket 12 (6427, 11568]
REPLICA_1 = page(
    ("m1", "REST", "OK", 0.001),
    ("m1", "REST", "OK", 0.001),
    ("m1", "REST", "OK", 0.010),
    ("m1", "REST", "INVALID_ARGUMENT", 0.001),  # not OK: no latency recorded
    ("m1", "GRPC", "OK", 0.5),  # gRPC is not judged
    ("m2", "REST", "OK", 0.5),  # another model
    ("m10", "REST", "OK", 0.5),
)
REPLICA_2 = page(("m1", "REST", "OK", 0.001), ("m1", "REST", "OK", 0.001), ("m2", "REST", "OK", 0.001))


def test_latency_buckets_of_one_replica() -> None:
    buckets = latency_buckets([REPLICA_1], "m1")
    assert len(buckets) == len(BUCKETS) + 1 and buckets[-1] == (INF, 3.0)
    assert [le for le, _ in buckets] == sorted(le for le, _ in buckets)
    counts = dict(buckets)
    assert counts[bound(7)] == 0.0 and counts[bound(8)] == 2.0
    assert counts[bound(11)] == 2.0 and counts[bound(12)] == 3.0
    assert dict(latency_buckets([REPLICA_1], "m1", entrypoint="GRPC"))[INF] == 1.0


def test_latency_buckets_sum_the_replicas() -> None:
    both = latency_buckets([REPLICA_1, REPLICA_2], "m1")
    counts = dict(both)
    assert counts[bound(8)] == 4.0 and counts[bound(12)] == 5.0 and counts[INF] == 5.0
    # p50: rank 2.5 of the 4 in (612.2, 1102]; p99: rank 4.95, the 5th request's bucket (6427, 11568]
    assert quantile(0.5, both) == pytest.approx(bound(7) + (bound(8) - bound(7)) * 2.5 / 4)
    assert quantile(0.99, both) == pytest.approx(bound(11) + (bound(12) - bound(11)) * 0.95)
    assert Side(latency=both).p99_ms() == pytest.approx(quantile(0.99, both) / 1000)


def test_latency_buckets_of_an_absent_model_are_empty() -> None:
    assert latency_buckets([REPLICA_1, REPLICA_2], "m3") == ()
    assert latency_buckets([], "m1") == ()
    assert Side().p99_ms() is None


# --------------------------------------------------------------------------- the window


def test_side_minus_is_the_window() -> None:
    now = Side(100, 3, 2, ((10.0, 5.0), (20.0, 7.0), (INF, 8.0)))
    before = Side(40, 1, 1, ((10.0, 2.0), (INF, 3.0)))
    assert now.minus(before) == Side(60, 2, 1, ((10.0, 3.0), (20.0, 7.0), (INF, 5.0)))
    assert now.minus(Side()) == now
    assert now.errors == 5 and now.error_rate == pytest.approx(0.05) and now.latency_count == 8.0
    assert Side().error_rate == 0.0 and Side().latency_count == 0.0


def test_side_round_trips_through_json_and_airflows_serialization() -> None:
    side = Side(100, 3, 2, ((10.0, 5.0), (INF, 8.0)))
    assert Side.from_dict(json.loads(json.dumps(side.to_dict()))) == side
    # a trigger's kwargs: Airflow's serialization writes the +Inf bound as the string "inf"
    from airflow.serialization.serialized_objects import BaseSerialization

    stored = json.loads(json.dumps(BaseSerialization.serialize(side.to_dict())))
    assert Side.from_dict(BaseSerialization.deserialize(stored)) == side
    assert Side.from_dict({}) == Side()


# --------------------------------------------------------------------------- the judgement

# the judgement's rules at millisecond scale: no floor (p99_floor_ms has its own tests)
PLAN = plan_release("canary", steps=[10, 100], min_requests=20, max_error_rate=0.01, max_p99_ratio=2.0, p99_floor_ms=0)
FAST = ((1000.0, 99.0), (2000.0, 100.0), (INF, 100.0))  # p99 1 ms
SLOW = ((1000.0, 0.0), (5000.0, 100.0), (INF, 100.0))  # p99 4.96 ms


def test_error_rate_above_stables_by_more_than_allowed_is_a_breach() -> None:
    verdict = judge(PLAN, Side(100, 3, 2), Side(1000, 5, 5), candidate_up=True, bake_over=False)
    assert verdict.outcome == Outcome.BREACH and verdict.metric == "error_rate"
    assert "error rate 5.00% (5/100) on the candidate against 1.00% (10/1000) on stable" in verdict.message
    assert verdict.values["candidate_error_rate"] == 0.05 and verdict.values["stable_error_rate"] == 0.01
    assert verdict.values["candidate_requests"] == 100 and verdict.values["stable_errors"] == 10


def test_errors_stable_has_too_are_no_breach() -> None:
    candidate, stable = Side(100, 3, 2), Side(1000, 30, 20)
    assert judge(PLAN, candidate, stable, candidate_up=True, bake_over=False).outcome == Outcome.WAIT
    assert judge(PLAN, candidate, stable, candidate_up=True, bake_over=True).outcome == Outcome.PASS
    # exactly max_error_rate above: still allowed
    assert judge(PLAN, Side(100, 2, 0), Side(100, 1, 0), candidate_up=True, bake_over=True).outcome == Outcome.PASS


def test_p99_over_the_ratio_is_a_breach() -> None:
    verdict = judge(PLAN, Side(100, latency=SLOW), Side(1000, latency=FAST), candidate_up=True, bake_over=False)
    assert verdict.outcome == Outcome.BREACH and verdict.metric == "p99_latency_ratio"
    assert "p99 latency 5.0 ms on the candidate against 1.0 ms on stable: 5.0x, over the 2x allowed" in verdict.message
    assert verdict.values["candidate_p99_ms"] == pytest.approx(4.96)
    assert verdict.values["stable_p99_ms"] == pytest.approx(1.0)


def test_a_few_milliseconds_of_jitter_below_the_floor_is_no_breach() -> None:
    """5 ms against 1 ms is 5x, but both are fast: with the default floor of 50 ms the ratio is taken of 50 ms."""
    floored = plan_release("canary", steps=[10, 100], min_requests=20, max_p99_ratio=2.0)
    assert floored.p99_floor_ms == 50.0
    verdict = judge(floored, Side(100, latency=SLOW), Side(1000, latency=FAST), candidate_up=True, bake_over=True)
    assert verdict.outcome == Outcome.PASS
    slow = tuple((le * 100, count) for le, count in SLOW)  # ~496 ms: over 2 x 50 ms
    verdict = judge(floored, Side(100, latency=slow), Side(1000, latency=FAST), candidate_up=True, bake_over=False)
    assert verdict.outcome == Outcome.BREACH and "of at least 50 ms" in verdict.message


@pytest.mark.parametrize("floor", [-1, True, float("inf"), "50"])
def test_a_bad_p99_floor_is_refused(floor: object) -> None:
    with pytest.raises(InvalidReleasePlan, match="p99_floor_ms must be a number of milliseconds >= 0"):
        plan_release("canary", steps=[10, 100], p99_floor_ms=floor)  # type: ignore[arg-type]


def test_p99_needs_min_requests_with_a_latency_on_both_sides() -> None:
    few = ((1000.0, 0.0), (5000.0, 10.0), (INF, 10.0))  # 10 OK requests only
    verdict = judge(PLAN, Side(100, latency=few), Side(1000, latency=FAST), candidate_up=True, bake_over=False)
    assert verdict.outcome == Outcome.WAIT
    assert judge(PLAN, Side(100, latency=SLOW), Side(1000), candidate_up=True, bake_over=True).outcome == Outcome.PASS


def test_nothing_is_judged_below_min_requests() -> None:
    all_errors = Side(19, 0, 19)
    assert judge(PLAN, all_errors, Side(1000), candidate_up=True, bake_over=False).outcome == Outcome.WAIT


def test_the_candidate_pool_down_is_a_breach_at_once() -> None:
    verdict = judge(PLAN, Side(), Side(), candidate_up=False, bake_over=False)
    assert verdict.outcome == Outcome.BREACH and verdict.metric == "candidate_available"
    assert "no replica up" in verdict.message


def test_too_few_requests_when_the_bake_is_over_is_low_traffic_never_a_pass() -> None:
    verdict = judge(PLAN, Side(5), Side(1000), candidate_up=True, bake_over=True)
    assert verdict.outcome == Outcome.LOW_TRAFFIC and verdict.metric == "candidate_requests"
    assert "only 5 unversioned inference calls reached the candidate" in verdict.message
    assert "20 are needed" in verdict.message


def test_a_good_step_passes_when_the_bake_is_over() -> None:
    candidate, stable = Side(100, 1, 0, FAST), Side(1000, 10, 0, FAST)
    assert judge(PLAN, candidate, stable, candidate_up=True, bake_over=False).outcome == Outcome.WAIT
    verdict = judge(PLAN, candidate, stable, candidate_up=True, bake_over=True)
    assert verdict.outcome == Outcome.PASS and verdict.message == "within thresholds"
    assert verdict.values == {
        "candidate_requests": 100,
        "candidate_errors": 1,
        "stable_requests": 1000,
        "stable_errors": 10,
        "candidate_p99_ms": pytest.approx(1.0),
        "stable_p99_ms": pytest.approx(1.0),
    }
    assert "candidate_p99_ms" not in judge(PLAN, Side(100), Side(1000), candidate_up=True, bake_over=True).values
