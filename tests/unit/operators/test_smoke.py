"""SmokeTestOperator against fake TF Serving servers answering from functions the test sets: the candidate is
judged in the canary pool (``canary.serving``), stable's latency measured in the stable pool (``service.serving``)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException

from tests.unit.operators.conftest import MODEL, TARGET, FakeRegistry, FakeService, exported, inject, make_context
from tfdeploy.operators.smoke import SmokeTestOperator

INPUTS = [[1.0], [2.0], [3.0]]
REPORT = {
    "goldenInputs": INPUTS,
    "goldenPredictions": [[2.0], [4.0], [6.0]],
    "signatureName": "serving_default",
    "outputKey": "y",
}


def right(model: str, instances: list, **where: Any) -> list:
    return [[2.0 * row[0]] for row in instances]


def noisy(model: str, instances: list, **where: Any) -> list:
    return [[2.0 * row[0] + 0.37] for row in instances]


def smoke(registry: FakeRegistry, service: FakeService, canary: FakeService, **kwargs: Any) -> SmokeTestOperator:
    kwargs.setdefault("requests", 10)
    op = SmokeTestOperator(task_id="smoke", model_name=MODEL, **kwargs)
    return inject(op, registry=registry, service=service, canary=canary)


def context() -> dict:
    return make_context("smoke", {"export": exported(2)})


def candidate(registry: FakeRegistry, *, stable: bool = False, report: dict | None = None) -> None:
    if stable:
        registry.seed(1, "production")
    registry.seed(2, "canary", validation_report=report or REPORT)


def health(registry: FakeRegistry) -> tuple[str, dict]:
    [(model, record)] = registry.health
    assert (model, record.version, record.target) == (MODEL, 2, TARGET)
    return record.status, record.details


def test_parity_passes_and_is_recorded_healthy(
    registry: FakeRegistry, service: FakeService, canary: FakeService
) -> None:
    candidate(registry)
    canary.serving.answer = right

    result = smoke(registry, service, canary).execute(context())

    assert result["model"] == MODEL and result["version"] == 2
    status, details = health(registry)
    assert status == "healthy"
    assert details["problems"] == [] and details["errors"] == 0
    assert details["latencyRatioVsStable"] is None  # no stable version to compare with
    where = [(p["version"], p["label"]) for p in canary.serving.predicts]
    assert where[:2] == [(2, None), (None, "canary")]  # parity through the version and the label
    assert where[2:] == [(2, None)] * 10  # the burst
    assert {p["signature_name"] for p in canary.serving.predicts} == {"serving_default"}
    assert canary.serving.metadatas == [{"version": 2, "label": None}]
    # no stable version: the stable pool is not asked at all, and smoke changes no pool
    assert service.serving.predicts == [] and service.serving.metadatas == []
    assert service.calls == {} and canary.calls == {}
    assert registry.writes_of("transition") == []


def test_parity_is_judged_in_the_canary_pool_only(
    registry: FakeRegistry, service: FakeService, canary: FakeService
) -> None:
    candidate(registry, stable=True)
    canary.serving.answer = right
    service.serving.answer = noisy  # the stable pool serves other outputs (another version): not compared

    smoke(registry, service, canary).execute(context())

    assert health(registry)[0] == "healthy"
    assert [(p["version"], p["label"]) for p in canary.serving.predicts[:2]] == [(2, None), (None, "canary")]
    assert service.serving.metadatas == []
    assert {(p["version"], p["label"]) for p in service.serving.predicts} == {(None, "stable")}


def test_outputs_by_name_are_compared(registry: FakeRegistry, service: FakeService, canary: FakeService) -> None:
    candidate(registry)
    canary.serving.answer = lambda model, rows, **where: [{"y": [2.0 * r[0]], "other": [9.0]} for r in rows]

    smoke(registry, service, canary).execute(context())

    assert health(registry)[0] == "healthy"


def test_noisy_answers_fail_unhealthy(registry: FakeRegistry, service: FakeService, canary: FakeService) -> None:
    candidate(registry)
    canary.serving.answer = noisy

    with pytest.raises(AirflowFailException, match="smoke test of demo_regressor v2 failed") as err:
        smoke(registry, service, canary).execute(context())

    status, details = health(registry)
    assert status == "failing"
    assert len(details["problems"]) == 2
    assert "via version differ from validation's by 0.37" in details["problems"][0]
    assert "via label canary differ" in details["problems"][1]
    assert "0.37" in str(err.value)


def test_canary_label_on_the_wrong_version_fails(
    registry: FakeRegistry, service: FakeService, canary: FakeService
) -> None:
    candidate(registry)
    canary.serving.answer = lambda model, rows, **where: (noisy if where["label"] == "canary" else right)(model, rows)

    with pytest.raises(AirflowFailException, match="via label canary"):
        smoke(registry, service, canary).execute(context())
    assert [p for p in health(registry)[1]["problems"] if "via version" in p] == []


def test_empty_answer_is_no_parity(registry: FakeRegistry, service: FakeService, canary: FakeService) -> None:
    candidate(registry)
    canary.serving.answer = lambda model, rows, **where: []

    with pytest.raises(AirflowFailException, match="have 0 values"):
        smoke(registry, service, canary).execute(context())


def test_tolerance(registry: FakeRegistry, service: FakeService, canary: FakeService) -> None:
    candidate(registry)
    canary.serving.answer = lambda model, rows, **where: [[2.0 * r[0] + 0.01] for r in rows]

    smoke(registry, service, canary, tolerance=0.05).execute(context())

    assert health(registry)[0] == "healthy"


def test_failed_requests_are_counted(registry: FakeRegistry, service: FakeService, canary: FakeService) -> None:
    candidate(registry)
    canary.serving.answer = right
    canary.serving.fail_every = 5  # predicts 5 and 10 fail: both in the burst (1 and 2 are parity)

    with pytest.raises(AirflowFailException, match="2 of 10 requests failed"):
        smoke(registry, service, canary).execute(context())
    status, details = health(registry)
    assert (status, details["errors"]) == ("failing", 2)


def test_missing_signature_in_metadata_fails(registry: FakeRegistry, service: FakeService, canary: FakeService) -> None:
    candidate(registry)
    canary.serving.answer = right
    canary.serving.signatures = ["serve"]

    with pytest.raises(AirflowFailException, match="lacks signature 'serving_default'"):
        smoke(registry, service, canary).execute(context())


def test_p99_over_budget_fails(registry: FakeRegistry, service: FakeService, canary: FakeService) -> None:
    candidate(registry)

    def slow(model: str, rows: list, **where: Any) -> list:
        time.sleep(0.003)
        return right(model, rows)

    canary.serving.answer = slow

    with pytest.raises(AirflowFailException, match="over the budget of 1 ms"):
        smoke(registry, service, canary, p99_budget_ms=1).execute(context())


def test_latency_compared_with_stable_passes(registry: FakeRegistry, service: FakeService, canary: FakeService) -> None:
    candidate(registry, stable=True)
    canary.serving.answer = right

    def slow_stable(model: str, rows: list, **where: Any) -> list:
        time.sleep(0.002)  # stable is the slow one
        return right(model, rows)

    service.serving.answer = slow_stable

    smoke(registry, service, canary).execute(context())

    status, details = health(registry)
    assert status == "healthy"
    assert details["latencyRatioVsStable"] < 1
    # stable's burst goes to the stable pool by its label; the canary pool never gets a stable call
    assert [(p["version"], p["label"]) for p in service.serving.predicts] == [(None, "stable")] * 10
    assert all(p["label"] != "stable" for p in canary.serving.predicts)
    assert len(canary.serving.predicts) == 12


def test_candidate_much_slower_than_stable_fails(
    registry: FakeRegistry, service: FakeService, canary: FakeService
) -> None:
    candidate(registry, stable=True)

    def slow_candidate(model: str, rows: list, **where: Any) -> list:
        time.sleep(0.003)
        return right(model, rows)

    canary.serving.answer = slow_candidate
    service.serving.answer = right

    with pytest.raises(AirflowFailException, match=r"x stable's \(allowed 1.5x\)"):
        smoke(registry, service, canary, max_latency_ratio=1.5).execute(context())
    assert health(registry)[1]["latencyRatioVsStable"] > 1.5
    assert len(service.serving.predicts) == 10


def test_no_latency_comparison_when_the_candidate_is_stable(
    registry: FakeRegistry, service: FakeService, canary: FakeService
) -> None:
    registry.seed(2, "production", validation_report=REPORT)
    canary.serving.answer = right

    smoke(registry, service, canary).execute(context())

    assert health(registry)[1]["latencyRatioVsStable"] is None
    assert service.serving.predicts == []


def test_rerun_judges_again_and_changes_no_state(
    registry: FakeRegistry, service: FakeService, canary: FakeService
) -> None:
    candidate(registry)
    canary.serving.answer = right

    smoke(registry, service, canary).execute(context())
    smoke(registry, service, canary).execute(context())

    assert [r.status for _, r in registry.health] == ["healthy", "healthy"]
    assert registry.transitions() == []


@pytest.mark.parametrize(
    ("name", "value"),
    [("requests", "100"), ("tolerance", "0.1"), ("p99_budget_ms", None), ("max_latency_ratio", True)],
)
def test_templated_values_of_the_wrong_type_are_refused(
    registry: FakeRegistry, service: FakeService, canary: FakeService, name: str, value: Any
) -> None:
    candidate(registry)

    with pytest.raises(TypeError, match=name):
        smoke(registry, service, canary, **{name: value}).execute(context())
    assert canary.serving.predicts == [] and service.serving.predicts == []
    assert registry.writes == []


def test_named_inputs_golden_examples(registry: FakeRegistry, service: FakeService, canary: FakeService) -> None:
    # golden.py allows {input name: rows}: they are sent in TF Serving's row format, one object per row
    candidate(registry, report={**REPORT, "goldenInputs": {"x": INPUTS}})
    seen: list = []

    def answer(model: str, rows: list, **where: Any) -> list:
        seen.append(rows)
        return [[2.0 * r["x"][0]] for r in rows]

    canary.serving.answer = answer
    smoke(registry, service, canary).execute(context())

    assert health(registry)[0] == "healthy"
    assert seen[0] == [{"x": row} for row in INPUTS]


def test_answers_of_another_shape_are_a_parity_failure(
    registry: FakeRegistry, service: FakeService, canary: FakeService
) -> None:
    candidate(registry)
    canary.serving.answer = lambda model, rows, **where: [[2.0 * r[0], 0.0] for r in rows]

    with pytest.raises(AirflowFailException, match=r"served outputs via version have \d+ values, validation's"):
        smoke(registry, service, canary).execute(context())
    assert health(registry)[0] == "failing"
