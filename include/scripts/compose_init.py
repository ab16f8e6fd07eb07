"""The compose stack's ``airflow-init`` (docker-compose.yml): runs once per ``docker-compose up``, before the services
that need what it writes.

As root, only to give the shared state volume (``TFDEPLOY_STATE_DIR``, mounted at the same path in every service
that uses it) to the Airflow user (50000) and to create HDFS's directories (stack.py's list) as HDFS's superuser
(``root``, as on the local stack: hdfs-site.xml makes group root a superuser group); then as the Airflow user:

1. the registry's machine token file and the simple auth manager's passwords file (0600), from the environment;
2. the generated configurations, by the local stack's own generators (include/scripts/stack.py: written once) with
   the compose network's addresses: the router's (HAProxy listens on every address of the serving host's network
   namespace, where docker-compose publishes its ports; replica i at its serving host's address, the second host's
   being its fixed address on the compose network), Prometheus' (with its rules; its Docker service discovery of
   each serving host through that host's read-only proxy) and Alertmanager's;
3. ``airflow db migrate``. Users and Connections come from the environment (x-airflow-common).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import stack  # noqa: E402
from tfdeploy.settings import Settings  # noqa: E402

AIRFLOW_UID = AIRFLOW_GID = 50000
NAMENODE_URL = "http://namenode:9870"
ALERTMANAGER_ADDRESS = "alertmanager:9093"
REGISTRY_ADDRESS = "airflow-apiserver:8080"
# The read-only Docker APIs (docker-compose.yml; include/images/haproxy/docker-socket-proxy.cfg), one per serving
# host, in host order (docker-socket-proxy for docker-host, docker-socket-proxy-2 for docker-host-2): what
# Prometheus discovers the replicas through, instead of the engines' own sockets
DOCKER_RO_HOSTS = ("unix:///run/docker-ro/docker.sock", "unix:///run/docker-ro-2/docker.sock")
DOCKER_RO_HOST = DOCKER_RO_HOSTS[0]
# The Connections of the `local` target's serving hosts, after the first (services/targets.py's names), as
# docker-compose.yml gives them in the environment
SERVING_HOST_2_CONN = "AIRFLOW_CONN_SERVING_HOST_LOCAL_2"
TFSERVING_CONN = "AIRFLOW_CONN_TFSERVING_LOCAL"
# directories of the state volume, each the Airflow user's (0700 for secrets)
STATE_DIRS = ("airflow", "airflow/logs", "secrets", "tmp", "run", "haproxy", "prometheus", "alertmanager", "serving")


class ComposeSettings(Settings):
    """The stack's Settings as the compose network sees them: WebHDFS at the NameNode's service name; the second
    serving host (stack.serving_host_addresses' second address) at the ``publish_address`` of its Connection
    (``serving_host_local_2``: docker-host-2's fixed address on the compose network), not at the local stack's
    docker2 namespace address."""

    @property
    def webhdfs_url(self) -> str:
        return NAMENODE_URL

    @property
    def docker2_address(self) -> str:
        conn = os.environ.get(SERVING_HOST_2_CONN)
        if not conn:
            if self.serving_hosts > 1:
                raise RuntimeError(f"SERVING_HOSTS={self.serving_hosts} but {SERVING_HOST_2_CONN} is not set")
            return super().docker2_address
        return str(json.loads(conn)["extra"]["publish_address"])


def check_replica_hosts(s: Settings) -> list[str]:
    """The serving hosts' addresses the router's configuration uses (stack.serving_host_addresses), checked against
    the tfserving_local Connection's replica_hosts, which the pipeline reaches the replicas at: both must place
    replica i at the same address (the Connection without replica_hosts: every replica at its host)."""
    hosts = stack.serving_host_addresses(s)
    conn = os.environ.get(TFSERVING_CONN)
    if conn:
        extra = json.loads(conn).get("extra") or {}
        given = [str(h) for h in extra.get("replica_hosts") or [json.loads(conn)["host"]]]
        if given != hosts:
            raise RuntimeError(
                f"{TFSERVING_CONN}'s replica_hosts {given} differ from the serving hosts' addresses {hosts} "
                f"(SERVING_HOSTS={s.serving_hosts}, {SERVING_HOST_2_CONN}'s publish_address): fix docker-compose.yml"
            )
    return hosts


def compose_router_config(s: Settings) -> str:
    """stack.router_config with every frontend bound to all addresses (docker-compose publishes the serving host's
    ports to its network namespace's interface, not to its loopback); the servers are the local stack's: replica i
    at its host's address (check_replica_hosts), 127.0.0.1 for docker-host's (published on that engine's loopback,
    in the same namespace), docker-host-2's fixed address for its replicas."""
    check_replica_hosts(s)
    text, count = re.subn(r"(?m)^(\s+bind )127\.0\.0\.1:", r"\g<1>0.0.0.0:", stack.router_config(s))
    if count == 0 or re.search(r"(?m)^\s+bind 127\.", text):
        raise RuntimeError("stack.router_config's bind lines changed: update compose_router_config")
    return text.replace("# generated by include/scripts/stack.py", "# generated by compose_init.py from stack.py", 1)


def compose_prometheus_config(s: Settings) -> str:
    """stack.prometheus_config with Alertmanager and the registry at their service names (Prometheus, the router
    and the first host's replicas share docker-host's network namespace: those targets stay 127.0.0.1), and the
    replicas of each serving host discovered through that host's read-only Docker API (DOCKER_RO_HOSTS) rather
    than the engine's socket (the second host's: no TLS, a unix socket like the first's). The second host's
    replicas are scraped where they publish their ports, docker-host-2's address (the relabelling's
    __meta_docker_port_public_ip)."""
    import yaml

    config: dict[str, Any] = yaml.safe_load(stack.prometheus_config(s))
    engines = [sd for job in config["scrape_configs"] for sd in job.get("docker_sd_configs", [])]
    expected = [s.docker_host, f"https://{s.docker2_address}:{s.docker2_port}"][: s.serving_hosts]
    if [sd["host"] for sd in engines] != expected or s.serving_hosts > len(DOCKER_RO_HOSTS):
        raise RuntimeError(
            f"compose_prometheus_config expects one docker_sd_configs entry per serving host, {expected} "
            f"(SERVING_HOSTS={s.serving_hosts}): stack.prometheus_config changed, update it"
        )
    for sd, host in zip(engines, DOCKER_RO_HOSTS, strict=False):
        sd["host"] = host
        sd.pop("tls_config", None)
    for am in config["alerting"]["alertmanagers"]:
        for static in am["static_configs"]:
            static["targets"] = [ALERTMANAGER_ADDRESS]
    moved = {"alertmanager": ALERTMANAGER_ADDRESS, "registry": REGISTRY_ADDRESS}
    for job in config["scrape_configs"]:
        if job["job_name"] in moved:
            job["static_configs"] = [{"targets": [moved[job["job_name"]]]}]
    header = "# generated by include/scripts/compose_init.py from stack.prometheus_config\n"
    return header + yaml.safe_dump(config, sort_keys=False, width=120)


def _own(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if (path.stat().st_uid, path.stat().st_gid) != (AIRFLOW_UID, AIRFLOW_GID):
        os.chown(path, AIRFLOW_UID, AIRFLOW_GID)


def prepare_state(state_dir: Path) -> None:
    """As root: the state volume's directories, the Airflow user's (secrets 0700)."""
    _own(state_dir)
    for name in STATE_DIRS:
        _own(state_dir / name)
    (state_dir / "secrets").chmod(0o700)
    (state_dir / "tmp").chmod(0o700)


def drop_privileges() -> None:
    os.setgroups([])
    os.setgid(AIRFLOW_GID)
    os.setuid(AIRFLOW_UID)
    os.environ["HOME"] = "/opt/airflow"


def write_files(s: Settings) -> None:
    """Secrets files and the generated configurations into the state volume."""
    stack.write_private(stack._secret_path(s, "registry_api_token"), os.environ["REGISTRY_API_TOKEN"])
    passwords = Path(os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
    stack.write_private(passwords, json.dumps({s.airflow_user: os.environ["AIRFLOW_PASSWORD"]}) + "\n")
    (s.state_dir / "haproxy" / "haproxy.cfg").write_text(compose_router_config(s))
    for name in stack.ROUTER_MAPS:
        stack.router_map(s, name).touch()  # kept by the pipeline: never emptied here
    (s.state_dir / "prometheus" / "prometheus.yml").write_text(compose_prometheus_config(s))
    (s.state_dir / "prometheus" / "rules.yml").write_text((stack.MONITORING_DIR / "rules.yml").read_text())
    (s.state_dir / "alertmanager" / "alertmanager.yml").write_text(stack.alertmanager_config(s))


def main() -> int:
    s = ComposeSettings()
    if os.geteuid() != 0:
        print("[airflow-init] must start as root (user 0:0) to prepare the state volume", file=sys.stderr)
        return 2
    prepare_state(s.state_dir)
    stack._hdfs_bootstrap_dirs(s)
    print(f"[airflow-init] HDFS directories ready at {s.webhdfs_url}", flush=True)
    drop_privileges()
    write_files(s)
    print("[airflow-init] configurations written (router, Prometheus, Alertmanager), secrets files 0600", flush=True)
    migrate = subprocess.run(["airflow", "db", "migrate"], capture_output=True, text=True)
    if migrate.returncode != 0:
        print(migrate.stdout[-4000:], migrate.stderr[-4000:], sep="\n", file=sys.stderr)
        return migrate.returncode
    print("[airflow-init] Airflow's database migrated", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
