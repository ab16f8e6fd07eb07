"""Live metrics of a model's gray release on a serving target, per side (``stable``, ``canary``): the router's
counters of the model's unversioned inference calls and the pool replicas' latency histograms. Read by the
gray-release step when it sets a weight (the window's start) and by its trigger while the step bakes."""

from __future__ import annotations

import logging
from functools import cached_property

from tfdeploy.core.errors import ServingError
from tfdeploy.core.release import Side, latency_buckets
from tfdeploy.hooks.router import RouterHook
from tfdeploy.hooks.tfserving import TFServingHook
from tfdeploy.services.targets import get_target

log = logging.getLogger(__name__)
SIDES = ("stable", "canary")


class ReleaseMetrics:
    """One serving target's live metrics for gray releases.

    :param target: the serving target's name (``services.targets``).
    """

    def __init__(self, target: str, *, timeout: float = 5.0) -> None:
        self.target = target
        self.timeout = timeout

    @cached_property
    def router(self) -> RouterHook:
        return RouterHook(get_target(self.target).router_conn_id, timeout=self.timeout)

    @cached_property
    def replicas(self) -> dict[str, list[TFServingHook]]:
        return {
            side: TFServingHook(get_target(self.target, pool=side).tfserving_conn_id, timeout=self.timeout).replicas()
            for side in SIDES
        }

    def sample(self, model: str) -> dict[str, Side]:
        """Cumulative metrics of ``model`` by side now; windows are differences of two samples.

        The router's counters must answer (:class:`RouterError` otherwise); a replica whose metrics page does not
        answer (restarting, say) is left out of that look's latency, with a warning."""
        counters = self.router.traffic(model)
        out = {}
        for side in SIDES:
            pages = []
            for replica in self.replicas[side]:
                try:
                    pages.append(replica.metrics_page())
                except ServingError as exc:
                    log.warning(
                        "latency of %s's %s replica at %s left out of this look: %s", model, side, replica.rest_url, exc
                    )
            c = counters[side]
            out[side] = Side(c.requests, c.client_errors, c.server_errors, latency_buckets(pages, model))
        return out

    def candidate_up(self) -> bool:
        """Whether the canary pool's REST backend has a replica up at the router."""
        rest_backend, _grpc = get_target(self.target, pool="canary").router_backends
        return self.router.pool_up(rest_backend)
