"""Roll out: stage the candidate from HDFS onto the serving host (verified against the registered manifest),
load it next to the current stable version and label it ``canary``: one config transaction, in which the
serving target service applies TF Serving's label rule (the label only once the version is AVAILABLE)."""

from __future__ import annotations

from typing import Any

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from tfdeploy.core.models_config import ServedModel
from tfdeploy.core.states import ModelState
from tfdeploy.hooks.model_store import ModelStoreHook
from tfdeploy.operators.base import ServingStep

ROLLABLE = (ModelState.VALIDATED, ModelState.CANARY, ModelState.ROLLED_BACK)


class RolloutOperator(ServingStep):
    """Serves the candidate beside the stable version, labelled ``canary``; the registry records it.

    :param webhdfs_conn_id: the HDFS provider's Connection (the model store the candidate is fetched from).
    :param serving_target: the serving target's name.
    :param serving_image: the serving image; empty: the configured ``SERVING_IMAGE``.
    :param available_timeout_s: how long the candidate may take to become AVAILABLE.
    """

    def __init__(self, *, webhdfs_conn_id: str = "webhdfs_default", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.webhdfs_conn_id = webhdfs_conn_id

    def execute(self, context: Any) -> dict:
        model = self.checked_model_name()
        version = self.candidate(context)
        exported = self.exported(context) or {}
        if exported.get("action") == "noop":
            raise AirflowSkipException(exported.get("reason") or f"{model} v{version}: nothing to roll out")
        record = self.registry.get_version(model, version)
        if record.state == ModelState.PRODUCTION:
            raise AirflowSkipException(f"{model} v{version} is already in production: nothing to roll out")
        if record.state not in ROLLABLE:
            raise AirflowFailException(
                f"{model} v{version} is {record.state.value}; only a validated version can be rolled out"
            )
        stable = self.registry.production_version(model)
        service = self.service
        base_path = service.stage(
            ModelStoreHook(self.webhdfs_conn_id), model, version, manifest_sha256=record.manifest_sha256
        )
        labels = {"stable": stable} if stable is not None and stable != version else {}
        entry = ServedModel(
            name=model,
            base_path=base_path,
            versions=tuple(sorted({v for v in (stable, version) if v is not None})),
            labels={**labels, "canary": version},
        )
        change = service.change(model, lambda _current: entry)
        lineage = self.lineage(context)
        if record.state != ModelState.CANARY:
            self.registry.transition(
                model, version, ModelState.CANARY, reason=f"serving on {service.name}", context=lineage
            )
        self.registry.set_deployment(model, service.name, "canary", version, context=lineage)
        self.log.info(
            "%s: serving versions %s on %s; stable=%s canary=%s (%d reload(s)%s)",
            model,
            list(entry.versions),
            service.name,
            stable,
            version,
            change.phases,
            ", container created" if change.container_created else "",
        )
        return {"model": model, "version": version, "target": service.name, "stable": stable}
