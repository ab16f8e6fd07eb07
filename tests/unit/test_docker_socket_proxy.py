"""docker-socket-proxy (docker-compose.yml; include/images/haproxy/docker-socket-proxy.cfg), run: the real HAProxy
with the image's configuration, only its two socket paths moved into a temporary directory, in front of a fake
Docker engine (a unix-socket HTTP server that records what reaches it). The reads that Prometheus' service discovery
and the api-server's replica logs make pass through, unchanged; every other request is answered 403 by the proxy
and never reaches the engine. Needs haproxy (`make setup` installs it), no Docker engine.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import socketserver
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "include" / "images" / "haproxy" / "docker-socket-proxy.cfg"
ENGINE_SOCKET = "/run/docker-host/docker.sock"
RO_SOCKET = "/run/docker-ro/docker.sock"

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None, reason="no haproxy here (make setup installs it)")

# (method, path): what the readers send. Prometheus 2.42's Docker SD (Go client, version negotiation): HEAD /_ping
# (GET when HEAD fails), GET /v1.41/containers/json?filters=..., GET /v1.41/networks. The api-server's replica logs
# (docker-py, tfdeploy.docker_engine.docker_client): GET /version, then /v1.41/containers/<name>/json and
# /v1.41/containers/<id>/logs.
READS = [
    ("HEAD", "/_ping"),
    ("GET", "/_ping"),
    ("GET", "/version"),
    ("GET", "/v1.41/version"),
    ("GET", "/v1.41/containers/json?filters=%7B%22label%22%3A%5B%22tfdeploy.managed%3Dtrue%22%5D%7D"),
    ("GET", "/containers/json"),
    ("GET", "/v1.43/containers/json?all=1"),
    ("GET", "/v1.41/networks"),
    ("GET", "/networks"),
    ("GET", "/v1.41/containers/tfserving-local-1/json"),
    ("HEAD", "/v1.41/containers/tfserving-local-1/json"),
    ("GET", "/v1.41/containers/4f2a9c0d11e3/logs?stderr=1&stdout=1&timestamps=0&follow=0&tail=50"),
]
WRITES_AND_OTHER_READS = [
    ("POST", "/containers/create"),
    ("POST", "/v1.41/containers/create?name=evil"),
    ("DELETE", "/v1.41/containers/tfserving-local-1?force=1"),
    ("POST", "/v1.41/containers/tfserving-local-1/exec"),
    ("POST", "/v1.41/exec/abc/start"),
    ("POST", "/v1.41/containers/tfserving-local-1/stop"),
    ("POST", "/v1.41/containers/tfserving-local-1/kill"),
    ("POST", "/v1.41/containers/tfserving-local-1/attach?stream=1"),
    ("GET", "/v1.41/containers/tfserving-local-1/attach/ws"),
    ("PUT", "/v1.41/containers/tfserving-local-1/archive?path=/"),
    ("GET", "/v1.41/containers/tfserving-local-1/archive?path=/etc"),
    ("GET", "/v1.41/containers/tfserving-local-1/export"),
    ("POST", "/v1.41/containers/tfserving-local-1/logs"),
    ("POST", "/v1.41/containers/json"),
    ("GET", "/v1.41/images/json"),
    ("POST", "/v1.41/images/create?fromImage=evil"),
    ("POST", "/v1.41/build"),
    ("GET", "/v1.41/volumes"),
    ("POST", "/v1.41/volumes/create"),
    ("DELETE", "/v1.41/volumes/tfdeploy-models-dev-local"),
    ("POST", "/v1.41/networks/create"),
    ("GET", "/v1.41/networks/bridge"),
    ("GET", "/v1.41/swarm"),
    ("POST", "/v1.41/swarm/init"),
    ("GET", "/v1.41/info"),
    ("GET", "/v1.41/events"),
    ("POST", "/v1.41/session"),
    ("POST", "/_ping"),
    ("OPTIONS", "/_ping"),
    ("PATCH", "/v1.41/containers/json"),
    ("get", "/_ping"),
    ("GET", "/containers/../images/json"),
    ("GET", "/containers/..%2Fimages/json"),
    ("GET", "//containers/json"),
    ("GET", "/containers/json/"),
]


class _Engine(BaseHTTPRequestHandler):
    """A fake Docker engine: records the (method, path) of every request that reaches it, whatever the method, and
    answers 200 with a small JSON body."""

    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, str]]

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        if parsed:
            self.seen.append((self.command, self.path))
        return parsed

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = json.dumps({"engine": "fake", "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_OPTIONS = do_PATCH = _answer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - BaseHTTPRequestHandler's signature
        pass


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("docker", timeout=10)
        self.socket_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def _request(path: str, method: str, url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One request on its own connection, sent in one piece (the proxy answers a refused POST before reading its
    body, and closes)."""
    body = b"{}" if method in ("POST", "PUT", "PATCH") else b""
    fields = {"Host": "docker", "Content-Length": str(len(body)), "Connection": "close", **(headers or {})}
    head = "".join(f"{name}: {value}\r\n" for name, value in fields.items())
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(f"{method} {url} HTTP/1.1\r\n{head}\r\n".encode() + body)
        resp = http.client.HTTPResponse(sock, method=method)
        resp.begin()
        return resp.status, resp.read()


@pytest.fixture(scope="module")
def proxy() -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """(the proxy's socket, what reached the fake engine): HAProxy with the image's configuration, its socket paths
    moved under a short temporary directory (a unix socket path has at most 107 bytes)."""
    text = CONFIG.read_text()
    bind, server = f"bind unix@{RO_SOCKET} ", f"server engine unix@{ENGINE_SOCKET}\n"
    assert text.count(bind) == 1 and text.count(server) == 1
    tmp = Path(tempfile.mkdtemp(prefix="tfdeploy-dsp-"))
    text = text.replace(bind, f"bind unix@{tmp}/ro.sock ").replace(server, f"server engine unix@{tmp}/engine.sock\n")
    if os.geteuid() != 0 and 50000 not in os.getgroups():  # the socket's group is the Airflow user's in the image
        text = text.replace(" gid 50000", f" gid {os.getegid()}")
    (tmp / "proxy.cfg").write_text(text)
    seen: list[tuple[str, str]] = []
    engine = socketserver.ThreadingUnixStreamServer(
        str(tmp / "engine.sock"), type("Engine", (_Engine,), {"seen": seen})
    )
    engine.daemon_threads = True
    threading.Thread(target=engine.serve_forever, daemon=True).start()
    log = (tmp / "haproxy.log").open("w")
    haproxy = subprocess.Popen(["haproxy", "-db", "-f", str(tmp / "proxy.cfg")], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if _request(str(tmp / "ro.sock"), "GET", "/_ping")[0] == 200:
                    break
            except OSError:
                pass
            assert haproxy.poll() is None, (tmp / "haproxy.log").read_text()
            assert time.monotonic() < deadline, "HAProxy did not answer on its socket within 15 s"
            time.sleep(0.1)
        seen.clear()
        yield str(tmp / "ro.sock"), seen
    finally:
        haproxy.terminate()
        try:
            haproxy.wait(timeout=10)
        except subprocess.TimeoutExpired:
            haproxy.kill()
            haproxy.wait(timeout=10)
        log.close()
        engine.shutdown()
        engine.server_close()
        shutil.rmtree(tmp, ignore_errors=True)


def test_socket_is_the_airflow_groups_and_not_others(proxy: tuple[str, list]) -> None:
    mode = os.stat(proxy[0]).st_mode
    assert mode & 0o777 == 0o660


@pytest.mark.parametrize(("method", "url"), READS)
def test_the_readers_calls_reach_the_engine_unchanged(proxy: tuple[str, list], method: str, url: str) -> None:
    path, seen = proxy
    seen.clear()
    status, body = _request(path, method, url)
    assert status == 200, body
    assert seen == [(method, url)]
    if method == "GET":
        assert json.loads(body) == {"engine": "fake", "path": url}


@pytest.mark.parametrize(("method", "url"), WRITES_AND_OTHER_READS)
def test_everything_else_is_refused_before_the_engine(proxy: tuple[str, list], method: str, url: str) -> None:
    path, seen = proxy
    seen.clear()
    status, body = _request(path, method, url)
    assert status == 403, body
    assert seen == []
    # a Docker client shows the engine's {"message": ...}: say why
    assert "read-only Docker API" in json.loads(body)["message"]


def test_no_protocol_switch_even_on_an_allowed_path(proxy: tuple[str, list]) -> None:
    path, seen = proxy
    seen.clear()
    status, _ = _request(path, "GET", "/v1.41/containers/x/logs", {"Upgrade": "tcp", "Connection": "Upgrade"})
    assert status == 403 and seen == []


def test_every_request_of_a_kept_alive_connection_is_checked(proxy: tuple[str, list]) -> None:
    """Not only a connection's first request: a refused one after an allowed one on the same connection."""
    path, seen = proxy
    seen.clear()
    conn = _UnixHTTPConnection(path)
    try:
        statuses = []
        for url in ("/_ping", "/v1.41/images/json", "/version"):
            conn.request("GET", url)
            resp = conn.getresponse()
            resp.read()
            statuses.append(resp.status)
    finally:
        conn.close()
    assert statuses == [200, 403, 200]
    assert seen == [("GET", "/_ping"), ("GET", "/version")]
