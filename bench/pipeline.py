"""Benchmark: the deployment pipeline end to end, and HDFS publishing.

1. Trigger-to-promoted time of `model_deploy` (over the REST API, through the real scheduler), with a
   per-step breakdown from the task instances, for the demo model and for a model of about 500 MB in many
   files (the demo SavedModel plus 200 asset files of 2.5 MB). Airflow's own overhead is the run's wall
   time not spent inside a task, as a share of the total.
2. HDFS publish throughput: ModelStoreHook.publish (parallel uploads, manifest, atomic rename) against a
   plain single-stream WebHDFS upload of the same files (`hdfs` client, n_threads=1), in this script.
Needs the stack (`make up`). Results: bench/results/pipeline.{json,md}.

Run: .venv/bin/python bench/pipeline.py [--skip-large]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT / "include" / "scripts")]

import stack  # noqa: E402
from tfdeploy.settings import get_settings  # noqa: E402

for _k, _v in stack.airflow_env(get_settings()).items():
    os.environ.setdefault(_k, _v)

from tfdeploy.airflow_client import AirflowClient  # noqa: E402

DAG = "model_deploy"


def ts(value: str | None) -> float:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else float("nan")


def deploy(client: AirflowClient, model: str, example: Path, saved_model: Path) -> dict:
    t0 = time.time()
    run = client.trigger(
        DAG, conf={"model_name": model, "source": str(saved_model), "golden_path": str(example / "golden.json")}
    )
    final = client.wait_for_run(DAG, run["dag_run_id"], timeout=1800)
    total = time.time() - t0
    tis = client.task_instances(DAG, run["dag_run_id"])
    steps = {
        ti["task_id"]: round(ts(ti["end_date"]) - ts(ti["start_date"]), 2)
        for ti in tis
        if ti["state"] == "success" and ti["start_date"] and ti["end_date"]
    }
    in_tasks = sum(steps.values())
    return {
        "state": final["state"],
        "trigger_to_done_s": round(total, 1),
        "steps_s": steps,
        "airflow_overhead_s": round(total - in_tasks, 1),
        "airflow_overhead_share": round((total - in_tasks) / total, 3),
    }


def big_model(src: Path, out: Path, files: int = 200, size: int = 2_500_000) -> Path:
    shutil.copytree(src, out)
    assets = out / "assets" / "vocab_shards"
    assets.mkdir(parents=True)
    for i in range(files):
        (assets / f"shard-{i:04d}.bin").write_bytes(os.urandom(size))
    return out


def publish_vs_plain(local: Path) -> dict:
    from airflow.providers.apache.hdfs.hooks.webhdfs import WebHDFSHook

    from tfdeploy.hooks.model_store import ModelStoreHook

    model = f"bench-{uuid.uuid4().hex[:6]}"
    store = ModelStoreHook(base_path="/models")
    size = sum(p.stat().st_size for p in local.rglob("*") if p.is_file())
    client = WebHDFSHook(webhdfs_conn_id="webhdfs_default").get_conn()
    t0 = time.perf_counter()
    client.upload(f"/tmp/{model}-plain", str(local), n_threads=1)
    plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = store.publish(str(local), model, 1)
    ours = time.perf_counter() - t0
    client.delete(f"/tmp/{model}-plain", recursive=True)
    store.delete_version(model, 1)
    return {
        "bytes": size,
        "files": result.files,
        "plain_single_stream_s": round(plain, 2),
        "publish_s": round(ours, 2),
        "plain_MBps": round(size / plain / 1e6, 1),
        "publish_MBps": round(size / ours / 1e6, 1),
        "speedup_vs_plain": round(plain / ours, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-large", action="store_true")
    args = parser.parse_args()
    s = get_settings()
    client = AirflowClient(s.airflow_url, s.airflow_user, s.airflow_password)
    client.wait_for_dag(DAG)
    client.unpause(DAG)
    results: dict = {"machine": {"cpus": os.cpu_count()}}
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        example = Path(tmp) / "good"
        subprocess.run(
            [sys.executable, str(ROOT / "include" / "example_model" / "build.py"), "--out", str(example)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        results["demo_model"] = deploy(client, f"bench_demo_{uuid.uuid4().hex[:6]}", example, example / "saved_model")
        results["hdfs_publish_demo_model"] = publish_vs_plain(example / "saved_model")
        if not args.skip_large:
            large = big_model(example / "saved_model", Path(tmp) / "large")
            results["hdfs_publish_500mb"] = publish_vs_plain(large)
            results["large_model"] = deploy(client, f"bench_large_{uuid.uuid4().hex[:6]}", example, large)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipeline.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [f"# Deployment pipeline ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores)", ""]
    for key in ("demo_model", "large_model"):
        if key in results:
            r = results[key]
            lines += [
                f"## {key}: {r['state']} in {r['trigger_to_done_s']} s (trigger to done)",
                "",
                "| step | seconds |",
                "|---|---|",
                *[f"| {k} | {v} |" for k, v in r["steps_s"].items()],
                f"| Airflow overhead (not in a task) | {r['airflow_overhead_s']} ({r['airflow_overhead_share']:.0%}) |",
                "",
            ]
    for key in ("hdfs_publish_demo_model", "hdfs_publish_500mb"):
        if key in results:
            r = results[key]
            lines.append(
                f"- {key}: {r['files']} files, {r['bytes'] / 1e6:.1f} MB: publish {r['publish_s']} s "
                f"({r['publish_MBps']} MB/s) vs plain single-stream upload {r['plain_single_stream_s']} s "
                f"({r['plain_MBps']} MB/s): {r['speedup_vs_plain']}x"
            )
    (out / "pipeline.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
