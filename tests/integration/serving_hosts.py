"""The `local` target's Docker hosts as the tests reach them: replica ``i`` of a pool runs on host ``i % hosts``
(``core.placement``), on the first engine or, with SERVING_HOSTS=2 (the stack's default where the second host runs),
on the second engine in the stack's network namespace, publishing its ports on that host's address."""

from __future__ import annotations

from typing import Any

import stack
from tfdeploy.core.placement import replica_host
from tfdeploy.settings import Settings


def engine(s: Settings, host: int, timeout: int = 30) -> Any:  # a docker.DockerClient
    """A client of the target's Docker host ``host`` (0: the first engine, 1: the second, over TLS)."""
    import docker

    if host == 0:
        return docker.DockerClient(base_url=s.docker_host, timeout=timeout)
    return stack.docker2_client(s, timeout=timeout)


def replica_engine(s: Settings, replica: int) -> Any:
    """A client of the Docker host that runs replica ``replica`` of a pool."""
    return engine(s, replica_host(replica, range(s.serving_hosts)))


def replica_address(s: Settings, replica: int) -> str:
    """The address replica ``replica`` publishes its ports on (its host's)."""
    return replica_host(replica, stack.serving_host_addresses(s))
