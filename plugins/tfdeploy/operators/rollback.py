"""Roll back (automatic, when rollout, smoke or promote failed): serve the previous stable version again,
verify it answers, remove the staged candidate, record ``rolled_back`` with the failing step, and alert.
A first deployment with no previous version unloads the candidate. A failed rollback says what is left
to do by hand."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseNotifier
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from tfdeploy.core.models_config import ServedModel
from tfdeploy.core.states import ModelState
from tfdeploy.hooks.model_store import ModelStoreHook
from tfdeploy.notifiers import DeploymentAlertNotifier, alert_notifiers
from tfdeploy.operators.base import ServingStep, upstream_value
from tfdeploy.operators.diagnose import diagnose_best_effort

GUARDED_STEPS = ("rollout", "smoke", "approval", "gray_release", "promote")
SERVED = (ModelState.CANARY, ModelState.PRODUCTION)


class RollbackOperator(ServingStep):
    """Restores the stable version that served before this run (trigger rule ``one_failed``).

    :param notifiers: Airflow notifiers told about the rollback (default: ``alert_notifiers``: the log,
        `alerts.log` and a mail).
    :param webhdfs_conn_id: the HDFS provider's Connection (to stage the previous version again if needed).
    :param serving_target: the serving target's name.
    :param serving_image: the serving image; empty: the configured ``SERVING_IMAGE``.
    :param rollout_task_id: the rollout task, whose result names the stable version before this run.
    """

    def __init__(
        self,
        *,
        notifiers: list[BaseNotifier] | None = None,
        webhdfs_conn_id: str = "webhdfs_default",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("trigger_rule", "one_failed")
        super().__init__(**kwargs)
        self.notifiers = notifiers
        self.webhdfs_conn_id = webhdfs_conn_id

    def execute(self, context: Any) -> dict:
        model = self.checked_model_name()
        exported = self.exported(context)
        if not exported:
            raise AirflowSkipException("nothing was exported, so nothing reached serving: no rollback needed")
        version = int(exported["version"])
        state = self.registry.get_version(model, version).state
        failed_step = next((s for s in GUARDED_STEPS if upstream_value(context, s) is None), "unknown")
        service, canary = self.service, self.canary
        stable_entry = service.entry(model)
        in_stable = stable_entry is not None and version in stable_entry.versions
        in_canary = (entry := canary.entry(model)) is not None and version in entry.versions
        if state not in SERVED and not in_stable and not in_canary:
            canary.discard(model, version)
            service.discard(model, version)
            raise AirflowSkipException(
                f"{model} v{version} never reached serving ({state.value}): production untouched"
            )
        previous = (upstream_value(context, self.rollout_task_id) or {}).get("stable")
        if previous is None:
            production = self.registry.production_version(model)
            previous = production if production != version else None
        try:
            self.router.unroute_candidates(model)
            canary_change = canary.change(model, lambda _entry: None)
            canary.discard(model, version)
            if in_stable:
                served = self._restore(context, model, version, previous)
            else:  # the candidate never reached the stable pool: production was never touched
                served = list(stable_entry.versions) if stable_entry else []
        except Exception as exc:
            raise AirflowFailException(
                f"ROLLBACK OF {model} v{version} ON {service.name} FAILED: {exc}. By hand: check the serving "
                f"containers `{service.target.container_name}` and `{canary.target.container_name}` "
                f"({service.target.image}), make {service.host.config_path} serve "
                + (f"v{previous} labelled stable" if previous is not None else f"no version of {model}")
                + f" and {canary.host.config_path} none of it, reload them (or restart the containers), remove "
                f"{model}/{version} from the router's candidates map, then mark the versions in the registry."
            ) from exc
        reason = f"{failed_step} failed"
        self.record_route(context, model, version, "none", f"v{version} rolled back: no call reaches it")
        self.record_serving(context, canary, canary_change, f"v{version} rolled back: unloaded from the canary pool")
        health = self.registry.latest_health(model, limit=1)
        if health and health[0].version == version and health[0].details.get("problems"):
            reason += ": " + "; ".join(health[0].details["problems"])
        bundle = diagnose_best_effort(  # never fails the rollback: None when no bundle could be stored
            self,
            context,
            model,
            reason=f"v{version} rolled back after {reason}",
            registry=self.registry,
            serving_target=service.name,
            failed_task_id=failed_step if failed_step in GUARDED_STEPS else None,
            version=version,
        )
        diagnosis = bundle.path if bundle else None
        self._record(context, model, version, previous, reason, service.name, diagnosis=diagnosis)
        message = f"{model} v{version} rolled back on {service.name} after {reason}; " + (
            f"v{previous} serves as stable" if previous is not None else "no version of it is served"
        )
        if diagnosis:
            message += f". Diagnosis bundle: HDFS {diagnosis}"
        notifiers = self.notifiers if self.notifiers is not None else alert_notifiers(f"[tfdeploy] {message}", message)
        for notifier in notifiers:
            if isinstance(notifier, DeploymentAlertNotifier) and not notifier.message:
                notifier.message = message
            notifier.notify(context)
        self.log.warning(message)
        return {"model": model, "version": version, "restored": previous, "failed_step": failed_step, "served": served}

    def _restore(self, context: Any, model: str, version: int, previous: int | None) -> list[int]:
        """One config change back to ``previous`` as stable (or nothing); checks ``stable`` answers from it.

        ``previous`` is staged again from the model store first if the config no longer serves it (a promote
        that unloaded it with ``keep_versions=1`` and then failed).
        """
        service = self.service
        entry = service.entry(model)
        if previous is not None and (entry is None or previous not in entry.versions):
            record = self.registry.get_version(model, previous)
            service.stage(ModelStoreHook(self.webhdfs_conn_id), model, previous, manifest_sha256=record.manifest_sha256)

        def restore(entry: ServedModel | None) -> ServedModel | None:
            if previous is None:
                return None
            loaded = set(entry.versions) if entry else set()
            base_path = entry.base_path if entry else service.host.container_base_path(model)
            # never a version above the one restored: unversioned gRPC answers from the highest loaded
            kept = tuple(sorted(v for v in (loaded - {version}) | {previous} if v <= previous))
            return ServedModel(name=model, base_path=base_path, versions=kept, labels={"stable": previous})

        change = service.change(model, restore)
        self.record_serving(context, service, change, f"v{version} rolled back: the stable pool serves v{previous}")
        if previous is not None and (answered := service.label_version(model, "stable")) != previous:
            raise RuntimeError(f"after the rollback, stable answers from v{answered}, not v{previous}")
        service.discard(model, version)
        return list(change.after.versions) if change.after else []

    def _record(
        self,
        context: Any,
        model: str,
        version: int,
        previous: int | None,
        reason: str,
        target: str,
        *,
        diagnosis: str | None = None,
    ) -> None:
        lineage = self.lineage(context)
        if self.registry.get_version(model, version).state in SERVED:
            details = {"target": target} | ({"diagnosis": diagnosis} if diagnosis else {})
            self.registry.transition(
                model, version, ModelState.ROLLED_BACK, reason=reason, details=details, context=lineage
            )
        if previous is not None:
            if self.registry.get_version(model, previous).state == ModelState.SUPERSEDED:
                self.registry.transition(
                    model,
                    previous,
                    ModelState.PRODUCTION,
                    reason=f"restored by rollback of v{version}",
                    context=lineage,
                )
            self.registry.set_deployment(model, target, "stable", previous, context=lineage)
        else:
            self.registry.clear_deployment(
                model, target, "stable", reason="first deployment rolled back", context=lineage
            )
        self.registry.clear_deployment(model, target, "canary", reason=f"v{version} rolled back", context=lineage)
        self.registry.set_traffic(
            model,
            stable_version=previous,
            canary_version=None,
            canary_weight=0,
            reason=f"v{version} rolled back after {reason}: no call reaches it",
            context=lineage,
        )
