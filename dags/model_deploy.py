"""model_deploy: takes a trained TensorFlow model to production safely, and backs it out when it misbehaves.

plan_release -> acquire_lock -> export (HDFS) -> register -> validate -> rollout (canary pool) -> smoke -> approval
    -> gray_release (weighted steps at the router, each baked and judged by live metrics) -> promote
    rollback (if rollout, smoke, gray_release or promote failed); release_gate (fails the run unless
    promoted), release_lock

Trigger it from the UI's trigger form, the REST API (`conf` with the same fields), on a schedule
(MODEL_DEPLOY_SCHEDULE: the Params' defaults), or by updating the Asset `tfdeploy://trained-models` with the model in
the event's extra (`model`, `source`, `golden_path`, optional `version`: checked like a conf; an event without them
fails the run). See README.md ("The deployment pipeline").
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, Asset, AssetOrTimeSchedule, CronTriggerTimetable, Param

from tfdeploy.core.names import MODEL_NAME_PATTERN
from tfdeploy.operators.approval import ReleaseApprovalOperator
from tfdeploy.operators.export import ExportModelOperator
from tfdeploy.operators.gate import ReleaseGateOperator
from tfdeploy.operators.gray_release import GrayReleaseOperator
from tfdeploy.operators.lock import DeploymentLockSensor, ReleaseLockOperator
from tfdeploy.operators.plan import INPUTS_XCOM, PLAN_FIELDS, ReleasePlanOperator
from tfdeploy.operators.promote import PromoteOperator
from tfdeploy.operators.register import RegisterModelOperator
from tfdeploy.operators.rollback import RollbackOperator
from tfdeploy.operators.rollout import RolloutOperator
from tfdeploy.operators.smoke import SmokeTestOperator
from tfdeploy.operators.validate import ValidateModelOperator
from tfdeploy.services.targets import serving_image_param
from tfdeploy.settings import get_settings

# A training pipeline announces a new model by updating this Asset, with the model in the event's extra (the
# run deploys that, never the Params' defaults: tfdeploy.core.run_inputs); MODEL_DEPLOY_SCHEDULE (cron) adds a time
# schedule too, whose runs deploy the Params' defaults.
TRAINED_MODELS = Asset("tfdeploy://trained-models")
_cron = os.environ.get("MODEL_DEPLOY_SCHEDULE", "").strip()
SCHEDULE = (
    AssetOrTimeSchedule(timetable=CronTriggerTimetable(_cron, timezone="UTC"), assets=[TRAINED_MODELS])
    if _cron
    else [TRAINED_MODELS]
)
EXAMPLE = get_settings().example_dir / "good"  # built by `make demo` (include/example_model/build.py)


def run_input(name: str) -> str:
    """Template of one of the run's inputs as plan_release resolved and checked them (the Params, or an Asset
    event's extra); the Params' for a task that runs after plan_release failed (release_lock, release_gate)."""
    return f"{{{{ (ti.xcom_pull(task_ids='plan_release', key='{INPUTS_XCOM}') or params)['{name}'] }}}}"


MODEL = run_input("model_name")

with DAG(
    dag_id="model_deploy",
    description="Export, validate, register and roll out a TensorFlow model to TF Serving; promote or roll back",
    schedule=SCHEDULE,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=4,
    tags=["tfdeploy", "deployment"],
    doc_md=__doc__,
    default_args={"owner": "ml-platform", "retries": 1, "retry_delay": timedelta(seconds=10)},
    render_template_as_native_obj=True,
    params={
        "model_name": Param(
            "demo_regressor",
            type="string",
            pattern=MODEL_NAME_PATTERN,
            description="TF Serving model name (letters, digits, _ - .)",
        ),
        "source": Param(
            str(EXAMPLE / "saved_model"),
            type="string",
            minLength=1,
            description="SavedModel directory or .keras file (local path, or webhdfs:///path on HDFS)",
        ),
        "version": Param(None, type=["null", "integer"], minimum=1, description="empty: the next free version"),
        "golden_path": Param(
            str(EXAMPLE / "golden.json"),
            type="string",
            minLength=1,
            description="golden examples JSON: inputs, labels, signature_name",
        ),
        "metric": Param("mae", enum=["mae", "accuracy"]),
        "threshold": Param(0.5, type=["null", "number"], description="max MAE / min accuracy"),
        "max_regression": Param(
            0.05, type=["null", "number"], description="allowed worsening of the metric against production"
        ),
        "latency_budget_ms": Param(None, type=["null", "number"], minimum=0),
        "serving_target": Param("local", enum=["local"]),
        "serving_image": serving_image_param(),
        "smoke_requests": Param(50, type="integer", minimum=1, maximum=10000),
        "smoke_p99_budget_ms": Param(500.0, type="number", minimum=1),
        "max_latency_ratio": Param(3.0, type="number", minimum=1),
        "keep_versions": Param(2, type="integer", minimum=1, maximum=10),
        # gray release (README "Gray release"): how traffic moves from stable to the candidate after smoke
        "strategy": Param(
            "canary",
            enum=["all_at_once", "canary", "linear"],
            description="all_at_once: promote after smoke; canary: the weights in steps; linear: linear_step% steps",
        ),
        "steps": Param(
            [10, 50, 100],
            type="array",
            items={"type": "integer", "minimum": 1, "maximum": 100},
            minItems=1,
            maxItems=20,
            description="canary: percent of unversioned calls on the candidate, rising, e.g. [1, 5, 25, 50, 100]",
        ),
        "linear_step": Param(25, type="integer", minimum=1, maximum=100, description="linear: percent per step"),
        "step_seconds": Param(10, type="number", exclusiveMinimum=0, maximum=86400, description="bake time per step"),
        "check_seconds": Param(2, type="number", exclusiveMinimum=0, maximum=600, description="judged every"),
        "max_error_rate": Param(
            0.01, type="number", minimum=0, maximum=1, description="allowed error rate above stable's (fraction)"
        ),
        "max_p99_ratio": Param(2.0, type="number", minimum=1, description="allowed candidate p99 / stable p99"),
        "p99_floor_ms": Param(
            50.0, type="number", minimum=0, description="p99 is judged against max(stable p99, this): ms of jitter"
        ),
        "min_requests": Param(20, type="integer", minimum=1, description="candidate requests needed to judge a step"),
        "low_traffic": Param(
            "extend", enum=["extend", "fail"], description="too few requests at the end of a bake: bake again or fail"
        ),
        "max_extensions": Param(2, type="integer", minimum=0, maximum=20, description="extra bakes for low traffic"),
        "require_approval": Param(
            False,
            type="boolean",
            description="wait for a human to approve after smoke, before any production traffic moves (the "
            "registry can require it per model)",
        ),
        "approval_timeout_seconds": Param(
            3600, type="integer", minimum=1, maximum=7 * 86400, description="no answer within this rejects"
        ),
    },
) as dag:
    target: dict[str, Any] = {
        "serving_target": "{{ params.serving_target }}",
        "serving_image": "{{ params.serving_image }}",
    }
    plan = ReleasePlanOperator(
        task_id="plan_release",
        model_name="{{ params.model_name }}",
        inputs={name: f"{{{{ params.{name} }}}}" for name in ("source", "version", "golden_path")},
        strategy="{{ params.strategy }}",
        options={name: f"{{{{ params.{name} }}}}" for name in PLAN_FIELDS if name != "strategy"},
    )
    lock = DeploymentLockSensor(task_id="acquire_lock", model_name=MODEL)
    export = ExportModelOperator(
        task_id="export",
        model_name=MODEL,
        source=run_input("source"),
        version=run_input("version"),
        golden_path=run_input("golden_path"),
    )
    register = RegisterModelOperator(task_id="register", model_name=MODEL)
    validate = ValidateModelOperator(
        task_id="validate",
        model_name=MODEL,
        golden_path=run_input("golden_path"),
        metric="{{ params.metric }}",
        threshold="{{ params.threshold }}",
        max_regression="{{ params.max_regression }}",
        latency_budget_ms="{{ params.latency_budget_ms }}",
    )
    rollout = RolloutOperator(task_id="rollout", model_name=MODEL, **target)
    smoke = SmokeTestOperator(
        task_id="smoke",
        model_name=MODEL,
        requests="{{ params.smoke_requests }}",
        p99_budget_ms="{{ params.smoke_p99_budget_ms }}",
        max_latency_ratio="{{ params.max_latency_ratio }}",
        **target,
    )
    approval = ReleaseApprovalOperator(
        task_id="approval",
        model_name=MODEL,
        require_approval="{{ params.require_approval }}",
        timeout_seconds="{{ params.approval_timeout_seconds }}",
        execution_timeout=timedelta(minutes=10),  # its own work; the wait for a human is timeout_seconds
    )
    gray = GrayReleaseOperator(
        task_id="gray_release", model_name=MODEL, plan="{{ ti.xcom_pull(task_ids='plan_release') }}", **target
    )
    promote = PromoteOperator(
        task_id="promote",
        model_name=MODEL,
        keep_versions="{{ params.keep_versions }}",
        **target,
    )
    rollback = RollbackOperator(task_id="rollback", model_name=MODEL, **target)
    gate = ReleaseGateOperator(task_id="release_gate", model_name=MODEL)
    release = ReleaseLockOperator(task_id="release_lock", model_name=MODEL)

    plan >> lock >> export >> register >> validate >> rollout >> smoke >> approval >> gray >> promote
    [rollout, smoke, approval, gray, promote] >> rollback
    [promote, rollback] >> gate
    [promote, rollback] >> release
