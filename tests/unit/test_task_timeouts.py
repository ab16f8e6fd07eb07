"""Every task of every DAG is bounded in time: an ``execution_timeout`` (a sensor: its ``timeout``), so a step
stuck on a server that never answers fails (and retries or rolls back) instead of holding the run forever."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"
LONGEST = timedelta(hours=24)  # nothing in the pipeline may legitimately run a day in one try


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}, (
        f"DAG files that did not import (their tasks cannot be checked): {bag.import_errors}"
    )
    return bag


def test_every_task_of_every_dag_has_a_timeout(dagbag):
    from airflow.sdk import BaseSensorOperator

    tasks = [(dag_id, task) for dag_id, dag in sorted(dagbag.dags.items()) for task in dag.tasks]
    assert {Path(dag.fileloc).name for dag in dagbag.dags.values()} == {p.name for p in DAGS.glob("*.py")}
    missing, too_long = [], []
    for dag_id, task in tasks:
        name = f"{dag_id}.{task.task_id} ({type(task).__name__})"
        if isinstance(task, BaseSensorOperator):
            limit = timedelta(seconds=task.timeout) if task.timeout else None
        else:
            limit = task.execution_timeout
        if limit is None:
            missing.append(name)
        elif not timedelta(0) < limit <= LONGEST:
            too_long.append(f"{name}: {limit}")
    assert not missing, f"tasks without an execution_timeout (sensors: timeout): {missing}"
    assert not too_long, f"timeouts not in (0, {LONGEST}]: {too_long}"


def test_the_steps_default_is_set_and_can_be_overridden():
    from tfdeploy.operators.base import DEFAULT_TIMEOUT
    from tfdeploy.operators.promote import PromoteOperator
    from tfdeploy.operators.rollout import RolloutOperator

    assert RolloutOperator(task_id="r", model_name="m").execution_timeout == DEFAULT_TIMEOUT == timedelta(minutes=30)
    longer = PromoteOperator(task_id="p", model_name="m", execution_timeout=timedelta(hours=2))
    assert longer.execution_timeout == timedelta(hours=2)
