"""model_deploy: takes a trained TensorFlow model to production safely, and backs it out when it misbehaves.

acquire_lock -> export (HDFS) -> register -> validate -> rollout (TF Serving, canary) -> smoke -> promote
                                                          \\______ rollback (if rollout/smoke/promote failed)
                                                           release_gate (fails the run unless promoted), release_lock

Trigger it from the UI's trigger form, the REST API (`conf` with the same fields), on a schedule, or when
the example model's source Asset is updated. See README.md ("The deployment pipeline").
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, Asset, AssetOrTimeSchedule, CronTriggerTimetable, Param

from tfdeploy.core.names import MODEL_NAME_PATTERN
from tfdeploy.operators.export import ExportModelOperator
from tfdeploy.operators.gate import ReleaseGateOperator
from tfdeploy.operators.lock import DeploymentLockSensor, ReleaseLockOperator
from tfdeploy.operators.promote import PromoteOperator
from tfdeploy.operators.register import RegisterModelOperator
from tfdeploy.operators.rollback import RollbackOperator
from tfdeploy.operators.rollout import RolloutOperator
from tfdeploy.operators.smoke import SmokeTestOperator
from tfdeploy.operators.validate import ValidateModelOperator
from tfdeploy.settings import get_settings

# A training pipeline announces a new model by updating this Asset (the run then deploys with the
# Params' defaults or the event's extra); MODEL_DEPLOY_SCHEDULE (cron) adds a time schedule too.
TRAINED_MODELS = Asset("tfdeploy://trained-models")
_cron = os.environ.get("MODEL_DEPLOY_SCHEDULE", "").strip()
SCHEDULE = (
    AssetOrTimeSchedule(timetable=CronTriggerTimetable(_cron, timezone="UTC"), assets=[TRAINED_MODELS])
    if _cron
    else [TRAINED_MODELS]
)
MODEL = "{{ params.model_name }}"
EXAMPLE = get_settings().state_dir / "example" / "good"  # built by `make demo` (include/example_model/build.py)

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
            "/tmp/tfdeploy-example/good/saved_model",
            type="string",
            minLength=1,
            description="SavedModel directory or .keras file (local path, or webhdfs:///path on HDFS)",
        ),
        "version": Param(None, type=["null", "integer"], minimum=1, description="empty: the next free version"),
        "golden_path": Param(
            "/tmp/tfdeploy-example/good/golden.json",
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
        "serving_image": Param(
            "", type="string", description="empty: SERVING_IMAGE (tensorflow/serving in production)"
        ),
        "smoke_requests": Param(50, type="integer", minimum=1, maximum=10000),
        "smoke_p99_budget_ms": Param(500.0, type="number", minimum=1),
        "max_latency_ratio": Param(3.0, type="number", minimum=1),
        "keep_versions": Param(2, type="integer", minimum=1, maximum=10),
    },
) as dag:
    target: dict[str, Any] = {
        "serving_target": "{{ params.serving_target }}",
        "serving_image": "{{ params.serving_image }}",
    }
    lock = DeploymentLockSensor(task_id="acquire_lock", model_name=MODEL)
    export = ExportModelOperator(
        task_id="export",
        model_name=MODEL,
        source="{{ params.source }}",
        version="{{ params.version }}",
        golden_path="{{ params.golden_path }}",
    )
    register = RegisterModelOperator(task_id="register", model_name=MODEL)
    validate = ValidateModelOperator(
        task_id="validate",
        model_name=MODEL,
        golden_path="{{ params.golden_path }}",
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
    promote = PromoteOperator(task_id="promote", model_name=MODEL, keep_versions="{{ params.keep_versions }}", **target)
    rollback = RollbackOperator(task_id="rollback", model_name=MODEL, **target)
    gate = ReleaseGateOperator(task_id="release_gate", model_name=MODEL)
    release = ReleaseLockOperator(task_id="release_lock", model_name=MODEL)

    lock >> export >> register >> validate >> rollout >> smoke >> promote
    [rollout, smoke, promote] >> rollback
    [promote, rollback] >> gate
    [promote, rollback] >> release
