"""The per-model deployment lock (the registry's lease): two runs for one model never interleave, while
runs for different models go on in parallel. The sensor waits in reschedule mode, holding no worker slot."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue

from tfdeploy.hooks.registry import RegistryHook
from tfdeploy.lineage import run_context
from tfdeploy.operators.base import DeployStep
from tfdeploy.registry.errors import LockHeld
from tfdeploy.registry.names import validate_model_name


class DeploymentLockSensor(BaseSensorOperator):
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
        lineage = run_context(context)
        holder = f"{lineage['dagId']}/{lineage['runId']}"
        try:
            lease = self.registry.acquire_lock(model, holder, lineage["runId"], self.lease_seconds, context=lineage)
        except LockHeld as exc:
            self.log.info("waiting: %s", exc)
            return PokeReturnValue(is_done=False)
        self.log.info("deployment lock of %s held by this run until %s", model, lease["expiresAt"])
        return PokeReturnValue(is_done=True, xcom_value={"token": lease["token"], "expires_at": lease["expiresAt"]})


class ReleaseLockOperator(DeployStep):
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
        self.registry.release_lock(model, lease["token"])
        self.log.info("released the deployment lock of %s", model)
