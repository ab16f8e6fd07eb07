"""A server that accepts connections and never answers makes every hook's call fail within its timeout, with a
named error that says which server did not answer, instead of hanging the task.

The hung servers are real sockets (TCP on 127.0.0.1, or a unix socket for the Docker engine and the router)
that accept and then stay silent. Elapsed times are checked against the timeout plus a generous margin: not as a
speed target, only to prove the call gave up; pytest-timeout's outer guard fails a call that hangs anyway.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tfdeploy.core.errors import (
    DockerEngineUnavailable,
    ModelStoreUnavailable,
    PrometheusError,
    RegistryUnavailable,
    RouterError,
    ServingReloadError,
    ServingRpcError,
    ServingUnavailable,
    VersionNotAvailable,
)
from tfdeploy.hooks.model_store import ModelStoreHook
from tfdeploy.hooks.model_store.client import DEFAULT_TIMEOUT
from tfdeploy.hooks.prometheus import PrometheusHook
from tfdeploy.hooks.registry import RegistryHook
from tfdeploy.hooks.router import RouterHook
from tfdeploy.hooks.serving_host import ServingHostHook
from tfdeploy.hooks.tfserving import TFServingHook

# Generous: the timeouts below are 1 s; a loaded 2-core machine must not fail these. Not a speed target.
MARGIN_S = 20.0
pytestmark = pytest.mark.timeout(120)  # the outer guard: a call that hangs fails the test instead of the suite


class Silent:
    """A listening socket whose accepted connections are held open and never answered."""

    def __init__(self, family: int, address: Any) -> None:
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind(address)
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.held: list[socket.socket] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.held.append(conn)  # read nothing, answer nothing

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        for conn in self.held:
            conn.close()
        self.sock.close()


@pytest.fixture
def hung_tcp() -> Iterator[int]:
    """The port of a TCP server on 127.0.0.1 that accepts and never answers."""
    server = Silent(socket.AF_INET, ("127.0.0.1", 0))
    yield server.sock.getsockname()[1]
    server.close()


@pytest.fixture
def hung_unix(tmp_path: Path) -> Iterator[Path]:
    """The path of a unix socket that accepts and never answers (a hung Docker engine, a hung router)."""
    path = tmp_path / "hung.sock"
    server = Silent(socket.AF_UNIX, str(path))
    yield path
    server.close()


def fails_within(limit_s: float, call: Callable[[], Any], error: type[BaseException]) -> BaseException:
    """Run call; it must raise ``error`` and return (not hang) within limit_s. Returns the error."""
    started = time.monotonic()
    with pytest.raises(error) as excinfo:
        call()
    elapsed = time.monotonic() - started
    assert elapsed < limit_s, f"{call} gave up only after {elapsed:.1f}s (limit {limit_s}s)"
    return excinfo.value


# --------------------------------------------------------------------------- the model store (WebHDFS)


def webhdfs_conn(monkeypatch: pytest.MonkeyPatch, conn_id: str, port: int, extra: dict | None = None) -> str:
    conn = {"conn_type": "webhdfs", "host": "127.0.0.1", "port": port, "login": "airflow", "extra": extra or {}}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
    return conn_id


def test_a_namenode_that_never_answers_fails_the_store_within_its_timeout(hung_tcp, monkeypatch, tmp_path):
    conn_id = webhdfs_conn(monkeypatch, "webhdfs_hung", hung_tcp, {"timeout": [1, 1]})
    store = ModelStoreHook(conn_id)
    assert store.timeout == (1.0, 1.0)  # from the Connection's extra

    error = fails_within(1 + MARGIN_S, lambda: store.versions("m"), ModelStoreUnavailable)
    assert f"127.0.0.1:{hung_tcp}" in str(error)
    assert "webhdfs_hung" in str(error) and "make status" in str(error)

    # the hook's own timeout wins over the Connection's; a fetch fails the same way and leaves nothing behind
    fast = ModelStoreHook(conn_id, timeout=(1, 0.5))
    assert fast.timeout == (1.0, 0.5)
    error = fails_within(1 + MARGIN_S, lambda: fast.fetch("m", 1, tmp_path / "serving"), ModelStoreUnavailable)
    assert f"127.0.0.1:{hung_tcp}" in str(error) and "0.5s to answer" in str(error)
    assert not (tmp_path / "serving").exists()


class _HalfHungNameNode(BaseHTTPRequestHandler):
    """Answers the client's probe (GETFILESTATUS /) like a NameNode, then never answers anything else."""

    release = threading.Event()

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if "op=GETFILESTATUS" in self.path and self.path.startswith("/webhdfs/v1/?"):
            body = json.dumps({"FileStatus": {"type": "DIRECTORY", "length": 0}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.release.wait(60)  # hung mid-session

    def log_message(self, *args: Any) -> None:
        pass


def test_a_namenode_that_hangs_mid_session_fails_the_call_naming_it(monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HalfHungNameNode)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        store = ModelStoreHook(webhdfs_conn(monkeypatch, "webhdfs_half_hung", port), timeout=(1, 1))
        error = fails_within(1 + MARGIN_S, lambda: store.versions("m"), ModelStoreUnavailable)
        assert f"127.0.0.1:{port}" in str(error) and "did not answer while versions" in str(error)
        assert "ReadTimeout" in str(error)
    finally:
        _HalfHungNameNode.release.set()
        server.shutdown()
        server.server_close()


def test_the_store_timeout_comes_from_the_connection_or_the_default(monkeypatch):
    assert ModelStoreHook(webhdfs_conn(monkeypatch, "webhdfs_plain", 1)).timeout == DEFAULT_TIMEOUT == (5.0, 60.0)
    assert ModelStoreHook(webhdfs_conn(monkeypatch, "webhdfs_one", 1, {"timeout": 7})).timeout == (7.0, 7.0)
    assert ModelStoreHook(webhdfs_conn(monkeypatch, "webhdfs_text", 1, {"timeout": "[2, 30]"})).timeout == (2.0, 30.0)
    for bad in ([1, 2, 3], -1, "soon", [0, 5], True):
        with pytest.raises(ValueError, match="webhdfs_bad.*extra.timeout must be seconds"):
            _ = ModelStoreHook(webhdfs_conn(monkeypatch, "webhdfs_bad", 1, {"timeout": bad})).timeout
    with pytest.raises(ValueError, match="extra.timeout must be seconds"):
        ModelStoreHook("webhdfs_default", timeout=(1, 2, 3))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the Docker engine


def test_a_docker_engine_that_never_answers_fails_within_its_timeout(hung_unix, tmp_path):
    host = ServingHostHook(None, model_root=tmp_path / "root", base_url=f"unix://{hung_unix}", docker_timeout=1)
    for call in (lambda: host.server_logs("tfserving-x"), lambda: host.stop_server("tfserving-x")):
        error = fails_within(1 + MARGIN_S, call, DockerEngineUnavailable)
        assert f"unix://{hung_unix}" in str(error) and "did not answer" in str(error)


def test_a_docker_engine_that_is_not_there_is_named_too(tmp_path):
    host = ServingHostHook(None, model_root=tmp_path, base_url=f"unix://{tmp_path / 'none.sock'}", docker_timeout=1)
    error = fails_within(MARGIN_S, lambda: host.inspect_server("tfserving-x"), DockerEngineUnavailable)
    assert "none.sock" in str(error)


# --------------------------------------------------------------------------- TF Serving (REST and gRPC)


def test_a_tf_serving_server_that_never_answers_fails_rest_and_grpc_calls_within_the_timeout(hung_tcp):
    from tfdeploy.core.models_config import ServedModel, build_model_config

    target = f"127.0.0.1:{hung_tcp}"
    serving = TFServingHook(None, grpc_target=target, rest_url=f"http://{target}", timeout=1)
    try:
        error = fails_within(1 + MARGIN_S, lambda: serving.metadata("m"), ServingUnavailable)
        assert target in str(error) and "got no answer" in str(error)
        error = fails_within(1 + MARGIN_S, lambda: serving.model_status("m"), ServingRpcError)
        assert target in str(error) and error.code == "DEADLINE_EXCEEDED"
        config = build_model_config([ServedModel("m", "/models/m", (1,))])
        error = fails_within(1 + MARGIN_S, lambda: serving.reload(config), ServingReloadError)
        assert target in str(error) and "did not answer the config reload" in str(error)
        assert serving.is_ready() is False
        # polling for a version stops at its deadline even though every status call hangs
        fails_within(
            3 + 1 + MARGIN_S,
            lambda: serving.wait_until_available("m", 1, deadline_s=3, poll_interval_s=0.1),
            VersionNotAvailable,
        )
    finally:
        serving.close()


# --------------------------------------------------------------------------- the registry, router, Prometheus


def test_a_registry_that_never_answers_fails_within_its_timeouts_and_retries(hung_tcp, monkeypatch):
    conn = {"conn_type": "http", "host": "127.0.0.1", "port": hung_tcp, "schema": "registry", "password": "t"}
    monkeypatch.setenv("AIRFLOW_CONN_REGISTRY_HUNG", json.dumps(conn))
    registry = RegistryHook(
        "registry_hung", timeout=1, connect_timeout=1, max_attempts=2, backoff=0.01, max_backoff=0.01
    )
    error = fails_within(2 * 1 + MARGIN_S, lambda: registry.get_model("m"), RegistryUnavailable)
    assert f"127.0.0.1:{hung_tcp}" in str(error) and "registry_hung" in str(error)


def test_a_router_that_never_answers_fails_within_its_timeout(hung_unix, tmp_path):
    extra = {
        "socket": str(hung_unix),
        **{f"{name}_map": str(tmp_path / f"{name}.map") for name in ("candidates", "weights", "limits")},
    }
    router = RouterHook("router_hung", timeout=1, extra=extra)
    error = fails_within(1 + MARGIN_S, router.candidates, RouterError)
    assert str(hung_unix) in str(error) and "did not answer" in str(error)


def test_a_prometheus_that_never_answers_fails_within_its_timeout(hung_tcp, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_PROMETHEUS_HUNG", json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": hung_tcp})
    )
    error = fails_within(
        1 + MARGIN_S, lambda: PrometheusHook("prometheus_hung", timeout=1).query("up"), PrometheusError
    )
    assert f"127.0.0.1:{hung_tcp}" in str(error) and "did not answer" in str(error)
