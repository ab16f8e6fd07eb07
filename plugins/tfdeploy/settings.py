"""Every setting of the local stack, read from the environment in one place.

Scripts (``include/scripts/stack.py``), tests and DAG code all read these, so a value changes in one
place. Defaults are for a single developer machine; every one can be overridden by its variable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# Databases of the model registry on the stack's PostgreSQL (stack.py creates both, owned by postgres_user).
REGISTRY_DB = "tfdeploy_registry"
REGISTRY_TEST_DB = "tfdeploy_registry_test"


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


@dataclass(frozen=True)
class Settings:
    """Resolved configuration of the local stack."""

    state_dir: Path = field(default_factory=lambda: Path(_env("TFDEPLOY_STATE_DIR", str(PROJECT_ROOT / ".state"))))
    cache_dir: Path = field(
        default_factory=lambda: Path(_env("TFDEPLOY_CACHE_DIR", str(Path.home() / ".cache" / "tfdeploy")))
    )
    # Airflow
    airflow_host: str = field(default_factory=lambda: _env("AIRFLOW_HOST", "127.0.0.1"))
    airflow_port: int = field(default_factory=lambda: _port("AIRFLOW_PORT", 8080))
    airflow_user: str = field(default_factory=lambda: _env("AIRFLOW_USER", "admin"))
    airflow_password: str = field(default_factory=lambda: _env("AIRFLOW_PASSWORD", "admin"))
    # HDFS
    hadoop_version: str = field(default_factory=lambda: _env("HADOOP_VERSION", "3.4.2"))
    namenode_rpc_port: int = field(default_factory=lambda: _port("HDFS_NAMENODE_RPC_PORT", 8020))
    webhdfs_port: int = field(default_factory=lambda: _port("HDFS_WEBHDFS_PORT", 9870))
    hdfs_user: str = field(default_factory=lambda: _env("HDFS_USER", "airflow"))
    # Docker
    docker_host: str = field(default_factory=lambda: _env("DOCKER_HOST", "unix:///var/run/docker.sock"))
    # PostgreSQL (the model registry's server; 5433 so a machine's own PostgreSQL on 5432 does not clash)
    postgres_port: int = field(default_factory=lambda: _port("POSTGRES_PORT", 5433))
    postgres_user: str = field(default_factory=lambda: _env("POSTGRES_USER", "tfdeploy"))
    postgres_os_user: str = field(default_factory=lambda: _env("POSTGRES_OS_USER", "tfdeploy-pg"))

    @property
    def airflow_home(self) -> Path:
        return Path(_env("AIRFLOW_HOME", str(self.state_dir / "airflow")))

    @property
    def airflow_url(self) -> str:
        return f"http://{self.airflow_host}:{self.airflow_port}"

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

    @property
    def postgres_url(self) -> str:
        return f"postgresql+psycopg2://{self.postgres_user}@127.0.0.1:{self.postgres_port}/{REGISTRY_DB}"

    @property
    def postgres_test_url(self) -> str:
        return f"postgresql+psycopg2://{self.postgres_user}@127.0.0.1:{self.postgres_port}/{REGISTRY_TEST_DB}"

    @property
    def registry_db_url(self) -> str:
        """SQLAlchemy URL of the model registry's database (SQLite by default; `postgres_url` for PostgreSQL)."""
        return _env("REGISTRY_DB_URL", f"sqlite:///{self.state_dir / 'registry.db'}")

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"


def get_settings() -> Settings:
    return Settings()
