"""The registry's security model against real databases (SQLite file and the stack's PostgreSQL).

- Who may write: the service token, or an Airflow user whom Airflow's auth manager lets trigger the DAG the write
  belongs to. Airflow users here are real JWTs of the test stack's simple auth manager (roles Viewer, User, Op,
  Admin), decided by the real auth manager, or by an ``authorize`` injected into ``create_app``.
- Who is recorded as having acted: the authenticated user, or the triggering user of the run the service token
  acts for (``run_lookup``); never a name from the request.
- Leases bound to their holder: a token only for the request that created the lease, never in a URL, a read or
  the history; renewals and releases by the token or by the same principal acting for the same run.
- CSRF protection of the UI cookie's writes; input limits (422 naming the field, 413 for a body over 16 MiB);
  /docs and /openapi.json under the reads' policy; the append-only history (TRUNCATE too, on PostgreSQL)."""

from __future__ import annotations

import hashlib
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from tfdeploy.registry import service as registry_service
from tfdeploy.registry.api import MAX_BODY_BYTES, create_app
from tfdeploy.registry.auth import CSRF_HEADER, DEPLOY_DAG, ROLLBACK_DAG, SERVICE
from tfdeploy.registry.config import RegistryConfig

from .test_registry_api import AUTH, TOKEN, register, run_lookup, unique

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

LEASE = "X-Lease-Token"
# the pipeline's context (lineage.run_context) for alice's run of model_deploy (test_registry_api.RUNS)
ALICE_RUN = {"interface": "pipeline", "dagId": "model_deploy", "runId": "manual__alice", "taskId": "acquire_lock"}
USERS = {"viewer": "vera", "user": "uma", "op": "otto", "admin": "ada"}  # role -> user name


def airflow_jwt(username: str, role: str) -> str:
    """A JWT of the test stack's Airflow (its auth manager and JWT secret), as POST /auth/token issues."""
    from airflow.api_fastapi.app import create_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return create_auth_manager().generate_jwt(SimpleAuthManagerUser(username=username, role=role))


@pytest.fixture(scope="module")
def jwts() -> dict[str, str]:
    """role -> a JWT of that role's user."""
    return {role: airflow_jwt(name, role) for role, name in USERS.items()}


def bearer(jwt: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {jwt}"}


class Starter:
    """model_rollback's starter (the plugin triggers a run): records the calls."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __call__(self, *args: object) -> str:
        self.calls.append(args)
        return f"manual__rollback_{len(self.calls)}"


def app_for(db_url: str, **kwargs: Any):
    """The registry on ``db_url`` with the fake run lookup and rollback starter; ``config``: RegistryConfig fields,
    the rest: create_app's keywords (``authorize``, ``run_lookup``)."""
    return create_app(
        RegistryConfig(db_url=db_url, api_token=TOKEN, **kwargs.pop("config", {})),
        run_lookup=kwargs.pop("run_lookup", run_lookup),
        rollback_starter_to=Starter(),
        **kwargs,
    )


@pytest.fixture(scope="module")
def client(db_url) -> Iterator[TestClient]:
    """The registry as the plugin composes it: Airflow's auth manager decides users' writes; runs looked up."""
    with TestClient(app_for(db_url)) as c:
        yield c


def history(client, model: str, **params: Any) -> list[dict]:
    resp = client.get(f"/v1/models/{model}/history", params={"limit": 1000, **params}, headers=AUTH)
    assert resp.status_code == 200, resp.text
    return resp.json()["events"]


# --------------------------------------------------------------------------- who may write


def writes(model: str, new_model: str, lease_token: str = "") -> list[tuple[str, str, str, dict]]:
    """Every kind of write, valid for a model from ``released``, in an order that succeeds for a writer holding
    ``lease_token`` (the lease the table's lock request takes): (method, path template, URL, request keyword
    arguments). The context of each body names alice's run and the pipeline: an Airflow user's write records
    neither."""
    ctx = {"context": ALICE_RUN}
    lease = {"headers": {LEASE: lease_token}}
    m = f"/v1/models/{model}"
    alert = {
        "status": "firing",
        "labels": {"alertname": "ModelSlow", "severity": "warning", "model": model},
        "startsAt": "2026-12-02T10:00:00Z",
        "fingerprint": f"fp-{model}",
    }
    rows: list[tuple[str, str, str, dict]] = [
        ("POST", "/v1/models", "/v1/models", {"json": {"name": new_model, **ctx}}),
        (
            "POST",
            "/v1/models/{name}/versions",
            f"{m}/versions",
            {"json": {"version": 4, "hdfsUri": "hdfs:///models/x/4", "manifestSha256": "4" * 64, **ctx}},
        ),
        ("PATCH", "/v1/models/{name}/versions/{version}/report", f"{m}/versions/4/report", {"json": {"metrics": {}}}),
        (
            "POST",
            "/v1/models/{name}/versions/{version}/transitions",
            f"{m}/versions/4/transitions",
            {"json": {"toState": "validated", **ctx}},
        ),
        (
            "POST",
            "/v1/models/{name}/health",
            f"{m}/health",
            {"json": {"version": 2, "target": "local", "status": "healthy", **ctx}},
        ),
        ("POST", "/v1/models/{name}/events", f"{m}/events", {"json": {"kind": "serving", "version": 2, **ctx}}),
        (
            "PUT",
            "/v1/models/{name}/deployments/{target}/{label}",
            f"{m}/deployments/local/stable",
            {"json": {"version": 2, **ctx}},
        ),
        ("DELETE", "/v1/models/{name}/deployments/{target}/{label}", f"{m}/deployments/local/stable", {}),
        (
            "PUT",
            "/v1/models/{name}/traffic",
            f"{m}/traffic",
            {"json": {"stableVersion": 2, "canaryVersion": 3, "canaryWeight": 10, **ctx}},
        ),
        ("POST", "/v1/models/{name}/release", f"{m}/release", {"json": {"action": "promote", "reason": "ok", **ctx}}),
        ("DELETE", "/v1/models/{name}/release/pending", f"{m}/release/pending", {"params": ALICE_RUN}),
        ("PUT", "/v1/models/{name}/rate-limit", f"{m}/rate-limit", {"json": {"rps": 5, "reason": "x", **ctx}}),
        (
            "PATCH",
            "/v1/models/{name}/settings",
            f"{m}/settings",
            {"json": {"requireApproval": True, "reason": "x", **ctx}},
        ),
        ("POST", "/v1/models/{name}/freeze", f"{m}/freeze", {"json": {"reason": "incident", **ctx}}),
        ("DELETE", "/v1/models/{name}/freeze", f"{m}/freeze", {"params": {"reason": "fixed", **ALICE_RUN}}),
        ("POST", "/v1/models/{name}/rollback", f"{m}/rollback", {"json": {"version": 1, "reason": "bad v2", **ctx}}),
        ("POST", "/v1/alerts", "/v1/alerts", {"json": {"version": "4", "alerts": [alert]}}),
        ("GET", "/v1/models/{name}/logs", f"{m}/logs", {}),  # a read that needs write access (logs may hold data)
        (
            "POST",
            "/v1/models/{name}/lock",
            f"{m}/lock",
            {"json": {"holder": "someone", "runId": "r-lock", "ttlSeconds": 60, **ctx}},
        ),
        ("POST", "/v1/models/{name}/lock/renew", f"{m}/lock/renew", {"json": {"ttlSeconds": 60, **ctx}, **lease}),
        ("DELETE", "/v1/models/{name}/lock", f"{m}/lock", lease),
    ]
    return rows


def with_headers(kwargs: dict, headers: dict[str, str]) -> dict:
    return kwargs | {"headers": kwargs.get("headers", {}) | headers}


def test_every_write_of_the_api_is_in_the_table(client):
    """A new write endpoint must join ``writes`` (so the tests below cover it)."""
    spec = client.get("/openapi.json", headers=AUTH).json()["paths"]
    in_api = {(method.upper(), path) for path, ops in spec.items() for method in ops if method != "get"}
    in_table = {(method, path) for method, path, _url, _kw in writes("m", "n")}
    assert in_table == in_api | {("GET", "/v1/models/{name}/logs")}


def test_a_viewer_reads_everything_and_changes_nothing(client, released, jwts):
    viewer = bearer(jwts["viewer"])
    model_before = client.get(f"/v1/models/{released}", headers=AUTH).json()
    events_before = history(client, released)
    for method, _path, url, kwargs in writes(released, unique("viewer-new"), lease_token="x" * 43):
        resp = client.request(method, url, **with_headers(kwargs, viewer))
        assert resp.status_code == 403, (method, url, resp.text)
        body = resp.json()
        assert (
            body["error"] == "Forbidden" and "airflow:vera may read the registry but not change it" in body["message"]
        )
        dag = ROLLBACK_DAG if url.endswith("/rollback") else DEPLOY_DAG
        assert f"permission to trigger the {dag} DAG" in body["message"], body
    assert client.get(f"/v1/models/{released}", headers=AUTH).json() == model_before
    assert history(client, released) == events_before

    for url in (
        "/v1/models",
        f"/v1/models/{released}",
        f"/v1/models/{released}/versions",
        f"/v1/models/{released}/versions/2",
        f"/v1/models/{released}/history",
        f"/v1/history?model={released}",
        f"/v1/models/{released}/production?at=2099-01-01T00:00:00Z",
        f"/v1/models/{released}/health",
        f"/v1/models/{released}/traffic",
        f"/v1/models/{released}/settings",
        "/v1/alerts",
        f"/v1/models/{released}/alerts",
        f"/v1/models/{released}/performance",
        f"/v1/models/{released}/diagnostics",
        "/openapi.json",
        "/docs",
    ):
        assert client.get(url, headers=viewer).status_code == 200, url
    assert client.get(f"/v1/models/{released}", headers=viewer).json()["version"] == 2


@pytest.mark.parametrize("role", ["user", "op", "admin"])
def test_a_user_op_or_admin_makes_every_write_recorded_as_themselves(client, released, jwts, role):
    who = f"airflow:{USERS[role]}"
    new_model = unique(f"{role}-new")
    before = {e["id"] for e in history(client, released)}
    token = ""
    rows = writes(released, new_model)
    for i, (method, path, url, kwargs) in enumerate(rows):
        if LEASE in kwargs.get("headers", {}):
            kwargs = with_headers(kwargs, {LEASE: token})  # the lease this user took (below)
        resp = client.request(method, url, **with_headers(kwargs, bearer(jwts[role])))
        assert resp.status_code in (200, 201, 202, 204), (i, method, url, resp.text)
        if (method, path) == ("POST", "/v1/models/{name}/lock"):
            token = resp.json()["token"]  # a new lease: its token comes with it
            assert token
    assert client.get(f"/v1/models/{released}", headers=AUTH).json()["lock"] is None  # released by its holder

    new = [e for e in history(client, released) if e["id"] not in before]
    kinds = {e["kind"] for e in new}
    assert kinds >= {
        "registered",
        "report",
        "transition",
        "health",
        "serving",
        "deployment",
        "traffic",
        "release_control",
        "rate_limit",
        "settings",
        "freeze",
        "unfreeze",
        "rollback",
        "alert",
        "lock",
    }, kinds
    for e in new:
        assert (e["actor"], e["principal"], e["interface"]) == (who, who, "rest_api"), e
        if e["kind"] != "rollback":  # the rollback event names the model_rollback run it started
            assert (e["dagId"], e["runId"], e["taskId"]) == ("", "", ""), e  # alice's run: not recorded
    (created,) = history(client, new_model)
    assert (created["kind"], created["actor"]) == ("model_created", who)
    assert client.get(f"/v1/models/{released}/versions/4", headers=AUTH).json()["createdBy"] == who


class Authorizer:
    """An injected ``authorize(user, dag_id)``: records who was asked about what; allows the DAGs in ``allow``.
    ``awaitable``: answers as a coroutine, as Airflow's auth manager check does."""

    def __init__(self, allow: set[str], awaitable: bool = False) -> None:
        self.allow, self.awaitable = allow, awaitable
        self.calls: list[tuple[str, str]] = []

    def __call__(self, user: Any, dag_id: str) -> Any:
        self.calls.append((user.get_name(), dag_id))
        if not self.awaitable:
            return dag_id in self.allow

        async def answer() -> bool:
            return dag_id in self.allow

        return answer()


def test_an_injected_authorizer_decides_users_writes_never_the_service_tokens(db_url, released, jwts):
    nobody = Authorizer(set())
    with TestClient(app_for(db_url, authorize=nobody)) as c:
        admin = bearer(jwts["admin"])  # Airflow would let an Admin: the injected authorizer says no
        resp = c.post(f"/v1/models/{released}/freeze", json={"reason": "x"}, headers=admin)
        assert resp.status_code == 403 and "airflow:ada may read the registry" in resp.json()["message"]
        assert c.get(f"/v1/models/{released}/settings", headers=admin).status_code == 200
        assert nobody.calls == [("ada", DEPLOY_DAG)]
        assert c.post(f"/v1/models/{released}/freeze", json={"reason": "x"}, headers=AUTH).status_code == 200
        assert nobody.calls == [("ada", DEPLOY_DAG)]  # the service token is not asked about

    deploy_only = Authorizer({DEPLOY_DAG}, awaitable=True)
    with TestClient(app_for(db_url, authorize=deploy_only)) as c:
        user = bearer(jwts["user"])
        ok = c.delete(f"/v1/models/{released}/freeze", params={"reason": "fixed"}, headers=user)
        assert ok.status_code == 200, ok.text
        resp = c.post(f"/v1/models/{released}/rollback", json={"version": 1, "reason": "bad v2"}, headers=user)
        assert resp.status_code == 403 and "trigger the model_rollback DAG" in resp.json()["message"]
        assert deploy_only.calls == [("uma", DEPLOY_DAG), ("uma", ROLLBACK_DAG)]
        assert history(c, released, kind="rollback") == []


# --------------------------------------------------------------------------- who is recorded


def test_a_name_in_the_body_is_refused_and_the_user_is_recorded(client, released, jwts):
    uma = bearer(jwts["user"])
    url = f"/v1/models/{released}/freeze"
    before = history(client, released)
    resp = client.post(url, json={"reason": "x", "context": {"actor": "mallory", "interface": "ui"}}, headers=uma)
    assert resp.status_code == 422 and "context.actor" in resp.json()["message"], resp.text
    resp = client.post(url, json={"reason": "x", "context": {"actor": "mallory"}}, headers=AUTH)
    assert resp.status_code == 422 and "context.actor" in resp.json()["message"]
    assert history(client, released) == before

    assert client.post(url, json={"reason": "x", "context": {"interface": "cli"}}, headers=uma).status_code == 200
    # DELETE's lineage is query parameters: a name there is no parameter at all, and not recorded either
    resp = client.delete(url, params={"reason": "y", "actor": "mallory", "interface": "schedule"}, headers=uma)
    assert resp.status_code == 200
    unfreeze, freeze = history(client, released)[:2]
    assert (freeze["kind"], freeze["actor"], freeze["principal"], freeze["interface"]) == (
        "freeze",
        "airflow:uma",
        "airflow:uma",
        "cli",  # a person's own interface is kept if it is ui, rest_api or cli
    )
    assert (unfreeze["kind"], unfreeze["actor"], unfreeze["interface"]) == ("unfreeze", "airflow:uma", "rest_api")
    assert freeze["details"]["who"] == "airflow:uma" and unfreeze["details"]["frozenBy"] == "airflow:uma"


def test_the_service_token_records_the_runs_user_and_refuses_an_unknown_run(client, released):
    url = f"/v1/models/{released}/versions/3/transitions"
    resp = client.post(
        url, json={"toState": "production", "context": ALICE_RUN | {"runId": "manual__nope"}}, headers=AUTH
    )
    assert (
        resp.status_code == 422 and "run 'manual__nope' of DAG 'model_deploy' does not exist" in resp.json()["message"]
    )
    assert client.get(f"/v1/models/{released}", headers=AUTH).json()["version"] == 2  # nothing changed
    resp = client.post(url, json={"toState": "production", "context": ALICE_RUN | {"taskId": "promote"}}, headers=AUTH)
    assert resp.status_code == 200, resp.text
    event = history(client, released, kind="transition")[0]
    assert (event["toState"], event["actor"], event["principal"], event["interface"]) == (
        "production",
        "alice",  # the run's triggering user
        SERVICE,
        "ui",  # how the run was started (Airflow's triggered_by), not the "pipeline" the body says
    )
    assert (event["dagId"], event["runId"], event["taskId"]) == ("model_deploy", "manual__alice", "promote")
    # without a run: the service itself
    client.post(f"/v1/models/{released}/freeze", json={"reason": "x", "context": {"interface": "cli"}}, headers=AUTH)
    freeze = history(client, released, kind="freeze")[0]
    assert (freeze["actor"], freeze["principal"], freeze["interface"], freeze["runId"]) == (SERVICE, SERVICE, "cli", "")


def test_without_a_run_lookup_the_service_is_recorded_with_the_run_it_names(db_url):
    model = unique("nolookup")
    with TestClient(app_for(db_url, run_lookup=None)) as c:
        register(c, model, 1, context=ALICE_RUN | {"runId": "manual__anything"})
        (event,) = history(c, model, kind="registered")
    assert (event["actor"], event["principal"], event["interface"], event["runId"]) == (
        SERVICE,
        SERVICE,
        "pipeline",
        "manual__anything",
    )


# --------------------------------------------------------------------------- leases


def acquire(client, model: str, headers: dict, holder: str = "model_deploy/manual__alice", **ctx: str):
    context = ALICE_RUN | ctx
    body = {"holder": holder, "runId": context["runId"], "ttlSeconds": 60, "context": context}
    return client.post(f"/v1/models/{model}/lock", json=body, headers=headers)


def lock_of(client, model: str) -> dict | None:
    return client.get(f"/v1/models/{model}", headers=AUTH).json()["lock"]


def test_lease_theft_with_the_holders_name_and_run_gets_409_and_no_token(client, jwts):
    model = unique("theft")
    first = acquire(client, model, AUTH)
    assert first.status_code == 200, first.text
    token = first.json()["token"]
    uma = bearer(jwts["user"])  # allowed to write, but not the principal that took the lease

    stolen = acquire(client, model, uma)  # the holder's name and run id, both shown to any reader
    assert stolen.status_code == 409 and "token" not in stolen.json() and token not in stolen.text
    assert "being deployed by model_deploy/manual__alice (run manual__alice)" in stolen.json()["message"]
    renew = client.post(f"/v1/models/{model}/lock/renew", json={"ttlSeconds": 600, "context": ALICE_RUN}, headers=uma)
    assert renew.status_code == 409 and token not in renew.text
    assert client.delete(f"/v1/models/{model}/lock", params=ALICE_RUN, headers=uma).status_code == 409
    assert lock_of(client, model)["expiresAt"] == first.json()["expiresAt"]

    # the same principal acting for the same run (a task retry) extends its lease, and gets no token either
    again = acquire(client, model, AUTH)
    assert again.status_code == 200 and again.json()["renewed"] is True and "token" not in again.json()
    assert token not in again.text
    # the service token acting for another run is not the holder
    other = client.post(
        f"/v1/models/{model}/lock/renew",
        json={"ttlSeconds": 60, "context": ALICE_RUN | {"runId": "manual__7"}},
        headers=AUTH,
    )
    assert other.status_code == 409
    # the pipeline renews and releases as the principal and run that took it (its tasks never see the token)
    mine = client.post(f"/v1/models/{model}/lock/renew", json={"ttlSeconds": 120, "context": ALICE_RUN}, headers=AUTH)
    assert mine.status_code == 200 and "token" not in mine.json()
    assert client.delete(f"/v1/models/{model}/lock", params=ALICE_RUN, headers=AUTH).status_code == 204
    assert lock_of(client, model) is None


def test_the_lease_token_is_never_in_a_read_or_the_history(client, db_url, released):
    resp = acquire(client, released, AUTH)
    token = resp.json()["token"]
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert len(token) >= 32
    renewed = client.post(
        f"/v1/models/{released}/lock/renew",
        json={"ttlSeconds": 60, "context": ALICE_RUN},
        headers=AUTH | {LEASE: token},
    )
    assert renewed.status_code == 200
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            stored = conn.execute(
                sa.text(
                    "SELECT l.token, l.principal FROM deployment_locks l JOIN models m ON m.id = l.model_id "
                    "WHERE m.name = :m"
                ),
                {"m": released},
            ).one()
    finally:
        engine.dispose()
    assert tuple(stored) == (digest, SERVICE)  # the database holds a digest, never a usable token

    def reads() -> Iterator[str]:
        for url in (
            "/v1/models",
            f"/v1/models/{released}",
            f"/v1/models/{released}/history?kind=lock",
            f"/v1/history?model={released}",
            f"/v1/models/{released}/settings",
            "/metrics",
        ):
            answer = client.get(url, headers=AUTH)
            assert answer.status_code == 200, url
            yield answer.text

    texts = list(reads())
    assert lock_of(client, released)["holder"] == "model_deploy/manual__alice"
    assert client.delete(f"/v1/models/{released}/lock", headers=AUTH | {LEASE: token}).status_code == 204
    texts += list(reads())
    for text in texts:
        assert token not in text and digest not in text
    assert [e["reason"] for e in history(client, released, kind="lock")] == ["released", "acquired"]


def test_release_takes_the_token_in_a_header_never_in_the_url(client, released):
    token = acquire(client, released, AUTH, holder="h", runId="manual__7").json()["token"]
    resp = client.delete(f"/v1/models/{released}/lock", params={"token": token}, headers=AUTH)
    assert resp.status_code == 422 and "X-Lease-Token header" in resp.json()["message"]
    assert lock_of(client, released)["holder"] == "h"  # still held
    assert client.delete(f"/v1/models/{released}/lock", headers=AUTH | {LEASE: "not-it"}).status_code == 409
    assert client.delete(f"/v1/models/{released}/lock", headers=AUTH | {LEASE: token}).status_code == 204
    assert lock_of(client, released) is None
    assert client.delete(f"/v1/models/{released}/lock", headers=AUTH | {LEASE: token}).status_code == 204  # no-op


def test_an_expired_lease_is_not_renewed_and_the_takeover_names_its_holder(client, jwts):
    model = unique("expired")
    first = client.post(
        f"/v1/models/{model}/lock",
        json={"holder": "model_deploy/manual__alice", "runId": "manual__alice", "ttlSeconds": 1, "context": ALICE_RUN},
        headers=AUTH,
    )
    token = first.json()["token"]
    time.sleep(1.2)
    renew = f"/v1/models/{model}/lock/renew"
    by_token = client.post(renew, json={"ttlSeconds": 60}, headers=AUTH | {LEASE: token})
    assert by_token.status_code == 409 and "expired" in by_token.json()["message"]
    by_run = client.post(renew, json={"ttlSeconds": 60, "context": ALICE_RUN}, headers=AUTH)
    assert by_run.status_code == 409 and "expired" in by_run.json()["message"]

    taken = acquire(client, model, bearer(jwts["op"]), holder="otto by hand", runId="")
    assert taken.status_code == 200, taken.text
    assert taken.json()["token"] and taken.json()["holder"] == "otto by hand"
    assert taken.json()["takenOverFrom"] == {
        "holder": "model_deploy/manual__alice",
        "runId": "manual__alice",
        "expiredAt": first.json()["expiresAt"],
    }
    event = history(client, model, kind="lock")[0]
    assert event["reason"] == "acquired (expired lease taken over)" and event["actor"] == "airflow:otto"
    assert event["details"]["takenOverFrom"] == taken.json()["takenOverFrom"]
    # the old holder's token is worth nothing now
    assert client.post(renew, json={"ttlSeconds": 60}, headers=AUTH | {LEASE: token}).status_code == 409
    assert client.delete(f"/v1/models/{model}/lock", headers=AUTH | {LEASE: token}).status_code == 409


# --------------------------------------------------------------------------- CSRF: the UI cookie's writes


def page_session(app, jwt: str) -> TestClient:
    """A browser signed in to Airflow: its ``_token`` cookie goes with every request (no Authorization header)."""
    return TestClient(app, cookies={"_token": jwt})


def test_a_cookie_write_needs_the_sessions_csrf_token(client, released, jwts):
    uma, otto = page_session(client.app, jwts["user"]), page_session(client.app, jwts["op"])
    url = f"/v1/models/{released}/freeze"
    body = {"reason": "from the page", "context": {"interface": "ui"}}
    assert uma.get(f"/v1/models/{released}").status_code == 200  # reads: the cookie is enough

    refused = uma.post(url, json=body)
    assert refused.status_code == 403 and CSRF_HEADER in refused.json()["message"]
    config = uma.get("/config.json").json()
    assert config["csrfHeader"] == CSRF_HEADER and config["csrfToken"]
    others = otto.get("/config.json").json()["csrfToken"]
    assert others != config["csrfToken"]
    assert uma.post(url, json=body, headers={CSRF_HEADER: others}).status_code == 403  # another session's
    assert uma.post(url, json=body, headers={CSRF_HEADER: "0" * 64}).status_code == 403
    assert history(client, released, kind="freeze") == []

    ok = uma.post(url, json=body, headers={CSRF_HEADER: config["csrfToken"]})
    assert ok.status_code == 200 and ok.json()["frozenBy"] == "airflow:uma"
    (event,) = history(client, released, kind="freeze")
    assert (event["actor"], event["interface"]) == ("airflow:uma", "ui")
    # a GET that needs write access changes nothing: the cookie is enough (the page's replica logs)
    assert uma.get(f"/v1/models/{released}/logs").status_code == 200
    # a Viewer's session with its own CSRF token: still no write
    vera = page_session(client.app, jwts["viewer"])
    csrf = vera.get("/config.json").json()["csrfToken"]
    assert vera.delete(url, params={"reason": "x"}, headers={CSRF_HEADER: csrf}).status_code == 403
    assert vera.get(f"/v1/models/{released}/logs").status_code == 403
    assert client.get("/config.json").json()["csrfToken"] == ""  # no cookie, no token


# --------------------------------------------------------------------------- input limits


@pytest.mark.parametrize(
    ("method", "url", "body", "field", "limit"),
    [
        ("POST", "/v1/models", {"name": "m" * 129}, "body.name", 128),
        (
            "POST",
            "/v1/models/{model}/versions/1/transitions",
            {"toState": "validated", "reason": "r" * 4001},
            "body.reason",
            4000,
        ),
        ("POST", "/v1/models/{model}/versions", {"hdfsUri": "hdfs:///" + "u" * 2048}, "body.hdfsUri", 2048),
        ("POST", "/v1/models/{model}/lock", {"holder": "h" * 257}, "body.holder", 256),
        (
            "POST",
            "/v1/models/{model}/freeze",
            {"reason": "x", "context": {"runId": "r" * 251}},
            "body.context.runId",
            250,
        ),
        ("POST", "/v1/models/" + "m" * 129 + "/versions", {}, "path.name", 128),
        ("DELETE", "/v1/models/{model}/freeze?reason=x&taskId=" + "t" * 251, None, "query.taskId", 250),
    ],
    ids=["name", "reason", "hdfsUri", "holder", "context.runId", "path-name", "query-taskId"],
)
def test_oversized_strings_are_a_422_naming_the_field(client, released, method, url, body, field, limit):
    before = history(client, released)
    resp = client.request(method, url.format(model=released), json=body, headers=AUTH)
    assert resp.status_code == 422, resp.text
    message = resp.json()["message"]
    assert f"{field}: String should have at most {limit} characters" in message, message
    assert history(client, released) == before


def test_a_body_over_16_mib_is_a_413(client, released):
    register(client, released, 4)
    url = f"/v1/models/{released}/versions/4/report"
    big = b'{"metrics": {"x": "' + b"x" * (17 * 1024 * 1024) + b'"}}'
    resp = client.patch(url, content=big, headers=AUTH | {"Content-Type": "application/json"})
    assert resp.status_code == 413 and f"over the limit of {MAX_BODY_BYTES} bytes" in resp.json()["message"]

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"metrics": {"x": "'
        for _ in range(17):
            yield b"x" * (1024 * 1024)
        yield b'"}}'

    resp = client.patch(url, content=chunked(), headers=AUTH | {"Content-Type": "application/json"})
    assert resp.status_code == 413 and "without a Content-Length" in resp.json()["message"], resp.text
    assert client.get(f"/v1/models/{released}/versions/4", headers=AUTH).json()["metrics"] == {}
    # under the limit: accepted
    fine = client.patch(url, json={"metrics": {"x": "x" * (1024 * 1024)}}, headers=AUTH)
    assert fine.status_code == 200, fine.text


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"at": ""}, "at is required: an ISO 8601 time"),
        ({}, "query.at: Field required"),
        ({"at": "last tuesday"}, "invalid time 'last tuesday': use ISO 8601"),
    ],
    ids=["empty", "missing", "not-a-time"],
)
def test_production_at_needs_a_time(client, released, params, words):
    resp = client.get(f"/v1/models/{released}/production", params=params, headers=AUTH)
    assert resp.status_code == 422 and resp.json()["error"] == "InvalidRequest", resp.text
    assert words in resp.json()["message"]


# --------------------------------------------------------------------------- /docs and /openapi.json


def test_docs_follow_the_reads_policy(client, db_url, jwts):
    for url in ("/docs", "/openapi.json"):
        resp = client.get(url)
        assert resp.status_code == 401 and "bearer token" in resp.json()["message"], url
        assert client.get(url, headers={"Authorization": "Bearer forged"}).status_code == 403
        assert client.get(url, headers=AUTH).status_code == 200
        assert client.get(url, headers=bearer(jwts["viewer"])).status_code == 200
    assert "swagger" in client.get("/docs", headers=AUTH).text.lower()
    with TestClient(app_for(db_url, config={"public_reads": True})) as public:
        assert public.get("/docs").status_code == 200
        assert "/v1/models" in public.get("/openapi.json").json()["paths"]


# --------------------------------------------------------------------------- the history in the database


def test_truncating_the_history_is_refused_on_postgresql(client, db_url, released):
    if db_url.startswith("sqlite"):
        pytest.skip("SQLite has no TRUNCATE (its DELETE trigger covers `DELETE FROM history`)")
    engine = sa.create_engine(db_url)
    try:
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as conn:
            conn.exec_driver_sql("TRUNCATE history")
    finally:
        engine.dispose()
    assert history(client, released)


def test_migration_0004_hashes_held_lease_tokens(old_db_url):  # noqa: F811 - the imported fixture
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(registry_service.__file__).parent / "migrations"))
    cfg.set_main_option("sqlalchemy.url", old_db_url.replace("%", "%%"))
    command.upgrade(cfg, "0003")
    engine = sa.create_engine(old_db_url)
    old_token = "0123456789abcdef0123456789abcdef"
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO models (id, name, description, created_at, updated_at) "
                "VALUES (1, 'held', '', '2026-11-01', '2026-11-01')"
            )
            conn.exec_driver_sql(
                "INSERT INTO deployment_locks (model_id, holder, run_id, token, acquired_at, expires_at) "
                f"VALUES (1, 'run-a', 'a', '{old_token}', '2026-11-01', '2999-01-01')"
            )
        registry_service.migrate(old_db_url)
        with engine.connect() as conn:
            row = conn.exec_driver_sql("SELECT token, principal FROM deployment_locks").one()
        assert tuple(row) == (hashlib.sha256(old_token.encode()).hexdigest(), "")
        registry_service.db.engine_for(old_db_url).dispose()
        # its holder still releases it with the token it was given
        with TestClient(app_for(old_db_url)) as c:
            assert c.delete("/v1/models/held/lock", headers=AUTH | {LEASE: "wrong"}).status_code == 409
            assert c.delete("/v1/models/held/lock", headers=AUTH | {LEASE: old_token}).status_code == 204
        registry_service.db.engine_for(old_db_url).dispose()
        command.downgrade(cfg, "0003")
        assert "principal" not in {c["name"] for c in sa.inspect(engine).get_columns("deployment_locks")}
    finally:
        engine.dispose()
