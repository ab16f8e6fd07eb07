"""Promote: ``stable`` moves to the candidate; the previous stable stays loaded for a fast rollback (how many
versions stay is ``keep_versions``) and older ones unload. Registry: candidate production, previous superseded."""

from __future__ import annotations

from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from tfdeploy.core.models_config import ServedModel
from tfdeploy.core.states import ModelState
from tfdeploy.operators.base import ServingStep, typed


def kept_versions(loaded: tuple[int, ...], candidate: int, keep: int) -> tuple[int, ...]:
    """The ``keep`` newest of ``loaded`` plus the candidate, which is never dropped whatever its number."""
    kept = sorted(set(loaded) | {candidate})[-keep:]
    if candidate not in kept:
        kept = [*kept[1:], candidate] if keep > 1 else [candidate]
    return tuple(sorted(kept))


class PromoteOperator(ServingStep):
    """Points ``stable`` at the candidate, unloads versions beyond ``keep_versions`` and records production.

    :param keep_versions: how many versions stay loaded (the candidate and the newest others), for a fast
        rollback; templated (an int after rendering).
    :param serving_target: the serving target's name.
    :param serving_image: the serving image; empty: the configured ``SERVING_IMAGE``.
    """

    template_fields = (*ServingStep.template_fields, "keep_versions")

    def __init__(self, *, keep_versions: int | str = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(keep_versions, int) and keep_versions < 1:
            raise ValueError(f"{self.task_id}: keep_versions must be >= 1, got {keep_versions}")
        self.keep_versions = keep_versions

    def execute(self, context: Any) -> dict:
        model = self.checked_model_name()
        version = self.candidate(context)
        keep = typed(self.keep_versions, int, "keep_versions")
        if keep < 1:
            raise AirflowFailException(f"keep_versions must be >= 1, got {keep}")
        service = self.service

        def promote(entry: ServedModel | None) -> ServedModel:
            if entry is None or version not in entry.versions:
                raise AirflowFailException(f"{model} v{version} is not served on {service.name}: roll it out first")
            kept = kept_versions(entry.versions, version, keep)
            return ServedModel(name=model, base_path=entry.base_path, versions=kept, labels={"stable": version})

        change = service.change(model, promote)
        lineage = self.lineage(context)
        if self.registry.get_version(model, version).state != ModelState.PRODUCTION:
            self.registry.transition(
                model, version, ModelState.PRODUCTION, reason=f"promoted on {service.name}", context=lineage
            )
        self.registry.set_deployment(model, service.name, "stable", version, context=lineage)
        self.registry.clear_deployment(model, service.name, "canary", reason="promoted to stable", context=lineage)
        loaded = list(change.after.versions) if change.after else []
        self.log.info(
            "%s v%s is stable on %s; loaded versions %s; unloaded %s",
            model,
            version,
            service.name,
            loaded,
            change.dropped,
        )
        return {"model": model, "version": version, "loaded": loaded, "unloaded": change.dropped}
