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


# Run in a fresh interpreter: imports the DAG file as Airflow's dag-processor would (module name aside),
# then reports which heavy packages ended up imported, directly or through anything the file imports.
_IMPORT_DAG_FILE = """
import json, runpy, sys
runpy.run_path(sys.argv[1], run_name="dag_import_check")
heavy = sorted({name.split(".")[0] for name in sys.modules} & {"tensorflow", "keras", "tf_keras"})
print(json.dumps({"heavy": heavy, "airflow": "airflow.sdk" in sys.modules}))
"""


@pytest.mark.parametrize("dag_file", sorted(p.name for p in DAGS.glob("*.py")))
def test_no_heavy_imports_when_parsing_a_dag_file(dag_file, settings):
    """The dag-processor parses every DAG file often: parsing must not import TensorFlow or Keras, not even
    through a module the file imports (operators, hooks, shared code) - only task code may."""
    import json
    import os
    import subprocess
    import sys

    import stack

    env = {**os.environ, **stack.airflow_env(settings)}  # as the stack's Airflow runs: PYTHONPATH=plugins
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_DAG_FILE, str(DAGS / dag_file)],
        env=env,
        cwd=str(DAGS.parent),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"importing {dag_file} failed:\n{proc.stderr[-3000:]}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["airflow"], f"{dag_file} did not import airflow.sdk: was it really parsed?"
    assert report["heavy"] == [], f"parsing {dag_file} imports {report['heavy']}"
