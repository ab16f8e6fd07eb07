"""What every deployment step shares: the model name, the registry hook, the run's lineage, and (for steps that
change serving) the serving target service.

The DAGs render templates as native objects (``render_template_as_native_obj=True``), so templated fields
arrive typed (``int``, ``float``, ``None``); ``typed`` checks them after rendering instead of converting.
"""

from __future__ import annotations

from datetime import timedelta
from functools import cached_property
from typing import Any

from airflow.sdk import BaseOperator

from tfdeploy.core.names import validate_model_name
from tfdeploy.hooks.registry import RegistryHook
from tfdeploy.hooks.router import RouterHook
from tfdeploy.lineage import run_context
from tfdeploy.operators.lease import LeaseHeartbeat, run_lease
from tfdeploy.services.serving_target import ConfigChange, ServingTargetService
from tfdeploy.services.targets import get_target

# Every step's execution_timeout unless it passes its own (each network call has its own, shorter, timeout too).
DEFAULT_TIMEOUT = timedelta(minutes=30)
LOCK_TASK_ID = "acquire_lock"  # the DAGs' DeploymentLockSensor


class DeployStep(BaseOperator):
    """Base of the pipeline's operators.

    :param model_name: the model (TF Serving model name); may be templated, checked again after rendering.
    :param registry_conn_id: Connection of the model registry (``RegistryHook``).
    :param export_task_id: the task whose result (XCom) names the version this run releases.
    :param execution_timeout: (BaseOperator's) the longest one try may run; default ``DEFAULT_TIMEOUT`` (30 minutes),
        so a step stuck on a server that never answers fails and its retry or the rollback takes over.
    """

    template_fields: tuple[str, ...] = ("model_name",)
    ui_color = "#e8f0fe"
    renews_lease = True  # steps of a run that holds the deployment lease keep it alive while they run

    def __init__(
        self,
        *,
        model_name: str,
        registry_conn_id: str = RegistryHook.default_conn_name,
        export_task_id: str = "export",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("execution_timeout", DEFAULT_TIMEOUT)
        super().__init__(**kwargs)
        if not isinstance(model_name, str) or not model_name:
            raise ValueError(f"{self.task_id}: model_name is required")
        if "{{" not in model_name:
            validate_model_name(model_name)
        self.model_name = model_name
        self.registry_conn_id = registry_conn_id
        self.export_task_id = export_task_id

    @cached_property
    def registry(self) -> RegistryHook:
        return RegistryHook(self.registry_conn_id)

    def pre_execute(self, context: Any) -> None:
        """Renew the run's deployment lease before the step and keep renewing it while the step runs."""
        super().pre_execute(context)
        lease = run_lease(context, LOCK_TASK_ID) if self.renews_lease else None
        if lease:
            model = self.checked_model_name()
            heartbeat = LeaseHeartbeat(self.registry, model, self.lineage(context), float(lease["lease_seconds"]))
            self.__dict__["_heartbeat"] = heartbeat.start()

    def post_execute(self, context: Any, result: Any = None) -> None:
        heartbeat = self.__dict__.pop("_heartbeat", None)
        if heartbeat is not None:
            heartbeat.stop()  # LeaseLost if the lease went while the step ran
        super().post_execute(context, result)

    def on_kill(self) -> None:
        heartbeat = self.__dict__.pop("_heartbeat", None)
        if heartbeat is not None:
            heartbeat.lost = None
            heartbeat.stop()
        super().on_kill()

    def lineage(self, context: Any) -> dict[str, str]:
        """Who started this run and how (for the registry's history); looked up once per task."""
        if "_lineage" not in self.__dict__:
            self.__dict__["_lineage"] = run_context(context)
        return dict(self.__dict__["_lineage"])

    def exported(self, context: Any) -> dict | None:
        """The export step's result (model, version, uri, manifest_sha256, action ...), or None if it did not run."""
        return upstream_value(context, self.export_task_id)

    def candidate(self, context: Any) -> int:
        """The version this run releases (from the export step); fails if there is none."""
        exported = self.exported(context)
        if not exported:
            raise RuntimeError(f"no export result from task {self.export_task_id!r}: nothing to release")
        return int(exported["version"])

    def checked_model_name(self) -> str:
        """After templating: the rendered name must still be safe (TF Serving name, path segment)."""
        return validate_model_name(self.model_name)


class ServingStep(DeployStep):
    """A step that changes what a serving target serves: its stable pool (``service``: production versions
    only, every unversioned call), its canary pool (``canary``: candidates) and its router (``router``).

    :param serving_target: the serving target's name (``services.targets``).
    :param serving_image: the serving image; empty: the configured ``SERVING_IMAGE``.
    :param rollout_task_id: the rollout task (whose result names the stable version before this run).
    :param available_timeout_s: how long a version may take to become AVAILABLE or to unload.
    """

    template_fields = (*DeployStep.template_fields, "serving_target", "serving_image")

    def __init__(
        self,
        *,
        serving_target: str = "local",
        serving_image: str | None = None,
        rollout_task_id: str = "rollout",
        available_timeout_s: float = 300,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if available_timeout_s <= 0:
            raise ValueError(f"{self.task_id}: available_timeout_s must be positive, got {available_timeout_s}")
        self.serving_target = serving_target
        self.serving_image = serving_image
        self.rollout_task_id = rollout_task_id
        self.available_timeout_s = available_timeout_s

    @cached_property
    def service(self) -> ServingTargetService:
        """The target's stable pool."""
        return self._pool("stable")

    @cached_property
    def canary(self) -> ServingTargetService:
        """The target's canary pool."""
        return self._pool("canary")

    @cached_property
    def router(self) -> RouterHook:
        return RouterHook(get_target(self.serving_target).router_conn_id)

    def record_serving(self, context: Any, pool: ServingTargetService, change: ConfigChange, reason: str) -> None:
        """The registry's history: which replicas of ``pool`` serve what now, and why (if anything changed)."""
        if change.phases:
            self.registry.record_serving_event(
                change.model, "serving", reason=reason, details=pool.describe(change), context=self.lineage(context)
            )

    def record_route(self, context: Any, model: str, version: int, pool: str, reason: str) -> None:
        """The registry's history: calls naming ``model`` v``version`` now go to ``pool``, and why."""
        self.registry.record_serving_event(
            model,
            "router",
            version=version,
            reason=reason,
            details={"target": self.serving_target, "route": f"{model}/{version}", "pool": pool},
            context=self.lineage(context),
        )

    def _pool(self, pool: str) -> ServingTargetService:
        return ServingTargetService(
            get_target(self.serving_target, self.serving_image or None, pool=pool),
            available_timeout_s=self.available_timeout_s,
        )


def upstream_value(context: Any, task_id: str, key: str = "return_value") -> Any:
    return context["ti"].xcom_pull(task_ids=task_id, key=key)


def typed(value: Any, kind: type | tuple[type, ...], name: str, *, optional: bool = False) -> Any:
    """``value`` if it is of ``kind`` (or None when ``optional``), else a TypeError naming the field."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, kind):
        kinds = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise TypeError(
            f"{name} must be {kinds}{' or empty' if optional else ''}, got {value!r}; "
            "the DAG renders templates as native objects (render_template_as_native_obj=True)"
        )
    return value
