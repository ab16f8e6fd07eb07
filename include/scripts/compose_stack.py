"""The compose stack (docker-compose.yml; README "Topology: docker-compose"): up, down, status, demo, env.

    compose_stack.py up       env file, images, `docker-compose up -d`, the serving images into the serving hosts
                              (docker-host, docker-host-2), wait until every service is healthy, print where to look
    compose_stack.py down [--volumes]
    compose_stack.py status
    compose_stack.py demo     deploy the example model, two versions, through the stack's REST API
    compose_stack.py env      write the env file (secrets, ports, network) if missing; print its path

The compose project is its own (``TFDEPLOY_COMPOSE_PROJECT``, default ``tfdeploy-compose``), with its own state
directory (``TFDEPLOY_COMPOSE_STATE``, default ``<clone>/.state-compose``: the env file, 0600) and host ports
(``TFDEPLOY_COMPOSE_PORT_OFFSET`` added to 28080, 28500-28502, 28404, 29090, 29093, 29870), all on 127.0.0.1: it
runs beside the dev (8080...) and test (18080...) stacks. Its network is a /24 of its own too
(``TFDEPLOY_COMPOSE_NET``, its first three octets: default ``10.217.<128 + thousands of the port offset>``, so
10.217.128 for ``make compose-up``, 10.217.130 for the smoke test's +2000), where the second serving host has the
fixed address ``<net>.2``. docker-compose runs with a clean environment and the env file, so a variable of the
caller's shell (say the test stack's REGISTRY_API_TOKEN) never leaks into the stack.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from base64 import urlsafe_b64encode
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT / "include" / "scripts")]

from stack import SERVING_LABEL_MODEL_ROOT, _replica_index, write_private  # noqa: E402
from tfdeploy.core.placement import replica_host  # noqa: E402
from tfdeploy.settings import settings_for  # noqa: E402

COMPOSE_FILE = ROOT / "docker-compose.yml"
# Host ports (127.0.0.1) by the env file's variable: docker-compose.yml publishes each
BASE_PORTS = {
    "TFDEPLOY_COMPOSE_AIRFLOW_PORT": 28080,
    "TFDEPLOY_COMPOSE_SERVING_GRPC_PORT": 28500,
    "TFDEPLOY_COMPOSE_SERVING_REST_PORT": 28501,
    "TFDEPLOY_COMPOSE_CANARY_GRPC_PORT": 28502,
    "TFDEPLOY_COMPOSE_ROUTER_STATS_PORT": 28404,
    "TFDEPLOY_COMPOSE_PROMETHEUS_PORT": 29090,
    "TFDEPLOY_COMPOSE_ALERTMANAGER_PORT": 29093,
    "TFDEPLOY_COMPOSE_WEBHDFS_PORT": 29870,
}
# Secrets of the env file, each generated once (the names are the settings' where they exist: tfdeploy.settings)
SECRETS = (
    "POSTGRES_SUPERUSER_PASSWORD",
    "POSTGRES_PASSWORD",
    "AIRFLOW_DB_PASSWORD",
    "REDIS_PASSWORD",
    "AIRFLOW_PASSWORD",
    "AIRFLOW_JWT_SECRET",
    "REGISTRY_API_TOKEN",
)
# Images the pipeline runs on the serving hosts (loaded into their engines: nothing can be pulled)
SERVING_IMAGE = "local/tfserving-compat:latest"
SANDBOX_IMAGE = "local/tfdeploy-sandbox:latest"
SERVING_IMAGES = (SERVING_IMAGE, SANDBOX_IMAGE)
# The serving Docker hosts of docker-compose.yml (the `local` target's, replica i on host i % 2) and the images each
# needs: the first runs the sandbox too (DOCKER_HOST), the second only replicas and their staging helpers (the
# serving image), as the local stack's docker2
SERVING_HOSTS = {"docker-host": SERVING_IMAGES, "docker-host-2": (SERVING_IMAGE,)}
# The compose network's address of the second serving host (static: docker-compose.yml), in TFDEPLOY_COMPOSE_NET
SERVING_HOST_2_SUFFIX = ".2"
# The compose stack's profile (docker-compose.yml's TFDEPLOY_STACK): its replicas' names
STACK_PROFILE = "dev"
# Services that run once (airflow-init) and the rest, which must all become healthy
ONE_SHOT = ("airflow-init",)


def _new_secret() -> str:
    return secrets.token_urlsafe(24)


def default_net(port_offset: int) -> str:
    """The compose network's /24 (its first three octets) for a port offset: ``10.217.<128 + thousands of the
    offset>``, so stacks on ports of their own (+0, +2000 for the smoke test) get networks of their own, apart from
    Docker's default pools (172.17-31.x, 192.168.x: the engines' own bridges) and from the local stack's docker2
    (10.217.0.0/30, 10.217.0.4/30)."""
    return f"10.217.{128 + (port_offset // 1000) % 128}"


def check_net(net: str) -> str:
    """``net`` if it is the first three octets of a private IPv4 /24 (TFDEPLOY_COMPOSE_NET), else ValueError."""
    try:
        network = ipaddress.IPv4Network(f"{net}.0/24")
    except ValueError:
        network = None
    if network is None or net.count(".") != 2 or not network.is_private:
        raise ValueError(
            f"TFDEPLOY_COMPOSE_NET={net!r}: give the first three octets of a private /24 for the compose network "
            "(e.g. 10.217.128), not in use by another Docker network"
        )
    return net


@dataclass(frozen=True)
class ComposeStack:
    project: str = field(default_factory=lambda: os.environ.get("TFDEPLOY_COMPOSE_PROJECT", "tfdeploy-compose"))
    state_dir: Path = field(
        default_factory=lambda: Path(os.environ.get("TFDEPLOY_COMPOSE_STATE", str(ROOT / ".state-compose")))
    )
    port_offset: int = field(default_factory=lambda: int(os.environ.get("TFDEPLOY_COMPOSE_PORT_OFFSET", "0")))
    # the compose network's /24, its first three octets ("": default_net(port_offset)); written into the env file
    # once, as the ports are, and read from there afterwards
    net: str = field(default_factory=lambda: os.environ.get("TFDEPLOY_COMPOSE_NET", "").strip())

    @property
    def env_file(self) -> Path:
        return self.state_dir / "compose.env"

    # ------------------------------------------------------------------ env file

    def write_env(self) -> dict[str, str]:
        """The env file (0600 in a 0700 state dir): every secret generated once and kept, the host ports."""
        values = read_env(self.env_file)
        changed = False
        for name in SECRETS:
            if not values.get(name):
                values[name], changed = _new_secret(), True
        defaults = {
            "AIRFLOW_USER": "admin",
            "AIRFLOW_DB_USER": "airflow",
            "POSTGRES_USER": "tfdeploy",
            "AIRFLOW_FERNET_KEY": urlsafe_b64encode(os.urandom(32)).decode(),
            "COMPOSE_PROJECT_NAME": self.project,
            **{name: str(port + self.port_offset) for name, port in BASE_PORTS.items()},
            "TFDEPLOY_COMPOSE_NET": check_net(self.net or default_net(self.port_offset)),
        }
        for name, value in defaults.items():
            if not values.get(name):
                values[name], changed = value, True
        check_net(values["TFDEPLOY_COMPOSE_NET"])
        if changed or not self.env_file.exists():
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self.state_dir.chmod(0o700)
            text = "# generated by include/scripts/compose_stack.py: the compose stack's secrets and ports (0600)\n"
            write_private(self.env_file, text + "".join(f"{k}={v}\n" for k, v in values.items()))
        return values

    def port(self, name: str) -> int:
        return int(read_env(self.env_file).get(name, BASE_PORTS[name] + self.port_offset))

    @property
    def subnet(self) -> str:
        """The compose network's subnet (the env file's TFDEPLOY_COMPOSE_NET)."""
        return f"{self._net()}.0/24"

    @property
    def serving_host_2_address(self) -> str:
        """docker-host-2's address on the compose network, where its replicas' ports are published."""
        return self._net() + SERVING_HOST_2_SUFFIX

    def _net(self) -> str:
        return check_net(
            read_env(self.env_file).get("TFDEPLOY_COMPOSE_NET") or self.net or default_net(self.port_offset)
        )

    @property
    def airflow_url(self) -> str:
        return f"http://127.0.0.1:{self.port('TFDEPLOY_COMPOSE_AIRFLOW_PORT')}"

    @property
    def serving_url(self) -> str:
        return f"http://127.0.0.1:{self.port('TFDEPLOY_COMPOSE_SERVING_REST_PORT')}"

    # ------------------------------------------------------------------ docker-compose

    def compose(self, *args: str, check: bool = True, capture: bool = False) -> subprocess.CompletedProcess:
        """docker-compose on this project and env file, with a clean environment (nothing of the caller's shell is
        interpolated into the file: only the env file's values)."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root")}
        if os.environ.get("DOCKER_HOST"):
            env["DOCKER_HOST"] = os.environ["DOCKER_HOST"]
        cmd = ["docker-compose", "-p", self.project, "-f", str(COMPOSE_FILE), "--env-file", str(self.env_file), *args]
        return subprocess.run(cmd, env=env, check=check, text=True, capture_output=capture)

    def containers(self) -> dict[str, dict]:
        """Service -> `docker inspect` of its container (this project's)."""
        ids = self.compose("ps", "-q", "--all", capture=True, check=False).stdout.split()
        if not ids:
            return {}
        out = subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True, check=True).stdout
        return {c["Config"]["Labels"]["com.docker.compose.service"]: c for c in json.loads(out)}

    def health(self) -> dict[str, str]:
        """Service -> healthy / starting / unhealthy / exited(<code>) / running (no healthcheck)."""
        states = {}
        for service, c in self.containers().items():
            st = c["State"]
            if st["Status"] != "running":
                states[service] = f"{st['Status']}({st.get('ExitCode')})"
            else:
                states[service] = st.get("Health", {}).get("Status", "running")
        return states

    def services(self) -> list[str]:
        return self.compose("config", "--services", capture=True).stdout.split()

    def wait_healthy(self, timeout: float = 600.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        wanted = self.services()
        while True:
            states = self.health()
            failed = {s: v for s, v in states.items() if s in ONE_SHOT and v.startswith("exited") and v != "exited(0)"}
            if failed:
                raise SystemExit(f"[compose] {failed}: see `docker-compose -p {self.project} logs airflow-init`")
            done = all(states.get(s) == ("exited(0)" if s in ONE_SHOT else "healthy") for s in wanted)
            if done:
                return states
            if time.monotonic() > deadline:
                raise SystemExit(f"[compose] not healthy after {timeout:.0f}s: {states}")
            time.sleep(3)

    # ------------------------------------------------------------------ the serving hosts' images

    def load_serving_images(self, timeout: float = 300.0) -> dict[str, list[str]]:
        """`docker save | docker load` of each serving host's images (SERVING_HOSTS) into its engine, those whose
        image id differs there (nothing can be pulled). Returns the images loaded, by host."""
        deadline = time.monotonic() + timeout
        while not all((states := self.health()).get(host) == "healthy" for host in SERVING_HOSTS):
            if time.monotonic() > deadline:
                raise SystemExit(f"[compose] the serving hosts' engines did not become healthy: {states}")
            time.sleep(2)
        containers = self.containers()
        loaded = {}
        for host, images in SERVING_HOSTS.items():
            container = containers[host]["Id"]
            stale = [
                image
                for image in images
                if _image_id(["docker"], image) != _image_id(["docker", "exec", container, "docker"], image)
            ]
            if stale:
                print(f"[compose] loading {', '.join(stale)} into {host} (docker save | docker load)")
                save = subprocess.Popen(["docker", "save", *stale], stdout=subprocess.PIPE)
                subprocess.run(
                    ["docker", "exec", "-i", container, "docker", "load", "-q"], stdin=save.stdout, check=True
                )
                if save.wait() != 0:
                    raise SystemExit("[compose] docker save failed")
            loaded[host] = stale
        return loaded

    def remove_misplaced_replicas(self) -> list[str]:
        """Remove the serving replicas that run on a serving host other than their own (replica i belongs on host
        i % 2: core.placement), as after the second host was added to a stack whose volumes kept replica 2 on the
        first; the router already sends its traffic to the right host, and the pool's next change creates it there
        (as stack.py remove_misplaced_replicas on the local stack). Returns ``host/name`` of each."""
        s, hosts, containers = settings_for(STACK_PROFILE), list(SERVING_HOSTS), self.containers()
        removed = []
        for host in hosts:
            docker = ["docker", "exec", containers[host]["Id"], "docker"]
            listed = subprocess.run(
                [*docker, "ps", "-a", "--filter", f"label={SERVING_LABEL_MODEL_ROOT}", "--format", "{{.Names}}"],
                capture_output=True,
                text=True,
            )
            if listed.returncode != 0:
                print(f"[compose] could not check the serving replicas' placement on {host}: {listed.stderr.strip()}")
                continue
            for name in listed.stdout.split():
                index = _replica_index(s, name)
                if index is not None and replica_host(index, hosts) != host:
                    subprocess.run([*docker, "rm", "-f", name], capture_output=True, check=True)
                    removed.append(f"{host}/{name}")
        return removed

    # ------------------------------------------------------------------ the compose network

    def network_subnets(self) -> list[str] | None:
        """The subnets of this project's default network as the engine has it (None: no such network)."""
        labels = (f"com.docker.compose.project={self.project}", "com.docker.compose.network=default")
        filters = [arg for label in labels for arg in ("--filter", f"label={label}")]
        ids = subprocess.run(["docker", "network", "ls", "-q", *filters], capture_output=True, text=True).stdout.split()
        if not ids:
            return None
        out = subprocess.run(["docker", "network", "inspect", ids[0]], capture_output=True, text=True, check=True)
        return [pool.get("Subnet") for pool in json.loads(out.stdout)[0]["IPAM"].get("Config") or []]

    def ensure_network(self) -> None:
        """A default network of another subnet (made before docker-compose.yml fixed it, or by another
        TFDEPLOY_COMPOSE_NET) goes, with the containers on it (`down`, volumes kept): docker-compose 1.29 does
        not compare an existing network's IPAM with the file's, and docker-host-2's fixed address needs the
        file's subnet."""
        subnets = self.network_subnets()
        if subnets is not None and subnets != [self.subnet]:
            print(
                f"[compose] the project's network has subnet {subnets}, the file's is {self.subnet}: recreating it "
                "(docker-compose down, volumes kept)"
            )
            self.compose("down", "--remove-orphans")

    # ------------------------------------------------------------------ commands

    def up_to_date(self) -> bool:
        """Whether every service runs healthy (airflow-init: done) in a container of its current configuration and
        image: docker-compose's own configuration hashes (`config --hash`) against the containers' labels."""
        hashes = dict(
            line.split() for line in self.compose("config", "--hash", "*", capture=True).stdout.splitlines() if line
        )
        containers = self.containers()
        states = self.health()
        image_ids: dict[str, str] = {}
        for service, wanted in hashes.items():
            c = containers.get(service)
            if c is None or c["Config"]["Labels"].get("com.docker.compose.config-hash") != wanted:
                return False
            image = c["Config"]["Image"]  # the hash names the image; a rebuilt image has a new id
            if c["Image"] != image_ids.setdefault(image, _image_id(["docker"], image)):
                return False
            if states.get(service) != ("exited(0)" if service in ONE_SHOT else "healthy"):
                return False
        return True

    def up(self, build: bool = True) -> dict[str, float]:
        """Everything up and healthy; returns timings (seconds) of the steps. A stack running healthy with this
        configuration and these images is left alone (`docker-compose up` would run airflow-init again)."""
        timings = {}
        t0 = time.monotonic()
        self.write_env()
        if build:
            subprocess.run([str(ROOT / "include" / "scripts" / "build_images.sh"), "compose"], check=True)
            timings["images"] = time.monotonic() - t0
        t1 = time.monotonic()
        if self.up_to_date():
            timings["up"] = time.monotonic() - t1
            timings["total"] = time.monotonic() - t0
            return timings
        # the serving hosts first: their images load (when missing) while the rest starts
        self.ensure_network()
        self.compose("up", "-d", *SERVING_HOSTS)
        loader = ThreadPoolExecutor(max_workers=1)
        loaded = loader.submit(self.load_serving_images)
        self.compose("up", "-d", "--remove-orphans")
        loaded.result()
        loader.shutdown()
        for moved in self.remove_misplaced_replicas():
            print(
                f"[compose] removed {moved}: not its serving host (recreated on its own host at the pool's next change)"
            )
        self.wait_healthy()
        timings["up"] = time.monotonic() - t1
        timings["total"] = time.monotonic() - t0
        return timings

    def down(self, volumes: bool = False) -> None:
        self.write_env()  # docker-compose needs the file to interpolate even what it removes
        self.compose("down", "--remove-orphans", *(["--volumes"] if volumes else []))

    def where(self) -> str:
        env = read_env(self.env_file)
        port = self.port
        return "\n".join(
            [
                f"[compose] project {self.project}: `docker-compose -p {self.project} ps` (env file {self.env_file})",
                f"[compose] Airflow UI:      {self.airflow_url}  (user {env.get('AIRFLOW_USER', 'admin')!r}, password "
                f"AIRFLOW_PASSWORD in {self.env_file})",
                f"[compose] Model registry:  {self.airflow_url}/registry/",
                f"[compose] TF Serving:      {self.serving_url}/v1/models/<model>  (the router; gRPC 127.0.0.1:"
                f"{port('TFDEPLOY_COMPOSE_SERVING_GRPC_PORT')}, canary gRPC "
                f"{port('TFDEPLOY_COMPOSE_CANARY_GRPC_PORT')})",
                f"[compose] Router stats:    http://127.0.0.1:{port('TFDEPLOY_COMPOSE_ROUTER_STATS_PORT')}/stats",
                f"[compose] Prometheus:      http://127.0.0.1:{port('TFDEPLOY_COMPOSE_PROMETHEUS_PORT')}",
                f"[compose] Alertmanager:    http://127.0.0.1:{port('TFDEPLOY_COMPOSE_ALERTMANAGER_PORT')}",
                f"[compose] HDFS NameNode:   http://127.0.0.1:{port('TFDEPLOY_COMPOSE_WEBHDFS_PORT')}",
                f"[compose] logs:            docker-compose -p {self.project} logs -f <service>",
                "[compose] stop:            make compose-down",
            ]
        )

    def client(self):  # -> AirflowClient
        from tfdeploy.airflow_client import AirflowClient

        env = read_env(self.env_file)
        return AirflowClient(self.airflow_url, env.get("AIRFLOW_USER", "admin"), env["AIRFLOW_PASSWORD"], timeout=30)

    def build_example(self, variant: str) -> Path:
        """The example model (include/example_model/build.py), built in a worker container into the state volume's
        example directory, where the workers read it and the pipeline's golden-file roots allow it."""
        out = Path("/opt/tfdeploy/state/example") / variant
        exists = self.compose(
            "exec", "-T", "airflow-worker-1", "test", "-f", str(out / "saved_model" / "saved_model.pb"), check=False
        )
        if exists.returncode != 0:
            print(f"[compose] building the example model ({variant}) in airflow-worker-1 into {out}")
            done = self.compose(
                "exec", "-T", "airflow-worker-1", "python", "/opt/airflow/include/example_model/build.py",
                "--out", str(out), "--variant", variant, check=False, capture=True,
            )  # fmt: skip
            if done.returncode != 0:
                raise SystemExit(f"[compose] building the example failed:\n{done.stderr[-3000:]}")
        return out


def read_env(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return values
    for line in lines:
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def _image_id(docker: list[str], image: str) -> str:
    done = subprocess.run([*docker, "image", "inspect", "-f", "{{.Id}}", image], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else ""


def demo(c: ComposeStack) -> int:
    """The main job through the compose stack: the example model, two versions (the second a gray release under live
    calls), as `make demo` does on the local stack (include/scripts/demo.py's steps)."""
    import demo as local_demo  # include/scripts/demo.py

    client = c.client()
    first, second = c.build_example("good"), c.build_example("better")
    client.wait_for_dag(local_demo.DAG_ID, timeout=300)
    client.unpause(local_demo.DAG_ID)
    ok = True
    if (before := local_demo.production_version(c, client.token())) is None:
        ok = local_demo.deploy(client, first, "first version", strategy="all_at_once")["state"] == "success"
    else:
        print(f"[compose] {local_demo.MODEL} already serves v{before} (an earlier compose-demo): releasing `better`")
    golden = json.loads(
        c.compose(
            "exec", "-T", "airflow-worker-1", "cat", str(second / "golden.json"), capture=True
        ).stdout
    )  # fmt: skip
    predict = f"{c.serving_url}/v1/models/{local_demo.MODEL}:predict"
    clients = local_demo.Clients(predict, golden["inputs"][:1])
    clients.start()
    try:
        ok = (
            local_demo.deploy(client, second, "second version (gray release under live calls)")["state"] == "success"
            and ok
        )
    finally:
        clients.stop.set()
        clients.join(timeout=15)
    print(f"[compose] live calls during the release, by side and status: {clients.sides}")
    import requests

    token = client.token()
    registry = requests.get(
        f"{c.airflow_url}/registry/v1/models/{local_demo.MODEL}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    ).json()
    answer = requests.post(predict, json={"instances": golden["inputs"][:2]}, timeout=10)
    print(f"[compose] registry: {local_demo.MODEL} production v{registry.get('version')}")
    print(f"[compose] serving:  POST {predict} -> {answer.text.strip()}")
    print(c.where())
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["up", "down", "status", "demo", "env"])
    parser.add_argument("-v", "--volumes", action="store_true", help="down: remove the stack's volumes (all its data)")
    parser.add_argument("--no-build", action="store_true", help="up: do not (re)build the images")
    args = parser.parse_args(argv)
    if shutil.which("docker-compose") is None:
        print("[compose] docker-compose is not installed: run `make setup` (Debian's docker-compose)", file=sys.stderr)
        return 1
    c = ComposeStack()
    if args.action == "env":
        c.write_env()
        print(c.env_file)
        return 0
    if args.action == "up":
        timings = c.up(build=not args.no_build)
        steps = ", ".join(f"{k} {v:.0f}s" for k, v in timings.items())
        print(f"[compose] up and healthy in {timings['total']:.0f}s ({steps})")
        print(c.where())
        return 0
    if args.action == "down":
        c.down(volumes=args.volumes)
        return 0
    if args.action == "status":
        for service, state in sorted(c.health().items()):
            print(f"[compose] {service:24} {state}")
        return 0
    return demo(c)


if __name__ == "__main__":
    sys.exit(main())
