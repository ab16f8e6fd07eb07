"""Configuration is read from one place and every service is configured for loopback only."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

import stack
from tfdeploy.settings import Settings, settings_for


def test_bad_port_names_the_variable(monkeypatch):
    monkeypatch.setenv("AIRFLOW_PORT", "eighty")
    with pytest.raises(ValueError, match="AIRFLOW_PORT='eighty' is not a port number"):
        Settings()
    monkeypatch.setenv("AIRFLOW_PORT", "70000")
    with pytest.raises(ValueError, match="AIRFLOW_PORT=70000 is out of range"):
        Settings()


def test_credentials_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TFDEPLOY_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("AIRFLOW_USER", "ops")
    monkeypatch.setenv("AIRFLOW_PASSWORD", "s3cret")
    s = settings_for("dev")
    assert (s.airflow_user, s.airflow_password) == ("ops", "s3cret")
    assert stack.airflow_env(s)["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "ops:admin"
    assert stack.airflow_passwords(s) == {"ops": "s3cret"}
    assert not s.airflow_password_file.exists()  # nothing generated when the environment gives it


def _props(path) -> dict[str, str | None]:
    return {p.findtext("name"): p.findtext("value") for p in ET.parse(path).getroot().iter("property")}


def test_hadoop_config_binds_loopback_and_redirects_to_it(monkeypatch, tmp_path):
    monkeypatch.setenv("TFDEPLOY_STATE_DIR", str(tmp_path))
    conf = stack.write_hadoop_conf(Settings())
    props = _props(conf / "hdfs-site.xml")
    for key in ("dfs.namenode.http-address", "dfs.namenode.rpc-address"):
        assert props[key].startswith("127.0.0.1:"), key
    assert props["dfs.namenode.name.dir"].startswith(f"file://{tmp_path}")
    # two DataNodes, each its own conf dir, data dir and loopback ports, both redirected to by 127.0.0.1
    datanodes = [_props(conf / name / "hdfs-site.xml") for name in stack.DATANODE_NAMES]
    assert len(datanodes) == 2
    for dn in datanodes:
        for key in ("dfs.datanode.address", "dfs.datanode.http.address", "dfs.datanode.ipc.address"):
            assert dn[key].startswith("127.0.0.1:"), key
        assert dn["dfs.datanode.hostname"] == "127.0.0.1"
        assert dn["dfs.namenode.rpc-address"] == props["dfs.namenode.rpc-address"]
    assert len({dn["dfs.datanode.data.dir"] for dn in datanodes}) == 2
    ports = [dn[k] for dn in datanodes for k in ("dfs.datanode.address", "dfs.datanode.http.address")]
    assert len(set(ports)) == 4


def test_hadoop_config_keeps_writes_going_when_a_datanode_dies(monkeypatch, tmp_path):
    monkeypatch.setenv("TFDEPLOY_STATE_DIR", str(tmp_path))
    conf = stack.write_hadoop_conf(Settings())
    for path in [conf / "hdfs-site.xml", *(conf / name / "hdfs-site.xml" for name in stack.DATANODE_NAMES)]:
        props = _props(path)
        assert (props["dfs.replication"], props["dfs.namenode.replication.min"]) == ("2", "1")
        # the DataNodes' own DFSClient (WebHDFS) drops a dead pipeline member and never waits for a spare
        assert props["dfs.client.block.write.replace-datanode-on-failure.policy"] == "NEVER"
        assert props["dfs.client.block.write.replace-datanode-on-failure.best-effort"] == "true"
        assert props["dfs.namenode.avoid.write.stale.datanode"] == "true"


def test_airflow_env_keeps_every_component_on_loopback(monkeypatch, tmp_path):
    monkeypatch.setenv("TFDEPLOY_STATE_DIR", str(tmp_path))
    env = stack.airflow_env(Settings())
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].startswith("http://127.0.0.1:")
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    # secrets are generated once and then stable, so all components agree on them
    assert stack.airflow_env(Settings())["AIRFLOW__API_AUTH__JWT_SECRET"] == env["AIRFLOW__API_AUTH__JWT_SECRET"]


def test_stop_service_kills_the_whole_process_tree(monkeypatch, tmp_path):
    import time

    monkeypatch.setenv("TFDEPLOY_STATE_DIR", str(tmp_path))
    s = Settings()
    # a parent whose child moves to its own session, as Airflow task processes do
    pid = stack._spawn(s, "tree", ["bash", "-c", "setsid sleep 300 & wait"], {"PATH": "/usr/bin:/bin"})
    deadline = time.monotonic() + 5
    while not stack._descendants(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    children = stack._descendants(pid)
    assert children, "the child did not start"
    assert stack.stop_service(s, "tree", timeout=5)
    assert not any(stack._alive(p) for p in [pid, *children])
    assert stack.running_pid(s, "tree") is None


def test_postgres_settings(monkeypatch, tmp_path):
    for var in ("POSTGRES_PORT", "POSTGRES_USER", "REGISTRY_DB_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TFDEPLOY_STACK", "dev")
    monkeypatch.setenv("TFDEPLOY_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("POSTGRES_PASSWORD", raising=False)
    s = Settings()
    assert s.postgres_port == 5433  # not 5432: a machine's own PostgreSQL keeps its port
    # before the first `stack.py up` there is no password yet
    assert s.postgres_url == "postgresql+psycopg2://tfdeploy@127.0.0.1:5433/tfdeploy_registry"
    assert s.postgres_test_url == "postgresql+psycopg2://tfdeploy@127.0.0.1:5433/tfdeploy_registry_test"
    assert s.registry_db_url == s.postgres_url  # the registry lives in the stack's PostgreSQL
    assert s.postgres_data_dir == tmp_path / "postgres" / "data"
    monkeypatch.setenv("POSTGRES_PORT", "6543")
    monkeypatch.setenv("REGISTRY_DB_URL", "postgresql+psycopg2://reg@127.0.0.1:6543/tfdeploy_registry")
    s = Settings()
    assert s.postgres_url.endswith("@127.0.0.1:6543/tfdeploy_registry")
    assert s.registry_db_url == "postgresql+psycopg2://reg@127.0.0.1:6543/tfdeploy_registry"


def test_pg_bin_dir_picks_the_newest_installed_major(tmp_path):
    with pytest.raises(stack.StackError, match="PostgreSQL is not installed"):
        stack.pg_bin_dir(tmp_path)
    for major in ("9", "15", "16"):
        (tmp_path / major / "bin").mkdir(parents=True)
        (tmp_path / major / "bin" / "postgres").touch()
    (tmp_path / "17" / "lib").mkdir(parents=True)  # a leftover without a server binary
    assert stack.pg_bin_dir(tmp_path) == tmp_path / "16" / "bin"


# A fake PostgreSQL: run as "postmaster", it starts itself again as its "child" (a backend). Each
# installs its own handlers (Python's signal.signal works even when a signal was inherited as ignored,
# unlike a shell's trap) and appends the name of every signal that reaches it to <dir>/<role>.signals.
# The postmaster, on any signal, stops its child with SIGUSR1 and exits; the child exits shortly after
# its first signal, so a second, direct signal to it is still recorded.
_FAKE_POSTGRES = """
import os, signal, subprocess, sys, time

out, role = sys.argv[1], sys.argv[2]
CAUGHT = (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
stop_at = None


def record(signum):
    with open(os.path.join(out, role + ".signals"), "a") as fh:
        fh.write(signal.Signals(signum).name + "\\n")


def on_signal(signum, frame):
    global stop_at
    record(signum)
    if role == "postmaster":
        child.send_signal(signal.SIGUSR1)
        child.wait()
        os._exit(0)
    if stop_at is None:
        stop_at = time.monotonic() + 0.5


for sig in CAUGHT:
    signal.signal(sig, on_signal)
if role == "postmaster":
    child = subprocess.Popen([sys.executable, __file__, out, "child"])
else:
    open(os.path.join(out, "child.ready"), "w").close()
while stop_at is None or time.monotonic() < stop_at:
    time.sleep(0.05)
"""


def test_postgres_is_stopped_with_sigint_to_the_postmaster_only(monkeypatch, tmp_path):
    """Fast shutdown: only the recorded PID gets SIGINT; it stops its own children, as the postmaster does.

    Asserts which signals reached which process, not how long stopping took, and cannot depend on the
    signal dispositions the test process inherited (e.g. SIGINT ignored)."""
    import sys
    import time

    monkeypatch.setenv("TFDEPLOY_STATE_DIR", str(tmp_path))
    s = Settings()
    program = tmp_path / "fake_postgres.py"
    program.write_text(_FAKE_POSTGRES)
    cmd = [sys.executable, str(program), str(tmp_path), "postmaster"]
    pid = stack._spawn(s, "postgres", cmd, {"PATH": "/usr/bin:/bin"})
    deadline = time.monotonic() + 10
    while not (tmp_path / "child.ready").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (tmp_path / "child.ready").exists(), "the fake postmaster's child did not start"
    tree = [pid, *stack._descendants(pid)]
    assert len(tree) == 2

    assert stack.stop_service(s, "postgres", timeout=10)
    assert not any(stack._alive(p) for p in tree)

    def signals(role: str) -> list[str]:
        path = tmp_path / f"{role}.signals"
        return path.read_text().split() if path.exists() else []

    assert signals("postmaster") == ["SIGINT"], "the postmaster gets SIGINT (fast shutdown) and nothing else"
    assert signals("child") == ["SIGUSR1"], "the child is stopped by its postmaster, never signalled directly"


def test_a_registry_kept_in_sqlite_before_stays_there(monkeypatch, tmp_path):
    monkeypatch.delenv("REGISTRY_DB_URL", raising=False)
    monkeypatch.setenv("TFDEPLOY_STATE_DIR", str(tmp_path))
    assert Settings().registry_db_url == Settings().postgres_url
    (tmp_path / "registry.db").write_bytes(b"")  # a state directory from before the registry moved to PostgreSQL
    assert Settings().registry_db_url == f"sqlite:///{tmp_path}/registry.db"
