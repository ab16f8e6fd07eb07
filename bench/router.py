"""Benchmark: the router under constant load while the stable pool changes.

Unversioned REST predicts go through the router at about RATE requests/s (a bounded loop on 127.0.0.1)
while (a) model_deploy promotes v1 -> v2 across the stable pool's replicas, (b) model_rollback puts v1 back,
(c) one stable replica is killed (`docker kill`). Per phase: requests sent, failed (not 200, or answered by
neither version), p50/p99 latency, and which version answered. For (b), the time from the rollback's trigger
to the last call answered by v2. The router's own cost: p50 of the same predict through the router against
straight to a replica, in this script. v1 and v2 are the example model's `good` and `better` variants, told
apart by their outputs.

Runs on the stack `TFDEPLOY_STACK` names, by default the test stack (`TFDEPLOY_STACK=test
.venv/bin/python include/scripts/stack.py up` first). Results: bench/results/router.{json,md}.
Run: .venv/bin/python bench/router.py [--rate 200]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests
from _common import (
    PacedLoad,
    airflow_client,
    bootstrap,
    build_examples,
    deploy_conf,
    latency_ms,
    local_session,
    percentile,
    write_json,
    write_report,
)

bootstrap(stack_flag=False)  # TFDEPLOY_STACK, else the test stack (never litter the user's registry)

from tfdeploy.settings import get_settings  # noqa: E402

MAX_SECONDS = 600  # every load loop stops by itself
Answer = tuple[float, int, float, float | None, float]  # start (monotonic), status, ms, answer, start (epoch)


class Load(PacedLoad[Answer]):
    """Unversioned predicts of `body` at `rate`/s over `workers` threads; records (start, status, ms, answer,
    wall-clock start): start from time.monotonic(), answer the first prediction of a 200, status 0 if no answer."""

    def __init__(self, url: str, body: dict, rate: float, workers: int = 4) -> None:
        super().__init__(url, rate, workers, max_seconds=MAX_SECONDS)
        self.body = body

    def one_call(self, session: requests.Session, n: int) -> Answer:
        t0, wall = time.monotonic(), time.time()
        answer = None
        try:
            resp = session.post(self.url, json=self.body, timeout=10)
            status = resp.status_code
            if status == 200:
                answer = float(resp.json()["predictions"][0][0])
        except requests.RequestException:
            status = 0
        return t0, status, (time.monotonic() - t0) * 1e3, answer, wall


def summarize(records: list, versions: dict[str, float]) -> dict:
    def which(answer: float | None) -> str:
        if answer is None:
            return "none"
        return next((name for name, value in versions.items() if abs(answer - value) < 1e-6), "unknown")

    answered = [which(r[3]) for r in records]
    latencies = [r[2] for r in records if r[1] == 200]
    failed = [r for r, w in zip(records, answered, strict=True) if r[1] != 200 or w == "unknown"]
    return {
        "sent": len(records),
        "failed": len(failed),
        "answered_by": {name: answered.count(name) for name in (*versions, "unknown", "none") if name in answered},
        **latency_ms(latencies),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=200.0)
    args = parser.parse_args()
    s = get_settings()
    client = airflow_client("model_deploy", "model_rollback")
    model = f"bench_router_{uuid.uuid4().hex[:6]}"
    results: dict = {
        "machine": {"cpus": os.cpu_count()},
        "stack": s.stack,
        "rate": args.rate,
        "stable_replicas": s.stable_replicas,
    }
    with tempfile.TemporaryDirectory(prefix="bench-router-") as tmp:
        examples = build_examples(Path(tmp), {variant: (variant, 0) for variant in ("good", "better")})

        def deploy(variant: str) -> str:
            # all_at_once: promote and rollback under load are what this measures
            run = client.trigger("model_deploy", conf=deploy_conf(model, examples[variant], strategy="all_at_once"))
            return client.wait_for_run("model_deploy", run["dag_run_id"], timeout=900)["state"]

        golden = json.loads((examples["better"] / "golden.json").read_text())
        body = {"instances": golden["inputs"][:1]}
        url = f"http://127.0.0.1:{s.serving_rest_port}/v1/models/{model}:predict"
        assert deploy("good") == "success", "deploying v1 failed"
        v1 = float(requests.post(url, json=body, timeout=10).json()["predictions"][0][0])

        # router overhead: the same predict through the router and straight to a replica, one at a time
        direct = f"http://127.0.0.1:{s.replica_rest_port}/v1/models/{model}:predict"
        overhead: dict = {}
        with local_session() as session:
            for name, target in (("router", url), ("direct", direct)):
                samples = []
                for _ in range(500):
                    t0 = time.perf_counter()
                    session.post(target, json=body, timeout=10).raise_for_status()
                    samples.append((time.perf_counter() - t0) * 1e3)
                overhead[f"{name}_p50_ms"] = percentile(samples, 50, digits=3)
        overhead["router_overhead_p50_ms"] = round(overhead["router_p50_ms"] - overhead["direct_p50_ms"], 3)
        results["router_overhead"] = overhead

        with Load(url, body, args.rate) as load:  # (a) promote v1 -> v2
            time.sleep(2)
            state = deploy("better")
            time.sleep(2)
        v2 = float(requests.post(url, json=body, timeout=10).json()["predictions"][0][0])
        results["promote"] = {"run": state, **summarize(load.records, {"v1": v1, "v2": v2})}

        with Load(url, body, args.rate) as load:  # (b) roll back v2 -> v1
            time.sleep(2)
            decided = time.monotonic()
            run = client.trigger("model_rollback", conf={"model_name": model, "version": 1, "reason": "bench"})
            state = client.wait_for_run("model_rollback", run["dag_run_id"], timeout=900)["state"]
            time.sleep(2)
        on_v2 = [r for r in load.records if r[3] is not None and abs(r[3] - v2) < 1e-6]
        last_v2 = max((r[0] for r in on_v2), default=decided)
        task = next(
            t for t in client.task_instances("model_rollback", run["dag_run_id"]) if t["task_id"] == "rollback_to"
        )
        started = dt.datetime.fromisoformat(task["start_date"].replace("Z", "+00:00")).timestamp()
        last_v2_wall = max((r[4] for r in on_v2), default=started)
        results["rollback"] = {
            "run": state,
            **summarize(load.records, {"v1": v1, "v2": v2}),
            "decision_to_all_on_v1_s": round(max(0.0, last_v2 - decided), 2),
            "rollback_task_start_to_all_on_v1_s": round(max(0.0, last_v2_wall - started), 2),
        }

        import docker

        engine = docker.DockerClient(base_url=s.docker_host)
        with Load(url, body, args.rate) as load:  # (c) one stable replica killed
            time.sleep(2)
            killed_at = time.monotonic()
            engine.containers.get(f"{s.serving_container_prefix}-local").kill()
            time.sleep(6)
        after = [r for r in load.records if r[0] > killed_at + 3]
        results["replica_killed"] = {
            **summarize(load.records, {"v1": v1, "v2": v2}),
            "failed_after_3s": sum(1 for r in after if r[1] != 200),
        }
        engine.containers.get(f"{s.serving_container_prefix}-local").start()  # the restart policy's job, by hand

    write_json("router", results)
    lines = [
        f"# Router under load ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, stack {s.stack}, "
        f"{s.stable_replicas} stable replicas, {args.rate:g} req/s)",
        "",
        "| phase | run | sent | failed | answered by | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for phase in ("promote", "rollback", "replica_killed"):
        r = results[phase]
        lines.append(
            f"| {phase} | {r.get('run', '-')} | {r['sent']} | {r['failed']} | {r['answered_by']} | {r['p50_ms']} | "
            f"{r['p99_ms']} |"
        )
    lines += [
        "",
        f"- rollback: from the trigger to the last call answered by v2: "
        f"{results['rollback']['decision_to_all_on_v1_s']} s (Airflow scheduling the run included); from the "
        f"rollback task's start: {results['rollback']['rollback_task_start_to_all_on_v1_s']} s",
        f"- replica killed: {results['replica_killed']['failed']} failed in all, "
        f"{results['replica_killed']['failed_after_3s']} more than 3 s after the kill",
        f"- router overhead, p50: {overhead['router_p50_ms']} ms through the router vs {overhead['direct_p50_ms']} ms "
        f"straight to a replica: +{overhead['router_overhead_p50_ms']} ms",
    ]
    write_report("router", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
