"""ReleasePlanOperator: the run's first task hands the plan on (its XCom), or fails the run with the reason before
anything changed (a bad plan, a model frozen in the registry); unknown option names are refused when the DAG is
parsed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import pytest
from airflow.sdk.exceptions import AirflowFailException

from tests.unit.operators.conftest import make_context
from tfdeploy.core.errors import NotFound
from tfdeploy.core.release import ReleasePlan, plan_release
from tfdeploy.operators import plan as plan_module
from tfdeploy.operators.plan import PLAN_FIELDS, ReleasePlanOperator

MODEL = "demo_regressor"


@dataclass
class Settings:
    frozen: bool = False
    frozen_by: str = ""
    frozen_at: str = ""
    frozen_reason: str = ""


class Registry:
    """The registry's per-model settings as the operator reads them (None: the model is not registered yet)."""

    settings: Settings | None = Settings()

    def __init__(self, _conn_id: str) -> None:
        pass

    def get_settings(self, model: str) -> Settings:
        if self.settings is None:
            raise NotFound(f"model {model!r} not found")
        return self.settings


@pytest.fixture(autouse=True)
def registry(monkeypatch: pytest.MonkeyPatch) -> type[Registry]:
    Registry.settings = Settings()
    monkeypatch.setattr(plan_module, "RegistryHook", Registry)
    return Registry


def run(strategy: str, **options: object) -> dict:
    op = ReleasePlanOperator(task_id="plan_release", model_name=MODEL, strategy=strategy, options=options)
    return op.execute(make_context("plan_release"))


def test_a_frozen_model_is_refused_before_anything_changes(registry: type[Registry]) -> None:
    registry.settings = Settings(True, "airflow:alice", "2026-12-02T08:00:00Z", "incident 42")
    with pytest.raises(AirflowFailException, match=r"demo_regressor is frozen: .*alice.*incident 42.*DELETE"):
        run("canary", steps=[10, 100])


def test_a_model_not_registered_yet_is_not_frozen(registry: type[Registry]) -> None:
    registry.settings = None
    assert run("all_at_once")["strategy"] == "all_at_once"


def test_returns_the_plan_dict() -> None:
    out = run("canary", steps=[5, 50, 100], step_seconds=30, check_seconds=5, min_requests=50, low_traffic="fail")
    assert (
        out
        == plan_release(
            "canary", steps=[5, 50, 100], step_seconds=30, check_seconds=5, min_requests=50, low_traffic="fail"
        ).to_dict()
    )
    assert out["strategy"] == "canary" and out["steps"] == [5, 50, 100]
    assert ReleasePlan.from_dict(out).steps == (5, 50, 100)


def test_empty_options_take_the_defaults() -> None:
    out = run("linear", linear_step=25, max_extensions=None, max_error_rate=None)
    assert out["steps"] == [25, 50, 75, 100]
    assert out["max_extensions"] == 2 and out["max_error_rate"] == 0.01


def test_every_plan_field_is_an_option() -> None:
    options = {
        "steps": [10, 100],
        "linear_step": 25,
        "step_seconds": 10,
        "check_seconds": 2,
        "max_error_rate": 0.01,
        "max_p99_ratio": 2.0,
        "p99_floor_ms": 50.0,
        "min_requests": 20,
        "low_traffic": "extend",
        "max_extensions": 2,
    }
    assert set(options) | {"strategy"} == set(PLAN_FIELDS)
    assert run("canary", **options)["steps"] == [10, 100]


@pytest.mark.parametrize(
    ("steps", "problem"),
    [([50, 10], r"steps\[1\]=10 after 50"), ([5, 5], r"steps\[1\]=5 after 5")],
)
def test_steps_that_do_not_rise_fail_the_run_before_anything_changes(steps: list[int], problem: str) -> None:
    with pytest.raises(AirflowFailException, match=rf"release plan refused, nothing was changed: .*{problem}"):
        run("canary", steps=steps)


def test_an_unknown_strategy_fails_the_run() -> None:
    with pytest.raises(AirflowFailException, match=r"nothing was changed: unknown strategy 'blue_green'"):
        run("blue_green")


def test_unknown_option_names_are_refused_at_parse_time() -> None:
    with pytest.raises(ValueError, match=r"plan_release: unknown release plan fields \['step', 'stepz'\]"):
        ReleasePlanOperator(
            task_id="plan_release", model_name=MODEL, strategy="canary", options={"stepz": [10], "step": 5}
        )


def test_defaults() -> None:
    op = ReleasePlanOperator(
        task_id="plan_release", model_name="{{ params.model_name }}", strategy="{{ params.strategy }}"
    )
    assert op.options == {} and op.execution_timeout == timedelta(minutes=1)
    assert op.template_fields == ("model_name", "strategy", "options", "inputs")
