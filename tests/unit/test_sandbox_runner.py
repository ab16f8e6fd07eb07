"""The sandbox package (include/tfdeploy_sandbox), the only code that loads or runs a model: it stands alone
(nothing of Airflow or tfdeploy, whose processes hold the secrets), speaks the hook's protocol, and reports a job it
cannot do in its result file. Its real jobs run in the sandbox image: tests/integration/test_sandbox.py."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest

from tfdeploy.hooks import sandbox as hook_module

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "include" / "tfdeploy_sandbox"


def test_the_sandbox_imports_nothing_of_airflow_or_tfdeploy() -> None:
    imported = set()
    for source in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])
    assert imported <= {
        "__future__",
        "json",
        "os",
        "statistics",
        "sys",
        "time",
        "traceback",
        "pathlib",
        "typing",
        "numpy",
        "tensorflow",
        "tensorflow_serving",
        "tfdeploy_sandbox",
    }, imported


def test_the_hook_and_the_sandbox_speak_one_protocol() -> None:
    from tfdeploy_sandbox import runner

    assert runner.PROTOCOL == hook_module.PROTOCOL
    assert hook_module.SANDBOX_COMMAND[:3] == ("python", "-m", "tfdeploy_sandbox")
    assert set(runner.KINDS) == {"validate", "export"}


@pytest.mark.parametrize(
    ("job", "error"),
    [
        ({"protocol": 0, "kind": "validate"}, "job protocol 0; this sandbox speaks 1: rebuild the image"),
        ({"protocol": 1, "kind": "train"}, "unknown job kind 'train'; known: validate, export"),
        ({"protocol": 1, "kind": "export", "warmup": {"inputs": []}}, "warmup needs a model"),
    ],
)
def test_a_job_it_cannot_do_is_reported_in_the_result(tmp_path: Path, job: dict, error: str) -> None:
    from tfdeploy_sandbox.runner import main

    result = tmp_path / "result.json"
    (tmp_path / "job.json").write_text(json.dumps({**job, "result": str(result)}))
    tf_before = "tensorflow" in sys.modules

    assert main([str(tmp_path / "job.json")]) == 1
    doc = json.loads(result.read_text())
    assert doc["ok"] is False and error in doc["error"]
    if not tf_before:
        assert "tensorflow" not in sys.modules


def test_golden_rows_per_input() -> None:
    from tfdeploy_sandbox.runner import JobError, rows_for

    assert rows_for([[1.0]], "x") == [[1.0]]
    assert rows_for({"x": [[1]], "y": [[2]]}, "y") == [[2]]
    with pytest.raises(JobError, match="no rows for input 'z'"):
        rows_for({"x": [[1]]}, "z")
