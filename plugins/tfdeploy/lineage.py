"""The Airflow run a task acts for, sent with every registry write.

Only ids: who started the run and through which interface is looked up by the registry itself, in Airflow's
database (the plugin's run lookup), never sent by the worker, which therefore holds no Airflow credentials."""

from __future__ import annotations

from typing import Any


def run_context(context: Any) -> dict[str, str]:
    """The registry `context` body for a task: the pipeline's interface, DAG, run and task ids."""
    dag_run = context["dag_run"]
    return {
        "interface": "pipeline",
        "dagId": dag_run.dag_id,
        "runId": dag_run.run_id,
        "taskId": context["ti"].task_id,
    }
