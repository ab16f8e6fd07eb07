"""Manual rollback to an earlier version: serve a superseded version as stable again, verify it answers, and
record it (the current production version -> rolled_back with the reason, the earlier one -> production).
The current version stays loaded, so rolling forward again is a label change."""

from __future__ import annotations

import tempfile
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from tfdeploy.hooks.model_store import ModelStoreHook
from tfdeploy.operators.rollout import ServingStep
from tfdeploy.serving.models_config import ServedModel
from tfdeploy.serving.target_config import with_entry


class ManualRollbackOperator(ServingStep):
    template_fields = (*ServingStep.template_fields, "version", "reason")

    def __init__(
        self, *, version: int | str, reason: str, webhdfs_conn_id: str = "webhdfs_default", **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.version = version
        self.reason = reason
        self.webhdfs_conn_id = webhdfs_conn_id

    def execute(self, context: Any) -> dict:
        model = self.checked_model_name()
        version = int(self.version)
        if not str(self.reason).strip():
            raise AirflowFailException("a manual rollback needs a reason (it goes into the registry's history)")
        state = self.registry.get_version(model, version)["state"]
        current = self.registry.get_model(model).get("version")
        if state == "production":
            self.log.info("%s v%s is already in production: nothing to do", model, version)
            return {"model": model, "version": version, "previous": current, "changed": False}
        if state != "superseded":
            raise AirflowFailException(
                f"{model} v{version} is {state}: only a version that was in production (superseded) can be "
                "rolled back to; deploy other versions with model_deploy"
            )
        target = self.target_config()
        with tempfile.TemporaryDirectory(prefix=f"manual-rollback-{model}-") as tmp:
            local = ModelStoreHook(self.webhdfs_conn_id).fetch(model, version, tmp)
            base_path = target.host.stage_version(str(local), model, version)
        with target.locked():
            entry = target.entry(model)
            loaded = set(entry.versions) if entry else set()
            versions = tuple(sorted((loaded & ({current} if current is not None else set())) | {version}))
            labels = {"stable": current} if current in versions and current != version else {}
            target.apply(with_entry(target.current(), ServedModel(model, base_path, versions, labels), model))
            target.serving.wait_until_available(model, version, deadline_s=self.available_timeout_s)
            target.apply(
                with_entry(target.current(), ServedModel(model, base_path, versions, {"stable": version}), model)
            )
            served = target.serving.metadata(model, label="stable")["model_spec"]["version"]
            if str(served) != str(version):
                raise AirflowFailException(f"after the rollback, stable serves v{served}, not v{version}")
        lineage = self.lineage(context)
        reason = f"manual rollback to v{version}: {self.reason}"
        if current is not None and current != version:
            self.registry.transition(model, current, "rolled_back", reason=reason, context=lineage)
        self.registry.transition(model, version, "production", reason=reason, context=lineage)
        self.registry.set_deployment(model, target.target.name, "stable", version, context=lineage, reason=reason)
        self.log.info(
            "%s: v%s is stable again on %s (v%s stays loaded); reason: %s",
            model,
            version,
            target.target.name,
            current,
            self.reason,
        )
        return {"model": model, "version": version, "previous": current, "changed": True}
