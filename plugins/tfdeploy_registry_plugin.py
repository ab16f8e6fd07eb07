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
  provider), which the registry calls after recording them;
- a performance source: a model's live request rate, error rate, p50 and p99 per pool over the last 5 minutes,
  from Prometheus (PrometheusHook, Connection prometheus_default; TF Serving's request_count and latency histogram
  as the stack's Prometheus labels them). Prometheus unreachable: it raises, the registry answers
  ``available: false`` with the reason;
- a logs source: the recent log lines of every replica of the `local` target's stable and canary pools
  (ServingHostHook.server_logs on the Docker engine), the lines that mention the model (the whole tail when none
  does), each through the redactor the diagnosis bundles use (tfdeploy.core.redaction, knowing the configured
  secrets);
- WebHDFS' base URL (the ``webhdfs_default`` Connection, else the stack's settings), for the diagnosis bundles'
  download links;
- a run lookup: who triggered an Airflow run and how (the api-server's database), so what the pipeline's service
  token writes is recorded as that user's, and no worker holds Airflow credentials to find out."""

from __future__ import annotations

import json
import math
import os
import re
import threading
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow.plugins_manager import AirflowPlugin

from tfdeploy.registry.api import create_app

if TYPE_CHECKING:
    from tfdeploy.core.redaction import Redactor
    from tfdeploy.hooks.prometheus import PrometheusHook

ROLLBACK_DAG = "model_rollback"
TRIGGERING_USER = "tfdeploy-registry"  # the runs' triggering user (the registry's history records who asked)
SERVING_TARGET = "local"
PERFORMANCE_WINDOW = "5m"
PROMETHEUS_TIMEOUT_S = 5.0  # each query; the first that fails ends the answer (the page waits at most this long)
LOG_SCAN_LINES = 2000  # each container's last lines searched for the ones mentioning the model
DOCKER_TIMEOUT_S = 10
REDACTOR_TTL_S = 60.0  # the configured secrets are read again after this long


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


# how a run was started, as the registry's history names it: by its run type, else by Airflow's `triggered_by`
_RUN_TYPE_INTERFACE = {"scheduled": "schedule", "asset_triggered": "asset", "backfill": "backfill"}
_TRIGGERED_BY_INTERFACE = {
    "ui": "ui",
    "rest_api": "rest_api",
    "cli": "cli",
    "operator": "pipeline",
    "timetable": "schedule",
    "asset": "asset",
    "backfill": "backfill",
}


def airflow_run(dag_id: str, run_id: str) -> dict[str, str] | None:
    """Who triggered an Airflow run and through what (the api-server's own database session), None if no such
    run: what the registry records for the pipeline's writes, so no worker needs Airflow credentials for it."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
        if run is None:
            return None
        run_type = str(getattr(run.run_type, "value", run.run_type))
        triggered_by = str(getattr(run.triggered_by, "value", run.triggered_by) or "").lower()
        scheduled = run_type in _RUN_TYPE_INTERFACE
        return {
            "user": run.triggering_user_name or ("scheduler" if scheduled else "unknown"),
            "interface": _RUN_TYPE_INTERFACE.get(run_type) or _TRIGGERED_BY_INTERFACE.get(triggered_by) or "unknown",
        }


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


def performance_queries(model: str, window: str = PERFORMANCE_WINDOW) -> dict[str, str]:
    """PromQL over TF Serving's families for ``model``, by pool (the label the stack's Prometheus gives every
    serving replica: include/monitoring/rules.yml): request rate by status, and the p50 / p99 of the latency
    histogram (microseconds; OK requests only)."""
    name = model.replace("\\", "\\\\").replace('"', '\\"')
    selector = f'{{model_name="{name}"}}'
    buckets = f"sum by (pool, le) (rate(:tensorflow:serving:request_latency_bucket{selector}[{window}]))"
    return {
        "requests": f"sum by (pool, status) (rate(:tensorflow:serving:request_count{selector}[{window}]))",
        "p50": f"histogram_quantile(0.5, {buckets})",
        "p99": f"histogram_quantile(0.99, {buckets})",
    }


def model_performance(model: str, prometheus: PrometheusHook | None = None) -> dict[str, Any]:
    """``model``'s live performance per pool over the last 5 minutes: requests per second, the share of them
    answered with a status other than OK (null without requests), p50 and p99 latency in milliseconds (null
    without successful requests). Raises PrometheusError when Prometheus cannot be asked."""
    if prometheus is None:
        from tfdeploy.hooks.prometheus import PrometheusHook

        prometheus = PrometheusHook(timeout=PROMETHEUS_TIMEOUT_S)
    queries = performance_queries(model)
    pools: dict[str, dict[str, float | None]] = {}

    def row(metric: dict[str, str]) -> dict[str, float | None]:
        empty: dict[str, float | None] = {"requestRate": None, "errorRate": None, "p50Ms": None, "p99Ms": None}
        return pools.setdefault(metric.get("pool") or "none", empty)

    totals: dict[str, float] = {}
    failed: dict[str, float] = {}
    for result in prometheus.query(queries["requests"]):
        pool = result["metric"].get("pool") or "none"
        row(result["metric"])
        value = result["value"] if math.isfinite(result["value"]) else 0.0
        totals[pool] = totals.get(pool, 0.0) + value
        if result["metric"].get("status") != "OK":
            failed[pool] = failed.get(pool, 0.0) + value
    for pool, total in totals.items():
        pools[pool]["requestRate"] = total
        pools[pool]["errorRate"] = failed.get(pool, 0.0) / total if total > 0 else None
    for field, query in (("p50Ms", queries["p50"]), ("p99Ms", queries["p99"])):
        for result in prometheus.query(query):
            value = result["value"]
            row(result["metric"])[field] = value / 1000.0 if math.isfinite(value) else None
    return {"window": PERFORMANCE_WINDOW, "pools": pools}


_redactor_lock = threading.Lock()
_redactor_cache: tuple[float, Redactor] | None = None


def _redactor() -> Redactor:
    """The diagnosis bundles' redactor (every configured secret's value, and the secret patterns), read again
    after REDACTOR_TTL_S."""
    global _redactor_cache
    from tfdeploy.core.redaction import Redactor
    from tfdeploy.services.diagnosis import configured_secrets

    with _redactor_lock:
        if _redactor_cache is None or time.monotonic() - _redactor_cache[0] > REDACTOR_TTL_S:
            _redactor_cache = (time.monotonic(), Redactor(configured_secrets()))
        return _redactor_cache[1]


def mentions(model: str) -> re.Pattern[str]:
    """A line mentioning ``model`` by name (not as part of a longer name)."""
    return re.compile(rf"(?<![\w.-]){re.escape(model)}(?![\w-])")


def pick_lines(text: str, model: str, lines: int) -> list[str]:
    """The last ``lines`` lines of ``text`` that mention ``model``; the last ``lines`` lines if none does."""
    every = text.splitlines()
    pattern = mentions(model)
    about = [line for line in every if pattern.search(line)]
    return (about or every)[-lines:]


def replica_logs(model: str, lines: int, *, redactor: Redactor | None = None) -> dict[str, list[str]]:
    """The recent log lines of every replica of the stable and canary pools, by container (pick_lines), redacted.
    A replica without a container, or whose logs cannot be read, gives one line in parentheses saying so."""
    from tfdeploy.core.errors import ServerNotFound
    from tfdeploy.hooks.serving_host import ServingHostHook
    from tfdeploy.hooks.tfserving import TFServingHook
    from tfdeploy.services.targets import POOLS, get_target

    redact = (redactor or _redactor()).redact_text
    out: dict[str, list[str]] = {}
    for pool in POOLS:
        target = get_target(SERVING_TARGET, pool=pool)
        try:
            count = len(TFServingHook(target.tfserving_conn_id).replicas())
        except Exception as exc:  # noqa: BLE001 - the pool's Connection is unusable: say so, go on
            out[f"{target.container_name} ({pool} pool)"] = [redact(f"(replicas unknown: {type(exc).__name__}: {exc})")]
            continue
        hosts = {
            conn: ServingHostHook(conn, model_root=target.model_root, docker_timeout=DOCKER_TIMEOUT_S)
            for conn in target.hosts
        }
        try:
            for replica in range(count):
                name = target.container(replica)
                try:
                    text = hosts[target.host_conn_id(replica)].server_logs(name, tail=max(lines, LOG_SCAN_LINES))
                except ServerNotFound:
                    out[name] = [f"(no container {name}: this {pool} replica is not running)"]
                    continue
                except Exception as exc:  # noqa: BLE001 - one container's logs: the others still count
                    out[name] = [redact(f"(logs unavailable: {type(exc).__name__}: {exc})")]
                    continue
                out[name] = [redact(line) for line in pick_lines(text, model, lines)]
        finally:
            for host in hosts.values():
                host.close()
    return out


def webhdfs_base_url() -> str:
    """WebHDFS' base URL (``http://host:port``): the ``webhdfs_default`` Connection as the environment gives it
    (URI or JSON), else the stack's settings."""
    raw = os.environ.get("AIRFLOW_CONN_WEBHDFS_DEFAULT", "").strip()
    host, port, ssl = None, None, False
    try:
        if raw.startswith("{"):
            conn = json.loads(raw)
            extra = conn.get("extra") or {}
            extra = json.loads(extra) if isinstance(extra, str) else extra
            host, port, ssl = conn.get("host"), conn.get("port"), bool(extra.get("use_ssl"))
        elif raw:
            parts = urlsplit(raw)
            host, port, ssl = parts.hostname, parts.port, "use_ssl=true" in parts.query.lower()
    except ValueError:
        host = None
    if host:
        return f"{'https' if ssl else 'http'}://{host}" + (f":{port}" if port else "")
    from tfdeploy.settings import get_settings

    return get_settings().webhdfs_url


class TfdeployRegistryPlugin(AirflowPlugin):
    name = "tfdeploy_registry"
    fastapi_apps = [
        {
            "app": create_app(
                rate_limit_sink=apply_rate_limit,
                rollback_starter=start_automatic_rollback,
                rollback_starter_to=start_rollback_to,
                alert_notifier=mail_alerts,
                performance_source=model_performance,
                logs_source=replica_logs,
                webhdfs_url=webhdfs_base_url(),
                run_lookup=airflow_run,
            ),
            "url_prefix": "/registry",
            "name": "Model registry",
        }
    ]
    external_views = [
        {"name": "Model registry", "href": "/registry/", "destination": "nav", "url_route": "model-registry"}
    ]
