"""Airflow plugin: serves the model registry inside the api-server at /registry and links it from the
navigation, so `make up` needs no extra process.

This file is where the api-server composes the registry, handing it what reaches outside it:
- a rate-limit sink that sets a model's limit in the `local` target's router (RouterHook, the runtime API: no
  reload): a limit the router refuses is not stored;
- two rollback starters that trigger the `model_rollback` DAG in-process (Airflow's own
  `airflow.api.common.trigger_dag`, the api-server's database session): one for an alert's automatic rollback
  (no version: the DAG goes back to the version in production before the current one), one for the page's
  "Roll back to version". A missing or paused DAG, or Params Airflow refuses, raise: no run is started and the
  registry answers 502 RollbackNotStarted;
- an alert notifier that mails Alertmanager's new or changed alerts (tfdeploy.notifiers: Airflow's SMTP
  provider), which the registry calls after recording them."""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

from tfdeploy.registry.api import create_app

ROLLBACK_DAG = "model_rollback"
TRIGGERING_USER = "tfdeploy-registry"  # the runs' triggering user (the registry's history records who asked)


def apply_rate_limit(model: str, rps: float | None) -> None:
    from tfdeploy.hooks.router import RouterHook
    from tfdeploy.services.targets import get_target

    RouterHook(get_target("local").router_conn_id).set_limit(model, rps)


def trigger_rollback(model: str, version: int | None, reason: str, *, automatic: bool) -> str:
    """Create a queued model_rollback run (the scheduler starts it) and return its run id."""
    from airflow.api.common.trigger_dag import trigger_dag
    from airflow.models.dag import DagModel
    from airflow.utils.types import DagRunTriggeredByType, DagRunType

    dag = DagModel.get_current(ROLLBACK_DAG)
    if dag is None:
        raise LookupError(f"the {ROLLBACK_DAG} DAG is not in Airflow (not parsed yet, or removed): no run was started")
    if dag.is_paused:
        raise RuntimeError(
            f"{ROLLBACK_DAG} is paused in Airflow, so a run would wait until someone unpauses it: unpause the DAG, "
            "then retry; no run was started"
        )
    conf = {"model_name": model, "version": version, "reason": reason, "automatic": automatic}
    run = trigger_dag(
        ROLLBACK_DAG,
        triggered_by=DagRunTriggeredByType.REST_API,
        run_type=DagRunType.MANUAL,
        conf=conf,
        triggering_user_name=TRIGGERING_USER,
        note=("automatic rollback" if automatic else "rollback") + " asked through the model registry",
    )
    if run is None:
        raise RuntimeError(f"Airflow created no {ROLLBACK_DAG} run")
    return str(run.run_id)


def start_automatic_rollback(model: str, reason: str) -> str:
    """An alert's automatic rollback: no version, so model_rollback picks the newest superseded one."""
    return trigger_rollback(model, None, reason, automatic=True)


def start_rollback_to(model: str, version: int, reason: str) -> str:
    return trigger_rollback(model, version, reason, automatic=False)


def mail_alerts(alerts: list[dict[str, Any]]) -> None:
    """Alertmanager's alerts, new or changed, by mail (Airflow's SMTP provider: tfdeploy.notifiers)."""
    from tfdeploy.notifiers import alert_notifiers

    for alert in alerts:
        model = alert.get("modelName") or "-"
        summary = (alert.get("annotations") or {}).get("summary", "")
        subject = f"[tfdeploy] {alert.get('alertname')} {alert.get('status')} ({alert.get('severity')}): {model}"
        message = f"{subject}\n{summary}\nlabels: {alert.get('labels')}\nregistry: /registry/ (model {model})"
        rollback = alert.get("autoRollback")
        if rollback:
            run, note = rollback.get("runId") or "", rollback.get("note") or ""
            message += f"\nautomatic rollback: {rollback.get('status')} {run} {note}"
        for notifier in alert_notifiers(subject, message):
            notifier.notify({})


class TfdeployRegistryPlugin(AirflowPlugin):
    name = "tfdeploy_registry"
    fastapi_apps = [
        {
            "app": create_app(
                rate_limit_sink=apply_rate_limit,
                rollback_starter=start_automatic_rollback,
                rollback_starter_to=start_rollback_to,
                alert_notifier=mail_alerts,
            ),
            "url_prefix": "/registry",
            "name": "Model registry",
        }
    ]
    external_views = [
        {"name": "Model registry", "href": "/registry/", "destination": "nav", "url_route": "model-registry"}
    ]
