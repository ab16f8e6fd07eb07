"""20 models deployed at once through the CeleryExecutor: one Celery worker against two (issue 15).

Builds the example model once, then triggers N model_deploy runs at once (N different model names, the same
SavedModel, strategy all_at_once, no approval) and times from the first trigger to the last run's end, in passes in
the same script: with both workers (worker1, worker2: 4 task slots each) and with worker2 stopped (4 slots). The
figure is the speedup ratio (1 worker's mean wall time / 2 workers'), with each run's task placement per worker;
the passes run in an A-B-A order by default (--passes), so a drift over the run (more models in the pools with each
pass, the machine's other load) does not favour one side.
Results: bench/results/celery_workers.{json,md}. Runs on the stack named by --stack (default dev)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import RESULTS, airflow_client, bench_dir, bootstrap, build_examples, deploy_conf, write_json

STACK_ARG = bootstrap("dev")  # before stack and tfdeploy are imported

import stack  # noqa: E402
from tfdeploy.airflow_client import AirflowClient  # noqa: E402
from tfdeploy.settings import get_settings  # noqa: E402

DAG = "model_deploy"
MAX_SECONDS = 1800  # a configuration that takes longer is reported as such


def build_example(out: Path) -> Path:
    """The example model (its `good` variant) in `out`, built unless it is there already."""
    if not (out / "saved_model" / "saved_model.pb").exists():
        build_examples(out.parent, {out.name: ("good", 0)})
    return out


def deploy_all(client: AirflowClient, example: Path, n: int, tag: str) -> dict:
    models = [f"bw_{tag}_{i:02d}_{uuid.uuid4().hex[:4]}" for i in range(n)]
    started = time.monotonic()
    runs = {}
    for model in models:
        conf = deploy_conf(model, example, strategy="all_at_once")
        runs[model] = client.trigger(DAG, conf=conf)["dag_run_id"]

    def wait(model: str) -> dict:
        return client.wait_for_run(DAG, runs[model], timeout=MAX_SECONDS)

    with ThreadPoolExecutor(max_workers=4) as pool:
        finals = dict(zip(models, pool.map(wait, models), strict=True))
    wall = time.monotonic() - started
    placement: Counter[str] = Counter()
    for model in models:
        for ti in client.task_instances(DAG, runs[model]):
            if ti.get("hostname"):
                placement[ti["hostname"]] += 1
    states = Counter(f["state"] for f in finals.values())
    return {
        "models": n,
        "wall_s": round(wall, 1),
        "states": dict(states),
        "tasks_per_worker": dict(placement),
        "load_average_at_end": [round(x, 1) for x in os.getloadavg()],  # other work on a shared machine
    }


def main() -> int:
    parser = argparse.ArgumentParser(parents=[STACK_ARG], description=__doc__)
    parser.add_argument("-n", type=int, default=20, help="models deployed at once")
    parser.add_argument(
        "--passes",
        default="two,one,two",
        help="the passes in order, each `one` or `two` (workers); the default A-B-A order cancels a drift over the "
        "run (the pools serve more models with each pass)",
    )
    args = parser.parse_args()
    passes = [p.strip() for p in args.passes.split(",") if p.strip()]
    if not passes or set(passes) - {"one", "two"} or not {"one", "two"} <= set(passes):
        parser.error(f"--passes must name `one` and `two` passes (comma-separated), not {args.passes!r}")
    s = get_settings()
    client = airflow_client(DAG, timeout=30)
    example = build_example(bench_dir() / "bench-workers")
    results: dict = {"machine": {"cpus": os.cpu_count()}, "stack": s.stack, "n": args.n, "passes": []}
    try:
        for index, workers in enumerate(passes):
            if workers == "one":
                stack.stop_service(s, "airflow-worker2")
            else:
                stack.up_airflow(s)  # both workers answer before the pass starts
            result = deploy_all(client, example, args.n, f"{workers}{index}")
            results["passes"].append({"workers": workers, **result})
            print(json.dumps(results["passes"][-1]), flush=True)
    finally:
        stack.up_airflow(s)  # worker2 back

    def mean_wall(workers: str) -> float:
        walls = [p["wall_s"] for p in results["passes"] if p["workers"] == workers]
        return round(sum(walls) / len(walls), 1)

    results["one_worker_wall_s"], results["two_workers_wall_s"] = mean_wall("one"), mean_wall("two")
    results["speedup"] = round(results["one_worker_wall_s"] / results["two_workers_wall_s"], 2)
    write_json("celery_workers", results)
    rows = "\n".join(
        f"| {i + 1} | {2 if p['workers'] == 'two' else 1} | {p['wall_s']} | {p['states']} | "
        f"{p['tasks_per_worker']} | {p['load_average_at_end']} |"
        for i, p in enumerate(results["passes"])
    )
    (RESULTS / "celery_workers.md").write_text(
        f"""# {args.n} models deployed at once: 1 Celery worker against 2 (`bench/celery_workers.py`)

Stack `{s.stack}`, {os.cpu_count()} CPUs. Each worker has 4 task slots (Celery concurrency 4); `parallelism` 8.
Passes in the order run (`--passes {args.passes}`); the load average (1, 5, 15 min) at each pass's end shows
whether anything else ran on the machine.

| pass | workers | wall time (s) | runs | tasks per worker | load average at end |
|---|---|---|---|---|---|
{rows}

Mean wall time: {results["one_worker_wall_s"]} s with 1 worker, {results["two_workers_wall_s"]} s with 2.
**Speedup of the second worker: {results["speedup"]}x** (1 worker's mean wall time / 2 workers').

What bounds it: this machine has {os.cpu_count()} cores for everything (both workers, the scheduler, the
api-server, HDFS, PostgreSQL, the sandbox containers that validate each model, the serving replicas), so a second
worker adds task slots but no CPU; and each serving pool has one `models.config`, changed under a lock, so the
rollouts and promotions of all models queue on it one at a time. On machines of their own, each worker brings its
own cores and the bound moves to the per-pool config lock and the scheduler.
"""
    )
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
