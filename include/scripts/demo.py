"""The main job: triggers the project's DAG through Airflow's REST API on the running stack and reports.

`make demo` brings the stack up first. Until the deployment pipeline lands, the job run is `stack_check`,
which proves HDFS and Docker are reachable from Airflow tasks.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "plugins"))

from tfdeploy.airflow_client import AirflowClient  # noqa: E402
from tfdeploy.settings import get_settings  # noqa: E402

DAG_ID = "stack_check"


def main() -> int:
    s = get_settings()
    client = AirflowClient(s.airflow_url, s.airflow_user, s.airflow_password)
    client.wait_for_dag(DAG_ID)
    client.unpause(DAG_ID)
    run = client.trigger(DAG_ID, conf={"note": "make demo"})
    run_id = run["dag_run_id"]
    print(f"[demo] triggered {DAG_ID} run {run_id}")
    t0 = time.monotonic()
    final = client.wait_for_run(DAG_ID, run_id)
    tis = client.task_instances(DAG_ID, run_id)
    print(f"[demo] run {run_id} ended {final['state']} in {time.monotonic() - t0:.1f}s")
    for ti in tis:
        print(f"[demo]   {ti['task_id']}: {ti['state']}")
    print(f"[demo] Airflow UI:   {s.airflow_url}/dags/{DAG_ID}/runs/{run_id}  (user {s.airflow_user!r})")
    print(f"[demo] HDFS UI:      {s.webhdfs_url}/explorer.html")
    print(f"[demo] service logs: {s.logs_dir}/   stop everything with `make down`")
    return 0 if final["state"] == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
