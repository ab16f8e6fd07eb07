"""model_rollback: put an earlier version of a model back into production by hand (from the UI's trigger
form or the REST API), with a reason that goes into the registry's history.

acquire_lock -> rollback_to -> release_lock; the run fails unless the requested version is in production.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Param

from tfdeploy.core.names import MODEL_NAME_PATTERN
from tfdeploy.operators.gate import ReleaseGateOperator
from tfdeploy.operators.lock import DeploymentLockSensor, ReleaseLockOperator
from tfdeploy.operators.manual_rollback import ManualRollbackOperator
from tfdeploy.services.targets import serving_image_param

MODEL = "{{ params.model_name }}"

with DAG(
    dag_id="model_rollback",
    description="Serve an earlier (superseded) version of a model as stable again, with a recorded reason",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    # an operational DAG: active from the start (alerts and the health checks start it without anyone unpausing)
    is_paused_upon_creation=False,
    tags=["tfdeploy", "operations"],
    doc_md=__doc__,
    default_args={"owner": "ml-platform", "retries": 1, "retry_delay": timedelta(seconds=10)},
    render_template_as_native_obj=True,
    params={
        "model_name": Param("demo_regressor", type="string", pattern=MODEL_NAME_PATTERN),
        "version": Param(
            1,
            type=["null", "integer"],
            minimum=1,
            description="the earlier version to serve again (empty: the one in production before the current)",
        ),
        "reason": Param("", type="string", minLength=3, description="why (recorded in the registry)"),
        "serving_target": Param("local", enum=["local"]),
        "serving_image": serving_image_param(),
    },
) as dag:
    # a rollback rewrites serving from the registry: it may take over a dead run's lease without the agreement check
    lock = DeploymentLockSensor(task_id="acquire_lock", model_name=MODEL, check_serving_on_takeover=False)
    rollback = ManualRollbackOperator(
        task_id="rollback_to",
        model_name=MODEL,
        version="{{ params.version }}",
        reason="{{ params.reason }}",
        serving_target="{{ params.serving_target }}",
        serving_image="{{ params.serving_image }}",
    )
    verify = ReleaseGateOperator(task_id="verify", model_name=MODEL, export_task_id="rollback_to")
    release = ReleaseLockOperator(task_id="release_lock", model_name=MODEL)
    lock >> rollback >> [verify, release]
