"""Fixtures the unit tests share."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

import stack
from tfdeploy.settings import Settings


@pytest.fixture
def haproxy_check(tmp_path: Path) -> Callable[[Settings, str], None]:
    """``check(settings, config_text)``: the router's configuration passes the real ``haproxy -c`` (its map files
    created empty under the settings' state directory); skips where HAProxy is not installed."""

    def check(s: Settings, text: str) -> None:
        haproxy = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
        if haproxy is None:
            pytest.skip("haproxy is not installed (`make setup` installs it)")
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(text)
        stack.router_map(s).parent.mkdir(parents=True, exist_ok=True)
        for name in stack.ROUTER_MAPS:
            stack.router_map(s, name).touch()
        done = subprocess.run([haproxy, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr

    return check
