"""The run's deployment lease, kept alive while one of its steps runs.

A thread renews the lease (as the run that took it: no token) every third of its length while the step runs; the
task process dying (SIGKILL, a lost worker) stops the renewals, so the lease expires ``lease_seconds`` later and
another run can take it over. A renewal the registry refuses (the lease expired and was taken, or released) is
remembered and fails the step when it ends: the run must not go on changing serving without its lease."""

from __future__ import annotations

import logging
import threading
from typing import Any

from tfdeploy.core.errors import Conflict, LeaseLost, LockHeld, RegistryError
from tfdeploy.hooks.registry import RegistryHook

log = logging.getLogger(__name__)


class LeaseHeartbeat:
    """Renews ``model``'s lease for ``lease_seconds`` now, then every ``lease_seconds / 3`` until ``stop``."""

    def __init__(self, registry: RegistryHook, model: str, lineage: dict[str, str], lease_seconds: float) -> None:
        self.registry, self.model, self.lineage, self.lease_seconds = registry, model, lineage, lease_seconds
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{model}", daemon=True)

    def start(self) -> LeaseHeartbeat:
        """Renew before the step starts; a lease this run no longer has (released at the end of the run, then its
        tasks cleared for a rerun from the UI; or expired while nobody took it) is taken again if it is free.
        Held by another run: LeaseLost, before the step changes anything."""
        self.renew()
        if self.lost:
            try:
                self.registry.acquire_lock(
                    self.model,
                    holder=f"{self.lineage['dagId']}/{self.lineage['runId']}",
                    run_id=self.lineage["runId"],
                    ttl_seconds=self.lease_seconds,
                    context=self.lineage,
                )
            except LockHeld:
                raise LeaseLost(self.lost) from None
            log.warning("the deployment lease of %s was no longer this run's and was free: taken again", self.model)
            self.lost = None
        self._thread.start()
        return self

    def renew(self, ttl_seconds: float | None = None) -> None:
        try:
            self.registry.renew_lock(self.model, ttl_seconds=ttl_seconds or self.lease_seconds, context=self.lineage)
        except Conflict as exc:
            self.lost = (
                f"the deployment lease of {self.model} is no longer this run's ({exc}); this run must stop "
                "changing serving: see who holds it on the registry page"
            )
            log.error(self.lost)
        except RegistryError as exc:  # unreachable for now: the next beat tries again before the lease lapses
            log.warning("lease of %s not renewed this time: %s", self.model, exc)

    def _run(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            self.renew()
            if self.lost:
                return

    def stop(self) -> None:
        """Stop renewing; raises LeaseLost if a renewal found the lease gone while the step ran."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if self.lost:
            raise LeaseLost(self.lost)


def run_lease(context: Any, lock_task_id: str) -> dict[str, Any] | None:
    """What the lock sensor said of this run's lease (``expires_at``, ``lease_seconds``), or None if the run has
    no lock task or never took the lease."""
    task = context.get("task")
    dag = getattr(task, "dag", None)
    if dag is not None and lock_task_id not in dag.task_ids:
        return None
    lease = context["ti"].xcom_pull(task_ids=lock_task_id)
    return lease if isinstance(lease, dict) and lease.get("lease_seconds") else None
