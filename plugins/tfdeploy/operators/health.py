"""Health of every production model (the model_health DAG): checks each one as clients see it, records the
result in the registry's health history of its production version, alerts through notifiers when a model's
health changes (healthy -> degraded -> failing, and back), and hands the models to roll back automatically
(those whose registry setting ``autoRollbackOnFailing`` is on and that have an earlier version) to the DAG's
``model_rollback`` trigger."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from functools import cached_property
from typing import Any

from airflow.sdk import BaseNotifier, BaseOperator

from tfdeploy.core.errors import NotFound, RegistryError
from tfdeploy.core.names import validate_model_name
from tfdeploy.hooks.prometheus import PrometheusHook
from tfdeploy.hooks.registry import RegistryHook
from tfdeploy.hooks.tfserving import TFServingHook
from tfdeploy.lineage import run_context
from tfdeploy.operators.diagnose import diagnose_best_effort
from tfdeploy.services.health import Budgets, HealthReport, check_model
from tfdeploy.services.targets import get_target

ROLLBACK_DAG = "model_rollback"


class ModelHealthOperator(BaseOperator):
    """Checks the production models' health; returns the ``conf`` of each automatic rollback to start.

    :param models: the models to check (templated; empty: every model with a production version).
    :param serving_target: the serving target the models are served on.
    :param max_error_rate: error-rate budget over ``window`` (above it: degraded).
    :param p99_budget_ms: p99 latency budget over ``window`` (above it: degraded).
    :param window: Prometheus' rate window, e.g. ``5m``.
    :param notifiers: a factory ``(subject, message) -> notifiers`` told about each change of health.
    :param registry_conn_id: the registry's Connection.
    :param prometheus_conn_id: Prometheus' Connection (unreachable: rates not checked, recorded so).
    """

    template_fields = ("models",)
    ui_color = "#e6f4ea"

    def __init__(
        self,
        *,
        models: Sequence[str] | str = (),
        serving_target: str = "local",
        max_error_rate: float = 0.05,
        p99_budget_ms: float = 500.0,
        window: str = "5m",
        notifiers: Callable[[str, str], list[BaseNotifier]] | None = None,
        registry_conn_id: str = RegistryHook.default_conn_name,
        prometheus_conn_id: str = PrometheusHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("execution_timeout", timedelta(minutes=10))
        super().__init__(**kwargs)
        if not 0 <= max_error_rate <= 1:
            raise ValueError(f"{self.task_id}: max_error_rate is a fraction 0-1, got {max_error_rate}")
        if p99_budget_ms <= 0:
            raise ValueError(f"{self.task_id}: p99_budget_ms must be positive, got {p99_budget_ms}")
        self.models = models
        self.serving_target = serving_target
        self.budgets = Budgets(max_error_rate=max_error_rate, p99_ms=p99_budget_ms, window=window)
        self.notifiers = notifiers
        self.registry_conn_id = registry_conn_id
        self.prometheus_conn_id = prometheus_conn_id

    @cached_property
    def registry(self) -> RegistryHook:
        return RegistryHook(self.registry_conn_id)

    def execute(self, context: Any) -> list[dict[str, Any]]:
        target = get_target(self.serving_target)
        replicas = TFServingHook(target.tfserving_conn_id).replicas()
        router = TFServingHook(None, grpc_target=target.router_grpc_target, rest_url=target.router_rest_url)
        prometheus = PrometheusHook(self.prometheus_conn_id)
        given = [self.models] if isinstance(self.models, str) else list(self.models or [])
        names = [validate_model_name(m) for m in given] or [
            m.model for m in self.registry.list_models() if m.production_version is not None
        ]
        rollbacks: list[dict[str, Any]] = []
        for model in names:
            record = self.registry.get_model(model)
            version = record.production_version
            if version is None:
                self.log.info("%s has no production version: nothing to check", model)
                continue
            report = self.registry.get_version(model, version).validation_report
            health = check_model(
                model, version, report, replicas=replicas, router=router, prometheus=prometheus, budgets=self.budgets
            )
            before = self._last_status(model, version)
            self.registry.record_health(
                model,
                version=version,
                target=target.name,
                status=health.status,
                details=health.details(),
                context=run_context(context),
            )
            self.log.info("%s v%s: %s %s", model, version, health.status, health.problems or "")
            rollback = self._rollback(model, health) if health.status == "failing" else None
            if health.status != before:
                diagnosis = self._diagnose(context, health) if health.status == "failing" else None
                self._alert(context, health, before, rollback, diagnosis=diagnosis)
            if rollback is not None and rollback.get("version") is not None:
                rollbacks.append(rollback)
        return rollbacks

    def _last_status(self, model: str, version: int) -> str | None:
        latest = self.registry.latest_health(model, limit=1, version=version)  # a candidate's checks never count
        return latest[0].status if latest else None

    def _rollback(self, model: str, health: HealthReport) -> dict[str, Any] | None:
        """The automatic rollback of a failing model, if its setting asks for one: ``conf`` for model_rollback,
        with ``version`` None when there is no earlier version to go back to."""
        try:
            if not self.registry.get_settings(model).auto_rollback_on_failing:
                return None
        except NotFound:
            return None
        earlier = [
            v.version for v in self.registry.list_versions(model, state="superseded") if v.version != health.version
        ]
        reason = f"automatic: model_health found v{health.version} failing: " + "; ".join(health.problems)
        return {"model_name": model, "version": max(earlier) if earlier else None, "reason": reason[:1000]}

    def _diagnose(self, context: Any, health: HealthReport) -> str | None:
        """A diagnosis bundle of a model that went failing, linked from the alert (best effort: None if none)."""
        reason = f"model_health found v{health.version} failing: " + "; ".join(health.problems)
        bundle = diagnose_best_effort(
            self,
            context,
            health.model,
            reason=reason[:1000],
            registry=self.registry,
            serving_target=self.serving_target,
            version=health.version,
        )
        return bundle.path if bundle else None

    def _alert(
        self,
        context: Any,
        health: HealthReport,
        before: str | None,
        rollback: dict[str, Any] | None,
        *,
        diagnosis: str | None = None,
    ) -> None:
        change = f"{before or 'unknown'} -> {health.status}"
        message = f"{health.model} v{health.version} health {change}"
        if health.problems:
            message += ": " + "; ".join(health.problems)
        if rollback is not None:
            message += (
                f". Automatic rollback to v{rollback['version']} started (model_rollback)."
                if rollback.get("version") is not None
                else ". Automatic rollback is on but NO ROLLBACK WAS POSSIBLE: no earlier version to go back to."
            )
        if diagnosis:
            message += f" Diagnosis bundle: HDFS {diagnosis}"
        self.log.warning("HEALTH CHANGE: %s", message)
        for notifier in self.notifiers(f"[tfdeploy] {health.model} {change}", message) if self.notifiers else []:
            try:
                notifier.notify(context)
            except Exception as exc:  # noqa: BLE001 - one notifier failing must not hide the others or the check
                self.log.error("notifier %s failed: %s", type(notifier).__name__, exc)
        try:
            self.registry.record_serving_event(
                health.model,
                "alert",
                version=health.version,
                reason=message,
                details={"change": change} | ({"diagnosis": diagnosis} if diagnosis else {}),
                context=run_context(context),
            )
        except RegistryError as exc:
            self.log.error("the health change was not recorded in the registry's history: %s", exc)
