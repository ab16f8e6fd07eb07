"""Plan the release: the run's first task checks that the model is not frozen in the registry and the
release strategy's Params (what JSON Schema cannot say, e.g. that the weight steps rise), and hands the plan
on, before the lock is taken or anything changes."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from tfdeploy.core.errors import NotFound
from tfdeploy.core.names import validate_model_name
from tfdeploy.core.release import InvalidReleasePlan, plan_release
from tfdeploy.hooks.registry import RegistryHook

PLAN_FIELDS = (
    "strategy",
    "steps",
    "linear_step",
    "step_seconds",
    "check_seconds",
    "max_error_rate",
    "max_p99_ratio",
    "p99_floor_ms",
    "min_requests",
    "low_traffic",
    "max_extensions",
)


class ReleasePlanOperator(BaseOperator):
    """Checks the release strategy and returns the plan (``ReleasePlan.to_dict()``) as its XCom.

    :param model_name: the model (templated); a model frozen in the registry is refused here.
    :param registry_conn_id: the registry's Connection.
    :param strategy: ``all_at_once``, ``canary`` or ``linear`` (templated).
    :param options: the other fields of the plan by name (``steps``, ``linear_step``, ``step_seconds``,
        ``check_seconds``, ``max_error_rate``, ``max_p99_ratio``, ``p99_floor_ms``, ``min_requests``, ``low_traffic``,
        ``max_extensions``); templated, typed after rendering.
    """

    template_fields = ("model_name", "strategy", "options")
    ui_color = "#fdf6e3"

    def __init__(
        self,
        *,
        model_name: str,
        strategy: str,
        options: dict[str, Any] | None = None,
        registry_conn_id: str = RegistryHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("execution_timeout", timedelta(minutes=1))
        super().__init__(**kwargs)
        unknown = sorted(set(options or {}) - set(PLAN_FIELDS))
        if unknown:
            raise ValueError(f"{self.task_id}: unknown release plan fields {unknown}; known: {', '.join(PLAN_FIELDS)}")
        self.model_name = model_name
        self.strategy = strategy
        self.options = dict(options or {})
        self.registry_conn_id = registry_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        model = validate_model_name(self.model_name)
        try:
            settings = RegistryHook(self.registry_conn_id).get_settings(model)
        except NotFound:  # a first release: nothing to freeze yet
            settings = None
        if settings is not None and settings.frozen:
            raise AirflowFailException(
                f"{model} is frozen: no new release starts until it is lifted (frozen by {settings.frozen_by} at "
                f"{settings.frozen_at}: {settings.frozen_reason}). Lift it on the registry's page or with DELETE "
                f"/registry/v1/models/{model}/freeze; nothing was changed."
            )
        given = {k: v for k, v in self.options.items() if v is not None}
        try:
            plan = plan_release(self.strategy, **given)
        except InvalidReleasePlan as exc:
            # AirflowFailException: no retry, a bad plan stays bad
            raise AirflowFailException(f"release plan refused, nothing was changed: {exc}") from exc
        self.log.info("release plan: %s", plan.to_dict())
        return plan.to_dict()
