"""The main job (`make demo`): deploys the example model end to end, then a second version, through the
real scheduler, HDFS and a serving container, and prints where to look.

1. builds the example Keras model twice (include/example_model/build.py: `good`, then `better`);
2. triggers `model_deploy` over Airflow's REST API for each and waits for the runs;
3. asks the serving container for a prediction and the registry for the model's state.
The second version goes out as a gray release (the DAG's default `canary` strategy: 10%, 50%, 100% of
unversioned calls, each step baked and judged by live metrics) while a small client sends it traffic
through the router, as production clients would; the demo prints each step's weight and verdict.

Run again on the same stack, it succeeds again: the model is already in production, so it releases `better`
once more, which the pipeline decides is a no-op (same content, already in production); `good` is not sent
again, since its version was superseded and the pipeline refuses to re-release it (model_rollback does that).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "plugins"))

from tfdeploy.airflow_client import AirflowClient  # noqa: E402
from tfdeploy.settings import get_settings  # noqa: E402

DAG_ID = "model_deploy"
MODEL = "demo_regressor"


def build(variant: str, out: Path) -> Path:
    if not (out / "saved_model" / "saved_model.pb").exists():
        print(f"[demo] building the example model ({variant}) into {out}")
        done = subprocess.run(
            [
                sys.executable,
                str(ROOT / "include" / "example_model" / "build.py"),
                "--out",
                str(out),
                "--variant",
                variant,
            ],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:  # TensorFlow's start-up chatter only when it matters
            raise SystemExit(f"[demo] building the example model failed:\n{done.stderr[-3000:]}")
    return out


class Clients(threading.Thread):
    """Unversioned predict calls through the router (~50/s, at most 10 minutes) while a release runs: what a gray
    release's steps are judged by. Counts the answers by the side that served them (the router's X-Served-By)."""

    def __init__(self, url: str, instances: list) -> None:
        super().__init__(daemon=True)
        self.url, self.body = url, {"instances": instances}
        self.sides: dict[str, int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + 600
        with requests.Session() as session:
            session.trust_env = False
            while not self.stop.is_set() and time.monotonic() < deadline:
                try:
                    resp = session.post(self.url, json=self.body, timeout=10)
                    key = f"{resp.headers.get('X-Served-By', '?')} {resp.status_code}"
                except requests.RequestException as exc:
                    key = type(exc).__name__
                self.sides[key] = self.sides.get(key, 0) + 1
                self.stop.wait(0.02)


def deploy(client: AirflowClient, example: Path, label: str, **extra: object) -> dict:
    conf = {"model_name": MODEL, "source": str(example / "saved_model"), "golden_path": str(example / "golden.json")}
    run = client.trigger(DAG_ID, conf=conf | extra)
    run_id = run["dag_run_id"]
    print(f"[demo] {label}: triggered {DAG_ID} run {run_id}")
    t0 = time.monotonic()
    final = client.wait_for_run(DAG_ID, run_id, timeout=900)
    tis = {ti["task_id"]: ti["state"] for ti in client.task_instances(DAG_ID, run_id)}
    print(f"[demo] {label}: run ended {final['state']} in {time.monotonic() - t0:.1f}s: {tis}")
    return final


def production_version(s, token: str) -> int | None:
    resp = requests.get(
        f"{s.airflow_url}/registry/v1/models/{MODEL}", timeout=10, headers={"Authorization": f"Bearer {token}"}
    )
    if resp.status_code == 404:
        return None
    resp.raise_for_status()
    return resp.json().get("version")


def main() -> int:
    s = get_settings()
    client = AirflowClient(s.airflow_url, s.airflow_user, s.airflow_password)
    first = build("good", s.example_dir / "good")  # model_deploy's Params default to this one
    second = build("better", s.example_dir / "better")
    client.wait_for_dag(DAG_ID)
    client.unpause(DAG_ID)
    token = client.token()
    ok = True
    if (before := production_version(s, token)) is None:
        ok = deploy(client, first, "first version", strategy="all_at_once")["state"] == "success"
    else:
        print(
            f"[demo] {MODEL} already serves v{before} (an earlier `make demo`): releasing `better` again, which the "
            "pipeline finds is a no-op or resumes it; `good` is not re-released (its version was superseded: use "
            "the model_rollback DAG to serve it again)"
        )
    rest = f"http://127.0.0.1:{s.serving_rest_port}"
    golden = json.loads((second / "golden.json").read_text())
    clients = Clients(f"{rest}/v1/models/{MODEL}:predict", golden["inputs"][:1])
    clients.start()
    try:
        ok = deploy(client, second, "second version (gray release under live calls)")["state"] == "success" and ok
    finally:
        clients.stop.set()
        clients.join(timeout=15)
    print(f"[demo] live calls during the release, by side and status: {clients.sides}")
    history = requests.get(
        f"{s.airflow_url}/registry/v1/models/{MODEL}/history",
        params={"kind": "traffic", "limit": "6"},
        timeout=10,
        headers={"Authorization": f"Bearer {token}"},
    ).json()
    for event in reversed(history.get("events", [])):
        canary = event.get("details", {}).get("canary") or {}
        reason = event.get("reason") or event.get("details", {}).get("reason", "")
        print(f"[demo] traffic: candidate v{canary.get('version')} at {canary.get('weight', 0)}%: {reason}")
    registry = requests.get(
        f"{s.airflow_url}/registry/v1/models/{MODEL}", timeout=10, headers={"Authorization": f"Bearer {token}"}
    ).json()
    answer = requests.post(f"{rest}/v1/models/{MODEL}:predict", json={"instances": golden["inputs"][:2]}, timeout=10)
    print(f"[demo] registry: {MODEL} production v{registry.get('version')}, deployments {registry.get('deployments')}")
    print(
        f"[demo] serving:  POST {rest}/v1/models/{MODEL}:predict -> {answer.text.strip()}"
        f" (expected about {[round(v, 3) for v in golden['labels'][:2]]})"
    )
    print(
        f"[demo] Airflow UI:      {s.airflow_url}/dags/{DAG_ID}  (user {s.airflow_user!r}; its password: `make status`)"
    )
    print(f"[demo] Model registry:  {s.airflow_url}/registry/  (API docs {s.airflow_url}/registry/docs)")
    print(f"[demo] TF Serving:      {rest}/v1/models/{MODEL}  (gRPC 127.0.0.1:{s.serving_grpc_port})")
    print(f"[demo] HDFS:            {s.webhdfs_url}/explorer.html#/models/{MODEL}")
    print(f"[demo] service logs:    {s.logs_dir}/   stop everything with `make down`")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
