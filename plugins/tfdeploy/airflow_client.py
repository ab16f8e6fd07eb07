"""A small client for Airflow's REST API (v2): token, trigger, wait. Used by the demo and the tests.

Airflow 3's API needs a JWT from ``POST /auth/token``; this client gets one from the configured
credentials (``AIRFLOW_USER`` / ``AIRFLOW_PASSWORD``) and sends it as a bearer token.
"""

from __future__ import annotations

import time
from functools import cached_property
from typing import Any

import requests

TERMINAL_RUN_STATES = frozenset({"success", "failed"})


class AirflowApiError(RuntimeError):
    """The Airflow REST API refused a request; the message has the method, path, status and body."""


class AirflowClient:
    def __init__(self, base_url: str, username: str, password: str, *, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.username = username
        self.password = password
        self.timeout = timeout

    @cached_property
    def session(self) -> requests.Session:
        session = requests.Session()
        session.trust_env = False  # loopback: never through a proxy
        session.headers["Authorization"] = f"Bearer {self.token()}"
        return session

    def token(self) -> str:
        resp = requests.post(
            f"{self.base_url}/auth/token",
            json={"username": self.username, "password": self.password},
            timeout=self.timeout,
            proxies={"http": "", "https": ""},
        )
        if resp.status_code not in (200, 201):
            raise AirflowApiError(
                f"POST /auth/token as {self.username!r} -> {resp.status_code}: {resp.text[:300]} "
                "(check AIRFLOW_USER / AIRFLOW_PASSWORD)"
            )
        return resp.json()["access_token"]

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self.session.request(method, f"{self.base_url}{path}", timeout=self.timeout, **kwargs)
        if resp.status_code >= 400:
            raise AirflowApiError(f"{method} {path} -> {resp.status_code}: {resp.text[:500]}")
        return resp.json() if resp.content else None

    def wait_for_dag(self, dag_id: str, timeout: float = 120.0) -> dict:
        """Wait until the dag-processor has parsed dag_id (new files are picked up on its next scan)."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                return self.request("GET", f"/api/v2/dags/{dag_id}")
            except AirflowApiError as exc:
                last = str(exc)
            time.sleep(1)
        raise AirflowApiError(f"DAG {dag_id!r} did not appear within {timeout:.0f}s: {last}")

    def unpause(self, dag_id: str) -> None:
        self.request("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, conf: dict | None = None, run_id: str | None = None) -> dict:
        body: dict[str, Any] = {"logical_date": None, "conf": conf or {}}
        if run_id:
            body["dag_run_id"] = run_id
        return self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", json=body)

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 300.0) -> dict:
        deadline = time.monotonic() + timeout
        run: dict = {}
        while time.monotonic() < deadline:
            run = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
            if run["state"] in TERMINAL_RUN_STATES:
                return run
            time.sleep(1)
        raise AirflowApiError(f"run {dag_id}/{run_id} still {run.get('state')!r} after {timeout:.0f}s")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
