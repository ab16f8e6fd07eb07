"""Validate: the published copy (fetched back from HDFS, checksums checked) against signatures, golden
examples and thresholds. The model is loaded and run only in the sandbox (``hooks/sandbox.py``); the verdict is
judged here. The report goes to the registry; the version ends `validated` or `rejected`."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from tfdeploy.core.errors import SandboxFailed
from tfdeploy.core.golden import METRICS, judge, load_golden, metric_value
from tfdeploy.core.states import ModelState
from tfdeploy.hooks.model_store import ModelStoreHook
from tfdeploy.operators.base import typed
from tfdeploy.operators.sandboxed import SandboxStep
from tfdeploy.settings import get_settings

LATENCY_RUNS = 50  # single-row calls timed in the sandbox after one warm call; their median is judged


class ValidateModelOperator(SandboxStep):
    """Judges the published copy of the version: signature, golden-example metric against an absolute threshold
    and against production, optional in-process latency budget. The version ends ``validated`` or
    ``rejected``; the report (with the golden predictions smoke inference compares with) goes to the registry.

    :param golden_path: golden examples JSON (inputs, labels, signature_name), under one of ``GOLDEN_ROOTS``.
    :param signature_name: the signature to check and run.
    :param required_inputs: input name -> dtype the signature must have.
    :param required_outputs: output names the signature must have (the first is the one scored).
    :param metric: ``mae`` or ``accuracy``.
    :param threshold: maximum MAE / minimum accuracy; None: no absolute threshold.
    :param max_regression: allowed worsening of the metric against the production version; None: unchecked.
    :param latency_budget_ms: maximum p50 latency of one row, run in the sandbox (its CPU limit applies);
        None: unchecked.
    :param webhdfs_conn_id: the HDFS provider's Connection.
    :param kwargs: ``SandboxStep``'s (``sandbox_limits``, ``sandbox_image``, ``sandbox_conn_id``) and
        ``DeployStep``'s.
    """

    template_fields = (
        *SandboxStep.template_fields,
        "golden_path",
        "signature_name",
        "metric",
        "threshold",
        "max_regression",
        "latency_budget_ms",
        "required_inputs",
        "required_outputs",
    )

    def __init__(
        self,
        *,
        golden_path: str,
        signature_name: str = "serving_default",
        required_inputs: dict[str, str] | None = None,
        required_outputs: list[str] | None = None,
        metric: str = "mae",
        threshold: float | str | None = None,
        max_regression: float | str | None = None,
        latency_budget_ms: float | str | None = None,
        webhdfs_conn_id: str = "webhdfs_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(metric, str) and "{{" not in metric and metric not in METRICS:
            raise ValueError(f"{self.task_id}: metric must be one of {METRICS}, got {metric!r}")
        self.golden_path = golden_path
        self.signature_name = signature_name
        self.required_inputs = required_inputs
        self.required_outputs = required_outputs
        self.metric = metric
        self.threshold: Any = threshold
        self.max_regression: Any = max_regression
        self.latency_budget_ms: Any = latency_budget_ms
        self.webhdfs_conn_id = webhdfs_conn_id

    def execute(self, context: Any) -> dict:
        model = self.checked_model_name()
        version = self.candidate(context)
        for name in ("threshold", "max_regression", "latency_budget_ms"):
            typed(getattr(self, name), (int, float), name, optional=True)
        record = self.registry.get_version(model, version)
        if record.state == ModelState.REJECTED:
            raise AirflowFailException(f"{model} v{version} was rejected: {record.validation_report.get('problems')}")
        if record.state != ModelState.REGISTERED:  # a rerun after the verdict: the registry already holds it
            self.log.info("%s v%s is already %s; nothing to validate again", model, version, record.state.value)
            return {"model": model, "version": version, "state": record.state.value}
        report, metrics, signatures = self._validate(model, version, record.manifest_sha256)
        lineage = self.lineage(context)
        self.registry.update_report(
            model, version, metrics=metrics, validation_report=report, signatures=signatures, context=lineage
        )
        verdict = ModelState.REJECTED if report["problems"] else ModelState.VALIDATED
        reason = "; ".join(report["problems"]) or "all checks passed"
        self.registry.transition(
            model, version, verdict, reason=reason, expected=ModelState.REGISTERED, context=lineage
        )
        for check in report["checks"]:
            self.log.info("check: %s", check)
        if report["problems"]:
            raise AirflowFailException(f"{model} v{version} rejected, production untouched: {reason}")
        self.log.info("%s v%s validated: %s", model, version, metrics)
        return {"model": model, "version": version, "state": verdict.value}

    # ------------------------------------------------------------------------------------------------

    def _validate(self, model: str, version: int, manifest_sha256: str) -> tuple[dict, dict, dict]:
        import numpy as np

        checks: list[str] = []
        problems: list[str] = []
        golden = load_golden(self.golden_path, roots=get_settings().golden_roots)
        sig_name = self.signature_name or golden.signature_name
        with tempfile.TemporaryDirectory(prefix=f"validate-{model}-") as tmp:
            local = ModelStoreHook(self.webhdfs_conn_id).fetch(
                model, version, Path(tmp) / "model", expected_manifest_sha256=manifest_sha256 or None
            )
            checks.append(
                f"fetched v{version} from HDFS; its manifest is the one registered and every file matches its sha256"
            )
            # the model is loaded and run only in the sandbox: its signatures, golden outputs and latency come back
            ran, run = self.sandbox.validate(
                local,
                signature_name=sig_name,
                inputs=golden.inputs,
                latency_runs=LATENCY_RUNS if self.latency_budget_ms is not None else 0,
                work_dir=Path(tmp),
            )
        checks.append(f"model code ran in the sandbox only: {run.describe()}")
        signatures: dict = ran["signatures"]
        checks.append(
            f"served signatures (the SavedModel's signature_def, as TF Serving reads it): "
            f"{', '.join(sorted(signatures))}"
        )
        if sig_name not in signatures:
            available = ", ".join(sorted(signatures))
            problems.append(f"required signature {sig_name!r} is missing (the model has: {available})")
            return self._report(checks, problems, {}, [], None), {}, signatures
        inputs = signatures[sig_name]["inputs"]
        outputs = signatures[sig_name]["outputs"]
        for name, dtype in (self.required_inputs or {}).items():
            if inputs.get(name) != dtype:
                problems.append(f"signature {sig_name!r} input {name!r} is {inputs.get(name)}, expected {dtype}")
        for name in self.required_outputs or []:
            if name not in outputs:
                problems.append(f"signature {sig_name!r} has no output {name!r} (outputs: {', '.join(outputs)})")
        if problems:
            return self._report(checks, problems, {}, [], None), {}, signatures
        if ran.get("error") or not isinstance(ran.get("outputs"), dict):
            raise SandboxFailed(
                f"golden inference of {model} v{version} failed in the sandbox: {ran.get('error') or 'no outputs'}"
            )
        checks.append(f"signature {sig_name!r}: inputs {inputs}, outputs {outputs}")
        output_key = (self.required_outputs or sorted(outputs))[0]
        predictions = np.asarray(ran["outputs"][output_key])
        value = metric_value(self.metric, predictions, golden.labels)
        metrics: dict[str, float] = {self.metric: value, "golden_examples": float(golden.count)}
        baseline = self._production_metric(model)
        problems += judge(
            self.metric,
            value,
            threshold=self.threshold,
            baseline=baseline,
            max_regression=self.max_regression,
        )
        checks.append(
            f"{self.metric} on {golden.count} golden examples: {value:.6g}"
            + (f" (production: {baseline:.6g})" if baseline is not None else " (no production version yet)")
        )
        if self.latency_budget_ms is not None:
            if not isinstance(ran.get("latency_p50_ms"), int | float):
                raise SandboxFailed(f"the sandbox measured no latency for {model} v{version}: {ran.get('error')}")
            p50 = float(ran["latency_p50_ms"])
            metrics["latency_p50_ms"] = p50
            budget = float(self.latency_budget_ms)
            if p50 > budget:
                problems.append(f"in-process latency p50 {p50:.2f} ms is over the budget of {budget:.2f} ms")
            checks.append(f"in-process latency p50 {p50:.2f} ms in the sandbox (budget {budget:.2f} ms)")
        report = self._report(checks, problems, golden.inputs, predictions.tolist(), output_key)
        report["signatureName"] = sig_name
        return report, metrics, signatures

    @staticmethod
    def _report(checks: list[str], problems: list[str], inputs: Any, predictions: list, output_key: str | None) -> dict:
        # the golden predictions go to the registry so smoke can check serving parity against them
        return {
            "checks": checks,
            "problems": problems,
            "goldenInputs": inputs,
            "goldenPredictions": predictions,
            "outputKey": output_key,
        }

    def _production_metric(self, model: str) -> float | None:
        production = self.registry.production_version(model)
        if production is None:
            return None
        value = self.registry.get_version(model, production).metrics.get(self.metric)
        return None if value is None else float(value)
