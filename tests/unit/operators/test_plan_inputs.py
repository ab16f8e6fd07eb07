"""What a model_deploy run deploys: plan_release takes the Params for a person's (or a schedule's) run and the
newest Asset event's extra for an Asset-triggered run, checks either against model_deploy's own Params, and hands
them on as its XCom ``inputs``; an Asset event without a valid extra fails the run, naming the key, before
anything changed (not even the registry is asked)."""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk import DAG
from airflow.sdk.exceptions import AirflowFailException

from tests.unit.operators.conftest import make_context
from tfdeploy.operators import plan as plan_module
from tfdeploy.operators.plan import ReleasePlanOperator

DAGS = Path(__file__).resolve().parents[3] / "dags"
ASSET = SimpleNamespace(name="tfdeploy://trained-models", uri="tfdeploy://trained-models")
GOOD = {"model": "fraud_scorer", "source": "webhdfs:///trained/fraud_scorer/7", "golden_path": "/data/golden.json"}


@pytest.fixture(scope="module")
def deploy_params():
    """model_deploy's Params, as the DAG file declares them (the rules a run's conf is checked with)."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS / "model_deploy.py"))
    assert bag.import_errors == {}
    return bag.dags["model_deploy"].params


class Registry:
    """The registry's per-model settings: records which models it was asked about (nothing is frozen)."""

    asked: list[str] = []

    def __init__(self, _conn_id: str) -> None:
        pass

    def get_settings(self, model: str) -> Any:
        Registry.asked.append(model)
        return SimpleNamespace(frozen=False)


@pytest.fixture(autouse=True)
def registry(monkeypatch: pytest.MonkeyPatch) -> type[Registry]:
    Registry.asked = []
    monkeypatch.setattr(plan_module, "RegistryHook", Registry)
    return Registry


def operator(deploy_params, **params: Any) -> ReleasePlanOperator:
    """plan_release in a DAG with model_deploy's Params, its templates rendered from ``params`` over the defaults."""
    values = {**deploy_params.dump(), **params}
    with DAG("inputs_test", schedule=None, params=copy.deepcopy(deploy_params)):
        return ReleasePlanOperator(
            task_id="plan_release",
            model_name=values["model_name"],
            inputs={name: values[name] for name in ("source", "version", "golden_path")},
            strategy="all_at_once",
        )


def event(extra: Any, minute: int = 0, **origin: Any) -> SimpleNamespace:
    return SimpleNamespace(
        asset=ASSET,
        extra=extra,
        timestamp=dt.datetime(2026, 12, 2, 8, minute, tzinfo=dt.UTC),
        source_dag_id=origin.get("dag"),
        source_run_id=origin.get("run"),
    )


def asset_context(*events: SimpleNamespace) -> dict[str, Any]:
    context = make_context("plan_release", run_id="asset_triggered__2026-12-02T08:00:00")
    context["dag_run"].run_type = "asset_triggered"
    context["triggering_asset_events"] = {ASSET.uri: list(events)} if events else {}
    return context


def run(op: ReleasePlanOperator, context: dict[str, Any]) -> dict[str, Any]:
    op.execute(context)
    return context["ti"].xcoms[("plan_release", "inputs")]


def test_an_asset_event_s_extra_is_what_the_run_deploys(deploy_params, registry):
    inputs = run(operator(deploy_params), asset_context(event({**GOOD, "version": 7, "trained_on": "2026-12-01"})))
    assert inputs == {
        "model_name": "fraud_scorer",
        "source": "webhdfs:///trained/fraud_scorer/7",
        "version": 7,
        "golden_path": "/data/golden.json",
    }
    assert registry.asked == ["fraud_scorer"]  # the freeze is checked for the announced model, not the default


def test_version_is_optional_in_the_extra(deploy_params):
    assert run(operator(deploy_params), asset_context(event(GOOD)))["version"] is None


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (None, "has no extra"),
        ({}, "has no extra"),
        ({"model": "fraud_scorer", "golden_path": "/g.json"}, "has no 'source'"),
        ({"source": "/m", "golden_path": "/g.json"}, "has no 'model'"),
        ({"model": "fraud_scorer", "source": "/m", "golden_path": ""}, "has no 'golden_path'"),
        ({**GOOD, "model": "../../etc"}, "extra key 'model' is invalid: invalid model name '../../etc'"),
        ({**GOOD, "model": "models.config "}, "extra key 'model' is invalid"),
        ({**GOOD, "version": "7"}, "extra key 'version' is invalid: '7' is not of type 'null', 'integer'"),
        ({**GOOD, "version": 0}, "extra key 'version' is invalid: 0 is less than the minimum of 1"),
        ({**GOOD, "source": ["/a", "/b"]}, "extra key 'source' is invalid"),
        ({**GOOD, "golden_path": 3}, "extra key 'golden_path' is invalid: 3 is not of type 'string'"),
    ],
)
def test_an_event_without_a_valid_extra_fails_the_run_naming_the_key(deploy_params, registry, extra, named):
    op = operator(deploy_params)
    context = asset_context(event(extra, dag="train_fraud", run="scheduled__1"))
    with pytest.raises(AirflowFailException, match="run inputs refused") as info:
        op.execute(context)
    message = str(info.value)
    assert named in message
    assert "tfdeploy://trained-models" in message and "train_fraud/scheduled__1" in message  # which event
    assert "Nothing was deployed" in message and '"model": "demo_regressor"' not in message.split("extra=")[0]
    assert registry.asked == [] and context["ti"].xcoms == {}  # nothing asked, nothing handed on


def test_the_defaults_are_never_deployed_by_an_asset_triggered_run(deploy_params):
    """The run type alone decides: an Asset-triggered run without an event does not fall back to the Params."""
    with pytest.raises(AirflowFailException, match="started by an Asset update but carries no Asset event"):
        operator(deploy_params).execute(asset_context())


def test_of_several_batched_events_the_newest_is_deployed(deploy_params):
    older = event({**GOOD, "model": "older_model"}, minute=1)
    newer = event({**GOOD, "model": "newer_model"}, minute=5)
    assert run(operator(deploy_params), asset_context(newer, older))["model_name"] == "newer_model"


def test_a_person_s_run_deploys_its_params(deploy_params, registry):
    op = operator(deploy_params, model_name="churn", source="/data/churn/saved_model", version=3)
    context = make_context("plan_release")
    context["triggering_asset_events"] = {}
    inputs = run(op, context)
    assert inputs["model_name"] == "churn" and inputs["source"] == "/data/churn/saved_model" and inputs["version"] == 3
    assert inputs["golden_path"] == deploy_params["golden_path"]
    assert registry.asked == ["churn"]


def test_a_person_s_params_are_checked_by_the_same_rules(deploy_params):
    with pytest.raises(AirflowFailException, match="this run's Params: source is invalid: '' should be non-empty"):
        operator(deploy_params, source="").execute(make_context("plan_release"))


def test_unknown_inputs_are_refused_when_the_dag_is_parsed():
    with pytest.raises(ValueError, match=r"plan_release: unknown run inputs \['golden'\]"):
        ReleasePlanOperator(task_id="plan_release", model_name="m", strategy="canary", inputs={"golden": "/g"})
