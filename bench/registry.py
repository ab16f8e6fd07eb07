"""Benchmark: the model registry with 1,000 models of 20 versions each, on SQLite and PostgreSQL.

Measures, over real HTTP against the registry app served by uvicorn in this process:
  - GET /v1/models (all 1,000 models with production version, canary and health) p50/p99;
  - GET /v1/models/{name}/history (one model's history, newest 100 events) p50/p99;
  - transitions per second (registered -> validated -> canary -> production, each a locked transaction
    that also writes its history event), single client.
Target (issue 4): both reads under 20 ms p50 on SQLite. Results: bench/results/registry.{json,md}.

Run: .venv/bin/python bench/registry.py [--models 1000 --versions 20] (PostgreSQL from `make up`).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins"))

from tfdeploy.registry import db  # noqa: E402
from tfdeploy.registry.api import create_app  # noqa: E402
from tfdeploy.registry.config import RegistryConfig  # noqa: E402
from tfdeploy.registry.service import RegistryService  # noqa: E402
from tfdeploy.settings import get_settings  # noqa: E402

TOKEN = "bench-token"
STATES = ["registered", "validated", "canary", "production"]


def seed(url: str, models: int, versions: int) -> None:
    """Bulk rows as the service would leave them: v1..v(n-2) superseded, v(n-1) production, vn canary."""
    service = RegistryService(url)
    service.migrate()
    engine = db.engine_for(url)
    now = db.utcnow()
    with engine.begin() as conn:
        conn.execute(
            sa.insert(db.Model),
            [
                {
                    "name": f"model-{i:04d}",
                    "description": "",
                    "created_at": now,
                    "updated_at": now,
                    "production_version": versions - 1,
                    "canary_version": versions,
                    "health_status": "healthy",
                    "latest_version": versions,
                }
                for i in range(models)
            ],
        )
        ids = dict(conn.execute(sa.select(db.Model.name, db.Model.id)).all())
        rows, events = [], []
        for name, model_id in ids.items():
            for v in range(1, versions + 1):
                state = "canary" if v == versions else "production" if v == versions - 1 else "superseded"
                rows.append(
                    {
                        "model_id": model_id,
                        "version": v,
                        "state": state,
                        "row_version": 4,
                        "hdfs_uri": f"hdfs:///m/{v}",
                        "manifest_sha256": "0" * 64,
                        "source": "",
                        "signatures": {},
                        "metrics": {"accuracy": 0.9},
                        "validation_report": {},
                        "created_by": "bench",
                        "interface": "schedule",
                        "dag_id": "model_deploy",
                        "run_id": f"run-{v}",
                        "created_at": now,
                        "updated_at": now,
                    }
                )
                for a, b in zip([None, *STATES[:-1]], STATES, strict=True):
                    events.append(
                        {
                            "at": now,
                            "model_name": name,
                            "version": v,
                            "kind": "transition",
                            "from_state": a,
                            "to_state": b,
                            "actor": "bench",
                            "principal": "api-token",
                            "interface": "schedule",
                            "dag_id": "model_deploy",
                            "run_id": f"run-{v}",
                            "task_id": "",
                            "reason": "",
                            "details": {},
                        }
                    )
            if len(rows) >= 5000:
                conn.execute(sa.insert(db.ModelVersion), rows)
                conn.execute(sa.insert(db.HistoryEvent), events)
                rows, events = [], []
        if rows:
            conn.execute(sa.insert(db.ModelVersion), rows)
            conn.execute(sa.insert(db.HistoryEvent), events)


def serve(url: str) -> tuple[str, object]:
    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(RegistryConfig(db_url=url, api_token=TOKEN)), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    threading.Thread(target=server.run, daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            requests.get(f"{base}/health", timeout=1)
            break
        except requests.ConnectionError:
            time.sleep(0.05)
    return base, server


def timed(session: requests.Session, url: str, n: int, **kw) -> dict:
    for _ in range(5):
        session.get(url, timeout=30, **kw).raise_for_status()
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        resp = session.get(url, timeout=30, **kw)
        lat.append((time.perf_counter() - t0) * 1e3)
        resp.raise_for_status()
    lat.sort()
    return {
        "n": n,
        "p50_ms": round(lat[n // 2], 2),
        "p99_ms": round(lat[min(n - 1, int(n * 0.99))], 2),
        "mean_ms": round(statistics.fmean(lat), 2),
        "bytes": len(resp.content),
    }


def run(label: str, url: str, models: int, versions: int, n: int) -> dict:
    t0 = time.perf_counter()
    seed(url, models, versions)
    seeded = time.perf_counter() - t0
    base, server = serve(url)
    session = requests.Session()
    session.trust_env = False
    session.headers["Authorization"] = f"Bearer {TOKEN}"
    try:
        listing = timed(session, f"{base}/v1/models", n)
        count = len(session.get(f"{base}/v1/models", timeout=30).json()["models"])
        history = timed(session, f"{base}/v1/models/model-0500/history", n)
        transitions = 0
        t0 = time.perf_counter()
        for i in range(40):
            name = f"model-{i:04d}"
            body = {"version": versions + 1, "hdfsUri": "hdfs:///new", "manifestSha256": "1" * 64}
            session.post(f"{base}/v1/models/{name}/versions", json=body, timeout=30).raise_for_status()
            for state in STATES[1:]:
                session.post(
                    f"{base}/v1/models/{name}/versions/{versions + 1}/transitions", json={"toState": state}, timeout=30
                ).raise_for_status()
                transitions += 1
        elapsed = time.perf_counter() - t0
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
    return {
        "database": label,
        "models": models,
        "versions_per_model": versions,
        "models_listed": count,
        "seed_seconds": round(seeded, 1),
        "list_models": listing,
        "model_history": history,
        "transitions_per_second": round(transitions / elapsed, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--versions", type=int, default=20)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        results.append(run("sqlite", f"sqlite:///{tmp}/bench.db", args.models, args.versions, args.requests))
    if not args.skip_postgres:
        url = get_settings().postgres_test_url
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP SCHEMA IF EXISTS public CASCADE")
            conn.exec_driver_sql("CREATE SCHEMA public")
        engine.dispose()
        results.append(run("postgresql", url, args.models, args.versions, args.requests))
    sqlite = results[0]
    summary = {
        "results": results,
        "targets": {
            "list_models_p50_under_20ms_sqlite": sqlite["list_models"]["p50_ms"] < 20,
            "history_p50_under_20ms_sqlite": sqlite["model_history"]["p50_ms"] < 20,
        },
        "machine": {"cpus": os.cpu_count()},
    }
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "registry.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        f"# Model registry: {args.models} models x {args.versions} versions ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        "| database | GET /v1/models p50 / p99 ms | model history p50 / p99 ms | transitions/s |",
        "|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['database']} | {r['list_models']['p50_ms']} / {r['list_models']['p99_ms']} | "
            f"{r['model_history']['p50_ms']} / {r['model_history']['p99_ms']} | {r['transitions_per_second']} |"
        )
    lines += ["", f"Targets: {summary['targets']}", ""]
    (out / "registry.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
