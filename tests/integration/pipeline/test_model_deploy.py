"""model_deploy end to end, through the real scheduler (triggered over the REST API), real HDFS, the
registry served by Airflow, and a real serving container on the Docker engine.

One model name per module; the runs build on each other in order: first deploy, second deploy,
rejected deploy, rolled-back deploy, safe reruns, serialized runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import docker
import pytest
import requests

from tests.integration.serving_hosts import replica_address, replica_engine
from tfdeploy.settings import get_settings

ROOT = Path(__file__).resolve().parents[3]
DAG = "model_deploy"
SETTINGS = get_settings()  # the test stack's (tests/conftest.py): never the user's serving target
REST = f"http://127.0.0.1:{SETTINGS.serving_rest_port}"
CONTAINER = f"{SETTINGS.serving_container_prefix}-local"
VARIANTS = ("good", "better", "nosig", "noisy")


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("examples")
    procs = {
        v: subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "include" / "example_model" / "build.py"),
                "--out",
                str(out / v),
                "--variant",
                v,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for v in VARIANTS
    }
    for proc in procs.values():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-2000:]
    return {v: out / v for v in VARIANTS}


@pytest.fixture(scope="module")
def model() -> str:
    return f"e2e_{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def registry(settings, airflow):
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {airflow.token()}"
    base = f"{settings.airflow_url}/registry/v1"

    def get(path: str, **params):
        resp = session.get(f"{base}{path}", params=params, timeout=10)
        resp.raise_for_status()
        return resp.json()

    return get


@pytest.fixture(scope="module")
def deploy(airflow, model):
    airflow.wait_for_dag(DAG)
    airflow.unpause(DAG)

    def run(example: Path, **conf) -> tuple[dict, dict[str, str]]:
        body = {
            "model_name": model,
            "source": str(example / "saved_model"),
            "golden_path": str(example / "golden.json"),
            "strategy": "all_at_once",  # gray releases: test_gray_release.py
        }
        triggered = airflow.trigger(DAG, conf={**body, **conf})
        final = airflow.wait_for_run(DAG, triggered["dag_run_id"], timeout=600)
        states = {ti["task_id"]: ti["state"] for ti in airflow.task_instances(DAG, triggered["dag_run_id"])}
        return final, states

    return run


def new_events(registry, model: str, after_id: int) -> list[dict]:
    return [e for e in registry(f"/models/{model}/history", limit=100)["events"] if e["id"] > after_id]


def versions_state(registry, model: str) -> dict[int, str]:
    return {v["version"]: v["state"] for v in registry(f"/models/{model}/versions")["versions"]}


def served(model: str, base: str = REST) -> dict[int, str]:
    body = requests.get(f"{base}/v1/models/{model}", timeout=10).json()
    return {int(v["version"]): v["state"] for v in body.get("model_version_status", [])}


def predict(model: str, example: Path, where: str = "") -> list:
    golden = json.loads((example / "golden.json").read_text())
    resp = requests.post(
        f"{REST}/v1/models/{model}{where}:predict", json={"instances": golden["inputs"][:3]}, timeout=10
    )
    resp.raise_for_status()
    return [row[0] for row in resp.json()["predictions"]]


def expected(example: Path) -> list[float]:
    return json.loads((example / "golden.json").read_text())["labels"][:3]


def container_id() -> str:
    return docker.DockerClient(base_url=SETTINGS.docker_host).containers.get(CONTAINER).id


def test_first_deploy(deploy, registry, model, examples):
    final, states = deploy(examples["good"])
    assert final["state"] == "success", states
    assert states["rollback"] == "skipped" and states["release_gate"] == "success"
    assert versions_state(registry, model) == {1: "production"}
    detail = registry(f"/models/{model}")
    assert detail["version"] == 1 and detail["lock"] is None
    assert {(d["label"], d["version"]) for d in detail["deployments"]} == {("stable", 1)}
    assert predict(model, examples["good"]) == pytest.approx(expected(examples["good"]), abs=0.05)
    history = registry(f"/models/{model}/history", kind="transition")["events"]
    assert [e["toState"] for e in reversed(history)] == ["validated", "canary", "production"]
    assert all(e["interface"] == "rest_api" and e["dagId"] == DAG for e in history)
    # the release spans the target's Docker hosts (two where the stack runs its second engine): every stable replica
    # runs on its own host (replica i on host i % hosts) and serves v1 from that host's copy, at that host's address
    assert SETTINGS.stable_replicas >= SETTINGS.serving_hosts
    for i in range(SETTINGS.stable_replicas):
        name = CONTAINER if i == 0 else f"{CONTAINER}-{i}"
        assert replica_engine(SETTINGS, i).containers.get(name).status == "running", name
        replica = f"http://{replica_address(SETTINGS, i)}:{SETTINGS.replica_rest_port + 2 * i}"
        assert served(model, replica) == {1: "AVAILABLE"}, (name, replica)


def answered_by(answers: list, old: float, new: float) -> list:
    """Which version answered each call, by its output: 'old', 'new', or the unexpected value itself."""
    return ["old" if abs(a - old) < 1e-6 else "new" if abs(a - new) < 1e-6 else a for a in answers]


def test_second_deploy_promotes_and_keeps_the_first_loaded(deploy, registry, model, examples):
    before = container_id()
    old = predict(model, examples["better"])[0]  # v1 (good) answering better's first golden input
    hammer = Hammer(model, examples["better"])  # unversioned calls through the router during the release
    hammer.start()
    try:
        final, states = deploy(examples["better"])
    finally:
        hammer.stop.set()
        hammer.join(timeout=30)
    assert final["state"] == "success", states
    new = predict(model, examples["better"])[0]
    # promoted replica by replica, each drained first: no call failed, and each was answered by v1 or v2
    # (while the replicas are being rolled, both answer)
    seen = answered_by(hammer.answers, old, new)
    assert hammer.failures == [] and len(seen) > 100 and set(seen) <= {"old", "new"}, (hammer.failures, set(seen))
    assert versions_state(registry, model) == {2: "production", 1: "superseded"}
    assert served(model) == {2: "AVAILABLE", 1: "AVAILABLE"}  # previous stable kept for a fast rollback
    assert predict(model, examples["better"], "/labels/stable") == pytest.approx(expected(examples["better"]), abs=0.01)
    assert container_id() == before  # changed by a gRPC reload: no restart, no downtime
    # the history says which replicas serve what, and every routing change, with who and why
    serving = registry(f"/models/{model}/history", kind="serving", limit=20)["events"]
    stable = next(e for e in serving if e["details"]["pool"] == "stable")
    replicas = [CONTAINER] + [f"{CONTAINER}-{i}" for i in range(1, SETTINGS.stable_replicas)]
    assert stable["details"]["replicas"] == replicas and stable["details"]["labels"] == {"stable": 2}
    assert stable["dagId"] == DAG and stable["reason"].startswith("v2 promoted")
    routes = registry(f"/models/{model}/history", kind="router", limit=20)["events"]
    assert [(e["version"], e["details"]["pool"]) for e in routes[:2]] == [(2, "stable"), (2, "canary")]


def test_a_restarted_replica_comes_back_with_its_versions_and_labels(model, examples):
    # models.config on disk carries the labels; the replica runs with --allow_version_labels_for_unavailable_models
    # because TF Serving assigns labels before it loads versions at start-up (ServerCore::ReloadConfig)
    container = docker.DockerClient(base_url=SETTINGS.docker_host).containers.get(CONTAINER)
    container.restart(timeout=10)
    replica = f"http://127.0.0.1:{SETTINGS.replica_rest_port}"  # the restarted replica itself, not the router
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if served(model, replica) == {2: "AVAILABLE", 1: "AVAILABLE"}:
                break
        except (requests.RequestException, ValueError):
            pass
        time.sleep(0.5)
    assert served(model, replica) == {2: "AVAILABLE", 1: "AVAILABLE"}
    meta = requests.get(f"{replica}/v1/models/{model}/labels/stable/metadata", timeout=10).json()
    assert meta["model_spec"]["version"] == "2"  # its label came back with it
    assert predict(model, examples["better"], "/labels/stable") == pytest.approx(expected(examples["better"]), abs=0.01)


def test_a_model_missing_its_signature_is_rejected_and_production_untouched(deploy, registry, model, examples):
    final, states = deploy(examples["nosig"])
    assert final["state"] == "failed", states
    assert states["validate"] == "failed" and states["rollout"] in ("upstream_failed", "skipped")
    assert states["release_gate"] == "failed"
    version = max(versions_state(registry, model))
    record = registry(f"/models/{model}/versions/{version}")
    assert record["state"] == "rejected"
    assert any("serving_default" in p for p in record["validationReport"]["problems"])
    assert registry(f"/models/{model}")["version"] == 2
    assert served(model) == {2: "AVAILABLE", 1: "AVAILABLE"}


class Hammer(threading.Thread):
    """A client calling the model without a version, as production clients do, through the router."""

    def __init__(self, model: str, example: Path) -> None:
        super().__init__(daemon=True)
        golden = json.loads((example / "golden.json").read_text())
        self.url = f"{REST}/v1/models/{model}:predict"
        self.body = {"instances": golden["inputs"][:1]}
        self.answers: list = []
        self.failures: list = []
        self.stop = threading.Event()

    def run(self) -> None:
        with requests.Session() as session:
            session.trust_env = False
            while not self.stop.is_set() and len(self.answers) + len(self.failures) < 20000:
                try:
                    resp = session.post(self.url, json=self.body, timeout=10)
                    if resp.status_code == 200:
                        self.answers.append(resp.json()["predictions"][0][0])
                    else:
                        self.failures.append(resp.status_code)
                except requests.RequestException as exc:
                    self.failures.append(str(exc))
                self.stop.wait(0.01)


def test_a_model_that_answers_wrongly_fails_smoke_and_is_rolled_back(deploy, registry, model, examples, settings):
    alerts = settings.state_dir / "alerts.log"
    before = alerts.read_text() if alerts.exists() else ""
    production = predict(model, examples["better"])[0]
    hammer = Hammer(model, examples["better"])  # unversioned calls while the noisy candidate is tried
    hammer.start()
    try:
        final, states = deploy(examples["noisy"], threshold=None, max_regression=None)
    finally:
        hammer.stop.set()
        hammer.join(timeout=30)
    # not one unversioned call reached the candidate (it answers noise), and none failed
    assert len(hammer.answers) > 100 and hammer.failures == []
    assert all(abs(answer - production) < 1e-6 for answer in hammer.answers)
    assert final["state"] == "failed", states
    assert states["smoke"] == "failed" and states["rollback"] == "success" and states["release_gate"] == "failed"
    version = max(versions_state(registry, model))
    assert registry(f"/models/{model}/versions/{version}")["state"] == "rolled_back"
    assert registry(f"/models/{model}")["version"] == 2
    assert version not in served(model) or served(model)[version] == "END"
    assert predict(model, examples["better"], "/labels/stable") == pytest.approx(expected(examples["better"]), abs=0.01)
    events = registry(f"/models/{model}/history", kind="transition")["events"]
    rolled = next(e for e in events if e["toState"] == "rolled_back")
    assert rolled["version"] == version and rolled["reason"].startswith("smoke failed")
    assert model in alerts.read_text()[len(before) :]


def test_a_rerun_is_safe(deploy, airflow, registry, model, examples):
    # deploying content that is already in production again: same version found, a no-op decided at export
    last = registry(f"/models/{model}/history", limit=1)["events"][0]["id"]
    final, states = deploy(examples["better"])
    assert final["state"] == "success", states
    assert states["rollout"] == "skipped" and states["rollback"] == "skipped"
    assert registry(f"/models/{model}")["version"] == 2
    assert not [e for e in new_events(registry, model, last) if e["kind"] == "transition"]
    # clearing a finished run's tasks (a rerun from the UI) is safe too
    run_id = airflow.request("GET", f"/api/v2/dags/{DAG}/dagRuns", params={"order_by": "-start_date", "limit": 1})[
        "dag_runs"
    ][0]["dag_run_id"]
    airflow.request(
        "POST",
        f"/api/v2/dags/{DAG}/clearTaskInstances",
        json={
            "dag_run_id": run_id,
            "task_ids": ["export"],
            "include_downstream": True,
            "only_failed": False,
            "dry_run": False,
            "reset_dag_runs": True,
        },
    )
    final = airflow.wait_for_run(DAG, run_id, timeout=600)
    assert final["state"] == "success"
    assert versions_state(registry, model)[2] == "production"
    assert served(model)[2] == "AVAILABLE"


def test_re_releasing_a_superseded_version_is_refused_before_anything_changes(deploy, registry, model, examples):
    # `good` is v1, superseded by v2: deploying its content again is refused at export, with the way out
    last = registry(f"/models/{model}/history", limit=1)["events"][0]["id"]
    final, states = deploy(examples["good"])
    assert final["state"] == "failed", states
    assert states["export"] == "failed" and states["register"] == "upstream_failed"
    assert states["rollback"] == "skipped" and states["release_gate"] == "failed"
    assert registry(f"/models/{model}")["version"] == 2
    assert versions_state(registry, model)[1] == "superseded"
    # only the lock was taken and released: no version, deployment or health record changed
    assert [e["kind"] for e in new_events(registry, model, last)] == ["lock", "lock"]


def test_two_runs_for_one_model_are_serialized(deploy, registry, model, examples):
    results: list = []
    runs = ((examples["good"], 10), (examples["better"], 11))
    threads = [threading.Thread(target=lambda ex=ex, v=v: results.append(deploy(ex, version=v))) for ex, v in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(final["state"] == "success" for final, _ in results), results
    locks = [e for e in reversed(registry(f"/models/{model}/history", kind="lock", limit=20)["events"])]
    recent = locks[-4:]
    assert [e["reason"].split(" ")[0] for e in recent] == ["acquired", "released", "acquired", "released"]
    assert recent[0]["details"]["holder"] == recent[1]["details"]["holder"]
    assert recent[2]["details"]["holder"] == recent[3]["details"]["holder"] != recent[0]["details"]["holder"]
    assert registry(f"/models/{model}")["version"] in (10, 11)


def test_manual_rollback_to_an_earlier_version(airflow, registry, model, examples):
    current = registry(f"/models/{model}")["version"]
    airflow.wait_for_dag("model_rollback")
    airflow.unpause("model_rollback")
    hammer = Hammer(model, examples["better"])
    hammer.start()
    try:
        run = airflow.trigger("model_rollback", conf={"model_name": model, "version": 2, "reason": "p99 regression"})
        final = airflow.wait_for_run("model_rollback", run["dag_run_id"], timeout=600)
    finally:
        hammer.stop.set()
        hammer.join(timeout=30)
    assert hammer.failures == [] and len(hammer.answers) > 50  # rolled back under load: no call failed
    states = {ti["task_id"]: ti["state"] for ti in airflow.task_instances("model_rollback", run["dag_run_id"])}
    assert final["state"] == "success", states
    assert registry(f"/models/{model}")["version"] == 2
    assert versions_state(registry, model)[current] == "rolled_back"
    assert predict(model, examples["better"], "/labels/stable") == pytest.approx(expected(examples["better"]), abs=0.01)
    assert predict(model, examples["better"]) == pytest.approx(expected(examples["better"]), abs=0.01)  # unversioned
    assert served(model).get(current, "END") == "END"  # the rolled-back version left the stable pool
    event = registry(f"/models/{model}/history", kind="transition", limit=1)["events"][0]
    assert (event["version"], event["toState"]) == (2, "production")
    assert event["reason"] == "manual rollback to v2: p99 regression" and event["dagId"] == "model_rollback"
    # a version that never was in production cannot be "rolled back to"
    rejected = next(v for v, s in versions_state(registry, model).items() if s == "rejected")
    run = airflow.trigger("model_rollback", conf={"model_name": model, "version": rejected, "reason": "try"})
    assert airflow.wait_for_run("model_rollback", run["dag_run_id"], timeout=600)["state"] == "failed"
    assert registry(f"/models/{model}")["version"] == 2
