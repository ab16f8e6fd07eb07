"""docker-compose.yml (README "Topology: docker-compose"): docker-compose validates it with the env file that
compose_stack.py writes, and it is built as documented: the x-airflow-common anchor in every Airflow service, a
healthcheck on every long-running service, depends_on conditions, host ports on 127.0.0.1 only, images built
locally, the container ports the settings' defaults, and the configurations the local stack's generators write
(router, Prometheus, HDFS). The trust boundary: only the services that start containers hold the engine's socket;
Prometheus and the api-server read it through docker-socket-proxy, whose HAProxy configuration allows GET and HEAD
of a few endpoints only (tests/unit/test_docker_socket_proxy.py runs it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import compose_init
import pytest
import yaml
from compose_stack import COMPOSE_FILE, ComposeStack

import stack
from tfdeploy.settings import settings_for

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW_SERVICES = {
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker-1",
    "airflow-worker-2",
}
OTHER_SERVICES = {
    "postgres",
    "redis",
    "namenode",
    "datanode-1",
    "datanode-2",
    "docker-host",
    "docker-socket-proxy",
    "router",
    "prometheus",
    "alertmanager",
}
ONE_SHOT = {"airflow-init"}
# they call the replicas and the router at 127.0.0.1, as on the local stack: the serving host's network namespace
IN_SERVING_HOST_NETNS = {"router", "prometheus", "airflow-triggerer", "airflow-worker-1", "airflow-worker-2"}
STATE = "/opt/tfdeploy/state"
# the engine's API (root on the serving host) and docker-socket-proxy's read-only one
ENGINE_SOCKET = "/run/docker-host/docker.sock"
RO_SOCKET = "/run/docker-ro/docker.sock"
# they start containers (replicas, model staging, the sandbox): the engine's socket, and so root on the serving host
FULL_SOCKET_USERS = {"airflow-worker-1", "airflow-worker-2", "airflow-triggerer"}
# they only read the engine: Prometheus' service discovery, the api-server's replica logs (the registry's /logs)
RO_SOCKET_USERS = {"prometheus", "airflow-apiserver"}
PROXY_CONFIG = ROOT / "include" / "images" / "haproxy" / "docker-socket-proxy.cfg"
PROXY_CONFIG_IN_IMAGE = "/etc/haproxy/docker-socket-proxy.cfg"
# what the readers call (Prometheus' Docker SD: ping, ContainerList, NetworkList; docker-py: /version,
# containers.get, logs), with the API version prefix or without
READ_PATHS = [
    "/_ping",
    "/version",
    "/v1.41/version",
    "/containers/json",
    "/v1.41/containers/json",
    "/v1.43/containers/json",
    "/networks",
    "/v1.41/networks",
    "/v1.41/containers/tfserving-local/json",
    "/v1.41/containers/tfserving-local-1/json",
    "/v1.41/containers/0a1b2c3d4e5f/logs",
    "/containers/tfserving-local.canary_x/logs",
]
# all refused, whatever the method
OTHER_PATHS = [
    "/containers/create",
    "/v1.41/containers/create",
    "/v1.41/containers/x/exec",
    "/exec/x/start",
    "/v1.41/containers/x/start",
    "/v1.41/containers/x/stop",
    "/v1.41/containers/x/kill",
    "/v1.41/containers/x/attach",
    "/v1.41/containers/x/attach/ws",
    "/v1.41/containers/x/archive",
    "/v1.41/containers/x/export",
    "/v1.41/containers/x/top",
    "/v1.41/containers/x",
    "/v1.41/containers/prune",
    "/images/json",
    "/v1.41/images/create",
    "/build",
    "/volumes",
    "/volumes/create",
    "/networks/create",
    "/networks/x",
    "/swarm",
    "/swarm/init",
    "/services",
    "/secrets",
    "/plugins",
    "/session",
    "/info",
    "/events",
    "/system/df",
    "/containers/../images/json",
    "/containers/..%2Fimages/json",
    "/containers/.",
    "//containers/json",
    "/containers/json/",
    "/v1.41//containers/json",
    "/vx/containers/json",
]


@pytest.fixture
def compose_stack(tmp_path: Path) -> ComposeStack:
    c = ComposeStack(project="tfdeploy-compose-unit", state_dir=tmp_path / "compose-state", port_offset=0)
    c.write_env()
    return c


@pytest.fixture
def config(compose_stack: ComposeStack) -> dict[str, Any]:
    """`docker-compose config`: the file as docker-compose resolves it (anchors merged, variables interpolated)."""
    done = compose_stack.compose("config", capture=True, check=False)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def test_docker_compose_validates_the_file_with_every_service(config: dict[str, Any]) -> None:
    assert set(config["services"]) == AIRFLOW_SERVICES | OTHER_SERVICES


def test_without_the_env_file_docker_compose_says_how_to_make_it(tmp_path: Path) -> None:
    done = subprocess.run(
        ["docker-compose", "-p", "tfdeploy-compose-unit", "-f", str(COMPOSE_FILE), "config"],
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    assert "make compose-up" in done.stderr


def test_env_file_is_private_and_its_secrets_stable(tmp_path: Path) -> None:
    c = ComposeStack(project="tfdeploy-compose-unit", state_dir=tmp_path / "s", port_offset=1000)
    first = c.write_env()
    assert stat.S_IMODE(c.env_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(c.state_dir.stat().st_mode) == 0o700
    assert c.write_env() == first
    assert len({first[k] for k in ("POSTGRES_PASSWORD", "AIRFLOW_DB_PASSWORD", "REDIS_PASSWORD")}) == 3
    assert first["TFDEPLOY_COMPOSE_AIRFLOW_PORT"] == "29080"


def test_every_airflow_service_merges_the_x_airflow_common_anchor() -> None:
    root = yaml.compose(COMPOSE_FILE.read_text())
    top = {key.value: value for key, value in root.value}
    common = top["x-airflow-common"]
    services = {key.value: value for key, value in top["services"].value}
    for name in AIRFLOW_SERVICES:
        merged = [value for key, value in services[name].value if key.value == "<<"]
        assert merged and merged[0] is common, f"{name} does not merge *airflow-common"
    for name in OTHER_SERVICES:
        assert not [v for k, v in services[name].value if k.value == "<<" and v is common]


def test_every_long_running_service_has_a_healthcheck(config: dict[str, Any]) -> None:
    for name, service in config["services"].items():
        if name in ONE_SHOT:
            assert service.get("restart") == "no"
            continue
        check = service.get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
        assert service.get("restart") == "always", name


def test_depends_on_waits_for_health_and_for_airflow_init(config: dict[str, Any]) -> None:
    services = config["services"]
    for name, service in services.items():
        for dep, how in (service.get("depends_on") or {}).items():
            assert dep in services
            wanted = "service_completed_successfully" if dep in ONE_SHOT else "service_healthy"
            if dep == "namenode" and name.startswith("datanode"):
                wanted = "service_started"  # the NameNode is healthy only once a DataNode is live
            assert how["condition"] == wanted, f"{name} -> {dep}: {how}"
    for name in AIRFLOW_SERVICES - ONE_SHOT:
        deps = services[name]["depends_on"]
        assert {"airflow-init", "postgres", "redis", "namenode"} <= set(deps), name
    assert {"postgres", "namenode", "datanode-1", "datanode-2"} <= set(services["airflow-init"]["depends_on"])
    for name in ("router", "prometheus", "airflow-worker-1", "airflow-worker-2", "airflow-triggerer"):
        assert services[name]["depends_on"]["docker-host"]["condition"] == "service_healthy"
    assert set(services["docker-socket-proxy"]["depends_on"]) == {"docker-host"}
    for name in RO_SOCKET_USERS:
        assert services[name]["depends_on"]["docker-socket-proxy"]["condition"] == "service_healthy", name


def _published(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    out = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            out.append((port.get("host_ip", ""), str(port.get("published", "")), str(port["target"])))
        else:
            host_ip, published, target = str(port).rsplit(":", 2) if str(port).count(":") >= 2 else ("", "", port)
            out.append((host_ip, published, target.split("/")[0]))
    return out


def test_host_ports_are_bound_to_127_0_0_1_only(config: dict[str, Any]) -> None:
    published = [(name, p) for name, service in config["services"].items() for p in _published(service)]
    assert published
    for name, (host_ip, host_port, _) in published:
        assert host_ip == "127.0.0.1" and host_port, f"{name} publishes {host_port} on {host_ip or 'every address'}"
    ports = {int(p) for _, (_, p, _) in published}
    dev, test = settings_for("dev").ports.values(), settings_for("test").ports.values()
    assert not ports & (set(dev) | set(test)), "the compose stack's host ports clash with the dev or test stack's"


def test_container_ports_are_the_settings_defaults(config: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    for var in settings_for("dev").ports:
        monkeypatch.delenv(var, raising=False)
    s = settings_for("dev")
    services = config["services"]
    targets = {name: {t for _, _, t in _published(svc)} for name, svc in services.items()}
    assert targets["airflow-apiserver"] == {str(s.airflow_port)}
    assert targets["docker-host"] == {
        str(p) for p in (s.serving_rest_port, s.serving_grpc_port, s.canary_grpc_port, s.router_stats_port, 9090)
    }
    assert str(s.prometheus_port) in targets["docker-host"]
    assert targets["alertmanager"] == {str(s.alertmanager_port)}
    assert targets["namenode"] == {str(s.webhdfs_port)}
    env = services["airflow-worker-1"]["environment"]
    assert env["TFDEPLOY_STACK"] == "dev"
    tfserving = yaml.safe_load(env["AIRFLOW_CONN_TFSERVING_LOCAL"])
    assert (tfserving["port"], tfserving["extra"]["grpc_port"]) == (s.replica_rest_port, s.replica_grpc_port)
    assert tfserving["extra"]["replicas"] == s.stable_replicas
    # one serving Docker host in the file: every replica on it, whatever the worker's uid would default to
    assert env["SERVING_HOSTS"] == "1" and "replica_hosts" not in tfserving["extra"]
    assert set(env) & {"AIRFLOW_CONN_SERVING_HOST_LOCAL_2"} == set()
    canary = yaml.safe_load(env["AIRFLOW_CONN_TFSERVING_LOCAL_CANARY"])
    assert (canary["port"], canary["extra"]["grpc_port"]) == (s.canary_replica_rest_port, s.canary_replica_grpc_port)
    router = yaml.safe_load(env["AIRFLOW_CONN_ROUTER_LOCAL"])["extra"]
    assert router["socket"] == f"{STATE}/run/haproxy.sock"
    assert {router[f"{m}_map"] for m in stack.ROUTER_MAPS} == {f"{STATE}/haproxy/{m}.map" for m in stack.ROUTER_MAPS}


def test_images_are_built_locally_from_include_images(config: dict[str, Any]) -> None:
    build_script = (ROOT / "include" / "scripts" / "build_images.sh").read_text()
    for name, service in config["services"].items():
        image = service["image"]
        match = re.fullmatch(r"local/tfdeploy-([a-z-]+):latest", image)
        assert match, f"{name} runs {image}, not a locally built local/tfdeploy-<name> image"
        dockerfile = ROOT / "include" / "images" / match[1] / "Dockerfile"
        parents = re.findall(r"(?m)^FROM\s+(\S+)", dockerfile.read_text())
        assert parents and all(p.startswith("local/") for p in parents), f"{dockerfile} builds on {parents}"
        assert match[1] in build_script, f"build_images.sh does not build {image}"


def test_serving_host_namespace_socket_and_shared_state_path(config: dict[str, Any]) -> None:
    services = config["services"]
    for name in IN_SERVING_HOST_NETNS:
        assert services[name]["network_mode"] == "service:docker-host", name
    engine = services["docker-host"]
    assert {"SYS_ADMIN", "NET_ADMIN", "MKNOD"} <= set(engine["cap_add"])
    assert "privileged" not in engine  # it asks for CAP_SYS_RESOURCE, which this machine's root lacks

    engine_mounts = _mounts(services, "docker-host")
    assert engine_mounts["/sys/fs/cgroup"] == "/sys/fs/cgroup"
    for name in ("airflow-worker-1", "airflow-worker-2"):
        # a path the pipeline bind-mounts names the same files in the worker and in the engine
        assert _mounts(services, name)[STATE] == engine_mounts[STATE]
        env = services[name]["environment"]
        assert env["TMPDIR"].startswith(STATE + "/") and env["TFDEPLOY_STATE_DIR"] == STATE
    assert (
        services["airflow-worker-1"]["environment"]["TFDEPLOY_WORKER_NAME"] in services["airflow-worker-1"]["command"]
    )


def _mounts(services: dict[str, Any], name: str) -> dict[str, str]:
    """Target -> source of a service's volumes (docker-compose config's long syntax, or short)."""
    out = {}
    for v in services[name].get("volumes") or []:
        src, target = (v["source"], v["target"]) if isinstance(v, dict) else str(v).split(":")[:2]
        out[target] = src
    return out


def _read_only(services: dict[str, Any], name: str, target: str) -> bool:
    for v in services[name].get("volumes") or []:
        if isinstance(v, dict) and v["target"] == target:
            return bool(v.get("read_only"))
        if isinstance(v, str) and v.split(":")[1] == target:
            return v.endswith(":ro")
    raise AssertionError(f"{name} does not mount {target}")


def test_only_the_services_that_start_containers_hold_the_engines_socket(config: dict[str, Any]) -> None:
    services = config["services"]
    engine_dir, ro_dir = os.path.dirname(ENGINE_SOCKET), os.path.dirname(RO_SOCKET)
    holders = {name for name in services if _mounts(services, name).get(engine_dir) == "docker-host-run"}
    assert holders == FULL_SOCKET_USERS | {"docker-host", "docker-socket-proxy"}
    # the proxy connects to the engine's socket: it needs no write access to that volume
    assert _read_only(services, "docker-socket-proxy", engine_dir)
    assert not _read_only(services, "docker-host", engine_dir)
    readers = {name for name in services if _mounts(services, name).get(ro_dir) == "docker-ro-run"}
    assert readers == RO_SOCKET_USERS | {"docker-socket-proxy"}
    for name in RO_SOCKET_USERS:
        assert _read_only(services, name, ro_dir), f"{name} may replace the proxy's socket"
        assert engine_dir not in _mounts(services, name), name
    assert not _read_only(services, "docker-socket-proxy", ro_dir)  # it creates its socket there
    assert {"docker-host-run", "docker-ro-run"} <= set(config["volumes"])

    common = services["airflow-dag-processor"]["environment"]  # x-airflow-common's, unchanged
    for name in FULL_SOCKET_USERS:
        env = services[name]["environment"]
        assert env["DOCKER_HOST"] == f"unix://{ENGINE_SOCKET}", name
        assert yaml.safe_load(env["AIRFLOW_CONN_SERVING_HOST_LOCAL"])["host"] == f"unix://{ENGINE_SOCKET}", name
    # the api-server: the same Connection, at the proxy's socket; nothing else of the environment differs
    api = services["airflow-apiserver"]["environment"]
    assert api["DOCKER_HOST"] == f"unix://{RO_SOCKET}"
    conn, common_conn = (json.loads(e["AIRFLOW_CONN_SERVING_HOST_LOCAL"]) for e in (api, common))
    assert conn == common_conn | {"host": f"unix://{RO_SOCKET}"}
    differs = {k for k in set(api) | set(common) if api.get(k) != common.get(k)}
    assert differs == {"DOCKER_HOST", "AIRFLOW_CONN_SERVING_HOST_LOCAL"}


def test_docker_socket_proxy_service(config: dict[str, Any]) -> None:
    proxy = config["services"]["docker-socket-proxy"]
    assert proxy["image"] == config["services"]["router"]["image"] == "local/tfdeploy-haproxy:latest"
    assert proxy["user"] == "50000:50000"
    assert proxy["command"] == ["-f", PROXY_CONFIG_IN_IMAGE]
    # unix sockets only, no capability, nothing written but its socket
    assert proxy["network_mode"] == "none"
    assert proxy["read_only"] is True and proxy["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in proxy["security_opt"]
    assert not proxy.get("ports") and "privileged" not in proxy and "cap_add" not in proxy
    assert RO_SOCKET in proxy["healthcheck"]["test"] and proxy["healthcheck"]["test"][-1].endswith("/_ping")
    # the image: the configuration baked in (root's), the socket's directory the Airflow user's
    dockerfile = (PROXY_CONFIG.parent / "Dockerfile").read_text()
    assert f"COPY {PROXY_CONFIG.name} {PROXY_CONFIG_IN_IMAGE}" in dockerfile
    assert re.search(rf"install -d -o 50000 -g 50000 -m 0750 {os.path.dirname(RO_SOCKET)}\b", dockerfile)


def _proxy_config() -> dict[str, Any]:
    """The proxy's HAProxy configuration, the parts that decide what it lets through."""
    text = PROXY_CONFIG.read_text()
    lines = [line.split(" #")[0].strip() for line in text.splitlines() if line.strip() and line[0] == " "]
    acls = {m[1]: m[2] for line in lines if (m := re.fullmatch(r"acl (\S+) (.+)", line))}
    return {
        "binds": [line.split()[1:] for line in lines if line.startswith("bind ")],
        "servers": [line.split()[1:] for line in lines if line.startswith("server ")],
        "acls": acls,
        "rules": [line for line in lines if line.startswith(("http-request", "tcp-request", "use_backend"))],
        "frontends": re.findall(r"(?m)^(?:frontend|listen) (\S+)", text),
        "backends": re.findall(r"(?m)^(?:backend|listen) (\S+)", text),
    }


def test_docker_socket_proxy_allows_only_get_and_head_of_what_the_readers_call() -> None:
    cfg = _proxy_config()
    assert cfg["frontends"] == ["docker_ro"] and cfg["backends"] == ["engine"]
    assert cfg["binds"] == [[f"unix@{RO_SOCKET}", "mode", "660", "gid", "50000"]]
    assert cfg["servers"] == [["engine", f"unix@{ENGINE_SOCKET}"]]
    assert cfg["acls"]["read_method"] == "method GET HEAD"
    assert cfg["acls"]["upgrade"] == "req.hdr(upgrade) -m found"
    # one rule: everything not a GET or HEAD of an allowed path is refused, 403
    [rule] = cfg["rules"]
    assert rule.startswith("http-request deny deny_status 403 ")
    assert rule.endswith(" if !read_method or !read_path or upgrade")
    assert json.loads(re.search(r'string "(.*)" if ', rule)[1].replace('\\"', '"'))["message"]
    kind, regex = cfg["acls"]["read_path"].split(" -m reg ")
    assert kind == "path"
    allowed = re.compile(regex)  # PCRE in HAProxy; this one means the same in Python's re
    for path in READ_PATHS:
        assert allowed.fullmatch(path), path
    for path in OTHER_PATHS:
        assert not allowed.fullmatch(path), path


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="no haproxy here (make setup installs it)")
def test_docker_socket_proxy_config_is_valid_haproxy() -> None:
    check = subprocess.run(["haproxy", "-c", "-f", str(PROXY_CONFIG)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr + check.stdout
    assert "WARNING" not in check.stdout + check.stderr, check.stderr + check.stdout


def test_router_config_is_the_local_stacks_bound_for_compose(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TFDEPLOY_STATE_DIR", str(tmp_path))
    s = compose_init.ComposeSettings()
    text = compose_init.compose_router_config(s)
    binds = re.findall(r"(?m)^\s+bind (\S+)", text)
    assert binds and all(b.startswith("0.0.0.0:") for b in binds)
    local_servers = re.findall(r"(?m)^\s+server .*$", stack.router_config(s))
    assert re.findall(r"(?m)^\s+server .*$", text) == local_servers  # the replicas: unchanged
    conf = tmp_path / "haproxy.cfg"
    conf.write_text(text)
    for name in stack.ROUTER_MAPS:
        stack.router_map(s, name).parent.mkdir(parents=True, exist_ok=True)
        stack.router_map(s, name).touch()
    check = subprocess.run(["haproxy", "-c", "-q", "-f", str(conf)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr + check.stdout


def test_prometheus_config_for_compose(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: dict[str, Any]) -> None:
    env = config["services"]["airflow-init"]["environment"]  # what compose_init.py runs with
    for name in ("TFDEPLOY_STATE_DIR", "DOCKER_HOST", "SERVING_HOSTS"):
        monkeypatch.setenv(name, env[name])
    monkeypatch.setenv("TFDEPLOY_STATE_DIR", str(tmp_path))
    s = compose_init.ComposeSettings()
    config = yaml.safe_load(compose_init.compose_prometheus_config(s))
    # the replicas, discovered through the read-only proxy, not the engine's socket
    [serving] = [job for job in config["scrape_configs"] if "docker_sd_configs" in job]
    assert [sd["host"] for sd in serving["docker_sd_configs"]] == [compose_init.DOCKER_RO_HOST]
    assert f"unix://{RO_SOCKET}" == compose_init.DOCKER_RO_HOST
    assert serving["relabel_configs"] == stack.serving_relabel_configs(s)
    targets = {job["job_name"]: job.get("static_configs", [{}])[0].get("targets") for job in config["scrape_configs"]}
    assert targets["registry"] == ["airflow-apiserver:8080"]
    assert targets["alertmanager"] == ["alertmanager:9093"]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    (tmp_path / "prometheus").mkdir()
    (tmp_path / "prometheus" / "rules.yml").write_text((stack.MONITORING_DIR / "rules.yml").read_text())
    conf = tmp_path / "prometheus.yml"
    conf.write_text(compose_init.compose_prometheus_config(s))
    check = subprocess.run(["promtool", "check", "config", str(conf)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


ADDRESS_KEYS = {
    "dfs.namenode.name.dir",
    "dfs.namenode.rpc-address",
    "dfs.namenode.http-address",
    "dfs.datanode.hostname",
}


def test_hadoop_settings_agree_with_the_local_stack() -> None:
    conf = ROOT / "include" / "images" / "hadoop"
    props = {
        p.findtext("name"): p.findtext("value")
        for p in ET.parse(conf / "conf" / "hdfs-site.xml").getroot().iter("property")
    }
    local = stack.hdfs_site(settings_for("dev"))
    for key, value in local.items():
        if key not in ADDRESS_KEYS:
            assert props.get(key) == value, f"{key}: compose {props.get(key)!r}, local stack {value!r}"
    opens = re.search(r'JAVA_OPENS="([^"]*)"', (conf / "hdfs.sh").read_text())
    assert opens and opens[1].split() == stack.JAVA_OPENS


def test_scripts_in_the_images_are_executable_shell() -> None:
    for script in (ROOT / "include" / "images").glob("*/*.sh"):
        assert subprocess.run(["sh", "-n", str(script)]).returncode == 0, script
    assert os.access(ROOT / "include" / "scripts" / "build_images.sh", os.X_OK)
