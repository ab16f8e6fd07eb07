"""model_diagnose: collect a diagnosis bundle of a model on demand (the UI's trigger form, the REST API, or
`make diagnose MODEL=<name>`).

collect: each replica's container log tail and `docker inspect` (both pools), models.config as on disk and
as served, the router's maps and server states, the registry's record and history, links to a failing task's
log, and the model's Prometheus series for the last 30 minutes -> one archive, secrets redacted, on HDFS at
/diagnostics/<model>/<UTC timestamp>-<run_id>.tar.gz -> a `diagnosis` event with its path in the model's
registry history. Its XCom: {"path", "parts", "missing"}.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Param

from tfdeploy.core.names import MODEL_NAME_PATTERN
from tfdeploy.operators.diagnose import DiagnoseOperator

with DAG(
    dag_id="model_diagnose",
    description="Collect a model's diagnosis bundle (logs, configs, router, registry, metrics) onto HDFS",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    # an operational DAG: active from the start (alerts and the health checks start it without anyone unpausing)
    is_paused_upon_creation=False,
    tags=["tfdeploy", "operations"],
    doc_md=__doc__,
    default_args={"owner": "ml-platform", "retries": 1, "retry_delay": timedelta(seconds=10)},
    params={
        "model_name": Param("demo_regressor", type="string", pattern=MODEL_NAME_PATTERN),
        "reason": Param("on demand", type="string", maxLength=1000, description="why (in the bundle and history)"),
        "serving_target": Param("local", enum=["local"]),
        "failed_dag_id": Param("", type="string", description="DAG of a failing task to link (empty: this run)"),
        "failed_run_id": Param("", type="string", description="its run (empty: this run)"),
        "failed_task_id": Param("", type="string", description="the failing task (empty: this task)"),
    },
) as dag:
    DiagnoseOperator(
        task_id="collect",
        model_name="{{ params.model_name }}",
        reason="{{ params.reason }}",
        serving_target="{{ params.serving_target }}",
        failed_dag_id="{{ params.failed_dag_id }}",
        failed_run_id="{{ params.failed_run_id }}",
        failed_task_id="{{ params.failed_task_id }}",
    )
