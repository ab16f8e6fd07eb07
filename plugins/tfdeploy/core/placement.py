"""Where a pool's replicas run: replica ``i`` of a pool on the pool's host ``i % len(hosts)``.

Written once: the serving target (which Docker engine runs a replica's container), the TF Serving hook (which
address a replica answers on) and the router's configuration (which address its server line points at) all place
replicas with :func:`replica_host`, so the three always agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

_T = TypeVar("_T")


def replica_host(replica: int, hosts: Sequence[_T]) -> _T:
    """The host of replica ``replica`` (0-based) among ``hosts``: round robin, so a pool of N replicas on H hosts
    has ``ceil(N/H)`` or ``floor(N/H)`` on each and its first H replicas on H different hosts."""
    if not hosts:
        raise ValueError("a pool needs at least one host")
    if replica < 0:
        raise ValueError(f"replica {replica} is not a replica index (0, 1, ...)")
    return hosts[replica % len(hosts)]


def hosts_in_use(replicas: int, hosts: Sequence[_T]) -> list[_T]:
    """The hosts that run at least one of ``replicas`` replicas, in host order."""
    return list(hosts[: max(0, min(replicas, len(hosts)))])
