"""The registry as users reach it: mounted in Airflow's api-server at /registry, behind its own token
check (Airflow does not authenticate plugin apps), and through the RegistryHook's Airflow connection."""

from __future__ import annotations

import uuid
from urllib.parse import quote

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


def _firing(model: str, fingerprint: str) -> dict:
    return {
        "version": "4",
        "receiver": "tfdeploy-registry",
        "status": "firing",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "ModelFailing", "severity": "critical", "model": model},
                "annotations": {"summary": "golden predict differs"},
                "startsAt": "2026-12-02T10:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "",
                "fingerprint": fingerprint,
            }
        ],
    }


def test_the_plugin_starts_model_rollback_runs_in_the_api_server(base, airflow):
    """The plugin's rollback starters against the real api-server: a paused model_rollback is refused (502, the
    alert recorded); unpaused, an alert's automatic rollback and the page's "roll back to version" each create a
    model_rollback run with the expected conf. The runs are deleted at once (the DAG paused again first), and
    the DAG's pause state is restored."""
    hook = RegistryHook()
    model = f"autorb-{uuid.uuid4().hex[:6]}"
    for version in (1, 2):
        hook.register_version(
            model,
            version=version,
            hdfs_uri=f"hdfs:///models/{model}/{version}",
            manifest_sha256=f"{version:064x}",
            context={},
        )
        for state in ("validated", "canary", "production"):
            hook.transition(model, version, state, context={})
    hook.set_settings(model, auto_rollback_on_failing=True, reason="integration test")
    headers = {"Authorization": f"Bearer {airflow.token()}"}
    dag = "/api/v2/dags/model_rollback"
    was_paused = airflow.wait_for_dag("model_rollback")["is_paused"]
    runs: list[str] = []
    try:
        airflow.request("PATCH", dag, json={"is_paused": True})
        resp = requests.post(f"{base}/v1/alerts", json=_firing(model, f"fp-{model}"), headers=headers, timeout=30)
        assert resp.status_code == 502 and resp.json()["error"] == "RollbackNotStarted", resp.text
        assert "model_rollback is paused" in resp.json()["message"]
        assert [a.status for a in hook.list_alerts(model)] == ["firing"]  # recorded all the same

        airflow.unpause("model_rollback")
        try:
            resp = requests.post(f"{base}/v1/alerts", json=_firing(model, f"fp-{model}"), headers=headers, timeout=30)
            assert resp.status_code == 200, resp.text
            auto = resp.json()["alerts"][0]["autoRollback"]
            assert auto["status"] == "started", auto
            runs.append(auto["runId"])
            runs.append(hook.start_rollback(model, 1, reason="integration test: roll back to v1"))
        finally:
            airflow.request("PATCH", dag, json={"is_paused": True})
        automatic, chosen = (airflow.request("GET", f"{dag}/dagRuns/{quote(r, safe='')}") for r in runs)
        assert automatic["conf"] == {
            "model_name": model,
            "version": None,
            "reason": "automatic: ModelFailing: golden predict differs",
            "automatic": True,
        }
        assert chosen["conf"] == {
            "model_name": model,
            "version": 1,
            "reason": "integration test: roll back to v1",
            "automatic": False,
        }
        assert automatic.get("triggering_user_name", "tfdeploy-registry") == "tfdeploy-registry"
        kinds = [e["kind"] for e in hook.history(model, limit=20)]
        assert "auto_rollback" in kinds and "rollback" in kinds
    finally:
        for run_id in runs:
            airflow.request("DELETE", f"{dag}/dagRuns/{quote(run_id, safe='')}")
        airflow.request("PATCH", dag, json={"is_paused": was_paused})
