"""Serving targets: where a model is served, named in the DAGs' ``serving_target`` Param.

A target is a Docker engine (the ``serving_host_<name>`` Connection), a router in front of it (the
``router_<name>`` Connection) and two pools of TF Serving servers: ``stable``, which serves production versions
only and takes every unversioned call, and ``canary``, where candidates load. Each pool is a container
(``tfserving_<name>`` / ``tfserving_<name>_canary`` Connections: host, REST and gRPC ports) with its own model
directory. The image is configuration: ``tensorflow/serving`` in production; on machines that cannot pull it,
the project's TF-Serving-compatible image (``SERVING_IMAGE``, the default here). A run may choose another image
only from the allowlist ``SERVING_IMAGES`` (the DAGs' Param is a choice of it; :func:`get_target` checks it again,
whatever called it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tfdeploy.core.errors import ServingImageNotAllowed
from tfdeploy.settings import get_settings

if TYPE_CHECKING:
    from airflow.sdk import Param

TARGETS = ("local",)
POOLS = ("stable", "canary")


@dataclass(frozen=True)
class ServingTarget:
    """One pool of a target: its container, model directory and Connections (``name`` is the target's)."""

    name: str
    image: str
    container_name: str
    model_root: Path
    tfserving_conn_id: str
    serving_host_conn_id: str
    router_conn_id: str
    pool: str = "stable"

    def container(self, replica: int) -> str:
        """The container of replica ``replica`` (the first keeps the pool's name)."""
        return self.container_name if replica == 0 else f"{self.container_name}-{replica}"

    @property
    def router_backends(self) -> tuple[str, str]:
        """The router's (REST, gRPC) backends of this pool (include/scripts/stack.py router_config)."""
        return (
            (f"{self.name}_rest", f"{self.name}_grpc")
            if self.pool == "stable"
            else (
                f"{self.name}_{self.pool}_rest",
                f"{self.name}_{self.pool}_grpc",
            )
        )

    @property
    def router_rest_url(self) -> str:
        """Where clients call the target's models over REST: the router."""
        return f"http://127.0.0.1:{get_settings().serving_rest_port}"

    @property
    def router_grpc_target(self) -> str:
        """Where clients call the target's models over gRPC: the router."""
        return f"127.0.0.1:{get_settings().serving_grpc_port}"

    def router_server(self, replica: int) -> str:
        """The router's name for replica ``replica`` in both backends."""
        return f"{'replica' if self.pool == 'stable' else self.pool}{replica + 1}"


def serving_image_param() -> Param:
    """The DAGs' ``serving_image`` Param: a choice of ``SERVING_IMAGES``, ``SERVING_IMAGE`` by default."""
    from airflow.sdk import Param

    s = get_settings()
    return Param(
        s.serving_image,
        enum=list(s.serving_images),
        description="the serving containers' image, one of SERVING_IMAGES; a change replaces the replicas one at a "
        "time, each drained at the router first",
    )


def get_target(name: str, image: str | None = None, *, pool: str = "stable") -> ServingTarget:
    """The ``pool`` of the configured target ``name``, serving ``image`` (empty: ``SERVING_IMAGE``).

    Raises :class:`ServingImageNotAllowed` for an image outside ``SERVING_IMAGES``, before anything starts.
    """
    if name not in TARGETS:
        raise ValueError(f"unknown serving target {name!r}; configured targets: {', '.join(TARGETS)}")
    if pool not in POOLS:
        raise ValueError(f"unknown pool {pool!r}; pools: {', '.join(POOLS)}")
    s = get_settings()
    chosen = image or s.serving_image
    if chosen not in s.serving_images:
        raise ServingImageNotAllowed(
            f"serving image {chosen!r} is not allowed; allowed images (SERVING_IMAGES): "
            f"{', '.join(s.serving_images)}. Choose one of them, or add the image to SERVING_IMAGES in the "
            "configuration of every Airflow component and restart them"
        )
    suffix = "" if pool == "stable" else f"-{pool}"
    return ServingTarget(
        name=name,
        image=chosen,
        container_name=f"{s.serving_container_prefix}-{name}{suffix}",
        model_root=s.state_dir / "serving" / f"{name}{suffix}",
        tfserving_conn_id=f"tfserving_{name}{suffix.replace('-', '_')}",
        serving_host_conn_id=f"serving_host_{name}",
        router_conn_id=f"router_{name}",
        pool=pool,
    )
