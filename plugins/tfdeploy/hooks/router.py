"""RouterHook: the traffic router (HAProxy) through its runtime API, the admin socket.

Changes take effect at once, without a reload and without dropping a connection. The one the pipeline
makes today is the candidates map: versioned REST calls for ``<model>/<version>`` in it go to the canary pool.
The map is also written to its file (atomically), so a restarted router routes the same way.

Connection (default ``router_local``, written by stack.py): ``extra.socket`` is the admin socket's path and
``extra.candidates_map`` the map file the router loaded at start.
"""

from __future__ import annotations

import os
import socket
import uuid
from functools import cached_property
from pathlib import Path

from airflow.sdk.bases.hook import BaseHook

from tfdeploy.core.errors import RouterError
from tfdeploy.core.names import check_version, validate_model_name

CANARY = "canary"


class RouterHook(BaseHook):
    """HAProxy's runtime API.

    :param router_conn_id: Connection with ``extra.socket`` and ``extra.candidates_map``.
    :param timeout: seconds for each runtime API command.
    """

    conn_name_attr = "router_conn_id"
    default_conn_name = "router_local"
    conn_type = "tfdeploy_router"
    hook_name = "Traffic router (HAProxy runtime API)"

    def __init__(self, router_conn_id: str = default_conn_name, *, timeout: float = 5.0) -> None:
        super().__init__()
        self.router_conn_id = router_conn_id
        self.timeout = timeout

    @cached_property
    def _extra(self) -> dict:
        extra = dict(self.get_connection(self.router_conn_id).extra_dejson)
        for key in ("socket", "candidates_map"):
            if not extra.get(key):
                raise ValueError(f"Connection {self.router_conn_id!r} needs extra.{key}")
        return extra

    @property
    def socket_path(self) -> str:
        return str(self._extra["socket"])

    @property
    def candidates_map(self) -> Path:
        return Path(self._extra["candidates_map"])

    def get_conn(self) -> str:
        return self.socket_path

    def command(self, command: str) -> str:
        """Send one command; returns HAProxy's answer. Raises :class:`RouterError` if it cannot be reached."""
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
        import time

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

    # ------------------------------------------------------------------ candidates

    def candidates(self) -> dict[str, str]:
        """The candidates map as the running router has it: ``{"<model>/<version>": "canary"}``."""
        answer = self.command(f"show map {self.candidates_map}")
        entries: dict[str, str] = {}
        for line in answer.splitlines():
            parts = line.split()
            if len(parts) == 3:  # "<ref> <key> <value>"
                entries[parts[1]] = parts[2]
        return entries

    def route_candidate(self, model: str, version: int) -> None:
        """Send versioned REST calls for ``model``/``version`` to the canary pool (idempotent)."""
        key = f"{validate_model_name(model)}/{check_version(version)}"
        if key not in self.candidates():
            self._checked(f"add map {self.candidates_map} {key} {CANARY}")
        self._write_map({**self._file_entries(), key: CANARY})

    def unroute_candidates(self, model: str) -> list[str]:
        """Versioned REST calls for every version of ``model`` go to the stable pool again; returns the keys."""
        prefix = f"{validate_model_name(model)}/"
        keys = [key for key in self.candidates() if key.startswith(prefix)]
        for key in keys:
            self._checked(f"del map {self.candidates_map} {key}")
        self._write_map({k: v for k, v in self._file_entries().items() if not k.startswith(prefix)})
        return keys

    def _checked(self, command: str) -> None:
        answer = self.command(command).strip()
        if answer and not answer.lower().startswith("done"):
            raise RouterError(f"the router refused `{command}`: {answer}")

    def _file_entries(self) -> dict[str, str]:
        try:
            lines = self.candidates_map.read_text().splitlines()
        except FileNotFoundError:
            return {}
        return dict(line.split(maxsplit=1) for line in lines if line.strip() and not line.startswith("#"))

    def _write_map(self, entries: dict[str, str]) -> None:
        path = self.candidates_map
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        tmp.write_text("".join(f"{key} {value}\n" for key, value in sorted(entries.items())))
        os.replace(tmp, path)
