"""RouterHook against a stand-in for HAProxy's runtime API on a real unix socket: the commands it sends,
a drain that does not finish (the server goes back in rotation, a RouterError says so), the socket gone
(a RouterError naming it, nothing changed), the maps (candidates, a gray release's weights, rate limits) kept
in the router and on disk, and the per-side counters read from the ``traffic`` stick table."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from tfdeploy.core.errors import RouterError
from tfdeploy.hooks.router import RouterHook, SideCounters

HEADER = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,status,weight"
MAPS = ("candidates", "weights", "limits")
TRAFFIC = """# table: traffic, type: string, size:10240, used:5
0x55a259aad980: key=m1/stable use=0 exp=86400000 shard=0 http_req_cnt=1164 http_err_cnt=3 http_fail_cnt=2
0x55a259aad9f0: key=m1/canary use=1 exp=86399000 shard=0 http_req_cnt=120 http_err_cnt=0 http_fail_cnt=7
0x55a259aada60: key=m10/canary use=0 exp=86400000 shard=0 http_req_cnt=99 http_err_cnt=99 http_fail_cnt=99
0x55a259aadad0: key=other.m1/stable use=0 exp=86400000 shard=0 http_req_cnt=55 http_err_cnt=5 http_fail_cnt=5
0x55a259aadb40: key=m2/stable use=0 exp=86400000 shard=0 http_req_cnt=7 http_err_cnt=0 http_fail_cnt=0

"""


class RuntimeApi:
    """Answers one command per connection, as HAProxy's admin socket does; records every command. ``maps`` are
    the maps the router loaded, by file path (``show/add/set/del map``)."""

    def __init__(self, path: Path, map_files: dict[str, Path]) -> None:
        self.path = path
        self.map_files = map_files
        self.commands: list[str] = []
        self.in_flight = 0
        self.canary_status = "DOWN"
        self.maps: dict[str, dict[str, str]] = {str(file): {} for file in map_files.values()}
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def map(self, name: str) -> dict[str, str]:
        """Map ``name`` as the running router has it."""
        return self.maps[str(self.map_files[name])]

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
            rows = [
                f"local_rest,replica1,0,0,{self.in_flight},1,,1,0,0,UP,1",
                "local_rest,BACKEND,0,0,0,1,,1,0,0,UP,1",
                f"local_canary_rest,canary1,0,0,0,1,,1,0,0,{self.canary_status},1",
                f"local_canary_rest,BACKEND,0,0,0,1,,1,0,0,{self.canary_status},1",
            ]
            return HEADER + "\n" + "\n".join(rows) + "\n\n"
        if command == "show table traffic":
            return TRAFFIC
        if words[1:2] == ["map"] and words[2:3] and words[2] not in self.maps:
            return f"Unknown map identifier '{words[2]}'.\n"
        if words[:2] == ["show", "map"]:
            return "".join(f"0x0 {k} {v}\n" for k, v in self.maps[words[2]].items()) + "\n"
        if words[:2] == ["add", "map"]:
            self.maps[words[2]][words[3]] = words[4]
            return "\n"
        if words[:2] == ["set", "map"]:
            if words[3] not in self.maps[words[2]]:
                return "entry not found.\n"
            self.maps[words[2]][words[3]] = words[4]
            return "\n"
        if words[:2] == ["del", "map"]:
            self.maps[words[2]].pop(words[3], None)
            return "\n"
        if words[:2] == ["set", "server"]:
            return "\n"
        return "Unknown command.\n"

    def close(self) -> None:
        self.sock.close()


def extra(socket_path: Path, directory: Path) -> dict[str, str]:
    """The router Connection's extra, as stack.py writes it."""
    return {"socket": str(socket_path), **{f"{name}_map": str(directory / f"{name}.map") for name in MAPS}}


@pytest.fixture
def api(tmp_path, monkeypatch):
    path = Path("/tmp") / f"tfdeploy-rt-{tmp_path.name[-20:]}.sock"  # unix socket paths are short
    path.unlink(missing_ok=True)
    server = RuntimeApi(path, {name: tmp_path / f"{name}.map" for name in MAPS})
    monkeypatch.setenv(
        "AIRFLOW_CONN_ROUTER_TEST", json.dumps({"conn_type": "tfdeploy_router", "extra": extra(path, tmp_path)})
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
        json.dumps({"conn_type": "tfdeploy_router", "extra": extra(tmp_path / "no.sock", tmp_path)}),
    )
    hook = RouterHook("router_gone")
    with pytest.raises(RouterError, match=r"no\.sock did not answer `add`.*Nothing was changed"):
        hook.command("add map x a b")
    with pytest.raises(RouterError):
        hook.route_candidate("m", 2)
    with pytest.raises(RouterError):
        hook.set_weight("m", 10)
    with pytest.raises(RouterError, match="did not answer `show`"):
        hook.traffic("m")
    assert not list(tmp_path.glob("*.map"))  # the files change only after the router took it


def test_candidates_are_routed_in_the_router_and_on_disk(api, tmp_path):
    hook = RouterHook("router_test")
    candidates = tmp_path / "candidates.map"
    hook.route_candidate("m", 2)
    hook.route_candidate("m", 2)  # idempotent: one add
    hook.route_candidate("other", 7)
    assert [c for c in api.commands if c.startswith("add map")] == [
        f"add map {candidates} m/2 canary",
        f"add map {candidates} other/7 canary",
    ]
    assert candidates.read_text() == "m/2 canary\nother/7 canary\n"
    assert hook.candidates() == {"m/2": "canary", "other/7": "canary"}
    assert hook.unroute_candidates("m") == ["m/2"]
    assert api.map("candidates") == {"other/7": "canary"}
    assert candidates.read_text() == "other/7 canary\n"


def test_a_refused_command_is_an_error(api):
    with pytest.raises(RouterError, match="refused"):
        RouterHook("router_test")._checked("frobnicate")
    with pytest.raises(ValueError, match="ready, drain or maint"):
        RouterHook("router_test").set_state("local_rest", "replica1", "up")


# --------------------------------------------------------------------------- the connection


def test_the_connection_needs_the_socket_and_every_map(tmp_path, monkeypatch):
    for missing in ("socket", "candidates_map", "weights_map", "limits_map"):
        given = {k: v for k, v in extra(tmp_path / "r.sock", tmp_path).items() if k != missing}
        monkeypatch.setenv("AIRFLOW_CONN_ROUTER_HALF", json.dumps({"conn_type": "tfdeploy_router", "extra": given}))
        with pytest.raises(ValueError, match=rf"Connection 'router_half' needs extra\.{missing}"):
            RouterHook("router_half").map_path("weights")


def test_a_resolved_extra_is_used_without_reading_the_connection(api, tmp_path):
    hook = RouterHook("no_such_connection", extra=extra(api.path, tmp_path))
    assert hook.map_path("weights") == tmp_path / "weights.map" and hook.socket_path == str(api.path)
    assert hook.candidates_map == tmp_path / "candidates.map"
    hook.set_weight("m", 5)
    assert api.map("weights") == {"m": "5"}
    with pytest.raises(ValueError, match="unknown router map 'bogus'; maps: candidates, weights, limits"):
        hook.map_path("bogus")


# --------------------------------------------------------------------------- a gray release's weights


def test_set_weight_adds_changes_and_removes_the_entry(api, tmp_path):
    hook = RouterHook("router_test")
    weights = tmp_path / "weights.map"
    hook.set_weight("m", 10)
    hook.set_weight("other", 50)
    assert api.map("weights") == {"m": "10", "other": "50"}
    assert weights.read_text() == "m 10\nother 50\n"
    hook.set_weight("m", 50)
    hook.set_weight("m", 50)  # unchanged: no command
    assert api.map("weights")["m"] == "50" and hook.weights() == {"m": 50, "other": 50}
    hook.set_weight("m", 0)  # 0: no entry, the default of the map lookup
    hook.set_weight("m", 0)  # already absent: nothing to delete
    changes = [c for c in api.commands if c.split()[0] in ("add", "set", "del")]
    assert changes == [
        f"add map {weights} m 10",
        f"add map {weights} other 50",
        f"set map {weights} m 50",
        f"del map {weights} m",
    ]
    assert api.map("weights") == {"other": "50"} and weights.read_text() == "other 50\n"
    assert api.map("candidates") == {} and api.map("limits") == {}


def test_set_weight_keeps_what_the_file_has_for_other_models(api, tmp_path):
    (tmp_path / "weights.map").write_text("# kept by the pipeline\nother 25\n")
    RouterHook("router_test").set_weight("m", 100)
    assert (tmp_path / "weights.map").read_text() == "m 100\nother 25\n"


@pytest.mark.parametrize("weight", [101, -1, True, 12.5, "10"])
def test_set_weight_refuses_what_is_not_a_whole_percent(api, weight):
    with pytest.raises(ValueError, match="a weight is a whole percent 0-100"):
        RouterHook("router_test").set_weight("m", weight)
    assert api.commands == []


def test_set_weight_refuses_an_unsafe_model_name(api):
    with pytest.raises(ValueError):
        RouterHook("router_test").set_weight("m 1\nclear map", 10)
    assert api.commands == []


def test_unroute_candidates_takes_the_weight_away_first(api, tmp_path):
    hook = RouterHook("router_test")
    hook.route_candidate("m", 2)
    hook.set_weight("m", 30)
    hook.set_weight("other", 5)
    api.commands.clear()
    assert hook.unroute_candidates("m") == ["m/2"]
    changes = [c for c in api.commands if c.startswith("del map")]
    assert changes == [f"del map {tmp_path / 'weights.map'} m", f"del map {tmp_path / 'candidates.map'} m/2"]
    assert api.map("weights") == {"other": "5"} and (tmp_path / "weights.map").read_text() == "other 5\n"
    assert api.map("candidates") == {} and (tmp_path / "candidates.map").read_text() == ""


def test_a_refused_map_change_is_an_error_and_leaves_the_file(api, tmp_path):
    api.maps.pop(str(tmp_path / "weights.map"))  # the router did not load that map
    with pytest.raises(RouterError):
        RouterHook("router_test").set_weight("m", 10)
    assert not (tmp_path / "weights.map").exists()


# --------------------------------------------------------------------------- rate limits


@pytest.mark.parametrize(("rps", "kept"), [(5, "5"), (2.5, "3"), (0.2, "1"), (10.0, "10"), (99.01, "100")])
def test_set_limit_rounds_up_to_whole_requests(api, tmp_path, rps, kept):
    hook = RouterHook("router_test")
    hook.set_limit("m", rps)
    assert api.map("limits") == {"m": kept} and (tmp_path / "limits.map").read_text() == f"m {kept}\n"
    assert hook.limits() == {"m": int(kept)}


def test_set_limit_none_removes_it(api, tmp_path):
    hook = RouterHook("router_test")
    hook.set_limit("m", 10)
    hook.set_limit("m", 20)
    hook.set_limit("m", None)
    assert api.map("limits") == {} and (tmp_path / "limits.map").read_text() == ""
    assert [c.split()[0] for c in api.commands if c.split()[0] in ("add", "set", "del")] == ["add", "set", "del"]


@pytest.mark.parametrize("rps", [0, -1, True, "5"])
def test_set_limit_refuses_what_is_not_a_positive_rate(api, rps):
    with pytest.raises(ValueError, match="a rate limit is a number of requests per second > 0"):
        RouterHook("router_test").set_limit("m", rps)
    assert api.commands == []


# --------------------------------------------------------------------------- counters and pools


def test_traffic_reads_the_models_counters_by_side(api):
    hook = RouterHook("router_test")
    assert hook.traffic("m1") == {
        "stable": SideCounters(requests=1164, client_errors=3, server_errors=2),
        "canary": SideCounters(requests=120, client_errors=0, server_errors=7),
    }
    assert api.commands == ["show table traffic"]
    # a model with no entry on a side (none of its calls went there yet): zeros
    assert hook.traffic("m2") == {"stable": SideCounters(7, 0, 0), "canary": SideCounters()}
    assert hook.traffic("unknown") == {"stable": SideCounters(), "canary": SideCounters()}
    assert SideCounters(10, 2, 1) - SideCounters(4, 1, 1) == SideCounters(6, 1, 0)


def test_pool_up_means_a_server_of_the_backend_is_up(api):
    hook = RouterHook("router_test")
    assert hook.pool_up("local_rest") is True
    assert hook.pool_up("local_canary_rest") is False
    api.canary_status = "UP 1/3"
    assert hook.pool_up("local_canary_rest") is True
    assert hook.pool_up("no_such_backend") is False
