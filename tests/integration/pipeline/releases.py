"""What the end-to-end release tests share: example models built in parallel, the registry's API as the tests
call it, model_deploy runs started and awaited over Airflow's REST API, and waiting for a condition."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from example_model.build import build_side_by_side

DEPLOY = "model_deploy"


def build_examples(out: Path, variants: dict[str, tuple[str, int]]) -> dict[str, Path]:
    """``{name: (variant, seed)}`` built side by side (include/example_model/build.py) into ``out/<name>``."""
    return build_side_by_side(out, variants, timeout=300)


def registry_api(airflow_url: str, token: str) -> Callable[..., Any]:
    """``call(method, path, **requests_kwargs)`` on ``/registry/v1``: the decoded answer; raises on errors."""
    session = requests.Session()
    session.trust_env = False
    session.headers["Authorization"] = f"Bearer {token}"
    base = f"{airflow_url}/registry/v1"

    def call(method: str, path: str, **kwargs: Any) -> Any:
        resp = session.request(method, f"{base}{path}", timeout=10, **kwargs)
        resp.raise_for_status()
        return resp.json() if resp.content else None

    return call


class Deployer:
    """Starts model_deploy runs for one model (``start``: the run id) and waits for runs (``finish``)."""

    def __init__(self, airflow: Any, model: str, *, dags: tuple[str, ...] = (DEPLOY,), **defaults: Any) -> None:
        self.airflow, self.model, self.defaults = airflow, model, defaults
        for dag in dags:
            airflow.wait_for_dag(dag)
            airflow.unpause(dag)

    def __call__(self, example: Path, **conf: Any) -> str:
        body = {
            "model_name": self.model,
            "source": str(example / "saved_model"),
            "golden_path": str(example / "golden.json"),
        }
        return self.airflow.trigger(DEPLOY, conf={**body, **self.defaults, **conf})["dag_run_id"]

    def finish(self, run_id: str, dag: str = DEPLOY) -> tuple[dict, dict[str, str]]:
        final = self.airflow.wait_for_run(dag, run_id, timeout=600)
        return final, {ti["task_id"]: ti["state"] for ti in self.airflow.task_instances(dag, run_id)}


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.5) -> Any:
    """``predicate()``'s first truthy value, polled every ``every`` seconds; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
