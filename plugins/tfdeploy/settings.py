"""Every setting of the local stack, read from the environment in one place.

Scripts (``include/scripts/stack.py``), tests and DAG code all read these, so a value changes in one
place. Defaults are for a single developer machine; every one can be overridden by its variable.

Two stacks of one checkout can run side by side: the developer's (``TFDEPLOY_STACK=dev``, the default:
``make up``, ``make demo``) and the test suite's (``TFDEPLOY_STACK=test``: ``make test``). The profile
changes the defaults, here and nowhere else: the test stack keeps its state in ``<clone>/.state-test``,
listens on every port + 10000 and names its serving containers ``tfserving-test-<target>``, so the
tests never touch the developer's services, registry or serving containers. Variables set explicitly
still win over either profile's defaults.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import socket
import tempfile
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# Databases of the model registry on the stack's PostgreSQL (stack.py creates both, owned by postgres_user).
REGISTRY_DB = "tfdeploy_registry"
REGISTRY_TEST_DB = "tfdeploy_registry_test"
# Airflow's metadata database on the same server, owned by its own role (Settings.airflow_db_user).
AIRFLOW_DB = "airflow"

# Generated secrets in ``<state dir>/secrets/`` (a 0700 directory of 0600 files, written by stack.py at first
# set-up): the Airflow admin's password and the registry role's PostgreSQL password, by file name.
AIRFLOW_PASSWORD_SECRET = "airflow_password"
POSTGRES_PASSWORD_SECRET = "postgres_password"
AIRFLOW_DB_PASSWORD_SECRET = "airflow_db_password"  # the PostgreSQL role of Airflow's metadata database
REDIS_PASSWORD_SECRET = "redis_password"  # the Celery broker's (Redis requirepass)

# Set by stack.py in each Celery worker's environment: its Celery node name (``worker1@<host>``), which
# airflow_hostname() gives Airflow as the worker's hostname, so each task instance records which worker ran it.
WORKER_NAME_VAR = "TFDEPLOY_WORKER_NAME"


def airflow_hostname() -> str:
    """Airflow's ``[core] hostname_callable`` on this stack: a Celery worker's node name (WORKER_NAME_VAR), so the
    task instances' ``hostname`` tells the workers apart on one machine; elsewhere this machine's FQDN, as
    Airflow's default."""
    return os.environ.get(WORKER_NAME_VAR, "").strip() or socket.getfqdn()


@dataclass(frozen=True)
class StackProfile:
    """What a stack profile changes: where its state lives, how far its ports are shifted, and the
    prefix of its serving containers' names."""

    name: str
    state_dir_name: str
    port_offset: int
    container_prefix: str


STACK_PROFILES: dict[str, StackProfile] = {
    "dev": StackProfile("dev", ".state", 0, "tfserving"),
    "test": StackProfile("test", ".state-test", 10000, "tfserving-test"),
}

# settings_for() builds the Settings of a named profile without touching os.environ.
_stack_override: ContextVar[str | None] = ContextVar("tfdeploy_stack_override", default=None)


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def _port(name: str, default: int) -> int:
    raw = _env(name, str(default))
    try:
        port = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a port number; set it to an integer 1-65535") from None
    if not 0 < port < 65536:
        raise ValueError(f"{name}={port} is out of range; set it to an integer 1-65535")
    return port


def second_docker_host_runs_here() -> bool:
    """Whether the local stack runs its second Docker host (include/scripts/stack.py `docker2`): where it can, as
    root (a network namespace and a dockerd of its own). Elsewhere (and in the compose stack, whose Airflow runs as
    uid 50000) the `local` target has one Docker host unless SERVING_HOSTS says otherwise."""
    return os.geteuid() == 0


def _count(name: str, default: int, low: int, high: int) -> int:
    raw = _env(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number; set it to an integer {low}-{high}") from None
    if not low <= value <= high:
        raise ValueError(f"{name}={value} is out of range; set it to an integer {low}-{high}")
    return value


def _profile() -> StackProfile:
    name = _stack_override.get() or _env("TFDEPLOY_STACK", "dev")
    try:
        return STACK_PROFILES[name]
    except KeyError:
        raise ValueError(
            f"TFDEPLOY_STACK={name!r} is not a stack profile; set it to one of: {', '.join(STACK_PROFILES)}"
        ) from None


def _names(name: str) -> tuple[str, ...]:
    """A comma-separated list (blanks dropped, first occurrence kept)."""
    return tuple(dict.fromkeys(item.strip() for item in os.environ.get(name, "").split(",") if item.strip()))


def _read_secret(path: Path) -> str:
    """A generated secret's value; "" while it does not exist yet (before the first `stack.py up`) or when this
    user may not read it."""
    try:
        return path.read_text().strip()
    except (FileNotFoundError, PermissionError, NotADirectoryError):
        return ""


def _stack_port(name: str, dev_default: int) -> int:
    """Port from `name`, else the dev default shifted by the profile's offset (+10000 for the test stack)."""
    return _port(name, dev_default + _profile().port_offset)


@dataclass(frozen=True)
class Settings:
    """Resolved configuration of the local stack."""

    # Profile: "dev" (the developer's stack) or "test" (the test suite's own stack); see the module doc.
    stack: str = field(default_factory=lambda: _profile().name)
    state_dir: Path = field(
        default_factory=lambda: Path(_env("TFDEPLOY_STATE_DIR", str(PROJECT_ROOT / _profile().state_dir_name)))
    )
    cache_dir: Path = field(
        default_factory=lambda: Path(_env("TFDEPLOY_CACHE_DIR", str(Path.home() / ".cache" / "tfdeploy")))
    )
    # Airflow
    airflow_host: str = field(default_factory=lambda: _env("AIRFLOW_HOST", "127.0.0.1"))
    airflow_port: int = field(default_factory=lambda: _stack_port("AIRFLOW_PORT", 8080))
    airflow_user: str = field(default_factory=lambda: _env("AIRFLOW_USER", "admin"))
    # HDFS
    hadoop_version: str = field(default_factory=lambda: _env("HADOOP_VERSION", "3.4.2"))
    namenode_rpc_port: int = field(default_factory=lambda: _stack_port("HDFS_NAMENODE_RPC_PORT", 8020))
    webhdfs_port: int = field(default_factory=lambda: _stack_port("HDFS_WEBHDFS_PORT", 9870))
    datanode_port: int = field(default_factory=lambda: _stack_port("HDFS_DATANODE_PORT", 9866))
    datanode_http_port: int = field(default_factory=lambda: _stack_port("HDFS_DATANODE_HTTP_PORT", 9864))
    datanode_ipc_port: int = field(default_factory=lambda: _stack_port("HDFS_DATANODE_IPC_PORT", 9867))
    # the second DataNode (two DataNodes, replication 2: README "HDFS"); the first one's ports + 100
    datanode2_port: int = field(default_factory=lambda: _stack_port("HDFS_DATANODE2_PORT", 9966))
    datanode2_http_port: int = field(default_factory=lambda: _stack_port("HDFS_DATANODE2_HTTP_PORT", 9964))
    datanode2_ipc_port: int = field(default_factory=lambda: _stack_port("HDFS_DATANODE2_IPC_PORT", 9967))
    hdfs_user: str = field(default_factory=lambda: _env("HDFS_USER", "airflow"))
    # Docker (one engine serves both stacks; their containers are told apart by name and label)
    docker_host: str = field(default_factory=lambda: _env("DOCKER_HOST", "unix:///var/run/docker.sock"))
    # The second Docker host (stack.py `docker2`, README "Serving on two Docker hosts"): a dockerd in a network
    # namespace of this stack, reached only over a veth pair on DOCKER2_SUBNET (a /30: this machine .1, the
    # namespace .2), TLS with client certificates on DOCKER2_PORT. SERVING_HOSTS=2 spreads the `local` target's
    # stable replicas over both hosts (replica i on host i % 2): the default where the second host runs.
    docker2_subnet: str = field(
        default_factory=lambda: _env("DOCKER2_SUBNET", "10.217.0.0/30" if _profile().name == "dev" else "10.217.0.4/30")
    )
    docker2_port: int = field(default_factory=lambda: _stack_port("DOCKER2_PORT", 2376))
    serving_hosts: int = field(
        default_factory=lambda: _count("SERVING_HOSTS", 2 if second_docker_host_runs_here() else 1, 1, 2)
    )
    # PostgreSQL (the model registry's server; 5433 so a machine's own PostgreSQL on 5432 does not clash)
    postgres_port: int = field(default_factory=lambda: _stack_port("POSTGRES_PORT", 5433))
    postgres_user: str = field(default_factory=lambda: _env("POSTGRES_USER", "tfdeploy"))
    postgres_os_user: str = field(default_factory=lambda: _env("POSTGRES_OS_USER", "tfdeploy-pg"))
    # Airflow's metadata database (AIRFLOW_DB) on that server, owned by this role
    airflow_db_user: str = field(default_factory=lambda: _env("AIRFLOW_DB_USER", "airflow"))
    # The CeleryExecutor: Redis as its broker (our own redis-server on 127.0.0.1, password required), results in
    # Airflow's metadata database; each Celery worker (stack.py CELERY_WORKERS) runs CELERY_WORKER_CONCURRENCY tasks
    # at once.
    redis_port: int = field(default_factory=lambda: _stack_port("REDIS_PORT", 6380))
    celery_worker_concurrency: int = field(default_factory=lambda: _count("CELERY_WORKER_CONCURRENCY", 4, 1, 32))
    # Serving. Clients reach models through the router (HAProxy) on SERVING_GRPC_PORT / SERVING_REST_PORT; the
    # `local` target's replica (container `<serving_container_prefix>-local`) listens on the replica ports,
    # which the router forwards to and the pipeline drives (reload, status) directly.
    serving_image: str = field(default_factory=lambda: _env("SERVING_IMAGE", "local/tfserving-compat:latest"))
    # The images a run may choose (the DAGs' `serving_image` Param, checked again by services/targets.py):
    # SERVING_IMAGES, comma-separated; default: SERVING_IMAGE alone.
    serving_images: tuple[str, ...] = field(default_factory=lambda: _names("SERVING_IMAGES"))
    serving_grpc_port: int = field(default_factory=lambda: _stack_port("SERVING_GRPC_PORT", 8500))
    serving_rest_port: int = field(default_factory=lambda: _stack_port("SERVING_REST_PORT", 8501))
    replica_grpc_port: int = field(default_factory=lambda: _stack_port("SERVING_REPLICA_GRPC_PORT", 8510))
    replica_rest_port: int = field(default_factory=lambda: _stack_port("SERVING_REPLICA_REST_PORT", 8511))
    # The canary pool: candidates load there, never beside production. Explicit gRPC calls for a candidate
    # use the router's canary gRPC port (the router cannot read the model spec inside a gRPC message).
    canary_grpc_port: int = field(default_factory=lambda: _stack_port("SERVING_CANARY_GRPC_PORT", 8502))
    canary_replica_grpc_port: int = field(default_factory=lambda: _stack_port("SERVING_CANARY_REPLICA_GRPC_PORT", 8520))
    canary_replica_rest_port: int = field(default_factory=lambda: _stack_port("SERVING_CANARY_REPLICA_REST_PORT", 8521))
    router_stats_port: int = field(default_factory=lambda: _stack_port("ROUTER_STATS_PORT", 8404))
    # Monitoring (README "Monitoring"): Prometheus scrapes the replicas, the router and the registry; its alerts
    # go to Alertmanager, which posts them to the registry. Both on 127.0.0.1, data in the state directory.
    prometheus_port: int = field(default_factory=lambda: _stack_port("PROMETHEUS_PORT", 9090))
    alertmanager_port: int = field(default_factory=lambda: _stack_port("ALERTMANAGER_PORT", 9093))
    # replicas of the stable pool (replica i listens on the replica ports + 2i), rolled one at a time
    stable_replicas: int = field(default_factory=lambda: _count("SERVING_STABLE_REPLICAS", 2, 1, 5))
    # QoS at the router (README "Traffic"): each replica takes at most SERVING_MAXCONN requests at once, the
    # rest wait in the router's queue by priority class (X-Priority: high, normal, low); low-priority requests
    # are refused (429, Retry-After) while QOS_LOW_QUEUE or more wait for that pool or only QOS_LOW_RESERVE
    # slots are free, normal ones while QOS_NORMAL_QUEUE or more wait; high ones are never shed, only queued
    # (first) up to `timeout queue`.
    serving_maxconn: int = field(default_factory=lambda: _count("SERVING_MAXCONN", 16, 1, 10000))
    qos_low_queue: int = field(default_factory=lambda: _count("QOS_LOW_QUEUE", 1, 1, 100000))
    qos_normal_queue: int = field(default_factory=lambda: _count("QOS_NORMAL_QUEUE", 64, 1, 100000))
    qos_low_reserve: int = field(default_factory=lambda: _count("QOS_LOW_RESERVE", 1, 0, 100000))
    serving_container_prefix: str = field(default_factory=lambda: _profile().container_prefix)
    # Alerts by mail (Airflow's SmtpNotifier through the `smtp_default` Connection, which stack.py writes for an
    # SMTP server on 127.0.0.1:SMTP_PORT: none runs by default; the tests start one). Empty ALERT_EMAIL_TO: no mail.
    smtp_port: int = field(default_factory=lambda: _stack_port("SMTP_PORT", 2525))
    alert_email_to: str = field(
        default_factory=lambda: os.environ.get("ALERT_EMAIL_TO", "ml-platform@localhost").strip()
    )
    alert_email_from: str = field(default_factory=lambda: _env("ALERT_EMAIL_FROM", "tfdeploy@localhost"))
    # Model code (validation, .keras export, warmup) runs in containers of this image (hooks/sandbox.py), built by
    # include/scripts/build_images.sh. GOLDEN_ROOTS: more directories golden examples files may be read from
    # (os.pathsep- or comma-separated), besides the example models' (`golden_roots`).
    sandbox_image: str = field(default_factory=lambda: _env("SANDBOX_IMAGE", "local/tfdeploy-sandbox:latest"))
    golden_roots_setting: str = field(default_factory=lambda: os.environ.get("GOLDEN_ROOTS", "").strip())

    def __post_init__(self) -> None:
        if not self.serving_images:
            object.__setattr__(self, "serving_images", (self.serving_image,))
        elif self.serving_image not in self.serving_images:
            raise ValueError(
                f"SERVING_IMAGE={self.serving_image!r} is not in SERVING_IMAGES={','.join(self.serving_images)!r}: "
                "add it there (it is the default choice of the DAGs' serving_image Param)"
            )

    @property
    def secrets_dir(self) -> Path:
        """Generated secrets (0700, each file 0600): stack.py writes them, the owner and root read them."""
        return self.state_dir / "secrets"

    @property
    def airflow_password_file(self) -> Path:
        """Where `stack.py up` stores the generated Airflow admin password (unless AIRFLOW_PASSWORD is set)."""
        return self.secrets_dir / AIRFLOW_PASSWORD_SECRET

    @property
    def airflow_password(self) -> str:
        """The admin's password: AIRFLOW_PASSWORD if set, else the one generated at first set-up ("" before it)."""
        return _env("AIRFLOW_PASSWORD", "") or _read_secret(self.airflow_password_file)

    @property
    def postgres_password(self) -> str:
        """The registry role's PostgreSQL password: POSTGRES_PASSWORD if set, else the one generated at first
        set-up ("" before it). The server asks every role for its password (scram-sha-256)."""
        return _env("POSTGRES_PASSWORD", "") or _read_secret(self.secrets_dir / POSTGRES_PASSWORD_SECRET)

    @property
    def airflow_db_password(self) -> str:
        """The password of Airflow's database role: AIRFLOW_DB_PASSWORD if set, else the one generated at first
        set-up ("" before it)."""
        return _env("AIRFLOW_DB_PASSWORD", "") or _read_secret(self.secrets_dir / AIRFLOW_DB_PASSWORD_SECRET)

    @property
    def redis_password(self) -> str:
        """The broker's password (requirepass): REDIS_PASSWORD if set, else the one generated at first set-up."""
        return _env("REDIS_PASSWORD", "") or _read_secret(self.secrets_dir / REDIS_PASSWORD_SECRET)

    @property
    def ports(self) -> dict[str, int]:
        """Every port this stack listens on (all on 127.0.0.1), by the variable that sets it."""
        return {
            "AIRFLOW_PORT": self.airflow_port,
            "HDFS_NAMENODE_RPC_PORT": self.namenode_rpc_port,
            "HDFS_WEBHDFS_PORT": self.webhdfs_port,
            "HDFS_DATANODE_PORT": self.datanode_port,
            "HDFS_DATANODE_HTTP_PORT": self.datanode_http_port,
            "HDFS_DATANODE_IPC_PORT": self.datanode_ipc_port,
            "HDFS_DATANODE2_PORT": self.datanode2_port,
            "HDFS_DATANODE2_HTTP_PORT": self.datanode2_http_port,
            "HDFS_DATANODE2_IPC_PORT": self.datanode2_ipc_port,
            "POSTGRES_PORT": self.postgres_port,
            "REDIS_PORT": self.redis_port,
            "SERVING_GRPC_PORT": self.serving_grpc_port,
            "SERVING_REST_PORT": self.serving_rest_port,
            "SERVING_REPLICA_GRPC_PORT": self.replica_grpc_port,
            "SERVING_REPLICA_REST_PORT": self.replica_rest_port,
            "SERVING_CANARY_GRPC_PORT": self.canary_grpc_port,
            "SERVING_CANARY_REPLICA_GRPC_PORT": self.canary_replica_grpc_port,
            "SERVING_CANARY_REPLICA_REST_PORT": self.canary_replica_rest_port,
            "ROUTER_STATS_PORT": self.router_stats_port,
            "PROMETHEUS_PORT": self.prometheus_port,
            "ALERTMANAGER_PORT": self.alertmanager_port,
        }

    @property
    def airflow_home(self) -> Path:
        return Path(_env("AIRFLOW_HOME", str(self.state_dir / "airflow")))

    @property
    def airflow_url(self) -> str:
        return f"http://{self.airflow_host}:{self.airflow_port}"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    @property
    def alertmanager_url(self) -> str:
        return f"http://127.0.0.1:{self.alertmanager_port}"

    @property
    def hdfs_home(self) -> Path:
        return self.state_dir / "hdfs"

    @property
    def hadoop_lib(self) -> Path:
        return self.cache_dir / f"hadoop-{self.hadoop_version}" / "lib"

    @property
    def webhdfs_url(self) -> str:
        return f"http://127.0.0.1:{self.webhdfs_port}"

    @property
    def postgres_home(self) -> Path:
        return self.state_dir / "postgres"

    @property
    def postgres_data_dir(self) -> Path:
        return self.postgres_home / "data"

    @property
    def postgres_socket_dir(self) -> Path:
        return self.postgres_home / "run"

    def _postgres_url(self, db: str, user: str = "", password: str | None = None) -> str:
        """SQLAlchemy URL of ``db`` on the stack's server as ``user`` (default: the registry role, its password)."""
        user = user or self.postgres_user
        password = self.postgres_password if password is None else password
        auth = quote(user, safe="") + (f":{quote(password, safe='')}" if password else "")
        return f"postgresql+psycopg2://{auth}@127.0.0.1:{self.postgres_port}/{db}"

    @property
    def postgres_url(self) -> str:
        """The registry's database as the registry role, with its password (url-quoted)."""
        return self._postgres_url(REGISTRY_DB)

    @property
    def postgres_test_url(self) -> str:
        """The tests' registry database as the registry role, with its password (url-quoted)."""
        return self._postgres_url(REGISTRY_TEST_DB)

    @property
    def airflow_db_url(self) -> str:
        """Airflow's metadata database (``[database] sql_alchemy_conn``) as its own role, with its password."""
        return self._postgres_url(AIRFLOW_DB, self.airflow_db_user, self.airflow_db_password)

    @property
    def celery_result_backend(self) -> str:
        """Where Celery keeps task results (``[celery] result_backend``): Airflow's metadata database."""
        return f"db+{self.airflow_db_url}"

    @property
    def redis_url(self) -> str:
        """The Celery broker (``[celery] broker_url``): the stack's Redis, database 0, with its password."""
        password = self.redis_password
        auth = f":{quote(password, safe='')}@" if password else ""
        return f"redis://{auth}127.0.0.1:{self.redis_port}/0"

    @property
    def registry_db_url(self) -> str:
        """SQLAlchemy URL of the model registry's database: the stack's PostgreSQL (`postgres_url`) unless
        REGISTRY_DB_URL says otherwise (e.g. ``sqlite:///path/registry.db`` for a registry on its own). A state
        directory from before, whose registry is the SQLite file ``registry.db``, keeps it (nothing is lost)."""
        legacy = self.state_dir / "registry.db"
        return _env("REGISTRY_DB_URL", f"sqlite:///{legacy}" if legacy.exists() else self.postgres_url)

    @property
    def example_dir(self) -> Path:
        """The example model's builds (`make demo`, include/example_model/build.py): ``<variant>/saved_model`` and
        ``<variant>/golden.json``; model_deploy's Params default to the ``good`` one."""
        return self.state_dir / "example"

    @property
    def golden_roots(self) -> tuple[Path, ...]:
        """The directories golden examples files may be read from (core/golden.py checks each path once, links
        and ``..`` resolved): the example models' directory, on the test stack also pytest's temporary root of
        this user (where the tests build their examples), and every directory in GOLDEN_ROOTS."""
        roots = [self.example_dir]
        if self.stack == "test":
            roots.append(Path(tempfile.gettempdir()) / f"pytest-of-{getpass.getuser()}")
        parts = self.golden_roots_setting.replace(os.pathsep, ",").split(",")
        roots += [Path(p.strip()).expanduser() for p in parts if p.strip()]
        return tuple(dict.fromkeys(roots))

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def docker2_netns(self) -> str:
        """The second Docker host's network namespace (also the prefix of its veth pair's names)."""
        return f"tfdeploy-{self.stack}"

    @property
    def docker2_address(self) -> str:
        """The namespace's end of the veth pair: the only address its dockerd and published ports listen on."""
        import ipaddress

        return str(ipaddress.ip_network(self.docker2_subnet).network_address + 2)

    @property
    def docker2_gateway(self) -> str:
        """This machine's end of the veth pair (the router and the workers reach the namespace from it)."""
        import ipaddress

        return str(ipaddress.ip_network(self.docker2_subnet).network_address + 1)

    @property
    def docker2_host(self) -> str:
        """The second Docker engine's URL (TLS: the client certificate is in ``docker2_tls_dir``)."""
        return f"tcp://{self.docker2_address}:{self.docker2_port}"

    @property
    def docker2_tls_dir(self) -> Path:
        """The second engine's CA, server and client certificates and keys (keys 0600, in the 0700 secrets dir)."""
        return self.secrets_dir / "docker2"


def get_settings() -> Settings:
    return Settings()


@contextlib.contextmanager
def _as_stack(name: str) -> Iterator[None]:
    if name not in STACK_PROFILES:
        raise ValueError(f"unknown stack profile {name!r}; one of: {', '.join(STACK_PROFILES)}")
    token = _stack_override.set(name)
    try:
        yield
    finally:
        _stack_override.reset(token)


def settings_for(stack: str) -> Settings:
    """The Settings the given profile resolves to in this environment (TFDEPLOY_STACK aside)."""
    with _as_stack(stack):
        return Settings()


def shared_between(a: Settings, b: Settings) -> list[str]:
    """What two stacks would share although each needs its own: state directory, Airflow home, registry
    database, ports. Empty when they can run side by side (the Docker engine is meant to be shared)."""
    shared = [
        label
        for label, x, y in (
            ("TFDEPLOY_STATE_DIR", a.state_dir, b.state_dir),
            ("AIRFLOW_HOME", a.airflow_home, b.airflow_home),
            ("REGISTRY_DB_URL", a.registry_db_url, b.registry_db_url),
            ("serving container prefix", a.serving_container_prefix, b.serving_container_prefix),
            ("DOCKER2_SUBNET", a.docker2_subnet, b.docker2_subnet),
        )
        if x == y
    ]
    b_ports = set(b.ports.values())
    shared += [f"{var}={port}" for var, port in a.ports.items() if port in b_ports]
    return shared
