"""The test stack's Airflow as `stack.py up` leaves it: no admin/admin, a generated password per user (Airflow's
roles Admin, Viewer, User, Op on the test stack), its passwords file and home private to their owner."""

from __future__ import annotations

import stat

import pytest
import requests

import stack


def token(settings, user: str, password: str) -> requests.Response:
    return requests.post(
        f"{settings.airflow_url}/auth/token", json={"username": user, "password": password}, timeout=10
    )


def test_airflow_refuses_admin_admin(settings):
    assert settings.airflow_password not in ("", "admin")
    assert token(settings, "admin", "admin").status_code == 401
    assert token(settings, settings.airflow_user, settings.airflow_password).status_code == 201


@pytest.mark.parametrize(("user", "role"), [("admin", "admin"), ("viewer", "viewer"), ("user", "user"), ("op", "op")])
def test_each_user_logs_in_with_its_own_password_and_role(settings, user, role):
    assert stack.airflow_users(settings)[user] == role
    passwords = stack.airflow_passwords(settings)
    assert token(settings, user, user).status_code == 401  # never the name as its password
    others = [p for u, p in passwords.items() if u != user]
    assert all(token(settings, user, other).status_code == 401 for other in others[:1])
    resp = token(settings, user, passwords[user])
    assert resp.status_code == 201
    auth = {"Authorization": f"Bearer {resp.json()['access_token']}"}
    dag = requests.get(f"{settings.airflow_url}/api/v2/dags/stack_check", headers=auth, timeout=10)
    assert dag.status_code == 200
    # (un)pausing a DAG is an edit: a Viewer may not, the others may (sent unchanged: other tests use the DAG)
    pause = requests.patch(
        f"{settings.airflow_url}/api/v2/dags/stack_check",
        json={"is_paused": dag.json()["is_paused"]},
        headers=auth,
        timeout=10,
    )
    assert pause.status_code == (403 if role == "viewer" else 200), pause.text


def test_the_passwords_and_the_airflow_home_are_private(settings):
    def mode(path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(stack.airflow_passwords_file(settings)) == 0o600
    assert mode(settings.airflow_home) == 0o700
    assert mode(settings.secrets_dir) == 0o700
    # files 0600; directories of secrets (the second Docker engine's TLS material) 0700, their files 0600
    found = {str(p.relative_to(settings.secrets_dir)): (p.is_dir(), mode(p)) for p in settings.secrets_dir.rglob("*")}
    assert found == {name: (is_dir, 0o700 if is_dir else 0o600) for name, (is_dir, _) in found.items()}
