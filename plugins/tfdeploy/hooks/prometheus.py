"""PrometheusHook: Prometheus' HTTP query API (instant and range queries), through an Airflow Connection.

Connection (default ``prometheus_default``, written by stack.py): conn_type http, host and port of the
Prometheus server (the stack's runs on 127.0.0.1). Every call has a timeout; a failed or refused query raises
:class:`PrometheusError` naming the query.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import requests
from airflow.sdk.bases.hook import BaseHook

from tfdeploy.core.errors import PrometheusError


class PrometheusHook(BaseHook):
    """Prometheus' query API.

    :param prometheus_conn_id: Connection with host and port of the Prometheus server.
    :param timeout: seconds for each query.
    """

    conn_name_attr = "prometheus_conn_id"
    default_conn_name = "prometheus_default"
    conn_type = "http"
    hook_name = "Prometheus"

    def __init__(self, prometheus_conn_id: str = default_conn_name, *, timeout: float = 10.0) -> None:
        super().__init__()
        self.prometheus_conn_id = prometheus_conn_id
        self.timeout = timeout

    @cached_property
    def base_url(self) -> str:
        conn = self.get_connection(self.prometheus_conn_id)
        host = (conn.host or "127.0.0.1").rstrip("/")
        if "://" not in host:
            host = f"http://{host}"
        return f"{host}:{conn.port}" if conn.port else host

    @cached_property
    def session(self) -> requests.Session:
        session = requests.Session()
        session.trust_env = False
        return session

    def get_conn(self) -> requests.Session:
        return self.session

    def _get(self, path: str, params: dict[str, Any]) -> Any:
        url = f"{self.base_url}{path}"
        try:
            resp = self.session.get(url, params=params, timeout=self.timeout)
            body = resp.json()
        except (requests.RequestException, ValueError) as exc:
            raise PrometheusError(f"Prometheus at {url} did not answer {params.get('query')!r}: {exc}") from exc
        if resp.status_code != 200 or body.get("status") != "success":
            raise PrometheusError(
                f"Prometheus refused {params.get('query')!r} ({resp.status_code}): {body.get('error', body)}"
            )
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query: ``[{"metric": {labels}, "value": float}, ...]``."""
        data = self._get("/api/v1/query", {"query": expr})
        return [{"metric": r["metric"], "value": float(r["value"][1])} for r in data.get("result", [])]

    def scalar(self, expr: str) -> float | None:
        """The value of a query expected to give one series (None when it gives none, or NaN)."""
        results = self.query(expr)
        if not results or results[0]["value"] != results[0]["value"]:  # NaN
            return None
        return results[0]["value"]

    def query_range(self, expr: str, *, start: float, end: float, step: float) -> list[dict[str, Any]]:
        """A range query (epoch seconds): ``[{"metric": {labels}, "values": [[t, "v"], ...]}, ...]``."""
        data = self._get("/api/v1/query_range", {"query": expr, "start": start, "end": end, "step": step})
        return list(data.get("result", []))
