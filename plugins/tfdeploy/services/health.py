"""A production model's health, checked as clients see it (the model_health DAG).

Checks, for the model's production version on a serving target:
 - each stable replica's model status: the version AVAILABLE there;
 - one golden predict through the router (unversioned, as clients call), compared with the predictions
   validation recorded (parity);
 - Prometheus' rates over the last minutes: error rate and p99 latency of the model's requests.
Status: ``failing`` when no replica serves the version or the golden predict is not answered or answers
wrongly; ``degraded`` when some replicas lack it, or the error rate or p99 is over budget; else ``healthy``.
Prometheus being unreachable is recorded, not counted against the model.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tfdeploy.core.errors import PrometheusError, ServingError
from tfdeploy.hooks.prometheus import PrometheusHook
from tfdeploy.hooks.tfserving import AVAILABLE, TFServingHook

log = logging.getLogger(__name__)
STATUSES = ("healthy", "degraded", "failing")


def instances(golden_inputs: Any) -> list[Any]:
    """TF Serving's row format from the golden inputs: a list of rows as it is, or ``{input: rows}`` turned
    into one ``{input: value}`` object per row (named inputs)."""
    if not isinstance(golden_inputs, dict):
        return list(golden_inputs)
    count = len(next(iter(golden_inputs.values()), []))
    return [{name: values[i] for name, values in golden_inputs.items()} for i in range(count)]


def parity_problem(
    serving: TFServingHook,
    model: str,
    report: dict[str, Any],
    tolerance: float,
    *,
    how: str,
    rows: int | None = None,
    **spec: Any,
) -> tuple[float | None, str | None]:
    """Golden inputs through ``serving`` (``spec``: version=, label= or nothing) against validation's predictions.

    Returns (largest |served - validated| difference, the problem or None)."""
    golden = instances(report["goldenInputs"])[: rows or None]
    expected = np.asarray(report["goldenPredictions"], dtype=np.float64)[: len(golden)]
    signature = report.get("signatureName") or "serving_default"
    output_key = report.get("outputKey")
    try:
        got = serving.predict(model, golden, signature_name=signature, **spec)["predictions"]
    except ServingError as exc:
        return None, f"golden inputs via {how} were not answered: {exc}"
    got_arr = np.asarray([g[output_key] if isinstance(g, dict) else g for g in got], dtype=np.float64)
    if got_arr.size != expected.size:
        return None, (
            f"served outputs via {how} have {got_arr.size} values, validation's {expected.size} "
            f"(shape {list(got_arr.shape)} against {list(expected.shape)})"
        )
    diff = float(np.max(np.abs(got_arr.reshape(expected.shape) - expected))) if got_arr.size else float("inf")
    if not diff <= tolerance:
        return diff, f"served outputs via {how} differ from validation's by {diff:.3g} (> {tolerance})"
    return diff, None


@dataclass(frozen=True)
class Budgets:
    max_error_rate: float = 0.05
    p99_ms: float = 500.0
    tolerance: float = 1e-4
    window: str = "5m"


@dataclass
class HealthReport:
    model: str
    version: int
    status: str = "healthy"
    checks: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def worse(self, status: str, problem: str) -> None:
        self.problems.append(problem)
        if STATUSES.index(status) > STATUSES.index(self.status):
            self.status = status

    def details(self) -> dict[str, Any]:
        """The checks as the registry records them: JSON, so a NaN or infinite value (a model answering NaN,
        Prometheus' +Inf p99) is written as its name ("nan", "inf"), which strict JSON encoders accept."""
        checks = {k: str(v) if isinstance(v, float) and not math.isfinite(v) else v for k, v in self.checks.items()}
        return {"check": "model_health", **checks, "problems": self.problems}


def check_model(
    model: str,
    version: int,
    report: dict[str, Any],
    *,
    replicas: list[TFServingHook],
    router: TFServingHook,
    prometheus: PrometheusHook | None,
    budgets: Budgets = Budgets(),
) -> HealthReport:
    """The production version's health now (see the module's docstring)."""
    out = HealthReport(model, version)
    states: dict[str, str] = {}
    for replica in replicas:
        try:
            state = replica.model_status(model).get(version, ("NOT_LOADED", ""))[0]
        except ServingError as exc:
            state = f"unreachable ({exc.__class__.__name__})"
        states[replica.rest_url] = state
    out.checks["replicas"] = states
    available = sum(1 for s in states.values() if s == AVAILABLE)
    if available == 0:
        out.worse("failing", f"v{version} is AVAILABLE on none of {len(states)} replicas: {states}")
    elif available < len(states):
        out.worse("degraded", f"v{version} is AVAILABLE on {available} of {len(states)} replicas: {states}")
    if report.get("goldenInputs") is not None and report.get("goldenPredictions") is not None:
        diff, problem = parity_problem(router, model, report, budgets.tolerance, how="the router", rows=1)
        out.checks["goldenMaxDiff"] = diff
        if problem:
            out.worse("failing", problem)
    else:
        out.checks["goldenMaxDiff"] = None
        out.problems.append("no golden predictions recorded at validation: parity not checked")
    if prometheus is not None:
        out.checks.update(_rates(prometheus, model, budgets, out))
    return out


def _rates(prometheus: PrometheusHook, model: str, budgets: Budgets, out: HealthReport) -> dict[str, Any]:
    name, window = model.replace('"', ""), budgets.window
    total = f'sum(rate(:tensorflow:serving:request_count{{model_name="{name}"}}[{window}]))'
    failed = f'sum(rate(:tensorflow:serving:request_count{{model_name="{name}",status!="OK"}}[{window}]))'
    p99 = (
        f"histogram_quantile(0.99, sum by (le) "
        f'(rate(:tensorflow:serving:request_latency_bucket{{model_name="{name}"}}[{window}]))) / 1000'
    )
    try:
        rate = prometheus.scalar(total)
        errors = prometheus.scalar(failed) or 0.0
        p99_ms = prometheus.scalar(p99)
    except PrometheusError as exc:
        log.warning("Prometheus rates of %s not checked: %s", model, exc)
        return {"prometheus": f"unreachable: {exc}"}
    error_rate = errors / rate if rate else None
    if error_rate is not None and error_rate > budgets.max_error_rate:
        out.worse(
            "degraded", f"error rate {error_rate:.1%} over the last {window} (budget {budgets.max_error_rate:.1%})"
        )
    if p99_ms is not None and p99_ms > budgets.p99_ms:
        out.worse("degraded", f"p99 {p99_ms:.0f} ms over the last {window} (budget {budgets.p99_ms:.0f} ms)")
    return {"requestRate": rate, "errorRate": error_rate, "p99Ms": p99_ms}
