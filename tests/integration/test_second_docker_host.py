"""The second Docker host (stack.py ``docker2``) and a serving pool that spans both hosts, against the real stack.

The second engine answers only on its network namespace's address, only with this stack's client certificate, and
has the serving image (loaded from the first engine; the sandbox image is not needed there). A rollout to a pool of
two replicas, replica 0 on the first engine and replica 1 on the second (SERVING_HOSTS=2's placement), stages the
version through helper containers into each host's volume and serves it from both: predicts through a router whose
server lines point at both hosts are answered by both replicas; the files in the second host's volume match the
manifest the registry would record.

The pool is this test's own (its containers, volume, Connections and router on free ports), so it runs beside the
stack's `local` target, whatever SERVING_HOSTS the stack runs with.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import socket
import subprocess
import tarfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

import stack
from tfdeploy.core.manifest import MANIFEST_NAME, manifest_sha256, parse_manifest
from tfdeploy.core.models_config import ServedModel
from tfdeploy.hooks.model_store import ModelStoreHook
from tfdeploy.hooks.router import RouterHook
from tfdeploy.services.serving_target import ServingTargetService
from tfdeploy.services.targets import ServingTarget
from tfdeploy.settings import Settings, get_settings

ROOT = Path(__file__).resolve().parents[2]
HALF_PLUS_TWO = ROOT / "tests" / "data" / "tfserving-testdata" / "saved_model_half_plus_two_cpu" / "00000123"


@pytest.fixture(scope="module")
def s() -> Settings:
    return get_settings()


@pytest.fixture(scope="module")
def engine2(s):
    client = stack.docker2_client(s, timeout=30)
    try:
        assert client.ping(), f"no second Docker engine at {s.docker2_host}: run `make up` (as root)"
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"the second Docker engine does not answer at {s.docker2_host} ({exc}): run `make up` as root")
    yield client
    client.close()


@pytest.fixture(scope="module")
def engine1(s):
    import docker

    client = docker.DockerClient(base_url=s.docker_host, timeout=30)
    yield client
    client.close()


def refused(address: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex((address, port)) != 0


def test_the_second_engine_answers_only_on_its_namespace_address_and_only_with_the_client_certificate(s, engine2):
    info = engine2.info()
    assert info["DockerRootDir"] == str(s.state_dir / "docker2" / "data")  # its own image store
    # nothing of it on this machine's addresses: not loopback, not this machine's end of the veth pair
    assert refused("127.0.0.1", s.docker2_port) and refused(s.docker2_gateway, s.docker2_port)
    ca = s.docker2_tls_dir / "ca.pem"
    with requests.Session() as plain:
        plain.trust_env = False
        # TLS without a client certificate: refused in the handshake (or on the first read, with TLS 1.3)
        with pytest.raises((requests.exceptions.SSLError, requests.ConnectionError)):
            plain.get(f"https://{s.docker2_address}:{s.docker2_port}/_ping", verify=str(ca), timeout=5)
        # plain HTTP: not the API
        answer = plain.get(f"http://{s.docker2_address}:{s.docker2_port}/_ping", timeout=5)
        assert answer.status_code == 400 and answer.text != "OK"
    routes = subprocess.run(["ip", "-n", s.docker2_netns, "route", "show"], capture_output=True, text=True, check=True)
    assert "default" not in routes.stdout  # no way out of the namespace: only the veth pair's /30
    assert routes.stdout.strip().startswith(s.docker2_subnet)


def test_the_second_engine_has_the_serving_image_and_not_the_sandbox(s, engine1, engine2):
    assert engine2.images.get(s.serving_image).id == engine1.images.get(s.serving_image).id
    tags = {tag for image in engine2.images.list() for tag in image.tags}
    assert s.sandbox_image not in tags


def free_block(count: int) -> int:
    """The first of ``count`` consecutive ports free on 127.0.0.1."""
    for base in range(31000, 39000, 20):
        ports = range(base, base + count)
        if all(refused("127.0.0.1", p) for p in ports):
            return base
    raise RuntimeError("no free block of ports")


@pytest.fixture
def two_host_pool(s, hdfs_ready, engine2, tmp_path_factory, monkeypatch) -> Iterator[ServingTargetService]:
    """A stable pool of two replicas, replica 0 on the first engine and replica 1 on the second, behind a router of
    its own (stack.router_config with SERVING_HOSTS=2, on free ports); everything removed after."""
    base = free_block(10)
    s2 = dataclasses.replace(
        s,
        state_dir=tmp_path_factory.mktemp("r"),
        serving_hosts=2,
        stable_replicas=2,
        serving_rest_port=base,
        serving_grpc_port=base + 1,
        canary_grpc_port=base + 2,
        router_stats_port=base + 3,
        replica_grpc_port=base + 4,
        replica_rest_port=base + 5,
        canary_replica_grpc_port=base + 8,
        canary_replica_rest_port=base + 9,
    )
    for key, value in stack.serving_host_connections(s).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv(
        "AIRFLOW_CONN_TFSERVING_TWOHOSTS",
        json.dumps(
            {
                "conn_type": "tfserving",
                "host": "127.0.0.1",
                "port": s2.replica_rest_port,
                "extra": {
                    "grpc_port": s2.replica_grpc_port,
                    "replicas": 2,
                    "replica_hosts": stack.serving_host_addresses(s2),
                },
            }
        ),
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_ROUTER_TWOHOSTS",
        json.dumps(
            {
                "conn_type": "tfdeploy_router",
                "extra": {
                    "socket": str(s2.run_dir / "haproxy.sock"),
                    **{f"{name}_map": str(stack.router_map(s2, name)) for name in stack.ROUTER_MAPS},
                },
            }
        ),
    )
    stack.up_router(s2)
    target = ServingTarget(
        name="local",  # the router's backends are the `local` target's (local_rest, local_grpc)
        image=s.serving_image,
        container_name=f"{s.serving_container_prefix}-twohosts",
        model_root=s.state_dir / "serving" / "twohosts",  # under the state dir: `stack.py down` removes them too
        tfserving_conn_id="tfserving_twohosts",
        serving_host_conn_id="serving_host_local",
        router_conn_id="router_twohosts",
        serving_host_conn_ids=("serving_host_local", "serving_host_local_2"),
        volume=f"tfdeploy-models-{s.stack}-twohosts",
    )
    service = ServingTargetService(target, router=RouterHook("router_twohosts"), drain_timeout_s=60)
    service.rest_url = f"http://127.0.0.1:{s2.serving_rest_port}"  # type: ignore[attr-defined]
    try:
        yield service
    finally:
        for index, host in enumerate(service.hosts):
            host.stop_server(target.container(index), timeout=5)
            with contextlib.suppress(Exception):  # best effort: the volume may not exist
                host.docker_client.volumes.get(target.volume).remove(force=True)
            host.close()
        stack.stop_service(s2, "router")


def volume_tree(engine, image: str, volume: str, path: str) -> dict[str, bytes]:
    """The files under ``path`` of ``volume`` on ``engine`` (relative name -> bytes), through a created container."""
    container = engine.containers.create(image, ["true"], volumes={volume: {"bind": "/models", "mode": "ro"}})
    try:
        chunks, _stat = container.get_archive(path)
        files = {}
        with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
            for member in tar.getmembers():
                if member.isfile():
                    data = tar.extractfile(member)
                    assert data is not None
                    files[member.name.split("/", 1)[1]] = data.read()
        return files
    finally:
        container.remove(force=True)


def test_a_rollout_to_a_pool_on_both_hosts_serves_from_both(s, engine1, engine2, two_host_pool):
    service = two_host_pool
    store = ModelStoreHook("webhdfs_default")
    model = f"twohosts_{uuid.uuid4().hex[:8]}"
    published = store.publish(HALF_PLUS_TWO, model, 1)
    try:
        base = service.stage(store, model, 1, manifest_sha256=published.manifest_sha256)
        change = service.change(model, lambda _e: ServedModel(model, base, (1,), {}))
        assert change.container_created
        first, second = service.target.container(0), service.target.container(1)
        assert engine1.containers.get(first).status == "running"
        remote = engine2.containers.get(second)
        assert remote.status == "running"
        bindings = {b["HostIp"] for ports in remote.attrs["HostConfig"]["PortBindings"].values() for b in ports}
        assert bindings == {s.docker2_address}  # published on the namespace address only
        mounts = {m["Destination"]: m for m in remote.attrs["Mounts"]}
        assert mounts["/models"]["Type"] == "volume" and mounts["/models"]["Name"] == service.target.volume
        assert not mounts["/models"]["RW"]

        served: Counter[str] = Counter()
        with requests.Session() as client:
            client.trust_env = False
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len(served) < 2:
                resp = client.post(
                    f"{service.rest_url}/v1/models/{model}:predict", json={"instances": [1.0, 2.0, 5.0]}, timeout=10
                )
                assert resp.status_code == 200, resp.text
                assert resp.json() == {"predictions": [2.5, 3.0, 4.5]}
                assert resp.headers["X-Served-By"] == "stable"
                served[resp.headers["X-Served-By-Replica"]] += 1
        assert set(served) == {"replica1", "replica2"}, served

        # the version on the second host's volume is the manifest's, file for file; nothing else beside it
        tree = volume_tree(engine2, s.serving_image, service.target.volume, f"/models/{model}")
        staged = {name.split("/", 1)[1]: data for name, data in tree.items()}
        assert {name.split("/", 1)[0] for name in tree} == {"1"}  # no temp dir, no checksum list left
        manifest_bytes = staged.pop(MANIFEST_NAME)
        assert manifest_sha256(manifest_bytes) == published.manifest_sha256
        manifest = parse_manifest(manifest_bytes, where="the second host's volume")
        assert set(staged) == set(manifest["files"])
        for name, data in staged.items():
            assert hashlib.sha256(data).hexdigest() == manifest["files"][name]["sha256"], name
        assert service.hosts[1].read_config() == service.hosts[0].read_config() == [ServedModel(model, base, (1,), {})]
    finally:
        store.remove_quietly(store.model_dir(model))
