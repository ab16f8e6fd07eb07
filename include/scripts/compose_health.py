"""Healthchecks of the compose stack's Airflow components (docker-compose.yml), cheap enough to run every 15 s on a
2-core machine: no Airflow import.

    compose_health.py dag_processor|triggerer|scheduler   its heartbeat as the api-server's /api/v2/monitor/health
                                                          reports it (one instance of each in the compose stack)
    compose_health.py worker <celery node name>           the Celery worker answers a ping through the broker

Exit status 0: healthy; 1: not (the reason on stderr).
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request

API = "http://airflow-apiserver:8080"


def component(name: str) -> str | None:
    """None when ``name`` is healthy per the api-server, else why not."""
    with urllib.request.urlopen(f"{API}/api/v2/monitor/health", timeout=5) as resp:
        health = json.load(resp)
    status = (health.get(name) or {}).get("status")
    return None if status == "healthy" else f"{name}: {status or 'not reported'}"


def worker(node: str) -> str | None:
    """None when the Celery node ``node`` answers a ping through the broker, else why not."""
    from celery import Celery  # Celery alone (Airflow's Celery app is not needed to ping)

    app = Celery(broker=os.environ["AIRFLOW__CELERY__BROKER_URL"])
    try:
        replies = app.control.ping(destination=[node], timeout=5)
    finally:
        app.close()
    return None if any(node in reply for reply in replies) else f"Celery worker {node} does not answer a ping"


def main(argv: list[str]) -> int:
    try:
        if argv[:1] == ["worker"] and len(argv) == 2:
            problem = worker(argv[1])
        elif len(argv) == 1 and argv[0] in ("dag_processor", "triggerer", "scheduler"):
            problem = component(argv[0])
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except Exception as exc:  # noqa: BLE001 - any failure is "unhealthy", said once
        problem = f"{type(exc).__name__}: {exc}"
    if problem:
        print(problem, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
