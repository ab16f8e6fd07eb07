"""Plan the release: the run's first task checks the release strategy's Params (what JSON Schema cannot say,
e.g. that the weight steps rise) and hands the plan on, before the lock is taken or anything changes."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from tfdeploy.core.release import InvalidReleasePlan, plan_release

PLAN_FIELDS = (
    "strategy",
    "steps",
    "linear_step",
    "step_seconds",
    "check_seconds",
    "max_error_rate",
    "max_p99_ratio",
    "min_requests",
    "low_traffic",
    "max_extensions",
)


class ReleasePlanOperator(BaseOperator):
    """Checks the release strategy and returns the plan (``ReleasePlan.to_dict()``) as its XCom.

    :param strategy: ``all_at_once``, ``canary`` or ``linear`` (templated).
    :param options: the other fields of the plan by name (``steps``, ``linear_step``, ``step_seconds``,
        ``check_seconds``, ``max_error_rate``, ``max_p99_ratio``, ``min_requests``, ``low_traffic``,
        ``max_extensions``); templated, typed after rendering.
    """

    template_fields = ("strategy", "options")
    ui_color = "#fdf6e3"

    def __init__(self, *, strategy: str, options: dict[str, Any] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("execution_timeout", timedelta(minutes=1))
        super().__init__(**kwargs)
        unknown = sorted(set(options or {}) - set(PLAN_FIELDS))
        if unknown:
            raise ValueError(f"{self.task_id}: unknown release plan fields {unknown}; known: {', '.join(PLAN_FIELDS)}")
        self.strategy = strategy
        self.options = dict(options or {})

    def execute(self, context: Any) -> dict[str, Any]:
        given = {k: v for k, v in self.options.items() if v is not None}
        try:
            plan = plan_release(self.strategy, **given)
        except InvalidReleasePlan as exc:
            # AirflowFailException: no retry, a bad plan stays bad
            raise AirflowFailException(f"release plan refused, nothing was changed: {exc}") from exc
        self.log.info("release plan: %s", plan.to_dict())
        return plan.to_dict()
