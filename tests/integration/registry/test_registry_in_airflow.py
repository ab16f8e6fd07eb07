"""The registry as users reach it: mounted in Airflow's api-server at /registry, behind its own token
check (Airflow does not authenticate plugin apps), and through the RegistryHook's Airflow connection."""

from __future__ import annotations

import uuid

import pytest
import requests

from tfdeploy.core.errors import IllegalTransition, NotFound
from tfdeploy.core.states import ModelState
from tfdeploy.hooks.registry import RegistryHook


@pytest.fixture(scope="module")
def base(settings) -> str:
    return f"{settings.airflow_url}/registry"


def test_mounted_at_registry_and_refuses_anonymous_reads(base):
    resp = requests.get(f"{base}/v1/models", timeout=10)
    assert resp.status_code == 401 and "bearer token" in resp.json()["message"]
    assert requests.get(f"{base}/v1/models", headers={"Authorization": "Bearer forged"}, timeout=10).status_code == 403
    assert requests.get(f"{base}/health", timeout=10).json() == {"status": "ok"}


def test_airflow_jwt_is_accepted_and_recorded_as_the_principal(base, airflow):
    token = airflow.token()
    headers = {"Authorization": f"Bearer {token}"}
    assert requests.get(f"{base}/v1/models", headers=headers, timeout=10).status_code == 200
    model = f"jwt-{uuid.uuid4().hex[:6]}"
    resp = requests.post(f"{base}/v1/models", json={"name": model}, headers=headers, timeout=10)
    assert resp.status_code == 201, resp.text
    events = requests.get(f"{base}/v1/models/{model}/history", headers=headers, timeout=10).json()["events"]
    assert events[0]["principal"] == "airflow:admin" and events[0]["actor"] == "airflow:admin"
    # the UI's cookie works as well, so the web page needs no separate login
    assert requests.get(f"{base}/v1/models", cookies={"_token": token}, timeout=10).status_code == 200


def test_web_page_and_openapi_are_served(base):
    page = requests.get(f"{base}/", timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
    assert "/v1/models" in requests.get(f"{base}/openapi.json", timeout=10).json()["paths"]


def test_linked_from_airflow_navigation(airflow):
    plugins = airflow.request("GET", "/api/v2/plugins")["plugins"]
    ours = next(p for p in plugins if p["name"] == "tfdeploy_registry")
    assert any(v["href"] == "/registry/" for v in ours["external_views"])


def test_hook_through_the_airflow_connection():
    hook = RegistryHook()
    model = f"hook-{uuid.uuid4().hex[:6]}"
    created = hook.register_version(
        model, version=1, hdfs_uri="hdfs:///models/x/1", manifest_sha256="d" * 64, context={}
    )
    assert created.state == ModelState.REGISTERED and created.created_by == "api-token"
    hook.transition(model, 1, ModelState.VALIDATED, context={"actor": "carol", "interface": "pipeline"})
    assert hook.get_version(model, 1).state == ModelState.VALIDATED
    with pytest.raises(IllegalTransition, match="illegal transition validated -> production"):
        hook.transition(model, 1, ModelState.PRODUCTION, context={})
    with pytest.raises(NotFound):
        hook.get_version(model, 99)
    assert hook.production_version(model) is None and hook.production_version("no-such-model") is None
