"""ValidateModelOperator's registry side: the verdict of ``_validate`` (TensorFlow's part, covered by the
integration tests) is replaced by a fixed report; the operator must write the report, then the verdict
with ``expected=registered``, and never judge a version twice."""

from __future__ import annotations

from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException

from tests.unit.operators.conftest import MODEL, SHA, FakeRegistry, Lineage, exported, inject, make_context
from tfdeploy.core.states import ModelState
from tfdeploy.operators.validate import ValidateModelOperator


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
