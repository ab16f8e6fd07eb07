"""Diagnosis bundles from tasks (``services/diagnosis.py``): :class:`DiagnoseOperator` collects one on demand
(the ``model_diagnose`` DAG); :func:`diagnose_best_effort` collects one on the side of a step that must never
fail because of it (a rollback, a failing health check)."""

from __future__ import annotations

from datetime import timedelta
from functools import cached_property
from typing import Any

from airflow.sdk import BaseOperator

from tfdeploy.core.errors import NotFound, RegistryError
from tfdeploy.core.names import validate_model_name
from tfdeploy.hooks.model_store import ModelStoreHook
from tfdeploy.hooks.prometheus import PrometheusHook
from tfdeploy.hooks.registry import RegistryHook
from tfdeploy.lineage import run_context
from tfdeploy.services.diagnosis import ROOT, DiagnosisBundle, DiagnosisService, TaskRef

EVENT_KIND = "diagnosis"


def task_ref(context: Any, task_id: str | None = None) -> TaskRef:
    """The task ``task_id`` of this run (default: the running task itself, at its current try)."""
    dag_run, ti = context["dag_run"], context["ti"]
    own = task_id in (None, "", ti.task_id)
    try_number = getattr(ti, "try_number", None) if own else None
    map_index = getattr(ti, "map_index", -1) if own else -1
    return TaskRef(
        dag_run.dag_id,
        dag_run.run_id,
        ti.task_id if own else str(task_id),
        try_number=int(try_number) if isinstance(try_number, int) and try_number > 0 else None,
        map_index=map_index if isinstance(map_index, int) else -1,
    )


def record_diagnosis(
    registry: RegistryHook,
    model: str,
    bundle: DiagnosisBundle,
    *,
    reason: str,
    context: Any,
    version: int | None = None,
) -> None:
    """The bundle in the model's history: an event of kind ``diagnosis`` with its path and parts."""
    registry.record_serving_event(
        model,
        EVENT_KIND,
        version=version,
        reason=reason or "diagnosis bundle collected",
        details=bundle.summary(),
        context=run_context(context),
    )


def diagnose_best_effort(
    op: BaseOperator,
    context: Any,
    model: str,
    *,
    reason: str,
    registry: RegistryHook,
    serving_target: str = "local",
    failed_task_id: str | None = None,
    version: int | None = None,
    total_timeout_s: float = 90.0,
) -> DiagnosisBundle | None:
    """Collect ``model``'s bundle, store it and record it in the history; None (logged) if anything of that
    fails: the calling step goes on as if it had not been asked. ``failed_task_id``: the task of this run whose
    log the bundle links to (default: the calling task)."""
    try:
        service = DiagnosisService(serving_target, total_timeout_s=total_timeout_s)
        bundle = service.collect(
            model, run_id=context["dag_run"].run_id, reason=reason, task=task_ref(context, failed_task_id)
        )
    except Exception as exc:  # noqa: BLE001 - a diagnosis must never fail the step that asked for it
        op.log.warning("no diagnosis bundle of %s: %s: %s", model, type(exc).__name__, exc)
        return None
    op.log.info("diagnosis bundle of %s stored at %s (missing: %s)", model, bundle.path, bundle.missing or "none")
    try:
        record_diagnosis(registry, model, bundle, reason=reason, context=context, version=version)
    except Exception as exc:  # noqa: BLE001 - the bundle is stored; the caller still names it in its own records
        op.log.warning("diagnosis bundle %s not recorded in the registry's history: %s", bundle.path, exc)
    return bundle


class DiagnoseOperator(BaseOperator):
    """Collects a model's diagnosis bundle on a serving target, stores it on HDFS
    (``/diagnostics/<model>/<UTC timestamp>-<run_id>.tar.gz``) and records a ``diagnosis`` event with its path in
    the model's registry history. Returns ``{"path", "parts", "missing"}``. A part that cannot be collected is
    listed in the bundle with the reason; the task fails only when the bundle cannot be stored or recorded (a
    model the registry does not know: stored, not recorded, logged).

    :param model_name: the model (templated).
    :param reason: why the bundle is collected (templated), in the bundle and the history.
    :param serving_target: the serving target whose pools, router and replicas are collected (templated).
    :param failed_dag_id: DAG of the failing task whose log the bundle links to (templated; empty: this run's).
    :param failed_run_id: its run (templated; empty: this run).
    :param failed_task_id: the failing task (templated; empty: this task).
    :param registry_conn_id: the registry's Connection.
    :param webhdfs_conn_id: the HDFS provider's Connection the bundle is written through.
    :param prometheus_conn_id: Prometheus' Connection (unreachable: a note in the bundle, not a failure).
    :param part_timeout_s: the longest one part of the bundle may take.
    :param total_timeout_s: the longest the collection may take before the bundle is stored.
    """

    template_fields = ("model_name", "reason", "serving_target", "failed_dag_id", "failed_run_id", "failed_task_id")
    ui_color = "#fdf2e9"

    def __init__(
        self,
        *,
        model_name: str,
        reason: str = "",
        serving_target: str = "local",
        failed_dag_id: str = "",
        failed_run_id: str = "",
        failed_task_id: str = "",
        registry_conn_id: str = RegistryHook.default_conn_name,
        webhdfs_conn_id: str = ModelStoreHook.default_conn_name,
        prometheus_conn_id: str = PrometheusHook.default_conn_name,
        part_timeout_s: float = 30.0,
        total_timeout_s: float = 180.0,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("execution_timeout", timedelta(minutes=10))
        super().__init__(**kwargs)
        if not isinstance(model_name, str) or not model_name:
            raise ValueError(f"{self.task_id}: model_name is required")
        if "{{" not in model_name:
            validate_model_name(model_name)
        if part_timeout_s <= 0 or total_timeout_s <= 0:
            raise ValueError(f"{self.task_id}: part_timeout_s and total_timeout_s must be positive")
        self.model_name = model_name
        self.reason = reason
        self.serving_target = serving_target
        self.failed_dag_id = failed_dag_id
        self.failed_run_id = failed_run_id
        self.failed_task_id = failed_task_id
        self.registry_conn_id = registry_conn_id
        self.webhdfs_conn_id = webhdfs_conn_id
        self.prometheus_conn_id = prometheus_conn_id
        self.part_timeout_s = part_timeout_s
        self.total_timeout_s = total_timeout_s

    @cached_property
    def registry(self) -> RegistryHook:
        return RegistryHook(self.registry_conn_id)

    def service(self) -> DiagnosisService:
        return DiagnosisService(
            self.serving_target,
            registry=RegistryHook(self.registry_conn_id, max_attempts=2, max_elapsed=self.part_timeout_s / 2),
            prometheus=PrometheusHook(self.prometheus_conn_id, timeout=min(10.0, self.part_timeout_s / 2)),
            store=ModelStoreHook(self.webhdfs_conn_id, base_path=ROOT),
            part_timeout_s=self.part_timeout_s,
            total_timeout_s=self.total_timeout_s,
        )

    def failing_task(self, context: Any) -> TaskRef:
        """The task whose log the bundle links to: the one named by the ``failed_*`` arguments, else this one."""
        if not (self.failed_dag_id or self.failed_run_id or self.failed_task_id):
            return task_ref(context)
        return TaskRef(
            self.failed_dag_id or context["dag_run"].dag_id,
            self.failed_run_id or context["dag_run"].run_id,
            self.failed_task_id or context["ti"].task_id,
        )

    def execute(self, context: Any) -> dict[str, Any]:
        model = validate_model_name(self.model_name)
        reason = str(self.reason or "").strip() or "on demand"
        bundle = self.service().collect(
            model, run_id=context["dag_run"].run_id, reason=reason, task=self.failing_task(context)
        )
        self.log.info("diagnosis bundle of %s stored at %s (%d bytes)", model, bundle.uri, bundle.size)
        for part, why in bundle.missing.items():
            self.log.warning("not in the bundle: %s: %s", part, why)
        try:
            record_diagnosis(self.registry, model, bundle, reason=f"diagnosis: {reason}", context=context)
        except NotFound:  # served but never registered (or removed): the bundle is all there is to hand back
            self.log.warning("%s is not in the registry: the bundle %s is not in any history", model, bundle.path)
        except RegistryError as exc:
            raise RegistryError(
                f"the bundle is stored at {bundle.path} but could not be recorded in {model}'s history: {exc.message}"
            ) from exc
        return bundle.summary()
