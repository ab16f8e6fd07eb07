"""RouterHook against a stand-in for HAProxy's runtime API on a real unix socket: the commands it sends,
a drain that does not finish (the server goes back in rotation, a RouterError says so), the socket gone
(a RouterError naming it, nothing changed), and the candidates map kept in the router and on disk."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from tfdeploy.core.errors import RouterError
from tfdeploy.hooks.router import RouterHook

HEADER = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,status,weight"


class RuntimeApi:
    """Answers one command per connection, as HAProxy's admin socket does; records every command."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.commands: list[str] = []
        self.in_flight = 0
        self.map: dict[str, str] = {}
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                command = conn.recv(65536).decode().strip()
                self.commands.append(command)
                conn.sendall(self._answer(command).encode())

    def _answer(self, command: str) -> str:
        words = command.split()
        if command == "show stat":
            row = f"local_rest,replica1,0,0,{self.in_flight},1,,1,0,0,UP,1"
            return f"{HEADER}\n{row}\nlocal_rest,BACKEND,0,0,0,1,,1,0,0,UP,1\n\n"
        if words[:2] == ["show", "map"]:
            return "".join(f"0x0 {k} {v}\n" for k, v in self.map.items()) + "\n"
        if words[:2] == ["add", "map"]:
            self.map[words[3]] = words[4]
            return "\n"
        if words[:2] == ["del", "map"]:
            self.map.pop(words[3], None)
            return "\n"
        if words[:2] == ["set", "server"]:
            return "\n"
        return "Unknown command.\n"

    def close(self) -> None:
        self.sock.close()


def connection(socket_path: Path, candidates_map: Path) -> str:
    extra = {"socket": str(socket_path), "candidates_map": str(candidates_map)}
    return json.dumps({"conn_type": "tfdeploy_router", "extra": extra})


@pytest.fixture
def api(tmp_path, monkeypatch):
    path = Path("/tmp") / f"tfdeploy-rt-{tmp_path.name[-20:]}.sock"  # unix socket paths are short
    path.unlink(missing_ok=True)
    server = RuntimeApi(path)
    monkeypatch.setenv(
        "AIRFLOW_CONN_ROUTER_TEST",
        json.dumps(
            {"conn_type": "tfdeploy_router", "extra": {"socket": str(path), "candidates_map": str(tmp_path / "c.map")}}
        ),
    )
    yield server
    server.close()
    path.unlink(missing_ok=True)


def test_a_drain_waits_for_in_flight_requests(api):
    hook = RouterHook("router_test")
    hook.drain(("local_rest",), "replica1", timeout_s=2)
    assert api.commands[0] == "set server local_rest/replica1 state drain"
    assert api.commands[1] == "show stat"


def test_a_drain_that_does_not_finish_puts_the_server_back_and_says_so(api):
    api.in_flight = 3  # a request that never ends
    hook = RouterHook("router_test")
    with pytest.raises(RouterError, match=r"did not finish within 0.3s .* back in rotation"):
        hook.drain(("local_rest",), "replica1", timeout_s=0.3)
    assert api.commands[-1] == "set server local_rest/replica1 state ready"


def test_the_socket_gone_is_a_clear_error_and_changes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_ROUTER_GONE",
        json.dumps(
            {
                "conn_type": "tfdeploy_router",
                "extra": {"socket": str(tmp_path / "no.sock"), "candidates_map": str(tmp_path / "c.map")},
            }
        ),
    )
    hook = RouterHook("router_gone")
    with pytest.raises(RouterError, match=r"no\.sock did not answer `add`.*Nothing was changed"):
        hook.command("add map x a b")
    with pytest.raises(RouterError):
        hook.route_candidate("m", 2)
    assert not (tmp_path / "c.map").exists()  # the file changes only after the router took it


def test_candidates_are_routed_in_the_router_and_on_disk(api, tmp_path):
    hook = RouterHook("router_test")
    hook.route_candidate("m", 2)
    hook.route_candidate("m", 2)  # idempotent: one add
    hook.route_candidate("other", 7)
    assert [c for c in api.commands if c.startswith("add map")] == [
        f"add map {tmp_path / 'c.map'} m/2 canary",
        f"add map {tmp_path / 'c.map'} other/7 canary",
    ]
    assert (tmp_path / "c.map").read_text() == "m/2 canary\nother/7 canary\n"
    assert hook.unroute_candidates("m") == ["m/2"]
    assert api.map == {"other/7": "canary"}
    assert (tmp_path / "c.map").read_text() == "other/7 canary\n"


def test_a_refused_command_is_an_error(api):
    with pytest.raises(RouterError, match="refused"):
        RouterHook("router_test")._checked("frobnicate")
    with pytest.raises(ValueError, match="ready, drain or maint"):
        RouterHook("router_test").set_state("local_rest", "replica1", "up")
