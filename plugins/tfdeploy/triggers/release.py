"""The bake of one gray-release step, in the triggerer: no worker slot is held while a step bakes.

Every ``check_seconds`` the trigger looks at the step's window (live metrics now minus the baseline taken when
the step's weight was set) and at the release's controls in the registry, then:
 - a breach (``core.release.judge``) or an abort: sets the candidate's weight to 0 at the router itself, at
   once (not waiting for a worker), and fires ``breach``/``aborted`` with the metric, its values and when the
   weight went to 0;
 - promote now: fires ``promote``;
 - paused: holds the weight; the bake clock stops (breaches are still judged);
 - the bake over and judged good: fires ``passed``; too few requests: bakes again (``low_traffic=extend``,
   at most ``max_extensions`` times) or fires ``low_traffic``;
 - the router unreachable: fires ``error`` (the weight stays where it was; the task says how to finish by hand).
The registry being unreachable only skips that look's controls: judging the candidate never depends on it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from tfdeploy.core.errors import Conflict, RegistryError, RouterError
from tfdeploy.core.release import Outcome, ReleasePlan, Side, judge
from tfdeploy.hooks.registry import RegistryHook
from tfdeploy.services.release_metrics import ReleaseMetrics


class ReleaseStepTrigger(BaseTrigger):
    """Bakes and judges one step of a gray release.

    :param model: the model released.
    :param candidate: its candidate version (for messages).
    :param weight: the step's weight (percent of unversioned inference calls on the candidate).
    :param plan: the release plan (``ReleasePlan.to_dict()``).
    :param baseline: metrics by side when the weight was set (``Side.to_dict()``).
    :param deadline: epoch seconds when the bake ends (a restarted triggerer keeps it).
    :param serving_target: the serving target's name.
    :param registry_conn_id: the registry's Connection (release controls).
    :param extensions: bakes already added for low traffic.
    :param lease: the run's deployment lease, renewed every third of ``seconds`` while the step bakes:
        ``{"context": the run's lineage, "seconds": its length}``; None: no lease to keep.
    """

    def __init__(
        self,
        *,
        model: str,
        candidate: int,
        weight: int,
        plan: dict[str, Any],
        baseline: dict[str, dict[str, Any]],
        deadline: float,
        serving_target: str,
        registry_conn_id: str = RegistryHook.default_conn_name,
        extensions: int = 0,
        lease: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.lease = lease
        self.model = model
        self.candidate = candidate
        self.weight = weight
        self.plan = plan
        self.baseline = baseline
        self.deadline = deadline
        self.serving_target = serving_target
        self.registry_conn_id = registry_conn_id
        self.extensions = extensions

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "model": self.model,
                "candidate": self.candidate,
                "weight": self.weight,
                "plan": self.plan,
                "baseline": self.baseline,
                "deadline": self.deadline,
                "serving_target": self.serving_target,
                "registry_conn_id": self.registry_conn_id,
                "extensions": self.extensions,
                "lease": self.lease,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        plan = ReleasePlan.from_dict(self.plan)
        metrics = ReleaseMetrics(self.serving_target)
        registry = RegistryHook(self.registry_conn_id, max_attempts=1, timeout=max(1.0, plan.check_seconds))
        baseline = {side: Side.from_dict(values) for side, values in self.baseline.items()}
        deadline, extensions, last = self.deadline, self.extensions, time.monotonic()
        renewed = float("-inf")
        while True:
            started = time.monotonic()
            if self.lease and started - renewed >= float(self.lease["seconds"]) / 3:
                lost = await asyncio.to_thread(self._renew, registry)
                if lost:
                    yield TriggerEvent({"status": "error", "message": lost, "weight": self.weight})
                    return
                renewed = started
            try:
                now, candidate_up = await asyncio.to_thread(
                    lambda: (metrics.sample(self.model), metrics.candidate_up())
                )
            except RouterError as exc:
                yield TriggerEvent({"status": "error", "message": str(exc), "weight": self.weight})
                return
            control = await asyncio.to_thread(self._control, registry)
            if control is not None and control.paused:
                deadline += started - last  # the bake clock stops while paused
            last = started
            window = {side: now[side].minus(baseline[side]) for side in now}
            verdict = judge(
                plan, window["canary"], window["stable"], candidate_up=candidate_up, bake_over=time.time() >= deadline
            )
            base = {"weight": self.weight, "values": verdict.values, "extensions": extensions}
            if control is not None and control.pending_action == "abort":
                yield TriggerEvent(base | {"status": "aborted", **await self._weight_zero(metrics)})
                return
            if verdict.outcome == Outcome.BREACH:
                event = {
                    "status": "breach",
                    "metric": verdict.metric,
                    "message": verdict.message,
                    "detected_at": time.time(),
                }
                yield TriggerEvent(base | event | await self._weight_zero(metrics))
                return
            if control is not None and control.pending_action == "promote":
                yield TriggerEvent(base | {"status": "promote"})
                return
            if verdict.outcome == Outcome.PASS and not (control is not None and control.paused):
                yield TriggerEvent(base | {"status": "passed", "message": verdict.message})
                return
            if verdict.outcome == Outcome.LOW_TRAFFIC and not (control is not None and control.paused):
                if plan.low_traffic == "extend" and extensions < plan.max_extensions:
                    extensions += 1
                    deadline = time.time() + plan.step_seconds
                    self.log.warning("%s; baking again (%d/%d)", verdict.message, extensions, plan.max_extensions)
                else:  # fail closed: the candidate leaves the traffic at once, as after a breach
                    event = {"status": "low_traffic", "metric": verdict.metric, "message": verdict.message}
                    yield TriggerEvent(base | event | await self._weight_zero(metrics))
                    return
            await asyncio.sleep(max(0.0, plan.check_seconds - (time.monotonic() - started)))

    def _renew(self, registry: RegistryHook) -> str | None:
        """Renew the run's lease; the reason if it is lost (the release must stop), None otherwise."""
        assert self.lease is not None
        try:
            registry.renew_lock(self.model, ttl_seconds=float(self.lease["seconds"]), context=self.lease["context"])
        except Conflict as exc:
            return f"the deployment lease of {self.model} is no longer this run's: {exc}"
        except RegistryError as exc:  # unreachable now: the next look tries again before the lease lapses
            self.log.warning("lease of %s not renewed this time (registry: %s)", self.model, exc)
        return None

    def _control(self, registry: RegistryHook) -> Any:
        try:
            return registry.get_traffic(self.model)
        except RegistryError as exc:
            self.log.warning("release controls of %s not read this time (registry: %s)", self.model, exc)
            return None

    async def _weight_zero(self, metrics: ReleaseMetrics) -> dict[str, Any]:
        """The candidate's weight to 0 now; when that happened, or why it could not."""
        try:
            await asyncio.to_thread(metrics.router.set_weight, self.model, 0)
        except RouterError as exc:
            return {"weight_zero_error": str(exc)}
        return {"weight_zero_at": time.time()}
