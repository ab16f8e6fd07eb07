"""Serving targets: where a model is served, named in the DAGs' ``serving_target`` Param.

A target is one or more Docker engines (``SERVING_HOSTS`` of them: the ``serving_host_<name>``,
``serving_host_<name>_2`` ... Connections), a router in front of them (the ``router_<name>`` Connection) and two
pools of TF Serving servers: ``stable``, which serves production versions only and takes every unversioned call,
and ``canary``, where candidates load. Each pool is a set of replica containers (``tfserving_<name>`` /
``tfserving_<name>_canary`` Connections: host, REST and gRPC ports, replica count and addresses), replica ``i`` on
host ``i % hosts`` (``core.placement``), and its own models: a named volume on every host that runs one of its
replicas (``tfdeploy-models-<stack>-<name>[-canary]``), which staging fills through helper containers (no disk is
shared with the workers). The image is configuration: ``tensorflow/serving`` in production; on machines that cannot
pull it, the project's TF-Serving-compatible image (``SERVING_IMAGE``, the default here). A run may choose another
image only from the allowlist ``SERVING_IMAGES`` (the DAGs' Param is a choice of it; :func:`get_target` checks it
again, whatever called it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tfdeploy.core.errors import ServingImageNotAllowed
from tfdeploy.core.placement import replica_host
from tfdeploy.hooks.serving_host import ServingHostHook
from tfdeploy.settings import get_settings

if TYPE_CHECKING:
    from airflow.sdk import Param

TARGETS = ("local",)
POOLS = ("stable", "canary")


@dataclass(frozen=True)
class ServingTarget:
    """One pool of a target: its containers, models and Connections (``name`` is the target's).

    ``serving_host_conn_id`` is the first (primary) host, whose ``models.config`` is the one read back;
    ``serving_host_conn_ids`` lists every host of the target (default: the primary alone). ``volume``: the named
    volume holding the pool's models on each host (``None``: bind-mount ``model_root``, one host sharing the
    worker's disk). ``model_root`` is on the worker: the config lock and fetch scratch space (and, without a
    volume, the models).
    """

    name: str
    image: str
    container_name: str
    model_root: Path
    tfserving_conn_id: str
    serving_host_conn_id: str
    router_conn_id: str
    pool: str = "stable"
    serving_host_conn_ids: tuple[str, ...] = ()
    volume: str | None = None

    @property
    def hosts(self) -> tuple[str, ...]:
        """The Connections of the target's Docker hosts, the primary first."""
        return self.serving_host_conn_ids or (self.serving_host_conn_id,)

    def host_conn_id(self, replica: int) -> str:
        """The Connection of the Docker host that runs replica ``replica``."""
        return replica_host(replica, self.hosts)

    def serving_host(self, conn_id: str | None = None, **kwargs: Any) -> ServingHostHook:
        """The hook of one of the target's hosts (default: the primary) for this pool: its volume, its helper image
        (the pool's serving image), ``model_root``; ``kwargs`` go to :class:`ServingHostHook` (``docker_timeout``)."""
        return ServingHostHook(
            conn_id or self.serving_host_conn_id,
            model_root=self.model_root,
            volume=self.volume,
            helper_image=self.image,
            **kwargs,
        )

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
    hosts = tuple(serving_host_conn_id(name, index) for index in range(s.serving_hosts))
    return ServingTarget(
        name=name,
        image=chosen,
        container_name=f"{s.serving_container_prefix}-{name}{suffix}",
        model_root=s.state_dir / "serving" / f"{name}{suffix}",
        tfserving_conn_id=f"tfserving_{name}{suffix.replace('-', '_')}",
        serving_host_conn_id=hosts[0],
        router_conn_id=f"router_{name}",
        pool=pool,
        serving_host_conn_ids=hosts,
        volume=f"tfdeploy-models-{s.stack}-{name}{suffix}",
    )


def serving_host_conn_id(target: str, index: int) -> str:
    """The Connection of a target's Docker host ``index`` (0-based): ``serving_host_<target>``, then
    ``serving_host_<target>_2``, ``_3`` ... (include/scripts/stack.py writes the `local` target's)."""
    return f"serving_host_{target}" + (f"_{index + 1}" if index else "")
