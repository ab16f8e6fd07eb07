"""The registry's Prometheus metrics (``GET /registry/metrics``), computed from the database at every scrape.

A private ``CollectorRegistry`` per app holding one custom collector: nothing in prometheus_client's global
registry, no process state, so every api-server worker answers the same numbers. Counters (``_total``) are
counts of the append-only history, so they only grow.

Exposed (model names, versions, states and counts only; never a secret):

- ``tfdeploy_registry_versions{model,state}``: versions per state.
- ``tfdeploy_registry_deployments{model,target,label}``: the version a label points at.
- ``tfdeploy_registry_rollbacks_total{model}``: transitions to ``rolled_back``.
- ``tfdeploy_registry_lock_acquisitions_total{model}``: deployment-lock acquisitions.
- ``tfdeploy_registry_lock_waits_total{model}``: lock requests refused because another run held the lock (each
  refusal is one wait of the requesting run's lock sensor).
- ``tfdeploy_registry_version_state_age_seconds{model,version,state}``: how long a version has been
  registered, validated or canary (a release stuck in one state).
- ``tfdeploy_registry_model_health{model,status}``: 1 for the production version's current health status,
  0 for the others (models with a version in production).
- ``tfdeploy_registry_model_frozen{model}``: 1 while the model's releases are frozen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "tfdeploy_registry"


class RegistryCollector(Collector):
    """Yields the registry's metric families from ``snapshot()`` (RegistryService.metrics_snapshot)."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]], health_statuses: tuple[str, ...]) -> None:
        self._snapshot = snapshot
        self._health = health_statuses

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        models = snap["models"]  # (name, production_version, health_status, frozen, lock_refusals)

        versions = GaugeMetricFamily(f"{PREFIX}_versions", "Versions of a model per state", labels=["model", "state"])
        for name, state, count in snap["versions"]:
            versions.add_metric([name, state], count)
        yield versions

        deployments = GaugeMetricFamily(
            f"{PREFIX}_deployments",
            "The version a label (stable, canary) points at on a serving target",
            labels=["model", "target", "label"],
        )
        for name, target, label, version in snap["deployments"]:
            deployments.add_metric([name, target, label], version)
        yield deployments

        rollbacks = CounterMetricFamily(
            f"{PREFIX}_rollbacks", "Transitions of a model's versions to rolled_back", labels=["model"]
        )
        acquisitions = CounterMetricFamily(
            f"{PREFIX}_lock_acquisitions", "Deployment-lock acquisitions of a model", labels=["model"]
        )
        waits = CounterMetricFamily(
            f"{PREFIX}_lock_waits",
            "Deployment-lock requests refused because another run held the lock (a run waiting for it)",
            labels=["model"],
        )
        health = GaugeMetricFamily(
            f"{PREFIX}_model_health",
            "1 for the current health status of the model's production version, 0 for the others",
            labels=["model", "status"],
        )
        frozen = GaugeMetricFamily(
            f"{PREFIX}_model_frozen", "1 while the model's releases are frozen", labels=["model"]
        )
        for name, production, status, is_frozen, refusals in models:
            rollbacks.add_metric([name], snap["rollbacks"].get(name, 0))
            acquisitions.add_metric([name], snap["lock_acquisitions"].get(name, 0))
            waits.add_metric([name], refusals or 0)
            frozen.add_metric([name], 1 if is_frozen else 0)
            if production is not None:
                for candidate in self._health:
                    health.add_metric([name, candidate], 1 if status == candidate else 0)
        yield from (rollbacks, acquisitions, waits, health, frozen)

        ages = GaugeMetricFamily(
            f"{PREFIX}_version_state_age_seconds",
            "Seconds since a version entered its state (registered, validated or canary)",
            labels=["model", "version", "state"],
        )
        now = snap["now"]
        for name, version, state, since in snap["state_ages"]:
            ages.add_metric([name, str(version), state], max(0.0, (now - since).total_seconds()) if since else 0.0)
        yield ages


def exposition(snapshot: Callable[[], dict[str, Any]], health_statuses: tuple[str, ...]) -> Callable[[], bytes]:
    """A function rendering the metrics in Prometheus' text format (a private registry: no global state)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RegistryCollector(snapshot, health_statuses))
    return lambda: generate_latest(registry)
