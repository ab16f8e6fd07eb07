"""The desired serving config of one target, changed safely: read-modify-write under a file lock, applied
with a gRPC reload when the right server runs, or by (re)creating the container when none does.

TF Serving has no API to read its config back and a reload is a full replacement, so the pipeline owns
the config: `<model_root>/models.config`, which every deployment to the target edits for its own model
only, under `<model_root>/.config.lock` so runs for different models on one target cannot interleave.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from tfdeploy.hooks.serving_host import ServingHostHook
from tfdeploy.hooks.tfserving import TFServingHook
from tfdeploy.serving.models_config import ServedModel, build_model_config, parse_text, served_models, to_text
from tfdeploy.serving.targets import ServingTarget

log = logging.getLogger(__name__)


class TargetConfig:
    def __init__(self, target: ServingTarget, *, poll_seconds: int = 1) -> None:
        self.target = target
        self.poll_seconds = poll_seconds
        target.model_root.mkdir(parents=True, exist_ok=True)
        self.host = ServingHostHook(base_url=target.docker_base_url, model_root=str(target.model_root))
        self.serving = TFServingHook(grpc_target=target.grpc_target, rest_url=target.rest_url)

    @property
    def config_path(self) -> Path:
        return self.target.model_root / "models.config"

    @contextmanager
    def locked(self) -> Iterator[TargetConfig]:
        lock_path = self.target.model_root / ".config.lock"
        with open(lock_path, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield self
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def current(self) -> list[ServedModel]:
        if not self.config_path.exists():
            return []
        return served_models(parse_text(self.config_path.read_text()))

    def entry(self, model: str) -> ServedModel | None:
        return next((m for m in self.current() if m.name == model), None)

    def apply(self, models: Sequence[ServedModel]) -> bool:
        """Make the target serve exactly `models`. Returns True if a server container was (re)created.

        The server reads models.config once at start (poll wait 0) and a running one is changed by a gRPC
        reload. A server starting from a config with labels would refuse to start (labels must point at
        versions already available), so the file it starts from has no labels; the full config follows
        in a reload, which for a running server is also the change itself."""
        self.host.check_shared_disk()
        full = build_model_config(models)
        if not models:  # nothing left to serve: unload everything, but do not start a server for nothing
            self.host.write_config(to_text(full))
            if self.serving.is_ready():
                self.serving.reload(full)
            return False
        self.host.write_config(to_text(build_model_config([replace(m, labels={}) for m in models])))
        info = self.host.ensure_server(
            name=self.target.container_name,
            image=self.target.image,
            grpc_port=self.target.grpc_port,
            rest_port=self.target.rest_port,
            poll_seconds=self.poll_seconds,
        )
        log.info("serving container %s %s (%s)", info.name, "created" if info.created else "reused", info.image)
        self.host.write_config(to_text(full))
        self.serving.reload(full)
        return info.created


def with_entry(models: Sequence[ServedModel], entry: ServedModel | None, name: str) -> list[ServedModel]:
    """The config's models with `name`'s entry replaced by `entry` (or removed when None)."""
    out = [m for m in models if m.name != name]
    if entry is not None:
        out.append(entry)
    return sorted(out, key=lambda m: m.name)
