"""Benchmark: a gray release of the demo model under constant load, with a good and with a bad candidate.

The model's v1 (the example model's `good` variant) is released all at once; then, under a constant load of
unversioned REST predicts through the router (about RATE requests/s over a few threads on 127.0.0.1, bounded
in count and time; OUTSIDE of the calls have inputs outside [-1, 1]), model_deploy releases with the canary
strategy and steps [5, 25, 50, 100]:
 (a) a good candidate (`better`, a new seed each run): per step, the weight set at the router, the requests
     sent while it held, the share of them answered by the candidate (the router's X-Served-By header) and the
     difference in points (goal: within 3 points, with >= 1,000 requests per step; STEP_SECONDS is chosen for
     that at RATE);
 (b) a bad candidate (`fragile`: refuses inputs outside [-1, 1] with HTTP 400): whether it was stopped at its
     first step, its bad answers against weight x requests while it had weight, the time from the breach's
     detection to weight 0 (the registry's health record and the gray_release task's log), and client-side
     the time from the first bad answer to the last answer served by the candidate.
The weight in force is read from the router itself (its weights map, polled every 20 ms over the runtime
API), so a step's requests are those sent between two weight changes; the registry's traffic history is
reported beside it.

Runs on the stack `--stack` (default: the test stack; `TFDEPLOY_STACK=test .venv/bin/python
include/scripts/stack.py up` first). Results: bench/results/gray_release.{json,md}.
Run: .venv/bin/python bench/gray_release.py [--rate 200] [--step-seconds 10] [--outside 0.2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from _common import (
    INSIDE,
    Predict,
    PredictLoad,
    airflow_client,
    bench_dir,
    bootstrap,
    build_examples,
    deploy_conf,
    latency_ms,
    local_session,
    status_codes,
    write_json,
    write_report,
)

STACK_ARG = bootstrap()  # before stack and tfdeploy are imported

import stack  # noqa: E402
from tfdeploy.settings import get_settings  # noqa: E402

DAG = "model_deploy"
STEPS = [5, 25, 50, 100]
MAX_SECONDS = 480  # every load loop stops by itself
MAX_RECORDS = 200_000
GOALS = {"share_within_points": 3.0, "requests_per_step": 1000}


class WeightMonitor:
    """The model's weight as the router has it (its weights map over the runtime API), polled every `every`
    seconds: a list of (previous poll, this poll, weight) at each change, epoch seconds."""

    def __init__(self, model: str, every: float = 0.02) -> None:
        self.model, self.every = model, every
        self.s = get_settings()
        self.changes: list[tuple[float, float, int]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def weight(self) -> int:
        answer = stack.router_command(self.s, f"show map {stack.router_map(self.s, 'weights')}")
        for line in answer.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1] == self.model:
                return int(parts[2])
        return 0

    def _run(self) -> None:
        deadline = time.monotonic() + MAX_SECONDS
        previous_poll, current = time.time(), self.weight()
        self.changes.append((previous_poll, previous_poll, current))
        while not self.stop.is_set() and time.monotonic() < deadline:
            self.stop.wait(self.every)
            now, weight = time.time(), self.weight()
            if weight != current:
                self.changes.append((previous_poll, now, weight))
                current = weight
            previous_poll = now

    def __enter__(self) -> WeightMonitor:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def segments(changes: list[tuple[float, float, int]], end: float) -> list[dict]:
    """The weight's segments: each weight from the poll that saw it until the last poll before the next change
    (so a segment holds only requests sent while that weight certainly held; 20 ms slack at the end)."""
    out = []
    for i, (_before, seen, weight) in enumerate(changes):
        until = changes[i + 1][0] - 0.02 if i + 1 < len(changes) else end
        out.append({"weight": weight, "from": seen, "until": until})
    return out


def summarize(records: list[Predict]) -> dict:
    """The load's figures: calls sent, their status codes, which side answered, p50/p99 of the answered (200)."""
    return {
        "sent": len(records),
        "status_codes": status_codes(r[2] for r in records),
        "answered_by": {side: sum(1 for r in records if r[3] == side) for side in ("stable", "canary")},
        **latency_ms([r[4] for r in records if r[2] == 200]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(parents=[STACK_ARG])
    parser.add_argument("--rate", type=float, default=200.0, help="requests/s of the constant load")
    parser.add_argument("--workers", type=int, default=4, help="load threads")
    parser.add_argument("--step-seconds", type=float, default=10.0, help="bake time per step")
    parser.add_argument("--check-seconds", type=float, default=1.0, help="a step is judged every")
    parser.add_argument("--outside", type=float, default=0.2, help="share of calls with inputs outside [-1, 1]")
    parser.add_argument("--min-requests", type=int, default=20, help="candidate requests needed to judge a step")
    parser.add_argument("--max-error-rate", type=float, default=0.01, help="allowed error rate above stable's")
    args = parser.parse_args()
    s = get_settings()
    client = airflow_client(DAG)
    registry = local_session(client.token())

    def api(path: str, **params: object) -> dict:
        resp = registry.get(f"{s.airflow_url}/registry/v1{path}", params=params, timeout=10)
        resp.raise_for_status()
        return resp.json()

    model = f"bench_gray_{uuid.uuid4().hex[:6]}"
    seed = int(uuid.uuid4().int % 100_000) + 10  # a new candidate each run
    results: dict = {
        "machine": {"cpus": os.cpu_count()},
        "stack": s.stack,
        "model": model,
        "rate": args.rate,
        "workers": args.workers,
        "outside_share": args.outside,
        "steps": STEPS,
        "step_seconds": args.step_seconds,
        "check_seconds": args.check_seconds,
        "min_requests": args.min_requests,
        "max_error_rate": args.max_error_rate,
        "stable_replicas": s.stable_replicas,
        "goals": GOALS,
    }
    url = f"http://127.0.0.1:{s.serving_rest_port}/v1/models/{model}:predict"
    with tempfile.TemporaryDirectory(prefix="bench-gray-", dir=bench_dir()) as tmp:
        variants = {"v1": ("good", 0), "good": ("better", seed), "bad": ("fragile", seed + 1)}
        examples = build_examples(Path(tmp), variants)
        results["candidates"] = {name: {"variant": v, "seed": sd} for name, (v, sd) in variants.items()}

        def conf(name: str, **extra: object) -> dict:
            return deploy_conf(model, examples[name], **extra)

        run = client.trigger(DAG, conf=conf("v1", strategy="all_at_once"))
        if client.wait_for_run(DAG, run["dag_run_id"], timeout=600)["state"] != "success":
            raise RuntimeError(f"releasing v1 of {model} failed: run {run['dag_run_id']}")
        with local_session() as warm:  # the serving path warm before the measured runs
            for _ in range(50):
                warm.post(url, json={"instances": [INSIDE]}, timeout=10).raise_for_status()

        for name in ("good", "bad"):
            after = max((e["id"] for e in api(f"/models/{model}/history", limit=1)["events"]), default=0)
            with (
                WeightMonitor(model) as monitor,
                PredictLoad(
                    url, args.rate, args.outside, args.workers, max_seconds=MAX_SECONDS, max_records=MAX_RECORDS
                ) as load,
            ):
                time.sleep(1)
                run = client.trigger(
                    DAG,
                    conf=conf(
                        name,
                        strategy="canary",
                        steps=STEPS,
                        step_seconds=args.step_seconds,
                        check_seconds=args.check_seconds,
                        min_requests=args.min_requests,
                        max_error_rate=args.max_error_rate,
                    ),
                )
                final = client.wait_for_run(DAG, run["dag_run_id"], timeout=600)
                time.sleep(1)
            ended = time.time()
            tis = {ti["task_id"]: ti for ti in client.task_instances(DAG, run["dag_run_id"])}
            events = [
                e for e in api(f"/models/{model}/history", kind="traffic", limit=200)["events"] if e["id"] > after
            ]
            r: dict = {
                "run": final["state"],
                "run_id": run["dag_run_id"],
                "tasks": {t: tis[t]["state"] for t in ("gray_release", "promote", "rollback") if t in tis},
                "registry_weights": [e["details"]["canary"]["weight"] for e in sorted(events, key=lambda e: e["id"])],
                "router_weights": [w for _b, _s, w in monitor.changes],
                **summarize(load.records),
            }
            steps = []
            for seg in segments(monitor.changes, ended):
                if seg["weight"] == 0:
                    continue
                window = [rec for rec in load.records if seg["from"] <= rec[0] <= seg["until"] and rec[2] == 200]
                canary = sum(1 for rec in window if rec[3] == "canary")
                share = 100 * canary / len(window) if window else None
                steps.append(
                    {
                        "weight": seg["weight"],
                        "seconds": round(seg["until"] - seg["from"], 2),
                        "requests": len(window),
                        "canary": canary,
                        "share": round(share, 2) if share is not None else None,
                        "diff_points": round(share - seg["weight"], 2) if share is not None else None,
                    }
                )
            r["steps"] = steps
            if name == "good":
                r["met"] = {
                    "share_within_points": bool(steps)
                    and all(
                        st["diff_points"] is not None and abs(st["diff_points"]) <= GOALS["share_within_points"]
                        for st in steps
                    ),
                    "requests_per_step": bool(steps)
                    and all(st["requests"] >= GOALS["requests_per_step"] for st in steps),
                }
            else:
                r |= bad_candidate(client, api, model, run["dag_run_id"], tis, monitor, load.records, ended, args)
            results[f"{name}_candidate"] = r

    write_json("gray_release", results)
    write_report("gray_release", report(results))
    return 0


LAG = re.compile(r"weight set to 0 ([0-9.]+)s after the breach was seen")


def bad_candidate(client, api, model, run_id, tis, monitor, records, ended, args) -> dict:
    """The bad candidate's figures: first step only?, bad answers against weight x requests, breach to 0."""
    nonzero = [(seen, w) for _b, seen, w in monitor.changes if w > 0]
    first_weight = nonzero[0][1] if nonzero else None
    exposed_from = nonzero[0][0] if nonzero else None
    zero_at = next((seen for _b, seen, w in monitor.changes if exposed_from and seen > exposed_from and w == 0), None)
    exposed = [rec for rec in records if exposed_from and exposed_from <= rec[0] <= (zero_at or ended)]
    bad = [rec for rec in records if rec[2] != 200]
    canary = [rec for rec in records if rec[3] == "canary"]
    out: dict = {
        "stopped_at_first_step": bool(nonzero) and {w for _s, w in nonzero} == {STEPS[0]},
        "max_weight_at_router": max((w for _s, w in nonzero), default=0),
        "exposed_s": round(zero_at - exposed_from, 2) if exposed_from and zero_at else None,
        "requests_while_exposed": len(exposed),
        "weight_x_requests": round(first_weight / 100 * len(exposed), 1) if first_weight else None,
        "canary_answers": len(canary),
        "bad_answers": len(bad),
        "bad_answers_by_side": {side: sum(1 for rec in bad if rec[3] == side) for side in ("canary", "stable", "")},
    }
    out["bad_within_weight_x_requests"] = out["weight_x_requests"] is not None and len(bad) <= out["weight_x_requests"]
    if bad:
        first_bad = min(rec[1] for rec in bad)
        out["client_first_bad_to_last_canary_answer_s"] = round(max(rec[1] for rec in canary) - first_bad, 3)
        if zero_at:
            out["client_first_bad_to_weight_0_at_router_s"] = round(zero_at - first_bad, 3)
    # when the metric was breached, as the answers show it: the first moment the candidate had answered
    # min_requests calls of the step with an error rate above stable's by more than max_error_rate
    window = sorted((rec for rec in exposed if rec[3] in ("canary", "stable")), key=lambda rec: rec[1])
    seen = {"canary": [0, 0], "stable": [0, 0]}
    for rec in window:
        seen[rec[3]][0] += 1
        seen[rec[3]][1] += rec[2] != 200
        (n, e), (sn, se) = seen["canary"], seen["stable"]
        if n >= args.min_requests and e / n > (se / sn if sn else 0.0) + args.max_error_rate:
            out["client_metric_breached_at_answer"] = {"candidate_answers": n, "candidate_errors": e}
            if zero_at:
                out["client_metric_breach_to_weight_0_at_router_s"] = round(zero_at - rec[1], 3)
            break
    version = max(v["version"] for v in api(f"/models/{model}/versions")["versions"])
    health = api(f"/models/{model}/health", limit=20)["records"]
    record = next(
        (h for h in health if h["version"] == version and (h["details"] or {}).get("check") == "gray_release"), None
    )
    if record:
        details = record["details"]
        problem = " ".join(details.get("problems", []))
        lag = LAG.search(problem)
        out["health_record"] = {
            "status": record["status"],
            "metric": details.get("metric"),
            "weight": details.get("weight"),
            "values": details.get("values"),
            "problem": problem,
        }
        out["breach_to_weight_0_s_registry"] = float(lag.group(1)) if lag else None
    ti = tis.get("gray_release")
    if ti:
        try:
            log = client.request(
                "GET",
                f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances/gray_release/logs/{max(1, ti['try_number'])}",
                headers={"Accept": "application/json"},
            )
            lag = LAG.search(json.dumps(log))
            out["breach_to_weight_0_s_task_log"] = float(lag.group(1)) if lag else None
        except Exception as exc:  # noqa: BLE001 - reported, the other figures still count
            out["breach_to_weight_0_s_task_log"] = f"log not read: {exc}"
    return out


def report(results: dict) -> list[str]:
    good, bad = results["good_candidate"], results["bad_candidate"]
    lines = [
        f"# Gray release under load ({time.strftime('%Y-%m-%d %H:%M')}, {results['machine']['cpus']} cores, stack "
        f"{results['stack']}, {results['stable_replicas']} stable replicas + 1 canary, {results['rate']:g} req/s over "
        f"{results['workers']} threads, {results['outside_share']:.0%} of calls outside [-1, 1])",
        "",
        f"Steps {results['steps']}, bake {results['step_seconds']:g} s per step, judged every "
        f"{results['check_seconds']:g} s; the weight in force read from the router every 20 ms.",
        "",
        f"## Good candidate (`better`, seed {results['candidates']['good']['seed']}): run {good['run']} "
        f"({', '.join(f'{k} {v}' for k, v in good['tasks'].items())})",
        "",
        "| set weight % | seconds | requests | answered by candidate | observed share % | difference (points) |",
        "|---|---|---|---|---|---|",
        *[
            f"| {st['weight']} | {st['seconds']} | {st['requests']} | {st['canary']} | {st['share']} | "
            f"{st['diff_points']:+.2f} |"
            for st in good["steps"]
        ],
        "",
        f"- goal: within {GOALS['share_within_points']:g} points at >= {GOALS['requests_per_step']} requests per "
        f"step: {'met' if good['met']['share_within_points'] and good['met']['requests_per_step'] else 'NOT met'} "
        f"(within: {good['met']['share_within_points']}, enough requests: {good['met']['requests_per_step']})",
        f"- weights the registry recorded: {good['registry_weights']}; the router held: {good['router_weights']}",
        f"- load: {good['sent']} calls, status codes {good['status_codes']}, answered by {good['answered_by']}, "
        f"p50 {good['p50_ms']} ms, p99 {good['p99_ms']} ms",
        "",
        f"## Bad candidate (`fragile`, seed {results['candidates']['bad']['seed']}): run {bad['run']} "
        f"({', '.join(f'{k} {v}' for k, v in bad['tasks'].items())})",
        "",
        "| measure | value |",
        "|---|---|",
        f"| stopped at its first step ({STEPS[0]}%) | {'yes' if bad['stopped_at_first_step'] else 'NO'} "
        f"(highest weight at the router: {bad['max_weight_at_router']}%) |",
        f"| weight > 0 at the router for | {bad['exposed_s']} s |",
        f"| requests sent meanwhile | {bad['requests_while_exposed']} |",
        f"| weight x requests | {bad['weight_x_requests']} |",
        f"| bad answers (not 200) | {bad['bad_answers']} (by side: {bad['bad_answers_by_side']}) |",
        f"| bad answers <= weight x requests | {'yes' if bad['bad_within_weight_x_requests'] else 'NO'} |",
        f"| breach detected -> weight 0 (registry health record) | {bad.get('breach_to_weight_0_s_registry')} s |",
        f"| breach detected -> weight 0 (gray_release task log) | {bad.get('breach_to_weight_0_s_task_log')} s |",
        f"| client: first bad answer -> weight 0 seen at the router | "
        f"{bad.get('client_first_bad_to_weight_0_at_router_s')} s |",
        f"| client: first bad answer -> last answer served by the candidate | "
        f"{bad.get('client_first_bad_to_last_canary_answer_s')} s |",
        f"| client: metric breached ({results['min_requests']} candidate answers, error rate > stable's + "
        f"{results['max_error_rate']:.0%}; at {bad.get('client_metric_breached_at_answer')}) -> weight 0 seen at "
        f"the router | {bad.get('client_metric_breach_to_weight_0_at_router_s')} s |",
        "",
    ]
    if record := bad.get("health_record"):
        lines.append(
            f"- health record: {record['status']}, metric {record['metric']} at {record['weight']}%, values "
            f"{record['values']}"
        )
        lines.append(f"- its message: {record['problem']}")
    lines += [
        "- breach detected -> weight 0 (registry, task log): the trigger stamps the detection in the look that "
        "judges the breach, right before it sets the weight, so this is the set-weight call's own time; the last "
        "row measures from when the answers show the metric breached (the step's window had min_requests "
        "candidate answers with too many errors) to the router holding weight 0",
        f"- weights the registry recorded: {bad['registry_weights']}; the router held: {bad['router_weights']}",
        f"- load: {bad['sent']} calls, status codes {bad['status_codes']}, answered by {bad['answered_by']}, "
        f"p50 {bad['p50_ms']} ms, p99 {bad['p99_ms']} ms",
    ]
    return lines


if __name__ == "__main__":
    sys.exit(main())
