"""The code's shape, checked mechanically: the import contracts in pyproject.toml ([tool.importlinter]) and
each fact written once."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_hold():
    """Layers (operators -> services -> hooks -> core), a pure core, and no import cycles."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'plugins'}{os.pathsep}{ROOT / 'include'}"}
    done = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout or "broken" not in done.stdout.split("Contracts:")[-1]


def _python_sources() -> list[Path]:
    return [p for d in ("plugins", "dags", "include/scripts") for p in (ROOT / d).rglob("*.py")]


def test_the_model_name_rule_is_written_once():
    pattern = re.compile(r"A-Za-z0-9_\.-\]")
    holders = [p.relative_to(ROOT) for p in _python_sources() if pattern.search(p.read_text())]
    assert holders == [Path("plugins/tfdeploy/core/names.py")], holders


def test_the_manifest_format_is_written_once():
    holders = [p.relative_to(ROOT) for p in _python_sources() if "tfdeploy-manifest/" in p.read_text()]
    assert holders == [Path("plugins/tfdeploy/core/manifest.py")], holders
