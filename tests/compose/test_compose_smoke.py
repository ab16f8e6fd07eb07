"""The compose stack's smoke test (`make test-compose`, and the last step of `make test`; TEST_COMPOSE=0 skips it
there): bring the whole docker-compose.yml up on its own project, state, ports and
network, deploy the example model through its REST API, promote a second version, check both through the router and
the registry, check that the stable replicas spread over both serving hosts (replica 1 on docker-host, replica 2 on
docker-host-2, published at that host's address on the compose network) and that the router balances over both,
check the trust boundary (the services that only read the engines get one read-only Docker API per engine that
refuses writes, yet Prometheus discovers the replicas of both hosts and the registry reads their logs through them),
tear it all down (volumes too). The stack and the release are module fixtures: each test runs alone and in any
order. About 4 minutes on warm images, 10 when the images are first built.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from compose_stack import ComposeStack, read_env

from tfdeploy.airflow_client import AirflowClient

ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "model_deploy"
MODEL = "compose_smoke"
ENGINE_SOCKET = "/run/docker-host/docker.sock"
RO_SOCKET = "/run/docker-ro/docker.sock"  # docker-socket-proxy's
ENGINE_2_SOCKET = "/run/docker-host-2/docker.sock"  # docker-host-2's, as the workers mount it
RO_2_SOCKET = "/run/docker-ro-2/docker.sock"  # docker-socket-proxy-2's, as its readers mount it
# the stable pool's replicas (docker-compose.yml's tfserving_local: two, REST port 8511 + 2i) by router server name:
# (container, serving host, REST port); replica i on host i % 2 (core/placement.py)
STABLE = {
    "replica1": ("tfserving-local", "docker-host", 8511),
    "replica2": ("tfserving-local-1", "docker-host-2", 8513),
}
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


def _docker_api(c: ComposeStack, service: str, method: str, path: str, socket: str = RO_SOCKET) -> str:
    """The HTTP status of ``method path`` on a read-only Docker API (``socket``), from inside ``service``'s
    container."""
    done = c.compose(
        "exec", "-T", service, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", method,
        "--unix-socket", socket, f"http://docker{path}", capture=True, check=False,
    )  # fmt: skip
    return done.stdout.strip()


def _router_servers(c: ComposeStack) -> dict[tuple[str, str], str]:
    """(backend, server) -> status (UP, DOWN, MAINT...) from the router's stats page (CSV)."""
    resp = requests.get(f"http://127.0.0.1:{c.port('TFDEPLOY_COMPOSE_ROUTER_STATS_PORT')}/stats;csv", timeout=10)
    resp.raise_for_status()
    rows = csv.DictReader(io.StringIO(resp.text.lstrip("# ")))
    return {
        (row["pxname"], row["svname"]): row["status"] for row in rows if row["svname"] not in ("FRONTEND", "BACKEND")
    }


def test_every_service_is_healthy(compose_stack: ComposeStack) -> None:
    states = compose_stack.health()
    assert states.pop("airflow-init") == "exited(0)"
    assert set(states.values()) == {"healthy"}, states


@pytest.fixture(scope="module")
def released(compose_stack: ComposeStack, client: AirflowClient) -> dict:
    """The example model deployed through the REST API, then a second version promoted (each run asserted to
    succeed); what the tests check: the registry's version after each, the answers through the router after each,
    the served versions after the second, the workers that ran the tasks. Every test that needs replicas asks for
    it, so each runs alone and in any order."""
    c = compose_stack
    first, second = c.build_example("good"), c.build_example("better")
    golden = json.loads(
        c.compose("exec", "-T", "airflow-worker-1", "cat", str(second / "golden.json"), capture=True).stdout
    )
    tasks = _deploy(client, first)
    v1 = _registry(c, client)["version"]
    first_answer = _predict(c, golden["inputs"][:2])
    workers = {host for _, host in tasks.values() if host}
    tasks = _deploy(client, second)
    record = _registry(c, client)
    deadline = time.monotonic() + 60
    while (answer := _predict(c, golden["inputs"][:2])).status_code != 200 and time.monotonic() < deadline:
        time.sleep(1)
    served = requests.get(f"{c.serving_url}/v1/models/{MODEL}", timeout=10).json()
    workers |= {host for _, host in tasks.values() if host}
    return {
        "v1": v1,
        "first_answer": first_answer,
        "record": record,
        "answer": answer,
        "served": served,
        "workers": workers,
    }


def test_deploy_then_promote_a_second_version(released: dict) -> None:
    first_answer, answer, record = released["first_answer"], released["answer"], released["record"]
    assert first_answer.status_code == 200, first_answer.text
    assert len(first_answer.json()["predictions"]) == 2
    assert record["version"] > released["v1"]  # promoted: the registry's production version is the second
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["predictions"]) == 2
    statuses = released["served"]["model_version_status"]
    assert [v["state"] for v in statuses if int(v["version"]) == record["version"]] == ["AVAILABLE"]
    workers = released["workers"]
    assert workers and workers <= {"worker1@tfdeploy-compose", "worker2@tfdeploy-compose"}, workers


def test_the_stable_replicas_spread_over_both_serving_hosts(compose_stack: ComposeStack, released: dict) -> None:
    """With the model released: replica 1 runs on docker-host, its REST
    port on that engine's loopback; replica 2 on docker-host-2, its port on that host's compose address; the
    router's servers of both are UP and it answers from both."""
    c = compose_stack
    address = c.serving_host_2_address
    for server, (container, host, rest_port) in STABLE.items():
        names = c.compose("exec", "-T", host, "docker", "ps", "--format", "{{.Names}}", capture=True).stdout.split()
        assert container in names, (server, host, names)
        others = [other for other, other_host, _ in STABLE.values() if other_host != host]
        assert not set(others) & set(names), (host, names)  # each replica on its own host only
        published = c.compose("exec", "-T", host, "docker", "port", container, "8501/tcp", capture=True).stdout.split()
        expected = f"{'127.0.0.1' if host == 'docker-host' else address}:{rest_port}"
        assert published == [expected], (server, published)

    deadline = time.monotonic() + 60
    while True:
        servers = _router_servers(c)
        stable = {key: status for key, status in servers.items() if key[0] in ("local_rest", "local_grpc")}
        if set(stable.values()) == {"UP"} or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert stable == {(backend, s): "UP" for backend in ("local_rest", "local_grpc") for s in STABLE}, servers

    answered = set()
    for _ in range(20):  # the router balances over the pool: both replicas answer within a few calls
        resp = requests.get(f"{c.serving_url}/v1/models/{MODEL}", timeout=10)
        assert resp.status_code == 200, resp.text
        answered.add(resp.headers.get("X-Served-By-Replica"))
        if answered == set(STABLE):
            break
    assert answered == set(STABLE), answered


def test_the_readers_get_a_read_only_docker_api(compose_stack: ComposeStack, released: dict) -> None:
    """Prometheus and the api-server hold the read-only proxies' sockets (one per engine), not the engines': their
    reads pass, any write (create, exec, delete...) is refused 403 before the engine; the workers keep both engines'
    sockets."""
    c = compose_stack
    for service in ("airflow-apiserver", "prometheus"):
        for engine_socket in (ENGINE_SOCKET, ENGINE_2_SOCKET):
            done = c.compose("exec", "-T", service, "test", "-e", engine_socket, check=False)
            assert done.returncode != 0, (service, engine_socket)
        for socket in (RO_SOCKET, RO_2_SOCKET):
            mode = c.compose("exec", "-T", service, "stat", "-c", "%a %u %g", socket, capture=True).stdout.split()
            assert mode == ["660", "50000", "50000"], (service, socket, mode)
            for method, path in (("GET", "/_ping"), ("GET", "/v1.41/containers/json"), ("GET", "/networks")):
                assert _docker_api(c, service, method, path, socket) == "200", (service, socket, method, path)
            for method, path in (
                ("POST", "/containers/create"),
                ("POST", "/v1.41/containers/create"),
                ("POST", "/v1.41/containers/docker-socket-proxy-check/exec"),
                ("DELETE", "/v1.41/containers/docker-socket-proxy-check"),
                ("GET", "/v1.41/images/json"),
                ("POST", "/v1.41/volumes/create"),
            ):
                assert _docker_api(c, service, method, path, socket) == "403", (service, socket, method, path)
            # nor can they replace the proxy's socket
            touch = c.compose("exec", "-T", service, "touch", f"{socket.rsplit('/', 1)[0]}/x", check=False)
            assert touch.returncode != 0, (service, socket)
    # each proxy in front of its own engine: the second's container list is docker-host-2's (replica 2 only)
    listed = c.compose(
        "exec", "-T", "prometheus", "curl", "-sf", "--unix-socket", RO_2_SOCKET, "http://docker/containers/json",
        capture=True,
    ).stdout  # fmt: skip
    names = {name.lstrip("/") for container in json.loads(listed) for name in container["Names"]}
    assert STABLE["replica2"][0] in names and STABLE["replica1"][0] not in names, names
    worker = c.compose("exec", "-T", "airflow-worker-1", "printenv", "DOCKER_HOST", capture=True).stdout.strip()
    assert worker == f"unix://{ENGINE_SOCKET}"
    for engine_socket in (ENGINE_SOCKET, ENGINE_2_SOCKET):
        assert c.compose("exec", "-T", "airflow-worker-1", "test", "-S", engine_socket, check=False).returncode == 0


def test_prometheus_and_the_registry_read_the_replicas_through_the_proxy(
    compose_stack: ComposeStack, released: dict
) -> None:
    """With the model released: the registry's /logs (the api-server
    reads the replicas' output through the proxies) and Prometheus' Docker service discovery (one entry per
    engine) both see the stable replicas, on both hosts."""
    c = compose_stack
    token = read_env(c.env_file)["REGISTRY_API_TOKEN"]  # the service token: /logs needs write access
    resp = requests.get(
        f"{c.airflow_url}/registry/v1/models/{MODEL}/logs",
        params={"lines": 20},
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    logs = resp.json()
    assert logs["available"] is True, logs
    stable = {name for name in logs["containers"] if "canary" not in name}
    assert stable == {container for container, _, _ in STABLE.values()}, logs
    for name in stable:
        lines = logs["containers"][name]
        assert lines and not lines[0].startswith("("), (name, lines)  # "(logs unavailable: ...)", "(no container"

    prometheus = f"http://127.0.0.1:{c.port('TFDEPLOY_COMPOSE_PROMETHEUS_PORT')}"
    deadline = time.monotonic() + 60
    while True:
        targets = requests.get(f"{prometheus}/api/v1/targets", params={"state": "active"}, timeout=10).json()
        up = {
            t["labels"].get("container")
            for t in targets["data"]["activeTargets"]
            if t["labels"].get("job") == "serving" and t["labels"].get("pool") == "stable" and t["health"] == "up"
        }
        if up == stable or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert up == stable, targets["data"]["activeTargets"]
