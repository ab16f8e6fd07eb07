"""Operations in the registry, against real databases (SQLite file and the stack's PostgreSQL): the health vocabulary
and the production-version rule, per-model settings and the freeze (who did it), Alertmanager's alerts with the
automatic rollback they may start, the page's "roll back to version", /metrics (parsed with prometheus_client's
parser), and migration 0003 on a database holding data."""

from __future__ import annotations

import datetime as dt
import uuid
import warnings
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from prometheus_client.parser import text_string_to_metric_families

from tfdeploy.registry import service as registry_service
from tfdeploy.registry.api import create_app
from tfdeploy.registry.auth import SERVICE
from tfdeploy.registry.config import RegistryConfig

from .test_registry_api import AUTH, TOKEN, move, register, unique

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

LINEAGE = {"interface": "ui"}  # who changed a setting: the authenticated principal (the body cannot name anyone)


class Starter:
    """A rollback starter (the plugin triggers model_rollback): records every call; raises ``failing`` if set."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.failing: Exception | None = None
        self.started: list[str] = []

    def __call__(self, *args: object) -> str:
        self.calls.append(args)
        if self.failing is not None:
            raise self.failing
        self.started.append(f"manual__2026-12-02T10:{len(self.calls) // 60:02d}:{len(self.calls) % 60:02d}+00:00")
        return self.started[-1]

    def of(self, model: str) -> list[tuple]:
        return [c for c in self.calls if c[0] == model]


@pytest.fixture(scope="module")
def starter() -> Starter:
    return Starter()


@pytest.fixture(scope="module")
def starter_to() -> Starter:
    return Starter()


@pytest.fixture(scope="module")
def client(db_url, starter, starter_to):
    app = create_app(
        RegistryConfig(db_url=db_url, api_token=TOKEN, airflow_url="http://airflow.test"),
        rollback_starter=starter,
        rollback_starter_to=starter_to,
    )
    with TestClient(app) as c:
        yield c


def health(client, model: str, version: int, status: str, **details):
    return client.post(
        f"/v1/models/{model}/health",
        json={"version": version, "target": "local", "status": status, "details": details},
        headers=AUTH,
    )


def events(client, model: str, kind: str) -> list[dict]:
    return client.get(f"/v1/models/{model}/history", params={"kind": kind}, headers=AUTH).json()["events"]


def listed(client, model: str) -> dict:
    (row,) = client.get("/v1/models", params={"q": model}, headers=AUTH).json()["models"]
    return row


# --------------------------------------------------------------------------- health


def test_unhealthy_is_accepted_as_failing(client, released):
    resp = health(client, released, 2, "unhealthy", problems=["parity off"])
    assert resp.status_code == 201, resp.text
    assert resp.json()["status"] == "failing" and resp.json()["modelHealth"] == "failing"
    (record,) = client.get(f"/v1/models/{released}/health", headers=AUTH).json()["records"]
    assert record["status"] == "failing" and record["details"] == {"problems": ["parity off"]}
    (event,) = events(client, released, "health")
    assert event["details"] == {"target": "local", "status": "failing", "production": True, "given": "unhealthy"}
    for status in ("healthy", "degraded", "failing", "unknown"):
        assert health(client, released, 2, status).json()["status"] == status
    bad = health(client, released, 2, "sick")
    assert bad.status_code == 422 and "healthy, degraded, failing, unknown" in bad.json()["message"]


def test_a_failing_candidate_does_not_make_the_model_failing(client, released):
    assert health(client, released, 2, "healthy").status_code == 201
    assert health(client, released, 3, "unhealthy", problems=["noisy answers"]).status_code == 201  # smoke of v3
    detail = client.get(f"/v1/models/{released}", headers=AUTH).json()
    assert detail["health"] == "healthy" and listed(client, released)["health"] == "healthy"
    assert detail["productionHealth"]["version"] == 2 and detail["productionHealth"]["status"] == "healthy"
    body = client.get(f"/v1/models/{released}/health", headers=AUTH).json()
    assert (body["status"], body["productionVersion"], body["latest"]["version"]) == ("healthy", 2, 2)
    assert [(r["version"], r["status"]) for r in body["records"]] == [(3, "failing"), (2, "healthy")]
    only_v3 = client.get(f"/v1/models/{released}/health", params={"version": 3}, headers=AUTH).json()["records"]
    assert [(r["version"], r["status"]) for r in only_v3] == [(3, "failing")]
    assert events(client, released, "health")[0]["details"]["production"] is False

    # v3 is promoted: the model's health is now v3's latest check; rolled back: v2's again
    move(client, released, 3, "production")
    assert client.get(f"/v1/models/{released}", headers=AUTH).json()["health"] == "failing"
    assert health(client, released, 3, "degraded").json()["modelHealth"] == "degraded"
    assert listed(client, released)["health"] == "degraded"
    move(client, released, 3, "rolled_back")
    assert client.get(f"/v1/models/{released}", headers=AUTH).json()["health"] is None  # nothing in production
    move(client, released, 2, "production")
    detail = client.get(f"/v1/models/{released}", headers=AUTH).json()
    assert (detail["version"], detail["health"]) == (2, "healthy")


def test_no_production_version_no_model_health(client):
    model = unique("fresh")
    register(client, model, 1)
    assert health(client, model, 1, "healthy").json()["modelHealth"] is None
    detail = client.get(f"/v1/models/{model}", headers=AUTH).json()
    assert detail["health"] is None and detail["productionHealth"] is None
    body = client.get(f"/v1/models/{model}/health", headers=AUTH).json()
    assert body["status"] is None and body["latest"] is None and len(body["records"]) == 1


# --------------------------------------------------------------------------- settings and freeze


def test_settings_are_recorded_with_the_authenticated_actor(client, released):
    url = f"/v1/models/{released}/settings"
    assert client.get(url, headers=AUTH).json() == {
        "modelName": released,
        "autoRollbackOnFailing": False,
        "requireApproval": False,
        "frozen": False,
        "frozenReason": None,
        "frozenBy": None,
        "frozenAt": None,
    }
    resp = client.patch(
        url, json={"autoRollbackOnFailing": True, "reason": "pager duty", "context": LINEAGE}, headers=AUTH
    )
    assert resp.status_code == 200, resp.text
    assert (resp.json()["autoRollbackOnFailing"], resp.json()["requireApproval"]) == (True, False)
    both = client.patch(
        url, json={"autoRollbackOnFailing": True, "requireApproval": True, "reason": "audit"}, headers=AUTH
    )
    assert both.json()["requireApproval"] is True
    detail = client.get(f"/v1/models/{released}", headers=AUTH).json()["settings"]
    assert detail == {k: v for k, v in both.json().items() if k != "modelName"}
    second, first = events(client, released, "settings")
    assert first["details"] == {"changes": {"autoRollbackOnFailing": {"from": False, "to": True}}, "who": SERVICE}
    assert (first["actor"], first["principal"], first["interface"], first["reason"]) == (
        SERVICE,
        SERVICE,
        "ui",
        "pager duty",
    )
    assert second["details"]["changes"] == {"requireApproval": {"from": False, "to": True}}  # only what changed
    # the same values again: nothing changed, nothing recorded
    assert client.patch(url, json={"requireApproval": True, "reason": "again"}, headers=AUTH).status_code == 200
    assert len(events(client, released, "settings")) == 2


def test_settings_validation(client, released):
    url = f"/v1/models/{released}/settings"
    for body, words in (
        ({"reason": "nothing"}, "nothing to change"),
        ({"autoRollbackOnFailing": True}, "reason"),
        ({"autoRollbackOnFailing": True, "reason": "  "}, "reason"),
        ({"autoRollbackOnFailing": "maybe", "reason": "x"}, "autoRollbackOnFailing"),
        ({"frozen": True, "reason": "x"}, "frozen"),  # the freeze has its own endpoint
    ):
        resp = client.patch(url, json=body, headers=AUTH)
        assert resp.status_code == 422 and words in resp.json()["message"], (body, resp.text)
    assert client.patch(url, json={"requireApproval": True, "reason": "x"}).status_code == 401
    assert (
        client.patch(
            "/v1/models/no-such-model/settings", json={"requireApproval": True, "reason": "x"}, headers=AUTH
        ).status_code
        == 404
    )
    assert events(client, released, "settings") == []


def test_freeze_and_unfreeze_with_who_and_why(client, released):
    client.put(
        f"/v1/models/{released}/traffic",
        json={"stableVersion": 2, "canaryVersion": 3, "canaryWeight": 10},
        headers=AUTH,
    )
    url = f"/v1/models/{released}/freeze"
    resp = client.post(url, json={"reason": "incident 42", "context": LINEAGE}, headers=AUTH)
    assert resp.status_code == 200, resp.text  # a release in progress does not prevent it (it goes on)
    frozen = resp.json()
    assert (frozen["frozen"], frozen["frozenBy"], frozen["frozenReason"]) == (True, SERVICE, "incident 42")
    assert frozen["frozenAt"].endswith("Z")
    again = client.post(url, json={"reason": "me too"}, headers=AUTH).json()  # already frozen: a no-op
    assert (again["frozenReason"], again["frozenAt"]) == ("incident 42", frozen["frozenAt"])
    assert client.get(f"/v1/models/{released}", headers=AUTH).json()["settings"]["frozen"] is True

    assert client.delete(url, headers=AUTH).status_code == 422  # a reason is required
    resp = client.delete(url, params={"reason": "fixed", "actor": "mallory", "interface": "ui"}, headers=AUTH)
    assert resp.status_code == 200
    assert resp.json() | {"modelName": None} == {
        "modelName": None,
        "autoRollbackOnFailing": False,
        "requireApproval": False,
        "frozen": False,
        "frozenReason": None,
        "frozenBy": None,
        "frozenAt": None,
    }
    assert client.delete(url, params={"reason": "again"}, headers=AUTH).status_code == 200  # not frozen: a no-op
    (freeze,) = events(client, released, "freeze")
    (unfreeze,) = events(client, released, "unfreeze")
    assert (freeze["actor"], freeze["reason"], freeze["details"]) == (
        SERVICE,
        "incident 42",
        {"who": SERVICE, "releaseInProgress": True},
    )
    assert (unfreeze["actor"], unfreeze["interface"], unfreeze["reason"]) == (SERVICE, "ui", "fixed")
    assert unfreeze["details"] | {"frozenAt": None} == {
        "who": SERVICE,
        "frozenBy": SERVICE,
        "frozenReason": "incident 42",
        "frozenAt": None,
    }
    resp = client.post(url, json={"reason": ""}, headers=AUTH)
    assert resp.status_code == 422 and "reason" in resp.json()["message"]
    assert client.post(url, json={"reason": "x"}).status_code == 401


# --------------------------------------------------------------------------- alerts


def am_alert(
    model: str | None,
    *,
    name: str = "ModelFailing",
    severity: str | None = "critical",
    status: str = "firing",
    fingerprint: str | None = None,
    starts: str = "2026-12-02T10:00:00.123456789Z",
    summary: str = "v2 answers wrongly",
    label: str = "model",
) -> dict:
    labels = {"alertname": name, "instance": "127.0.0.1:8511"}
    if severity:
        labels["severity"] = severity
    if model:
        labels[label] = model
    return {
        "status": status,
        "labels": labels,
        "annotations": {"summary": summary, "description": "golden predict differs"},
        "startsAt": starts,
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-12-02T10:05:00Z",
        "generatorURL": "http://127.0.0.1:9090/graph?g0.expr=up",
        "fingerprint": fingerprint or uuid.uuid4().hex[:16],
    }


def notify(client, *alerts: dict, headers: dict | None = None):
    """Alertmanager's webhook notification (version 4), as it posts it."""
    body = {
        "version": "4",
        "groupKey": '{}:{alertname="ModelFailing"}',
        "truncatedAlerts": 0,
        "status": alerts[0]["status"] if alerts else "firing",
        "receiver": "tfdeploy-registry",
        "groupLabels": {"alertname": "ModelFailing"},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:9093",
        "alerts": list(alerts),
    }
    return client.post("/v1/alerts", json=body, headers=AUTH if headers is None else headers)


def enable_auto_rollback(client, model: str, on: bool = True) -> None:
    resp = client.patch(
        f"/v1/models/{model}/settings", json={"autoRollbackOnFailing": on, "reason": "test"}, headers=AUTH
    )
    assert resp.status_code == 200, resp.text


def test_alerts_are_recorded_and_appended_to_the_history(client, released, starter):
    firing = am_alert(released, severity="warning", fingerprint="fp-" + released)
    resp = notify(client, firing)
    assert resp.status_code == 200, resp.text
    (out,) = resp.json()["alerts"]
    assert resp.json()["received"] == 1
    assert (out["modelName"], out["alertname"], out["severity"], out["status"], out["recorded"]) == (
        released,
        "ModelFailing",
        "warning",
        "firing",
        "new",
    )
    assert (out["startsAt"], out["endsAt"], out["autoRollback"]) == ("2026-12-02T10:00:00.123456Z", None, None)
    assert out["receiver"] == "tfdeploy-registry" and out["generatorUrl"].startswith("http://127.0.0.1:9090")
    (event,) = events(client, released, "alert")
    assert (event["actor"], event["principal"], event["reason"]) == (
        SERVICE,
        SERVICE,
        "ModelFailing firing: v2 answers wrongly",
    )
    assert event["details"]["fingerprint"] == "fp-" + released and event["details"]["alertId"] == out["id"]

    # Alertmanager sends a firing alert again at every group interval: recorded once
    assert notify(client, firing).json()["alerts"][0]["recorded"] == "repeated"
    assert len(events(client, released, "alert")) == 1
    resolved = am_alert(released, severity="warning", fingerprint="fp-" + released, status="resolved")
    assert notify(client, resolved).json()["alerts"][0]["recorded"] == "changed"
    alerts = client.get(f"/v1/models/{released}/alerts", headers=AUTH).json()
    assert [(a["status"], a["endsAt"]) for a in alerts["alerts"]] == [("resolved", "2026-12-02T10:05:00Z")]
    assert [e["details"]["status"] for e in events(client, released, "alert")] == ["resolved", "firing"]
    assert starter.of(released) == []


def test_alert_without_a_model_or_for_an_unknown_one(client):
    anonymous = notify(client, am_alert(None, name="ReplicaDown", severity="critical")).json()["alerts"][0]
    assert anonymous["modelName"] is None and anonymous["recorded"] == "new"
    stranger = unique("unregistered")
    by_name = notify(client, am_alert(stranger, label="model_name")).json()["alerts"][0]
    assert by_name["modelName"] == stranger  # labels.model_name works too; no history: the model is not registered
    listed_ = client.get("/v1/alerts", params={"model": stranger}, headers=AUTH).json()
    assert [a["fingerprint"] for a in listed_["alerts"]] == [by_name["fingerprint"]] and listed_["total"] == 1
    assert client.get(f"/v1/models/{stranger}/alerts", headers=AUTH).status_code == 404
    everything = client.get("/v1/alerts", params={"status": "firing", "limit": 1000}, headers=AUTH).json()
    assert anonymous["id"] in [a["id"] for a in everything["alerts"]]
    assert all(a["status"] == "firing" for a in everything["alerts"])
    assert client.get("/v1/alerts", params={"status": "gone"}, headers=AUTH).status_code == 422


def test_open_alerts_first(client, released):
    old = am_alert(released, name="Old", severity="warning", starts="2026-12-01T09:00:00Z", status="resolved")
    new = am_alert(released, name="New", severity="warning", starts="2026-12-02T09:00:00Z", status="resolved")
    open_ = am_alert(released, name="Open", severity="warning", starts="2026-11-30T09:00:00Z")
    assert notify(client, old, new, open_).json()["received"] == 3
    body = client.get(f"/v1/models/{released}/alerts", headers=AUTH).json()
    assert [a["alertname"] for a in body["alerts"]] == ["Open", "New", "Old"]
    assert client.get(f"/v1/models/{released}", headers=AUTH).json()["openAlerts"] == 1
    firing = client.get(f"/v1/models/{released}/alerts", params={"status": "firing"}, headers=AUTH).json()
    assert [a["alertname"] for a in firing["alerts"]] == ["Open"]


def test_alert_payload_validation_and_auth(client):
    assert notify(client, am_alert(None), headers={}).status_code == 401
    assert notify(client, am_alert(None), headers={"Authorization": "Bearer forged"}).status_code == 403
    bad = am_alert(None) | {"status": "pending"}
    resp = notify(client, bad)
    assert resp.status_code == 422 and "status" in resp.json()["message"]
    no_start = {k: v for k, v in am_alert(None).items() if k != "startsAt"}
    assert notify(client, no_start).status_code == 422


def test_a_critical_alert_starts_one_automatic_rollback_per_ten_minutes(client, released, starter, db_url):
    enable_auto_rollback(client, released)
    first = am_alert(released, fingerprint="a-" + released, summary="golden predict differs on v2")
    resp = notify(client, first)
    assert resp.status_code == 200, resp.text
    auto = resp.json()["alerts"][0]["autoRollback"]
    assert starter.of(released) == [(released, "automatic: ModelFailing: golden predict differs on v2")]
    run_id = starter.started[-1]
    assert auto == {
        "status": "started",
        "runId": run_id,
        "note": "automatic: ModelFailing: golden predict differs on v2",
    }
    (event,) = events(client, released, "auto_rollback")
    assert (event["dagId"], event["runId"], event["version"], event["actor"]) == (
        "model_rollback",
        run_id,
        1,
        SERVICE,
    )
    assert event["details"] | {"alertId": None} == {
        "alertId": None,
        "alertname": "ModelFailing",
        "severity": "critical",
        "fingerprint": "a-" + released,
        "fromVersion": 2,
        "started": True,
        "toVersion": 1,
        "status": "started",
        "dagId": "model_rollback",
        "runId": run_id,
    }

    # the same alert again (Alertmanager repeats it), and another alert within 10 minutes: no second rollback
    assert notify(client, first).json()["alerts"][0]["autoRollback"]["status"] == "started"
    other = notify(client, am_alert(released, name="ErrorBudget", fingerprint="b-" + released)).json()["alerts"][0]
    assert other["autoRollback"] == {
        "status": "deduplicated",
        "runId": run_id,
        "note": f"auto-rollback already started: run {run_id}",
    }
    assert len(starter.of(released)) == 1
    dedup = events(client, released, "auto_rollback")[0]
    assert dedup["reason"] == f"auto-rollback already started: run {run_id}" and dedup["runId"] == run_id
    assert notify(client, am_alert(released, name="ErrorBudget", fingerprint="b-" + released)).status_code == 200
    assert len(events(client, released, "auto_rollback")) == 2  # a repeat of the deduplicated one adds nothing

    # 11 minutes later (moved back in the database), a new critical alert starts another
    engine = sa.create_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE alerts SET rollback_started_at = :t WHERE model = :m AND rollback_status = 'started'"),
                {"t": dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(minutes=11), "m": released},
            )
    finally:
        engine.dispose()
    later = notify(client, am_alert(released, name="P99", fingerprint="c-" + released)).json()["alerts"][0]
    assert later["autoRollback"]["status"] == "started" and len(starter.of(released)) == 2


def test_no_automatic_rollback_when_off_not_critical_or_resolved(client, released, starter):
    assert notify(client, am_alert(released)).json()["alerts"][0]["autoRollback"] is None  # setting off
    enable_auto_rollback(client, released)
    canary_pool = am_alert(released, name="ModelErrorRateHigh")
    canary_pool["labels"]["pool"] = "canary"  # the candidate's failure: the gray release acts on it
    candidate = am_alert(released)
    candidate["labels"]["version"] = "3"
    for alert in (
        am_alert(released, severity="warning"),
        am_alert(released, severity=None),
        am_alert(released, status="resolved"),
        canary_pool,
        candidate,
    ):
        assert notify(client, alert).json()["alerts"][0]["autoRollback"] is None
    enable_auto_rollback(client, released, on=False)
    assert notify(client, am_alert(released)).json()["alerts"][0]["autoRollback"] is None
    assert starter.of(released) == [] and events(client, released, "auto_rollback") == []


def test_no_earlier_version_no_rollback_possible(client, starter):
    model = unique("only")
    register(client, model, 1)
    move(client, model, 1, "validated", "canary", "production")
    enable_auto_rollback(client, model)
    out = notify(client, am_alert(model)).json()["alerts"][0]
    assert out["autoRollback"] == {
        "status": "declined",
        "runId": None,
        "note": f"no rollback possible: {model} has no earlier production version (none superseded) to go back to",
    }
    assert starter.of(model) == []
    (event,) = events(client, model, "auto_rollback")
    assert event["reason"].startswith("no rollback possible") and event["details"]["started"] is False


def test_a_failing_starter_is_a_clear_error_and_the_alert_is_still_recorded(client, released, starter):
    enable_auto_rollback(client, released)
    starter.failing = RuntimeError("model_rollback is paused in Airflow: unpause the DAG, then retry")
    try:
        resp = notify(client, am_alert(released, fingerprint="f-" + released))
    finally:
        starter.failing = None
    assert resp.status_code == 502, resp.text
    body = resp.json()
    assert body["error"] == "RollbackNotStarted"
    assert body["message"] == (
        f"the alert was recorded, but the automatic rollback of {released} could not be started: RuntimeError: "
        "model_rollback is paused in Airflow: unpause the DAG, then retry"
    )
    (out,) = body["alerts"]
    assert out["recorded"] == "new" and out["autoRollback"]["status"] == "failed"
    stored = client.get(f"/v1/models/{released}/alerts", headers=AUTH).json()["alerts"]
    assert [(a["fingerprint"], a["autoRollback"]["status"]) for a in stored] == [("f-" + released, "failed")]
    assert len(events(client, released, "alert")) == 1
    (failed,) = events(client, released, "auto_rollback")
    assert failed["details"]["started"] is False and "paused" in failed["details"]["error"]
    # Alertmanager retries a 5xx: the redelivery tries again, and now it starts
    again = notify(client, am_alert(released, fingerprint="f-" + released))
    assert again.status_code == 200 and again.json()["alerts"][0]["autoRollback"]["status"] == "started"
    assert len(starter.of(released)) == 2 and len(events(client, released, "alert")) == 1


def test_without_a_starter_the_alert_is_recorded_and_the_answer_says_why(db_url, released):
    with TestClient(create_app(RegistryConfig(db_url=db_url, api_token=TOKEN))) as plain:
        enable_auto_rollback(plain, released)
        resp = notify(plain, am_alert(released))
        assert resp.status_code == 502 and "cannot start Airflow runs" in resp.json()["message"]
        assert plain.get(f"/v1/models/{released}/alerts", headers=AUTH).json()["total"] == 1
        rollback = plain.post(f"/v1/models/{released}/rollback", json={"version": 1, "reason": "bad"}, headers=AUTH)
        assert rollback.status_code == 502 and rollback.json()["error"] == "RollbackNotStarted"


# --------------------------------------------------------------------------- roll back to a chosen version


def test_roll_back_to_a_version_starts_model_rollback(client, released, starter_to):
    url = f"/v1/models/{released}/rollback"
    resp = client.post(url, json={"version": 1, "reason": "p99 regression", "context": LINEAGE}, headers=AUTH)
    assert resp.status_code == 202, resp.text
    run_id = resp.json()["runId"]
    assert resp.json() == {
        "modelName": released,
        "version": 1,
        "fromVersion": 2,
        "dagId": "model_rollback",
        "runId": run_id,
    }
    assert starter_to.of(released) == [(released, 1, "p99 regression")]
    (event,) = events(client, released, "rollback")
    assert (event["actor"], event["interface"], event["dagId"], event["runId"], event["version"]) == (
        SERVICE,
        "ui",
        "model_rollback",
        run_id,
        1,
    )
    assert event["details"] == {
        "dagId": "model_rollback",
        "runId": run_id,
        "fromVersion": 2,
        "toVersion": 1,
        "who": SERVICE,
    }

    for version, status, words in ((2, 409, "already in production"), (3, 409, "canary"), (9, 404, "no version 9")):
        resp = client.post(url, json={"version": version, "reason": "because"}, headers=AUTH)
        assert resp.status_code == status and words in resp.json()["message"], resp.text
    resp = client.post(url, json={"version": 1, "reason": "no"}, headers=AUTH)
    assert resp.status_code == 422 and "reason" in resp.json()["message"]
    starter_to.failing = LookupError("the model_rollback DAG is not in Airflow")
    try:
        resp = client.post(url, json={"version": 1, "reason": "again"}, headers=AUTH)
    finally:
        starter_to.failing = None
    assert resp.status_code == 502 and resp.json()["error"] == "RollbackNotStarted"
    assert "LookupError: the model_rollback DAG is not in Airflow" in resp.json()["message"]
    assert len(events(client, released, "rollback")) == 1 and len(starter_to.of(released)) == 2


# --------------------------------------------------------------------------- /metrics


def scrape(client, **kwargs) -> dict[str, dict[tuple, float]]:
    resp = client.get("/metrics", **kwargs)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_metrics_exposition(client, released):
    model = released
    client.put(f"/v1/models/{model}/deployments/local/stable", json={"version": 2}, headers=AUTH)
    client.put(f"/v1/models/{model}/deployments/local/canary", json={"version": 3}, headers=AUTH)
    health(client, model, 2, "degraded")
    register(client, model, 4)
    lock = client.post(f"/v1/models/{model}/lock", json={"holder": "a", "runId": "a", "ttlSeconds": 60}, headers=AUTH)
    for _ in range(2):
        refused = client.post(f"/v1/models/{model}/lock", json={"holder": "b", "runId": "b"}, headers=AUTH)
        assert refused.status_code == 409
    released_lock = client.delete(f"/v1/models/{model}/lock", headers=AUTH | {"X-Lease-Token": lock.json()["token"]})
    assert released_lock.status_code == 204
    client.post(f"/v1/models/{model}/freeze", json={"reason": "metrics"}, headers=AUTH)
    rolled = unique("rolled")
    register(client, rolled, 1)
    move(client, rolled, 1, "validated", "canary", "rolled_back")

    m = scrape(client)  # no token: public by default
    lab = lambda **kw: tuple(sorted(kw.items()))  # noqa: E731
    assert m["tfdeploy_registry_versions"][lab(model=model, state="superseded")] == 1
    assert m["tfdeploy_registry_versions"][lab(model=model, state="production")] == 1
    assert m["tfdeploy_registry_versions"][lab(model=model, state="canary")] == 1
    assert m["tfdeploy_registry_versions"][lab(model=model, state="registered")] == 1
    assert m["tfdeploy_registry_deployments"][lab(model=model, target="local", label="stable")] == 2
    assert m["tfdeploy_registry_deployments"][lab(model=model, target="local", label="canary")] == 3
    assert m["tfdeploy_registry_rollbacks_total"][lab(model=model)] == 0
    assert m["tfdeploy_registry_rollbacks_total"][lab(model=rolled)] == 1
    assert m["tfdeploy_registry_lock_acquisitions_total"][lab(model=model)] == 1
    assert m["tfdeploy_registry_lock_waits_total"][lab(model=model)] == 2
    health_of = {k: v for k, v in m["tfdeploy_registry_model_health"].items() if dict(k)["model"] == model}
    assert health_of == {
        lab(model=model, status=s): float(s == "degraded") for s in ("healthy", "degraded", "failing", "unknown")
    }
    assert not any(dict(k)["model"] == rolled for k in m["tfdeploy_registry_model_health"])  # nothing in production
    assert m["tfdeploy_registry_model_frozen"][lab(model=model)] == 1
    assert m["tfdeploy_registry_model_frozen"][lab(model=rolled)] == 0
    ages = m["tfdeploy_registry_version_state_age_seconds"]
    assert 0 <= ages[lab(model=model, version="3", state="canary")] < 120
    assert 0 <= ages[lab(model=model, version="4", state="registered")] < 120
    assert not any(dict(k)["model"] == model and dict(k)["state"] == "production" for k in ages)


def test_metrics_need_a_token_unless_public(db_url):
    app = create_app(RegistryConfig(db_url=db_url, api_token=TOKEN, public_metrics=False))
    with TestClient(app) as private:
        assert private.get("/metrics").status_code == 401
        assert "tfdeploy_registry_versions" in scrape(private, headers=AUTH)


def test_metrics_count_every_model(client):
    """A scrape is one read of the database whatever the number of models (no per-model queries)."""
    names = [unique("many") for _ in range(30)]
    for name in names:
        register(client, name, 1)
    frozen = scrape(client)["tfdeploy_registry_model_frozen"]
    assert all((("model", n),) in frozen for n in names)


# --------------------------------------------------------------------------- migration 0003


def test_migration_0003_upgrades_a_database_with_data(old_db_url):
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(registry_service.__file__).parent / "migrations"))
    cfg.set_main_option("sqlalchemy.url", old_db_url.replace("%", "%%"))
    command.upgrade(cfg, "0002")
    engine = sa.create_engine(old_db_url)
    try:
        with engine.begin() as conn:
            run = conn.exec_driver_sql
            run(
                "INSERT INTO models (id, name, description, created_at, updated_at, production_version, "
                "canary_version, health_status, latest_version) VALUES (1, 'demo_regressor', '', '2026-11-01', "
                "'2026-11-02', 2, 3, 'unhealthy', 3), "
                "(2, 'idle', '', '2026-11-01', '2026-11-01', NULL, NULL, 'healthy', 1)"
            )
            for vid, model_id, version, state in (
                (1, 1, 1, "superseded"),
                (2, 1, 2, "production"),
                (3, 1, 3, "canary"),
                (4, 2, 1, "validated"),
            ):
                run(
                    "INSERT INTO model_versions (id, model_id, version, state, row_version, hdfs_uri, "
                    "manifest_sha256, source, signatures, metrics, validation_report, created_by, interface, dag_id, "
                    f"run_id, created_at, updated_at) VALUES ({vid}, {model_id}, {version}, '{state}', 1, '', '', '', "
                    "'{}', '{}', '{}', '', '', '', '', '2026-11-01', '2026-11-05')"
                )
            # v2 (production) healthy; v3, the noisy canary, failed its smoke test later ("unhealthy")
            for rid, version, status, at in (
                (1, 2, "healthy", "2026-11-03"),
                (2, 3, "unhealthy", "2026-11-04"),
                (3, 1, "unhealthy", "2026-11-02"),
            ):
                run(
                    "INSERT INTO health_records (id, model_id, version, target, status, details, actor, recorded_at) "
                    f"VALUES ({rid}, 1, {version}, 'local', '{status}', '{{}}', 'smoke', '{at}')"
                )
            run(
                "INSERT INTO history (at, model_name, version, kind, from_state, to_state, actor, principal, "
                "interface, dag_id, run_id, task_id, reason, details) VALUES ('2026-11-03 12:00:00', "
                "'demo_regressor', 3, 'transition', 'validated', 'canary', 'a', 'a', 'pipeline', '', '', '', '', '{}')"
            )
        registry_service.migrate(old_db_url)  # what the app does on first use
        with engine.connect() as conn:
            q = lambda sql: conn.exec_driver_sql(sql).all()  # noqa: E731
            assert q("SELECT version, status FROM health_records ORDER BY id") == [
                (2, "healthy"),
                (3, "failing"),
                (1, "failing"),
            ]
            # the model's health is its production version's (v2: healthy), not the failed candidate's
            assert q("SELECT name, health_status FROM models ORDER BY id") == [
                ("demo_regressor", "healthy"),
                ("idle", None),
            ]
            settings = q(
                "SELECT auto_rollback_on_failing, require_approval, frozen, frozen_reason, lock_refusals FROM models"
            )
            assert [tuple(bool(x) if i < 3 else x for i, x in enumerate(r)) for r in settings] == [
                (False, False, False, "", 0)
            ] * 2
            since = dict(q("SELECT id, state_changed_at FROM model_versions"))
            assert str(since[3]).startswith("2026-11-03 12:00") and str(since[2]).startswith("2026-11-05")
            assert q("SELECT count(*) FROM alerts") == [(0,)]
        svc = registry_service.RegistryService(old_db_url)
        assert svc.get_model("demo_regressor")["health"] == "healthy"
        assert svc.settings("demo_regressor")["frozen"] is False
        registry_service.db.engine_for(old_db_url).dispose()
        command.downgrade(cfg, "0002")
        assert "alerts" not in sa.inspect(engine).get_table_names()
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT status FROM health_records ORDER BY id").scalars().all() == [
                "healthy",
                "unhealthy",
                "unhealthy",
            ]
    finally:
        engine.dispose()
