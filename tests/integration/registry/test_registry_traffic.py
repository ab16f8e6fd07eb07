"""Gray releases in the registry: the traffic split, the operator's release controls (pause, resume, promote now,
abort), the pending action the pipeline clears, and the rate limit with its router sink; against real databases
(SQLite file and the stack's PostgreSQL), and through the RegistryHook over HTTP."""

from __future__ import annotations

import json
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
import uvicorn
from alembic import command
from alembic.config import Config
from fastapi import FastAPI

from tfdeploy.core.errors import Conflict, InvalidRequest, NotFound, RegistryUnavailable, RouterError
from tfdeploy.hooks.registry import RegistryHook, Traffic
from tfdeploy.registry import service as registry_service
from tfdeploy.registry.api import create_app
from tfdeploy.registry.auth import SERVICE
from tfdeploy.registry.config import RegistryConfig

from .test_registry_api import AUTH, TOKEN, move, register, run_lookup, unique

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

# the pipeline's context (lineage.run_context): alice triggered run manual__7 through the REST API (run_lookup)
LINEAGE = {"interface": "pipeline", "dagId": "model_deploy", "runId": "manual__7", "taskId": "shift"}
LIST_KEYS = {"modelName", "version", "canaryVersion", "latestVersion", "health", "updatedAt"}


class Sink:
    """The router's rate-limit sink: records every call; raises RouterError while ``failing``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float | None]] = []
        self.failing = False

    def __call__(self, model: str, rps: float | None) -> None:
        self.calls.append((model, rps))
        if self.failing:
            raise RouterError("HAProxy runtime API refused the change: connection refused")


@pytest.fixture(scope="module")
def sink() -> Sink:
    return Sink()


@pytest.fixture(scope="module")
def client(db_url, sink):
    app = create_app(RegistryConfig(db_url=db_url, api_token=TOKEN), rate_limit_sink=sink, run_lookup=run_lookup)
    with TestClient(app) as c:
        yield c


@pytest.fixture
def released(client) -> str:
    """A model with v1 in production and v2 as its canary (no traffic split set yet)."""
    model = unique("gray")
    register(client, model, 1)
    move(client, model, 1, "validated", "canary", "production")
    register(client, model, 2)
    move(client, model, 2, "validated", "canary")
    return model


def put_traffic(client, model: str, stable: int | None, canary: int | None, weight: int = 0, **body):
    payload = {"stableVersion": stable, "canaryVersion": canary, "canaryWeight": weight, "context": LINEAGE, **body}
    return client.put(f"/v1/models/{model}/traffic", json=payload, headers=AUTH)


def control(client, model: str, action: str, reason: str = "looks off", **body):
    return client.post(f"/v1/models/{model}/release", json={"action": action, "reason": reason, **body}, headers=AUTH)


def traffic(client, model: str) -> dict:
    resp = client.get(f"/v1/models/{model}/traffic", headers=AUTH)
    assert resp.status_code == 200, resp.text
    return resp.json()


def events(client, model: str, kind: str) -> list[dict]:
    return client.get(f"/v1/models/{model}/history", params={"kind": kind}, headers=AUTH).json()["events"]


def split(stable: int | None, stable_weight: int, canary: int | None, canary_weight: int) -> dict:
    return {
        "stable": {"version": stable, "weight": stable_weight},
        "canary": {"version": canary, "weight": canary_weight},
    }


# --------------------------------------------------------------------------- the traffic split


def test_without_a_split_the_production_version_takes_every_call(client, released):
    detail = client.get(f"/v1/models/{released}", headers=AUTH).json()
    assert detail["traffic"] == {
        "stable": {"version": 1, "weight": 100},
        "canary": None,
        "paused": False,
        "pendingAction": None,
        "updatedAt": None,
        "updatedBy": None,
    }
    assert detail["rateLimitRps"] is None
    assert traffic(client, released) == detail["traffic"]
    fresh = unique("fresh")
    register(client, fresh, 1)  # nothing in production: the stable side has no version and no weight
    assert traffic(client, fresh)["stable"] == {"version": None, "weight": 0}


def test_set_traffic_steps_and_history(client, released):
    resp = put_traffic(client, released, 1, 2, 10, reason="canary step 1")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body | {"updatedAt": None} == {
        "stable": {"version": 1, "weight": 90},
        "canary": {"version": 2, "weight": 10},
        "paused": False,
        "pendingAction": None,
        "updatedAt": None,
        "updatedBy": "alice",
    }
    assert body["updatedAt"].endswith("Z")
    assert put_traffic(client, released, 1, 2, 50, reason="canary step 2").json()["canary"] == {
        "version": 2,
        "weight": 50,
    }
    detail = client.get(f"/v1/models/{released}", headers=AUTH).json()
    assert detail["traffic"] == traffic(client, released)
    assert (detail["traffic"]["stable"], detail["traffic"]["canary"]) == (
        {"version": 1, "weight": 50},
        {"version": 2, "weight": 50},
    )

    step2, step1 = events(client, released, "traffic")
    assert step1["details"] == split(1, 90, 2, 10) | {"previous": split(1, 100, None, 0), "reason": "canary step 1"}
    assert step2["details"] == split(1, 50, 2, 50) | {"previous": split(1, 90, 2, 10), "reason": "canary step 2"}
    # who: the run's triggering user and how the run was started (looked up), the service token as principal
    assert (step2["actor"], step2["principal"], step2["interface"]) == ("alice", SERVICE, "rest_api")
    assert (step2["dagId"], step2["runId"], step2["taskId"], step2["reason"]) == (
        "model_deploy",
        "manual__7",
        "shift",
        "canary step 2",
    )

    # the release is over: v2 is the stable version alone
    done = put_traffic(client, released, 2, None, 0, reason="promoted").json()
    assert (done["stable"], done["canary"]) == ({"version": 2, "weight": 100}, None)


def test_traffic_validation_errors_change_nothing(client, released):
    assert put_traffic(client, released, 1, 2, 10).status_code == 200
    before = traffic(client, released)
    for weight in (101, -1):
        resp = put_traffic(client, released, 1, 2, weight)
        assert resp.status_code == 422 and resp.json()["error"] == "InvalidRequest"
        assert "canaryWeight" in resp.json()["message"], resp.text
    resp = put_traffic(client, released, 1, None, 10)
    assert resp.status_code == 422 and "canaryWeight 10 needs a canaryVersion" in resp.json()["message"]
    resp = put_traffic(client, released, 1, 9, 10)
    assert (
        resp.status_code == 404 and resp.json()["error"] == "NotFound" and "has no version 9" in resp.json()["message"]
    )
    resp = put_traffic(client, released, 7, 2, 10)
    assert resp.status_code == 404 and "has no version 7" in resp.json()["message"]
    resp = put_traffic(client, released, 2, 2, 10)
    assert resp.status_code == 422 and "canaryVersion and stableVersion are both 2" in resp.json()["message"]
    resp = client.put(f"/v1/models/{released}/traffic", json={"canaryWeight": 10}, headers=AUTH)
    assert resp.status_code == 422 and "stableVersion" in resp.json()["message"]
    assert put_traffic(client, "no-such-model", 1, None).status_code == 404
    assert traffic(client, released) == before
    assert len(events(client, released, "traffic")) == 1


def test_the_database_refuses_an_invalid_split(client, released, db_url):
    assert put_traffic(client, released, 1, 2, 10).status_code == 200
    engine = sa.create_engine(db_url)
    try:
        row = f"model_id = (SELECT id FROM models WHERE name = '{released}')"
        for change in ("canary_weight = 101", "canary_weight = -1", "canary_version = NULL", "pending_action = 'x'"):
            with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
                conn.exec_driver_sql(f"UPDATE traffic SET {change} WHERE {row}")
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- release controls


def test_controls_need_a_release_in_progress(client, released):
    resp = control(client, released, "pause")
    assert resp.status_code == 409 and resp.json()["error"] == "Conflict"
    assert f"no release of {released} is in progress" in resp.json()["message"]
    put_traffic(client, released, 2, None, 0)  # a split without a canary: still no release
    assert control(client, released, "abort").status_code == 409
    assert control(client, "no-such-model", "pause").status_code == 404
    assert events(client, released, "release_control") == []


def test_pause_resume_promote_abort_and_who_did_it(client, released):
    put_traffic(client, released, 1, 2, 25)
    # who did it: the authenticated principal (the body cannot name anyone)
    resp = control(client, released, "pause", "p99 up 30%", context={"interface": "ui"})
    assert resp.status_code == 200, resp.text
    assert resp.json() | {"updatedAt": None} == {
        "stable": {"version": 1, "weight": 75},
        "canary": {"version": 2, "weight": 25},
        "paused": True,
        "pendingAction": None,
        "updatedAt": None,
        "updatedBy": SERVICE,
    }
    assert control(client, released, "resume", "false alarm").json()["paused"] is False
    assert control(client, released, "promote", "looks good").json()["pendingAction"] == "promote"
    after = control(client, released, "abort", "changed my mind").json()  # the last one wins
    assert (after["pendingAction"], after["paused"]) == ("abort", False)
    assert traffic(client, released) == after

    abort, promote, resume, pause = events(client, released, "release_control")
    assert pause["details"] == {
        "action": "pause",
        "reason": "p99 up 30%",
        "who": SERVICE,
        "paused": True,
        "pendingAction": None,
        "previous": {"paused": False, "pendingAction": None},
    }
    assert (pause["actor"], pause["principal"], pause["interface"], pause["reason"], pause["version"]) == (
        SERVICE,
        SERVICE,
        "ui",
        "p99 up 30%",
        2,
    )
    assert [e["details"]["action"] for e in (resume, promote, abort)] == ["resume", "promote", "abort"]
    assert abort["details"]["previous"] == {"paused": False, "pendingAction": "promote"}
    assert abort["reason"] == "changed my mind"


def test_control_validation(client, released):
    put_traffic(client, released, 1, 2, 5)
    resp = control(client, released, "explode")
    assert resp.status_code == 422 and "action" in resp.json()["message"] and "'pause'" in resp.json()["message"]
    for reason in ("", "   "):
        resp = control(client, released, "pause", reason)
        assert resp.status_code == 422 and "reason" in resp.json()["message"], resp.text
    resp = client.post(f"/v1/models/{released}/release", json={"action": "pause"}, headers=AUTH)
    assert resp.status_code == 422 and "reason" in resp.json()["message"]
    assert traffic(client, released)["paused"] is False
    assert events(client, released, "release_control") == []


def test_the_ui_cookie_and_its_csrf_token_are_enough_to_control_a_release(client, released):
    put_traffic(client, released, 1, 2, 5)
    with TestClient(client.app, cookies={"_token": TOKEN}) as page:  # what the web page sends
        csrf = page.get("/config.json").json()  # the page reads its session's CSRF token first
        resp = page.post(
            f"/v1/models/{released}/release",
            json={"action": "pause", "reason": "from the page", "context": {"interface": "ui"}},
            headers={csrf["csrfHeader"]: csrf["csrfToken"]},
        )
    assert resp.status_code == 200 and resp.json()["paused"] is True


def test_writes_need_a_token(client, released):
    assert client.get(f"/v1/models/{released}/traffic").status_code == 401
    assert client.put(f"/v1/models/{released}/traffic", json={}).status_code == 401
    assert client.post(f"/v1/models/{released}/release", json={}).status_code == 401
    assert client.delete(f"/v1/models/{released}/release/pending").status_code == 401
    assert client.put(f"/v1/models/{released}/rate-limit", json={}).status_code == 401
    forged = {"Authorization": "Bearer forged"}
    assert client.post(f"/v1/models/{released}/release", json={}, headers=forged).status_code == 403


def test_a_new_canary_or_the_end_of_the_release_starts_afresh(client, released):
    put_traffic(client, released, 1, 2, 10)
    control(client, released, "pause")
    control(client, released, "abort")
    same = put_traffic(client, released, 1, 2, 20).json()  # the same release goes on: the controls stay
    assert (same["paused"], same["pendingAction"]) == (True, "abort")
    over = put_traffic(client, released, 1, None, 0, reason="aborted").json()
    assert (over["canary"], over["paused"], over["pendingAction"]) == (None, False, None)
    assert control(client, released, "resume").status_code == 409
    register(client, released, 3)
    put_traffic(client, released, 1, 2, 10)
    control(client, released, "promote")
    other = put_traffic(client, released, 1, 3, 10).json()  # another candidate: another release
    assert (other["paused"], other["pendingAction"]) == (False, None)


def test_the_pipeline_clears_the_pending_action(client, released):
    url = f"/v1/models/{released}/release/pending"
    assert client.delete(url, headers=AUTH).status_code == 204  # nothing pending: a no-op
    put_traffic(client, released, 1, 2, 10)
    assert client.delete(url, headers=AUTH).status_code == 204
    assert events(client, released, "release_control") == []
    control(client, released, "abort", "error rate")
    resp = client.delete(url, params={"expected": "promote"}, headers=AUTH)  # acted on an older request
    assert resp.status_code == 409 and "now abort, not promote" in resp.json()["message"]
    assert traffic(client, released)["pendingAction"] == "abort"
    resp = client.delete(url, params={"expected": "rollback"}, headers=AUTH)
    assert resp.status_code == 422 and "expected" in resp.json()["message"]
    lineage = {"interface": "pipeline", "dagId": "model_deploy", "runId": "manual__7", "taskId": "act"}
    resp = client.delete(url, params={"expected": "abort", **lineage}, headers=AUTH)
    assert resp.status_code == 204
    assert traffic(client, released)["pendingAction"] is None
    cleared = events(client, released, "release_control")[0]
    assert cleared["details"] == {"action": "clear_pending", "cleared": "abort", "who": "alice"}
    assert (cleared["actor"], cleared["principal"], cleared["runId"], cleared["taskId"]) == (
        "alice",
        SERVICE,
        "manual__7",
        "act",
    )
    assert client.delete(url, params={"expected": "abort"}, headers=AUTH).status_code == 204  # a retry: no-op


# --------------------------------------------------------------------------- rate limit


def test_rate_limit_is_stored_applied_and_recorded(client, released, sink):
    url = f"/v1/models/{released}/rate-limit"
    resp = client.put(url, json={"rps": 50, "reason": "protect the GPU pool", "context": LINEAGE}, headers=AUTH)
    assert resp.status_code == 200 and resp.json() == {"modelName": released, "rateLimitRps": 50.0}
    assert sink.calls[-1] == (released, 50.0)
    assert client.get(f"/v1/models/{released}", headers=AUTH).json()["rateLimitRps"] == 50.0
    assert client.put(url, json={"rps": 12.5, "reason": "tighter"}, headers=AUTH).json()["rateLimitRps"] == 12.5
    assert client.put(url, json={"rps": None, "reason": "lifted"}, headers=AUTH).json()["rateLimitRps"] is None
    assert sink.calls[-1] == (released, None)
    lifted, tighter, first = events(client, released, "rate_limit")
    assert first["details"] == {"rps": 50.0, "previous": None}
    assert (first["actor"], first["principal"], first["runId"], first["reason"]) == (
        "alice",
        SERVICE,
        "manual__7",
        "protect the GPU pool",
    )
    assert tighter["details"] == {"rps": 12.5, "previous": 50.0}
    assert lifted["details"] == {"rps": None, "previous": 12.5}


def test_rate_limit_validation(client, released, sink):
    url = f"/v1/models/{released}/rate-limit"
    calls = len(sink.calls)
    for rps in (0, -5, "fast"):
        resp = client.put(url, json={"rps": rps, "reason": "x"}, headers=AUTH)
        assert resp.status_code == 422 and "rps" in resp.json()["message"], resp.text
    assert client.put(url, json={"reason": "x"}, headers=AUTH).status_code == 422  # null must be explicit
    assert client.put("/v1/models/no-such-model/rate-limit", json={"rps": 5}, headers=AUTH).status_code == 404
    assert len(sink.calls) == calls
    assert events(client, released, "rate_limit") == []


def test_a_failing_sink_stores_nothing_and_answers_503(client, released, sink):
    url = f"/v1/models/{released}/rate-limit"
    assert client.put(url, json={"rps": 40, "reason": "first"}, headers=AUTH).status_code == 200
    sink.failing = True
    try:
        resp = client.put(url, json={"rps": 5, "reason": "second"}, headers=AUTH)
    finally:
        sink.failing = False
    assert resp.status_code == 503 and resp.headers["Retry-After"]
    assert resp.json()["error"] == "RouterError"
    assert "connection refused" in resp.json()["message"] and "nothing was changed" in resp.json()["message"]
    assert sink.calls[-1] == (released, 5.0)  # it was asked, and refused
    assert client.get(f"/v1/models/{released}", headers=AUTH).json()["rateLimitRps"] == 40.0
    assert [e["reason"] for e in events(client, released, "rate_limit")] == ["first"]


def test_rate_limit_without_a_sink(db_url, released):
    with TestClient(create_app(RegistryConfig(db_url=db_url, api_token=TOKEN))) as plain:
        resp = plain.put(f"/v1/models/{released}/rate-limit", json={"rps": 3, "reason": "x"}, headers=AUTH)
        assert resp.status_code == 200 and resp.json()["rateLimitRps"] == 3.0


# --------------------------------------------------------------------------- the query API keeps its shape


def test_list_api_shape_is_unchanged(client, released):
    put_traffic(client, released, 1, 2, 30)
    control(client, released, "pause")
    client.put(f"/v1/models/{released}/rate-limit", json={"rps": 9, "reason": "x"}, headers=AUTH)
    body = client.get("/v1/models", params={"q": released}, headers=AUTH).json()
    assert set(body) == {"models", "total", "limit", "offset"}
    assert body["models"] == [
        {
            "modelName": released,
            "version": 1,
            "canaryVersion": 2,
            "latestVersion": 2,
            "health": None,
            "updatedAt": body["models"][0]["updatedAt"],
        }
    ]
    everything = client.get("/v1/models", headers=AUTH).json()["models"]
    assert everything and all(set(m) == LIST_KEYS for m in everything)
    spec = client.get("/openapi.json", headers=AUTH).json()["paths"]
    assert {"/v1/models/{name}/traffic", "/v1/models/{name}/release", "/v1/models/{name}/release/pending"} <= set(spec)
    assert "/v1/models/{name}/rate-limit" in spec


# --------------------------------------------------------------------------- migration 0002


def test_migration_0002_upgrades_a_0001_database_and_downgrades(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(registry_service.__file__).parent / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url)
    command.upgrade(cfg, "0001")
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO models (name, description, created_at, updated_at, production_version) "
                "VALUES ('old', '', '2026-01-01', '2026-01-01', 1)"
            )
        registry_service.migrate(url)  # what the app does on first use
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT rate_limit_rps FROM models WHERE name = 'old'").scalar() is None
            assert conn.exec_driver_sql("SELECT count(*) FROM traffic").scalar() == 0
        command.downgrade(cfg, "0001")
        assert "traffic" not in sa.inspect(engine).get_table_names()
        assert "rate_limit_rps" not in {c["name"] for c in sa.inspect(engine).get_columns("models")}
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT name FROM models").scalar() == "old"
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- the hook


@contextmanager
def serve(app: FastAPI) -> Iterator[int]:
    """The app on a free loopback port (uvicorn in a thread), mounted at /registry as Airflow mounts it."""
    parent = FastAPI()
    parent.mount("/registry", app)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(parent, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def registry_port(db_url, sink) -> Iterator[int]:
    app = create_app(RegistryConfig(db_url=db_url, api_token=TOKEN), rate_limit_sink=sink, run_lookup=run_lookup)
    with serve(app) as port:
        yield port


@pytest.fixture
def hook(monkeypatch: pytest.MonkeyPatch, registry_port: int) -> RegistryHook:
    conn = {"conn_type": "http", "host": "127.0.0.1", "port": registry_port, "schema": "registry", "password": TOKEN}
    monkeypatch.setenv("AIRFLOW_CONN_TFDEPLOY_REGISTRY_GRAY", json.dumps(conn))
    return RegistryHook("tfdeploy_registry_gray", max_attempts=2, backoff=0.01, max_backoff=0.02)


def test_hook_traffic_and_controls(hook: RegistryHook, released: str) -> None:
    start = hook.get_traffic(released)
    assert start == Traffic(1, 100, None, 0, False, None, None, "")
    assert not start.in_progress
    step = hook.set_traffic(
        released, stable_version=1, canary_version=2, canary_weight=20, reason="step 1", context=LINEAGE
    )
    assert (step.stable_version, step.stable_weight, step.canary_version, step.canary_weight) == (1, 80, 2, 20)
    assert step.in_progress and step.updated_by == "alice" and step.updated_at is not None
    assert step.updated_at.tzinfo is not None
    assert hook.get_traffic(released) == step
    record = hook.get_model(released)
    assert record.traffic == step and record.rate_limit_rps is None

    paused = hook.release_control(released, "pause", reason="latency")
    assert paused.paused and paused.updated_by == SERVICE
    assert hook.release_control(released, "promote", reason="ship it", context=LINEAGE).pending_action == "promote"
    with pytest.raises(Conflict, match="now promote, not abort"):
        hook.clear_pending_action(released, context=LINEAGE, expected="abort")
    hook.clear_pending_action(released, context=LINEAGE, expected="promote")
    assert hook.get_traffic(released).pending_action is None
    hook.clear_pending_action(released, context=LINEAGE)  # nothing pending: a no-op

    done = hook.set_traffic(
        released, stable_version=2, canary_version=None, canary_weight=0, reason="promoted", context=LINEAGE
    )
    assert (done.stable_version, done.stable_weight, done.canary_version, done.paused) == (2, 100, None, False)
    with pytest.raises(Conflict, match=f"no release of {released} is in progress"):
        hook.release_control(released, "abort", reason="too late")
    with pytest.raises(InvalidRequest, match="canaryWeight"):
        hook.set_traffic(released, stable_version=2, canary_version=1, canary_weight=101, reason="", context=LINEAGE)
    with pytest.raises(NotFound, match="has no version 42"):
        hook.set_traffic(released, stable_version=42, canary_version=None, canary_weight=0, reason="", context={})


def test_hook_rate_limit(hook: RegistryHook, released: str, sink: Sink) -> None:
    hook.set_rate_limit(released, 25.0, reason="load test", context=LINEAGE)
    assert hook.get_model(released).rate_limit_rps == 25.0
    assert sink.calls[-1] == (released, 25.0)
    with pytest.raises(InvalidRequest, match="rps"):
        hook.set_rate_limit(released, 0, reason="", context=LINEAGE)
    sink.failing = True
    try:
        with pytest.raises(RegistryUnavailable, match="could not be applied to the router"):
            hook.set_rate_limit(released, 1.0, reason="", context=LINEAGE)  # 503: retried, then given up
    finally:
        sink.failing = False
    assert hook.get_model(released).rate_limit_rps == 25.0
    hook.set_rate_limit(released, None, reason="lifted", context=LINEAGE)
    assert hook.get_model(released).rate_limit_rps is None
