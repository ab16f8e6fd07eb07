"""20 models deployed at once through the CeleryExecutor: one Celery worker against two (issue 15).

Builds the example model once, then triggers N model_deploy runs at once (N different model names, the same
SavedModel, strategy all_at_once, no approval) and times from the first trigger to the last run's end, twice in
the same script: with both workers (worker1, worker2: 4 task slots each), then with worker2 stopped (4 slots). The
figure is the speedup ratio (1 worker's wall time / 2 workers'), with each run's task placement per worker.
Results: bench/results/celery_workers.{json,md}. Runs on the stack named by --stack (default dev)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT / "include" / "scripts")]
_pre = argparse.ArgumentParser(add_help=False)
_pre.add_argument("--stack", default=os.environ.get("TFDEPLOY_STACK", "dev"))
os.environ["TFDEPLOY_STACK"] = _pre.parse_known_args()[0].stack  # before settings are read

import stack  # noqa: E402
from tfdeploy.settings import get_settings  # noqa: E402

for _k, _v in stack.airflow_env(get_settings()).items():
    os.environ.setdefault(_k, _v)

from tfdeploy.airflow_client import AirflowClient  # noqa: E402

DAG = "model_deploy"
RESULTS = ROOT / "bench" / "results"
MAX_SECONDS = 1800  # a configuration that takes longer is reported as such


def build_example(out: Path) -> Path:
    if not (out / "saved_model" / "saved_model.pb").exists():
        subprocess.run(
            [sys.executable, str(ROOT / "include" / "example_model" / "build.py"), "--out", str(out)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return out


def deploy_all(client: AirflowClient, example: Path, n: int, tag: str) -> dict:
    models = [f"bw_{tag}_{i:02d}_{uuid.uuid4().hex[:4]}" for i in range(n)]
    started = time.monotonic()
    runs = {}
    for model in models:
        conf = {
            "model_name": model,
            "source": str(example / "saved_model"),
            "golden_path": str(example / "golden.json"),
            "strategy": "all_at_once",
        }
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
    parser = argparse.ArgumentParser(parents=[_pre], description=__doc__)
    parser.add_argument("-n", type=int, default=20, help="models deployed at once")
    args = parser.parse_args()
    s = get_settings()
    client = AirflowClient(s.airflow_url, s.airflow_user, s.airflow_password, timeout=30)
    client.wait_for_dag(DAG)
    client.unpause(DAG)
    s.example_dir.mkdir(parents=True, exist_ok=True)
    example = build_example(s.example_dir / "bench-workers")
    results: dict = {"machine": {"cpus": os.cpu_count()}, "stack": s.stack, "n": args.n}
    results["two_workers"] = deploy_all(client, example, args.n, "two")
    stack.stop_service(s, "airflow-worker2")
    try:
        results["one_worker"] = deploy_all(client, example, args.n, "one")
    finally:
        stack.up_airflow(s)  # worker2 back
    results["speedup"] = round(results["one_worker"]["wall_s"] / results["two_workers"]["wall_s"], 2)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "celery_workers.json").write_text(json.dumps(results, indent=2) + "\n")
    two, one = results["two_workers"], results["one_worker"]
    (RESULTS / "celery_workers.md").write_text(
        f"""# {args.n} models deployed at once: 1 Celery worker against 2 (`bench/celery_workers.py`)

Stack `{s.stack}`, {os.cpu_count()} CPUs. Each worker has 4 task slots (Celery concurrency 4); `parallelism` 8.

| workers | wall time (s) | runs | tasks per worker |
|---|---|---|---|
| 2 | {two["wall_s"]} | {two["states"]} | {two["tasks_per_worker"]} |
| 1 | {one["wall_s"]} | {one["states"]} | {one["tasks_per_worker"]} |

**Speedup of the second worker: {results["speedup"]}x** (1 worker's wall time / 2 workers').

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
