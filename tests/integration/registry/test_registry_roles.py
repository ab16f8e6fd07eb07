"""Who may change the registry, decided by Airflow's auth manager, with the test stack's real users of each role
(Viewer, User, Op, Admin: the simple auth manager's roles), and who the history says acted."""

from __future__ import annotations

import uuid

import pytest
import requests

import stack
from tfdeploy.airflow_client import AirflowClient

ROLES = ("viewer", "user", "op", "admin")


@pytest.fixture(scope="module")
def base(settings) -> str:
    return f"{settings.airflow_url}/registry"


@pytest.fixture(scope="module")
def tokens(settings) -> dict[str, str]:
    """Each role's Airflow JWT, from POST /auth/token with that user's password."""
    passwords = stack.airflow_passwords(settings)
    users = stack.airflow_users(settings)
    by_role = {role: user for user, role in users.items()}
    return {
        role: AirflowClient(settings.airflow_url, by_role[role], passwords[by_role[role]]).token() for role in ROLES
    }


@pytest.fixture(scope="module")
def service(settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.airflow_env(settings)['REGISTRY_API_TOKEN']}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def new_model(base: str, service: dict[str, str]) -> str:
    model = f"roles-{uuid.uuid4().hex[:6]}"
    resp = requests.post(f"{base}/v1/models", json={"name": model}, headers=service, timeout=10)
    assert resp.status_code == 201, resp.text
    return model


@pytest.mark.parametrize("role", ROLES)
def test_every_role_reads(base, tokens, service, role):
    model = new_model(base, service)
    resp = requests.get(f"{base}/v1/models/{model}", headers=bearer(tokens[role]), timeout=10)
    assert resp.status_code == 200 and resp.json()["modelName"] == model


@pytest.mark.parametrize(("role", "allowed"), [("viewer", False), ("user", True), ("op", True), ("admin", True)])
def test_writes_follow_who_may_trigger_model_deploy(base, tokens, service, settings, role, allowed):
    model = new_model(base, service)
    headers = bearer(tokens[role])
    freeze = requests.post(f"{base}/v1/models/{model}/freeze", json={"reason": "incident"}, headers=headers, timeout=10)
    lock = requests.post(
        f"{base}/v1/models/{model}/lock", json={"holder": "someone", "runId": "r1"}, headers=headers, timeout=10
    )
    rollback = requests.post(
        f"{base}/v1/models/{model}/rollback", json={"version": 1, "reason": "bad one"}, headers=headers, timeout=10
    )
    if not allowed:
        for resp in (freeze, lock, rollback):
            assert resp.status_code == 403, resp.text
            assert "may read the registry but not change it" in resp.json()["message"]
        history = requests.get(f"{base}/v1/models/{model}/history", headers=service, timeout=10).json()["events"]
        assert [e["kind"] for e in history] == ["model_created"]  # nothing of the viewer's got in
        return
    assert freeze.status_code == 200 and lock.status_code == 200, (freeze.text, lock.text)
    assert rollback.status_code != 403  # allowed to ask (the version does not exist: 404)
    events = requests.get(f"{base}/v1/models/{model}/history", headers=service, timeout=10).json()["events"]
    user = next(u for u, r in stack.airflow_users(settings).items() if r == role)
    assert {(e["kind"], e["actor"], e["principal"]) for e in events if e["kind"] in ("freeze", "lock")} == {
        ("freeze", f"airflow:{user}", f"airflow:{user}"),
        ("lock", f"airflow:{user}", f"airflow:{user}"),
    }


def test_a_name_in_the_body_is_refused_not_recorded(base, tokens, service):
    model = new_model(base, service)
    resp = requests.post(
        f"{base}/v1/models/{model}/freeze",
        json={"reason": "x", "context": {"actor": "mallory"}},
        headers=bearer(tokens["user"]),
        timeout=10,
    )
    assert resp.status_code == 422 and "actor" in resp.json()["message"]


def test_the_service_token_records_the_run_s_triggering_user(base, service, airflow, settings):
    """The pipeline's writes name who triggered the run, looked up by the registry in Airflow's database."""
    airflow.wait_for_dag("stack_check")
    run = airflow.trigger("stack_check")
    model = new_model(base, service)
    context = {"interface": "pipeline", "dagId": "stack_check", "runId": run["dag_run_id"], "taskId": "t"}
    resp = requests.post(
        f"{base}/v1/models/{model}/freeze", json={"reason": "drill", "context": context}, headers=service, timeout=10
    )
    assert resp.status_code == 200, resp.text
    events = requests.get(f"{base}/v1/models/{model}/history", headers=service, timeout=10).json()["events"]
    freeze = next(e for e in events if e["kind"] == "freeze")
    assert (freeze["actor"], freeze["principal"], freeze["interface"], freeze["runId"]) == (
        settings.airflow_user,
        "tfdeploy-service",
        "rest_api",
        run["dag_run_id"],
    )
    unknown = context | {"runId": "manual__never"}
    resp = requests.post(
        f"{base}/v1/models/{model}/freeze", json={"reason": "drill", "context": unknown}, headers=service, timeout=10
    )
    assert resp.status_code == 422 and "does not exist in Airflow" in resp.json()["message"]


def test_cookie_writes_need_the_pages_csrf_token(base, tokens, service):
    model = new_model(base, service)
    cookie = {"_token": tokens["user"]}
    url = f"{base}/v1/models/{model}/freeze"
    assert requests.post(url, json={"reason": "x"}, cookies=cookie, timeout=10).status_code == 403
    page = requests.get(f"{base}/config.json", cookies=cookie, timeout=10).json()
    other = requests.get(f"{base}/config.json", cookies={"_token": tokens["op"]}, timeout=10).json()
    forged = {page["csrfHeader"]: other["csrfToken"]}  # another session's token
    assert requests.post(url, json={"reason": "x"}, cookies=cookie, headers=forged, timeout=10).status_code == 403
    good = {page["csrfHeader"]: page["csrfToken"]}
    assert requests.post(url, json={"reason": "x"}, cookies=cookie, headers=good, timeout=10).status_code == 200
    # reads with the cookie alone stay fine (the page's GETs)
    assert requests.get(f"{base}/v1/models/{model}", cookies=cookie, timeout=10).status_code == 200


def test_docs_follow_the_reads_policy(base, tokens):
    assert requests.get(f"{base}/openapi.json", timeout=10).status_code == 401
    assert requests.get(f"{base}/docs", timeout=10).status_code == 401
    spec = requests.get(f"{base}/openapi.json", headers=bearer(tokens["viewer"]), timeout=10)
    assert spec.status_code == 200 and "/v1/models" in spec.json()["paths"]
