"""The registry's HTTP API against real databases: SQLite (file) and PostgreSQL (the stack's server)."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
import warnings

import pytest
import sqlalchemy as sa

from tfdeploy.registry.api import create_app
from tfdeploy.registry.auth import SERVICE
from tfdeploy.registry.config import RegistryConfig

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

TOKEN = "registry-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Airflow runs as the plugin's run lookup finds them (dag id, run id) -> who triggered the run and how
RUNS = {
    ("model_deploy", "r1"): {"user": "bob", "interface": "schedule"},
    ("model_deploy", "manual__alice"): {"user": "alice", "interface": "ui"},
    ("model_deploy", "manual__7"): {"user": "alice", "interface": "rest_api"},
}


def run_lookup(dag_id: str, run_id: str) -> dict[str, str] | None:
    """The plugin's run lookup (Airflow's database), faked: the runs of ``RUNS``, None for any other."""
    return RUNS.get((dag_id, run_id))


@pytest.fixture(scope="module")
def client(db_url):
    app = create_app(
        RegistryConfig(db_url=db_url, api_token=TOKEN, airflow_url="http://airflow.test"), run_lookup=run_lookup
    )
    with TestClient(app) as c:
        yield c


def ctx(interface: str = "ui", **extra) -> dict:
    return {"interface": interface, **extra}


def register(client, model: str, version: int | None = None, sha: str = "a" * 64, **body) -> dict:
    payload = {"hdfsUri": f"hdfs:///models/{model}/{version}", "manifestSha256": sha, "context": ctx(), **body}
    if version is not None:
        payload["version"] = version
    resp = client.post(f"/v1/models/{model}/versions", json=payload, headers=AUTH)
    assert resp.status_code in (200, 201), resp.text
    return resp.json()


def move(client, model: str, version: int, *states: str, **body) -> dict:
    out = {}
    for state in states:
        resp = client.post(
            f"/v1/models/{model}/versions/{version}/transitions",
            json={"toState": state, "context": ctx(), **body},
            headers=AUTH,
        )
        assert resp.status_code == 200, resp.text
        out = resp.json()
    return out


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------- authentication


def test_reads_and_writes_need_a_token(client):
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 403
    resp = client.post("/v1/models/x/versions", json={})
    assert resp.status_code == 401 and "Authorization: Bearer <token>" in resp.json()["message"]
    assert client.get("/v1/models", headers=AUTH).status_code == 200
    assert client.get("/v1/models", cookies={"_token": TOKEN}).status_code == 200  # the UI's cookie
    assert client.get("/health").json() == {"status": "ok"}


def test_public_reads_when_configured(db_url):
    app = create_app(RegistryConfig(db_url=db_url, api_token=TOKEN, public_reads=True))
    with TestClient(app) as c:
        assert c.get("/v1/models").status_code == 200
        assert c.post("/v1/models", json={"name": "nope"}).status_code == 401


def test_openapi_docs(client):
    spec = client.get("/openapi.json", headers=AUTH).json()
    assert "/v1/models/{name}/versions/{version}/transitions" in spec["paths"]
    assert client.get("/docs", headers=AUTH).status_code == 200


# --------------------------------------------------------------------------- models and versions


def test_query_api_lists_models_with_their_production_version(client):
    model = unique("listed")
    register(client, model, 1)
    move(client, model, 1, "validated", "canary", "production")
    register(client, model, 2)
    move(client, model, 2, "validated", "canary")
    body = client.get("/v1/models", params={"q": model}, headers=AUTH).json()
    assert body["models"] == [
        {
            "modelName": model,
            "version": 1,
            "canaryVersion": 2,
            "latestVersion": 2,
            "health": None,
            "updatedAt": body["models"][0]["updatedAt"],
        }
    ]


def test_register_is_idempotent_and_never_overwrites(client):
    model = unique("idem")
    first = client.post(
        f"/v1/models/{model}/versions", json={"version": 3, "hdfsUri": "u", "manifestSha256": "b" * 64}, headers=AUTH
    )
    assert first.status_code == 201 and first.json()["state"] == "registered"
    again = client.post(
        f"/v1/models/{model}/versions", json={"version": 3, "hdfsUri": "u", "manifestSha256": "b" * 64}, headers=AUTH
    )
    assert again.status_code == 200 and again.json()["createdAt"] == first.json()["createdAt"]
    clash = client.post(
        f"/v1/models/{model}/versions", json={"version": 3, "hdfsUri": "u", "manifestSha256": "c" * 64}, headers=AUTH
    )
    assert clash.status_code == 409 and "already exists with different content" in clash.json()["message"]
    nxt = register(client, model)  # no version given: the next free integer
    assert nxt["version"] == 4


def test_version_detail_filters_and_pagination(client):
    model = unique("pages")
    for v in range(1, 8):
        register(client, model, v, metrics={"accuracy": v / 10}, validationReport={"passed": v % 2 == 0})
    move(client, model, 2, "validated")
    page = client.get(f"/v1/models/{model}/versions", params={"limit": 3, "offset": 2}, headers=AUTH).json()
    assert [v["version"] for v in page["versions"]] == [5, 4, 3] and page["total"] == 7
    validated = client.get(f"/v1/models/{model}/versions", params={"state": "validated"}, headers=AUTH).json()
    assert [v["version"] for v in validated["versions"]] == [2]
    detail = client.get(f"/v1/models/{model}/versions/4", headers=AUTH).json()
    assert detail["validationReport"] == {"passed": True} and detail["metrics"] == {"accuracy": 0.4}
    bad = client.get(f"/v1/models/{model}/versions", params={"state": "deployed"}, headers=AUTH)
    assert bad.status_code == 422 and "unknown state 'deployed'" in bad.json()["message"]


def test_errors_are_json_with_a_message(client):
    resp = client.get("/v1/models/no-such-model", headers=AUTH)
    assert resp.status_code == 404 and resp.json()["error"] == "NotFound" and "no-such-model" in resp.json()["message"]
    assert client.get("/v1/models/no-such-model/history", headers=AUTH).status_code == 404
    resp = client.post("/v1/models/bad name/versions", json={}, headers=AUTH)
    assert resp.status_code == 422 and "invalid model name" in resp.json()["message"]
    resp = client.post("/v1/models/a..b/versions", json={}, headers=AUTH)
    assert resp.status_code == 422
    model = unique("err")
    register(client, model, 1)
    resp = client.post(f"/v1/models/{model}/versions/9/transitions", json={"toState": "validated"}, headers=AUTH)
    assert resp.status_code == 404 and "has no version 9" in resp.json()["message"]
    resp = client.post(f"/v1/models/{model}/versions/1/transitions", json={"toState": "production"}, headers=AUTH)
    assert resp.status_code == 409
    assert resp.json()["message"].startswith("illegal transition registered -> production")
    resp = client.post(f"/v1/models/{model}/versions/1/transitions", json={"state": "x"}, headers=AUTH)
    assert resp.status_code == 422 and "toState" in resp.json()["message"]


# --------------------------------------------------------------------------- transitions, history, time travel


def test_promotion_supersedes_and_history_records_who_did_what(client):
    model = unique("promo")
    register(client, model, 1)
    move(client, model, 1, "validated", "canary", "production")
    register(client, model, 2)
    resp = client.post(
        f"/v1/models/{model}/versions/2/transitions",
        json={
            "toState": "validated",
            "context": ctx("pipeline", dagId="model_deploy", runId="r1", taskId="validate"),
        },
        headers=AUTH,
    )
    assert resp.status_code == 200
    move(client, model, 2, "canary", "production", reason="smoke passed")
    detail = client.get(f"/v1/models/{model}", headers=AUTH).json()
    assert (detail["version"], detail["canaryVersion"]) == (2, None)
    states = {
        v["version"]: v["state"] for v in client.get(f"/v1/models/{model}/versions", headers=AUTH).json()["versions"]
    }
    assert states == {1: "superseded", 2: "production"}
    events = client.get(f"/v1/models/{model}/history", headers=AUTH).json()["events"]
    assert events[0]["toState"] == "production" and events[0]["reason"] == "smoke passed"
    assert any(
        e["version"] == 1 and e["toState"] == "superseded" and "superseded by version 2" in e["reason"] for e in events
    )
    # the service token acted for bob's run: bob (the run's triggering user) and how the run was started
    by_bob = client.get("/v1/history", params={"model": model, "actor": "bob"}, headers=AUTH).json()["events"]
    assert [(e["toState"], e["interface"], e["dagId"], e["runId"], e["taskId"]) for e in by_bob] == [
        ("validated", "schedule", "model_deploy", "r1", "validate")
    ]
    assert all(e["principal"] == SERVICE for e in events)
    assert {e["actor"] for e in events} == {"bob", SERVICE}  # without a run: the service itself


def test_which_version_was_in_production_at_a_time(client):
    model = unique("travel")
    register(client, model, 1)
    move(client, model, 1, "validated", "canary")
    move(client, model, 1, "production", context=ctx(dagId="model_deploy", runId="manual__alice"))
    time.sleep(0.05)
    between = dt.datetime.now(dt.UTC).isoformat()
    time.sleep(0.05)
    register(client, model, 2)
    move(client, model, 2, "validated", "canary", "production")
    then = client.get(f"/v1/models/{model}/production", params={"at": between}, headers=AUTH).json()
    assert then["version"] == 1 and then["promotedBy"]["actor"] == "alice"
    assert (then["promotedBy"]["principal"], then["promotedBy"]["runId"]) == (SERVICE, "manual__alice")
    now = client.get(f"/v1/models/{model}/production", params={"at": dt.datetime.now(dt.UTC).isoformat()}, headers=AUTH)
    assert now.json()["version"] == 2
    before = client.get(f"/v1/models/{model}/production", params={"at": "2000-01-01T00:00:00Z"}, headers=AUTH).json()
    assert before["version"] is None
    # a manual rollback to the earlier version is also history
    move(client, model, 2, "rolled_back")
    move(client, model, 1, "production", reason="manual rollback")
    assert client.get(f"/v1/models/{model}", headers=AUTH).json()["version"] == 1


def test_history_time_range_filter(client):
    model = unique("range")
    register(client, model, 1)
    mark = dt.datetime.now(dt.UTC).isoformat()
    time.sleep(0.05)
    move(client, model, 1, "validated")
    after = client.get("/v1/history", params={"model": model, "since": mark}, headers=AUTH).json()["events"]
    assert [e["toState"] for e in after] == ["validated"]
    before = client.get("/v1/history", params={"model": model, "until": mark}, headers=AUTH).json()["events"]
    assert "validated" not in [e["toState"] for e in before]
    bad = client.get("/v1/history", params={"since": "yesterday"}, headers=AUTH)
    assert bad.status_code == 422 and "ISO 8601" in bad.json()["message"]


def test_history_is_append_only_in_the_database(client, db_url):
    engine = sa.create_engine(db_url)
    try:
        for statement in ("UPDATE history SET actor = 'mallory'", "DELETE FROM history"):
            with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as conn:
                conn.exec_driver_sql(statement)
    finally:
        engine.dispose()


def test_racing_writers_one_wins_the_other_gets_409(client):
    model = unique("race")
    register(client, model, 1)
    move(client, model, 1, "validated")
    results: list[int] = []
    barrier = threading.Barrier(6)

    def writer(i: int) -> None:
        barrier.wait()
        resp = client.post(
            f"/v1/models/{model}/versions/1/transitions",
            json={"toState": "canary", "expectedState": "validated", "context": ctx()},
            headers=AUTH,
        )
        results.append(resp.status_code)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200, 409, 409, 409, 409, 409]
    events = client.get(f"/v1/models/{model}/history", params={"kind": "transition"}, headers=AUTH).json()["events"]
    assert [e["toState"] for e in events] == ["canary", "validated"]  # exactly one canary transition


# --------------------------------------------------------------------------- deployments, health, locks


def test_deployments_and_health(client):
    model = unique("health")
    register(client, model, 1)
    move(client, model, 1, "validated", "canary", "production")
    resp = client.put(f"/v1/models/{model}/deployments/local/stable", json={"version": 1}, headers=AUTH)
    assert resp.status_code == 200 and resp.json()["previousVersion"] is None
    resp = client.post(
        f"/v1/models/{model}/health",
        json={"version": 1, "target": "local", "status": "degraded", "details": {"p99Ms": 80}},
        headers=AUTH,
    )
    assert resp.status_code == 201
    detail = client.get(f"/v1/models/{model}", headers=AUTH).json()
    assert detail["health"] == "degraded"
    assert detail["deployments"][0] | {"updatedAt": None} == {
        "target": "local",
        "label": "stable",
        "version": 1,
        "updatedBy": SERVICE,
        "updatedAt": None,
    }
    records = client.get(f"/v1/models/{model}/health", headers=AUTH).json()["records"]
    assert records[0]["details"] == {"p99Ms": 80}
    bad = client.post(
        f"/v1/models/{model}/health", json={"version": 1, "target": "local", "status": "fine"}, headers=AUTH
    )
    assert bad.status_code == 422


def test_deployment_lock_lease(client):
    model = unique("lock")
    url = f"/v1/models/{model}/lock"
    first = client.post(url, json={"holder": "run-a", "runId": "a", "ttlSeconds": 1}, headers=AUTH)
    assert first.status_code == 200 and first.json()["token"] and first.json()["takenOverFrom"] is None
    held = client.post(url, json={"holder": "run-b", "runId": "b", "ttlSeconds": 30}, headers=AUTH)
    assert held.status_code == 409 and "being deployed by run-a" in held.json()["message"]
    # the same run and principal asking again (a task retry) extends its lease, without handing out a token
    again = client.post(url, json={"holder": "run-a", "runId": "a", "ttlSeconds": 1}, headers=AUTH)
    assert again.status_code == 200 and again.json()["renewed"] is True and "token" not in again.json()
    assert again.json()["expiresAt"] >= first.json()["expiresAt"]
    time.sleep(1.2)  # run-a died: its lease expires and can be taken over
    taken = client.post(url, json={"holder": "run-b", "runId": "b", "ttlSeconds": 30}, headers=AUTH)
    assert taken.status_code == 200
    assert taken.json()["takenOverFrom"] | {"expiredAt": None} == {"holder": "run-a", "runId": "a", "expiredAt": None}
    token = taken.json()["token"]
    assert token and token != first.json()["token"]
    stale = client.post(
        f"{url}/renew", json={"ttlSeconds": 60}, headers=AUTH | {"X-Lease-Token": first.json()["token"]}
    )
    assert stale.status_code == 409
    renewed = client.post(f"{url}/renew", json={"ttlSeconds": 60}, headers=AUTH | {"X-Lease-Token": token})
    assert renewed.status_code == 200 and "token" not in renewed.json()
    assert client.get(f"/v1/models/{model}", headers=AUTH).json()["lock"]["holder"] == "run-b"
    assert client.delete(url, headers=AUTH | {"X-Lease-Token": "wrong"}).status_code == 409
    assert client.delete(url, headers=AUTH | {"X-Lease-Token": token}).status_code == 204
    assert client.get(f"/v1/models/{model}", headers=AUTH).json()["lock"] is None
    kinds = [
        e["reason"]
        for e in client.get(f"/v1/models/{model}/history", params={"kind": "lock"}, headers=AUTH).json()["events"]
    ]
    assert kinds == ["released", "acquired (expired lease taken over)", "acquired"]
