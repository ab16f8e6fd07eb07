"""Register: the published version and its lineage go into the registry (idempotent)."""

from __future__ import annotations

from typing import Any

from tfdeploy.operators.base import DeployStep


class RegisterModelOperator(DeployStep):
    """Records the version exported by ``export_task_id`` as ``registered``, with its source, HDFS URI, manifest
    checksum and the run that made it (registering the same content again changes nothing). Registering
    before validation keeps a rejected version on record.

    :param model_name: the model (templated).
    :param registry_conn_id: Connection of the model registry.
    :param export_task_id: the export task whose result to register.
    """

    def execute(self, context: Any) -> dict:
        model = self.checked_model_name()
        exported = self.exported(context)
        if not exported:
            raise RuntimeError(f"no export result from task {self.export_task_id!r}: run the export step first")
        lineage = self.lineage(context)
        record = self.registry.register_version(
            model,
            version=int(exported["version"]),
            hdfs_uri=exported["uri"],
            manifest_sha256=exported["manifest_sha256"],
            source=exported.get("source", ""),
            reason=f"exported by {lineage['dagId']}/{lineage['runId']}",
            context=lineage,
        )
        self.log.info(
            "Registered %s version %s (%s) from %s as %s",
            model,
            record.version,
            record.hdfs_uri,
            record.source,
            record.state.value,
        )
        return {"model": model, "version": record.version, "state": record.state.value}
