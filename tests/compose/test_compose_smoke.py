"""The compose stack's smoke test (`make test-compose`; not part of `make test`, whose pytest collects only
tests/unit and tests/integration): bring the whole docker-compose.yml up on its own project, state and ports, deploy
the example model through its REST API, promote a second version, check both through the router and the registry,
tear it all down (volumes too). About 10 minutes on 2 cores, most of it the first image builds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from compose_stack import ComposeStack

from tfdeploy.airflow_client import AirflowClient

ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "model_deploy"
MODEL = "compose_smoke"
pytestmark = pytest.mark.timeout(3600)


@pytest.fixture(scope="module")
def compose_stack() -> Iterator[ComposeStack]:
    """The stack up and healthy, on ports +2000 (30080, 30501, ...: beside `make compose-up`'s 28080...), removed
    with its volumes afterwards."""
    c = ComposeStack(project="tfdeploy-compose-smoke", state_dir=ROOT / ".state-compose-smoke", port_offset=2000)
    c.down(volumes=True)  # what an interrupted run left
    try:
        c.up()
        yield c
    finally:
        if c.containers():
            logs = c.compose("logs", "--no-color", "--tail", "200", capture=True, check=False).stdout
            (ROOT / "test-artifacts").mkdir(exist_ok=True)
            (ROOT / "test-artifacts" / "compose-smoke.log").write_text(logs)
        c.down(volumes=True)


@pytest.fixture(scope="module")
def client(compose_stack: ComposeStack) -> AirflowClient:
    client = compose_stack.client()
    client.wait_for_dag(DAG_ID, timeout=300)
    client.unpause(DAG_ID)
    return client


def _deploy(client: AirflowClient, example: Path) -> dict:
    conf = {
        "model_name": MODEL,
        "source": str(example / "saved_model"),
        "golden_path": str(example / "golden.json"),
        "strategy": "all_at_once",
    }
    run = client.trigger(DAG_ID, conf=conf)
    final = client.wait_for_run(DAG_ID, run["dag_run_id"], timeout=900)
    states = {
        ti["task_id"]: (ti["state"], ti.get("hostname")) for ti in client.task_instances(DAG_ID, run["dag_run_id"])
    }
    assert final["state"] == "success", states
    return states


def _registry(c: ComposeStack, client: AirflowClient) -> dict:
    resp = requests.get(
        f"{c.airflow_url}/registry/v1/models/{MODEL}", headers={"Authorization": f"Bearer {client.token()}"}, timeout=10
    )
    resp.raise_for_status()
    return resp.json()


def _predict(c: ComposeStack, inputs: list) -> requests.Response:
    return requests.post(f"{c.serving_url}/v1/models/{MODEL}:predict", json={"instances": inputs}, timeout=10)


def test_every_service_is_healthy(compose_stack: ComposeStack) -> None:
    states = compose_stack.health()
    assert states.pop("airflow-init") == "exited(0)"
    assert set(states.values()) == {"healthy"}, states


def test_deploy_then_promote_a_second_version(compose_stack: ComposeStack, client: AirflowClient) -> None:
    c = compose_stack
    first, second = c.build_example("good"), c.build_example("better")
    golden = json.loads(
        c.compose("exec", "-T", "airflow-worker-1", "cat", str(second / "golden.json"), capture=True).stdout
    )

    tasks = _deploy(client, first)
    v1 = _registry(c, client)["version"]
    answer = _predict(c, golden["inputs"][:2])
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["predictions"]) == 2
    workers = {host for _, host in tasks.values() if host}

    tasks = _deploy(client, second)
    record = _registry(c, client)
    assert record["version"] > v1  # promoted: the registry's production version is the second
    deadline = time.monotonic() + 60
    while (answer := _predict(c, golden["inputs"][:2])).status_code != 200 and time.monotonic() < deadline:
        time.sleep(1)
    assert answer.status_code == 200, answer.text
    served = requests.get(f"{c.serving_url}/v1/models/{MODEL}", timeout=10).json()
    assert [v["state"] for v in served["model_version_status"] if int(v["version"]) == record["version"]] == [
        "AVAILABLE"
    ]
    workers |= {host for _, host in tasks.values() if host}
    assert workers <= {"worker1@tfdeploy-compose", "worker2@tfdeploy-compose"}, workers
