"""Safe defaults of the stack: generated passwords (Airflow's users, PostgreSQL's roles), stored 0600 in a 0700
secrets directory, generated once and stable after; the simple auth manager's passwords file and the Airflow home
private; `stack.py status` shows the admin password only to whoever may read its file; PostgreSQL asks every role
for its password."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

import stack
from tfdeploy.settings import Settings, settings_for


@pytest.fixture
def state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty state directory of its own; no password given by the environment."""
    monkeypatch.setenv("TFDEPLOY_STATE_DIR", str(tmp_path))
    for name in ("AIRFLOW_HOME", "AIRFLOW_PASSWORD", "AIRFLOW_USER", "POSTGRES_PASSWORD", "POSTGRES_USER"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_admin_password_is_generated_once_stored_0600_and_announced_once(state, capsys):
    s = settings_for("dev")
    assert s.airflow_password == ""  # before the first `up`
    first = stack.airflow_passwords(s)
    assert list(first) == ["admin"] and len(first["admin"]) >= 24 and first["admin"] != "admin"
    announced = capsys.readouterr().err
    assert first["admin"] in announced and str(s.airflow_password_file) in announced
    assert stack.airflow_passwords(settings_for("dev")) == first  # stable
    assert capsys.readouterr().err == ""  # printed once, when generated
    assert Settings().airflow_password == first["admin"]  # what clients (tests, demo, bench) log in with
    assert mode(s.airflow_password_file) == 0o600 and mode(s.secrets_dir) == 0o700


def test_each_test_stack_user_gets_its_own_password_with_its_airflow_role(state):
    test, dev = settings_for("test"), settings_for("dev")
    assert stack.airflow_users(test) == {"admin": "admin", "viewer": "viewer", "user": "user", "op": "op"}
    assert stack.airflow_users(dev) == {"admin": "admin"}  # the developer's stack: only the admin
    env = stack.airflow_env(test)
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "admin:admin,viewer:viewer,user:user,op:op"
    passwords = stack.airflow_passwords(test)
    assert set(passwords) == {"admin", "viewer", "user", "op"}
    assert len(set(passwords.values())) == 4 and not set(passwords) & set(passwords.values())
    assert stack.airflow_passwords(settings_for("test")) == passwords
    assert all(mode(path) == 0o600 for path in test.secrets_dir.iterdir())


def test_the_passwords_file_airflow_reads_is_0600_in_a_private_home(state, monkeypatch):
    s = settings_for("test")
    monkeypatch.setenv("REGISTRY_DB_URL", f"sqlite:///{s.state_dir / 'registry.db'}")  # a registry on SQLite
    s.airflow_home.mkdir(parents=True)
    s.airflow_home.chmod(0o755)
    for name in ("airflow.cfg", "airflow.db"):  # as Airflow leaves them: world-readable
        (s.airflow_home / name).write_text("secret_key = abc\n")
        (s.airflow_home / name).chmod(0o644)
    registry_db = s.state_dir / "registry.db"  # the registry's SQLite database: lease tokens
    registry_db.write_text("")
    registry_db.chmod(0o644)
    path = stack.airflow_passwords_file(s)
    path.write_text(json.dumps({"admin": "admin"}))  # an old one: admin/admin, 0644
    path.chmod(0o644)
    assert stack.airflow_env(s)["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] == str(path)
    stack._write_password(s)
    assert json.loads(path.read_text()) == stack.airflow_passwords(s)  # every user's, admin/admin gone
    assert mode(path) == 0o600 and mode(s.airflow_home) == 0o700
    assert mode(s.airflow_home / "airflow.cfg") == mode(s.airflow_home / "airflow.db") == 0o600
    assert mode(registry_db) == 0o600 and mode(s.logs_dir) == 0o700


def test_a_secret_written_before_this_rule_is_kept_and_made_0600(state):
    s = settings_for("dev")
    s.secrets_dir.mkdir(mode=0o755)
    s.airflow_password_file.write_text("chosen-before\n")
    s.airflow_password_file.chmod(0o644)
    assert stack.airflow_passwords(s) == {"admin": "chosen-before"}
    assert mode(s.airflow_password_file) == 0o600 and mode(s.secrets_dir) == 0o700


def _login_line_as(uid: int, s: Settings) -> str:
    """stack.airflow_login(s) computed by a child process running as ``uid`` (forked: no interpreter to find)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to uid, answer through the pipe, never return into pytest
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.write(write, stack.airflow_login(s).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as fh:
        line = fh.read()
    os.waitpid(pid, 0)
    return line


def test_status_shows_the_admin_password_only_to_whoever_may_read_its_file(state):
    s = settings_for("dev")
    assert "no password generated yet" in stack.airflow_login(s)
    password = stack.airflow_passwords(s)["admin"]
    assert (
        stack.airflow_login(s)
        == f"Airflow login: user 'admin', password {password} (stored in {s.airflow_password_file})"
    )
    if os.geteuid() != 0:
        pytest.skip("needs root to run a child as another user")
    hidden = _login_line_as(65534, s)  # nobody
    assert password not in hidden
    assert hidden == (
        f"Airflow login: user 'admin'; its password is in {s.airflow_password_file} "
        "(readable by its owner and root only)"
    )


def test_status_prints_the_login_line(state, capsys, monkeypatch):
    monkeypatch.setenv("TFDEPLOY_STACK", "dev")
    password = stack.airflow_passwords(settings_for("dev"))["admin"]
    monkeypatch.setattr(stack, "SERVICES", {"airflow": (None, lambda s: "not running", ())})
    assert stack.main(["status", "airflow"]) == 0
    assert f"[stack] Airflow login: user 'admin', password {password}" in capsys.readouterr().out


def test_postgres_urls_carry_the_role_s_password_quoted(state, monkeypatch):
    s = settings_for("dev")
    generated = stack.pg_passwords(s)
    assert set(generated) == {"postgres", "tfdeploy", "airflow"} and len(set(generated.values())) == 3
    assert s.postgres_password == generated["tfdeploy"]
    assert s.postgres_url == f"postgresql+psycopg2://tfdeploy:{generated['tfdeploy']}@127.0.0.1:5433/tfdeploy_registry"
    assert stack.pg_passwords(settings_for("dev")) == generated  # stable
    assert all(mode(path) == 0o600 for path in s.secrets_dir.iterdir())
    monkeypatch.setenv("POSTGRES_PASSWORD", "p@ss:w/rd%")
    s = settings_for("dev")
    assert (
        s.postgres_test_url == "postgresql+psycopg2://tfdeploy:p%40ss%3Aw%2Frd%25@127.0.0.1:5433/tfdeploy_registry_test"
    )
    assert stack.pg_passwords(s)["tfdeploy"] == "p@ss:w/rd%"
    import sqlalchemy as sa

    assert sa.make_url(s.postgres_test_url).password == "p@ss:w/rd%"


def test_postgres_asks_every_role_for_its_password_and_accepts_nothing_else():
    rules = [line.split() for line in stack.pg_hba_conf().splitlines() if line and not line.startswith("#")]
    assert rules == [
        ["local", "all", "all", "scram-sha-256"],
        ["host", "all", "all", "127.0.0.1/32", "scram-sha-256"],
    ]


def test_no_secret_of_the_stack_is_readable_by_others_after_up_s_helpers(state):
    """Whatever up's helpers wrote into the secrets directory: the owner's only."""
    s = settings_for("test")
    stack.airflow_env(s)  # fernet key, JWT secret, registry token
    stack.airflow_passwords(s)
    stack.pg_passwords(s)
    files = sorted(p.name for p in s.secrets_dir.iterdir())
    assert {
        "airflow_password",
        "postgres_password",
        "postgres_superuser_password",
        "airflow_db_password",
        "redis_password",
        "fernet_key",
    } <= set(files)
    assert {p.name: mode(p) for p in s.secrets_dir.iterdir()} == dict.fromkeys(files, 0o600)
    assert mode(s.secrets_dir) == 0o700
