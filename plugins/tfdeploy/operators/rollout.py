"""Roll out: stage the candidate from HDFS onto the serving host, load it next to the current stable
version, wait until it is AVAILABLE, then label it `canary` (labels need AVAILABLE versions: two reloads)."""

from __future__ import annotations

import tempfile
from typing import Any

from airflow.sdk.exceptions import AirflowSkipException

from tfdeploy.hooks.model_store import ModelStoreHook
from tfdeploy.operators.base import DeployStep
from tfdeploy.serving.models_config import ServedModel
from tfdeploy.serving.target_config import TargetConfig, with_entry
from tfdeploy.serving.targets import get_target


class ServingStep(DeployStep):
    """A step that changes what a serving target serves."""

    template_fields = (*DeployStep.template_fields, "serving_target", "serving_image")

    def __init__(
        self,
        *,
        serving_target: str = "local",
        serving_image: str | None = None,
        rollout_task_id: str = "rollout",
        available_timeout_s: float = 300,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.serving_target = serving_target
        self.serving_image = serving_image
        self.rollout_task_id = rollout_task_id
        self.available_timeout_s = available_timeout_s

    def target_config(self) -> TargetConfig:
        return TargetConfig(get_target(self.serving_target, self.serving_image or None))

    def candidate(self, context: Any) -> int:
        exported = self.exported(context)
        if not exported:
            raise RuntimeError(f"no export result from task {self.export_task_id!r}: nothing to serve")
        return int(exported["version"])


class RolloutOperator(ServingStep):
    def __init__(self, *, webhdfs_conn_id: str = "webhdfs_default", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.webhdfs_conn_id = webhdfs_conn_id

    def execute(self, context: Any) -> dict:
        model = self.checked_model_name()
        version = self.candidate(context)
        state = self.registry.get_version(model, version)["state"]
        if state == "production":
            raise AirflowSkipException(f"{model} v{version} is already in production: nothing to roll out")
        if state not in ("validated", "canary", "rolled_back"):
            raise RuntimeError(f"{model} v{version} is {state}; only a validated version can be rolled out")
        target = self.target_config()
        stable = self.registry.get_model(model).get("version")
        with tempfile.TemporaryDirectory(prefix=f"rollout-{model}-") as tmp:
            local = ModelStoreHook(self.webhdfs_conn_id).fetch(model, version, tmp)
            base_path = target.host.stage_version(str(local), model, version)
        self.log.info("Staged %s v%s on %s at %s", model, version, target.target.name, base_path)
        with target.locked():
            previous = target.entry(model)
            versions = tuple(sorted({v for v in (stable, version) if v is not None}))
            stable_label = {"stable": stable} if stable is not None and stable != version else {}
            phase1 = ServedModel(name=model, base_path=base_path, versions=versions, labels=stable_label)
            created = target.apply(with_entry(target.current(), phase1, model))
            target.serving.wait_until_available(model, version, deadline_s=self.available_timeout_s)
            self.log.info(
                "%s v%s is AVAILABLE on %s (container %s)",
                model,
                version,
                target.target.name,
                "created" if created else "reloaded",
            )
            phase2 = ServedModel(
                name=model, base_path=base_path, versions=versions, labels={**stable_label, "canary": version}
            )
            target.apply(with_entry(target.current(), phase2, model))
        lineage = self.lineage(context)
        if state != "canary":
            self.registry.transition(
                model, version, "canary", reason=f"serving on {target.target.name}", context=lineage
            )
        self.registry.set_deployment(model, target.target.name, "canary", version, context=lineage)
        self.log.info(
            "%s: serving versions %s on %s; stable=%s canary=%s",
            model,
            list(versions),
            target.target.name,
            stable,
            version,
        )
        return {
            "model": model,
            "version": version,
            "target": target.target.name,
            "stable": stable,
            "previous": None
            if previous is None
            else {
                "versions": list(previous.versions),
                "labels": dict(previous.labels),
                "base_path": previous.base_path,
            },
        }
