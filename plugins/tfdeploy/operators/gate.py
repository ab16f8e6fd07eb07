"""The release gate: the run's last word. It fails the run unless the candidate reached production, so
Airflow's run list tells the truth (a run whose only leaf is a successful rollback would show success)."""

from __future__ import annotations

from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from tfdeploy.core.states import ModelState
from tfdeploy.operators.base import DeployStep


class ReleaseGateOperator(DeployStep):
    """Fails the run unless the version named by ``export_task_id``'s result is in production.

    :param model_name: the model (templated).
    :param registry_conn_id: Connection of the model registry.
    :param export_task_id: the task whose result names the version (``export``, or ``rollback_to``).
    """

    renews_lease = False  # it only reads, and runs beside (or after) release_lock

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", "all_done")
        super().__init__(**kwargs)

    def execute(self, context: Any) -> dict:
        model = self.checked_model_name()
        exported = self.exported(context)
        if not exported:
            raise AirflowFailException(f"release of {model} failed before a version was exported")
        version = int(exported["version"])
        record = self.registry.get_version(model, version)
        if record.state != ModelState.PRODUCTION:
            why = "; ".join(record.validation_report.get("problems", [])) if record.state == ModelState.REJECTED else ""
            raise AirflowFailException(
                f"release did not reach production: {model} v{version} is {record.state.value}"
                + (f" ({why})" if why else "")
            )
        self.log.info("%s v%s is in production", model, version)
        return {"model": model, "version": version, "state": record.state.value}
