"""Stack profiles: the test suite's stack (TFDEPLOY_STACK=test) never shares state, ports, registry or
serving containers with the developer's (dev), and the serving connections parse as Airflow reads them."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import stack
from tfdeploy.settings import PROJECT_ROOT, Settings, second_docker_host_runs_here, settings_for, shared_between

DEV_PORTS = {
    "AIRFLOW_PORT": 8080,
    "HDFS_NAMENODE_RPC_PORT": 8020,
    "HDFS_WEBHDFS_PORT": 9870,
    "HDFS_DATANODE_PORT": 9866,
    "HDFS_DATANODE_HTTP_PORT": 9864,
    "HDFS_DATANODE_IPC_PORT": 9867,
    "HDFS_DATANODE2_PORT": 9966,
    "HDFS_DATANODE2_HTTP_PORT": 9964,
    "HDFS_DATANODE2_IPC_PORT": 9967,
    "POSTGRES_PORT": 5433,
    "REDIS_PORT": 6380,
    "SERVING_GRPC_PORT": 8500,
    "SERVING_REST_PORT": 8501,
    "SERVING_REPLICA_GRPC_PORT": 8510,
    "SERVING_REPLICA_REST_PORT": 8511,
    "SERVING_CANARY_GRPC_PORT": 8502,
    "SERVING_CANARY_REPLICA_GRPC_PORT": 8520,
    "SERVING_CANARY_REPLICA_REST_PORT": 8521,
    "ROUTER_STATS_PORT": 8404,
    "PROMETHEUS_PORT": 9090,
    "ALERTMANAGER_PORT": 9093,
}
# What the test session's conftest exports (stack.airflow_env) and what a user may have set.
SETTINGS_VARS = (
    *DEV_PORTS,
    "TFDEPLOY_STATE_DIR",
    "AIRFLOW_HOME",
    "REGISTRY_DB_URL",
    "DOCKER_HOST",
    "SERVING_IMAGE",
    "SERVING_STABLE_REPLICAS",
    "SERVING_HOSTS",
    "DOCKER2_SUBNET",
    "DOCKER2_PORT",
)


@pytest.fixture
def clean_env(monkeypatch):
    """No setting pinned by the environment: each profile's own defaults apply."""
    for var in SETTINGS_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("TFDEPLOY_STACK", raising=False)
    return monkeypatch


def test_dev_is_the_default_profile(clean_env):
    s = Settings()
    assert s.stack == "dev"
    assert s.state_dir == PROJECT_ROOT / ".state"
    assert s.ports == DEV_PORTS
    assert s.serving_container_prefix == "tfserving"
    assert s.serving_image == "local/tfserving-compat:latest"
    assert s.docker_host == "unix:///var/run/docker.sock"


def test_test_profile_moves_every_default(clean_env):
    clean_env.setenv("TFDEPLOY_STACK", "test")
    s = Settings()
    assert s.stack == "test"
    assert s.state_dir == PROJECT_ROOT / ".state-test"
    assert s.airflow_home == PROJECT_ROOT / ".state-test" / "airflow"
    assert s.registry_db_url.startswith("postgresql+psycopg2://tfdeploy") and s.registry_db_url.endswith(
        "@127.0.0.1:15433/tfdeploy_registry"
    )
    assert s.ports == {var: port + 10000 for var, port in DEV_PORTS.items()}
    assert (s.airflow_port, s.namenode_rpc_port, s.webhdfs_port, s.postgres_port) == (18080, 18020, 19870, 15433)
    assert (s.datanode_port, s.datanode_http_port, s.datanode_ipc_port) == (19866, 19864, 19867)
    assert (s.serving_grpc_port, s.serving_rest_port) == (18500, 18501)
    assert s.airflow_url == "http://127.0.0.1:18080"
    assert s.postgres_test_url.endswith("@127.0.0.1:15433/tfdeploy_registry_test")
    assert s.serving_container_prefix == "tfserving-test"
    # the Docker engine and the image are shared
    assert s.docker_host == "unix:///var/run/docker.sock"
    assert s.serving_image == "local/tfserving-compat:latest"


def test_the_two_profiles_share_nothing_but_the_engine(clean_env):
    assert shared_between(settings_for("test"), settings_for("dev")) == []
    clean_env.setenv("TFDEPLOY_STACK", "test")
    assert settings_for("dev").stack == "dev"  # whatever TFDEPLOY_STACK says
    assert Settings().stack == "test"  # and the override does not outlive the call


def test_explicit_variables_win_over_the_profile(clean_env, tmp_path):
    clean_env.setenv("TFDEPLOY_STACK", "test")
    clean_env.setenv("TFDEPLOY_STATE_DIR", str(tmp_path))
    clean_env.setenv("AIRFLOW_PORT", "28080")
    clean_env.setenv("HDFS_DATANODE_PORT", "29866")
    clean_env.setenv("SERVING_REST_PORT", "28501")
    clean_env.setenv("SERVING_IMAGE", "tensorflow/serving:2.19.0")
    s = Settings()
    assert s.state_dir == tmp_path
    assert (s.airflow_port, s.datanode_port, s.serving_rest_port) == (28080, 29866, 28501)
    assert s.serving_image == "tensorflow/serving:2.19.0"
    assert (s.webhdfs_port, s.serving_grpc_port) == (19870, 18500)  # the rest keep the profile's defaults


def test_a_shared_state_dir_or_port_is_reported(clean_env, tmp_path):
    clean_env.setenv("TFDEPLOY_STATE_DIR", str(tmp_path))
    clean_env.setenv("POSTGRES_PORT", "5433")
    shared = shared_between(settings_for("test"), settings_for("dev"))
    assert {"TFDEPLOY_STATE_DIR", "AIRFLOW_HOME", "REGISTRY_DB_URL", "POSTGRES_PORT=5433"} <= set(shared)


@pytest.mark.parametrize("value", ["prod", "TEST", "dev test"])
def test_an_unknown_profile_is_refused_naming_the_variable(clean_env, value):
    clean_env.setenv("TFDEPLOY_STACK", value)
    with pytest.raises(ValueError, match=r"TFDEPLOY_STACK=.* is not a stack profile; set it to one of: dev, test"):
        Settings()


def test_stack_script_refuses_an_unknown_profile_without_a_traceback(clean_env, capsys):
    clean_env.setenv("TFDEPLOY_STACK", "prod")
    assert stack.main(["status"]) == 2
    assert "TFDEPLOY_STACK='prod' is not a stack profile" in capsys.readouterr().err


def test_test_stack_refuses_to_start_on_the_dev_stack_state(clean_env, capsys):
    clean_env.setenv("TFDEPLOY_STACK", "test")
    clean_env.setenv("TFDEPLOY_STATE_DIR", str(PROJECT_ROOT / ".state"))
    assert stack.main(["up", "docker"]) == 1
    assert "refusing to start the test stack: it would share TFDEPLOY_STATE_DIR" in capsys.readouterr().err


def test_hadoop_config_uses_the_profile_datanode_ports(clean_env, tmp_path):
    clean_env.setenv("TFDEPLOY_STACK", "test")
    clean_env.setenv("TFDEPLOY_STATE_DIR", str(tmp_path))
    conf = stack.write_hadoop_conf(Settings())

    def props(path: Path) -> dict[str, str | None]:
        return {p.findtext("name"): p.findtext("value") for p in ET.parse(path).getroot().iter("property")}

    first, second = (props(conf / name / "hdfs-site.xml") for name in stack.DATANODE_NAMES)
    assert first["dfs.datanode.address"] == "127.0.0.1:19866"
    assert first["dfs.datanode.http.address"] == "127.0.0.1:19864"
    assert first["dfs.datanode.ipc.address"] == "127.0.0.1:19867"
    assert second["dfs.datanode.address"] == "127.0.0.1:19966"
    assert second["dfs.datanode.http.address"] == "127.0.0.1:19964"
    assert second["dfs.datanode.ipc.address"] == "127.0.0.1:19967"
    props = props(conf / "hdfs-site.xml")
    assert props["dfs.namenode.rpc-address"] == "127.0.0.1:18020"
    assert props["dfs.namenode.http-address"] == "127.0.0.1:19870"


def _connections(monkeypatch, tmp_path: Path, **env: str) -> dict[str, object]:
    """The serving connections as Airflow's BaseHook reads them from the environment stack.py sets."""
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))  # never ~/airflow, should this import Airflow first
    from airflow.sdk import BaseHook

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TFDEPLOY_STATE_DIR", str(tmp_path))
    airflow_env = stack.airflow_env(Settings())
    for key in ("AIRFLOW_CONN_TFSERVING_LOCAL", "AIRFLOW_CONN_SERVING_HOST_LOCAL"):
        monkeypatch.setenv(key, airflow_env[key])
    return {cid: BaseHook.get_connection(cid) for cid in ("tfserving_local", "serving_host_local")}


def test_serving_connections_parse_with_the_profile_ports(clean_env, tmp_path):
    conns = _connections(clean_env, tmp_path, TFDEPLOY_STACK="test")
    tfs = conns["tfserving_local"]
    # the pipeline drives the replica itself (reload, status); clients go through the router on 18500/18501
    assert (tfs.conn_type, tfs.host, tfs.port) == ("tfserving", "127.0.0.1", 18511)
    # replica i on the ports + 2i, at its Docker host's address: both hosts where the second one runs (as root)
    hosts = ["127.0.0.1", "10.217.0.6"][: 2 if second_docker_host_runs_here() else 1]
    assert tfs.extra_dejson == {"grpc_port": 18510, "replicas": 2, "replica_hosts": hosts}
    host = conns["serving_host_local"]
    assert (host.conn_type, host.host) == ("tfdeploy_serving_host", "unix:///var/run/docker.sock")
    assert host.extra_dejson == {"tls_verify": False, "publish_address": "127.0.0.1"}


def test_serving_connections_follow_explicit_settings(clean_env, tmp_path):
    conns = _connections(
        clean_env,
        tmp_path,
        SERVING_REPLICA_GRPC_PORT="7500",
        SERVING_REPLICA_REST_PORT="7501",
        DOCKER_HOST="tcp://10.0.0.5:2376",
    )
    tfs, host = conns["tfserving_local"], conns["serving_host_local"]
    assert (tfs.port, tfs.extra_dejson["grpc_port"]) == (7501, 7500)
    assert host.host == "tcp://10.0.0.5:2376"


def test_airflow_env_carries_the_profile_to_every_component(clean_env, tmp_path):
    clean_env.setenv("TFDEPLOY_STACK", "test")
    clean_env.setenv("TFDEPLOY_STATE_DIR", str(tmp_path))
    env = stack.airflow_env(Settings())
    assert env["TFDEPLOY_STACK"] == "test"
    assert env["AIRFLOW__API__PORT"] == "18080"
    assert env["AIRFLOW_CONN_WEBHDFS_DEFAULT"].endswith("@127.0.0.1:19870")


def test_serving_containers_are_matched_to_their_own_stack_only(clean_env, tmp_path):
    dev = tmp_path / ".state"
    test = tmp_path / ".state-test"
    clean_env.setenv("TFDEPLOY_STATE_DIR", str(dev))
    s_dev = Settings()
    clean_env.setenv("TFDEPLOY_STATE_DIR", str(test) + "/")  # a trailing slash changes nothing
    s_test = Settings()

    assert stack.owns_model_root(s_dev, f"{dev}/serving/local")
    assert not stack.owns_model_root(s_dev, f"{test}/serving/local")  # the sibling's, though it starts alike
    assert not stack.owns_model_root(s_dev, f"{tmp_path}/.state2/serving/local")
    assert not stack.owns_model_root(s_dev, f"{dev}/../.state-test/serving/local")
    assert stack.owns_model_root(s_test, f"{test}/serving/local")
    assert not stack.owns_model_root(s_test, f"{dev}/serving/local")
    for nobody in ("", str(dev), ".state/serving/local", "serving/local"):
        assert not stack.owns_model_root(s_dev, nobody), nobody


def test_the_router_config_is_valid_haproxy_and_binds_loopback_only(clean_env, tmp_path, haproxy_check):
    clean_env.setenv("TFDEPLOY_STATE_DIR", str(tmp_path))
    s = Settings()
    text = stack.router_config(s)
    binds = [line.split()[1] for line in text.splitlines() if line.strip().startswith("bind ")]
    ports = (s.serving_rest_port, s.serving_grpc_port, s.canary_grpc_port, s.router_stats_port)
    assert binds == [f"127.0.0.1:{p}" for p in ports]
    servers = [line.split()[2] for line in text.splitlines() if line.strip().startswith("server ")]
    # the replicas: each at its Docker host's address (the second replica on the second host where it runs)
    first, second = stack.serving_host_addresses(s)[0], stack.serving_host_addresses(s)[-1]
    assert first == "127.0.0.1"
    replicas = (
        (first, s.replica_rest_port),
        (second, s.replica_rest_port + 2),
        (first, s.replica_grpc_port),
        (second, s.replica_grpc_port + 2),
        (first, s.canary_replica_rest_port),
        (first, s.canary_replica_grpc_port),
    )
    assert s.stable_replicas == 2 and servers == [f"{a}:{p}" for a, p in replicas]
    haproxy_check(s, text)
