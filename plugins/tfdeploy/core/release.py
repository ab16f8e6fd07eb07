"""Gray release: the plan (strategy, weight steps, bake time, thresholds) and the judgement of a step.

Pure: no I/O. The plan is checked once, by the run's first task, before anything changes; a step is judged
from two sources of live metrics of the model, candidate (canary pool) against stable (stable pool), over the
step's window (now minus the counters when its weight was set):
 - the router's per-side counters of unversioned inference calls (requests, 4xx and 5xx answers);
 - the replicas' own request-latency histograms (TF Serving's ``:tensorflow:serving:request_latency``, OK
   requests, REST), summed over each pool's replicas, for p99.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from tfdeploy.core.errors import TfdeployError

LATENCY_METRIC = ":tensorflow:serving:request_latency"
METRICS_PATH = "/monitoring/prometheus/metrics"


class InvalidReleasePlan(TfdeployError, ValueError):
    """The release strategy's Params cannot make a plan (says which and why); nothing was changed."""


class Strategy(StrEnum):
    ALL_AT_ONCE = "all_at_once"  # promote after the smoke test: the stable pool takes all traffic at once
    CANARY = "canary"  # the weights in ``steps``, each baked and judged
    LINEAR = "linear"  # equal steps of ``linear_step`` percent up to 100, each baked and judged


class LowTraffic(StrEnum):
    EXTEND = "extend"  # bake again (at most ``max_extensions`` times), then fail
    FAIL = "fail"  # fail at once: the step is not judged, so it does not pass


@dataclass(frozen=True)
class ReleasePlan:
    """What a gray release does; :func:`plan_release` builds it from the DAG's Params."""

    strategy: Strategy
    steps: tuple[int, ...] = ()
    step_seconds: float = 10.0
    check_seconds: float = 2.0
    max_error_rate: float = 0.01
    max_p99_ratio: float = 2.0
    p99_floor_ms: float = 50.0
    min_requests: int = 20
    low_traffic: LowTraffic = LowTraffic.EXTEND
    max_extensions: int = 2

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["strategy"], out["low_traffic"], out["steps"] = str(self.strategy), str(self.low_traffic), list(self.steps)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReleasePlan:
        return cls(
            strategy=Strategy(data["strategy"]),
            steps=tuple(int(s) for s in data.get("steps", ())),
            step_seconds=float(data["step_seconds"]),
            check_seconds=float(data["check_seconds"]),
            max_error_rate=float(data["max_error_rate"]),
            max_p99_ratio=float(data["max_p99_ratio"]),
            p99_floor_ms=float(data.get("p99_floor_ms", 50.0)),
            min_requests=int(data["min_requests"]),
            low_traffic=LowTraffic(data["low_traffic"]),
            max_extensions=int(data["max_extensions"]),
        )


def plan_release(
    strategy: str,
    *,
    steps: Sequence[Any] = (),
    linear_step: int = 25,
    step_seconds: float = 10.0,
    check_seconds: float = 2.0,
    max_error_rate: float = 0.01,
    max_p99_ratio: float = 2.0,
    p99_floor_ms: float = 50.0,
    min_requests: int = 20,
    low_traffic: str = "extend",
    max_extensions: int = 2,
) -> ReleasePlan:
    """Check the Params and build the plan; :class:`InvalidReleasePlan` names the first problem.

    The DAG's Param schema refuses most bad input already (unknown strategy, weights outside 0-100, negative
    times); this also says what JSON Schema cannot: that the steps rise strictly."""
    try:
        kind = Strategy(strategy)
    except ValueError:
        raise InvalidReleasePlan(
            f"unknown strategy {strategy!r}; choose one of {', '.join(s.value for s in Strategy)}"
        ) from None
    try:
        on_low = LowTraffic(low_traffic)
    except ValueError:
        raise InvalidReleasePlan(
            f"low_traffic must be {' or '.join(v.value for v in LowTraffic)}, got {low_traffic!r}"
        ) from None
    if kind == Strategy.LINEAR:
        if isinstance(linear_step, bool) or not isinstance(linear_step, int) or not 1 <= linear_step <= 100:
            raise InvalidReleasePlan(f"linear_step must be a whole percent 1-100, got {linear_step!r}")
        weights = tuple(range(linear_step, 100, linear_step)) + (100,)
    elif kind == Strategy.CANARY:
        weights = _steps(steps)
    else:
        weights = ()
    for name, value, low in (("step_seconds", step_seconds, 0.0), ("check_seconds", check_seconds, 0.0)):
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value <= low:
            raise InvalidReleasePlan(f"{name} must be a number of seconds > 0, got {value!r}")
    if check_seconds > step_seconds:
        raise InvalidReleasePlan(f"check_seconds ({check_seconds:g}) must not exceed step_seconds ({step_seconds:g})")
    if not isinstance(max_error_rate, int | float) or not 0 <= max_error_rate <= 1:
        raise InvalidReleasePlan(f"max_error_rate is a fraction 0-1, got {max_error_rate!r}")
    if not isinstance(max_p99_ratio, int | float) or not max_p99_ratio >= 1:
        raise InvalidReleasePlan(f"max_p99_ratio must be >= 1 (candidate p99 / stable p99), got {max_p99_ratio!r}")
    if isinstance(p99_floor_ms, bool) or not isinstance(p99_floor_ms, int | float) or not 0 <= p99_floor_ms < math.inf:
        raise InvalidReleasePlan(f"p99_floor_ms must be a number of milliseconds >= 0, got {p99_floor_ms!r}")
    for name, count, low in (("min_requests", min_requests, 1), ("max_extensions", max_extensions, 0)):
        if isinstance(count, bool) or not isinstance(count, int) or count < low:
            raise InvalidReleasePlan(f"{name} must be a whole number >= {low}, got {count!r}")
    return ReleasePlan(
        kind,
        weights,
        float(step_seconds),
        float(check_seconds),
        float(max_error_rate),
        float(max_p99_ratio),
        float(p99_floor_ms),
        int(min_requests),
        on_low,
        int(max_extensions),
    )


def _steps(steps: Sequence[Any]) -> tuple[int, ...]:
    if not steps:
        raise InvalidReleasePlan("the canary strategy needs steps, e.g. [5, 25, 50, 100] (percent of traffic)")
    out: list[int] = []
    for i, step in enumerate(steps):
        if isinstance(step, bool) or not isinstance(step, int) or not 1 <= step <= 100:
            raise InvalidReleasePlan(f"steps[{i}] is {step!r}: each step is a whole percent 1-100")
        if out and step <= out[-1]:
            raise InvalidReleasePlan(
                f"steps must rise strictly: steps[{i}]={step} after {out[-1]} in {list(steps)}; "
                "a gray release only moves traffic towards the candidate (abort it to go back)"
            )
        out.append(step)
    return tuple(out)


# --------------------------------------------------------------------------- live metrics


@dataclass(frozen=True)
class Side:
    """One side's metrics over a window: the router's counts and the OK requests' latency histogram
    (cumulative bucket counts by upper bound, microseconds, as TF Serving exports them)."""

    requests: int = 0
    client_errors: int = 0
    server_errors: int = 0
    latency: tuple[tuple[float, float], ...] = ()

    @property
    def errors(self) -> int:
        return self.client_errors + self.server_errors

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def latency_count(self) -> float:
        return self.latency[-1][1] if self.latency else 0.0

    def p99_ms(self) -> float | None:
        value = quantile(0.99, self.latency)
        return None if value is None else value / 1000.0

    def minus(self, before: Side) -> Side:
        earlier = dict(before.latency)
        return Side(
            self.requests - before.requests,
            self.client_errors - before.client_errors,
            self.server_errors - before.server_errors,
            tuple((le, count - earlier.get(le, 0.0)) for le, count in self.latency),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "client_errors": self.client_errors,
            "server_errors": self.server_errors,
            # bounds as text: the last is +Inf, which JSON (trigger kwargs, XCom) cannot carry as a number
            "latency": [[repr(le), count] for le, count in self.latency],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Side:
        return cls(
            int(data.get("requests", 0)),
            int(data.get("client_errors", 0)),
            int(data.get("server_errors", 0)),
            tuple((float(le), float(c)) for le, c in data.get("latency", ())),
        )


def latency_buckets(pages: Iterable[str], model: str, *, entrypoint: str = "REST") -> tuple[tuple[float, float], ...]:
    """``model``'s OK-request latency histogram summed over replicas' Prometheus pages (TF Serving's
    ``/monitoring/prometheus/metrics``): cumulative counts by upper bound in microseconds, ``+Inf`` last."""
    from prometheus_client.parser import text_string_to_metric_families

    totals: dict[float, float] = {}
    for page in pages:
        for family in text_string_to_metric_families(page):
            if family.name != LATENCY_METRIC:
                continue
            for sample in family.samples:
                labels = sample.labels
                if (
                    sample.name.endswith("_bucket")
                    and labels.get("model_name") == model
                    and labels.get("entrypoint") == entrypoint
                ):
                    le = float(labels["le"])
                    totals[le] = totals.get(le, 0.0) + float(sample.value)
    return tuple(sorted(totals.items()))


def quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """Prometheus' ``histogram_quantile``: linear interpolation within the bucket that holds rank ``q``."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):
                return lower_bound
            if count == lower_count:
                return upper
            return lower_bound + (upper - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = upper, count
    return lower_bound


# --------------------------------------------------------------------------- judgement


class Outcome(StrEnum):
    BREACH = "breach"  # a threshold is crossed: weight to 0 and roll back
    PASS = "pass"  # the bake is over and the step was judged good
    WAIT = "wait"  # nothing wrong so far; the bake goes on
    LOW_TRAFFIC = "low_traffic"  # the bake is over but too few requests reached the candidate to judge it


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    message: str
    metric: str = ""
    values: dict[str, Any] = field(default_factory=dict)


def judge(plan: ReleasePlan, candidate: Side, stable: Side, *, candidate_up: bool, bake_over: bool) -> Verdict:
    """Judge a step's window, candidate against stable.

    Breaches, checked at every look: the candidate pool has no replica up; once the candidate has answered
    ``min_requests`` requests, its error rate (4xx and 5xx answers) above the stable's by more than
    ``max_error_rate``, or its p99 latency over ``max_p99_ratio`` times the stable's or ``p99_floor_ms``,
    whichever is higher (when both have ``min_requests`` OK requests in the window: a few milliseconds' jitter
    between two fast versions is not a regression). With no breach, the step passes when the bake is over and the
    candidate had ``min_requests`` requests; otherwise it is LOW_TRAFFIC, never a silent pass."""
    counts = {
        "candidate_requests": candidate.requests,
        "candidate_errors": candidate.errors,
        "stable_requests": stable.requests,
        "stable_errors": stable.errors,
    }
    if not candidate_up:
        return Verdict(
            Outcome.BREACH,
            "the canary pool has no replica up: the candidate's share of calls fails",
            "candidate_available",
            counts,
        )
    if candidate.requests >= plan.min_requests:
        cand_rate, stable_rate = candidate.error_rate, stable.error_rate
        if cand_rate > stable_rate + plan.max_error_rate:
            return Verdict(
                Outcome.BREACH,
                f"error rate {cand_rate:.2%} ({candidate.errors}/{candidate.requests}) on the candidate against "
                f"{stable_rate:.2%} ({stable.errors}/{stable.requests}) on stable: more than "
                f"{plan.max_error_rate:.2%} above it",
                "error_rate",
                counts | {"candidate_error_rate": round(cand_rate, 4), "stable_error_rate": round(stable_rate, 4)},
            )
        cand_p99, stable_p99 = candidate.p99_ms(), stable.p99_ms()
        if (
            cand_p99 is not None
            and stable_p99
            and candidate.latency_count >= plan.min_requests
            and stable.latency_count >= plan.min_requests
            and cand_p99 > plan.max_p99_ratio * max(stable_p99, plan.p99_floor_ms)
        ):
            return Verdict(
                Outcome.BREACH,
                f"p99 latency {cand_p99:.1f} ms on the candidate against {stable_p99:.1f} ms on stable: "
                f"{cand_p99 / stable_p99:.1f}x, over the {plan.max_p99_ratio:g}x allowed (of at least "
                f"{plan.p99_floor_ms:g} ms)",
                "p99_latency_ratio",
                counts | {"candidate_p99_ms": round(cand_p99, 3), "stable_p99_ms": round(stable_p99, 3)},
            )
    if not bake_over:
        return Verdict(Outcome.WAIT, "baking", values=counts)
    if candidate.requests < plan.min_requests:
        return Verdict(
            Outcome.LOW_TRAFFIC,
            f"only {candidate.requests} unversioned inference calls reached the candidate during the bake; "
            f"{plan.min_requests} are needed to judge the step",
            "candidate_requests",
            counts,
        )
    p99 = {"candidate_p99_ms": candidate.p99_ms(), "stable_p99_ms": stable.p99_ms()}
    return Verdict(Outcome.PASS, "within thresholds", values=counts | {k: v for k, v in p99.items() if v is not None})
