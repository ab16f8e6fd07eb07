"""Promote: the candidate joins the stable pool as ``stable``; the previous stable stays loaded for a fast
rollback (how many versions stay is ``keep_versions``), older ones unload. Then calls naming the candidate are
routed to the stable pool and the canary pool lets it go. Registry: candidate production, previous superseded."""

from __future__ import annotations

from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from tfdeploy.core.models_config import ServedModel
from tfdeploy.core.states import ModelState
from tfdeploy.hooks.model_store import ModelStoreHook
from tfdeploy.operators.base import ServingStep, typed


def kept_versions(loaded: tuple[int, ...], candidate: int, keep: int) -> tuple[int, ...]:
    """The ``keep`` newest of ``loaded`` plus the candidate, which is never dropped whatever its number.

    Versions numbered above the candidate are dropped: TF Serving answers an unversioned gRPC call from the
    highest loaded version, and the stable pool's unversioned calls must reach production."""
    older = sorted(v for v in set(loaded) if v < candidate)
    return tuple(sorted([*older, candidate][-keep:]))


class PromoteOperator(ServingStep):
    """Serves the candidate as ``stable`` in the stable pool, unloads versions beyond ``keep_versions``, moves
    its routes from the canary pool to the stable pool, and records production.

    :param keep_versions: how many versions stay loaded in the stable pool (the candidate and the newest older
        ones), for a fast rollback; templated (an int after rendering).
    :param webhdfs_conn_id: the HDFS provider's Connection (the candidate is staged into the stable pool).
    :param serving_target: the serving target's name.
    :param serving_image: the serving image; empty: the configured ``SERVING_IMAGE``.
    """

    template_fields = (*ServingStep.template_fields, "keep_versions")

    def __init__(
        self, *, keep_versions: int | str = 2, webhdfs_conn_id: str = "webhdfs_default", **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(keep_versions, int) and keep_versions < 1:
            raise ValueError(f"{self.task_id}: keep_versions must be >= 1, got {keep_versions}")
        self.keep_versions = keep_versions
        self.webhdfs_conn_id = webhdfs_conn_id

    def execute(self, context: Any) -> dict:
        model = self.checked_model_name()
        version = self.candidate(context)
        keep = typed(self.keep_versions, int, "keep_versions")
        if keep < 1:
            raise AirflowFailException(f"keep_versions must be >= 1, got {keep}")
        record = self.registry.get_version(model, version)
        if record.state not in (ModelState.CANARY, ModelState.PRODUCTION):
            raise AirflowFailException(f"{model} v{version} is {record.state.value}: roll it out first")
        service = self.service
        base_path = service.stage(
            ModelStoreHook(self.webhdfs_conn_id), model, version, manifest_sha256=record.manifest_sha256
        )

        def promote(entry: ServedModel | None) -> ServedModel:
            kept = kept_versions(entry.versions if entry else (), version, keep)
            return ServedModel(name=model, base_path=base_path, versions=kept, labels={"stable": version})

        change = service.change(model, promote)
        self.router.unroute_candidates(model)
        canary_change = self.canary.change(model, lambda _entry: None)
        lineage = self.lineage(context)
        self.record_serving(context, service, change, f"v{version} promoted: stable, replica by replica")
        self.record_route(
            context, model, version, "stable", f"v{version} promoted: calls naming it go to the stable pool"
        )
        self.record_serving(context, self.canary, canary_change, f"v{version} promoted: the canary pool lets it go")
        if record.state != ModelState.PRODUCTION:
            self.registry.transition(
                model, version, ModelState.PRODUCTION, reason=f"promoted on {service.name}", context=lineage
            )
        self.registry.set_deployment(model, service.name, "stable", version, context=lineage)
        self.registry.clear_deployment(model, service.name, "canary", reason="promoted to stable", context=lineage)
        self.registry.set_traffic(
            model,
            stable_version=version,
            canary_version=None,
            canary_weight=0,
            reason=f"v{version} promoted: the stable pool serves it to every call",
            context=lineage,
        )
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
