"""RegistryHook: the model registry over HTTP, through an Airflow connection, so workers anywhere can use it.

Connection (default `tfdeploy_registry`): conn_type http, host/port of the Airflow api-server (or a
standalone registry), schema = path prefix (`registry`), password = the registry API token.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import requests
from airflow.sdk.bases.hook import BaseHook

from tfdeploy.registry.errors import Conflict, InvalidName, InvalidRequest, LockHeld, LostRace, NotFound, RegistryError

_ERRORS: dict[str, type[RegistryError]] = {
    cls.__name__: cls for cls in (NotFound, InvalidName, InvalidRequest, Conflict, LockHeld, LostRace)
}
_ERRORS["IllegalTransition"] = Conflict


class RegistryHook(BaseHook):
    conn_name_attr = "registry_conn_id"
    default_conn_name = "tfdeploy_registry"
    conn_type = "http"
    hook_name = "tfdeploy model registry"

    def __init__(self, registry_conn_id: str = default_conn_name, *, timeout: float = 30.0) -> None:
        super().__init__()
        self.registry_conn_id = registry_conn_id
        self.timeout = timeout

    @cached_property
    def base_url(self) -> str:
        conn = self.get_connection(self.registry_conn_id)
        scheme = conn.conn_type if conn.conn_type in ("http", "https") else "http"
        port = f":{conn.port}" if conn.port else ""
        prefix = f"/{conn.schema.strip('/')}" if conn.schema else ""
        return f"{scheme}://{conn.host}{port}{prefix}"

    @cached_property
    def session(self) -> requests.Session:
        conn = self.get_connection(self.registry_conn_id)
        session = requests.Session()
        session.trust_env = False
        if conn.password:
            session.headers["Authorization"] = f"Bearer {conn.password}"
        return session

    def get_conn(self) -> requests.Session:
        return self.session

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self.session.request(method, f"{self.base_url}{path}", timeout=self.timeout, **kwargs)
        if resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                body = {"message": resp.text[:500]}
            error = _ERRORS.get(body.get("error", ""), RegistryError)
            raise error(f"registry {method} {path} -> {resp.status_code}: {body.get('message', body)}")
        return resp.json() if resp.content else None

    # Thin helpers for the pipeline's operators.
    def register_version(self, model: str, **body: Any) -> dict:
        return self.request("POST", f"/v1/models/{model}/versions", json=body)

    def get_version(self, model: str, version: int) -> dict:
        return self.request("GET", f"/v1/models/{model}/versions/{version}")

    def get_model(self, model: str) -> dict:
        return self.request("GET", f"/v1/models/{model}")

    def transition(self, model: str, version: int, to_state: str, **body: Any) -> dict:
        return self.request(
            "POST", f"/v1/models/{model}/versions/{version}/transitions", json={"toState": to_state, **body}
        )

    def record_health(self, model: str, **body: Any) -> dict:
        return self.request("POST", f"/v1/models/{model}/health", json=body)

    def set_deployment(self, model: str, target: str, label: str, version: int, **body: Any) -> dict:
        return self.request(
            "PUT", f"/v1/models/{model}/deployments/{target}/{label}", json={"version": version, **body}
        )

    def acquire_lock(self, model: str, holder: str, run_id: str, ttl_seconds: float, **body: Any) -> dict:
        return self.request(
            "POST",
            f"/v1/models/{model}/lock",
            json={"holder": holder, "runId": run_id, "ttlSeconds": ttl_seconds, **body},
        )

    def release_lock(self, model: str, token: str) -> None:
        self.request("DELETE", f"/v1/models/{model}/lock", params={"token": token})
