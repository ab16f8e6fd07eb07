"""Roll out: stage the candidate from HDFS into the target's CANARY pool (verified against the registered
manifest), load it there labelled ``canary`` (one config transaction, in which the serving target service applies
TF Serving's label rule), then route versioned REST calls for it to that pool. The stable pool, which takes every
unversioned call, never loads a candidate: production traffic cannot reach it before promotion, whatever its
version number."""

from __future__ import annotations

from typing import Any

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from tfdeploy.core.models_config import ServedModel
from tfdeploy.core.states import ModelState
from tfdeploy.hooks.model_store import ModelStoreHook
from tfdeploy.operators.base import ServingStep

ROLLABLE = (ModelState.VALIDATED, ModelState.CANARY, ModelState.ROLLED_BACK)


class RolloutOperator(ServingStep):
    """Serves the candidate in the canary pool, labelled ``canary``, and routes calls naming it there; the
    registry records it.

    :param webhdfs_conn_id: the HDFS provider's Connection (the model store the candidate is fetched from).
    :param serving_target: the serving target's name.
    :param serving_image: the serving image; empty: the configured ``SERVING_IMAGE``.
    :param available_timeout_s: how long the candidate may take to become AVAILABLE.
    """

    def __init__(self, *, webhdfs_conn_id: str = "webhdfs_default", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.webhdfs_conn_id = webhdfs_conn_id

    def _keep_serving_production(self, model: str, version: int, manifest_sha256: str) -> None:
        """Nothing to roll out, but the registry's production version must be what the stable pool serves: if its
        entry or its containers are gone (e.g. after `make down`), they are put back."""
        service = self.service
        entry = service.entry(model)
        if entry is not None and version in entry.versions and entry.labels.get("stable") == version:
            service.change(model, lambda current: current)  # unchanged: only makes sure its replicas run
            return
        self.log.warning(
            "%s v%s is in production but the stable pool does not serve it: serving it again", model, version
        )
        base_path = service.stage(ModelStoreHook(self.webhdfs_conn_id), model, version, manifest_sha256=manifest_sha256)
        service.change(model, lambda _current: ServedModel(model, base_path, (version,), {"stable": version}))

    def execute(self, context: Any) -> dict:
        model = self.checked_model_name()
        version = self.candidate(context)
        exported = self.exported(context) or {}
        record = self.registry.get_version(model, version)
        if exported.get("action") == "noop" or record.state == ModelState.PRODUCTION:
            self._keep_serving_production(model, version, record.manifest_sha256)
            raise AirflowSkipException(exported.get("reason") or f"{model} v{version} is already in production")
        if record.state not in ROLLABLE:
            raise AirflowFailException(
                f"{model} v{version} is {record.state.value}; only a validated version can be rolled out"
            )
        stable = self.registry.production_version(model)
        canary = self.canary
        base_path = canary.stage(
            ModelStoreHook(self.webhdfs_conn_id), model, version, manifest_sha256=record.manifest_sha256
        )
        entry = ServedModel(name=model, base_path=base_path, versions=(version,), labels={"canary": version})
        change = canary.change(model, lambda _current: entry)
        self.router.unroute_candidates(model)  # a route left by a run whose rollback failed goes first
        self.router.route_candidate(model, version)
        lineage = self.lineage(context)
        self.record_serving(context, canary, change, f"v{version} loaded in the canary pool as a candidate")
        self.record_route(context, model, version, "canary", "/versions and /labels/canary calls go to the candidate")
        if record.state != ModelState.CANARY:
            self.registry.transition(
                model, version, ModelState.CANARY, reason=f"serving in {canary.name}'s canary pool", context=lineage
            )
        self.registry.set_deployment(model, canary.name, "canary", version, context=lineage)
        self.registry.set_traffic(
            model,
            stable_version=stable,
            canary_version=version,
            canary_weight=0,
            reason=f"v{version} loaded in the canary pool: no unversioned call reaches it yet",
            context=lineage,
        )
        self.log.info(
            "%s: v%s serves in %s's canary pool (%d reload(s)%s), routed for /versions/%s and /labels/canary; "
            "stable v%s keeps every unversioned call",
            model,
            version,
            canary.name,
            change.phases,
            ", container created" if change.container_created else "",
            version,
            stable,
        )
        return {"model": model, "version": version, "target": canary.name, "stable": stable}
