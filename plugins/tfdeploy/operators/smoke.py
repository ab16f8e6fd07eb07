"""Smoke inference against the serving target: parity with what validation computed, metadata, and a
burst of requests with zero errors and latency within budget (and not much worse than stable)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from airflow.sdk.exceptions import AirflowFailException

from tfdeploy.operators.rollout import ServingStep


class SmokeTestOperator(ServingStep):
    template_fields = (*ServingStep.template_fields, "requests", "tolerance", "p99_budget_ms", "max_latency_ratio")

    def __init__(
        self,
        *,
        requests: int | str = 100,
        tolerance: float | str = 1e-4,
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
        record = self.registry.get_version(model, version)
        report = record["validationReport"]
        target = self.target_config()
        serving = target.serving
        problems: list[str] = []
        rows = report["goldenInputs"]
        rows = rows if isinstance(rows, list) else rows  # single-input signatures: a list of rows
        expected = np.asarray(report["goldenPredictions"], dtype=np.float64)
        signature = report.get("signatureName") or "serving_default"
        output_key = report.get("outputKey")
        for how, kwargs in (("version", {"version": version}), ("label canary", {"label": "canary"})):
            got = serving.predict(model, rows, signature_name=signature, **kwargs)["predictions"]
            got_arr = np.asarray([g[output_key] if isinstance(g, dict) else g for g in got], dtype=np.float64)
            diff = float(np.max(np.abs(got_arr.reshape(expected.shape) - expected))) if got_arr.size else float("inf")
            self.log.info("parity via %s: max |served - validated| = %.3g (tolerance %s)", how, diff, self.tolerance)
            if not diff <= float(self.tolerance):
                problems.append(f"served outputs via {how} differ from validation's by {diff:.3g} (> {self.tolerance})")
        meta = serving.metadata(model, version=version)["metadata"]["signature_def"]["signature_def"]
        if signature not in meta:
            problems.append(f"served metadata lacks signature {signature!r} (has {sorted(meta)})")
        lat, errors = self._burst(serving, model, rows[:1], signature, {"version": version})
        p50, p99 = float(np.percentile(lat, 50)), float(np.percentile(lat, 99))
        self.log.info("%d requests to v%s: %d errors, p50 %.2f ms, p99 %.2f ms", len(lat), version, errors, p50, p99)
        if errors:
            problems.append(f"{errors} of {self.requests} requests failed")
        if p99 > float(self.p99_budget_ms):
            problems.append(f"p99 {p99:.1f} ms is over the budget of {self.p99_budget_ms} ms")
        stable = self.registry.get_model(model).get("version")
        ratio = None
        if stable is not None and stable != version:
            stable_lat, _ = self._burst(serving, model, rows[:1], signature, {"label": "stable"})
            ratio = p50 / max(float(np.percentile(stable_lat, 50)), 1e-6)
            self.log.info("candidate p50 is %.2fx stable v%s's", ratio, stable)
            if ratio > float(self.max_latency_ratio):
                problems.append(f"p50 is {ratio:.2f}x stable's (allowed {self.max_latency_ratio}x)")
        status = "unhealthy" if problems else "healthy"
        self.registry.record_health(
            model,
            version=version,
            target=target.target.name,
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

    def _burst(self, serving: Any, model: str, rows: list, signature: str, where: dict) -> tuple[list[float], int]:
        lat, errors = [], 0
        for _ in range(int(self.requests)):
            t0 = time.perf_counter()
            try:
                serving.predict(model, rows, signature_name=signature, **where)
            except Exception:  # noqa: BLE001 - counted, not fatal here
                errors += 1
            lat.append((time.perf_counter() - t0) * 1e3)
        return lat, errors
