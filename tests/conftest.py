"""Shared fixtures. Airflow's environment is set before anything imports Airflow, from the same
function the stack uses (``stack.airflow_env``), so tests see exactly the configuration the services do."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT / "include" / "scripts")]

import stack  # noqa: E402
from tfdeploy.settings import Settings, get_settings  # noqa: E402

for _key, _value in stack.airflow_env(get_settings()).items():
    os.environ.setdefault(_key, _value)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return get_settings()


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    path = ROOT / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path
