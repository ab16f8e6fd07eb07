"""Configuration is read from one place and every service is configured for loopback only."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

import stack
from tfdeploy.settings import Settings


def test_bad_port_names_the_variable(monkeypatch):
    monkeypatch.setenv("AIRFLOW_PORT", "eighty")
    with pytest.raises(ValueError, match="AIRFLOW_PORT='eighty' is not a port number"):
        Settings()
    monkeypatch.setenv("AIRFLOW_PORT", "70000")
    with pytest.raises(ValueError, match="AIRFLOW_PORT=70000 is out of range"):
        Settings()


def test_credentials_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("AIRFLOW_USER", "ops")
    monkeypatch.setenv("AIRFLOW_PASSWORD", "s3cret")
    s = Settings()
    assert (s.airflow_user, s.airflow_password) == ("ops", "s3cret")
    env = stack.airflow_env(s)
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "ops:admin"


def test_hadoop_config_binds_loopback_and_redirects_to_it(monkeypatch, tmp_path):
    monkeypatch.setenv("TFDEPLOY_STATE_DIR", str(tmp_path))
    conf = stack.write_hadoop_conf(Settings())
    props = {
        p.findtext("name"): p.findtext("value") for p in ET.parse(conf / "hdfs-site.xml").getroot().iter("property")
    }
    for key in (
        "dfs.namenode.http-address",
        "dfs.namenode.rpc-address",
        "dfs.datanode.address",
        "dfs.datanode.http.address",
        "dfs.datanode.ipc.address",
    ):
        assert props[key].startswith("127.0.0.1:"), key
    assert props["dfs.datanode.hostname"] == "127.0.0.1"
    assert props["dfs.replication"] == "1"
    assert props["dfs.namenode.name.dir"].startswith(f"file://{tmp_path}")


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
