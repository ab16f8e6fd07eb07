"""Benchmark: the compose stack (docker-compose.yml) — `make compose-up` cold and warm, and memory per service.

1. Cold (``--cold``): no compose image and no volume: `compose_stack.py down --volumes`, the local/tfdeploy-<name>
   images of docker-compose.yml and the Airflow image's cached pip stage removed (the base, serving and sandbox
   images stay: `make setup` builds those),
   then `ComposeStack.up()`: images built, every service started on empty volumes (databases initialised, HDFS
   formatted, the serving images loaded into the serving host), until all are healthy.
2. Warm, N runs: the stack stopped (`down`: containers removed, volumes and images kept), then `up()` again: image
   inputs hashed (no build), containers created, the serving host's engine already holding the serving images.
   The ratio cold / warm is reported.
3. Already running: `up()` on the running stack (what a second `make compose-up` costs).
4. Memory of each service after the stack idles for ``--settle`` seconds: PSS of the container's processes (its init
   and descendants, from /proc: the metric `make status` gives for the local stack) and `docker stats`' usage (the
   cgroup's, page cache excluded); the serving replicas inside each serving host's engine (docker-host,
   docker-host-2) are its own containers (one line each, from that engine's `docker stats`). With ``--deploy`` the
   example model is deployed first (compose-demo's first release), so the replicas run. Where the dev stack
   (`make up`) runs, its PSS total is printed beside it: the same services as plain processes.

Runs the default compose project (tfdeploy-compose, ports 28080...), which it leaves up. Results:
bench/results/compose.{json,md}.

Run: .venv/bin/python bench/compose.py [--cold] [--runs 2] [--settle 60] [--deploy]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT / "include" / "scripts")]

from compose_stack import ComposeStack  # noqa: E402

import stack  # noqa: E402
from tfdeploy.settings import settings_for  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def compose_images() -> list[str]:
    text = (ROOT / "docker-compose.yml").read_text()
    return sorted(set(re.findall(r"image: (local/tfdeploy-[a-z-]+:latest)", text)))


def mib(text: str) -> float:
    """docker stats' '123.4MiB' / '1.2GiB' / '800kB' -> MiB."""
    m = re.match(r"([\d.]+)\s*([KMG]i?B|B|kB)", text.strip())
    if not m:
        return 0.0
    scale = {"B": 1 / 2**20, "kB": 1e3 / 2**20, "KiB": 1 / 1024, "MiB": 1, "GiB": 1024, "MB": 1e6 / 2**20}
    return float(m[1]) * scale.get(m[2], 1)


ENGINES = ("docker-host", "docker-host-2")  # the serving hosts: Docker engines whose containers are the replicas


def memory(c: ComposeStack) -> dict[str, dict[str, float]]:
    """Service -> {pss_mib, docker_stats_mib}; plus `replica <engine>/<name>` for each serving host's own
    containers."""
    containers = c.containers()
    out: dict[str, dict[str, float]] = {}
    ids = [x["Id"] for x in containers.values() if x["State"]["Status"] == "running"]
    stats = subprocess.run(
        ["docker", "stats", "--no-stream", "--format", "{{.ID}} {{.MemUsage}}", *ids],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    usage = {line.split()[0]: mib(line.split()[1]) for line in stats.splitlines() if line.strip()}
    for service, info in sorted(containers.items()):
        if info["State"]["Status"] != "running":
            continue
        out[service] = {
            "pss_mib": round(stack._pss_mib(info["State"]["Pid"]), 1),
            "docker_stats_mib": round(usage.get(info["Id"][:12], 0.0), 1),
        }
    for engine in ENGINES:  # the serving replicas: containers of each serving host's own engine
        host = containers.get(engine)
        if not host:
            continue
        inner = subprocess.run(
            ["docker", "exec", host["Id"], "docker", "stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}}"],
            capture_output=True,
            text=True,
        ).stdout
        for line in inner.splitlines():
            if line.strip():
                name, used = line.split()[0], line.split()[1]
                out[f"replica {engine}/{name}"] = {"pss_mib": 0.0, "docker_stats_mib": round(mib(used), 1)}
    return out


def dev_stack_pss() -> float | None:
    """PSS of the dev stack's processes (`make up`), if it runs; without dockerd, whose descendants are every container
    of the machine's engine (the compose stack's too)."""
    s = settings_for("dev")
    procs = [proc for _, _, names in stack.SERVICES.values() for proc in names if proc != "dockerd"]
    pids = [stack.running_pid(s, proc) for proc in procs]
    running = [p for p in pids if p]
    return round(sum(stack._pss_mib(p) for p in running), 1) if running else None


def timed_up(c: ComposeStack) -> dict[str, float]:
    return {k: round(v, 1) for k, v in c.up().items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cold", action="store_true", help="remove the compose images and volumes first")
    parser.add_argument("--runs", type=int, default=2, help="warm runs")
    parser.add_argument("--settle", type=float, default=60.0, help="seconds of idling before the memory figures")
    parser.add_argument("--deploy", action="store_true", help="deploy the example model before measuring memory")
    args = parser.parse_args()
    c = ComposeStack()
    result: dict = {"when": dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "cores": os.cpu_count()}
    if args.cold:
        c.down(volumes=True)
        build_cache = subprocess.run(
            ["docker", "images", "-a", "-q", "--filter", "label=tfdeploy.stage=airflow-build"],
            capture_output=True,
            text=True,
        ).stdout.split()  # the Airflow image's pip stage (Docker keeps it as build cache)
        subprocess.run(["docker", "rmi", "-f", *compose_images(), *build_cache], capture_output=True)
        result["cold"] = timed_up(c)
        print(f"[bench] cold: {result['cold']}")
    warm = []
    for i in range(args.runs):
        c.down()
        warm.append(timed_up(c))
        print(f"[bench] warm {i + 1}: {warm[-1]}")
    result["warm"] = warm
    t0 = time.monotonic()
    c.up()
    result["already_running_s"] = round(time.monotonic() - t0, 1)
    if args.deploy:
        from demo import MODEL, deploy  # include/scripts/demo.py

        client = c.client()
        client.wait_for_dag("model_deploy", timeout=300)
        client.unpause("model_deploy")
        final = deploy(client, c.build_example("good"), "bench", strategy="all_at_once")
        result["deployed"] = {"model": MODEL, "state": final["state"]}
    time.sleep(args.settle)
    result["memory"] = memory(c)
    result["dev_stack_pss_mib"] = dev_stack_pss()
    result["load_average"] = os.getloadavg()
    if result.get("cold") and warm:
        result["cold_to_warm"] = round(result["cold"]["total"] / min(w["total"] for w in warm), 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "compose.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "compose.md").write_text(report(result))
    print((RESULTS / "compose.md").read_text())
    return 0


def report(r: dict) -> str:
    lines = [f"# Compose stack (docker-compose.yml) ({r['when']}, {r['cores']} cores)", ""]
    lines += ["## `make compose-up`", "", "| run | images | up to healthy | total |", "|---|---|---|---|"]
    runs = ([("cold", r["cold"])] if r.get("cold") else []) + [(f"warm {i + 1}", w) for i, w in enumerate(r["warm"])]
    for name, t in runs:
        lines.append(f"| {name} | {t.get('images', 0)} s | {t['up']} s | {t['total']} s |")
    lines.append(f"| already running | | | {r['already_running_s']} s |")
    if r.get("cold_to_warm"):
        lines += ["", f"cold / warm (best): {r['cold_to_warm']}x"]
    lines += [
        "",
        "- cold: no compose image (nor the Airflow image's cached pip stage: every wheel downloaded again), no volume:"
        " images built, PostgreSQL initialised, HDFS formatted, the serving and sandbox images loaded into the serving"
        " hosts' engines (1.8 GB, `docker save | docker load`, in parallel with the rest), until every service is"
        " healthy;",
        "- warm: the stack stopped (`make compose-down`: containers removed, volumes and images kept) and started"
        " again: most of it is Airflow's start-up (migration check in airflow-init, then the components' first"
        " healthchecks) on 2 cores;",
        "- already running: `make compose-up` on a healthy stack of the same configuration and images: docker-compose's"
        " configuration hashes and the image ids compared, nothing restarted.",
        "- The machine is shared: the dev and test stacks (and other benchmarks) ran beside it"
        + (f" (load average {r['load_average'][0]:.1f} at the end)." if r.get("load_average") else "."),
    ]
    mem = r["memory"]
    services = {k: v for k, v in mem.items() if not k.startswith("replica ")}
    total_pss = round(sum(v["pss_mib"] for v in services.values()), 1)
    total_stats = round(sum(v["docker_stats_mib"] for v in mem.values()), 1)
    lines += ["", "## Memory after idling", "", "| service | PSS MiB | docker stats MiB |", "|---|---|---|"]
    for name, v in sorted(mem.items(), key=lambda kv: -kv[1]["docker_stats_mib"]):
        engine = name.removeprefix("replica ").split("/", 1)[0]
        pss = f"{v['pss_mib']}" if not name.startswith("replica ") else f"(in {engine}'s)"
        label = f"{name} (engine; its PSS includes its replicas)" if name in ENGINES else name
        lines.append(f"| {label} | {pss} | {v['docker_stats_mib']} |")
    lines.append(f"| **total** | **{total_pss}** | **{total_stats}** |")
    if r.get("deployed"):
        lines += ["", f"Measured with {r['deployed']['model']} deployed ({r['deployed']['state']}): replicas running."]
    if r.get("dev_stack_pss_mib"):
        engines = sum(services.get(engine, {}).get("pss_mib", 0.0) for engine in ENGINES)
        without_engine = round(total_pss - engines, 1)
        lines += [
            "",
            f"The dev stack (`make up`: the same services as processes) was running: {r['dev_stack_pss_mib']} MiB PSS "
            "without its Docker engines and replicas; the compose stack without its serving hosts (engines and "
            "replicas): "
            f"{without_engine} MiB, compose / local = {round(without_engine / r['dev_stack_pss_mib'], 2)}x.",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
