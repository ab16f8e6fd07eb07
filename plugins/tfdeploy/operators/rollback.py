"""Roll back (automatic, when rollout, smoke or promote failed): serve the previous stable version again,
verify it answers, remove the staged candidate, record `rolled_back` with the failing step, and alert.
A first deployment with no previous version unloads the candidate. A failed rollback says what is left
to do by hand."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseNotifier
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from tfdeploy.notifiers import DeploymentAlertNotifier
from tfdeploy.operators.base import upstream_value
from tfdeploy.operators.rollout import ServingStep
from tfdeploy.serving.models_config import ServedModel
from tfdeploy.serving.target_config import with_entry

GUARDED_STEPS = ("rollout", "smoke", "promote")


class RollbackOperator(ServingStep):
    def __init__(self, *, notifiers: list[BaseNotifier] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", "one_failed")
        super().__init__(**kwargs)
        self.notifiers = notifiers if notifiers is not None else [DeploymentAlertNotifier()]

    def execute(self, context: Any) -> dict:
        model = self.checked_model_name()
        exported = self.exported(context)
        if not exported:
            raise AirflowSkipException("nothing was exported, so nothing reached serving: no rollback needed")
        version = int(exported["version"])
        state = self.registry.get_version(model, version)["state"]
        failed_step = next((s for s in GUARDED_STEPS if upstream_value(context, s) is None), "unknown")
        target = self.target_config()
        entry = target.entry(model)
        touched = entry is not None and version in entry.versions
        if state not in ("canary", "production") and not touched:
            target.host.remove_staged(model, version)
            raise AirflowSkipException(f"{model} v{version} never reached serving ({state}): production untouched")
        rollout = upstream_value(context, self.rollout_task_id) or {}
        previous = rollout.get("stable")
        if previous is None:
            production = self.registry.get_model(model).get("version")
            previous = production if production != version else None
        try:
            restored = self._restore(target, model, version, previous)
        except Exception as exc:
            raise AirflowFailException(
                f"ROLLBACK OF {model} v{version} ON {target.target.name} FAILED: {exc}. By hand: check the serving "
                f"container `{target.target.name}` ({target.target.image}), make {target.config_path} serve "
                + (f"v{previous} labelled stable" if previous is not None else f"no version of {model}")
                + ", reload it (or restart the container), then mark the versions in the registry."
            ) from exc
        reason = f"{failed_step} failed"
        health = self.registry.request("GET", f"/v1/models/{model}/health", params={"limit": 1})["records"]
        if health and health[0]["version"] == version and health[0]["details"].get("problems"):
            reason += ": " + "; ".join(health[0]["details"]["problems"])
        self._record(context, model, version, previous, state, reason, target.target.name)
        message = f"{model} v{version} rolled back on {target.target.name} after {reason}; " + (
            f"v{previous} serves as stable" if previous is not None else "no version of it is served"
        )
        for notifier in self.notifiers:
            if isinstance(notifier, DeploymentAlertNotifier) and not notifier.message:
                notifier.message = message
            notifier.notify(context)
        self.log.warning(message)
        return {
            "model": model,
            "version": version,
            "restored": previous,
            "failed_step": failed_step,
            "served": restored,
        }

    def _restore(self, target: Any, model: str, version: int, previous: int | None) -> list[int]:
        with target.locked():
            entry = target.entry(model)
            if previous is None:
                target.apply(with_entry(target.current(), None, model))
                restored: list[int] = []
            else:
                base_path = entry.base_path if entry else target.host.container_base_path(model)
                kept = tuple(sorted({v for v in (entry.versions if entry else ()) if v != version} | {previous}))
                target.apply(
                    with_entry(
                        target.current(),
                        ServedModel(name=model, base_path=base_path, versions=kept, labels={"stable": previous}),
                        model,
                    )
                )
                target.serving.wait_until_available(model, previous, deadline_s=self.available_timeout_s)
                target.serving.metadata(model, label="stable")  # it answers
                restored = list(kept)
            if entry is not None and version in entry.versions:
                target.serving.wait_until_unloaded(model, version, deadline_s=self.available_timeout_s)
            target.host.remove_staged(model, version)
            return restored

    def _record(
        self, context: Any, model: str, version: int, previous: int | None, state: str, reason: str, target: str
    ) -> None:
        lineage = self.lineage(context)
        current = self.registry.get_version(model, version)["state"]
        if current in ("canary", "production"):
            self.registry.transition(
                model, version, "rolled_back", reason=reason, context=lineage, details={"target": target}
            )
        if previous is not None:
            if self.registry.get_version(model, previous)["state"] == "superseded":
                self.registry.transition(
                    model, previous, "production", reason=f"restored by rollback of v{version}", context=lineage
                )
            self.registry.set_deployment(model, target, "stable", previous, context=lineage)
        else:
            self.registry.request(
                "DELETE",
                f"/v1/models/{model}/deployments/{target}/stable",
                params={"actor": lineage["actor"], "reason": "first deployment rolled back"},
            )
        self.registry.request(
            "DELETE",
            f"/v1/models/{model}/deployments/{target}/canary",
            params={"actor": lineage["actor"], "reason": f"v{version} rolled back"},
        )
