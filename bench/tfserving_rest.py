"""Benchmark: REST predict latency and throughput of the TF-Serving-compatible server, and version load time.

The same inputs also go through a direct in-process TensorFlow call in this script, so the server's
overhead is reported against a baseline measured on the same machine at the same time:
  - session: the SavedModel's signature run in a TF Session by tensor name (what the server does inside);
  - keras-free eager: tf.saved_model.load(...).signatures["serving_default"](x).
Targets (issue 3): p50 overhead <= 2 ms over the direct call at concurrency 1; a half_plus_two version
AVAILABLE within 2 s of its directory appearing.

Run: .venv/bin/python bench/tfserving_rest.py [--requests 2000]   Results: bench/results/tfserving_rest.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))
MODEL = ROOT / "tests" / "data" / "tfserving-testdata" / "saved_model_half_plus_two_cpu"
RESULTS = ROOT / "bench" / "results"
BODY = json.dumps({"instances": [[1.0], [2.0], [5.0]]})
X = np.array([[1.0], [2.0], [5.0]], dtype=np.float32)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(lat_s: list[float], wall_s: float) -> dict:
    ms = [v * 1e3 for v in lat_s]
    return {
        "n": len(ms),
        "p50_ms": round(pct(ms, 0.50), 3),
        "p99_ms": round(pct(ms, 0.99), 3),
        "mean_ms": round(statistics.fmean(ms), 3),
        "throughput_rps": round(len(ms) / wall_s, 1),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def time_calls(call, n: int, concurrency: int) -> dict:
    per_thread = n // concurrency
    lats: list[float] = []
    lock = threading.Lock()

    def worker():
        local = []
        ctx = call()  # per-thread state (e.g. an HTTP session)
        for _ in range(per_thread):
            t0 = time.perf_counter()
            ctx()
            local.append(time.perf_counter() - t0)
        with lock:
            lats.extend(local)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return summary(lats, time.perf_counter() - t0)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--loads", type=int, default=5)
    args = parser.parse_args()

    import tensorflow as tf
    from tfserving_compat.servable import Servable

    work = Path(tempfile.mkdtemp(prefix="tfs-bench-"))
    base = work / "half_plus_two"
    shutil.copytree(MODEL, base)
    version_dir = base / "00000123"

    # -- direct in-process baselines ------------------------------------------------------------------
    servable = Servable("half_plus_two", 123, str(version_dir))
    sig = servable.signature("serving_default")
    eager = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    x_tensor = tf.constant(X)
    for _ in range(200):
        servable.run(sig, {"x": X})
        eager(x=x_tensor)
    results: dict = {"model": MODEL.name, "inputs": BODY, "direct_session": {}, "direct_eager": {}, "rest": {}}
    for c in (1, 8):
        results["direct_session"][f"c{c}"] = time_calls(lambda: lambda: servable.run(sig, {"x": X}), args.requests, c)
        results["direct_eager"][f"c{c}"] = time_calls(lambda: lambda: eager(x=x_tensor), args.requests, c)

    # -- the server as a process ----------------------------------------------------------------------
    rest_port, grpc_port = free_port(), free_port()
    log = open(work / "server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tfserving_compat",
            f"--port={grpc_port}",
            f"--rest_api_port={rest_port}",
            "--bind_address=127.0.0.1",
            "--model_name=half_plus_two",
            f"--model_base_path={base}",
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT / "include")},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{rest_port}/v1/models/half_plus_two"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                requests.get(url, timeout=1)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError((work / "server.log").read_text()[-2000:]) from None
                time.sleep(0.2)

        def http_caller():
            session = requests.Session()
            session.trust_env = False

            def call():
                resp = session.post(f"{url}:predict", data=BODY, timeout=10)
                if resp.status_code != 200:
                    raise RuntimeError(resp.text)

            return call

        for _ in range(200):
            http_caller()()
        for c in (1, 8):
            results["rest"][f"c{c}"] = time_calls(http_caller, args.requests, c)

        # -- version load time: directory renamed into place -> AVAILABLE ---------------------------
        loads = []
        for i in range(args.loads):
            version = 1000 + i
            tmp = base / f".tmp-{version}"
            shutil.copytree(version_dir, tmp)
            t0 = time.perf_counter()
            os.rename(tmp, base / str(version))
            while True:
                states = {v["version"]: v["state"] for v in requests.get(url, timeout=5).json()["model_version_status"]}
                if states.get(str(version)) == "AVAILABLE":
                    break
                time.sleep(0.01)
            loads.append(time.perf_counter() - t0)
        results["version_load_s"] = {
            "poll_wait_seconds": 1,
            "each": [round(v, 3) for v in loads],
            "max": round(max(loads), 3),
            "mean": round(statistics.fmean(loads), 3),
        }
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        shutil.rmtree(work, ignore_errors=True)

    for c in ("c1", "c8"):
        rest, direct = results["rest"][c], results["direct_session"][c]
        results.setdefault("overhead", {})[c] = {
            "p50_ms_over_session": round(rest["p50_ms"] - direct["p50_ms"], 3),
            "p50_ratio_vs_session": round(rest["p50_ms"] / direct["p50_ms"], 1),
            "p50_ms_over_eager": round(rest["p50_ms"] - results["direct_eager"][c]["p50_ms"], 3),
            "throughput_ratio_vs_session": round(rest["throughput_rps"] / direct["throughput_rps"], 3),
        }
    results["targets"] = {
        "p50_overhead_c1_le_2ms": results["overhead"]["c1"]["p50_ms_over_session"] <= 2.0,
        "version_available_within_2s": results["version_load_s"]["max"] <= 2.0,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "tfserving_rest.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        f"# TF-Serving-compatible server: REST predict ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores)",
        "",
        "| path | concurrency | p50 ms | p99 ms | req/s |",
        "|---|---|---|---|---|",
    ]
    for name in ("direct_session", "direct_eager", "rest"):
        for c in ("c1", "c8"):
            r = results[name][c]
            lines.append(f"| {name} | {c[1:]} | {r['p50_ms']} | {r['p99_ms']} | {r['throughput_rps']} |")
    lines += [
        "",
        f"Overhead: {json.dumps(results['overhead'])}",
        "",
        f"Version load: {results['version_load_s']}",
        "",
        f"Targets met: {results['targets']}",
        "",
    ]
    (RESULTS / "tfserving_rest.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
