"""What every deployment step shares: the model name check, the registry hook and the run's lineage."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from airflow.sdk import BaseOperator

from tfdeploy.hooks.registry import RegistryHook
from tfdeploy.lineage import run_context
from tfdeploy.registry.names import validate_model_name


class DeployStep(BaseOperator):
    """Base of the pipeline's operators. `model_name` may be templated (e.g. from params)."""

    template_fields: tuple[str, ...] = ("model_name",)
    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        model_name: str,
        registry_conn_id: str = RegistryHook.default_conn_name,
        export_task_id: str = "export",
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.export_task_id = export_task_id
        if not isinstance(model_name, str) or not model_name:
            raise ValueError(f"{self.task_id}: model_name is required")
        if "{{" not in model_name:
            validate_model_name(model_name)
        self.model_name = model_name
        self.registry_conn_id = registry_conn_id

    @cached_property
    def registry(self) -> RegistryHook:
        return RegistryHook(self.registry_conn_id)

    def lineage(self, context: Any) -> dict[str, str]:
        return run_context(context)

    def exported(self, context: Any) -> dict | None:
        """The export step's result (model, version, uri, manifest_sha256, ...), or None if it did not run."""
        return upstream_value(context, self.export_task_id)

    def checked_model_name(self) -> str:
        """After templating: the rendered name must still be safe (TF Serving name, path segment)."""
        return validate_model_name(self.model_name)


def upstream_value(context: Any, task_id: str, key: str = "return_value") -> Any:
    return context["ti"].xcom_pull(task_ids=task_id, key=key)
