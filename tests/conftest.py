"""Shared fixtures. Airflow's environment is set before anything imports Airflow, from the same
function the stack uses (``stack.airflow_env``), so tests see exactly the configuration the services do.

The suite runs against its own stack (``TFDEPLOY_STACK=test``: state in ``.state-test/``, every port
+ 10000; ``make test`` starts it), never the developer's: it creates models, serving containers and
registry records, and removes containers, which must not happen to the stack a person is using. So
``pytest`` run by hand uses the test stack too, and a run whose environment would point it at the dev
stack's state or ports (say after ``eval "$(stack.py env)"``) is refused.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Before tfdeploy.settings (or stack, which imports it) is read: the profile changes every default.
if os.environ.get("TFDEPLOY_STACK") != "test":
    os.environ["TFDEPLOY_STACK"] = "test"

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT / "include" / "scripts")]

import stack  # noqa: E402
from tfdeploy.settings import Settings, get_settings, settings_for, shared_between  # noqa: E402

# Nothing below may reach the dev stack; pytest_configure refuses the run before any test is collected.
_shared = shared_between(get_settings(), settings_for("dev"))

if not _shared:
    # As for the services (stack.py starts them with this environment over the caller's): a stale
    # AIRFLOW_CONN_* or AIRFLOW__* of the shell must not point the tests elsewhere.
    os.environ.update(stack.airflow_env(get_settings()))


def pytest_configure(config: pytest.Config) -> None:
    if _shared:
        raise pytest.UsageError(
            f"refusing to run the tests against the dev stack: the test stack would share {', '.join(_shared)} "
            'with it. Unset those variables (e.g. after `eval "$(stack.py env)"`) and use `make test`.'
        )


@pytest.fixture(scope="session")
def settings() -> Settings:
    return get_settings()


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    path = ROOT / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path
