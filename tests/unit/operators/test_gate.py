"""ReleaseGateOperator: the run succeeds only if its version reached production."""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowFailException

from tests.unit.operators.conftest import MODEL, FakeRegistry, exported, inject, make_context
from tfdeploy.core.errors import NotFound
from tfdeploy.operators.gate import ReleaseGateOperator


def gate(registry: FakeRegistry, **kwargs) -> ReleaseGateOperator:
    return inject(ReleaseGateOperator(task_id="release_gate", model_name=MODEL, **kwargs), registry=registry)


def test_runs_whatever_happened() -> None:
    assert ReleaseGateOperator(task_id="release_gate", model_name=MODEL).trigger_rule == "all_done"


def test_production_passes_and_again(registry: FakeRegistry) -> None:
    registry.seed(2, "production")
    context = make_context("release_gate", {"export": exported(2)})

    assert gate(registry).execute(context) == {"model": MODEL, "version": 2, "state": "production"}
    assert gate(registry).execute(context)["state"] == "production"
    assert registry.writes == []


def test_rejected_fails_with_its_problems(registry: FakeRegistry) -> None:
    registry.seed(2, "rejected", validation_report={"problems": ["mae 0.9 > 0.5", "signature missing"]})

    with pytest.raises(AirflowFailException, match="is rejected") as err:
        gate(registry).execute(make_context("release_gate", {"export": exported(2)}))
    assert "(mae 0.9 > 0.5; signature missing)" in str(err.value)


@pytest.mark.parametrize("state", ["rolled_back", "canary", "validated", "superseded"])
def test_not_in_production_fails(registry: FakeRegistry, state: str) -> None:
    registry.seed(2, state)

    with pytest.raises(AirflowFailException, match=f"did not reach production: {MODEL} v2 is {state}$"):
        gate(registry).execute(make_context("release_gate", {"export": exported(2)}))


def test_no_export_fails(registry: FakeRegistry) -> None:
    with pytest.raises(AirflowFailException, match="before a version was exported"):
        gate(registry).execute(make_context("release_gate"))


def test_other_task_naming_the_version(registry: FakeRegistry) -> None:
    registry.seed(1, "production")
    op = gate(registry, export_task_id="rollback_to")

    assert op.execute(make_context("release_gate", {"rollback_to": {"version": 1}}))["version"] == 1


def test_unknown_version_fails(registry: FakeRegistry) -> None:
    with pytest.raises(NotFound):
        gate(registry).execute(make_context("release_gate", {"export": exported(9)}))
