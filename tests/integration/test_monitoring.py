"""Prometheus and Alertmanager of the test stack (`stack.py up prometheus alertmanager`, started by `make up`).

Both answer on 127.0.0.1; Prometheus scrapes itself, Alertmanager, the router and the registry, and finds serving
replicas through the Docker engine: a container started here (with a model directory under the test stack's state
dir, as the pipeline's are) becomes a target within seconds, and its target goes when the container goes. The
shipped rules load and evaluate. Alerts firing through to the registry are tested where the registry's endpoint is.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import docker.errors
import pytest
import requests

import stack
from tfdeploy.core.models_config import ServedModel, build_model_config
from tfdeploy.hooks.serving_host import ServingHostHook

ROOT = Path(__file__).resolve().parents[2]
HP_V1 = ROOT / "tests" / "data" / "tfserving-testdata" / "saved_model_half_plus_two_2_versions" / "00000123"
IMAGE = os.environ.get("SERVING_IMAGE_TAG", "local/tfserving-compat:latest")
MODEL = "hp"
DISCOVERY_S = 15.0  # docker_sd refresh 5 s + scrape interval 5 s, with slack


@pytest.fixture(scope="module")
def http() -> Any:
    session = requests.Session()
    session.trust_env = False  # loopback only, never a proxy
    yield session
    session.close()


@pytest.fixture(scope="module")
def prometheus(settings, http) -> str:
    url = settings.prometheus_url
    try:
        ready = http.get(f"{url}/-/ready", timeout=5).status_code == 200
    except requests.ConnectionError:
        ready = False
    assert ready, f"Prometheus does not answer at {url}: run `make up` (TFDEPLOY_STACK=test stack.py up prometheus)"
    return url


@pytest.fixture(scope="module")
def alertmanager(settings, http) -> str:
    url = settings.alertmanager_url
    try:
        ready = http.get(f"{url}/-/ready", timeout=5).status_code == 200
    except requests.ConnectionError:
        ready = False
    assert ready, f"Alertmanager does not answer at {url}: run `make up`"
    return url


def _api(http, url: str) -> Any:
    resp = http.get(url, timeout=10)
    resp.raise_for_status()
    body = resp.json()
    return body["data"] if isinstance(body, dict) and "data" in body else body


def _targets(http, prometheus: str) -> list[dict]:
    return _api(http, f"{prometheus}/api/v1/targets?state=active")["activeTargets"]


def _eventually(check, timeout: float, what: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout:g}s")
        time.sleep(interval)


def test_both_listen_on_loopback_with_the_stacks_data_dirs(settings, prometheus, alertmanager, http):
    flags = _api(http, f"{prometheus}/api/v1/status/flags")
    assert flags["web.listen-address"] == f"127.0.0.1:{settings.prometheus_port}"
    assert flags["storage.tsdb.path"] == str(settings.state_dir / "prometheus" / "data")
    status = _api(http, f"{alertmanager}/api/v2/status")
    assert status["cluster"]["status"] == "disabled"  # --cluster.listen-address= : no gossip port
    original = status["config"]["original"]
    assert f"url: {settings.airflow_url}/registry/v1/alerts" in original
    assert str(settings.state_dir / "secrets" / "registry_api_token") in original
    token = stack.airflow_env(settings)["REGISTRY_API_TOKEN"]
    assert token not in original
    for port in (settings.prometheus_port, settings.alertmanager_port):
        with socket.socket() as sock:  # nothing but loopback: another address of this machine is refused
            sock.settimeout(1)
            host = socket.gethostbyname(socket.gethostname())
            if host.startswith("127."):
                continue
            assert sock.connect_ex((host, port)) != 0, f"{host}:{port} answers"


def test_prometheus_sends_alerts_to_the_stacks_alertmanager(settings, prometheus, http):
    ams = _eventually(
        lambda: _api(http, f"{prometheus}/api/v1/alertmanagers")["activeAlertmanagers"], 15, "no Alertmanager"
    )
    assert [a["url"] for a in ams] == [f"http://127.0.0.1:{settings.alertmanager_port}/api/v2/alerts"]


def test_static_targets_are_listed_and_up(settings, prometheus, http):
    def listed() -> dict[str, dict] | None:
        jobs = {t["labels"]["job"]: t for t in _targets(http, prometheus) if t["labels"]["job"] != "serving"}
        return jobs if set(jobs) == {"prometheus", "alertmanager", "router", "registry"} else None

    jobs = _eventually(listed, 15, "the static targets were not all listed")
    assert jobs["router"]["scrapeUrl"] == f"http://127.0.0.1:{settings.router_stats_port}/metrics"
    assert jobs["registry"]["scrapeUrl"] == f"http://127.0.0.1:{settings.airflow_port}/registry/metrics"
    assert jobs["prometheus"]["scrapeUrl"] == f"http://127.0.0.1:{settings.prometheus_port}/metrics"
    assert jobs["alertmanager"]["scrapeUrl"] == f"http://127.0.0.1:{settings.alertmanager_port}/metrics"

    def up(job: str) -> bool:
        return any(t["labels"]["job"] == job and t["health"] == "up" for t in _targets(http, prometheus))

    for job in ("prometheus", "alertmanager", "router"):
        _eventually(lambda job=job: up(job), 15, f"the {job} target was not up")


def test_registry_target_is_up(settings, prometheus, http):
    """The registry's /registry/metrics (public, served by the Airflow api-server) is scraped."""
    registry = [t for t in _targets(http, prometheus) if t["labels"]["job"] == "registry"]
    assert registry, "no registry target"
    _eventually(
        lambda: all(t["health"] == "up" for t in _targets(http, prometheus) if t["labels"]["job"] == "registry"),
        15,
        f"the registry target was not up (last error: {registry[0]['lastError']!r})",
    )


def test_shipped_rule_groups_load_and_evaluate(prometheus, http):
    def evaluated() -> list[dict] | None:
        groups = _api(http, f"{prometheus}/api/v1/rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        done = rules and all(not r["lastEvaluation"].startswith("0001-") for r in rules)
        return groups if done else None

    groups = _eventually(evaluated, 20, "the rules were not all evaluated")
    assert {g["name"] for g in groups} == {"tfdeploy-serving", "tfdeploy-router", "tfdeploy-registry"}
    assert all(g["interval"] == 5 for g in groups)
    rules = [r for g in groups for r in g["rules"]]
    assert {r["name"] for r in rules} == {
        "ServingReplicaDown",
        "ModelErrorRateHigh",
        "ModelP99High",
        "ModelUnavailable",
        "RouterBackendDown",
        "ReleaseStuck",
    }
    bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad, bad


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def replica(settings, docker_client):
    """A serving container as the pipeline starts them (ServingHostHook, labels, published REST port), with its
    model directory under the test stack's state dir. Removed at the end, whatever happens."""
    docker_client.images.get(IMAGE)  # built by `make setup`
    root = settings.state_dir / "monitoring-test" / uuid.uuid4().hex[:8]
    name = f"tfdeploy-test-monitoring-{root.name}"
    host = ServingHostHook(model_root=str(root), base_url=settings.docker_host)
    try:
        host.stage_version(HP_V1, MODEL, 1)
        host.write_config(build_model_config([ServedModel(MODEL, host.container_base_path(MODEL), (1,), {})]))
        rest_port = free_port()
        host.ensure_server(name=name, image=IMAGE, grpc_port=free_port(), rest_port=rest_port)
        yield {"name": name, "rest_port": rest_port, "host": host}
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.containers.get(name).remove(force=True)
        host.close()
        shutil.rmtree(root, ignore_errors=True)
        with contextlib.suppress(OSError):
            root.parent.rmdir()  # when no other test's is left


def test_a_serving_replica_is_scraped_while_it_exists(settings, prometheus, http, replica, docker_client):
    name, rest_port = replica["name"], replica["rest_port"]

    def target() -> dict | None:
        found = [t for t in _targets(http, prometheus) if t["labels"].get("container") == name]
        return found[0] if found and found[0]["health"] == "up" else None

    t0 = time.monotonic()
    found = _eventually(target, DISCOVERY_S, f"{name} was not discovered and scraped")
    print(f"{name} discovered and scraped in {time.monotonic() - t0:.1f}s")
    assert found["labels"]["job"] == "serving"
    assert (found["labels"]["pool"], found["labels"]["replica"]) == ("stable", "0")
    assert found["scrapeUrl"] == f"http://127.0.0.1:{rest_port}/monitoring/prometheus/metrics"

    # its TF Serving metrics are in Prometheus, labelled with the replica
    resp = http.post(f"http://127.0.0.1:{rest_port}/v1/models/{MODEL}:predict", json={"instances": [1.0]}, timeout=30)
    assert resp.status_code == 200, resp.text
    query = f':tensorflow:serving:request_count{{container="{name}", model_name="{MODEL}", status="OK"}}'

    def counted() -> bool:
        result = _api(http, f"{prometheus}/api/v1/query?query={requests.utils.quote(query)}")["result"]
        return bool(result) and float(result[0]["value"][1]) >= 1

    _eventually(counted, 15, f"{query} was not scraped")

    docker_client.containers.get(name).remove(force=True)
    t0 = time.monotonic()
    _eventually(
        lambda: not any(t["labels"].get("container") == name for t in _targets(http, prometheus)),
        DISCOVERY_S,
        f"{name}'s target stayed after its container was removed",
    )
    print(f"{name}'s target gone {time.monotonic() - t0:.1f}s after the container")


def test_status_shows_both_with_their_memory(settings, capsys, prometheus, alertmanager):
    assert stack.main(["status", "prometheus", "alertmanager"]) == 0
    out = capsys.readouterr().out
    for name in ("prometheus", "alertmanager"):
        line = next(x for x in out.splitlines() if x.startswith(f"[stack] {name}:"))
        assert f"{name}={stack.running_pid(settings, name)} (" in line and " MiB)" in line, line
    assert f"http://127.0.0.1:{settings.prometheus_port} targets up:" in out
