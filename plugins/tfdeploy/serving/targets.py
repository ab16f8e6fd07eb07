"""Serving targets: where a model is served (a Docker engine, an image, ports, a model directory).

The image is configuration: `tensorflow/serving` in production; on machines that cannot pull it, the
project's TF-Serving-compatible image (`local/tfserving-compat:latest`, the default here).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tfdeploy.settings import get_settings


@dataclass(frozen=True)
class ServingTarget:
    name: str
    image: str
    grpc_port: int
    rest_port: int
    model_root: Path
    docker_base_url: str

    @property
    def container_name(self) -> str:
        return f"tfserving-{self.name}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"


TARGETS = ("local",)


def get_target(name: str, image: str | None = None) -> ServingTarget:
    if name not in TARGETS:
        raise ValueError(f"unknown serving target {name!r}; configured targets: {', '.join(TARGETS)}")
    s = get_settings()
    return ServingTarget(
        name=name,
        image=image or os.environ.get("SERVING_IMAGE", "local/tfserving-compat:latest"),
        grpc_port=int(os.environ.get("SERVING_GRPC_PORT", "8500")),
        rest_port=int(os.environ.get("SERVING_REST_PORT", "8501")),
        model_root=s.state_dir / "serving" / name,
        docker_base_url=s.docker_host,
    )
