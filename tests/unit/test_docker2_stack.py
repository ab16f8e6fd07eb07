"""The second Docker host as stack.py runs it, without starting it: dockerd in the stack's network namespace,
listening only on the namespace's address with TLS, its own data-root, exec-root, pidfile and bridge; each profile
its own subnet, port and namespace; a CA of the stack's own (keys 0600); and, with SERVING_HOSTS=2, the Connections,
the TF Serving replicas and the router's server lines all place replica i on host i % 2."""

from __future__ import annotations

import ipaddress
import json
import stat
import subprocess

import pytest

import stack
from tfdeploy import settings as settings_module
from tfdeploy.settings import Settings

VARS = ("TFDEPLOY_STATE_DIR", "SERVING_HOSTS", "DOCKER2_SUBNET", "DOCKER2_PORT", "DOCKER_HOST", "SERVING_IMAGE")


@pytest.fixture
def env(monkeypatch, tmp_path):
    for var in VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TFDEPLOY_STACK", "dev")
    monkeypatch.setenv("TFDEPLOY_STATE_DIR", str(tmp_path / "state"))
    return monkeypatch


def backend(config: str, name: str) -> list[str]:
    """The non-empty lines of HAProxy backend ``name``."""
    block = config.split(f"\nbackend {name}\n", 1)[1].split("\n\n", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def flags(cmd: list[str]) -> dict[str, str]:
    return {a.split("=", 1)[0]: a.split("=", 1)[1] if "=" in a else "" for a in cmd if a.startswith("--")}


def test_dockerd_listens_only_on_the_namespace_address_with_tls_and_state_of_its_own(env, tmp_path):
    s = Settings()
    cmd = stack.docker2_command(s)
    assert cmd[:4] == ["nsenter", "--net=/run/netns/tfdeploy-dev", "--", "dockerd"]
    f = flags(cmd)
    assert [a for a in cmd if a.startswith("--host")] == ["--host=tcp://10.217.0.2:2376"]  # one socket, no unix://
    assert "--tlsverify" in f and f["--tlscacert"].startswith(str(s.secrets_dir))
    state = tmp_path / "state" / "docker2"
    assert (f["--data-root"], f["--pidfile"]) == (str(state / "data"), str(state / "dockerd.pid"))
    # containerd's sockets live under the exec-root (108 bytes at most): a long state path moves it under /run
    assert f["--exec-root"].startswith("/run/tfdeploy-docker2-") and len(f["--exec-root"]) < 40
    env.setenv("TFDEPLOY_STATE_DIR", "/srv/st")
    assert flags(stack.docker2_command(Settings()))["--exec-root"] == "/srv/st/docker2/exec"
    bridge = ipaddress.ip_interface(f["--bip"]).network
    assert not bridge.overlaps(ipaddress.ip_network("172.17.0.0/16"))  # the first engine's docker0
    assert not bridge.overlaps(ipaddress.ip_network(s.docker2_subnet))
    assert f["--ip"] == s.docker2_address  # published ports default to the namespace address too


def test_each_profile_has_its_own_namespace_subnet_port_and_bridge(env):
    dev = Settings()
    env.setenv("TFDEPLOY_STACK", "test")
    env.delenv("TFDEPLOY_STATE_DIR")
    test = Settings()
    assert dev.docker2_netns != test.docker2_netns
    assert not ipaddress.ip_network(dev.docker2_subnet).overlaps(ipaddress.ip_network(test.docker2_subnet))
    assert (dev.docker2_port, test.docker2_port) == (2376, 12376)
    assert flags(stack.docker2_command(dev))["--bip"] != flags(stack.docker2_command(test))["--bip"]
    assert all(len(name) <= 15 for name in (*stack.docker2_veth(dev), *stack.docker2_veth(test)))  # IFNAMSIZ
    assert (test.docker2_gateway, test.docker2_address) == ("10.217.0.5", "10.217.0.6")


def test_the_certificates_are_the_stacks_own_and_private(env):
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    s = Settings()
    tls = stack._docker2_certificates(s)
    assert stat.S_IMODE(tls.stat().st_mode) == 0o700
    for key in ("ca-key.pem", "server-key.pem", "key.pem"):
        assert stat.S_IMODE((tls / key).stat().st_mode) == 0o600
    ca = x509.load_pem_x509_certificate((tls / "ca.pem").read_bytes())
    server = x509.load_pem_x509_certificate((tls / "server-cert.pem").read_bytes())
    client = x509.load_pem_x509_certificate((tls / "cert.pem").read_bytes())
    for cert in (server, client):
        cert.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.217.0.2")]
    eku = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    ca_bytes = (tls / "ca.pem").read_bytes()
    stack._docker2_certificates(s)  # again: nothing changes
    assert (tls / "server-cert.pem").read_bytes() == server.public_bytes(
        __import__("cryptography.hazmat.primitives.serialization", fromlist=["Encoding"]).Encoding.PEM
    )
    env.setenv("DOCKER2_SUBNET", "10.217.0.8/30")  # another address: a new server certificate, the same CA
    stack._docker2_certificates(Settings())
    renewed = x509.load_pem_x509_certificate((tls / "server-cert.pem").read_bytes())
    assert renewed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.IPAddress
    ) == [ipaddress.ip_address("10.217.0.10")]
    assert (tls / "ca.pem").read_bytes() == ca_bytes


def test_two_serving_hosts_place_replica_i_on_host_i_mod_2_everywhere(env, haproxy_check):
    env.setenv("SERVING_HOSTS", "2")
    env.setenv("SERVING_STABLE_REPLICAS", "3")
    s = Settings()
    airflow = stack.airflow_env(s)
    second = json.loads(airflow["AIRFLOW_CONN_SERVING_HOST_LOCAL_2"])
    assert second["host"] == "tcp://10.217.0.2:2376" and second["extra"]["publish_address"] == "10.217.0.2"
    assert second["extra"]["tls_verify"] and second["extra"]["tls_client_key"].startswith(str(s.secrets_dir))
    tfs = json.loads(airflow["AIRFLOW_CONN_TFSERVING_LOCAL"])["extra"]
    assert tfs["replica_hosts"] == ["127.0.0.1", "10.217.0.2"] and tfs["replicas"] == 3
    text = stack.router_config(s)
    rest = [line.split()[1:3] for line in backend(text, "local_rest") if line.split()[0] == "server"]
    assert rest == [
        ["replica1", f"127.0.0.1:{s.replica_rest_port}"],
        ["replica2", f"10.217.0.2:{s.replica_rest_port + 2}"],
        ["replica3", f"127.0.0.1:{s.replica_rest_port + 4}"],
    ]
    canary = [line.split()[2] for line in backend(text, "local_canary_rest") if line.split()[0] == "server"]
    assert canary == [f"127.0.0.1:{s.canary_replica_rest_port}"]  # one replica: the first host
    assert "X-Served-By-Replica %[srv_name]" in text
    # Prometheus finds the replicas on both engines and scrapes each where its port is published
    import yaml

    serving = next(
        job for job in yaml.safe_load(stack.prometheus_config(s))["scrape_configs"] if job["job_name"] == "serving"
    )
    first, second_sd = serving["docker_sd_configs"]
    assert first["host"] == s.docker_host and second_sd["host"] == "https://10.217.0.2:2376"
    assert second_sd["tls_config"]["key_file"] == str(s.docker2_tls_dir / "key.pem")
    [address_rule] = [r for r in serving["relabel_configs"] if r.get("target_label") == "__address__"]
    value = address_rule["separator"].join(("10.217.0.2", "8513"))
    assert address_rule["replacement"].replace("$1", value) == "10.217.0.2:8513"
    haproxy_check(s, text)


def test_one_serving_host_keeps_every_replica_on_loopback(env):
    env.setenv("SERVING_HOSTS", "1")
    s = Settings()
    assert stack.serving_host_addresses(s) == ["127.0.0.1"]
    servers = [line.split()[2] for line in stack.router_config(s).splitlines() if line.strip().startswith("server ")]
    assert all(addr.startswith("127.0.0.1:") for addr in servers)


@pytest.mark.parametrize(("runs_here", "hosts"), [(True, 2), (False, 1)])
def test_two_serving_hosts_by_default_where_the_second_host_runs(env, monkeypatch, runs_here, hosts):
    monkeypatch.setattr(settings_module, "second_docker_host_runs_here", lambda: runs_here)
    s = Settings()
    assert s.serving_hosts == hosts
    # every Airflow component gets the stack's value, so it places replicas as the router and Connections do
    assert stack.airflow_env(s)["SERVING_HOSTS"] == str(hosts)
    env.setenv("SERVING_HOSTS", "1")  # an explicit value wins
    assert Settings().serving_hosts == 1
    env.setenv("SERVING_HOSTS", "3")
    with pytest.raises(ValueError, match="SERVING_HOSTS=3 is out of range"):
        Settings()


class FakeContainer:
    def __init__(self, name: str, root: str, removed: list[str]) -> None:
        self.name, self.labels, self._removed = name, {stack.SERVING_LABEL_MODEL_ROOT: root}, removed

    def remove(self, force: bool = False) -> None:
        assert force
        self._removed.append(self.name)


class FakeEngine:
    """A Docker client listing the given containers (and only for the model-root label filter)."""

    def __init__(self, containers: list[FakeContainer]) -> None:
        self._containers = containers
        self.closed = False
        self.containers = self

    def list(self, all: bool = False, filters: dict | None = None) -> list[FakeContainer]:  # noqa: A002 - docker's
        assert all and filters == {"label": stack.SERVING_LABEL_MODEL_ROOT}
        return self._containers

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("serving_hosts", [1, 2])
def test_up_removes_replicas_left_on_a_host_that_is_no_longer_theirs(env, monkeypatch, serving_hosts):
    import docker

    env.setenv("SERVING_HOSTS", str(serving_hosts))
    monkeypatch.setattr(stack, "docker2_enabled", lambda s: True)
    s = Settings()
    ours, prefix = str(s.state_dir / "serving" / "local"), s.serving_container_prefix
    removed: list[str] = []

    def on(*names: str, root: str = ours) -> list[FakeContainer]:
        return [FakeContainer(name, root, removed) for name in names]

    first = FakeEngine(
        on(f"{prefix}-local", f"{prefix}-local-1", f"{prefix}-local-2", f"{prefix}-local-canary")
        + on(f"{prefix}-local-1", root="/elsewhere/serving/local")  # another checkout's: never ours to remove
        + on(f"{prefix}-local-helper-1", f"{prefix}-other-1")  # not a replica of the `local` target
    )
    second = FakeEngine(on(f"{prefix}-local-1", f"{prefix}-local-3", f"{prefix}-local-canary"))
    monkeypatch.setattr(docker, "DockerClient", lambda **kwargs: first)
    monkeypatch.setattr(stack, "docker2_client", lambda s: second)
    moved = stack.remove_misplaced_replicas(s)
    if serving_hosts == 2:  # odd replicas belong on the second host, even ones (and the canary's only) on the first
        assert moved == [
            f"docker/{prefix}-local-1",
            f"docker2/{prefix}-local-canary",
        ]
    else:  # one host: nothing belongs on the second
        assert moved == [f"docker2/{n}" for n in (f"{prefix}-local-1", f"{prefix}-local-3", f"{prefix}-local-canary")]
    assert removed == [m.split("/", 1)[1] for m in moved]
    assert first.closed and second.closed


def test_down_deletes_only_a_namespace_this_stack_set_up(env, monkeypatch):
    calls: list[tuple[str, ...]] = []

    def ip(*args: str, check: bool = True):
        calls.append(args)
        return subprocess.CompletedProcess(args, 0, stdout="tfdeploy-dev (id: 0)\n", stderr="")

    monkeypatch.setattr(stack, "_ip", ip)
    s = Settings()
    stack.docker2_network_down(s)  # another checkout's stack of this profile has a namespace of that name
    assert calls == []
    stack.docker2_network_up(s)
    assert ("netns", "add", "tfdeploy-dev") not in calls  # it exists: kept
    assert ("-n", "tfdeploy-dev", "addr", "replace", "10.217.0.2/30", "dev", "tfdeploy-dev-n") in calls
    calls.clear()
    stack.docker2_network_down(s)
    assert ("netns", "delete", "tfdeploy-dev") in calls
    calls.clear()
    stack.docker2_network_down(s)
    assert calls == []
