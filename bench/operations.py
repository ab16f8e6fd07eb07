"""Benchmark: operations, from a fault to the alert, its mail and the automatic rollback (issue 13's figures).

Three scenarios, each on its own model: v1 (the example model's `good` variant) then v2 (`better`), both released
by model_deploy with strategy all_at_once, so v2 is in production and v1 superseded (an earlier version to go
back to). The script starts a real SMTP server (aiosmtpd) on 127.0.0.1:SMTP_PORT, where the stack's alert mail
goes (Airflow's SMTP provider, the `smtp_default` Connection), and records when each message arrives.

 A. a stable replica killed: `docker stop` of <prefix>-local-1, started again after. Times from the stop to the
    router marking it DOWN, Prometheus' ServingReplicaDown pending and firing, Alertmanager holding it, the alert
    recorded in the registry (GET /registry/v1/alerts: its firstReceivedAt) and its mail delivered; that no
    automatic rollback happened (the rule's label rollback="no"; no auto_rollback event, no model_rollback run,
    the same version in production); then the way back (router UP, alert resolved).
 B. the production version swapped to answer wrongly (the `noisy` variant written over v2's files on the serving
    host and the replicas reloaded: tests/integration/pipeline/test_operations.py swap_to_noise), with
    autoRollbackOnFailing on. Times from the swap to model_health (on its schedule, MODEL_HEALTH_SCHEDULE)
    recording failing, to the health-change mail, and to the automatic rollback complete: the registry's
    production version back to v1 AND the router answering v1's outputs. The swap is made at second
    --swap-second of a minute (default 30: half-way between two runs of an every-minute schedule).
 C. the production version swapped the same way to `fragile` (HTTP 400 for inputs outside [-1, 1]), with
    autoRollbackOnFailing on and, from the swap on, a light constant load of unversioned predicts through the
    router (--rate, half of them outside [-1, 1]). Times from the swap to ModelErrorRateHigh pending/firing in
    Prometheus, in Alertmanager, recorded in the registry, its mail, and the automatic rollback complete (the
    fast path: Alertmanager -> the registry's webhook -> model_rollback).
Where the time went: the registry's history, the Airflow runs and task instances behind each step.
Also: Prometheus' and Alertmanager's memory (PSS, from `stack.py status`) and the intervals in force, read from
the running Prometheus, Alertmanager, and Airflow (the model_health DAG's schedule).

Goals (issue 13): <= 60 s from the fault to the alert (recorded and mailed) and <= 90 s to the rollback complete.

Bounded: every load loop and wait stops by itself; every call goes to 127.0.0.1. Runs on the stack `--stack`
(default: the test stack); for the every-minute health checks, start it with MODEL_HEALTH_SCHEDULE='* * * * *'
(`MODEL_HEALTH_SCHEDULE='* * * * *' TFDEPLOY_STACK=dev .venv/bin/python include/scripts/stack.py up`).
Results: bench/results/operations.{json,md}.
Run: .venv/bin/python bench/operations.py --stack dev [--rate 10] [--swap-second 30]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from email import message_from_bytes
from email.header import decode_header, make_header
from pathlib import Path
from typing import Any

import docker
import numpy as np
import yaml
from _common import (
    INSIDE,
    RESULTS,
    ROOT,
    Predict,
    PredictLoad,
    airflow_client,
    bench_dir,
    bootstrap,
    build_examples,
    deploy_conf,
    local_session,
    status_codes,
    write_json,
    write_report,
)
from aiosmtpd.controller import Controller

STACK_ARG = bootstrap()  # before stack and tfdeploy are imported

import stack  # noqa: E402
from tfdeploy.settings import get_settings  # noqa: E402

GOALS = {"alert_s": 60.0, "rollback_s": 90.0}
MAX_SECONDS = 600  # every load loop stops by itself
MAX_RECORDS = 50_000
VARIANTS = {"good": ("good", 0), "better": ("better", 0), "noisy": ("noisy", 0), "fragile": ("fragile", 1)}
DAGS = ("model_deploy", "model_rollback", "model_health")


def epoch(value: str | None) -> float | None:
    """An ISO time from the registry, Airflow, Prometheus or Alertmanager (UTC, `Z`) as epoch seconds."""
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def since(t0: float, at: float | None) -> float | None:
    return None if at is None else round(at - t0, 2)


# ----------------------------------------------------------------------------- SMTP server


class Mailbox:
    """aiosmtpd's handler: keeps (arrival epoch, subject, recipients) of every message."""

    def __init__(self) -> None:
        self.messages: list[tuple[float, str, list[str]]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        arrived = time.time()
        message = message_from_bytes(envelope.content)
        subject = str(make_header(decode_header(message["Subject"] or "")))
        with self.lock:
            self.messages.append((arrived, subject, list(envelope.rcpt_tos)))
        return "250 OK"

    def find(self, after: float, *needles: str) -> tuple[float, str] | None:
        with self.lock:
            for arrived, subject, _to in self.messages:
                if arrived >= after and all(n in subject for n in needles):
                    return arrived, subject
        return None


# ----------------------------------------------------------------------------- load, watching


def load(url: str, rate: float, outside: float, workers: int) -> PredictLoad:
    """Unversioned predicts at `rate`/s over `workers` threads, a share `outside` of them with inputs outside
    [-1, 1], bounded by MAX_SECONDS and MAX_RECORDS."""
    return PredictLoad(url, rate, outside, workers, max_seconds=MAX_SECONDS, max_records=MAX_RECORDS)


def load_summary(records: list[Predict], t0: float) -> dict:
    """The clients' view: calls sent, their status codes, the first and the last error (s after t0)."""
    bad = [rec for rec in records if rec[2] != 200]
    return {
        "sent": len(records),
        "status_codes": status_codes(rec[2] for rec in records),
        "first_error_s": since(t0, min((r[1] for r in bad), default=None)),
        "last_error_s": since(t0, max((r[1] for r in bad), default=None)),
    }


class Watch:
    """Polls named checks until `until(seen)` holds or the timeout; keeps when each first answered truthy."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.seen: dict[str, tuple[float, Any]] = {}
        self.errors: dict[str, str] = {}

    def run(
        self,
        checks: dict[str, Callable[[], Any]],
        until: Callable[[dict], bool],
        timeout: float,
        every: float = 0.5,
    ) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, check in checks.items():
                if name in self.seen:
                    continue
                try:
                    value = check()
                except Exception as exc:  # noqa: BLE001 - a check that fails now may answer later
                    self.errors[name] = f"{type(exc).__name__}: {exc}"[:300]
                    value = None
                if value:
                    self.seen[name] = (time.time(), value)
            if until(self.seen):
                return True
            time.sleep(every)
        return False

    def at(self, name: str) -> float | None:
        return since(self.t0, self.seen[name][0]) if name in self.seen else None

    def value(self, name: str) -> Any:
        return self.seen[name][1] if name in self.seen else None


# ----------------------------------------------------------------------------- the stack's APIs


class Ops:
    """The stack's APIs this benchmark reads: registry, Airflow, Prometheus, Alertmanager, router, Docker."""

    def __init__(self) -> None:
        self.s = get_settings()
        self.airflow = airflow_client()
        self.http = local_session(self.airflow.token())
        self.plain = local_session()
        self.rest = f"http://127.0.0.1:{self.s.serving_rest_port}"

    def registry(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self.http.request(method, f"{self.s.airflow_url}/registry/v1{path}", timeout=15, **kwargs)
        resp.raise_for_status()
        return resp.json() if resp.content else None

    def events(self, model: str, t0: float, kind: str | None = None) -> list[dict]:
        params: dict[str, Any] = {"limit": 500}
        if kind:
            params["kind"] = kind
        events = self.registry("GET", f"/models/{model}/history", params=params)["events"]
        return sorted((e for e in events if (epoch(e["at"]) or 0) >= t0 - 1), key=lambda e: e["id"])

    def prometheus_alert(self, alertname: str, model: str, state: tuple[str, ...]) -> dict | None:
        data = self.plain.get(f"{self.s.prometheus_url}/api/v1/alerts", timeout=5).json()
        for alert in data["data"]["alerts"]:
            labels = alert["labels"]
            if labels.get("alertname") == alertname and labels.get("model") == model and alert["state"] in state:
                return alert
        return None

    def alertmanager_alert(self, alertname: str, model: str) -> dict | None:
        params = [("filter", f'alertname="{alertname}"'), ("filter", f'model="{model}"')]
        alerts = self.plain.get(f"{self.s.alertmanager_url}/api/v2/alerts", params=params, timeout=5).json()
        return alerts[0] if alerts else None

    def registry_alert(self, alertname: str, model: str, status: str, after: float) -> dict | None:
        alerts = self.registry("GET", "/alerts", params={"model": model, "status": status, "limit": 100})["alerts"]
        found = [a for a in alerts if a["alertname"] == alertname and (epoch(a["firstReceivedAt"]) or 0) >= after - 1]
        return min(found, key=lambda a: epoch(a["firstReceivedAt"]) or 0) if found else None

    def router_server_state(self, backend: str, server: str) -> str:
        for row in stack.router_command(self.s, "show stat").splitlines():
            cols = row.split(",")
            if len(cols) > 17 and cols[0] == backend and cols[1] == server:
                return cols[17]
        return "?"

    def golden(self, model: str, version: int) -> tuple[list, np.ndarray]:
        report = self.registry("GET", f"/models/{model}/versions/{version}")["validationReport"]
        inputs = report["goldenInputs"][:4]
        return inputs, np.asarray(report["goldenPredictions"], dtype=np.float64)[: len(inputs)].reshape(-1)

    def answers(self, model: str, inputs: list, expected: np.ndarray, times: int = 4) -> bool:
        """`times` unversioned predicts through the router (the replicas in turn), each answering `expected`."""
        for _ in range(times):
            resp = self.plain.post(f"{self.rest}/v1/models/{model}:predict", json={"instances": inputs}, timeout=10)
            if resp.status_code != 200:
                return False
            got = np.asarray(resp.json()["predictions"], dtype=np.float64).reshape(-1)
            if got.shape != expected.shape or not float(np.max(np.abs(got - expected))) <= 1e-4:
                return False
        return True

    def runs(self, dag: str, model: str, after: float) -> list[dict]:
        runs = self.airflow.request(
            "GET", f"/api/v2/dags/{dag}/dagRuns", params={"limit": 100, "order_by": "-run_after"}
        )["dag_runs"]
        return sorted(
            (
                r
                for r in runs
                if (r.get("conf") or {}).get("model_name") == model and (epoch(r.get("queued_at")) or 0) >= after - 1
            ),
            key=lambda r: r["queued_at"],
        )

    def run_timeline(self, dag: str, run_id: str, t0: float) -> dict:
        run = self.airflow.request("GET", f"/api/v2/dags/{dag}/dagRuns/{run_id}")
        tis = self.airflow.task_instances(dag, run_id)
        return {
            "dag_id": dag,
            "run_id": run_id,
            "state": run["state"],
            "run_after_s": since(t0, epoch(run.get("run_after"))),
            "queued_s": since(t0, epoch(run.get("queued_at"))),
            "start_s": since(t0, epoch(run.get("start_date"))),
            "end_s": since(t0, epoch(run.get("end_date"))),
            "tasks": {
                ti["task_id"]: {
                    "state": ti["state"],
                    "start_s": since(t0, epoch(ti.get("start_date"))),
                    "end_s": since(t0, epoch(ti.get("end_date"))),
                }
                for ti in sorted(tis, key=lambda ti: ti.get("start_date") or "~")
                if ti.get("map_index", -1) in (-1, 0)
            },
        }


def timeline(ops: Ops, model: str, t0: float) -> list[dict]:
    """The model's registry history since t0, compact: seconds after t0, kind, reason (first 160 characters)."""
    return [
        {
            "at_s": since(t0, epoch(e["at"])),
            "kind": e["kind"],
            "version": e["version"],
            "to_state": e.get("toState"),
            "run_id": e.get("runId"),
            "reason": (e.get("reason") or "")[:160],
        }
        for e in ops.events(model, t0)
    ]


# ----------------------------------------------------------------------------- set-up


def release_two_versions(ops: Ops, model: str, examples: dict[str, Path]) -> dict:
    """v1 (good), then v2 (better), each all_at_once: v2 in production, v1 superseded. Returns the versions."""
    seconds = []
    for name in ("good", "better"):
        started = time.time()
        run = ops.airflow.trigger("model_deploy", conf=deploy_conf(model, examples[name], strategy="all_at_once"))
        final = ops.airflow.wait_for_run("model_deploy", run["dag_run_id"], timeout=900)
        if final["state"] != "success":
            raise RuntimeError(f"releasing {name} as {model} failed: run {run['dag_run_id']}")
        seconds.append(round(time.time() - started, 1))
    versions = {v["version"]: v["state"] for v in ops.registry("GET", f"/models/{model}/versions")["versions"]}
    production = ops.registry("GET", f"/models/{model}")["version"]
    earlier = max(v for v, state in versions.items() if state == "superseded")
    return {"production": production, "earlier": earlier, "states": versions, "release_seconds": seconds}


def swap(model: str, version: int, variant: Path) -> dict:
    """Overwrite the production version's files on the serving host with `variant` and reload the stable replicas
    (unload, then load): as tests/integration/pipeline/test_operations.py swap_to_noise does. Returns its times."""
    from tfdeploy.core.models_config import ServedModel
    from tfdeploy.services.serving_target import ServingTargetService
    from tfdeploy.services.targets import get_target

    service = ServingTargetService(get_target("local"))
    entry = service.entry(model)
    if entry is None or version not in entry.versions:
        raise RuntimeError(f"{model} v{version} is not in the stable pool's models.config: {entry}")
    started = time.time()
    service.change(model, lambda _e: None)
    unloaded = time.time()
    for host in service.hosts:  # the change above removed the staged copies: stage the other model's files
        host.stage_version(variant / "saved_model", model, version)
    service.change(model, lambda _e: ServedModel(model, entry.base_path, (version,), {"stable": version}))
    return {"started": started, "unloaded_s": round(unloaded - started, 2), "seconds": round(time.time() - started, 2)}


def warm(ops: Ops, model: str, count: int = 40) -> None:
    """Unversioned predicts through the router, so each stable replica has served the model (the alert rules name
    the models a replica served in the last 30 minutes)."""
    for _ in range(count):
        ops.plain.post(f"{ops.rest}/v1/models/{model}:predict", json={"instances": [INSIDE]}, timeout=10)


def enable_auto_rollback(ops: Ops, model: str, scenario: str) -> dict:
    return ops.registry(
        "PATCH",
        f"/models/{model}/settings",
        json={"autoRollbackOnFailing": True, "reason": f"bench/operations.py scenario {scenario}"},
    )


def no_rollback_evidence(ops: Ops, model: str, t0: float, production: int) -> dict:
    return {
        "auto_rollback_events": [
            {"at_s": since(t0, epoch(e["at"])), "reason": e["reason"]} for e in ops.events(model, t0, "auto_rollback")
        ],
        "model_rollback_runs": [r["dag_run_id"] for r in ops.runs("model_rollback", model, t0)],
        "production_before": production,
        "production_after": ops.registry("GET", f"/models/{model}")["version"],
    }


def model_alerts(ops: Ops, model: str, t0: float) -> list[dict]:
    """Every alert of the model the registry received since t0: name, status, severity, auto-rollback."""
    alerts = ops.registry("GET", "/alerts", params={"model": model, "limit": 100})["alerts"]
    return [
        {
            "alertname": a["alertname"],
            "status": a["status"],
            "severity": a["severity"],
            "first_received_s": since(t0, epoch(a["firstReceivedAt"])),
            "labels": {k: v for k, v in a["labels"].items() if k in ("rollback", "seen_by", "pool", "server")},
            "autoRollback": a["autoRollback"],
        }
        for a in alerts
        if (epoch(a["firstReceivedAt"]) or 0) >= t0 - 1
    ]


# ----------------------------------------------------------------------------- scenarios


def scenario_a(ops: Ops, mailbox: Mailbox, model: str, versions: dict, args: argparse.Namespace) -> dict:
    """A stable replica killed: ServingReplicaDown to the registry and the mailbox; no automatic rollback."""
    s = ops.s
    name = f"{s.serving_container_prefix}-local-1"
    if name.startswith("tfserving-test-") and s.stack != "test":
        raise RuntimeError(f"refusing to stop {name}: the test stack's container")
    client = docker.DockerClient(base_url=s.docker_host)
    container = client.containers.get(name)
    if not stack.owns_model_root(s, container.labels.get(stack.SERVING_LABEL_MODEL_ROOT, "")):
        raise RuntimeError(f"refusing to stop {name}: it is not this stack's ({s.state_dir})")
    server = "replica2"  # replica index 1 at the router (ServingTarget.router_server)
    warm(ops, model)
    Watch(time.time()).run(
        {"up": lambda: ops.router_server_state("local_rest", server) == "UP"}, lambda seen: "up" in seen, 60
    )
    url = f"{ops.rest}/v1/models/{model}:predict"
    out: dict = {"model": model, "container": name, "router_server": f"local_rest/{server}", **versions}
    with load(url, args.rate, 0.0, args.workers) as clients:
        time.sleep(2)
        t0 = time.time()
        try:
            container.stop(timeout=10)  # `docker stop`: SIGTERM (the server is PID 1 and exits at once)
            out["stop_call_s"] = round(time.time() - t0, 2)
            watch = Watch(t0)
            watch.run(
                {
                    "router_down": lambda: ops.router_server_state("local_rest", server).startswith("DOWN"),
                    "prometheus_pending": lambda: ops.prometheus_alert(
                        "ServingReplicaDown", model, ("pending", "firing")
                    ),
                    "prometheus_firing": lambda: ops.prometheus_alert("ServingReplicaDown", model, ("firing",)),
                    "alertmanager": lambda: ops.alertmanager_alert("ServingReplicaDown", model),
                    "registry": lambda: ops.registry_alert("ServingReplicaDown", model, "firing", t0),
                    "mail": lambda: mailbox.find(t0, "ServingReplicaDown firing", model),
                },
                lambda seen: "registry" in seen and "mail" in seen,
                args.timeout,
            )
            time.sleep(args.settle)  # room for an automatic rollback that should not happen
            evidence = no_rollback_evidence(ops, model, t0, versions["production"])
        finally:
            restarted = time.time()
            container.reload()
            if container.status != "running":
                container.start()
        back = Watch(restarted)
        back.run(
            {
                "router_up": lambda: ops.router_server_state("local_rest", server) == "UP",
                "registry_resolved": lambda: ops.registry_alert("ServingReplicaDown", model, "resolved", t0),
                "mail_resolved": lambda: mailbox.find(t0, "ServingReplicaDown resolved", model),
            },
            lambda seen: len(seen) == 3,
            args.timeout,
        )
    alert = watch.value("registry") or {}
    mail = watch.value("mail")
    prom_pending = watch.value("prometheus_pending") or {}
    am = watch.value("alertmanager") or {}
    out |= {
        "t0": t0,
        "router_down_s": watch.at("router_down"),
        "prometheus_active_at_s": since(t0, epoch(prom_pending.get("activeAt"))),
        "prometheus_pending_seen_s": watch.at("prometheus_pending"),
        "prometheus_firing_seen_s": watch.at("prometheus_firing"),
        "alertmanager_seen_s": watch.at("alertmanager"),
        "alertmanager_starts_at_s": since(t0, epoch(am.get("startsAt"))),
        "registry_first_received_s": since(t0, epoch(alert.get("firstReceivedAt"))),
        "registry_seen_s": watch.at("registry"),
        "mail_s": since(t0, mail[0]) if mail else None,
        "mail_subject": mail[1] if mail else None,
        "alert_labels": alert.get("labels"),
        "alert_severity": alert.get("severity"),
        "alert_auto_rollback": alert.get("autoRollback"),
        "no_rollback": evidence,
        "recovery": {
            "router_up_s": back.at("router_up"),
            "registry_resolved_s": back.at("registry_resolved"),
            "mail_resolved_s": back.at("mail_resolved"),
        },
        "load": load_summary(clients.records, t0),
        "alerts_of_the_model": model_alerts(ops, model, t0),
        "history": timeline(ops, model, t0),
        "watch_errors": watch.errors,
    }
    alert_s = max_or_none(out["registry_first_received_s"], out["mail_s"])
    rollback_free = (
        not evidence["auto_rollback_events"]
        and not evidence["model_rollback_runs"]
        and evidence["production_after"] == evidence["production_before"]
        and (alert.get("labels") or {}).get("rollback") == "no"
        and not alert.get("autoRollback")
    )
    out["figures"] = {"alert_s": alert_s, "rollback_s": None, "no_automatic_rollback": rollback_free}
    out["met"] = {"alert": alert_s is not None and alert_s <= GOALS["alert_s"], "rollback": None}
    return out


def wait_for_healthy_check(ops: Ops, model: str, version: int, after: float, timeout: float = 150) -> float | None:
    """Wait for a model_health record `healthy` of the version made after `after`; its time, or None."""
    found: dict = {}

    def healthy() -> bool:
        records = ops.registry("GET", f"/models/{model}/health", params={"version": version, "limit": 5})["records"]
        for r in records:
            at = epoch(r["recordedAt"]) or 0
            if (r["details"] or {}).get("check") == "model_health" and r["status"] == "healthy" and at >= after:
                found["at"] = at
                return True
        return False

    Watch(after).run({"healthy": healthy}, lambda seen: "healthy" in seen, timeout, every=2)
    return found.get("at")


def wait_for_second(second: float) -> None:
    """Sleep until wall-clock second `second` of the current or the next minute."""
    now = time.time()
    wait = (second - now % 60) % 60
    time.sleep(wait)


def rollback_checks(ops: Ops, model: str, versions: dict) -> dict[str, Callable[[], Any]]:
    inputs, expected = ops.golden(model, versions["earlier"])
    return {
        "production_back": lambda: ops.registry("GET", f"/models/{model}")["version"] == versions["earlier"],
        "router_answers_earlier": lambda: ops.answers(model, inputs, expected),
    }


def scenario_b(ops: Ops, mailbox: Mailbox, model: str, versions: dict, noisy: Path, args: argparse.Namespace) -> dict:
    """The production version answers wrongly: model_health (on its schedule) finds it failing, mails, and (auto
    rollback on) model_rollback puts v1 back."""
    version = versions["production"]
    out: dict = {"model": model, **versions, "settings": enable_auto_rollback(ops, model, "B")}
    released = time.time()
    healthy_at = wait_for_healthy_check(ops, model, version, released - 5)
    out["healthy_check_before_s"] = round(healthy_at - released, 1) if healthy_at else None
    wait_for_second(args.swap_second)
    swapped = swap(model, version, noisy)
    t0 = time.time()  # the replicas answer noise from here
    out["swap"] = {k: v for k, v in swapped.items() if k != "started"}
    watch = Watch(t0)

    def failing() -> dict | None:
        records = ops.registry("GET", f"/models/{model}/health", params={"version": version, "limit": 5})["records"]
        for r in records:
            check = (r["details"] or {}).get("check")
            if check == "model_health" and r["status"] == "failing" and (epoch(r["recordedAt"]) or 0) >= t0:
                return r
        return None

    watch.run(
        {
            "health_failing": failing,
            "mail": lambda: mailbox.find(t0, model, "-> failing"),
            **rollback_checks(ops, model, versions),
        },
        lambda seen: {"mail", "production_back", "router_answers_earlier"} <= set(seen),
        args.timeout,
    )
    record = watch.value("health_failing") or {}
    mail = watch.value("mail")
    out |= {
        "t0": t0,
        "swap_at_second_of_minute": round(t0 % 60, 1),
        "next_schedule_tick_s": round(math.ceil(t0 / 60) * 60 - t0, 1),
        "health_failing_recorded_s": since(t0, epoch(record.get("recordedAt"))),
        "health_failing_seen_s": watch.at("health_failing"),
        "health_problems": (record.get("details") or {}).get("problems"),
        "mail_s": since(t0, mail[0]) if mail else None,
        "mail_subject": mail[1] if mail else None,
        "production_back_s": watch.at("production_back"),
        "router_answers_earlier_s": watch.at("router_answers_earlier"),
        "watch_errors": watch.errors,
    }
    wait_for_runs(ops, "model_rollback", model, t0)
    history = ops.events(model, t0)
    health_events = [e for e in history if e["kind"] == "health" and (e["details"] or {}).get("status") == "failing"]
    if health_events and health_events[0].get("runId"):
        out["model_health_run"] = ops.run_timeline("model_health", health_events[0]["runId"], t0)
    out["model_rollback_runs"] = [
        ops.run_timeline("model_rollback", r["dag_run_id"], t0) for r in ops.runs("model_rollback", model, t0)
    ]
    out["alerts_of_the_model"] = model_alerts(ops, model, t0)
    out["history"] = timeline(ops, model, t0)
    alert_s = max_or_none(out["health_failing_recorded_s"], out["mail_s"])
    rollback_s = max_or_none(out["production_back_s"], out["router_answers_earlier_s"])
    out["figures"] = {"alert_s": alert_s, "rollback_s": rollback_s}
    out["met"] = {
        "alert": alert_s is not None and alert_s <= GOALS["alert_s"],
        "rollback": rollback_s is not None and rollback_s <= GOALS["rollback_s"],
    }
    # the same run with the swap right after a scheduled check instead: the schedule's wait grows to ~60 s
    wait = out["next_schedule_tick_s"]
    out["worst_phase_estimate"] = {
        "alert_s": round(alert_s - wait + 60, 1) if alert_s is not None else None,
        "rollback_s": round(rollback_s - wait + 60, 1) if rollback_s is not None else None,
    }
    return out


def scenario_c(ops: Ops, mailbox: Mailbox, model: str, versions: dict, fragile: Path, args: argparse.Namespace) -> dict:
    """The production version errors on live traffic: ModelErrorRateHigh -> Alertmanager -> the registry, which
    starts model_rollback at once (auto rollback on)."""
    version = versions["production"]
    out: dict = {"model": model, **versions, "settings": enable_auto_rollback(ops, model, "C")}
    warm(ops, model)
    url = f"{ops.rest}/v1/models/{model}:predict"
    swapped = swap(model, version, fragile)
    with load(url, args.rate, 0.5, args.workers) as clients:
        t0 = time.time()  # the replicas refuse inputs outside [-1, 1] from here, and the load starts
        out["swap"] = {k: v for k, v in swapped.items() if k != "started"}
        watch = Watch(t0)
        watch.run(
            {
                "prometheus_pending": lambda: ops.prometheus_alert("ModelErrorRateHigh", model, ("pending", "firing")),
                "prometheus_firing": lambda: ops.prometheus_alert("ModelErrorRateHigh", model, ("firing",)),
                "alertmanager": lambda: ops.alertmanager_alert("ModelErrorRateHigh", model),
                "registry": lambda: ops.registry_alert("ModelErrorRateHigh", model, "firing", t0),
                "mail": lambda: mailbox.find(t0, "ModelErrorRateHigh firing", model),
                **rollback_checks(ops, model, versions),
            },
            lambda seen: {"registry", "mail", "production_back", "router_answers_earlier"} <= set(seen),
            args.timeout,
        )
        time.sleep(3)
    alert = watch.value("registry") or {}
    mail = watch.value("mail")
    prom_pending = watch.value("prometheus_pending") or {}
    am = watch.value("alertmanager") or {}
    out |= {
        "t0": t0,
        "prometheus_active_at_s": since(t0, epoch(prom_pending.get("activeAt"))),
        "prometheus_pending_seen_s": watch.at("prometheus_pending"),
        "prometheus_firing_seen_s": watch.at("prometheus_firing"),
        "alertmanager_seen_s": watch.at("alertmanager"),
        "alertmanager_starts_at_s": since(t0, epoch(am.get("startsAt"))),
        "registry_first_received_s": since(t0, epoch(alert.get("firstReceivedAt"))),
        "registry_seen_s": watch.at("registry"),
        "alert_labels": alert.get("labels"),
        "alert_auto_rollback": alert.get("autoRollback"),
        "mail_s": since(t0, mail[0]) if mail else None,
        "mail_subject": mail[1] if mail else None,
        "production_back_s": watch.at("production_back"),
        "router_answers_earlier_s": watch.at("router_answers_earlier"),
        "load": load_summary(clients.records, t0),
        "rate": args.rate,
        "watch_errors": watch.errors,
    }
    wait_for_runs(ops, "model_rollback", model, t0)
    auto = ops.events(model, t0, "auto_rollback")
    out["auto_rollback_events"] = [
        {"at_s": since(t0, epoch(e["at"])), "status": (e["details"] or {}).get("status"), "run_id": e.get("runId")}
        for e in auto
    ]
    out["model_rollback_runs"] = [
        ops.run_timeline("model_rollback", r["dag_run_id"], t0) for r in ops.runs("model_rollback", model, t0)
    ]
    out["alerts_of_the_model"] = model_alerts(ops, model, t0)
    out["history"] = timeline(ops, model, t0)
    alert_s = max_or_none(out["registry_first_received_s"], out["mail_s"])
    rollback_s = max_or_none(out["production_back_s"], out["router_answers_earlier_s"])
    out["figures"] = {"alert_s": alert_s, "rollback_s": rollback_s}
    out["met"] = {
        "alert": alert_s is not None and alert_s <= GOALS["alert_s"],
        "rollback": rollback_s is not None and rollback_s <= GOALS["rollback_s"],
    }
    return out


def wait_for_runs(ops: Ops, dag: str, model: str, after: float, timeout: float = 120) -> None:
    """Wait (bounded) until the model's runs of `dag` since `after` have ended, so their timelines are whole."""
    Watch(after).run(
        {"ended": lambda: all(r["state"] in ("success", "failed") for r in ops.runs(dag, model, after))},
        lambda seen: "ended" in seen,
        timeout,
        every=1,
    )


def max_or_none(*values: float | None) -> float | None:
    return None if any(v is None for v in values) else max(v for v in values if v is not None)


# ----------------------------------------------------------------------------- monitoring facts

STATUS_LINE = re.compile(r"^\[stack\] (prometheus|alertmanager): .*\[\w+=(\d+) \((\d+) MiB\)\]\s*$")


def monitoring_memory(ops: Ops) -> dict:
    """Prometheus' and Alertmanager's PSS as `stack.py status` prints it, with Prometheus' uptime and series."""
    env = {**os.environ, "TFDEPLOY_STACK": ops.s.stack}
    done = subprocess.run(
        [sys.executable, str(ROOT / "include" / "scripts" / "stack.py"), "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out: dict = {}
    for line in done.stdout.splitlines():
        if m := STATUS_LINE.match(line):
            out[m.group(1)] = {"pid": int(m.group(2)), "pss_mib": int(m.group(3))}
    try:
        q = ops.plain.get(
            f"{ops.s.prometheus_url}/api/v1/query",
            params={"query": 'time() - process_start_time_seconds{job="prometheus"}'},
            timeout=5,
        ).json()
        out["prometheus_uptime_min"] = round(float(q["data"]["result"][0]["value"][1]) / 60, 1)
        tsdb = ops.plain.get(f"{ops.s.prometheus_url}/api/v1/status/tsdb", timeout=5).json()
        out["prometheus_head_series"] = tsdb["data"]["headStats"]["numSeries"]
        targets = ops.plain.get(f"{ops.s.prometheus_url}/api/v1/targets?state=active", timeout=5).json()
        out["prometheus_targets"] = len(targets["data"]["activeTargets"])
    except Exception as exc:  # noqa: BLE001 - the memory figures still count
        out["prometheus_error"] = str(exc)
    return out


def intervals(ops: Ops) -> dict:
    """The intervals in force: from the running Prometheus (config, rules), Alertmanager and Airflow."""
    out: dict = {}
    config = yaml.safe_load(
        ops.plain.get(f"{ops.s.prometheus_url}/api/v1/status/config", timeout=5).json()["data"]["yaml"]
    )
    out["prometheus"] = {
        "scrape_interval": config["global"].get("scrape_interval"),
        "evaluation_interval": config["global"].get("evaluation_interval"),
        "serving_docker_sd_refresh": next(
            (
                sd.get("refresh_interval")
                for job in config["scrape_configs"]
                if job["job_name"] == "serving"
                for sd in job.get("docker_sd_configs", [])
            ),
            None,
        ),
    }
    rules = ops.plain.get(f"{ops.s.prometheus_url}/api/v1/rules?type=alert", timeout=5).json()["data"]["groups"]
    out["rules_for_s"] = {
        f"{r['name']}" + (f" ({r['labels']['seen_by']})" if "seen_by" in r.get("labels", {}) else ""): r["duration"]
        for g in rules
        for r in g["rules"]
        if r["name"] in ("ServingReplicaDown", "ModelErrorRateHigh")
    }
    am = yaml.safe_load(
        ops.plain.get(f"{ops.s.alertmanager_url}/api/v2/status", timeout=5).json()["config"]["original"]
    )
    out["alertmanager"] = {k: am["route"].get(k) for k in ("group_wait", "group_interval", "repeat_interval")}
    dag = ops.airflow.request("GET", "/api/v2/dags/model_health")
    out["model_health_schedule"] = dag.get("timetable_summary")
    return out


# ----------------------------------------------------------------------------- main, report


def main() -> int:
    parser = argparse.ArgumentParser(parents=[STACK_ARG])
    parser.add_argument("--rate", type=float, default=10.0, help="requests/s of the light load (A and C)")
    parser.add_argument("--workers", type=int, default=2, help="load threads")
    parser.add_argument("--swap-second", type=float, default=30.0, help="B: swap at this second of a minute")
    parser.add_argument("--timeout", type=float, default=300.0, help="longest wait for a scenario's events")
    parser.add_argument("--settle", type=float, default=20.0, help="A: seconds to wait for a rollback that must not")
    parser.add_argument("--only", default="ABC", choices=["A", "B", "C", "AB", "AC", "BC", "ABC"], help="scenarios")
    parser.add_argument("--report-only", action="store_true", help="rewrite the .md from the .json; run nothing")
    args = parser.parse_args()
    if args.report_only:
        write_report("operations", report(json.loads((RESULTS / "operations.json").read_text())))
        return 0
    ops = Ops()
    s = ops.s
    results: dict = {
        "machine": {"cpus": os.cpu_count()},
        "stack": s.stack,
        "stable_replicas": s.stable_replicas,
        "goals": GOALS,
        "args": {k: v for k, v in vars(args).items()},
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()) + "Z",
    }
    paused = {}
    for dag in DAGS:
        paused[dag] = ops.airflow.wait_for_dag(dag)["is_paused"]
        ops.airflow.unpause(dag)
    results["dags_paused_before"] = paused
    results["intervals"] = intervals(ops)
    if results["intervals"]["model_health_schedule"] != "* * * * *":
        print(
            f"[operations] note: model_health runs on {results['intervals']['model_health_schedule']!r}, not every "
            "minute: B's figures are for that schedule",
            file=sys.stderr,
        )
    results["memory_before"] = monitoring_memory(ops)
    mailbox = Mailbox()
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's per-command lines
    controller = Controller(mailbox, hostname="127.0.0.1", port=s.smtp_port)
    controller.start()
    suffix = uuid.uuid4().hex[:6]
    try:
        with tempfile.TemporaryDirectory(prefix="bench-ops-", dir=bench_dir()) as tmp:
            t = time.time()
            examples = build_examples(Path(tmp), VARIANTS)
            results["examples_build_s"] = round(time.time() - t, 1)
            for key in args.only:
                model = f"bench_ops_{key.lower()}_{suffix}"
                print(f"[operations] scenario {key}: releasing {model} v1 and v2", flush=True)
                try:
                    versions = release_two_versions(ops, model, examples)
                    print(f"[operations] scenario {key}: {versions}", flush=True)
                    if key == "A":
                        r = scenario_a(ops, mailbox, model, versions, args)
                    elif key == "B":
                        r = scenario_b(ops, mailbox, model, versions, examples["noisy"], args)
                    else:
                        r = scenario_c(ops, mailbox, model, versions, examples["fragile"], args)
                except Exception as exc:  # noqa: BLE001 - reported; the other scenarios still run
                    results.setdefault("errors", {})[key] = f"{type(exc).__name__}: {exc}"
                    traceback.print_exc()
                    continue
                results[key] = r
                print(f"[operations] scenario {key}: {r['figures']} met {r['met']}", flush=True)
    finally:
        controller.stop()
    results["mails"] = [
        {"at": time.strftime("%H:%M:%S", time.gmtime(at)), "subject": subject} for at, subject, _ in mailbox.messages
    ]
    results["memory_after"] = monitoring_memory(ops)
    write_json("operations", results)
    write_report("operations", report(results))
    return 0


def fmt(value: float | None, unit: str = " s") -> str:
    return "-" if value is None else f"{value:g}{unit}"


def verdict(met: bool | None) -> str:
    return "n/a" if met is None else ("met" if met else "NOT met")


def run_line(run: dict) -> str:
    tasks = ", ".join(f"{t} {fmt(v['start_s'], '')}-{fmt(v['end_s'], '')}" for t, v in run["tasks"].items())
    return (
        f"{run['dag_id']} {run['state']}: run after {fmt(run['run_after_s'])}, queued {fmt(run['queued_s'])}, "
        f"started {fmt(run['start_s'])}, ended {fmt(run['end_s'])}; tasks (start-end, s after the fault): {tasks}"
    )


def ended(run: dict) -> str:
    state = run["state"]
    return state if state in ("success", "failed") else f"{state} when read: its timeline is partial"


def alerts_line(scenario: dict, extra: str | None = None) -> list[tuple]:
    return [(x["alertname"], x["status"], *([x[extra]] if extra else [])) for x in scenario["alerts_of_the_model"]]


def report(results: dict) -> list[str]:
    iv = results["intervals"]
    prom, am = iv["prometheus"], iv["alertmanager"]
    lines = [
        f"# Operations: from a fault to the alert, its mail and the automatic rollback "
        f"({results['started'][:16].replace('T', ' ')} UTC, {results['machine']['cpus']} cores, "
        f"stack {results['stack']}, {results['stable_replicas']} stable replicas)",
        "",
        f"Intervals in force (read from the running services): Prometheus scrape {prom['scrape_interval']}, "
        f"evaluation {prom['evaluation_interval']}, Docker discovery {prom['serving_docker_sd_refresh']}; "
        f"Alertmanager group_wait {am['group_wait']}, group_interval {am['group_interval']}, "
        f"repeat_interval {am['repeat_interval']}; rules' `for` (s): {iv['rules_for_s']}; model_health "
        f"schedule `{iv['model_health_schedule']}`.",
        "",
        f"Goals (issue 13): <= {GOALS['alert_s']:g} s from the fault to the alert (recorded AND mailed: the later "
        f"of the two is judged) and <= {GOALS['rollback_s']:g} s to the rollback complete (the registry's production "
        "version back to v1 AND the router answering v1's outputs: the later of the two).",
        "",
        "| scenario | alert recorded | mail delivered | rollback complete | alert goal | rollback goal |",
        "|---|---|---|---|---|---|",
    ]
    a, b, c = results.get("A"), results.get("B"), results.get("C")
    for key, error in (results.get("errors") or {}).items():
        lines.append(f"| {key}. did not complete: {error[:200]} | - | - | - | NOT met | - |")
    if a:
        lines.append(
            f"| A. stable replica stopped (ServingReplicaDown) | {fmt(a['registry_first_received_s'])} | "
            f"{fmt(a['mail_s'])} | none (expected none: "
            f"{'confirmed' if a['figures']['no_automatic_rollback'] else 'NOT confirmed'}) "
            f"| {verdict(a['met']['alert'])} | n/a |"
        )
    if b:
        lines.append(
            f"| B. production answers wrongly (model_health failing, slow path) | "
            f"{fmt(b['health_failing_recorded_s'])} | {fmt(b['mail_s'])} | {fmt(b['figures']['rollback_s'])} | "
            f"{verdict(b['met']['alert'])} | {verdict(b['met']['rollback'])} |"
        )
    if c:
        lines.append(
            f"| C. production errors on live traffic (ModelErrorRateHigh, fast path) | "
            f"{fmt(c['registry_first_received_s'])} | {fmt(c['mail_s'])} | {fmt(c['figures']['rollback_s'])} | "
            f"{verdict(c['met']['alert'])} | {verdict(c['met']['rollback'])} |"
        )
    lines.append("")
    if a:
        ev = a["no_rollback"]
        lines += [
            f"## A. `docker stop {a['container']}` ({a['model']}, v{a['production']} in production)",
            "",
            "| step | seconds after the stop |",
            "|---|---|",
            f"| `docker stop` returned | {fmt(a.get('stop_call_s'))} |",
            f"| router marks {a['router_server']} DOWN (seen) | {fmt(a['router_down_s'])} |",
            f"| Prometheus: alert active (pending; its activeAt) | {fmt(a['prometheus_active_at_s'])} |",
            f"| Prometheus: firing (seen) | {fmt(a['prometheus_firing_seen_s'])} |",
            f"| Alertmanager has it (seen) | {fmt(a['alertmanager_seen_s'])} |",
            f"| registry: recorded (firstReceivedAt) | {fmt(a['registry_first_received_s'])} |",
            f"| mail delivered | {fmt(a['mail_s'])} |",
            "",
            f"- the alert: severity {a['alert_severity']}, labels {a['alert_labels']}, "
            f"autoRollback {a['alert_auto_rollback']}",
            f"- no automatic rollback: auto_rollback events {ev['auto_rollback_events']}, model_rollback runs "
            f"{ev['model_rollback_runs']}, production v{ev['production_before']} before and v{ev['production_after']} "
            f"{results['args']['settle']:g} s after the mail",
            f"- mail: {a['mail_subject']!r}",
            f"- way back (s after `docker start`): router UP {fmt(a['recovery']['router_up_s'])}, alert resolved in "
            f"the registry {fmt(a['recovery']['registry_resolved_s'])}, "
            f"its mail {fmt(a['recovery']['mail_resolved_s'])}",
            f"- clients ({results['args']['rate']:g} req/s through the router meanwhile): {a['load']['status_codes']}",
            f"- the model's alerts in the registry: {alerts_line(a, 'labels')}",
            "",
        ]
    if b:
        lines += [
            f"## B. v{b['production']} of {b['model']} swapped to answer noise (autoRollbackOnFailing on)",
            "",
            f"The swap (unload, files replaced, load) took {b['swap']['seconds']} s and ended at second "
            f"{b['swap_at_second_of_minute']} of the minute: the next scheduled model_health run was due "
            f"{b['next_schedule_tick_s']} s later.",
            "",
            "| step | seconds after the swap |",
            "|---|---|",
        ]
        run = b.get("model_health_run")
        if run:
            check = run["tasks"].get("check", {})
            roll = run["tasks"].get("auto_rollback", {})
            lines += [
                f"| model_health run due (run_after) | {fmt(run['run_after_s'])} |",
                f"| its `check` task started | {fmt(check.get('start_s'))} |",
            ]
        lines += [
            f"| health `failing` recorded | {fmt(b['health_failing_recorded_s'])} |",
            f"| mail delivered | {fmt(b['mail_s'])} |",
        ]
        if run:
            lines += [
                f"| `check` task ended | {fmt(check.get('end_s'))} |",
                f"| `auto_rollback` task (TriggerDagRunOperator) ended | {fmt(roll.get('end_s'))} |",
            ]
        for r in b["model_rollback_runs"]:
            lines += [
                f"| model_rollback queued / started | {fmt(r['queued_s'])} / {fmt(r['start_s'])} |",
                f"| model_rollback `rollback_to` ran | {fmt(r['tasks'].get('rollback_to', {}).get('start_s'))} - "
                f"{fmt(r['tasks'].get('rollback_to', {}).get('end_s'))} |",
                f"| model_rollback run ended ({ended(r)}) | {fmt(r['end_s'])} |",
            ]
        diag = [e for e in b["history"] if e["kind"] == "diagnosis"]
        lines += [
            f"| registry: production back to v{b['earlier']} (seen) | {fmt(b['production_back_s'])} |",
            f"| router answers v{b['earlier']}'s outputs (seen) | {fmt(b['router_answers_earlier_s'])} |",
            "",
            f"- health problems: {b['health_problems']}",
            f"- mail: {b['mail_subject']!r}",
            f"- diagnosis bundle (collected before the alert is sent): {[(e['at_s'], e['reason'][:80]) for e in diag]}",
            f"- with the swap right after a scheduled check instead (the schedule's wait ~60 s, the rest as measured): "
            f"alert ~{fmt(b['worst_phase_estimate']['alert_s'])}, rollback complete "
            f"~{fmt(b['worst_phase_estimate']['rollback_s'])}",
            f"- the model's alerts in the registry: {alerts_line(b)}",
        ]
        if run:
            lines.append(f"- {run_line(run)}")
        lines += [f"- {run_line(r)}" for r in b["model_rollback_runs"]]
        lines.append("")
    if c:
        lines += [
            f"## C. v{c['production']} of {c['model']} swapped to `fragile` under load (autoRollbackOnFailing on)",
            "",
            f"{c['rate']:g} req/s of unversioned predicts through the router from the end of the swap (which took "
            f"{c['swap']['seconds']} s), half with inputs outside [-1, 1].",
            "",
            "| step | seconds after the swap |",
            "|---|---|",
            f"| first error answered to a client | {fmt(c['load']['first_error_s'])} |",
            f"| Prometheus: alert active (pending; its activeAt) | {fmt(c['prometheus_active_at_s'])} |",
            f"| Prometheus: firing (seen) | {fmt(c['prometheus_firing_seen_s'])} |",
            f"| Alertmanager has it (seen) | {fmt(c['alertmanager_seen_s'])} |",
            f"| registry: recorded (firstReceivedAt), automatic rollback started | "
            f"{fmt(c['registry_first_received_s'])} |",
            f"| mail delivered | {fmt(c['mail_s'])} |",
        ]
        for r in c["model_rollback_runs"]:
            lines += [
                f"| model_rollback queued / started | {fmt(r['queued_s'])} / {fmt(r['start_s'])} |",
                f"| model_rollback `rollback_to` ran | {fmt(r['tasks'].get('rollback_to', {}).get('start_s'))} - "
                f"{fmt(r['tasks'].get('rollback_to', {}).get('end_s'))} |",
                f"| model_rollback run ended ({ended(r)}) | {fmt(r['end_s'])} |",
            ]
        lines += [
            f"| registry: production back to v{c['earlier']} (seen) | {fmt(c['production_back_s'])} |",
            f"| router answers v{c['earlier']}'s outputs (seen) | {fmt(c['router_answers_earlier_s'])} |",
            f"| last error answered to a client | {fmt(c['load']['last_error_s'])} |",
            "",
            f"- the alert: labels {c['alert_labels']}, autoRollback {c['alert_auto_rollback']}",
            f"- auto_rollback events: {c['auto_rollback_events']}",
            f"- mail: {c['mail_subject']!r}",
            f"- clients: {c['load']['sent']} calls, status codes {c['load']['status_codes']}",
            f"- the model's alerts in the registry: {alerts_line(c, 'autoRollback')}",
        ]
        lines += [f"- {run_line(r)}" for r in c["model_rollback_runs"]]
        lines.append("")
    mem_b, mem_a = results["memory_before"], results["memory_after"]
    lines += [
        "## Prometheus and Alertmanager memory (PSS, `stack.py status`)",
        "",
        "| process | at the start | at the end |",
        "|---|---|---|",
        *[
            f"| {p} | {fmt((mem_b.get(p) or {}).get('pss_mib'), ' MiB')} | "
            f"{fmt((mem_a.get(p) or {}).get('pss_mib'), ' MiB')} |"
            for p in ("prometheus", "alertmanager")
        ],
        "",
        f"- at the end: Prometheus up {mem_a.get('prometheus_uptime_min')} min, {mem_a.get('prometheus_head_series')} "
        f"series in its head block, {mem_a.get('prometheus_targets')} targets",
        f"- DAGs paused before this run unpaused them: {results['dags_paused_before']}",
        f"- examples built in {results.get('examples_build_s')} s; releases (v1, v2) per scenario: "
        + ", ".join(f"{k} {results[k]['release_seconds']} s" for k in "ABC" if k in results),
        "",
    ]
    ours = [results[k]["model"] for k in "ABC" if k in results]
    mails = results.get("mails", [])
    others = [m for m in mails if not any(model in m["subject"] for model in ours)]
    lines += [
        f"## Every mail the SMTP server received ({len(mails)}; {len(others)} about models of no scenario)",
        "",
        "| time (UTC) | subject | a scenario's model |",
        "|---|---|---|",
        *[f"| {m['at']} | {m['subject']} | {'no' if m in others else 'yes'} |" for m in mails],
    ]
    return lines


if __name__ == "__main__":
    sys.exit(main())
