"""The router (HAProxy) as the stack runs it: clients' REST and gRPC reach the `local` target's replica through
it, a replica that stops answering is taken out of rotation by the health check (fast 503s, no hangs), and it
comes back once it answers again. The replica here is the stand-in image serving TF Serving's test model,
started on the target's replica ports; the test removes it (the pipeline's own tests recreate theirs)."""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path

import pytest
import requests

import stack

ROOT = Path(__file__).resolve().parents[2]
HP = ROOT / "tests" / "data" / "tfserving-testdata" / "saved_model_half_plus_two_cpu"


def replica_states(settings) -> dict[str, str]:
    rows = [r.split(",") for r in stack.router_command(settings, "show stat").splitlines() if r and r[0] != "#"]
    return {f"{r[0]}/{r[1]}": r[17] for r in rows if r[1] not in ("FRONTEND", "BACKEND")}


def wait_for(what: str, check, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture
def replica(settings, docker_client, tmp_path):
    """A serving container on the `local` target's replica ports, in place of the pipeline's."""
    name = f"{settings.serving_container_prefix}-local"
    with contextlib.suppress(Exception):
        docker_client.containers.get(name).remove(force=True)
    models = tmp_path / "models"
    shutil.copytree(HP, models / "half_plus_two")
    models.chmod(0o755)
    container = docker_client.containers.run(
        "local/tfserving-compat:latest",
        detach=True,
        name=name,
        environment={"MODEL_NAME": "half_plus_two"},
        volumes={str(models): {"bind": "/models", "mode": "ro"}},
        ports={
            "8500/tcp": ("127.0.0.1", settings.replica_grpc_port),
            "8501/tcp": ("127.0.0.1", settings.replica_rest_port),
        },
        labels={"tfdeploy.serving.model-root": str(settings.state_dir / "serving" / "router-test")},
    )
    try:
        wait_for("the replica to be UP in the router", lambda: set(replica_states(settings).values()) == {"UP"}, 60)
        yield container
    finally:
        container.remove(force=True)


def test_clients_reach_the_replica_through_the_router(settings, replica):
    url = f"http://127.0.0.1:{settings.serving_rest_port}/v1/models/half_plus_two:predict"
    resp = requests.post(url, json={"instances": [1.0, 2.0]}, timeout=10)
    assert resp.status_code == 200, (resp.status_code, resp.headers, resp.text[:300])
    assert resp.json() == {"predictions": [2.5, 3.0]}

    from tfdeploy.hooks.tfserving import TFServingHook

    # gRPC (h2) through the router: the model's status over ModelService
    through_router = TFServingHook(
        None, grpc_target=f"127.0.0.1:{settings.serving_grpc_port}", rest_url="http://unused", timeout=10
    )
    assert through_router.model_status("half_plus_two") == {123: ("AVAILABLE", "")}
    through_router.close()
    metrics = requests.get(f"http://127.0.0.1:{settings.router_stats_port}/metrics", timeout=10).text
    assert 'haproxy_backend_http_responses_total{proxy="local_rest",code="2xx"}' in metrics


def test_a_dead_replica_is_taken_out_and_comes_back(settings, replica):
    url = f"http://127.0.0.1:{settings.serving_rest_port}/v1/models/half_plus_two"
    replica.pause()  # alive but not answering: only the health check can tell
    try:
        wait_for("the health check to mark it DOWN", lambda: set(replica_states(settings).values()) == {"DOWN"})
        t0 = time.monotonic()
        resp = requests.get(url, timeout=10)
        assert resp.status_code == 503 and time.monotonic() - t0 < 1.0  # refused at once, not a hung request
    finally:
        replica.unpause()
    wait_for("the replica to be back", lambda: set(replica_states(settings).values()) == {"UP"})
    assert requests.get(url, timeout=10).status_code == 200


def test_router_port_in_use_is_a_clear_error(settings, monkeypatch):
    # the stack refuses to start a second router on the same ports, naming the port
    monkeypatch.setattr(stack, "running_pid", lambda s, name: None)
    monkeypatch.setattr(stack, "stop_service", lambda s, name: None)
    with pytest.raises(stack.StackError, match=f"127.0.0.1:{settings.serving_rest_port}"):
        stack.up_router(settings)


def test_grpc_without_a_replica_fails_fast(settings, docker_client):
    name = f"{settings.serving_container_prefix}-local"
    with contextlib.suppress(Exception):
        docker_client.containers.get(name).remove(force=True)
    wait_for("no replica UP", lambda: "UP" not in set(replica_states(settings).values()))
    from tfdeploy.hooks.tfserving import TFServingHook

    hook = TFServingHook(None, grpc_target=f"127.0.0.1:{settings.serving_grpc_port}", rest_url="http://x", timeout=20)
    t0 = time.monotonic()
    with pytest.raises(Exception, match="UNAVAILABLE"):
        hook.model_status("half_plus_two")
    # the router answers 503 at once (grpc-python retries that transparently for ~3 s), long before the timeout
    assert time.monotonic() - t0 < 10
    hook.close()
