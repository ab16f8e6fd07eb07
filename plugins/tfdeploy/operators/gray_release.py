"""Gray release: after the smoke test, move the model's unversioned inference traffic to the candidate in
weighted steps at the router, each baked in the triggerer and judged by live metrics (candidate against
stable). A breach or an abort sets the weight to 0 at once and fails this task, so the rollback runs; promote
follows the last step (or a "promote now"). The registry records every weight with who and why."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from tfdeploy.core.errors import RegistryError, RouterError
from tfdeploy.core.release import ReleasePlan, Strategy
from tfdeploy.operators.base import LOCK_TASK_ID, ServingStep, typed
from tfdeploy.operators.lease import run_lease
from tfdeploy.services.release_metrics import ReleaseMetrics
from tfdeploy.triggers.release import ReleaseStepTrigger


class GrayReleaseOperator(ServingStep):
    """Runs the plan's weight steps (deferrable: no worker slot is held while a step bakes).

    :param plan: the release plan (the ``plan_release`` task's XCom, ``ReleasePlan.to_dict()``); templated.
    :param release_timeout: the longest the whole release may take, pauses included.
    :param serving_target: the serving target's name.
    :param serving_image: the serving image; empty: the configured ``SERVING_IMAGE``.
    """

    template_fields = (*ServingStep.template_fields, "plan")
    ui_color = "#fff4e0"
    # never retried: a retry would start again at the first step and send traffic back to a candidate that
    # breached or was aborted; a failed step fails the task, and the rollback runs
    retriable = False

    def __init__(self, *, plan: Any, release_timeout: timedelta = timedelta(hours=6), **kwargs: Any) -> None:
        kwargs.setdefault("execution_timeout", release_timeout)
        super().__init__(**kwargs)
        self.retries = 0  # over the DAG's default_args too: see ``retriable``
        if release_timeout <= timedelta(0):
            raise ValueError(f"{self.task_id}: release_timeout must be positive, got {release_timeout}")
        self.plan = plan
        self.release_timeout = release_timeout

    def execute(self, context: Any) -> dict[str, Any]:
        plan = ReleasePlan.from_dict(typed(self.plan, dict, "plan"))
        model, version = self.checked_model_name(), self.candidate(context)
        if plan.strategy == Strategy.ALL_AT_ONCE:
            self.log.info("strategy all_at_once: promote moves all traffic to the candidate at once")
            return {"model": model, "version": version, "steps": [], "outcome": "all_at_once"}
        stable = self.registry.production_version(model)
        if stable is None:
            self.log.info("first release of %s: no stable version to share traffic with; promote serves it", model)
            return {"model": model, "version": version, "steps": [], "outcome": "first release"}
        return self._start(context, plan, model, version, stable, 0, [])

    def _start(
        self, context: Any, plan: ReleasePlan, model: str, version: int, stable: int, index: int, done: list[dict]
    ) -> dict[str, Any]:
        weight = plan.steps[index]
        metrics = ReleaseMetrics(self.serving_target)
        previous = plan.steps[index - 1] if index else 0
        try:
            baseline = metrics.sample(model)
            self.router.set_weight(model, weight)
        except RouterError as exc:
            raise AirflowFailException(self._stuck(model, version, previous, exc)) from exc
        reason = f"gray release step {index + 1}/{len(plan.steps)}: {weight}% of unversioned calls to v{version}"
        self.registry.set_traffic(
            model,
            stable_version=stable,
            canary_version=version,
            canary_weight=weight,
            reason=reason,
            context=self.lineage(context),
        )
        self.log.info("%s: %s; baking %gs, judged every %gs", model, reason, plan.step_seconds, plan.check_seconds)
        self.defer(
            trigger=ReleaseStepTrigger(
                model=model,
                candidate=version,
                weight=weight,
                plan=plan.to_dict(),
                baseline={side: values.to_dict() for side, values in baseline.items()},
                deadline=time.time() + plan.step_seconds,
                serving_target=self.serving_target,
                registry_conn_id=self.registry_conn_id,
                lease=self._lease(context),
            ),
            method_name="step_done",
            kwargs={"index": index, "stable": stable, "done": done},
        )
        raise AssertionError("unreachable: defer() raises")  # pragma: no cover

    def _lease(self, context: Any) -> dict[str, Any] | None:
        """The run's lease for the trigger to keep alive while the step bakes (None: the run holds none)."""
        lease = run_lease(context, LOCK_TASK_ID)
        return {"context": self.lineage(context), "seconds": float(lease["lease_seconds"])} if lease else None

    def step_done(
        self, context: Any, event: dict[str, Any], index: int, stable: int, done: list[dict]
    ) -> dict[str, Any]:
        plan = ReleasePlan.from_dict(typed(self.plan, dict, "plan"))
        model, version = self.checked_model_name(), self.candidate(context)
        status, weight = event.get("status"), int(event.get("weight", plan.steps[index]))
        done = [*done, {"weight": weight, "status": status, "values": event.get("values", {})}]
        self.log.info("%s v%s step %d (%d%%): %s %s", model, version, index + 1, weight, status, event.get("values"))
        if status == "passed":
            if index + 1 < len(plan.steps):
                return self._start(context, plan, model, version, stable, index + 1, done)
            return {"model": model, "version": version, "steps": done, "outcome": "passed"}
        if status == "promote":
            self.registry.clear_pending_action(model, context=self.lineage(context))
            self.log.info(
                "promote now requested in the registry: %s v%s goes to promotion at %d%%", model, version, weight
            )
            return {"model": model, "version": version, "steps": done, "outcome": "promoted early"}
        if status == "error":
            raise AirflowFailException(self._stuck(model, version, weight, event.get("message", "")))
        self._stopped(context, model, version, stable, weight, event)
        raise AssertionError("unreachable")  # pragma: no cover

    def _stopped(self, context: Any, model: str, version: int, stable: int, weight: int, event: dict[str, Any]) -> None:
        """A breach, an abort or too little traffic: record it with its values, then fail (the rollback runs)."""
        status = event["status"]
        if status == "aborted":
            message = f"gray release of {model} v{version} aborted at {weight}% from the registry"
        else:
            message = f"gray release of {model} v{version} stopped at {weight}%: {event.get('message', status)}"
        if "weight_zero_error" in event:
            message += f"; the weight could NOT be set to 0 ({event['weight_zero_error']}): the rollback retries it"
        elif "detected_at" in event and "weight_zero_at" in event:
            lag = event["weight_zero_at"] - event["detected_at"]
            message += f"; candidate weight set to 0 {lag:.2f}s after the breach was seen"
        elif "weight_zero_at" in event:
            message += "; candidate weight set to 0"
        lineage = self.lineage(context)
        details = {
            "check": "gray_release",
            "metric": event.get("metric", status),
            "weight": weight,
            "values": event.get("values", {}),
            "problems": [message],
        }
        try:  # a registry error must not turn this into a retry: that would restart the release at step 1
            self.registry.record_health(
                model, version=version, target=self.serving_target, status="failing", details=details, context=lineage
            )
            if "weight_zero_error" not in event:
                self.registry.set_traffic(
                    model,
                    stable_version=stable,
                    canary_version=version,
                    canary_weight=0,
                    reason=message,
                    context=lineage,
                )
            if status == "aborted":
                self.registry.clear_pending_action(model, context=lineage)
        except RegistryError as exc:
            message += f"; the registry did not record it ({exc})"
        self.log.error(message)
        raise AirflowFailException(message)

    def _stuck(self, model: str, version: int, weight: int, cause: Any) -> str:
        router = self.router
        return (
            f"THE ROUTER DID NOT ANSWER during the gray release of {model} v{version}: {cause}. The candidate's weight "
            f"stays where it was ({weight}% of {model}'s unversioned inference calls). To finish by hand once the "
            f"router answers: set the weight to 0 (`echo 'del map {router.map_path('weights')} {model}' | socat - "
            f"{router.socket_path}` and remove the line from that file), or let the rollback task do it by clearing "
            "it in the Airflow UI; then check the registry's traffic record."
        )
