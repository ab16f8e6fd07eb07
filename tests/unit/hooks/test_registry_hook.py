"""RegistryHook against the real registry app (in-process, on SQLite, served by uvicorn under /registry as in
Airflow's api-server), through an Airflow connection from the environment; retries against stub servers; and
the registry's 503 when its database is unreachable."""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
import uvicorn
from fastapi import FastAPI

from tfdeploy.core.errors import (
    Conflict,
    IllegalTransition,
    InvalidModelName,
    InvalidRequest,
    LockHeld,
    LostRace,
    NotFound,
    RegistryError,
    RegistryUnavailable,
    RollbackNotStarted,
    Unauthorized,
)
from tfdeploy.core.states import ModelState
from tfdeploy.hooks.registry import (
    AlertRecord,
    Deployment,
    HealthRecord,
    Lease,
    ModelRecord,
    ModelSettings,
    RegistryHook,
    VersionRecord,
)
from tfdeploy.registry.api import create_app
from tfdeploy.registry.config import RegistryConfig
from tfdeploy.registry.service import RegistryService

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

TOKEN = "t"
LINEAGE = {"interface": "pipeline", "dagId": "model_deploy", "runId": "manual__1", "taskId": "t1"}
FAST = {"backoff": 0.01, "max_backoff": 0.05}  # retries without waiting in tests
CLOSED_PG = "postgresql+psycopg2://reg:s3cret-pw@127.0.0.1:1/registry"  # nothing listens on port 1


# --------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(app: FastAPI) -> Iterator[int]:
    """Serve an ASGI app with uvicorn in a thread on 127.0.0.1; yields the port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
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


def runs(dag_id: str, run_id: str) -> dict[str, str] | None:
    """The run lookup the Airflow plugin gives: run manual__1 was triggered by alice from the UI."""
    return {"user": "alice", "interface": "ui"} if run_id.startswith("manual__") or run_id.startswith("run-") else None


def mounted(config: RegistryConfig) -> FastAPI:
    """The registry app under /registry, as the Airflow plugin mounts it."""
    parent = FastAPI()
    parent.mount("/registry", create_app(config, run_lookup=runs))
    return parent


@contextmanager
def stub(answer: Callable[[int, BaseHTTPRequestHandler], tuple[int, dict | None]]) -> Iterator[tuple[int, list]]:
    """A plain HTTP server answering every request with answer(n, handler) -> (status, json); yields the port
    and the list of requests seen (method, path)."""
    seen: list[tuple[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def _any(self) -> None:
            seen.append((self.command, self.path))
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            status, body = answer(len(seen), self)
            data = json.dumps(body).encode() if body is not None else b""
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client timed out and went away

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def connect(monkeypatch: pytest.MonkeyPatch, port: int, *, password: str = TOKEN, schema: str = "registry") -> None:
    """The default connection (tfdeploy_registry) from the environment, as the stack sets it."""
    conn = {"conn_type": "http", "host": "127.0.0.1", "port": port, "schema": schema, "password": password}
    monkeypatch.setenv("AIRFLOW_CONN_TFDEPLOY_REGISTRY", json.dumps(conn))


def count_requests(hook: RegistryHook) -> list[str]:
    """Record every request the hook's session sends (retries included)."""
    sent: list[str] = []
    session = hook.session
    original = session.request

    def request(method: str, url: str, *args: object, **kwargs: object) -> requests.Response:
        sent.append(f"{method} {url}")
        return original(method, url, *args, **kwargs)

    session.request = request  # type: ignore[method-assign]
    return sent


@pytest.fixture(scope="module")
def registry_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    db = tmp_path_factory.mktemp("registry") / "r.db"
    with serve(mounted(RegistryConfig(db_url=f"sqlite:///{db}", api_token=TOKEN))) as port:
        yield port


@pytest.fixture
def hook(monkeypatch: pytest.MonkeyPatch, registry_port: int) -> RegistryHook:
    connect(monkeypatch, registry_port)
    return RegistryHook(**FAST)


def register(hook: RegistryHook, model: str, version: int = 1) -> VersionRecord:
    return hook.register_version(
        model,
        version=version,
        hdfs_uri=f"hdfs:///models/{model}/{version}",
        manifest_sha256=f"{version:064x}",
        source="gs://bucket/export",
        reason="exported",
        context=LINEAGE,
    )


# --------------------------------------------------------------------------- round trips


def test_connection_gives_the_url_and_the_token(hook: RegistryHook, registry_port: int) -> None:
    assert hook.base_url == f"http://127.0.0.1:{registry_port}/registry"
    assert hook.get_conn().headers["Authorization"] == f"Bearer {TOKEN}"


def test_versions_round_trip_with_typed_results(hook: RegistryHook) -> None:
    created = register(hook, "rt-versions")
    assert isinstance(created, VersionRecord)
    assert (created.model, created.version, created.state) == ("rt-versions", 1, ModelState.REGISTERED)
    assert (created.hdfs_uri, created.manifest_sha256, created.source) == (
        "hdfs:///models/rt-versions/1",
        f"{1:064x}",
        "gs://bucket/export",
    )
    assert (created.dag_id, created.run_id, created.created_by) == ("model_deploy", "manual__1", "alice")
    assert isinstance(created.created_at, dt.datetime) and created.created_at.tzinfo is not None
    assert register(hook, "rt-versions") == hook.get_version("rt-versions", 1)  # same content again: a no-op

    reported = hook.update_report(
        "rt-versions",
        1,
        metrics={"auc": 0.91},
        validation_report={"problems": [], "checks": ["signature"]},
        signatures={"serving_default": {"inputs": {"x": "DT_FLOAT"}}},
        context=LINEAGE,
    )
    assert reported.metrics == {"auc": 0.91}
    assert reported.validation_report["checks"] == ["signature"]
    assert reported.signatures["serving_default"]["inputs"] == {"x": "DT_FLOAT"}
    only_metrics = hook.update_report("rt-versions", 1, metrics={"auc": 0.92}, context=LINEAGE)
    assert only_metrics.validation_report == reported.validation_report  # None: unchanged

    validated = hook.transition(
        "rt-versions", 1, ModelState.VALIDATED, reason="ok", expected=ModelState.REGISTERED, context=LINEAGE
    )
    assert validated.state is ModelState.VALIDATED
    assert hook.transition("rt-versions", 1, "canary", details={"target": "t"}, context=LINEAGE).state == "canary"
    assert hook.get_version("rt-versions", 1).state is ModelState.CANARY


def test_model_deployments_and_production(hook: RegistryHook) -> None:
    model = "rt-model"
    assert hook.production_version(model) is None  # unknown model
    register(hook, model, 1)
    assert hook.production_version(model) is None  # known, nothing in production
    for state in ("validated", "canary", "production"):
        hook.transition(model, 1, state, context=LINEAGE)
    register(hook, model, 2)
    hook.transition(model, 2, "validated", context=LINEAGE)
    hook.transition(model, 2, "canary", context=LINEAGE)

    assert hook.set_deployment(model, "serving-1", "stable", 1, reason="first", context=LINEAGE) is None
    assert hook.set_deployment(model, "serving-1", "canary", 2, context=LINEAGE) is None
    assert hook.set_deployment(model, "serving-1", "canary", 2, context=LINEAGE) == 2  # the previous version
    record = hook.get_model(model)
    assert isinstance(record, ModelRecord)
    assert (record.model, record.production_version, record.canary_version, record.latest_version) == (model, 1, 2, 2)
    assert set(record.deployments) == {Deployment("serving-1", "stable", 1), Deployment("serving-1", "canary", 2)}
    assert record.lock is None
    assert hook.production_version(model) == 1

    hook.clear_deployment(model, "serving-1", "canary", reason="promoted", context=LINEAGE)
    hook.clear_deployment(model, "serving-1", "canary", context=LINEAGE)  # already gone: a no-op
    assert hook.get_model(model).deployments == (Deployment("serving-1", "stable", 1),)

    promoted = hook.transition(model, 2, ModelState.PRODUCTION, context=LINEAGE)
    assert promoted.state is ModelState.PRODUCTION
    assert hook.get_version(model, 1).state is ModelState.SUPERSEDED
    assert hook.production_version(model) == 2

    # the DELETE carried the whole lineage (query parameters) into the history
    history = hook.get_conn().get(f"{hook.base_url}/v1/models/{model}/history", params={"kind": "deployment"})
    removed = [e for e in history.json()["events"] if e["details"].get("removed")]
    assert removed and removed[0]["reason"] == "promoted"
    # the run's ids as sent; who and through what from the run itself (the registry's run lookup), not the request
    assert {k: removed[0][k] for k in LINEAGE} == LINEAGE | {"interface": "ui"}
    assert (removed[0]["actor"], removed[0]["principal"]) == ("alice", "tfdeploy-service")


def test_health_round_trip(hook: RegistryHook) -> None:
    model = "rt-health"
    register(hook, model)
    assert hook.latest_health(model) == []
    first = hook.record_health(model, version=1, target="s1", status="degraded", details={"p99": 9}, context=LINEAGE)
    assert isinstance(first, HealthRecord)
    assert (first.version, first.target, first.status, first.details) == (1, "s1", "degraded", {"p99": 9})
    hook.record_health(model, version=1, target="s1", status="healthy", details={"problems": []}, context=LINEAGE)
    (latest,) = hook.latest_health(model)
    assert (latest.status, latest.details) == ("healthy", {"problems": []})
    assert isinstance(latest.at, dt.datetime)
    assert [h.status for h in hook.latest_health(model, limit=5)] == ["healthy", "degraded"]
    # a model's health is its production version's: nothing in production yet, no model health
    assert hook.get_model(model).health is None and hook.model_health(model) is None
    for state in ("validated", "canary", "production"):
        hook.transition(model, 1, state, context=LINEAGE)
    assert hook.model_health(model) == "healthy"  # v1's latest check counts now
    register(hook, model, 2)
    old_word = hook.record_health(model, version=2, target="s1", status="unhealthy", context=LINEAGE)
    assert old_word.status == "failing"  # the old word is accepted, stored as the new one
    assert hook.get_model(model).health == "healthy"  # a candidate's failure is its own
    assert [h.version for h in hook.latest_health(model, limit=5, version=2)] == [2]


def test_serving_and_router_events_go_into_the_history(hook: RegistryHook, registry_port: int) -> None:
    model = "rt-events"
    register(hook, model)
    replicas = {"pool": "stable", "replicas": ["tfserving-local", "tfserving-local-1"], "versions": [1]}
    hook.record_serving_event(model, "serving", reason="v1 promoted", details=replicas, context=LINEAGE)
    hook.record_serving_event(model, "router", version=1, reason="routed", details={"pool": "canary"}, context=LINEAGE)
    with pytest.raises(InvalidRequest, match="unknown event kind 'gossip'"):
        hook.record_serving_event(model, "gossip", context=LINEAGE)
    with pytest.raises(NotFound):
        hook.record_serving_event(model, "router", version=9, context=LINEAGE)
    resp = requests.get(
        f"http://127.0.0.1:{registry_port}/registry/v1/models/{model}/history",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    events = [(e["kind"], e["version"], e["reason"], e["details"]) for e in resp.json()["events"]][:2]
    assert events == [("router", 1, "routed", {"pool": "canary"}), ("serving", None, "v1 promoted", replicas)]


def test_lock_lease_round_trip(hook: RegistryHook) -> None:
    model = "rt-lock"
    run1 = LINEAGE | {"runId": "run-1"}
    lease = hook.acquire_lock(model, holder="deploy/run-1", run_id="run-1", ttl_seconds=60, context=run1)
    assert isinstance(lease, Lease)
    assert (lease.model, lease.holder, lease.run_id, len(lease.token) >= 32) == (model, "deploy/run-1", "run-1", True)
    assert dt.timedelta(seconds=50) < lease.expires_at - dt.datetime.now(dt.UTC) <= dt.timedelta(seconds=61)
    lock = hook.get_model(model).lock
    assert lock is not None and (lock.holder, lock.run_id, lock.expired) == ("deploy/run-1", "run-1", False)

    again = hook.acquire_lock(model, holder="deploy/run-1", run_id="run-1", ttl_seconds=60, context=run1)
    assert again.token == ""  # the same run and principal (a task retry) keeps its lease; the token went only once
    with pytest.raises(LockHeld, match="run-1"):
        hook.acquire_lock(model, holder="deploy/run-2", run_id="run-2", ttl_seconds=60, context=LINEAGE)

    renewed = hook.renew_lock(model, ttl_seconds=3600, token=lease.token, context={})
    assert renewed.token == "" and renewed.expires_at > lease.expires_at
    by_run = hook.renew_lock(model, ttl_seconds=3600, context=run1)  # the run that took it, no token
    assert by_run.run_id == "run-1"
    with pytest.raises(Conflict):
        hook.renew_lock(model, ttl_seconds=60, token="not-the-token", context=run1)
    with pytest.raises(Conflict):
        hook.renew_lock(model, ttl_seconds=60, context=LINEAGE | {"runId": "run-2"})
    with pytest.raises(Conflict):
        hook.release_lock(model, token="not-the-token", context={})
    hook.release_lock(model, context=run1)
    hook.release_lock(model, context=run1)  # nobody holds it: a no-op
    assert hook.get_model(model).lock is None


def test_settings_and_freeze_round_trip(hook: RegistryHook) -> None:
    model = "rt-settings"
    register(hook, model)
    assert hook.get_settings(model) == ModelSettings()
    on = hook.set_settings(model, auto_rollback_on_failing=True, reason="on call", context=LINEAGE)
    assert isinstance(on, ModelSettings) and on.auto_rollback_on_failing and not on.require_approval
    both = hook.set_settings(model, require_approval=True, reason="audit")
    assert (both.auto_rollback_on_failing, both.require_approval) == (True, True)
    with pytest.raises(InvalidRequest, match="nothing to change"):
        hook.set_settings(model, reason="nothing")
    frozen = hook.freeze(model, "incident 42", LINEAGE)
    assert (frozen.frozen, frozen.frozen_by, frozen.frozen_reason) == (True, "alice", "incident 42")
    assert isinstance(frozen.frozen_at, dt.datetime) and frozen.frozen_at.tzinfo is not None
    assert hook.get_model(model).settings == frozen == hook.get_settings(model)
    lifted = hook.unfreeze(model, "fixed", LINEAGE)
    assert not lifted.frozen and lifted.frozen_by == "" and lifted.frozen_at is None
    with pytest.raises(NotFound):
        hook.get_settings("never-registered")


def test_lists_of_models_versions_and_alerts(hook: RegistryHook, registry_port: int) -> None:
    for i in range(3):
        register(hook, f"rt-list-{i}", 1)
    register(hook, "rt-list-0", 2)
    hook.transition("rt-list-0", 1, "validated", context=LINEAGE)
    names = [m.model for m in hook.list_models(q="rt-list-", page_size=2)]  # two pages
    assert names == ["rt-list-0", "rt-list-1", "rt-list-2"]
    assert [v.version for v in hook.list_versions("rt-list-0")] == [2, 1]
    assert [v.version for v in hook.list_versions("rt-list-0", state=ModelState.VALIDATED)] == [1]

    payload = {
        "version": "4",
        "receiver": "registry",
        "status": "firing",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "ReplicaDown", "severity": "warning", "model": "rt-list-1"},
                "annotations": {"summary": "replica 1 down"},
                "startsAt": "2026-12-02T10:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "",
                "fingerprint": "abc123",
            }
        ],
    }
    resp = requests.post(
        f"http://127.0.0.1:{registry_port}/registry/v1/alerts",
        json=payload,
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    (alert,) = hook.list_alerts("rt-list-1")
    assert isinstance(alert, AlertRecord) and alert.open and alert.ends_at is None
    assert (alert.alertname, alert.severity, alert.annotations["summary"]) == (
        "ReplicaDown",
        "warning",
        "replica 1 down",
    )
    assert [a.fingerprint for a in hook.list_alerts(status="firing")] == ["abc123"]
    assert hook.list_alerts("rt-list-2") == []


def test_a_rollback_the_registry_cannot_start_is_not_retried(hook: RegistryHook) -> None:
    """502 RollbackNotStarted is the registry's own answer: raised at once, not retried like a gateway's 502."""
    model = "rt-rollback"
    for v in (1, 2):
        register(hook, model, v)
        for state in ("validated", "canary", "production"):
            hook.transition(model, v, state, context=LINEAGE)
    sent = count_requests(hook)
    with pytest.raises(RollbackNotStarted, match="cannot start Airflow runs") as exc:
        hook.start_rollback(model, 1, reason="p99 regression", context=LINEAGE)  # this registry has no starter
    assert exc.value.status_code == 502 and len(sent) == 1
    with pytest.raises(Conflict, match="already in production"):
        hook.start_rollback(model, 2, reason="p99 regression")


# --------------------------------------------------------------------------- typed errors


def test_errors_map_to_their_classes(hook: RegistryHook) -> None:
    sent = count_requests(hook)
    with pytest.raises(NotFound, match="not registered") as unknown:
        hook.get_model("nobody-here")
    assert unknown.value.status_code == 404
    register(hook, "rt-errors")
    with pytest.raises(NotFound, match="no version 7"):
        hook.get_version("rt-errors", 7)
    with pytest.raises(IllegalTransition, match="registered -> production") as illegal:
        hook.transition("rt-errors", 1, ModelState.PRODUCTION, context=LINEAGE)
    assert illegal.value.status_code == 409
    with pytest.raises(LostRace):
        hook.transition("rt-errors", 1, "validated", expected=ModelState.CANARY, context=LINEAGE)
    with pytest.raises(InvalidModelName) as bad_name:
        hook.get_model("bad name!")
    assert bad_name.value.status_code == 422
    with pytest.raises(InvalidRequest, match="unknown health status"):
        hook.record_health("rt-errors", version=1, target="s", status="fine", context=LINEAGE)
    with pytest.raises(InvalidRequest, match="ttl_seconds"):
        hook.acquire_lock("rt-errors", holder="h", run_id="r", ttl_seconds=0, context=LINEAGE)
    assert len(sent) == 8  # the register and one request per error: 4xx answers are never retried


def test_missing_token_is_unauthorized(monkeypatch: pytest.MonkeyPatch, registry_port: int) -> None:
    connect(monkeypatch, registry_port, password="")
    with pytest.raises(Unauthorized) as exc:
        RegistryHook(**FAST).get_model("anything")
    assert exc.value.status_code == 401


def test_wrong_prefix_is_a_plain_registry_error(monkeypatch: pytest.MonkeyPatch, registry_port: int) -> None:
    connect(monkeypatch, registry_port, schema="not-the-registry")
    with pytest.raises(RegistryError) as exc:
        RegistryHook(**FAST).get_model("anything")
    assert type(exc.value) is RegistryError and exc.value.status_code == 404  # not NotFound: no such model


# --------------------------------------------------------------------------- retries


MODEL_JSON = {"modelName": "m", "version": 3, "canaryVersion": None, "latestVersion": 3, "health": None}


def test_503_twice_then_200_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    def answer(n: int, _h: BaseHTTPRequestHandler) -> tuple[int, dict]:
        if n <= 2:
            return 503, {"error": "RegistryUnavailable", "message": "database unreachable"}
        return 200, MODEL_JSON

    with stub(answer) as (port, seen):
        connect(monkeypatch, port)
        assert RegistryHook(**FAST).production_version("m") == 3
    assert seen == [("GET", "/registry/v1/models/m")] * 3


@pytest.mark.parametrize("status", [502, 504])
def test_gateway_errors_are_retried(monkeypatch: pytest.MonkeyPatch, status: int) -> None:
    with stub(lambda n, _h: (status, None) if n == 1 else (200, MODEL_JSON)) as (port, seen):
        connect(monkeypatch, port)
        assert RegistryHook(**FAST).get_model("m").production_version == 3
    assert len(seen) == 2


def test_503_until_attempts_run_out_raises_registry_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    body = {"error": "RegistryUnavailable", "message": "the registry's database is unreachable (x)"}
    with stub(lambda _n, _h: (503, body)) as (port, seen):
        connect(monkeypatch, port)
        with pytest.raises(RegistryUnavailable, match=r"3 attempt\(s\).*database is unreachable"):
            RegistryHook(max_attempts=3, **FAST).get_model("m")
    assert len(seen) == 3


def test_4xx_answers_are_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = {
        "/registry/v1/models/a/lock": (409, {"error": "LockHeld", "message": "held by run-9"}),
        "/registry/v1/models/b": (418, {"error": "SomethingNew", "message": "a newer server"}),
        "/registry/v1/models/c": (400, None),
    }
    with stub(lambda _n, h: answers[h.path]) as (port, seen):
        connect(monkeypatch, port)
        hook = RegistryHook(**FAST)
        with pytest.raises(LockHeld, match="held by run-9"):
            hook.acquire_lock("a", holder="h", run_id="r", ttl_seconds=5, context=LINEAGE)
        with pytest.raises(RegistryError, match="a newer server") as unknown:
            hook.get_model("b")
        assert type(unknown.value) is RegistryError and unknown.value.status_code == 418
        with pytest.raises(RegistryError):
            hook.get_model("c")
    assert len(seen) == 3


def test_connection_refused_is_retried_then_registry_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    connect(monkeypatch, free_port())
    hook = RegistryHook(max_attempts=3, **FAST)
    sent = count_requests(hook)
    with pytest.raises(RegistryUnavailable, match=r"POST .*/registry/v1/models/m/lock: no answer after 3 attempt"):
        hook.acquire_lock("m", holder="h", run_id="r", ttl_seconds=5, context=LINEAGE)
    assert len(sent) == 3


def slow_answer(n: int, _h: BaseHTTPRequestHandler, *, slow: Callable[[int], bool]) -> tuple[int, dict]:
    if slow(n):
        time.sleep(1.0)
    return 200, MODEL_JSON


def test_a_timeout_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    with stub(lambda n, h: slow_answer(n, h, slow=lambda n: n == 1)) as (port, seen):
        connect(monkeypatch, port)
        assert RegistryHook(timeout=0.3, **FAST).get_model("m").production_version == 3
    assert len(seen) == 2


def test_timeouts_until_attempts_run_out_raise_registry_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    with stub(lambda n, h: slow_answer(n, h, slow=lambda _n: True)) as (port, seen):
        connect(monkeypatch, port)
        started = time.monotonic()
        with pytest.raises(RegistryUnavailable, match=r"2 attempt\(s\).*ReadTimeout"):
            RegistryHook(timeout=0.3, max_attempts=2, **FAST).get_model("m")
        assert time.monotonic() - started < 2  # two 0.3 s timeouts, not the server's 1 s each
    assert len(seen) == 2


# --------------------------------------------------------------------------- the registry's 503


def test_unreachable_database_on_first_use_is_a_503() -> None:
    """Creating/migrating the service fails: 503 + RegistryUnavailable, no credentials in the message."""
    with TestClient(create_app(RegistryConfig(db_url=CLOSED_PG, api_token=TOKEN))) as client:
        resp = client.get("/v1/models", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status_code == 503, resp.text
    assert resp.headers["Retry-After"].isdigit()
    body = resp.json()
    assert body["error"] == "RegistryUnavailable"
    assert body["message"].startswith("the registry's database is unreachable (")
    assert body["message"].endswith("nothing was changed; retry later")
    assert "s3cret-pw" not in resp.text


def test_database_lost_after_start_is_a_503() -> None:
    """A query fails with SQLAlchemy's OperationalError (connection refused): the handler answers 503."""
    app = create_app(RegistryConfig(db_url=CLOSED_PG, api_token=TOKEN))
    app.state.registry._service = RegistryService(CLOSED_PG)  # "migrated" earlier; the server went away since
    with TestClient(app) as client:
        resp = client.post(
            "/v1/models/m/versions",
            json={"version": 1, "hdfsUri": "hdfs:///m/1", "context": LINEAGE},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
    assert resp.status_code == 503, resp.text
    assert resp.headers["Retry-After"].isdigit()
    assert resp.json()["error"] == "RegistryUnavailable"
    assert "psycopg2.OperationalError" in resp.json()["message"] and "s3cret-pw" not in resp.text


def test_hook_against_a_registry_without_database(monkeypatch: pytest.MonkeyPatch) -> None:
    with serve(mounted(RegistryConfig(db_url=CLOSED_PG, api_token=TOKEN))) as port:
        connect(monkeypatch, port)
        with pytest.raises(RegistryUnavailable, match=r"2 attempt\(s\).*database is unreachable"):
            RegistryHook(max_attempts=2, **FAST).get_version("m", 1)
