"""docker-compose.yml (README "Topology: docker-compose"): docker-compose validates it with the env file that
compose_stack.py writes, and it is built as documented: the x-airflow-common anchor in every Airflow service, a
healthcheck on every long-running service, depends_on conditions, host ports on 127.0.0.1 only, images built
locally, the container ports the settings' defaults, and the configurations the local stack's generators write
(router, Prometheus, HDFS). Two serving hosts (docker-host, docker-host-2, SERVING_HOSTS=2): the second at a fixed
address of the compose network's own subnet, where its replicas publish their ports and the router, Prometheus and
the workers reach them. The trust boundary: only the services that start containers hold the engines' sockets;
Prometheus and the api-server read them through one docker-socket-proxy per engine, whose HAProxy configuration
allows GET and HEAD of a few endpoints only (tests/unit/test_docker_socket_proxy.py runs it).
"""

from __future__ import annotations

import ipaddress
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
from compose_stack import COMPOSE_FILE, SERVING_HOSTS, SERVING_IMAGE, ComposeStack, check_net, default_net

import stack
from tfdeploy.core.placement import replica_host
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
    "docker-host-2",
    "docker-socket-proxy",
    "docker-socket-proxy-2",
    "router",
    "prometheus",
    "alertmanager",
}
ONE_SHOT = {"airflow-init"}
# they call the replicas and the router at 127.0.0.1, as on the local stack: the serving host's network namespace
IN_SERVING_HOST_NETNS = {"router", "prometheus", "airflow-triggerer", "airflow-worker-1", "airflow-worker-2"}
STATE = "/opt/tfdeploy/state"
# the engine's API (root on the serving host) and docker-socket-proxy's read-only one, as their users mount them
ENGINE_SOCKET = "/run/docker-host/docker.sock"
RO_SOCKET = "/run/docker-ro/docker.sock"
# the same for the second serving host (docker-host-2, docker-socket-proxy-2); inside the engine and its proxy the
# paths are the first's (the image's and the proxy configuration's), each service mounting its own volumes there
ENGINE_2_SOCKET = "/run/docker-host-2/docker.sock"
RO_2_SOCKET = "/run/docker-ro-2/docker.sock"
# serving host -> (its socket's volume, its proxy, the proxy's socket volume, where the users mount each)
ENGINES = {
    "docker-host": ("docker-host-run", "docker-socket-proxy", "docker-ro-run", ENGINE_SOCKET, RO_SOCKET),
    "docker-host-2": ("docker-host-2-run", "docker-socket-proxy-2", "docker-ro-2-run", ENGINE_2_SOCKET, RO_2_SOCKET),
}
PROXIES = ("docker-socket-proxy", "docker-socket-proxy-2")
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
    for name in FULL_SOCKET_USERS:  # they drive both engines
        assert services[name]["depends_on"]["docker-host-2"]["condition"] == "service_healthy", name
    for engine, (_, proxy, *_) in ENGINES.items():
        assert set(services[proxy]["depends_on"]) == {engine}
        for name in RO_SOCKET_USERS:
            assert services[name]["depends_on"][proxy]["condition"] == "service_healthy", (name, proxy)


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
    assert targets["docker-host-2"] == set()  # its replicas' ports: on its compose address, never on this machine's
    assert str(s.prometheus_port) in targets["docker-host"]
    assert targets["alertmanager"] == {str(s.alertmanager_port)}
    assert targets["namenode"] == {str(s.webhdfs_port)}
    env = services["airflow-worker-1"]["environment"]
    assert env["TFDEPLOY_STACK"] == "dev"
    tfserving = yaml.safe_load(env["AIRFLOW_CONN_TFSERVING_LOCAL"])
    assert (tfserving["port"], tfserving["extra"]["grpc_port"]) == (s.replica_rest_port, s.replica_grpc_port)
    assert tfserving["extra"]["replicas"] == s.stable_replicas
    canary = yaml.safe_load(env["AIRFLOW_CONN_TFSERVING_LOCAL_CANARY"])
    assert (canary["port"], canary["extra"]["grpc_port"]) == (s.canary_replica_rest_port, s.canary_replica_grpc_port)
    router = yaml.safe_load(env["AIRFLOW_CONN_ROUTER_LOCAL"])["extra"]
    assert router["socket"] == f"{STATE}/run/haproxy.sock"
    assert {router[f"{m}_map"] for m in stack.ROUTER_MAPS} == {f"{STATE}/haproxy/{m}.map" for m in stack.ROUTER_MAPS}


def _serving_host_2_address(config: dict[str, Any]) -> str:
    return config["services"]["docker-host-2"]["networks"]["default"]["ipv4_address"]


def test_the_local_target_spreads_its_replicas_over_both_serving_hosts(
    config: dict[str, Any], compose_stack: ComposeStack
) -> None:
    """Two serving Docker hosts, whatever the workers' uid would default to: the Connections of both (each with
    the address its replicas publish on), and the replicas placed over them (replica i on host i % 2)."""
    address = _serving_host_2_address(config)
    assert address == compose_stack.serving_host_2_address
    for name in AIRFLOW_SERVICES:
        env = config["services"][name]["environment"]
        assert env["SERVING_HOSTS"] == "2", name
        tfserving = json.loads(env["AIRFLOW_CONN_TFSERVING_LOCAL"])
        assert tfserving["host"] == "127.0.0.1"
        assert tfserving["extra"]["replica_hosts"] == ["127.0.0.1", address], name
        # services/targets.py's serving_host_local and serving_host_local_2
        first, second = (json.loads(env[f"AIRFLOW_CONN_SERVING_HOST_LOCAL{n}"]) for n in ("", "_2"))
        assert first["conn_type"] == second["conn_type"] == "tfdeploy_serving_host"
        assert first["extra"] == {"tls_verify": False, "publish_address": "127.0.0.1"}, name
        assert second["extra"] == {"tls_verify": False, "publish_address": address}, name
        if name != "airflow-apiserver":  # its own: test_only_the_services_that_start_containers_hold_...
            assert (first["host"], second["host"]) == (f"unix://{ENGINE_SOCKET}", f"unix://{ENGINE_2_SOCKET}")
    # as the tfserving hook, the router and the serving target place them (core/placement.py)
    hosts = tfserving["extra"]["replica_hosts"]
    assert [replica_host(i, hosts) for i in range(2)] == ["127.0.0.1", address]


def test_the_second_serving_host_has_a_fixed_address_in_the_compose_subnet(
    config: dict[str, Any], compose_stack: ComposeStack
) -> None:
    """docker-host-2: the first engine's settings (lean: no port, no shared state, no sandbox image), its own image
    store and socket volume, and a fixed address of the project's own /24 that no other container can be given
    (every dynamic address comes from the upper half)."""
    services = config["services"]
    first, second = services["docker-host"], services["docker-host-2"]
    for key in ("image", "cap_add", "security_opt", "sysctls", "healthcheck", "restart"):
        assert second[key] == first[key], key
    assert "privileged" not in second and "network_mode" not in second and not second.get("ports")
    assert second["hostname"] == "docker-host-2"
    assert _mounts(services, "docker-host-2") == {
        "/sys/fs/cgroup": "/sys/fs/cgroup",
        "/var/lib/docker": "docker-host-2-data",
        os.path.dirname(ENGINE_SOCKET): "docker-host-2-run",  # the image's socket path, its own volume
    }
    assert _mounts(services, "docker-host")["/var/lib/docker"] == "docker-host-data"

    [pool] = config["networks"]["default"]["ipam"]["config"]
    subnet, dynamic = ipaddress.ip_network(pool["subnet"]), ipaddress.ip_network(pool["ip_range"])
    address, gateway = ipaddress.ip_address(_serving_host_2_address(config)), ipaddress.ip_address(pool["gateway"])
    assert str(subnet) == compose_stack.subnet and subnet.prefixlen == 24 and subnet.is_private
    assert address in subnet and address not in dynamic and address != gateway
    assert dynamic.subnet_of(subnet) and gateway in subnet and gateway not in dynamic
    # apart from the engines' own bridges (172.17.0.0/16 in each engine's namespace, and on this machine) and the
    # local stacks' docker2 networks
    taken = [ipaddress.ip_network("172.17.0.0/16")]
    taken += [ipaddress.ip_network(settings_for(p).docker2_subnet) for p in ("dev", "test")]
    taken += [ipaddress.ip_network(bip, strict=False) for bip in stack.DOCKER2_BIP.values()]
    assert not any(subnet.overlaps(net) for net in taken), subnet
    # the services in docker-host's namespace, the proxies (no network) and the rest (dynamic): only docker-host-2
    # asks for an address
    fixed = {
        name
        for name, svc in services.items()
        if any((n or {}).get("ipv4_address") for n in (svc.get("networks") or {}).values())
    }
    assert fixed == {"docker-host-2"}
    # the images each engine gets (compose_stack.py load_serving_images): the sandbox runs on the first only
    assert set(SERVING_HOSTS) == {"docker-host", "docker-host-2"}
    assert SERVING_HOSTS["docker-host-2"] == (SERVING_IMAGE,)


def test_each_project_gets_a_subnet_of_its_own(tmp_path: Path) -> None:
    """TFDEPLOY_COMPOSE_NET, written into the env file once: a /24 per thousand of port offset (make compose-up's
    and the smoke test's differ), kept afterwards, added to an env file written before it existed."""
    nets = {offset: default_net(offset) for offset in (0, 1000, 2000)}
    assert nets == {0: "10.217.128", 1000: "10.217.129", 2000: "10.217.130"}
    c = ComposeStack(project="tfdeploy-compose-unit", state_dir=tmp_path / "s", port_offset=2000)
    assert c.write_env()["TFDEPLOY_COMPOSE_NET"] == "10.217.130"
    assert (c.subnet, c.serving_host_2_address) == ("10.217.130.0/24", "10.217.130.2")
    old = [line for line in c.env_file.read_text().splitlines() if not line.startswith("TFDEPLOY_COMPOSE_NET=")]
    c.env_file.write_text("\n".join(old) + "\n")
    assert c.write_env()["TFDEPLOY_COMPOSE_NET"] == "10.217.130"
    chosen = ComposeStack(project="x", state_dir=tmp_path / "t", port_offset=0, net="192.168.77")
    assert chosen.write_env()["TFDEPLOY_COMPOSE_NET"] == "192.168.77"
    for bad in ("10.217.128.0", "10.217", "8.8.8", "10.217.300", "x.y.z"):
        with pytest.raises(ValueError, match="TFDEPLOY_COMPOSE_NET"):
            check_net(bad)


def test_up_recreates_a_network_of_another_subnet(compose_stack: ComposeStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """docker-compose 1.29 keeps an existing project network whatever its IPAM: compose_stack.py takes one of
    another subnet down (volumes kept) before `up`, so docker-host-2 can have its address."""
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(ComposeStack, "compose", lambda self, *args, **kw: calls.append(args))
    for subnets, expected in (
        (None, []),
        ([compose_stack.subnet], []),
        (["172.18.0.0/16"], [("down", "--remove-orphans")]),
    ):
        calls.clear()
        monkeypatch.setattr(ComposeStack, "network_subnets", lambda self, subnets=subnets: subnets)
        compose_stack.ensure_network()
        assert calls == expected, subnets


def test_up_removes_replicas_left_on_a_host_that_is_not_theirs(
    compose_stack: ComposeStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stack whose volumes kept replica 2 on docker-host (made before docker-host-2): that container goes; each
    host keeps its own replicas (replica i on host i % 2) and whatever else runs there."""
    import compose_stack as module

    engines = {"docker-host": "id-1", "docker-host-2": "id-2"}
    running = {
        "id-1": ["tfserving-local", "tfserving-local-1", "tfserving-local-canary", "tfdeploy-models-dev-local-lock"],
        "id-2": ["tfserving-local-1"],
    }
    removed: list[tuple[str, str]] = []

    def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
        engine = cmd[2]
        if cmd[4:6] == ["rm", "-f"]:
            removed.append((engine, cmd[6]))
            return subprocess.CompletedProcess(cmd, 0, "", "")
        assert cmd[4] == "ps" and "label=tfdeploy.serving.model-root" in cmd
        return subprocess.CompletedProcess(cmd, 0, "\n".join(running[engine]) + "\n", "")

    monkeypatch.setattr(ComposeStack, "containers", lambda self: {h: {"Id": i} for h, i in engines.items()})
    monkeypatch.setattr(module.subprocess, "run", run)
    assert compose_stack.remove_misplaced_replicas() == ["docker-host/tfserving-local-1"]
    assert removed == [("id-1", "tfserving-local-1")]


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
    for name in ("docker-host", "docker-host-2"):
        engine = services[name]
        assert {"SYS_ADMIN", "NET_ADMIN", "MKNOD"} <= set(engine["cap_add"])
        assert "privileged" not in engine  # it asks for CAP_SYS_RESOURCE, which this machine's root lacks
    # the sandbox's job files: bind-mounted on the first engine only (DOCKER_HOST), the second needs no shared disk
    assert STATE not in _mounts(services, "docker-host-2")

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


def _holders(services: dict[str, Any], volume: str) -> dict[str, str]:
    """Service -> where it mounts ``volume``."""
    return {name: target for name in services for target, src in _mounts(services, name).items() if src == volume}


def test_only_the_services_that_start_containers_hold_the_engines_socket(config: dict[str, Any]) -> None:
    services = config["services"]
    # inside each engine and its proxy: the image's and the proxy configuration's paths
    engine_dir, ro_dir = os.path.dirname(ENGINE_SOCKET), os.path.dirname(RO_SOCKET)
    for engine, (volume, proxy, ro_volume, socket, ro_socket) in ENGINES.items():
        users_dir, readers_dir = os.path.dirname(socket), os.path.dirname(ro_socket)
        holders = _holders(services, volume)
        assert holders == {engine: engine_dir, proxy: engine_dir} | dict.fromkeys(FULL_SOCKET_USERS, users_dir)
        # the proxy connects to the engine's socket: it needs no write access to that volume
        assert _read_only(services, proxy, engine_dir)
        assert not _read_only(services, engine, engine_dir)
        for name in FULL_SOCKET_USERS:
            assert not _read_only(services, name, users_dir), name
        readers = _holders(services, ro_volume)
        assert readers == {proxy: ro_dir} | dict.fromkeys(RO_SOCKET_USERS, readers_dir)
        for name in RO_SOCKET_USERS:
            assert _read_only(services, name, readers_dir), f"{name} may replace {proxy}'s socket"
        assert not _read_only(services, proxy, ro_dir)  # it creates its socket there
        assert {volume, ro_volume} <= set(config["volumes"])
    for name in RO_SOCKET_USERS:  # no engine's socket at all
        assert not {"docker-host-run", "docker-host-2-run"} & set(_mounts(services, name).values()), name

    common = services["airflow-dag-processor"]["environment"]  # x-airflow-common's, unchanged
    conns = {
        "AIRFLOW_CONN_SERVING_HOST_LOCAL": ENGINES["docker-host"],
        "AIRFLOW_CONN_SERVING_HOST_LOCAL_2": ENGINES["docker-host-2"],
    }
    for name in FULL_SOCKET_USERS:
        env = services[name]["environment"]
        assert env["DOCKER_HOST"] == f"unix://{ENGINE_SOCKET}", name
        for var, (*_, socket, _ro) in conns.items():
            assert yaml.safe_load(env[var])["host"] == f"unix://{socket}", (name, var)
    # the api-server: the same Connections, at the proxies' sockets; nothing else of the environment differs
    api = services["airflow-apiserver"]["environment"]
    assert api["DOCKER_HOST"] == f"unix://{RO_SOCKET}"
    for var, (*_, ro_socket) in conns.items():
        conn, common_conn = (json.loads(e[var]) for e in (api, common))
        assert conn == common_conn | {"host": f"unix://{ro_socket}"}, var
    differs = {k for k in set(api) | set(common) if api.get(k) != common.get(k)}
    assert differs == {"DOCKER_HOST", *conns}


@pytest.mark.parametrize("name", PROXIES)
def test_docker_socket_proxy_service(config: dict[str, Any], name: str) -> None:
    proxy = config["services"][name]
    # one configuration, one service definition: the proxies differ only in the volumes they mount
    first = config["services"][PROXIES[0]]
    assert {k: v for k, v in proxy.items() if k not in ("volumes", "depends_on")} == {
        k: v for k, v in first.items() if k not in ("volumes", "depends_on")
    }
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


def _init_env(config: dict[str, Any], monkeypatch: pytest.MonkeyPatch, state: Path) -> None:
    """compose_init.py's environment (airflow-init's), its state directory ``state``."""
    for var in settings_for("dev").ports:  # the container ports: the dev profile's defaults
        monkeypatch.delenv(var, raising=False)
    env = config["services"]["airflow-init"]["environment"]
    for name, value in env.items():
        if name.startswith("AIRFLOW_CONN_") or name in ("TFDEPLOY_STACK", "DOCKER_HOST", "SERVING_HOSTS"):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("TFDEPLOY_STATE_DIR", str(state))


def test_router_config_is_the_local_stacks_bound_for_compose(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: dict[str, Any]
) -> None:
    _init_env(config, monkeypatch, tmp_path)
    s = compose_init.ComposeSettings()
    text = compose_init.compose_router_config(s)
    binds = re.findall(r"(?m)^\s+bind (\S+)", text)
    assert binds and all(b.startswith("0.0.0.0:") for b in binds)
    local_servers = re.findall(r"(?m)^\s+server .*$", stack.router_config(s))
    assert re.findall(r"(?m)^\s+server .*$", text) == local_servers  # the replicas: the local stack's lines
    # replica i at its host's address, ports + 2i: replica 2 at docker-host-2's address, the canary on the first
    address = _serving_host_2_address(config)
    servers = re.findall(r"(?m)^\s+server (\S+) (\S+) ", text)
    rest, grpc = s.replica_rest_port, s.replica_grpc_port
    canary_rest, canary_grpc = s.canary_replica_rest_port, s.canary_replica_grpc_port
    assert (rest, grpc, s.stable_replicas) == (8511, 8510, 2)  # the compose stack's, as its Connections say
    assert servers == [
        ("replica1", f"127.0.0.1:{rest}"),
        ("replica2", f"{address}:{rest + 2}"),
        ("replica1", f"127.0.0.1:{grpc}"),
        ("replica2", f"{address}:{grpc + 2}"),
        ("canary1", f"127.0.0.1:{canary_rest}"),
        ("canary1", f"127.0.0.1:{canary_grpc}"),
    ]
    # the router and the Connections agree, or airflow-init refuses to write the configuration
    assert compose_init.check_replica_hosts(s) == ["127.0.0.1", address]
    monkeypatch.setenv("AIRFLOW_CONN_TFSERVING_LOCAL", json.dumps({"host": "127.0.0.1", "extra": {"replicas": 2}}))
    with pytest.raises(RuntimeError, match="replica_hosts"):
        compose_init.compose_router_config(s)
    conf = tmp_path / "haproxy.cfg"
    conf.write_text(text)
    for name in stack.ROUTER_MAPS:
        stack.router_map(s, name).parent.mkdir(parents=True, exist_ok=True)
        stack.router_map(s, name).touch()
    check = subprocess.run(["haproxy", "-c", "-q", "-f", str(conf)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr + check.stdout


def test_prometheus_config_for_compose(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: dict[str, Any]) -> None:
    _init_env(config, monkeypatch, tmp_path)  # what compose_init.py runs with
    s = compose_init.ComposeSettings()
    config = yaml.safe_load(compose_init.compose_prometheus_config(s))
    # the replicas of each engine, discovered through its read-only proxy, not the engine's socket (no TLS)
    [serving] = [job for job in config["scrape_configs"] if "docker_sd_configs" in job]
    sds = serving["docker_sd_configs"]
    assert (
        [sd["host"] for sd in sds]
        == list(compose_init.DOCKER_RO_HOSTS)
        == [f"unix://{RO_SOCKET}", f"unix://{RO_2_SOCKET}"]
    )
    assert f"unix://{RO_SOCKET}" == compose_init.DOCKER_RO_HOST
    assert all(set(sd) == {"host", "refresh_interval", "filters"} for sd in sds), sds
    assert sds[0]["filters"] == sds[1]["filters"]
    # scraped where each replica publishes its REST port (127.0.0.1 on docker-host, docker-host-2's address)
    assert serving["relabel_configs"] == stack.serving_relabel_configs(s)
    assert any(
        rule.get("source_labels", [None])[0] == "__meta_docker_port_public_ip" for rule in serving["relabel_configs"]
    )
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
