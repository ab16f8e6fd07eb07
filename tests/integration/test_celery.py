"""Airflow on its production engine: the CeleryExecutor's two workers both run the tasks of runs triggered over the
REST API (each task instance records the Celery node that ran it as its `hostname`), and Airflow's metadata, those
runs included, is in the stack's PostgreSQL."""

from __future__ import annotations

import uuid

import pytest

import stack

RUNS_PER_BATCH = 4  # stack_check has two independent tasks: 8 tasks queued at once for 2 x 4 worker slots
MAX_BATCHES = 3


@pytest.fixture(scope="module")
def nodes(settings) -> list[str]:
    expected = sorted(stack.celery_node(worker) for worker in stack.CELERY_WORKERS)
    assert stack.celery_ping(settings, timeout=3) == expected, "both Celery workers answer through the broker"
    return expected


def test_a_deploy_s_tasks_run_on_both_celery_workers(airflow, nodes):
    airflow.wait_for_dag("stack_check")
    airflow.unpause("stack_check")
    seen: dict[str, list[str]] = {}
    for _ in range(MAX_BATCHES):
        run_ids = [f"celery_{uuid.uuid4().hex[:10]}" for _ in range(RUNS_PER_BATCH)]
        for run_id in run_ids:  # all queued before any finishes
            airflow.trigger("stack_check", conf={"note": "celery"}, run_id=run_id)
        for run_id in run_ids:
            final = airflow.wait_for_run("stack_check", run_id, timeout=300)
            tis = airflow.task_instances("stack_check", run_id)
            assert final["state"] == "success", {ti["task_id"]: ti["state"] for ti in tis}
            for ti in tis:
                seen.setdefault(ti["hostname"], []).append(f"{run_id}.{ti['task_id']}")
        if set(nodes) <= set(seen):
            break
    assert sorted(seen) == nodes, f"tasks by worker: {seen}"


def test_airflow_s_metadata_is_in_postgresql(airflow, settings):
    airflow.wait_for_dag("stack_check")
    airflow.unpause("stack_check")
    run_id = f"celery_db_{uuid.uuid4().hex[:10]}"
    airflow.trigger("stack_check", run_id=run_id)
    # the run the api-server just created, read back from PostgreSQL as Airflow's own role
    rows = stack._pg_query(
        settings, f"SELECT dag_id FROM dag_run WHERE run_id = '{run_id}'", settings.airflow_db_user, stack.AIRFLOW_DB
    )
    assert rows == [("stack_check",)]
    [(version,)] = stack._pg_query(
        settings, "SELECT version_num FROM alembic_version", settings.airflow_db_user, stack.AIRFLOW_DB
    )
    assert version  # migrated by `airflow db migrate`
    assert airflow.wait_for_run("stack_check", run_id, timeout=300)["state"] == "success"
    health = airflow.request("GET", "/api/v2/monitor/health")
    assert health["metadatabase"]["status"] == "healthy"
