"""Who started a run and through which interface, for the registry's history."""

from __future__ import annotations

from typing import Any

_RUN_TYPE_INTERFACE = {"scheduled": "schedule", "asset_triggered": "asset", "backfill": "backfill"}


def run_context(context: Any) -> dict[str, str]:
    """The registry `context` body for a task: actor, interface, DAG, run and task ids.

    Manual runs are started from the UI, the REST API or the CLI; Airflow records which as the run's
    `triggered_by`, readable through its REST API, so it is looked up there (best effort)."""
    dag_run = context["dag_run"]
    ti = context["ti"]
    run_type = str(getattr(dag_run.run_type, "value", dag_run.run_type))
    interface = _RUN_TYPE_INTERFACE.get(run_type) or _triggered_by(dag_run.dag_id, dag_run.run_id) or "unknown"
    actor = dag_run.triggering_user_name or ("scheduler" if run_type in _RUN_TYPE_INTERFACE else "unknown")
    return {
        "actor": actor,
        "interface": interface,
        "dagId": dag_run.dag_id,
        "runId": dag_run.run_id,
        "taskId": ti.task_id,
    }


def _triggered_by(dag_id: str, run_id: str) -> str | None:
    try:
        from tfdeploy.airflow_client import AirflowClient
        from tfdeploy.settings import get_settings

        s = get_settings()
        client = AirflowClient(s.airflow_url, s.airflow_user, s.airflow_password, timeout=5)
        from urllib.parse import quote

        run = client.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}")
    except Exception:  # noqa: BLE001 - lineage lookup must never fail a deployment
        return None
    value = str(run.get("triggered_by") or "").lower()
    return {
        "ui": "ui",
        "rest_api": "rest_api",
        "cli": "cli",
        "operator": "pipeline",
        "timetable": "schedule",
        "asset": "asset",
        "backfill": "backfill",
    }.get(value)
