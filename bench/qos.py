"""Benchmark: QoS at the router at about twice the serving capacity.

The example model's `slow` variant (correct, ~15 ms of matmuls per call) is released all at once (model_deploy)
to the stable pool. Then, through the router on 127.0.0.1, unversioned REST predicts:
 1. unloaded: high-priority calls one at a time (`X-Priority: high`), the baseline: p50/p99;
 2. the capacity capped: each stable replica's `maxconn` set to CAP over the runtime API (`set maxconn server
    local_rest/replicaN CAP`); its capacity measured with high-priority callers in a closed loop (requests/s
    answered);
 3. overload: arrivals at LOAD x that capacity (default 2x), a share HIGH_SHARE of them high priority and the
    rest low priority (`X-Priority: low`), each class from its own paced threads, for SECONDS.
Reported: the high-priority calls' success rate and p99 against the unloaded run (goal: >= 99% and p99 <= 2x
unloaded); the low-priority calls' share shed with 429/503 and how fast those answers came (p50/p99), and what
the served ones waited. Where a high-priority call's time went, from the router's own log (HAProxy's Tw, the
time queued at the router, and Tr, the replica's answer time): high-priority callers name the version
(`/versions/1:predict`, the same model and pool; the QoS rules apply to every call alike) so that the log tells
them from low-priority calls. Each server's maxconn is put back to SERVING_MAXCONN at the end, whatever happens.

Runs on the stack `--stack` (default: the test stack; `TFDEPLOY_STACK=test .venv/bin/python
include/scripts/stack.py up` first). Results: bench/results/qos.{json,md}.
Run: .venv/bin/python bench/qos.py [--cap 1] [--load 2.0] [--high-share 0.25] [--seconds 20]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests
from _common import (
    INSIDE,
    PacedLoad,
    airflow_client,
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
MAX_SECONDS = 120  # every load loop stops by itself
MAX_RECORDS = 100_000
GOALS = {"high_success_rate": 0.99, "high_p99_to_unloaded": 2.0}
BODY = {"instances": [INSIDE]}
SHED = (429, 503)
Call = tuple[int, float, str | None]  # status (0: no answer), seconds, Retry-After


def call(session: requests.Session, url: str, priority: str) -> Call:
    """One predict: (status, seconds, Retry-After); status 0 if no answer."""
    t0 = time.perf_counter()
    try:
        resp = session.post(url, json=BODY, headers={"X-Priority": priority}, timeout=30)
        return resp.status_code, time.perf_counter() - t0, resp.headers.get("Retry-After")
    except requests.RequestException:
        return 0, time.perf_counter() - t0, None


class Callers(PacedLoad[Call]):
    """`threads` callers of one priority class, out of phase; paced at `rate`/s in all (open loop: a caller that
    falls behind catches up), or, with rate None, each calling again as soon as it is answered (closed loop)."""

    def __init__(self, url: str, priority: str, threads: int, rate: float | None) -> None:
        super().__init__(
            url, rate, threads, max_seconds=MAX_SECONDS, max_records=MAX_RECORDS, stagger=True, join_timeout=60
        )
        self.priority = priority

    def one_call(self, session: requests.Session, n: int) -> Call:
        return call(session, self.url, self.priority)


def set_maxconn(s, servers: list[str], value: int) -> None:
    for server in servers:
        answer = stack.router_command(s, f"set maxconn server local_rest/{server} {value}").strip()
        if answer:
            raise RuntimeError(f"HAProxy refused `set maxconn server local_rest/{server} {value}`: {answer}")


def maxconns(s) -> dict[str, str]:
    lines = stack.router_command(s, "show stat").splitlines()
    columns = lines[0][2:].split(",")
    rows = [dict(zip(columns, line.split(","), strict=False)) for line in lines[1:] if line]
    return {r["svname"]: r["slim"] for r in rows if r["pxname"] == "local_rest" and r["svname"] != "BACKEND"}


def main() -> int:
    parser = argparse.ArgumentParser(parents=[STACK_ARG])
    parser.add_argument("--cap", type=int, default=1, help="maxconn of each stable replica during the run")
    parser.add_argument("--load", type=float, default=2.0, help="offered load as a multiple of the capacity")
    parser.add_argument("--high-share", type=float, default=0.25, help="share of the calls with X-Priority: high")
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of the overload")
    parser.add_argument("--baseline", type=int, default=300, help="unloaded high-priority calls")
    args = parser.parse_args()
    s = get_settings()
    client = airflow_client(DAG)
    model = f"bench_qos_{uuid.uuid4().hex[:6]}"
    servers = [f"replica{i + 1}" for i in range(s.stable_replicas)]
    results: dict = {
        "machine": {"cpus": os.cpu_count()},
        "stack": s.stack,
        "model": model,
        "stable_replicas": s.stable_replicas,
        "configured_maxconn": s.serving_maxconn,
        "qos_low_queue": s.qos_low_queue,
        "qos_normal_queue": s.qos_normal_queue,
        "cap": args.cap,
        "load": args.load,
        "high_share": args.high_share,
        "seconds": args.seconds,
        "goals": GOALS,
    }
    with tempfile.TemporaryDirectory(prefix="bench-qos-") as tmp:
        example = build_examples(Path(tmp), {"slow": ("slow", uuid.uuid4().int % 100_000)})["slow"]
        run = client.trigger(DAG, conf=deploy_conf(model, example, strategy="all_at_once"))
        if client.wait_for_run(DAG, run["dag_run_id"], timeout=600)["state"] != "success":
            raise RuntimeError(f"releasing {model} failed: run {run['dag_run_id']}")
    url = f"http://127.0.0.1:{s.serving_rest_port}/v1/models/{model}:predict"
    high_url = f"http://127.0.0.1:{s.serving_rest_port}/v1/models/{model}/versions/1:predict"
    log = stack._log_file(s, "router")

    with local_session() as session:  # 1. unloaded: one high-priority call at a time
        for _ in range(30):  # warm-up
            call(session, high_url, "high")
        offset = log.stat().st_size
        baseline = [call(session, high_url, "high") for _ in range(args.baseline)]
        time.sleep(0.5)
        unloaded_log = router_log(log, offset, model)
    ok = [t for code, t, _ in baseline if code == 200]
    results["unloaded_high"] = {
        "sent": len(baseline),
        "ok": len(ok),
        **latency_ms(ok, scale=1e3),
        "router_log": timings(unloaded_log, high=True),
    }

    try:
        set_maxconn(s, servers, args.cap)
        results["maxconn_during_run"] = maxconns(s)
        # 2. capacity under the cap: closed-loop high-priority callers, more than the servers take at once
        with Callers(high_url, "high", 2 * args.cap * len(servers) + 2, None) as probe:
            time.sleep(1)
            start, done = time.monotonic(), len(probe.records)
            time.sleep(5)
            capacity = (len(probe.records) - done) / (time.monotonic() - start)
        results["capacity_rps"] = round(capacity, 1)
        time.sleep(1)
        # 3. overload: LOAD x capacity, HIGH_SHARE of it high priority
        offered = args.load * capacity
        high_rate, low_rate = offered * args.high_share, offered * (1 - args.high_share)
        offset = log.stat().st_size
        with Callers(high_url, "high", 6, high_rate) as high, Callers(url, "low", 8, low_rate) as low:
            started = time.monotonic()
            time.sleep(args.seconds)
        elapsed = time.monotonic() - started
        time.sleep(0.5)
        overload_log = router_log(log, offset, model)
    finally:
        set_maxconn(s, servers, s.serving_maxconn)
        results["maxconn_after_run"] = maxconns(s)

    highs, lows = high.records, low.records
    high_ok = [t for code, t, _ in highs if code == 200]
    high_all = [t for _code, t, _ in highs]
    shed = [(t, retry) for code, t, retry in lows if code in SHED]
    low_ok = [t for code, t, _ in lows if code == 200]
    unloaded_p99 = results["unloaded_high"]["p99_ms"]
    results["overload"] = {
        "target_rps": {"high": round(high_rate, 1), "low": round(low_rate, 1)},
        "sent_rps": {"high": round(len(highs) / elapsed, 1), "low": round(len(lows) / elapsed, 1)},
        "offered_to_capacity": round((len(highs) + len(lows)) / elapsed / capacity, 2),
        "served_rps": round((len(high_ok) + len(low_ok)) / elapsed, 1),
        "high": {
            "sent": len(highs),
            "ok": len(high_ok),
            "status_codes": status_codes(code for code, _t, _retry in highs),
            "success_rate": round(len(high_ok) / len(highs), 4) if highs else None,
            **latency_ms(high_all, scale=1e3),
            "router_log": timings(overload_log, high=True),
        },
        "low": {
            "sent": len(lows),
            "ok": len(low_ok),
            "status_codes": status_codes(code for code, _t, _retry in lows),
            "shed": len(shed),
            "shed_share": round(len(shed) / len(lows), 4) if lows else None,
            "shed_with_retry_after": sum(1 for _t, retry in shed if retry),
            **latency_ms([t for t, _ in shed], prefix="shed_", scale=1e3),
            **latency_ms(low_ok, prefix="served_", scale=1e3),
            "router_log": timings(overload_log, high=False),
        },
    }
    over = results["overload"]["high"]
    results["high_p99_to_unloaded"] = (
        round(over["p99_ms"] / unloaded_p99, 2) if over["p99_ms"] and unloaded_p99 else None
    )
    results["met"] = {
        "high_success_rate": over["success_rate"] is not None and over["success_rate"] >= GOALS["high_success_rate"],
        "high_p99_to_unloaded": results["high_p99_to_unloaded"] is not None
        and results["high_p99_to_unloaded"] <= GOALS["high_p99_to_unloaded"],
    }

    write_json("qos", results)
    write_report("qos", report(results))
    return 0


LOG_LINE = re.compile(
    r"serving_rest (?P<server>\S+) (?P<tq>-?\d+)/(?P<tw>-?\d+)/(?P<tc>-?\d+)/(?P<tr>-?\d+)/(?P<ta>-?\d+) "
    r"(?P<status>\d+) .*\"POST (?P<path>\S+) HTTP"
)


def router_log(path: Path, offset: int, model: str) -> list[dict]:
    """The router's log lines of ``model``'s predicts written since ``offset``: server, timers (ms), status, path."""
    with path.open("rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    out = []
    for line in text.splitlines():
        m = LOG_LINE.search(line)
        if m and f"/v1/models/{model}" in m["path"]:
            out.append({k: int(v) if k not in ("server", "path") else v for k, v in m.groupdict().items()})
    return out


def timings(lines: list[dict], *, high: bool) -> dict:
    """Per class (high-priority calls name the version), from the router's log: calls, refused at the router
    (no server), and for the served ones the time queued at the router (Tw) and the replica's answer time (Tr)."""
    mine = [x for x in lines if ("/versions/" in x["path"]) == high]
    served = [x for x in mine if x["tw"] >= 0 and x["tr"] >= 0]
    return {
        "logged": len(mine),
        "refused_at_router": sum(1 for x in mine if "<NOSRV>" in x["server"]),
        **latency_ms([x["tw"] for x in served], prefix="queued_", digits=1),
        **latency_ms([x["tr"] for x in served], prefix="replica_", digits=1),
    }


def report(r: dict) -> list[str]:
    o, base = r["overload"], r["unloaded_high"]
    high, low = o["high"], o["low"]
    met = r["met"]
    return [
        f"# QoS at the router under overload ({time.strftime('%Y-%m-%d %H:%M')}, {r['machine']['cpus']} cores, stack "
        f"{r['stack']}, {r['stable_replicas']} stable replicas, the `slow` example model)",
        "",
        f"Capacity capped at maxconn {r['cap']} per stable replica (runtime API; configured {r['configured_maxconn']},"
        f" put back after: {r['maxconn_after_run']}): {r['capacity_rps']} requests/s answered (closed-loop "
        f"high-priority callers). Overload for {r['seconds']:g} s at {r['load']:g}x that, {r['high_share']:.0%} "
        f"high priority: sent {o['sent_rps']['high']} high + {o['sent_rps']['low']} low requests/s "
        f"({o['offered_to_capacity']}x the capacity), {o['served_rps']} requests/s served. Low priority is shed while "
        f"{r['qos_low_queue']} or more wait (QOS_LOW_QUEUE).",
        "",
        "| measure | value | goal | met |",
        "|---|---|---|---|",
        f"| high priority: success rate under overload | {high['success_rate']:.2%} ({high['ok']}/{high['sent']}) | "
        f">= {GOALS['high_success_rate']:.0%} | {'yes' if met['high_success_rate'] else 'no'} |",
        f"| high priority: p99 under overload / unloaded | {r['high_p99_to_unloaded']}x ({high['p99_ms']} ms / "
        f"{base['p99_ms']} ms) | <= {GOALS['high_p99_to_unloaded']:g}x | "
        f"{'yes' if met['high_p99_to_unloaded'] else 'no'} |",
        "",
        "| calls | sent | status codes | p50 ms | p99 ms |",
        "|---|---|---|---|---|",
        f"| high, unloaded (one at a time) | {base['sent']} | 200: {base['ok']} | {base['p50_ms']} | "
        f"{base['p99_ms']} |",
        f"| high, overload | {high['sent']} | {high['status_codes']} | {high['p50_ms']} | {high['p99_ms']} |",
        f"| low, overload: shed (429/503) | {low['shed']} ({low['shed_share']:.1%} of {low['sent']}) | "
        f"{low['status_codes']} | {low['shed_p50_ms']} | {low['shed_p99_ms']} |",
        f"| low, overload: served | {low['ok']} | 200 | {low['served_p50_ms']} | {low['served_p99_ms']} |",
        "",
        f"- shed answers with Retry-After: {low['shed_with_retry_after']} of {low['shed']}",
        "",
        "Where the time went, from the router's log (ms; queued: HAProxy's Tw, time waiting in the router's queue; "
        "replica: Tr, the replica's answer time):",
        "",
        "| calls | logged | refused at the router | queued p50 | queued p99 | replica p50 | replica p99 |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {name} | {t['logged']} | {t['refused_at_router']} | {t['queued_p50_ms']} | {t['queued_p99_ms']} | "
            f"{t['replica_p50_ms']} | {t['replica_p99_ms']} |"
            for name, t in (
                ("high, unloaded", base["router_log"]),
                ("high, overload", high["router_log"]),
                ("low, overload", low["router_log"]),
            )
        ],
        "",
        f"- maxconn per stable replica during the run: {r['maxconn_during_run']}",
    ]


if __name__ == "__main__":
    sys.exit(main())
