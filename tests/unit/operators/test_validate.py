"""ValidateModelOperator's registry side: the verdict of ``_validate`` is replaced by a fixed report; the operator
must write the report, then the verdict with ``expected=registered``, and never judge a version twice. Then
``_validate`` itself with a fake sandbox (the real one runs the model in a container: tests/integration/
test_sandbox.py): what the sandbox is asked, how its answer is judged, the golden file's roots, on_kill."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException

from tests.unit.operators.conftest import (
    MODEL,
    SHA,
    FakeModelStore,
    FakeRegistry,
    Lineage,
    exported,
    inject,
    make_context,
)
from tfdeploy.core.errors import GoldenPathNotAllowed, SandboxFailed
from tfdeploy.core.states import ModelState
from tfdeploy.hooks.sandbox import SandboxLimits, SandboxRun
from tfdeploy.operators import validate as validate_module
from tfdeploy.operators.validate import ValidateModelOperator
from tfdeploy.settings import get_settings


def report(*problems: str) -> tuple[dict, dict, dict]:
    return (
        {
            "checks": ["fetched", "signature ok"],
            "problems": list(problems),
            "goldenInputs": [[1.0], [2.0]],
            "goldenPredictions": [[2.0], [4.0]],
            "outputKey": "y",
            "signatureName": "serving_default",
        },
        {"mae": 0.1, "golden_examples": 2.0},
        {"serving_default": {"inputs": {"x": "float32"}, "outputs": {"y": "float32"}}},
    )


class FakeValidate:
    def __init__(self, result: tuple[dict, dict, dict]) -> None:
        self.result = result
        self.calls: list[tuple[str, int, str]] = []

    def __call__(self, model: str, version: int, manifest_sha256: str) -> tuple[dict, dict, dict]:
        self.calls.append((model, version, manifest_sha256))
        return self.result


def validator(registry: FakeRegistry, judged: FakeValidate | None = None, **kwargs: Any) -> ValidateModelOperator:
    op = ValidateModelOperator(task_id="validate", model_name=MODEL, golden_path="/golden.json", **kwargs)
    if judged is not None:
        op.__dict__["_validate"] = judged  # TensorFlow's part, replaced
    return inject(op, registry=registry)


def context() -> dict:
    return make_context("validate", {"export": exported(2)})


def test_passing_report_is_recorded_then_validated(registry: FakeRegistry, lineage: Lineage) -> None:
    registry.seed(2, "registered")
    judged = FakeValidate(report())

    result = validator(registry, judged, threshold=0.5, max_regression=0.1).execute(context())

    assert result == {"model": MODEL, "version": 2, "state": "validated"}
    assert judged.calls == [(MODEL, 2, SHA)]
    assert [w.method for w in registry.writes] == ["update_report", "transition"]
    update, transition = registry.writes
    assert update.args["validation_report"] == report()[0]
    assert update.args["metrics"] == {"mae": 0.1, "golden_examples": 2.0}
    assert update.args["signatures"] == report()[2]
    assert (transition.args["from"], transition.args["to"], transition.args["expected"]) == (
        "registered",
        "validated",
        "registered",
    )
    assert transition.args["reason"] == "all checks passed"
    assert registry.state(2) == ModelState.VALIDATED
    assert registry.versions[(MODEL, 2)].validation_report["goldenPredictions"] == [[2.0], [4.0]]
    assert len(lineage.calls) == 1


def test_problems_reject_the_version_and_fail(registry: FakeRegistry) -> None:
    registry.seed(2, "registered")

    with pytest.raises(AirflowFailException, match="rejected, production untouched: mae too high; too slow"):
        validator(registry, FakeValidate(report("mae too high", "too slow"))).execute(context())

    assert [w.method for w in registry.writes] == ["update_report", "transition"]
    assert registry.transitions() == [(2, "registered", "rejected")]
    assert registry.writes[1].args["expected"] == "registered"
    assert registry.versions[(MODEL, 2)].validation_report["problems"] == ["mae too high", "too slow"]


def test_rejected_record_fails_without_validating(registry: FakeRegistry) -> None:
    registry.seed(2, "rejected", validation_report={"problems": ["signature missing"]})
    judged = FakeValidate(report())

    with pytest.raises(AirflowFailException, match=r"was rejected: \['signature missing'\]"):
        validator(registry, judged).execute(context())
    assert judged.calls == []
    assert registry.writes == []


@pytest.mark.parametrize("state", ["validated", "canary", "production", "rolled_back"])
def test_version_past_its_verdict_is_not_validated_again(registry: FakeRegistry, state: str) -> None:
    registry.seed(2, state)
    judged = FakeValidate(report("would reject"))

    assert validator(registry, judged).execute(context())["state"] == state
    assert judged.calls == []
    assert registry.writes == []


def test_rerun_after_the_verdict_writes_nothing(registry: FakeRegistry) -> None:
    registry.seed(2, "registered")
    judged = FakeValidate(report())

    first = validator(registry, judged).execute(context())
    second = validator(registry, judged).execute(context())

    assert first == second
    assert len(judged.calls) == 1
    assert len(registry.writes_of("transition")) == 1
    assert len(registry.writes_of("update_report")) == 1


@pytest.mark.parametrize("name", ["threshold", "max_regression", "latency_budget_ms"])
def test_templated_number_of_the_wrong_type_is_refused(registry: FakeRegistry, name: str) -> None:
    registry.seed(2, "registered")
    judged = FakeValidate(report())

    with pytest.raises(TypeError, match=name):
        validator(registry, judged, **{name: "0.5"}).execute(context())
    assert judged.calls == []
    assert registry.writes == []


def test_missing_export_result_fails(registry: FakeRegistry) -> None:
    with pytest.raises(RuntimeError, match="nothing to release"):
        validator(registry, FakeValidate(report())).execute(make_context("validate"))


def test_unknown_metric_is_refused_at_parse_time() -> None:
    with pytest.raises(ValueError, match="metric must be one of"):
        ValidateModelOperator(task_id="validate", model_name=MODEL, golden_path="/g.json", metric="f1")
    ValidateModelOperator(task_id="validate", model_name=MODEL, golden_path="/g.json", metric="{{ params.metric }}")


def test_production_metric_is_the_baseline(registry: FakeRegistry) -> None:
    op = validator(registry)
    assert op._production_metric(MODEL) is None
    registry.seed(1, "production", metrics={"mae": 0.25})
    assert op._production_metric(MODEL) == 0.25
    registry.seed(1, "production", metrics={})
    assert op._production_metric(MODEL) is None


# --------------------------------------------------------------------------- the model runs in the sandbox only

SIGNATURES = {"serving_default": {"inputs": {"x": "float32"}, "outputs": {"y": "float32", "z": "float32"}}}


class FakeSandbox:
    """``SandboxHook`` as validation sees it: ``validate`` answers ``answer`` (the sandbox job's result)."""

    def __init__(self, **answer: Any) -> None:
        self.answer = {"signatures": SIGNATURES, "outputs": None, "error": None, "latency_p50_ms": None, **answer}
        self.calls: list[dict[str, Any]] = []
        self.killed = 0

    def validate(self, model_dir: Path, **kwargs: Any) -> tuple[dict, SandboxRun]:
        self.calls.append({"model_dir": model_dir, **kwargs})
        run = SandboxRun(what="validation", container="tfdeploy-sandbox-x", exit_code=0, seconds=1.0, logs="")
        return self.answer, run

    def kill(self) -> None:
        self.killed += 1


@pytest.fixture
def golden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A golden file in ``tmp_path/golden``, the only root besides the example models' (not pytest's temp root,
    which the test stack's defaults allow)."""
    settings = replace(get_settings(), stack="dev", golden_roots_setting=str(tmp_path / "golden"))
    monkeypatch.setattr(validate_module, "get_settings", lambda: settings)
    path = tmp_path / "golden" / "golden.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"inputs": [[1.0], [2.0]], "labels": [2.0, 4.0]}))
    return path


def sandboxed(registry: FakeRegistry, sandbox: FakeSandbox, golden: Path, **kwargs: Any) -> ValidateModelOperator:
    op = ValidateModelOperator(task_id="validate", model_name=MODEL, golden_path=str(golden), **kwargs)
    op.__dict__["sandbox"] = sandbox
    return inject(op, registry=registry)


@pytest.fixture
def fake_store(monkeypatch: pytest.MonkeyPatch, store: FakeModelStore) -> FakeModelStore:
    monkeypatch.setattr(validate_module, "ModelStoreHook", store)
    return store


def test_the_sandbox_runs_the_golden_rows_and_the_operator_judges(
    registry: FakeRegistry, fake_store: FakeModelStore, golden: Path
) -> None:
    registry.seed(1, "production", metrics={"mae": 0.05})
    registry.seed(2, "registered")
    sandbox = FakeSandbox(outputs={"y": [[2.5], [4.5]], "z": [[0.0], [0.0]]}, latency_p50_ms=3.0)

    with pytest.raises(AirflowFailException, match="worse than production's 0.05"):
        sandboxed(registry, sandbox, golden, threshold=1.0, max_regression=0.1, latency_budget_ms=5).execute(context())

    [call] = sandbox.calls
    assert call["signature_name"] == "serving_default"
    assert call["inputs"] == [[1.0], [2.0]]
    assert call["latency_runs"] == validate_module.LATENCY_RUNS
    assert fake_store.fetches[0]["expected_manifest_sha256"] == SHA
    record = registry.versions[(MODEL, 2)]
    assert record.state == ModelState.REJECTED
    assert record.metrics == {"mae": 0.5, "golden_examples": 2.0, "latency_p50_ms": 3.0}
    report = record.validation_report
    assert report["outputKey"] == "y"  # the first output in name order when none is required
    assert report["goldenPredictions"] == [[2.5], [4.5]]
    assert any("ran in the sandbox only" in check for check in report["checks"])
    assert any("latency p50 3.00 ms in the sandbox" in check for check in report["checks"])


def test_a_missing_signature_rejects_without_inference(
    registry: FakeRegistry, fake_store: FakeModelStore, golden: Path
) -> None:
    registry.seed(2, "registered")
    sandbox = FakeSandbox(signatures={"predict_only": SIGNATURES["serving_default"]})

    with pytest.raises(AirflowFailException, match="required signature 'serving_default' is missing"):
        sandboxed(registry, sandbox, golden).execute(context())
    assert registry.state(2) == ModelState.REJECTED
    assert registry.versions[(MODEL, 2)].signatures == {"predict_only": SIGNATURES["serving_default"]}


def test_signature_checks_reject_before_inference_results_are_used(
    registry: FakeRegistry, fake_store: FakeModelStore, golden: Path
) -> None:
    registry.seed(2, "registered")
    sandbox = FakeSandbox(error="InvalidArgumentError: cannot compute")

    with pytest.raises(AirflowFailException, match="input 'x' is float32, expected int64.*no output 'w'"):
        sandboxed(registry, sandbox, golden, required_inputs={"x": "int64"}, required_outputs=["w"]).execute(context())
    assert registry.state(2) == ModelState.REJECTED


def test_a_model_that_fails_on_the_golden_rows_fails_the_task_and_leaves_it_registered(
    registry: FakeRegistry, fake_store: FakeModelStore, golden: Path
) -> None:
    registry.seed(2, "registered")
    sandbox = FakeSandbox(error="InvalidArgumentError: cannot compute")

    with pytest.raises(SandboxFailed, match="golden inference of demo_regressor v2 failed in the sandbox: Invalid"):
        sandboxed(registry, sandbox, golden).execute(context())
    assert registry.state(2) == ModelState.REGISTERED
    assert registry.writes == []


def test_a_golden_file_outside_the_roots_is_refused_before_anything_runs(
    registry: FakeRegistry, fake_store: FakeModelStore, golden: Path, tmp_path: Path
) -> None:
    registry.seed(2, "registered")
    outside = tmp_path / "elsewhere.json"
    outside.write_text(golden.read_text())
    link = golden.parent / "link.json"
    link.symlink_to(outside)
    sandbox = FakeSandbox()

    for path in (outside, link, golden.parent / ".." / "elsewhere.json"):
        with pytest.raises(GoldenPathNotAllowed, match="GOLDEN_ROOTS"):
            sandboxed(registry, sandbox, path).execute(context())
    assert sandbox.calls == [] and fake_store.fetches == []
    assert registry.writes == []


def test_on_kill_kills_the_running_sandbox(registry: FakeRegistry, golden: Path) -> None:
    sandbox = FakeSandbox()
    op = sandboxed(registry, sandbox, golden)
    op.on_kill()
    assert sandbox.killed == 1
    ValidateModelOperator(task_id="v", model_name=MODEL, golden_path="/g.json").on_kill()  # no sandbox yet: nothing


def test_sandbox_limits_are_checked_when_the_dag_is_parsed() -> None:
    with pytest.raises(ValueError, match="timeout_s must be a positive"):
        SandboxLimits(timeout_s=0)
    with pytest.raises(ValueError, match="memory must be a size"):
        SandboxLimits(memory="lots")
    with pytest.raises(TypeError, match="sandbox_limits must be a SandboxLimits"):
        ValidateModelOperator(task_id="v", model_name=MODEL, golden_path="/g.json", sandbox_limits={"cpus": 2})
    op = ValidateModelOperator(
        task_id="v", model_name=MODEL, golden_path="/g.json", sandbox_limits=SandboxLimits(timeout_s=60)
    )
    assert op.sandbox.limits.timeout_s == 60
    assert op.sandbox.image == "local/tfdeploy-sandbox:latest"
