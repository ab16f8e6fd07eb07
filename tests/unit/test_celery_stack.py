"""The environment stack.py gives Airflow: the CeleryExecutor with the stack's Redis as broker, metadata and Celery
results in the stack's PostgreSQL (database `airflow`, its own role and password), two Celery workers that tell
task instances apart by their node names, no log server; and the broker's own configuration."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

import stack
from tfdeploy.settings import PROJECT_ROOT, WORKER_NAME_VAR, Settings, airflow_hostname, settings_for

PASSWORD_VARS = ("AIRFLOW_DB_PASSWORD", "REDIS_PASSWORD", "POSTGRES_PASSWORD", "AIRFLOW_PASSWORD")


@pytest.fixture
def state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty state directory of its own; no password, port or role given by the environment."""
    monkeypatch.setenv("TFDEPLOY_STATE_DIR", str(tmp_path))
    for name in (
        *PASSWORD_VARS,
        "AIRFLOW_HOME",
        "AIRFLOW_DB_USER",
        "POSTGRES_USER",
        "POSTGRES_PORT",
        "REDIS_PORT",
        "CELERY_WORKER_CONCURRENCY",
        WORKER_NAME_VAR,
    ):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _secret(s: Settings, name: str) -> str:
    return (s.secrets_dir / name).read_text().strip()


@pytest.mark.parametrize(("profile", "pg_port", "redis_port"), [("dev", 5433, 6380), ("test", 15433, 16380)])
def test_airflow_runs_on_celery_with_redis_and_its_metadata_on_postgresql(state, profile, pg_port, redis_port):
    s = settings_for(profile)
    env = stack.airflow_env(s)
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    db_password, redis_password = _secret(s, "airflow_db_password"), _secret(s, "redis_password")
    assert len({db_password, redis_password, _secret(s, "postgres_password")}) == 3  # a password per role
    db = sa.make_url(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    assert (db.drivername, db.username, db.password, db.host, db.port, db.database) == (
        "postgresql+psycopg2",
        "airflow",
        db_password,
        "127.0.0.1",
        pg_port,
        "airflow",
    )
    backend = env["AIRFLOW__CELERY__RESULT_BACKEND"]
    assert backend.startswith("db+") and sa.make_url(backend.removeprefix("db+")) == db  # results beside the metadata
    assert env["AIRFLOW__CELERY__BROKER_URL"] == f"redis://:{redis_password}@127.0.0.1:{redis_port}/0"
    assert s.ports["REDIS_PORT"] == redis_port
    # the scheduler may hand every slot of both workers a task, and no more
    assert env["AIRFLOW__CELERY__WORKER_CONCURRENCY"] == "4"
    assert env["AIRFLOW__CORE__PARALLELISM"] == str(len(stack.CELERY_WORKERS) * 4) == "8"
    assert stack.airflow_env(settings_for(profile)) == env  # generated once, the same for every component


def test_passwords_from_the_environment_are_quoted_into_the_urls(state, monkeypatch):
    from kombu.utils.url import url_to_parts  # Celery's own parser of the broker URL

    monkeypatch.setenv("AIRFLOW_DB_PASSWORD", "p@ss:w/rd%")
    monkeypatch.setenv("REDIS_PASSWORD", "r@d:is/%")
    monkeypatch.setenv("CELERY_WORKER_CONCURRENCY", "2")
    s = settings_for("dev")
    env = stack.airflow_env(s)
    assert sa.make_url(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]).password == "p@ss:w/rd%"
    assert url_to_parts(env["AIRFLOW__CELERY__BROKER_URL"]).password == "r@d:is/%"
    assert stack.pg_passwords(s)["airflow"] == "p@ss:w/rd%"  # the role gets the password Airflow uses
    assert 'requirepass "r@d:is/%"' in stack.redis_config(s).splitlines()
    assert env["AIRFLOW__CORE__PARALLELISM"] == "4"
    assert not (s.secrets_dir / "airflow_db_password").exists()  # nothing generated when the environment gives it


def test_each_role_owns_its_own_databases(state):
    s = settings_for("dev")
    assert stack.pg_databases(s) == {
        "tfdeploy_registry": "tfdeploy",
        "tfdeploy_registry_test": "tfdeploy",
        "airflow": "airflow",
    }
    assert set(stack.pg_databases(s).values()) <= set(stack.pg_passwords(s))


def test_the_broker_listens_on_loopback_only_and_asks_for_its_password(state):
    s = settings_for("test")
    lines = stack.redis_config(s).splitlines()
    settings = dict(line.split(" ", 1) for line in lines if line and not line.startswith("#"))
    assert settings["bind"] == "127.0.0.1"
    assert settings["port"] == "16380"
    assert settings["protected-mode"] == "yes"
    assert settings["requirepass"] == f'"{_secret(s, "redis_password")}"' and len(settings["requirepass"]) >= 26
    assert settings["dir"] == f'"{state / "redis" / "data"}"'
    assert settings["maxmemory-policy"] == "noeviction"  # a broker never drops a queued task
    assert settings["appendonly"] == "yes"
    assert mode(s.secrets_dir / "redis_password") == 0o600


def test_two_celery_workers_each_its_own_node_and_no_log_server(state):
    s = settings_for("dev")
    nodes = []
    for worker in stack.CELERY_WORKERS:
        args, extra = stack._airflow_command(s, worker)
        node = stack.celery_node(worker)
        assert args[1:] == ["celery", "worker", "--celery-hostname", node, "--skip-serve-logs"]
        assert extra == {WORKER_NAME_VAR: node}  # what the task instances it runs record as their hostname
        nodes.append(node)
    assert nodes == [f"worker1@{socket.getfqdn()}", f"worker2@{socket.getfqdn()}"]
    # Airflow's log servers bind every interface: none runs; every component reads the shared log folder
    for comp in ("scheduler", "triggerer"):
        assert "--skip-serve-logs" in stack._airflow_command(s, comp)[0]
    assert stack.AIRFLOW_COMPONENTS[-2:] == stack.CELERY_WORKERS  # started after the api-server they report to


def test_redis_starts_before_airflow_and_the_workers_stop_first():
    services = list(stack.SERVICES)
    assert services.index("postgres") < services.index("redis") < services.index("airflow")
    procs = stack.SERVICES["airflow"][2]
    assert procs[: len(stack.CELERY_WORKERS)] == tuple(f"airflow-{w}" for w in reversed(stack.CELERY_WORKERS))
    assert procs[-1] == "airflow-api-server"  # `down` stops in this order: the execution API goes last
    assert stack.SERVICES["redis"][2] == ("redis",)


def test_the_hostname_is_the_worker_s_node_name_else_the_machine_s(monkeypatch):
    monkeypatch.delenv(WORKER_NAME_VAR, raising=False)
    assert airflow_hostname() == socket.getfqdn()
    monkeypatch.setenv(WORKER_NAME_VAR, "worker2@example")
    assert airflow_hostname() == "worker2@example"


def test_airflow_reads_this_configuration_as_given(state):
    """Airflow itself, in a fresh interpreter with the components' environment (a worker's): the executor, the
    database, the broker and the hostname callable it resolves."""
    s = settings_for("test")
    env = {**os.environ, **stack.airflow_env(s), WORKER_NAME_VAR: stack.celery_node("worker1")}
    code = (
        "import json\n"
        "from airflow.configuration import conf\n"
        "from airflow.sdk.api.client import get_hostname\n"
        "print(json.dumps({'executor': conf.get('core', 'executor'), 'db': conf.get('database', 'sql_alchemy_conn'),"
        " 'broker': conf.get('celery', 'broker_url'), 'hostname': get_hostname()}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {
        "executor": "CeleryExecutor",
        "db": s.airflow_db_url,
        "broker": s.redis_url,
        "hostname": stack.celery_node("worker1"),
    }
