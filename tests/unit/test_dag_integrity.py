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
            assert t.retries >= 1, f"{dag_id}.{t.task_id} has no retries"


def test_no_heavy_imports_at_dag_top_level():
    for path in DAGS.glob("*.py"):
        top = [ln for ln in path.read_text().splitlines() if ln.startswith(("import ", "from "))]
        assert not any("tensorflow" in ln for ln in top), f"{path.name} imports TensorFlow at top level"
