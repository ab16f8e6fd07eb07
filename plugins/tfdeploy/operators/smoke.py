"""Smoke inference against the serving target: parity with what validation computed, metadata, and a
burst of requests with zero errors and latency within budget (and not much worse than stable)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from airflow.sdk.exceptions import AirflowFailException

from tfdeploy.operators.base import ServingStep, typed
from tfdeploy.services.health import instances, parity_problem


class SmokeTestOperator(ServingStep):
    """Judges the candidate as clients reach it: golden inputs through ``/versions/<v>`` and ``/labels/canary``
    must match validation's predictions, metadata must list the signature, and a burst of requests must have
    zero errors, p99 within budget and p50 not much worse than stable's. The result is a health record.

    :param requests: requests in the latency burst (templated; an int after rendering).
    :param tolerance: largest allowed |served - validated| difference.
    :param p99_budget_ms: p99 latency budget of the burst.
    :param max_latency_ratio: largest allowed candidate p50 / stable p50.
    :param serving_target: the serving target's name.
    :param serving_image: the serving image; empty: the configured ``SERVING_IMAGE``.
    """

    template_fields = (*ServingStep.template_fields, "requests", "tolerance", "p99_budget_ms", "max_latency_ratio")

    def __init__(
        self,
        *,
        requests: int | str = 100,
        tolerance: float = 1e-4,
        p99_budget_ms: float | str = 250.0,
        max_latency_ratio: float | str = 3.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.requests = requests
        self.tolerance = tolerance
        self.p99_budget_ms = p99_budget_ms
        self.max_latency_ratio = max_latency_ratio

    def execute(self, context: Any) -> dict:
        model = self.checked_model_name()
        version = self.candidate(context)
        count = typed(self.requests, int, "requests")
        tolerance = typed(self.tolerance, (int, float), "tolerance")
        p99_budget = typed(self.p99_budget_ms, (int, float), "p99_budget_ms")
        max_ratio = typed(self.max_latency_ratio, (int, float), "max_latency_ratio")
        report = self.registry.get_version(model, version).validation_report
        service = self.canary  # the candidate serves in the canary pool; stable in the stable pool
        serving = service.serving
        problems: list[str] = []
        rows = instances(report["goldenInputs"])
        signature = report.get("signatureName") or "serving_default"
        for how, kwargs in (("version", {"version": version}), ("label canary", {"label": "canary"})):
            diff, problem = parity_problem(serving, model, report, tolerance, how=how, **kwargs)
            self.log.info("parity via %s: max |served - validated| = %s (tolerance %s)", how, diff, tolerance)
            if problem:
                problems.append(problem)
        meta = serving.metadata(model, version=version)["metadata"]["signature_def"]["signature_def"]
        if signature not in meta:
            problems.append(f"served metadata lacks signature {signature!r} (has {sorted(meta)})")
        lat, errors = self._burst(serving, model, rows[:1], signature, {"version": version}, count)
        p50, p99 = float(np.percentile(lat, 50)), float(np.percentile(lat, 99))
        self.log.info("%d requests to v%s: %d errors, p50 %.2f ms, p99 %.2f ms", len(lat), version, errors, p50, p99)
        if errors:
            problems.append(f"{errors} of {count} requests failed")
        if p99 > p99_budget:
            problems.append(f"p99 {p99:.1f} ms is over the budget of {p99_budget} ms")
        stable = self.registry.production_version(model)
        ratio = None
        if stable is not None and stable != version:
            stable_lat, _ = self._burst(self.service.serving, model, rows[:1], signature, {"label": "stable"}, count)
            ratio = p50 / max(float(np.percentile(stable_lat, 50)), 1e-6)
            self.log.info("candidate p50 is %.2fx stable v%s's", ratio, stable)
            if ratio > max_ratio:
                problems.append(f"p50 is {ratio:.2f}x stable's (allowed {max_ratio}x)")
        status = "failing" if problems else "healthy"
        self.registry.record_health(
            model,
            version=version,
            target=service.name,
            status=status,
            details={
                "check": "smoke",
                "p50Ms": round(p50, 3),
                "p99Ms": round(p99, 3),
                "errors": errors,
                "latencyRatioVsStable": ratio,
                "problems": problems,
            },
            context=self.lineage(context),
        )
        if problems:
            raise AirflowFailException(f"smoke test of {model} v{version} failed: " + "; ".join(problems))
        return {"model": model, "version": version, "p50_ms": round(p50, 3), "p99_ms": round(p99, 3)}

    @staticmethod
    def _burst(
        serving: Any, model: str, rows: list, signature: str, where: dict, count: int
    ) -> tuple[list[float], int]:
        lat, errors = [], 0
        for _ in range(count):
            t0 = time.perf_counter()
            try:
                serving.predict(model, rows, signature_name=signature, **where)
            except Exception:  # noqa: BLE001 - counted, not fatal here
                errors += 1
            lat.append((time.perf_counter() - t0) * 1e3)
        return lat, errors
