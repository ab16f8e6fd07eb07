"""`make diagnose MODEL=<name> [REASON=...]`: collect a model's diagnosis bundle through the model_diagnose DAG.

Triggers model_diagnose over Airflow's REST API (the stack's settings: TFDEPLOY_STACK picks the stack), waits for
the run, and prints where the bundle is on HDFS, what is in it, and a WebHDFS URL to download it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from urllib.parse import quote

import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "plugins"))

from tfdeploy.airflow_client import AirflowApiError, AirflowClient  # noqa: E402
from tfdeploy.core.errors import InvalidModelName  # noqa: E402
from tfdeploy.core.names import validate_model_name  # noqa: E402
from tfdeploy.settings import get_settings  # noqa: E402

DAG_ID = "model_diagnose"
TASK_ID = "collect"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the model's name")
    parser.add_argument("--reason", default="", help="why (recorded in the bundle and the registry's history)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the run")
    args = parser.parse_args(argv)
    try:
        model = validate_model_name(args.model.strip())
    except InvalidModelName as exc:
        print(f"[diagnose] {exc} (give MODEL=<name>)", file=sys.stderr)
        return 2
    s = get_settings()
    client = AirflowClient(s.airflow_url, s.airflow_user, s.airflow_password, timeout=30)
    try:
        client.wait_for_dag(DAG_ID, timeout=90)
        client.unpause(DAG_ID)
        conf = {"model_name": model, "reason": args.reason.strip() or "on demand (make diagnose)"}
        run_id = client.trigger(DAG_ID, conf=conf)["dag_run_id"]
        print(f"[diagnose] {DAG_ID} run {run_id} for {model}: waiting (Airflow {s.airflow_url})")
        run = client.wait_for_run(DAG_ID, run_id, timeout=args.timeout)
        runs = f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}"
        if run["state"] != "success":
            print(
                f"[diagnose] the run ended {run['state']}: see its log at "
                f"{s.airflow_url}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}/tasks/{TASK_ID}",
                file=sys.stderr,
            )
            return 1
        value = client.request("GET", f"{runs}/taskInstances/{TASK_ID}/xcomEntries/return_value")["value"]
    except (AirflowApiError, requests.RequestException) as exc:
        print(f"[diagnose] {exc} (is Airflow up? `make status`)", file=sys.stderr)
        return 1
    path = value["path"]
    print(f"[diagnose] bundle on HDFS: {path}")
    print(f"[diagnose] parts ({len(value['parts'])}):")
    for part in value["parts"]:
        print(f"    {part}")
    for part, why in (value.get("missing") or {}).items():
        print(f"[diagnose] not collected: {part}: {why}")
    url = f"{s.webhdfs_url}/webhdfs/v1{quote(path)}?op=OPEN&user.name={quote(s.hdfs_user)}"
    print(f"[diagnose] download: curl -sSL -o {path.rsplit('/', 1)[-1]} '{url}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
