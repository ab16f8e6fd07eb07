"""Serving targets: where a model is served, named in the DAGs' ``serving_target`` Param.

A target is a Docker engine (the ``serving_host_<name>`` Connection), a TF Serving server on it (the
``tfserving_<name>`` Connection: host, REST and gRPC ports), the image the server runs, its container and
its model directory. The image is configuration: ``tensorflow/serving`` in production; on machines that
cannot pull it, the project's TF-Serving-compatible image (``SERVING_IMAGE``, the default here).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tfdeploy.settings import get_settings

TARGETS = ("local",)


@dataclass(frozen=True)
class ServingTarget:
    name: str
    image: str
    container_name: str
    model_root: Path
    tfserving_conn_id: str
    serving_host_conn_id: str


def get_target(name: str, image: str | None = None) -> ServingTarget:
    """The configured target ``name``, serving ``image`` (empty: the configured ``SERVING_IMAGE``)."""
    if name not in TARGETS:
        raise ValueError(f"unknown serving target {name!r}; configured targets: {', '.join(TARGETS)}")
    s = get_settings()
    return ServingTarget(
        name=name,
        image=image or s.serving_image,
        container_name=f"{s.serving_container_prefix}-{name}",
        model_root=s.state_dir / "serving" / name,
        tfserving_conn_id=f"tfserving_{name}",
        serving_host_conn_id=f"serving_host_{name}",
    )
