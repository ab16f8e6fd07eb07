"""Promote: `stable` moves to the candidate; the previous stable stays loaded for a fast rollback (how many
versions stay is `keep_versions`) and older ones unload. Registry: candidate production, previous superseded."""

from __future__ import annotations

from typing import Any

from tfdeploy.operators.rollout import ServingStep
from tfdeploy.serving.models_config import ServedModel
from tfdeploy.serving.target_config import with_entry


class PromoteOperator(ServingStep):
    template_fields = (*ServingStep.template_fields, "keep_versions")

    def __init__(self, *, keep_versions: int | str = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(keep_versions, int) and keep_versions < 1:
            raise ValueError(f"{self.task_id}: keep_versions must be >= 1, got {keep_versions}")
        self.keep_versions = keep_versions

    def execute(self, context: Any) -> dict:
        model = self.checked_model_name()
        version = self.candidate(context)
        keep = int(self.keep_versions)
        target = self.target_config()
        with target.locked():
            entry = target.entry(model)
            if entry is None or version not in entry.versions:
                raise RuntimeError(f"{model} v{version} is not in {target.target.name}'s config: roll it out first")
            kept = tuple(sorted(set(entry.versions) | {version})[-keep:])
            if version not in kept:  # the candidate is never dropped, whatever its number
                kept = (*kept[1:], version) if keep > 1 else (version,)
            promoted = ServedModel(
                name=model, base_path=entry.base_path, versions=tuple(sorted(kept)), labels={"stable": version}
            )
            target.apply(with_entry(target.current(), promoted, model))
            target.serving.wait_until_available(model, version, deadline_s=self.available_timeout_s)
            dropped = sorted(set(entry.versions) - set(kept))
            for old in dropped:
                target.serving.wait_until_unloaded(model, old, deadline_s=self.available_timeout_s)
                target.host.remove_staged(model, old)
        lineage = self.lineage(context)
        if self.registry.get_version(model, version)["state"] != "production":
            self.registry.transition(
                model, version, "production", reason=f"promoted on {target.target.name}", context=lineage
            )
        self.registry.set_deployment(model, target.target.name, "stable", version, context=lineage)
        self.registry.request(
            "DELETE",
            f"/v1/models/{model}/deployments/{target.target.name}/canary",
            params={"actor": lineage["actor"], "interface": lineage["interface"], "reason": "promoted to stable"},
        )
        self.log.info(
            "%s v%s is stable on %s; loaded versions %s; unloaded %s",
            model,
            version,
            target.target.name,
            list(kept),
            dropped,
        )
        return {"model": model, "version": version, "loaded": list(kept), "unloaded": dropped}
