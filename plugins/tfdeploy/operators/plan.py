"""Plan the release: the run's first task resolves what the run deploys (its Params, or the Asset event's extra
of an Asset-triggered run: tfdeploy.core.run_inputs) and checks it against the DAG's Params, checks that the model
is not frozen in the registry and the release strategy's Params (what JSON Schema cannot say, e.g. that the weight
steps rise), and hands the inputs and the plan on, before the lock is taken or anything changes."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException, ParamValidationError

from tfdeploy.core.errors import InvalidModelName, InvalidRunInputs, NotFound
from tfdeploy.core.names import validate_model_name
from tfdeploy.core.release import InvalidReleasePlan, plan_release
from tfdeploy.core.run_inputs import RUN_INPUTS, extra_key, inputs_from_extra
from tfdeploy.hooks.registry import RegistryHook

# The XCom (of the plan task) that holds the run's resolved inputs: {model_name, source, version, golden_path}.
INPUTS_XCOM = "inputs"

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
    """Resolves and checks the run's inputs (XCom ``inputs``), checks the release strategy and returns the plan
    (``ReleasePlan.to_dict()``) as its XCom.

    The inputs are ``model_name`` and ``inputs`` (the Params) for a run started by a person or a time schedule;
    for an Asset-triggered run, the newest triggering Asset event's extra (a missing or invalid key fails the run,
    naming it). Either way each value is checked against the DAG's Param of that name.

    :param model_name: the model (templated); a model frozen in the registry is refused here.
    :param inputs: the run's other inputs from its Params by name: ``source``, ``version``, ``golden_path``
        (templated).
    :param registry_conn_id: the registry's Connection.
    :param strategy: ``all_at_once``, ``canary`` or ``linear`` (templated).
    :param options: the other fields of the plan by name (``steps``, ``linear_step``, ``step_seconds``,
        ``check_seconds``, ``max_error_rate``, ``max_p99_ratio``, ``p99_floor_ms``, ``min_requests``, ``low_traffic``,
        ``max_extensions``); templated, typed after rendering.
    """

    template_fields = ("model_name", "strategy", "options", "inputs")
    ui_color = "#fdf6e3"

    def __init__(
        self,
        *,
        model_name: str,
        strategy: str,
        options: dict[str, Any] | None = None,
        inputs: Mapping[str, Any] | None = None,
        registry_conn_id: str = RegistryHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("execution_timeout", timedelta(minutes=1))
        super().__init__(**kwargs)
        unknown = sorted(set(options or {}) - set(PLAN_FIELDS))
        if unknown:
            raise ValueError(f"{self.task_id}: unknown release plan fields {unknown}; known: {', '.join(PLAN_FIELDS)}")
        unknown = sorted(set(inputs or {}) - set(RUN_INPUTS[1:]))
        if unknown:
            raise ValueError(f"{self.task_id}: unknown run inputs {unknown}; known: {', '.join(RUN_INPUTS[1:])}")
        self.model_name = model_name
        self.strategy = strategy
        self.options = dict(options or {})
        self.inputs = dict(inputs or {})
        self.registry_conn_id = registry_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        try:
            inputs = self.run_inputs(context)
        except InvalidRunInputs as exc:  # no retry: the same inputs stay wrong
            raise AirflowFailException(f"run inputs refused: {exc}") from exc
        context["ti"].xcom_push(key=INPUTS_XCOM, value=inputs)
        model = inputs["model_name"]
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

    def run_inputs(self, context: Any) -> dict[str, Any]:
        """What this run deploys (see the class doc); raises :class:`InvalidRunInputs` naming a bad key."""
        events = _asset_events(context)
        run_type = str(getattr(context.get("dag_run"), "run_type", "") or "")
        if not events and run_type != "asset_triggered":
            inputs = {"model_name": self.model_name, **self.inputs}
            self._check_params(inputs, "this run's Params", lambda name: name)
            self.log.info("run inputs from the Params: %s", inputs)
            return inputs
        if not events:
            raise InvalidRunInputs(
                "this run was started by an Asset update but carries no Asset event, so it does not know what to "
                "deploy. Nothing was deployed"
            )
        newest = events[-1]
        event = _describe(newest)
        if len(events) > 1:
            self.log.warning(
                "%d Asset events started this run: it deploys the newest (%s); the others are not deployed by it "
                "(announce them again, or trigger a run with their values): %s",
                len(events),
                event,
                [dict(e.extra or {}) for e in events[:-1]],
            )
        inputs = inputs_from_extra(newest.extra, event=event)
        self._check_params(inputs, event, lambda name: f"extra key {extra_key(name)!r}")
        self.log.info("run inputs from %s: %s", event, inputs)
        return inputs

    def _check_params(self, inputs: dict[str, Any], where: str, key: Callable[[str], str]) -> None:
        """Each input against the DAG's Param of its name (the rules a run's conf is checked with)."""
        try:
            validate_model_name(inputs["model_name"])
        except InvalidModelName as exc:
            raise InvalidRunInputs(f"{where}: {key('model_name')} is invalid: {exc.message}") from None
        if not self.has_dag():
            return
        params = self.dag.params
        for name, value in inputs.items():
            if name not in params:
                continue
            try:
                copy.copy(params.get_param(name)).resolve(value)
            except ParamValidationError as exc:
                problem = str(exc).strip().splitlines()[0]
                raise InvalidRunInputs(f"{where}: {key(name)} is invalid: {problem}. Nothing was deployed") from None


def _asset_events(context: Any) -> list[Any]:
    """The run's triggering Asset events (each once, though an alias lists it again), oldest first."""
    accessor = context.get("triggering_asset_events") or {}
    events = {id(event): event for asset in accessor for event in accessor[asset]}
    return sorted(events.values(), key=lambda event: event.timestamp)


def _describe(event: Any) -> str:
    """An Asset event, for messages: its Asset, time and origin."""
    origin = f" by {event.source_dag_id}/{event.source_run_id}" if getattr(event, "source_dag_id", None) else ""
    return f"the Asset event of {event.asset.uri} at {event.timestamp.isoformat()}{origin}"
