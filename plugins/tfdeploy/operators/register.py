"""Register: the published version and its lineage go into the registry (idempotent)."""

from __future__ import annotations

from typing import Any

from tfdeploy.operators.base import DeployStep


class RegisterModelOperator(DeployStep):
    """Records the version exported by `export_task_id` as `registered`, with source, HDFS URI, manifest
    checksum and the run that made it. Registering before validation keeps a rejected version on record."""

    def execute(self, context: Any) -> dict:
        model = self.checked_model_name()
        exported = self.exported(context)
        if not exported:
            raise RuntimeError(f"no export result from task {self.export_task_id!r}: run the export step first")
        lineage = self.lineage(context)
        out = self.registry.register_version(
            model,
            version=exported["version"],
            hdfsUri=exported["uri"],
            manifestSha256=exported["manifest_sha256"],
            source=exported.get("source", ""),
            reason=f"exported by {lineage['dagId']}/{lineage['runId']}",
            context=lineage,
        )
        self.log.info(
            "Registered %s version %s (%s) from %s as %s",
            model,
            out["version"],
            out["hdfsUri"],
            out["source"],
            out["state"],
        )
        return {"model": model, "version": out["version"], "state": out["state"]}
