"""Run the TF-Serving-compatible server for conformance tests: as a process, and as a container from the image.

Both kinds get the same flags and the same model directories (copies of TF Serving's own test SavedModels),
so one test body checks both. Clients are the ones users use: `requests` and tensorflow-serving-api stubs.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[3]
TESTDATA = ROOT / "tests" / "data" / "tfserving-testdata"
IMAGE = os.environ.get("SERVING_IMAGE_TAG", "local/tfserving-compat:latest")
HP2_2V = TESTDATA / "saved_model_half_plus_two_2_versions"
HP2_CPU = TESTDATA / "saved_model_half_plus_two_cpu"
HP2_TF2 = TESTDATA / "saved_model_half_plus_two_tf2_cpu"
COUNTER = TESTDATA / "saved_model_counter"
BAD = TESTDATA / "bad_half_plus_two"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def copy_model(src: Path, dst: Path, versions: list[str] | None = None) -> Path:
    """Copy a test model (optionally only some version directories) to dst; returns dst."""
    dst.mkdir(parents=True, exist_ok=True)
    for child in sorted(src.iterdir()):
        if versions is None or child.name in versions:
            shutil.copytree(child, dst / child.name)
    return dst


def seen_root(kind: str, root: Path) -> str:
    """The models directory as a server of this kind sees it (the container mounts it at /models)."""
    return "/models" if kind == "container" else str(root)


@dataclass
class Server:
    kind: str
    root: Path  # host directory mounted as /models in the container
    rest_port: int
    grpc_port: int
    proc: subprocess.Popen | None = None
    container: object | None = None
    log_path: Path | None = None
    extra: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def path(self, host_path: Path) -> str:
        """How the server sees a host path under root."""
        rel = host_path.relative_to(self.root)
        return str(Path("/models") / rel) if self.kind == "container" else str(host_path)

    def logs(self) -> str:
        if self.container is not None:
            return self.container.logs().decode(errors="replace")  # type: ignore[attr-defined]
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        self.container.reload()  # type: ignore[attr-defined]
        return self.container.status == "running"  # type: ignore[attr-defined]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.container is not None:
            self.container.remove(force=True)  # type: ignore[attr-defined]


def start_server(
    kind: str, root: Path, args: list[str], tmp: Path, docker_client=None, wait: bool = True, env: dict | None = None
) -> Server:
    """Start a server whose /models is `root`; args may use {root} for the models directory as the server sees it."""
    rest_port, grpc_port = free_port(), free_port()
    server = Server(kind, root, rest_port, grpc_port)
    if kind == "process":
        argv = [a.replace("{root}", str(root)) for a in args]
        server.log_path = tmp / f"server-{uuid.uuid4().hex[:6]}.log"
        server.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tfserving_compat",
                f"--port={grpc_port}",
                f"--rest_api_port={rest_port}",
                "--bind_address=127.0.0.1",
                *argv,
            ],
            stdout=open(server.log_path, "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT / "include"), **(env or {})},
        )
    else:
        argv = [a.replace("{root}", "/models") for a in args]
        server.container = docker_client.containers.run(
            IMAGE,
            argv,
            detach=True,
            name=f"tfserving-test-{uuid.uuid4().hex[:8]}",
            ports={"8500/tcp": ("127.0.0.1", grpc_port), "8501/tcp": ("127.0.0.1", rest_port)},
            volumes={str(root): {"bind": "/models", "mode": "rw"}},
            environment=env or {},
        )
    if wait:
        try:
            wait_ready(server)
        except BaseException:
            server.stop()  # a server that never got ready is not left running
            raise
    return server


def wait_ready(server: Server, timeout: float = 90) -> None:
    """Ready when the REST port answers (it opens only after every model is available)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise AssertionError(f"{server.kind} server exited during start-up:\n{server.logs()[-3000:]}")
        try:
            requests.get(f"{server.url}/v1/models/x", timeout=1)
            return
        except requests.ConnectionError:
            time.sleep(0.2)
    raise AssertionError(f"{server.kind} server not ready in {timeout}s:\n{server.logs()[-3000:]}")


def answers(url: str) -> bool:
    """True once url answers HTTP (a published Docker port accepts connections before the server listens)."""
    try:
        requests.get(url, timeout=1)
        return True
    except requests.ConnectionError:
        return False


def wait_for(predicate, timeout: float = 30, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def version_states(server: Server, model: str) -> dict[int, str]:
    resp = requests.get(f"{server.url}/v1/models/{model}", timeout=5)
    if resp.status_code != 200:
        return {}
    return {int(v["version"]): v["state"] for v in resp.json()["model_version_status"]}


@pytest.fixture(scope="session")
def docker_client_or_none():
    try:
        import docker

        client = docker.from_env(timeout=60)
        client.ping()
    except Exception:  # noqa: BLE001
        return None
    return client


@pytest.fixture(scope="session")
def serving_image(docker_client_or_none):
    """The image must exist: `make test` builds it through `make setup`."""
    assert docker_client_or_none is not None, "no Docker engine: run `make up`"
    docker_client_or_none.images.get(IMAGE)
    return IMAGE


@pytest.fixture(params=["process", "container"], scope="module")
def kind(request):
    return request.param


@pytest.fixture(scope="module")
def launcher(kind, tmp_path_factory, request):
    """Start servers of this module's kind; all are stopped at module end."""
    servers: list[Server] = []
    docker_client = None
    if kind == "container":
        docker_client = request.getfixturevalue("docker_client_or_none")
        request.getfixturevalue("serving_image")
    tmp = tmp_path_factory.mktemp(f"srv-{kind}")

    def launch(root: Path, args: list[str], wait: bool = True, env: dict | None = None) -> Server:
        server = start_server(kind, root, args, tmp, docker_client, wait=wait, env=env)
        servers.append(server)
        return server

    yield launch
    for server in servers:
        server.stop()
