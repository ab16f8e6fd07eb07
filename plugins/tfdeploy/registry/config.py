"""Registry configuration from the environment (shared with the rest of the project's settings)."""

from __future__ import annotations

import os
from dataclasses import dataclass


def _flag(name: str, default: str) -> bool:
    return os.environ.get(name, default).strip().lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class RegistryConfig:
    db_url: str
    api_token: str = ""  # machines (the pipeline's hook) send this as a bearer token
    public_reads: bool = False  # reads need a token by default
    airflow_url: str = ""  # for links to DAG runs and task logs on the web page
    # /metrics readable without a token (Prometheus scrapes it): it exposes model names, versions, states and
    # counts only, never a secret. False: it needs a token like any other read.
    public_metrics: bool = True

    @classmethod
    def from_env(cls) -> RegistryConfig:
        from tfdeploy.settings import get_settings

        s = get_settings()
        return cls(
            db_url=s.registry_db_url,
            api_token=os.environ.get("REGISTRY_API_TOKEN", ""),
            public_reads=_flag("REGISTRY_PUBLIC_READS", "false"),
            airflow_url=os.environ.get("AIRFLOW__API__BASE_URL", s.airflow_url),
            public_metrics=_flag("REGISTRY_PUBLIC_METRICS", "true"),
        )
