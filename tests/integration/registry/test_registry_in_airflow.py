"""The registry as users reach it: mounted in Airflow's api-server at /registry, behind its own token
check (Airflow does not authenticate plugin apps), and through the RegistryHook's Airflow connection; the
plugin's sources there (rollback starters, live performance from the stack's Prometheus, replica logs)."""

from __future__ import annotations

import shlex
import time
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
    # the API's description follows the reads' policy (tests/integration/registry/test_registry_roles.py)
    assert requests.get(f"{base}/openapi.json", timeout=10).status_code == 401


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
    assert created.state == ModelState.REGISTERED and created.created_by == "tfdeploy-service"
    hook.transition(model, 1, ModelState.VALIDATED, context={"interface": "pipeline"})
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


@pytest.fixture(scope="module")
def stable_model(settings, docker_client):
    """A model of our own (TF Serving's half_plus_two, v123) served by every replica of the stable pool, through the
    pipeline's own ServingTargetService, and registered; taken out of the pool afterwards."""
    from tfdeploy.core.models_config import ServedModel
    from tfdeploy.services.serving_target import ServingTargetService
    from tfdeploy.services.targets import get_target

    from ..test_diagnosis import HP_VERSION

    service = ServingTargetService(get_target("local"))
    model = f"query_{uuid.uuid4().hex[:8]}"
    base = [host.stage_version(HP_VERSION, model, 123) for host in service.hosts][0]  # on every host of the pool
    service.change(model, lambda _entry: ServedModel(model, base, (123,), {}))
    try:
        RegistryHook().register_version(
            model,
            version=123,
            hdfs_uri=f"hdfs:///models/{model}/123",
            manifest_sha256="0" * 64,
            source=str(HP_VERSION),
            reason="test_registry_in_airflow: staged by hand",
            context={"interface": "rest_api"},
        )
        yield model, service
    finally:
        service.change(model, lambda _entry: None)


def test_live_performance_and_replica_logs_through_the_api_server(base, airflow, settings, docker_client, stable_model):
    """The plugin's sources in the real api-server: /performance answers the stable pool's numbers from the
    stack's Prometheus (calls sent to each replica, some failing) or, Prometheus unreachable, available:false
    with the reason; /logs (write access) answers every stable replica's lines about the model, with the secrets
    planted in a replica's real log (and every other configured one) redacted."""
    from ..test_diagnosis import configured_secrets, leaked

    model, service = stable_model
    headers = {"Authorization": f"Bearer {airflow.token()}"}
    replicas = service.replicas
    assert len(replicas) == settings.stable_replicas

    def traffic() -> None:
        for replica in replicas:
            for x in (1.0, 2.0, 5.0):
                resp = requests.post(
                    f"{replica.rest_url}/v1/models/{model}:predict", json={"instances": [x]}, timeout=10
                )
                assert resp.status_code == 200 and resp.json()["predictions"] == [x / 2 + 2], resp.text
            bad = requests.post(f"{replica.rest_url}/v1/models/{model}:predict", json={"instances": "x"}, timeout=10)
            assert bad.status_code == 400, bad.text

    # a rate needs two scrapes of the series (5 s apart): traffic until Prometheus shows it
    deadline, body = time.monotonic() + 90, {}
    while time.monotonic() < deadline:
        traffic()
        resp = requests.get(f"{base}/v1/models/{model}/performance", headers=headers, timeout=30)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        if not body["available"] or (body["pools"]["stable"]["requestRate"] or 0) > 0:
            break
        time.sleep(2)
    assert body.get("modelName") == model and body.get("window") == "5m", body
    if body["available"]:
        stable = body["pools"]["stable"]
        assert stable["requestRate"] > 0 and 0 < stable["errorRate"] < 1, body
        assert 0 <= stable["p50Ms"] <= stable["p99Ms"], body
        assert set(body["pools"]) >= {"stable", "canary"}
        assert body["pools"]["canary"]["requestRate"] in (None, 0.0), body  # never served by the canary pool
    else:
        assert body["reason"], body

    secrets = configured_secrets(settings)
    stable_container = f"{settings.serving_container_prefix}-local"
    planted = [
        f"{model} GET /registry/v1/models Authorization: Bearer {secrets['registry API token']}",
        f"{model} airflow login admin password={secrets['admin password']}",
        f"{model} fernet {secrets['fernet key']} jwt {secrets['JWT secret']}",
        f"{model} conn {secrets['AIRFLOW_CONN_TFDEPLOY_REGISTRY value']}",
        f"{model} planted-by-test_registry_in_airflow",
    ]
    script = "; ".join(f"echo {shlex.quote(line)} > /proc/1/fd/1" for line in planted)
    assert docker_client.containers.get(stable_container).exec_run(["sh", "-c", script]).exit_code == 0

    assert requests.get(f"{base}/v1/models/{model}/logs", timeout=30).status_code == 401  # never anonymous
    resp = requests.get(f"{base}/v1/models/{model}/logs", params={"lines": 50}, headers=headers, timeout=60)
    assert resp.status_code == 200, resp.text
    logs = resp.json()
    assert logs["available"] is True and logs["lines"] == 50, logs
    containers = logs["containers"]
    stable = [stable_container] + [f"{stable_container}-{i}" for i in range(1, settings.stable_replicas)]
    assert list(containers)[: len(stable)] == stable, list(containers)
    assert f"{stable_container}-canary" in containers
    for name in stable:
        assert containers[name] and all(model in line for line in containers[name]), (name, containers[name])
        assert len(containers[name]) <= 50
    mine = "\n".join(containers[stable_container])
    assert f"{model} planted-by-test_registry_in_airflow" in mine
    assert f"{model} GET /registry/v1/models Authorization: Bearer [REDACTED]" in mine
    for what, secret in secrets.items():
        assert not leaked(resp.text, secret), f"the {what} is in the /logs answer"
