"""The per-model deployment lock (the registry's lease): two runs for one model never interleave, while
runs for different models go on in parallel. The sensor waits in reschedule mode, holding no worker slot."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue

from tfdeploy.core.errors import LockHeld, NotFound
from tfdeploy.core.names import validate_model_name
from tfdeploy.hooks.registry import RegistryHook
from tfdeploy.lineage import run_context
from tfdeploy.operators.base import DeployStep


class DeploymentLockSensor(BaseSensorOperator):
    """Waits until this run holds the model's deployment lease in the registry.

    Each poke first reads the lock (one registry GET); only when it looks free does it look up the run's
    lineage and try to take it, so a waiting run costs one cheap read per poke.

    :param model_name: the model whose lock to take (templated).
    :param lease_seconds: how long the lease lasts unless released (a dead run's lock expires then).
    :param registry_conn_id: Connection of the model registry.
    """

    template_fields = ("model_name",)

    def __init__(
        self,
        *,
        model_name: str,
        lease_seconds: float = 3600,
        registry_conn_id: str = RegistryHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("mode", "reschedule")
        kwargs.setdefault("poke_interval", 5)
        kwargs.setdefault("timeout", 6 * 3600)
        super().__init__(**kwargs)
        if not 0 < lease_seconds <= 86400:
            raise ValueError(f"{self.task_id}: lease_seconds must be in (0, 86400], got {lease_seconds}")
        self.model_name = model_name
        self.lease_seconds = lease_seconds
        self.registry_conn_id = registry_conn_id

    @cached_property
    def registry(self) -> RegistryHook:
        return RegistryHook(self.registry_conn_id)

    def poke(self, context: Any) -> PokeReturnValue:
        model = validate_model_name(self.model_name)
        run_id = context["dag_run"].run_id
        holder = f"{context['dag_run'].dag_id}/{run_id}"
        try:
            lock = self.registry.get_model(model).lock
        except NotFound:
            lock = None  # a model's first release: nobody holds its lock
        if lock is not None and lock.run_id != run_id and not lock.expired:
            self.log.info("waiting: %s is being deployed by %s until %s", model, lock.holder, lock.expires_at)
            return PokeReturnValue(is_done=False)
        try:
            lease = self.registry.acquire_lock(
                model, holder=holder, run_id=run_id, ttl_seconds=self.lease_seconds, context=run_context(context)
            )
        except LockHeld as exc:
            self.log.info("waiting: %s", exc)
            return PokeReturnValue(is_done=False)
        self.log.info("deployment lock of %s held by this run until %s", model, lease.expires_at)
        return PokeReturnValue(
            is_done=True, xcom_value={"token": lease.token, "expires_at": lease.expires_at.isoformat()}
        )


class ReleaseLockOperator(DeployStep):
    """Releases the lease taken by ``lock_task_id`` (runs whatever happened before it).

    :param lock_task_id: the DeploymentLockSensor's task id.
    """

    def __init__(self, *, lock_task_id: str = "acquire_lock", **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", "all_done")
        super().__init__(**kwargs)
        self.lock_task_id = lock_task_id

    def execute(self, context: Any) -> None:
        model = self.checked_model_name()
        lease = context["ti"].xcom_pull(task_ids=self.lock_task_id)
        if not lease:
            self.log.info("this run never held the lock of %s", model)
            return
        self.registry.release_lock(model, lease["token"], context=self.lineage(context))
        self.log.info("released the deployment lock of %s", model)
