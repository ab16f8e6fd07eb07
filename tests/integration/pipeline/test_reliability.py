"""Faults in the middle of a real release (issue 14): the rollout's task process killed with SIGKILL and the task
retried; the registry's PostgreSQL database refusing connections for 30 s. Either way the run ends with serving and
the registry agreeing and the model's deployment lease released."""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest
import requests

import stack
from tests.integration.pipeline.releases import DEPLOY, Deployer, build_examples, registry_api, wait_for
from tfdeploy.settings import get_settings

SETTINGS = get_settings()
STABLE_REPLICA = f"http://127.0.0.1:{SETTINGS.replica_rest_port}"
BLOCKED_SECONDS = 30


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    return build_examples(
        tmp_path_factory.mktemp("reliability"), {"v1": ("good", 1), "v2": ("good", 2), "v3": ("good", 3)}
    )


@pytest.fixture(scope="module")
def model() -> str:
    return f"rel_{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def api(settings):
    return registry_api(settings.airflow_url, stack.airflow_env(settings)["REGISTRY_API_TOKEN"])


@pytest.fixture(scope="module")
def deploy(airflow, model):
    return Deployer(airflow, model, strategy="all_at_once")


@pytest.fixture(scope="module")
def in_production(deploy, examples, api, model) -> int:
    final, states = deploy.finish(deploy(examples["v1"]))
    assert final["state"] == "success", states
    return int(api("GET", f"/models/{model}")["version"])


def stable_label(model: str) -> int | None:
    resp = requests.get(f"{STABLE_REPLICA}/v1/models/{model}/labels/stable/metadata", timeout=10)
    return int(resp.json()["model_spec"]["version"]) if resp.status_code == 200 else None


def assert_agree_and_unlocked(api, model: str) -> int:
    """Serving's `stable` is the registry's production version and nobody holds the model's lease."""
    record = api("GET", f"/models/{model}")
    assert record["lock"] is None, record["lock"]
    assert stable_label(model) == record["version"], (stable_label(model), record["version"])
    return int(record["version"])


def task(airflow, run_id: str, task_id: str) -> dict:
    return airflow.request("GET", f"/api/v2/dags/{DEPLOY}/dagRuns/{run_id}/taskInstances/{task_id}")


def test_rollout_killed_mid_step_is_retried_and_the_run_ends_consistent(
    airflow, deploy, examples, api, model, in_production
):
    run_id = deploy(examples["v2"])
    running = wait_for(
        lambda: (t := task(airflow, run_id, "rollout"))["state"] == "running" and t.get("pid") and t,
        300,
        "the rollout task to run",
        every=0.1,
    )
    os.kill(int(running["pid"]), signal.SIGKILL)  # the task's own process, mid-step: no cleanup runs

    final, states = deploy.finish(run_id)

    rollout = task(airflow, run_id, "rollout")
    assert rollout["try_number"] == 2, "the kill did not land while the rollout ran"
    assert final["state"] == "success", states
    assert assert_agree_and_unlocked(api, model) == in_production + 1
    kinds = [
        e["reason"].split(" ")[0] for e in api("GET", f"/models/{model}/history", params={"kind": "lock"})["events"]
    ]
    assert kinds[:2] == ["released", "acquired"]  # this run's lease, released by the run itself


def _allow_connections(allow: bool) -> None:
    """Let the registry's database take connections, or refuse new ones and end the open ones (the server itself
    stays up: Airflow may share it)."""
    conn = stack._pg_connect(SETTINGS)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f"ALTER DATABASE {stack.REGISTRY_DB} ALLOW_CONNECTIONS {'true' if allow else 'false'}")
            if not allow:
                cur.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (stack.REGISTRY_DB,),
                )
    finally:
        conn.close()


def test_the_registry_database_refusing_connections_mid_run(airflow, deploy, examples, api, model, in_production):
    assert SETTINGS.registry_db_url.startswith("postgresql"), "this test needs the registry on PostgreSQL"
    before = assert_agree_and_unlocked(api, model)
    run_id = deploy(examples["v3"])
    wait_for(lambda: task(airflow, run_id, "validate")["state"] == "running", 300, "validation to run", every=0.2)
    answers: list[int] = []
    try:
        _allow_connections(False)
        started = time.monotonic()
        while time.monotonic() - started < BLOCKED_SECONDS:
            resp = requests.get(
                f"{SETTINGS.airflow_url}/registry/v1/models/{model}",
                headers={"Authorization": f"Bearer {stack.airflow_env(SETTINGS)['REGISTRY_API_TOKEN']}"},
                timeout=10,
            )
            answers.append(resp.status_code)
            if resp.status_code == 503:
                assert resp.headers["Retry-After"] and "nothing was changed" in resp.json()["message"]
            time.sleep(2)
    finally:
        _allow_connections(True)

    final, states = deploy.finish(run_id)

    assert 503 in answers, answers  # the registry said so while its database was away
    now = assert_agree_and_unlocked(api, model)
    if final["state"] == "success":
        assert now == before + 1
    else:  # failed cleanly: production untouched, the candidate not left half-way
        assert now == before, states
        candidate = api("GET", f"/models/{model}/versions")["versions"][0]
        assert candidate["state"] in ("registered", "rejected", "rolled_back", "validated"), candidate
