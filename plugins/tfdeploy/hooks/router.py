"""RouterHook: the traffic router (HAProxy) through its runtime API, the admin socket.

Changes take effect at once, without a reload and without dropping a connection. The pipeline keeps three
maps (include/scripts/stack.py router_config), each changed through the runtime API and written to its file
(atomically), so a restarted router routes the same way:
 - ``candidates``: versioned REST calls for ``<model>/<version>`` in it go to the canary pool;
 - ``weights``: ``<model> <percent>``, the share of the model's unversioned REST inference calls sent to the
   canary pool during a gray release (``X-Route-Key`` pins a caller to one side);
 - ``limits``: ``<model> <requests/s>``, the model's rate limit (429 above it).
The router counts each model's unversioned inference calls per side in its ``traffic`` stick table
(:meth:`RouterHook.traffic`): what judges a gray release's steps.

Connection (default ``router_local``, written by stack.py): ``extra.socket`` is the admin socket's path and
``extra.<name>_map`` the map files the router loaded at start (or ``extra=`` given to the hook).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from airflow.sdk.bases.hook import BaseHook

from tfdeploy.core.errors import RouterError
from tfdeploy.core.names import check_version, validate_model_name

CANARY = "canary"
MAPS = ("candidates", "weights", "limits")
TRAFFIC_TABLE = "traffic"


@dataclass(frozen=True)
class SideCounters:
    """The router's counters of one model's unversioned inference calls on one side (``stable``/``canary``):
    requests, 4xx answers and 5xx answers of its servers (cumulative since the entry was created)."""

    requests: int = 0
    client_errors: int = 0
    server_errors: int = 0

    def __sub__(self, other: SideCounters) -> SideCounters:
        return SideCounters(
            self.requests - other.requests,
            self.client_errors - other.client_errors,
            self.server_errors - other.server_errors,
        )


class RouterHook(BaseHook):
    """HAProxy's runtime API.

    :param router_conn_id: Connection with ``extra.socket`` and ``extra.<map>_map`` for each map.
    :param timeout: seconds for each runtime API command.
    :param extra: the Connection's extra, resolved already (a trigger's); the Connection is then not read.
    """

    conn_name_attr = "router_conn_id"
    default_conn_name = "router_local"
    conn_type = "tfdeploy_router"
    hook_name = "Traffic router (HAProxy runtime API)"

    def __init__(
        self, router_conn_id: str = default_conn_name, *, timeout: float = 5.0, extra: dict | None = None
    ) -> None:
        super().__init__()
        self.router_conn_id = router_conn_id
        self.timeout = timeout
        self._given_extra = extra

    @cached_property
    def extra(self) -> dict:
        """The Connection's extra (socket and map paths), checked."""
        extra = dict(self._given_extra or self.get_connection(self.router_conn_id).extra_dejson)
        for key in ("socket", *(f"{name}_map" for name in MAPS)):
            if not extra.get(key):
                raise ValueError(f"Connection {self.router_conn_id!r} needs extra.{key}")
        return extra

    @property
    def socket_path(self) -> str:
        return str(self.extra["socket"])

    @property
    def candidates_map(self) -> Path:
        return self.map_path("candidates")

    def map_path(self, name: str) -> Path:
        """The file of map ``name`` (``candidates``, ``weights`` or ``limits``)."""
        if name not in MAPS:
            raise ValueError(f"unknown router map {name!r}; maps: {', '.join(MAPS)}")
        return Path(self.extra[f"{name}_map"])

    def get_conn(self) -> str:
        return self.socket_path

    def command(self, command: str) -> str:
        """Send one command; returns HAProxy's answer. Raises :class:`RouterError` if it cannot be reached (or
        does not answer within ``timeout``)."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(self.socket_path)
                sock.sendall(command.encode() + b"\n")
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
        except OSError as exc:
            raise RouterError(
                f"the router's runtime API at {self.socket_path} did not answer `{command.split()[0]}` ({exc}); "
                "is the router running (`make status`)? Nothing was changed in it."
            ) from exc
        return b"".join(chunks).decode(errors="replace")

    # ------------------------------------------------------------------ servers

    def server_stats(self, backend: str) -> dict[str, dict[str, str]]:
        """``show stat`` of one backend: server name -> its columns (``status``, ``scur``, ``qcur``, ``weight``)."""
        lines = self.command("show stat").splitlines()
        if not lines or not lines[0].startswith("# "):
            raise RouterError(f"the router answered `show stat` with {lines[:1]!r}")
        columns = lines[0][2:].split(",")
        rows = [dict(zip(columns, line.split(","), strict=False)) for line in lines[1:] if line]
        return {row["svname"]: row for row in rows if row["pxname"] == backend and row["svname"] != "BACKEND"}

    def set_state(self, backend: str, server: str, state: str) -> None:
        """``ready`` (takes traffic), ``drain`` (no new requests; those in flight finish) or ``maint``."""
        if state not in ("ready", "drain", "maint"):
            raise ValueError(f"server state must be ready, drain or maint, got {state!r}")
        self._checked(f"set server {backend}/{server} state {state}")

    def drain(self, backends: tuple[str, ...], server: str, *, timeout_s: float = 30.0) -> None:
        """Drain ``server`` in ``backends`` and wait until no request of it is in flight or queued.

        Raises :class:`RouterError` (after putting the server back to ready) if that takes over ``timeout_s``.
        """
        for backend in backends:
            self.set_state(backend, server, "drain")
        deadline = time.monotonic() + timeout_s
        while True:
            busy = {
                backend: int(row.get("scur") or 0) + int(row.get("qcur") or 0)
                for backend in backends
                if (row := self.server_stats(backend).get(server)) is not None
            }
            if not any(busy.values()):
                return
            if time.monotonic() >= deadline:
                for backend in backends:
                    self.set_state(backend, server, "ready")
                raise RouterError(
                    f"draining {server} did not finish within {timeout_s:g}s (requests in flight: {busy}); it is "
                    "back in rotation and nothing was changed on it"
                )
            time.sleep(0.05)

    # ------------------------------------------------------------------ maps

    def map_entries(self, name: str) -> dict[str, str]:
        """Map ``name`` as the running router has it."""
        entries: dict[str, str] = {}
        answer = self.command(f"show map {self.map_path(name)}")
        for line in answer.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0].startswith("0x"):  # "<ref> <key> <value>"
                entries[parts[1]] = parts[2]
            elif line.strip():
                raise RouterError(f"the router answered `show map {self.map_path(name)}` with {line.strip()!r}")
        return entries

    def set_entries(self, name: str, entries: dict[str, str | None]) -> None:
        """Set (value) or delete (``None``) keys of map ``name`` in the running router, then in its file."""
        path = self.map_path(name)
        live = self.map_entries(name)
        for key, value in entries.items():
            if value is None:
                if key in live:
                    self._checked(f"del map {path} {key}")
            elif key in live:
                if live[key] != value:
                    self._checked(f"set map {path} {key} {value}")
            else:
                self._checked(f"add map {path} {key} {value}")
        kept = {k: v for k, v in self._file_entries(path).items() if k not in entries}
        self._write_map(path, kept | {k: v for k, v in entries.items() if v is not None})

    # ------------------------------------------------------------------ candidates

    def candidates(self) -> dict[str, str]:
        """The candidates map as the running router has it: ``{"<model>/<version>": "canary"}``."""
        return self.map_entries("candidates")

    def route_candidate(self, model: str, version: int) -> None:
        """Send versioned REST calls for ``model``/``version`` to the canary pool (idempotent)."""
        self.set_entries("candidates", {f"{validate_model_name(model)}/{check_version(version)}": CANARY})

    def unroute_candidates(self, model: str) -> list[str]:
        """No call reaches ``model``'s candidates any more: its gray-release weight goes to 0 first, then versioned
        calls for every version of it go to the stable pool again. Returns the candidate keys removed."""
        self.set_weight(model, 0)
        prefix = f"{validate_model_name(model)}/"
        keys = [key for key in self.candidates() if key.startswith(prefix)]
        self.set_entries("candidates", dict.fromkeys(keys))
        return keys

    # ------------------------------------------------------------------ gray release and limits

    def weights(self) -> dict[str, int]:
        """Each model's share (percent) of unversioned inference calls sent to its candidate (absent: 0)."""
        return {model: int(value) for model, value in self.map_entries("weights").items()}

    def set_weight(self, model: str, percent: int) -> None:
        """Send ``percent`` of ``model``'s unversioned REST inference calls to the canary pool (0 removes it)."""
        if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
            raise ValueError(f"a weight is a whole percent 0-100, got {percent!r}")
        self.set_entries("weights", {validate_model_name(model): str(percent) if percent else None})

    def limits(self) -> dict[str, int]:
        """Each model's rate limit in requests per second (absent: none)."""
        return {model: int(value) for model, value in self.map_entries("limits").items()}

    def set_limit(self, model: str, rps: float | None) -> None:
        """Limit ``model`` to ``rps`` requests per second at the router (``None``: no limit). The router counts
        whole requests over the last second, so the limit is rounded up to a whole number."""
        if rps is not None and (isinstance(rps, bool) or not isinstance(rps, int | float) or not rps > 0):
            raise ValueError(f"a rate limit is a number of requests per second > 0, got {rps!r}")
        value = None if rps is None else str(max(1, int(-(-rps // 1))))
        self.set_entries("limits", {validate_model_name(model): value})

    def traffic(self, model: str) -> dict[str, SideCounters]:
        """The router's counters of ``model``'s unversioned inference calls, by side (``stable``, ``canary``)."""
        name = validate_model_name(model)
        counters = {"stable": SideCounters(), "canary": SideCounters()}
        for line in self.command(f"show table {TRAFFIC_TABLE}").splitlines():
            fields = dict(part.split("=", 1) for part in line.split()[1:] if "=" in part)
            key = fields.get("key", "")
            model_part, _, side = key.rpartition("/")
            if model_part == name and side in counters:
                counters[side] = SideCounters(
                    int(fields.get("http_req_cnt", 0)),
                    int(fields.get("http_err_cnt", 0)),
                    int(fields.get("http_fail_cnt", 0)),
                )
        return counters

    def pool_up(self, backend: str) -> bool:
        """Whether any server of ``backend`` is up (in rotation, its health checks passing)."""
        return any(row.get("status", "").startswith("UP") for row in self.server_stats(backend).values())

    # ------------------------------------------------------------------ plumbing

    def _checked(self, command: str) -> None:
        answer = self.command(command).strip()
        if answer and not answer.lower().startswith("done"):
            raise RouterError(f"the router refused `{command}`: {answer}")

    @staticmethod
    def _file_entries(path: Path) -> dict[str, str]:
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            return {}
        return dict(line.split(maxsplit=1) for line in lines if line.strip() and not line.startswith("#"))

    @staticmethod
    def _write_map(path: Path, entries: dict[str, str]) -> None:
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        tmp.write_text("".join(f"{key} {value}\n" for key, value in sorted(entries.items())))
        os.replace(tmp, path)
