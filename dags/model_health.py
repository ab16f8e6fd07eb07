"""model_health: every production model's health, on a schedule (MODEL_HEALTH_SCHEDULE, default every 5
minutes) and on demand.

check (each stable replica's model status, one golden predict through the router against validation's
predictions, Prometheus' error rate and p99) -> the registry's health history of the production version;
a change of health (healthy -> degraded -> failing, and back) alerts through notifiers (log, alerts.log, mail);
a failing model whose registry setting autoRollbackOnFailing is on -> auto_rollback (model_rollback, one run
per model, to its previous production version). Alertmanager's alerts reach the registry at once (the fast
path); this schedule is the safety net.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, Param

from tfdeploy.core.names import MODEL_NAME_PATTERN
from tfdeploy.notifiers import alert_notifiers
from tfdeploy.operators.health import ROLLBACK_DAG, ModelHealthOperator

SCHEDULE = os.environ.get("MODEL_HEALTH_SCHEDULE", "*/5 * * * *").strip() or None

with DAG(
    dag_id="model_health",
    description="Checks every production model's health; alerts on changes; rolls back failing models if asked",
    schedule=SCHEDULE,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    # an operational DAG: active from the start (alerts and the health checks start it without anyone unpausing)
    is_paused_upon_creation=False,
    max_active_runs=1,
    tags=["tfdeploy", "operations"],
    doc_md=__doc__,
    default_args={"owner": "ml-platform", "retries": 1, "retry_delay": timedelta(seconds=10)},
    render_template_as_native_obj=True,
    params={
        "models": Param(
            [],
            type="array",
            items={"type": "string", "pattern": MODEL_NAME_PATTERN},
            description="models to check (empty: every model in production)",
        ),
    },
) as dag:
    check = ModelHealthOperator(task_id="check", models="{{ params.models }}", notifiers=alert_notifiers)
    TriggerDagRunOperator.partial(
        task_id="auto_rollback",
        trigger_dag_id=ROLLBACK_DAG,
        wait_for_completion=False,
        execution_timeout=timedelta(minutes=5),
    ).expand(conf=check.output)
