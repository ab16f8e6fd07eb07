"""The per-model deployment lock (the registry's lease): two runs for one model never interleave, while
runs for different models go on in parallel. The sensor waits in reschedule mode, holding no worker slot.

The lease is bound to this run and the pipeline's service identity: its token never reaches XCom (which any
Viewer can read); the run's tasks renew it (``DeployStep`` before each step, the gray release at each look) and
release it by proving they act for the run that took it. A lease that expired with its run (killed mid-deploy) is
taken over only after checking that serving and the registry agree."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowFailException

from tfdeploy.core.errors import LockHeld, NotFound
from tfdeploy.core.names import validate_model_name
from tfdeploy.hooks.registry import RegistryHook
from tfdeploy.lineage import run_context
from tfdeploy.operators.base import DeployStep
from tfdeploy.services.consistency import serving_problems
from tfdeploy.services.serving_target import ServingTargetService
from tfdeploy.services.targets import get_target


class DeploymentLockSensor(BaseSensorOperator):
    """Waits until this run holds the model's deployment lease in the registry.

    Each poke first reads the lock (one registry GET); only when it looks free does it try to take it, so a waiting
    run costs one cheap read per poke. Its XCom says until when the lease holds and for how long each renewal
    extends it; never the lease's token.

    :param model_name: the model whose lock to take (templated).
    :param lease_seconds: how long the lease lasts unless renewed (a dead run's lock expires then); every step
        of the run renews it for this long.
    :param check_serving_on_takeover: when the lease taken had expired (its run died), first check that the
        stable pool serves what the registry says is in production; if not, release it and fail, naming the
        difference. model_rollback, which rewrites serving from the registry, turns it off.
    :param serving_target: the serving target whose stable pool is checked.
    :param registry_conn_id: Connection of the model registry.
    """

    template_fields = ("model_name",)

    def __init__(
        self,
        *,
        model_name: str,
        lease_seconds: float = 900,
        check_serving_on_takeover: bool = True,
        serving_target: str = "local",
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
        self.check_serving_on_takeover = check_serving_on_takeover
        self.serving_target = serving_target
        self.registry_conn_id = registry_conn_id

    @cached_property
    def registry(self) -> RegistryHook:
        return RegistryHook(self.registry_conn_id)

    def poke(self, context: Any) -> PokeReturnValue:
        model = validate_model_name(self.model_name)
        run_id = context["dag_run"].run_id
        holder = f"{context['dag_run'].dag_id}/{run_id}"
        try:
            record = self.registry.get_model(model)
        except NotFound:
            record = None  # a model's first release: nobody holds its lock
        lock = record.lock if record else None
        if lock is not None and lock.run_id != run_id and not lock.expired:
            self.log.info("waiting: %s is being deployed by %s until %s", model, lock.holder, lock.expires_at)
            return PokeReturnValue(is_done=False)
        lineage = run_context(context)
        try:
            lease = self.registry.acquire_lock(
                model, holder=holder, run_id=run_id, ttl_seconds=self.lease_seconds, context=lineage
            )
        except LockHeld as exc:
            self.log.info("waiting: %s", exc)
            return PokeReturnValue(is_done=False)
        if lease.taken_over_from and self.check_serving_on_takeover:
            self._check_takeover(model, lease.taken_over_from, lineage)
        self.log.info("deployment lock of %s held by this run until %s", model, lease.expires_at)
        return PokeReturnValue(
            is_done=True,
            xcom_value={"expires_at": lease.expires_at.isoformat(), "lease_seconds": self.lease_seconds},
        )

    def _check_takeover(self, model: str, previous: Any, lineage: dict[str, str]) -> None:
        """The run that held the lease died: go on only if serving is what the registry says it is."""
        dead = f"{previous.get('holder')} (lease expired at {previous.get('expiredAt')})"
        production = self.registry.production_version(model)
        stable = ServingTargetService(get_target(self.serving_target, pool="stable"))
        problems = serving_problems(model, production, stable.entry(model))
        if not problems:
            self.log.info("took over the expired lease of %s from %s: serving and registry agree", model, dead)
            return
        self.registry.release_lock(model, context=lineage)
        raise AirflowFailException(
            f"took over the expired lease of {model} from {dead}, but serving and the registry disagree: "
            f"{'; '.join(problems)}. Nothing was changed and the lease is released: run model_rollback (it serves "
            "the registry's production version again) or fix serving by hand, then deploy again"
        )


class ReleaseLockOperator(DeployStep):
    """Releases the lease this run took in ``lock_task_id`` (runs whatever happened before it).

    :param lock_task_id: the DeploymentLockSensor's task id.
    """

    renews_lease = False

    def __init__(self, *, lock_task_id: str = "acquire_lock", **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", "all_done")
        super().__init__(**kwargs)
        self.lock_task_id = lock_task_id

    def execute(self, context: Any) -> None:
        model = self.checked_model_name()
        if not context["ti"].xcom_pull(task_ids=self.lock_task_id):
            self.log.info("this run never held the lock of %s", model)
            return
        self.registry.release_lock(model, context=self.lineage(context))
        self.log.info("released the deployment lock of %s", model)
