"""Validate: the published copy (fetched back from HDFS, checksums checked) against signatures, golden
examples and thresholds. The report goes to the registry; the version ends `validated` or `rejected`."""

from __future__ import annotations

import statistics
import tempfile
import time
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from tfdeploy.core.golden import METRICS, judge, load_golden, metric_value
from tfdeploy.core.states import ModelState
from tfdeploy.hooks.model_store import ModelStoreHook
from tfdeploy.operators.base import DeployStep, typed


class ValidateModelOperator(DeployStep):
    """Judges the published copy of the version: signature, golden-example metric against an absolute threshold
    and against production, optional in-process latency budget. The version ends ``validated`` or
    ``rejected``; the report (with the golden predictions smoke inference compares with) goes to the registry.

    :param golden_path: golden examples JSON (inputs, labels, signature_name).
    :param signature_name: the signature to check and run.
    :param required_inputs: input name -> dtype the signature must have.
    :param required_outputs: output names the signature must have (the first is the one scored).
    :param metric: ``mae`` or ``accuracy``.
    :param threshold: maximum MAE / minimum accuracy; None: no absolute threshold.
    :param max_regression: allowed worsening of the metric against the production version; None: unchecked.
    :param latency_budget_ms: maximum in-process p50 latency of one row; None: unchecked.
    :param webhdfs_conn_id: the HDFS provider's Connection.
    """

    template_fields = (
        *DeployStep.template_fields,
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
        import tensorflow as tf  # heavy: only inside the task

        checks: list[str] = []
        problems: list[str] = []
        golden = load_golden(self.golden_path)
        with tempfile.TemporaryDirectory(prefix=f"validate-{model}-") as tmp:
            local = ModelStoreHook(self.webhdfs_conn_id).fetch(
                model, version, tmp, expected_manifest_sha256=manifest_sha256 or None
            )
            checks.append(
                f"fetched v{version} from HDFS; its manifest is the one registered and every file matches its sha256"
            )
            signatures = served_signatures(local)
            checks.append(
                f"served signatures (the SavedModel's signature_def, as TF Serving reads it): "
                f"{', '.join(sorted(signatures))}"
            )
            available = sorted(signatures)
            sig_name = self.signature_name or golden.signature_name
            if sig_name not in signatures:
                problems.append(f"required signature {sig_name!r} is missing (the model has: {', '.join(available)})")
                return self._report(checks, problems, {}, [], None), {}, signatures
            fn = tf.saved_model.load(str(local)).signatures[sig_name]
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
            checks.append(f"signature {sig_name!r}: inputs {inputs}, outputs {outputs}")
            output_key = (self.required_outputs or sorted(outputs))[0]
            feeds = {
                name: tf.constant(np.asarray(golden.rows(name)), dtype=getattr(tf, dtype))
                for name, dtype in inputs.items()
            }
            predictions = fn(**feeds)[output_key].numpy()
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
                one = {name: t[:1] for name, t in feeds.items()}
                fn(**one)
                samples = []
                for _ in range(50):
                    t0 = time.perf_counter()
                    fn(**one)
                    samples.append((time.perf_counter() - t0) * 1e3)
                p50 = statistics.median(samples)
                metrics["latency_p50_ms"] = p50
                budget = float(self.latency_budget_ms)
                if p50 > budget:
                    problems.append(f"in-process latency p50 {p50:.2f} ms is over the budget of {budget:.2f} ms")
                checks.append(f"in-process latency p50 {p50:.2f} ms (budget {budget:.2f} ms)")
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


def served_signatures(saved_model_dir: Any) -> dict[str, dict[str, dict[str, str]]]:
    """Signatures of the `serve` MetaGraph as TF Serving sees them: {name: {inputs, outputs: {alias: dtype}}}."""
    from pathlib import Path

    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    pb = saved_model_pb2.SavedModel.FromString((Path(saved_model_dir) / "saved_model.pb").read_bytes())
    meta = next((m for m in pb.meta_graphs if "serve" in m.meta_info_def.tags), None)
    if meta is None:
        return {}
    return {
        name: {
            "inputs": {k: tf.as_dtype(v.dtype).name for k, v in sig.inputs.items()},
            "outputs": {k: tf.as_dtype(v.dtype).name for k, v in sig.outputs.items()},
        }
        for name, sig in meta.signature_def.items()
        if not name.startswith("__")
    }
