"""Manual rollback to an earlier version: the stable pool serves a superseded version as stable again and only
it (so every unversioned call, REST or gRPC, reaches it), checked by asking ``/labels/stable``; the registry
records it (the current production version -> rolled_back with the reason, the earlier one -> production)."""

from __future__ import annotations

from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from tfdeploy.core.models_config import ServedModel
from tfdeploy.core.states import ModelState
from tfdeploy.hooks.model_store import ModelStoreHook
from tfdeploy.operators.base import ServingStep, typed


class ManualRollbackOperator(ServingStep):
    """Puts ``version`` (a superseded one) back into production on the serving target, with a reason.

    :param version: the earlier version to serve again (templated; an int after rendering; None: the newest
        superseded version, i.e. the one in production before the current one).
    :param reason: why, recorded in the registry's history (templated); ``automatic: ...`` marks a rollback
        started by the health checks or an alert.
    :param webhdfs_conn_id: the HDFS provider's Connection (to stage the version if it is not on the host).
    :param serving_target: the serving target's name.
    :param serving_image: the serving image; empty: the configured ``SERVING_IMAGE``.
    """

    template_fields = (*ServingStep.template_fields, "version", "reason")

    def __init__(
        self, *, version: int | str | None, reason: str, webhdfs_conn_id: str = "webhdfs_default", **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.version = version
        self.reason = reason
        self.webhdfs_conn_id = webhdfs_conn_id

    def execute(self, context: Any) -> dict:
        model = self.checked_model_name()
        if not isinstance(self.reason, str) or not self.reason.strip():
            raise AirflowFailException("a manual rollback needs a reason (it goes into the registry's history)")
        version = typed(self.version, int, "version", optional=True)
        if version is None:
            earlier = [v.version for v in self.registry.list_versions(model, state=ModelState.SUPERSEDED.value)]
            if not earlier:
                raise AirflowFailException(
                    f"{model} has no earlier version to go back to (none superseded): nothing was changed"
                )
            version = max(earlier)
            self.log.info("no version given: rolling %s back to v%s, the newest superseded version", model, version)
        record = self.registry.get_version(model, version)
        current = self.registry.production_version(model)
        if record.state == ModelState.PRODUCTION:
            self.log.info("%s v%s is already in production: nothing to do", model, version)
            return {"model": model, "version": version, "previous": current, "changed": False}
        if record.state != ModelState.SUPERSEDED:
            raise AirflowFailException(
                f"{model} v{version} is {record.state.value}: only a version that was in production (superseded) "
                "can be rolled back to; deploy other versions with model_deploy"
            )
        service = self.service
        base_path = service.stage(
            ModelStoreHook(self.webhdfs_conn_id), model, version, manifest_sha256=record.manifest_sha256
        )

        # the version alone: the rolled-back one leaves the stable pool (it loads before the other unloads)
        change = service.change(model, lambda _entry: ServedModel(model, base_path, (version,), {"stable": version}))
        if (answered := service.label_version(model, "stable")) != version:
            raise AirflowFailException(f"after the rollback, stable answers from v{answered}, not v{version}")
        lineage = self.lineage(context)
        kind = "automatic" if self.reason.startswith("automatic") else "manual"
        reason = f"{kind} rollback to v{version}: {self.reason}"
        self.record_serving(context, service, change, reason)
        if current is not None and current != version:
            self.registry.transition(model, current, ModelState.ROLLED_BACK, reason=reason, context=lineage)
        self.registry.transition(model, version, ModelState.PRODUCTION, reason=reason, context=lineage)
        self.registry.set_deployment(model, service.name, "stable", version, reason=reason, context=lineage)
        self.registry.set_traffic(
            model, stable_version=version, canary_version=None, canary_weight=0, reason=reason, context=lineage
        )
        self.log.info(
            "%s: v%s is stable again on %s (v%s unloaded from the stable pool); reason: %s",
            model,
            version,
            service.name,
            current,
            self.reason,
        )
        return {"model": model, "version": version, "previous": current, "changed": True}
