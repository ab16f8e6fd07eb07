"""Every DAG imports cleanly and carries the metadata operators rely on (owner, tags, retries)."""

from __future__ import annotations

from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}


def test_every_dag_file_defines_a_dag(dagbag):
    files = {p.name for p in DAGS.glob("*.py") if not p.name.startswith("_")}
    assert files, "no DAG files found"
    defined = {Path(dag.fileloc).name for dag in dagbag.dags.values()}
    assert files <= defined, f"files without a DAG: {files - defined}"


def test_every_dag_has_tags_owner_and_retries(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        for t in dag.tasks:
            assert t.owner and t.owner != "airflow", f"{dag_id}.{t.task_id} has no owner"
            # a task may opt out only where a retry would do harm (gray_release: it would send traffic back to a
            # candidate that breached; its failure rolls back instead)
            assert t.retries >= 1 or getattr(t, "retriable", True) is False, f"{dag_id}.{t.task_id} has no retries"


# Run in a fresh interpreter: imports the DAG file as Airflow's dag-processor would (module name aside),
# then reports which heavy packages ended up imported, directly or through anything the file imports.
_IMPORT_DAG_FILE = """
import json, runpy, sys
runpy.run_path(sys.argv[1], run_name="dag_import_check")
heavy = sorted({name.split(".")[0] for name in sys.modules} & {"tensorflow", "keras", "tf_keras"})
print(json.dumps({"heavy": heavy, "airflow": "airflow.sdk" in sys.modules}))
"""


@pytest.mark.parametrize("dag_file", sorted(p.name for p in DAGS.glob("*.py")))
def test_no_heavy_imports_when_parsing_a_dag_file(dag_file, settings):
    """The dag-processor parses every DAG file often: parsing must not import TensorFlow or Keras, not even
    through a module the file imports (operators, hooks, shared code) - only task code may."""
    import json
    import os
    import subprocess
    import sys

    import stack

    env = {**os.environ, **stack.airflow_env(settings)}  # as the stack's Airflow runs: PYTHONPATH=plugins
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_DAG_FILE, str(DAGS / dag_file)],
        env=env,
        cwd=str(DAGS.parent),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"importing {dag_file} failed:\n{proc.stderr[-3000:]}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["airflow"], f"{dag_file} did not import airflow.sdk: was it really parsed?"
    assert report["heavy"] == [], f"parsing {dag_file} imports {report['heavy']}"


# --------------------------------------------------------------------------- model_deploy's gray release


@pytest.fixture(scope="module")
def deploy(dagbag):
    return dagbag.dags["model_deploy"]


RELEASE_PARAMS = {
    "strategy": "canary",
    "steps": [10, 50, 100],
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


def test_the_release_params_and_their_defaults(deploy):
    from tfdeploy.operators.plan import PLAN_FIELDS

    defaults = deploy.params.dump()
    assert {name: defaults[name] for name in RELEASE_PARAMS} == RELEASE_PARAMS
    assert set(PLAN_FIELDS) <= set(defaults)


def param(dag, name):
    """A copy of the DAG's Param ``name``: resolving one keeps the value it resolved."""
    import copy

    return copy.deepcopy(dag.params.get_param(name))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("strategy", "blue_green"),
        ("steps", [0]),
        ("steps", [101]),
        ("steps", [10, 50.5]),
        ("steps", []),
        ("steps", list(range(1, 22))),
        ("linear_step", 0),
        ("linear_step", 101),
        ("step_seconds", -1),
        ("step_seconds", 0),
        ("step_seconds", 86401),
        ("check_seconds", 0),
        ("max_error_rate", 1.5),
        ("max_error_rate", -0.1),
        ("max_p99_ratio", 0.5),
        ("min_requests", 0),
        ("low_traffic", "retry"),
        ("max_extensions", -1),
        ("max_extensions", 21),
    ],
)
def test_the_release_params_refuse_what_the_schema_can_tell(deploy, name, value):
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError):
        param(deploy, name).resolve(value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("strategy", "linear"),
        ("strategy", "all_at_once"),
        ("steps", [1, 5, 25, 50, 100]),
        ("steps", [50, 10]),  # JSON Schema cannot say "rising": the plan_release task refuses it
        ("step_seconds", 0.5),
        ("max_error_rate", 0),
        ("max_extensions", 0),
        ("low_traffic", "fail"),
    ],
)
def test_the_release_params_take_good_values(deploy, name, value):
    assert param(deploy, name).resolve(value) == value


def test_the_default_params_make_a_valid_plan(deploy):
    """What the plan_release task receives once its templates render (native objects) with the defaults."""
    from tfdeploy.core.release import plan_release

    plan = deploy.task_dict["plan_release"]
    context = {"params": deploy.params.dump()}
    options = plan.render_template(plan.options, context)
    assert options == {name: value for name, value in RELEASE_PARAMS.items() if name != "strategy"}
    assert plan_release(plan.render_template(plan.strategy, context), **options).steps == (10, 50, 100)


def test_plan_release_runs_first_and_gray_release_between_smoke_and_promote(deploy):
    tasks = deploy.task_dict
    assert [t.task_id for t in deploy.roots] == ["plan_release"]
    assert tasks["plan_release"].downstream_task_ids == {"acquire_lock"}
    assert tasks["acquire_lock"].upstream_task_ids == {"plan_release"}
    assert tasks["approval"].upstream_task_ids == {"smoke"}
    assert tasks["approval"].downstream_task_ids == {"gray_release", "rollback"}
    assert tasks["gray_release"].upstream_task_ids == {"approval"}
    assert tasks["promote"].upstream_task_ids == {"gray_release"}
    assert tasks["gray_release"].downstream_task_ids == {"promote", "rollback"}
    assert tasks["gray_release"].plan == "{{ ti.xcom_pull(task_ids='plan_release') }}"


def test_the_rollback_follows_a_failed_gray_release(deploy):
    from tfdeploy.operators.rollback import GUARDED_STEPS

    rollback = deploy.task_dict["rollback"]
    assert rollback.upstream_task_ids == {"rollout", "smoke", "approval", "gray_release", "promote"}
    assert rollback.trigger_rule == "one_failed"
    assert "gray_release" in GUARDED_STEPS
    assert "gray_release" in deploy.task_dict["smoke"].get_flat_relative_ids(upstream=False)


# --------------------------------------------------------------------------- model_deploy's approval step


def test_the_approval_params_and_their_defaults(deploy):
    defaults = deploy.params.dump()
    assert (defaults["require_approval"], defaults["approval_timeout_seconds"]) == (False, 3600)


@pytest.mark.parametrize(
    ("name", "value"),
    [("require_approval", "yes"), ("approval_timeout_seconds", 0), ("approval_timeout_seconds", 7 * 86400 + 1)],
)
def test_the_approval_params_refuse_what_the_schema_can_tell(deploy, name, value):
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError):
        param(deploy, name).resolve(value)


@pytest.mark.parametrize(
    ("name", "value"),
    [("require_approval", True), ("approval_timeout_seconds", 1), ("approval_timeout_seconds", 604800)],
)
def test_the_approval_params_take_good_values(deploy, name, value):
    assert param(deploy, name).resolve(value) == value


def test_the_approval_step_renders_the_run_s_params_natively(deploy):
    """The operator takes only the bool True as "required" and a number as the timeout: the templates must
    render to those (render_template_as_native_obj), not to the strings "True" and "3600"."""
    from tfdeploy.operators.approval import ReleaseApprovalOperator

    approval = deploy.task_dict["approval"]
    assert isinstance(approval, ReleaseApprovalOperator)
    assert approval.retries == 0 and approval.retriable is False  # over the DAG's default retries
    assert approval.fail_on_reject is True and approval.defaults == ["Reject"]
    context = {
        "params": deploy.params.dump() | {"require_approval": True, "approval_timeout_seconds": 15},
        "ti": XComs({}),
    }
    env = deploy.get_template_env()
    assert approval.render_template(approval.require_approval, context, env) is True
    assert approval.render_template(approval.timeout_seconds, context, env) == 15
    assert approval.render_template(approval.model_name, context, env) == "demo_regressor"


# --------------------------------------------------------------------------- model_deploy's inputs and image


class XComs:
    """``ti`` for rendering: xcom_pull answers from {(task_id, key): value}."""

    def __init__(self, xcoms: dict) -> None:
        self.xcoms = xcoms

    def xcom_pull(self, task_ids=None, key="return_value", **_kw):
        return self.xcoms.get((task_ids, key))


def test_the_example_defaults_point_into_the_state_directory_not_tmp(deploy, settings):
    defaults = deploy.params.dump()
    assert defaults["source"] == str(settings.example_dir / "good" / "saved_model")
    assert defaults["golden_path"] == str(settings.example_dir / "good" / "golden.json")
    # never the world-writable /tmp/tfdeploy-example of before (the state directory itself may be anywhere, e.g.
    # a CI clone under /tmp)
    assert not any(str(value).startswith("/tmp/tfdeploy-example") for value in defaults.values())


def test_every_task_deploys_the_inputs_plan_release_resolved(deploy):
    """plan_release renders the Params (its own templates); every later task reads the inputs it resolved and
    checked (the Params, or an Asset event's extra), so an Asset-triggered run never deploys the Params' defaults."""
    env = deploy.get_template_env()
    params = deploy.params.dump()
    plan = deploy.task_dict["plan_release"]
    assert plan.render_template(plan.model_name, {"params": params}, env) == "demo_regressor"
    assert plan.render_template(plan.inputs, {"params": params}, env) == {
        name: params[name] for name in ("source", "version", "golden_path")
    }
    resolved = {"model_name": "fraud", "source": "webhdfs:///trained/fraud/7", "version": 7, "golden_path": "/g.json"}
    context = {"params": params, "ti": XComs({("plan_release", "inputs"): resolved})}
    for task in deploy.tasks:
        if task.task_id == "plan_release":
            continue
        assert task.render_template(task.model_name, context, env) == "fraud", task.task_id
    export = deploy.task_dict["export"]
    assert [export.render_template(getattr(export, f), context, env) for f in ("source", "version", "golden_path")] == [
        "webhdfs:///trained/fraud/7",
        7,
        "/g.json",
    ]
    validate = deploy.task_dict["validate"]
    assert validate.render_template(validate.golden_path, context, env) == "/g.json"
    # plan_release failed (no inputs): the tasks that still run (release_lock, release_gate) read the Params
    gate = deploy.task_dict["release_gate"]
    assert gate.render_template(gate.model_name, {"params": params, "ti": XComs({})}, env) == "demo_regressor"


@pytest.mark.parametrize("dag_id", ["model_deploy", "model_rollback"])
def test_serving_image_is_a_choice_of_the_allowlist(dagbag, dag_id, settings):
    from airflow.sdk.exceptions import ParamValidationError

    image = dagbag.dags[dag_id].params.get_param("serving_image")
    assert image.value == settings.serving_image
    assert image.schema["enum"] == list(settings.serving_images)
    with pytest.raises(ParamValidationError):
        param(dagbag.dags[dag_id], "serving_image").resolve("attacker/miner:latest")
    with pytest.raises(ParamValidationError):
        param(dagbag.dags[dag_id], "serving_image").resolve("")


# --------------------------------------------------------------------------- the operations DAGs


@pytest.mark.parametrize("dag_id", ["model_rollback", "model_health", "model_diagnose"])
def test_the_operations_dags_are_active_from_the_start(dagbag, dag_id):
    """Alerts and the health checks start them: nobody is there to unpause them first."""
    assert dagbag.dags[dag_id].is_paused_upon_creation is False


def test_model_health_checks_then_triggers_one_rollback_per_model(dagbag):
    from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    from tfdeploy.notifiers import alert_notifiers
    from tfdeploy.operators.health import ModelHealthOperator

    health = dagbag.dags["model_health"]
    assert set(health.task_dict) == {"check", "auto_rollback"}
    check, rollback = health.task_dict["check"], health.task_dict["auto_rollback"]
    assert isinstance(check, ModelHealthOperator)
    assert check.notifiers is alert_notifiers
    assert check.downstream_task_ids == {"auto_rollback"}
    assert isinstance(rollback, MappedOperator) and rollback.operator_class is TriggerDagRunOperator
    assert rollback.partial_kwargs["trigger_dag_id"] == "model_rollback"
    assert rollback.partial_kwargs["wait_for_completion"] is False
    conf = rollback.expand_input.value["conf"]
    assert (conf.operator, conf.key) == (check, "return_value")  # one run per conf check returns
    assert health.max_active_runs == 1 and health.catchup is False


def stack_env_schedule(profile: str) -> str:
    """MODEL_HEALTH_SCHEDULE as stack.py gives it to the Airflow of a stack profile (none set by the caller)."""
    import os

    import stack
    from tfdeploy.settings import settings_for

    saved = os.environ.pop("MODEL_HEALTH_SCHEDULE", None)
    try:
        return stack.airflow_env(settings_for(profile))["MODEL_HEALTH_SCHEDULE"]
    finally:
        if saved is not None:
            os.environ["MODEL_HEALTH_SCHEDULE"] = saved


def test_model_health_runs_every_5_minutes_on_all_production_models_by_default(dagbag):
    import os

    health = dagbag.dags["model_health"]
    wanted = os.environ.get("MODEL_HEALTH_SCHEDULE", "*/5 * * * *").strip()
    if wanted:  # every 5 minutes unless MODEL_HEALTH_SCHEDULE says otherwise
        assert health.timetable.expression == wanted
    else:  # empty (the test stack's): on demand only
        assert type(health.timetable).__name__ == "NullTimetable"
    assert stack_env_schedule("dev") == "*/5 * * * *" and stack_env_schedule("test") == ""
    assert health.params.dump() == {"models": []}
    check = health.task_dict["check"]
    context = {"params": {"models": ["demo_regressor"]}}
    assert health.render_template_as_native_obj is True
    assert check.render_template(check.models, context, health.get_template_env()) == ["demo_regressor"]


@pytest.mark.parametrize("version", [1, None])
def test_a_rollback_conf_of_model_health_is_valid_for_model_rollback(dagbag, version):
    """What ModelHealthOperator returns (one conf per model) passes model_rollback's Params."""
    import copy

    params = copy.deepcopy(dagbag.dags["model_rollback"].params)
    conf = {"model_name": "demo_regressor", "version": version, "reason": "automatic: model_health found v2 failing"}
    assert set(conf) <= set(params)
    params.update(conf)
    resolved = params.validate()
    assert {name: resolved[name] for name in conf} == conf
