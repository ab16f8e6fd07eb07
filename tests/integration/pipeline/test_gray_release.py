"""Gray release end to end: model_deploy triggered over the REST API, the real scheduler and triggerer, the
router (HAProxy) and serving containers, under small bounded loads of unversioned calls through the router.

One model per module; the runs build on each other: a first release (all at once), a release whose observed
split follows the steps, a bad candidate stopped at its first step, pause/resume and abort from the registry
API, abort by marking the task failed (what the Airflow UI's "Mark as failed" does), bad Params refused.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

from tests.integration.pipeline.releases import Deployer, build_examples, registry_api, wait_for
from tfdeploy.settings import get_settings

DAG = "model_deploy"
SETTINGS = get_settings()
REST = f"http://127.0.0.1:{SETTINGS.serving_rest_port}"
# name -> (variant, seed): every release needs content of its own (a version number names one model)
VARIANTS = {
    "good": ("good", 0),
    "better": ("better", 0),
    "fragile": ("fragile", 0),
    "b1": ("better", 1),
    "b2": ("better", 2),
    "b3": ("better", 3),
}
FAST = {"step_seconds": 6, "check_seconds": 1, "min_requests": 20, "max_extensions": 1}


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> dict[str, Path]:
    return build_examples(tmp_path_factory.mktemp("gray-examples"), VARIANTS)


@pytest.fixture(scope="module")
def model() -> str:
    return f"gray_{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def api(settings, airflow):
    return registry_api(settings.airflow_url, airflow.token())


@pytest.fixture(scope="module")
def deploy(airflow, model) -> Deployer:
    return Deployer(airflow, model)


@pytest.fixture(scope="module")
def released(deploy, model, examples, api):
    """v1 (good) in production, released all at once."""
    final, states = deploy.finish(deploy(examples["good"], strategy="all_at_once"))
    assert final["state"] == "success", states
    assert states["gray_release"] == "success" and states["promote"] == "success"
    return api("GET", f"/models/{model}")["version"]


class Load(threading.Thread):
    """Unversioned predict calls through the router, as production clients make them; records each answer's
    time, side (the router's X-Served-By) and status. ``outside`` is the share of calls whose inputs lie
    outside [-1, 1] (what the `fragile` candidate refuses); bounded in count and time."""

    def __init__(self, model: str, *, outside: float = 0.0, key: str | None = None, pause: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.url = f"{REST}/v1/models/{model}:predict"
        self.outside, self.key, self.pause = outside, key, pause
        self.records: list[tuple[float, str, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + 300
        with requests.Session() as session:
            session.trust_env = False
            i = 0
            while not self.stop.is_set() and time.monotonic() < deadline and len(self.records) < 30000:
                i += 1
                far = (i % 100) < self.outside * 100
                body = {"instances": [[1.5, 0.0, 0.0, 0.0] if far else [0.5, 0.0, 0.0, 0.0]]}
                headers = {"X-Route-Key": self.key} if self.key else {}
                try:
                    resp = session.post(self.url, json=body, headers=headers, timeout=10)
                    self.records.append((time.time(), resp.headers.get("X-Served-By", ""), resp.status_code))
                except requests.RequestException:
                    self.records.append((time.time(), "", 0))
                self.stop.wait(self.pause)

    def __enter__(self) -> Load:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join(timeout=30)


def traffic_events(api, model: str, after: int = 0) -> list[dict]:
    events = api("GET", f"/models/{model}/history", params={"kind": "traffic", "limit": 200})["events"]
    return sorted((e for e in events if e["id"] > after), key=lambda e: e["id"])


def last_event_id(api, model: str) -> int:
    events = api("GET", f"/models/{model}/history", params={"limit": 1})["events"]
    return max((e["id"] for e in events), default=0)


def event_time(event: dict) -> float:
    value = event.get("at") or event.get("createdAt") or event["timestamp"]
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)).timestamp()


def test_observed_split_follows_the_steps_and_the_candidate_is_promoted(deploy, api, model, examples, released):
    after = last_event_id(api, model)
    with Load(model) as load:
        run_id = deploy(examples["better"], strategy="canary", steps=[20, 60, 100], **FAST)
        final, states = deploy.finish(run_id)
    assert final["state"] == "success", states
    assert states["gray_release"] == "success" and states["promote"] == "success"
    weights = [(event_time(e), e["details"]["canary"]["weight"]) for e in traffic_events(api, model, after)]
    steps = [(t, w) for t, w in weights if w > 0]
    assert [w for _, w in steps] == [20, 60, 100]
    for (start, weight), (end, _next) in zip(steps, [*steps[1:], weights[-1]], strict=True):
        window = [side for t, side, status in load.records if start + 0.2 < t < end - 0.2 and status == 200]
        assert len(window) >= 50, f"only {len(window)} answers during the {weight}% step"
        share = 100 * window.count("canary") / len(window)
        assert abs(share - weight) <= 12, f"{share:.1f}% of {len(window)} answers from the candidate at {weight}%"
    assert all(status == 200 for _t, _side, status in load.records), "a call failed during the release"
    record = api("GET", f"/models/{model}")
    assert record["traffic"]["canary"] is None and record["traffic"]["stable"]["version"] == record["version"]
    assert record["version"] == released + 1


def test_a_bad_candidate_is_stopped_at_its_first_step_and_rolled_back(deploy, api, model, examples):
    production = api("GET", f"/models/{model}")["version"]
    after = last_event_id(api, model)
    with Load(model, outside=0.5) as load:
        final, states = deploy.finish(deploy(examples["fragile"], strategy="canary", steps=[10, 50, 100], **FAST))
    assert final["state"] == "failed", states
    assert states["gray_release"] == "failed" and states["rollback"] == "success" and states["promote"] != "success"
    weights = [e["details"]["canary"]["weight"] for e in traffic_events(api, model, after)]
    assert 50 not in weights and weights[-1] == 0, weights  # never past the first step
    version = max(v["version"] for v in api("GET", f"/models/{model}/versions")["versions"])
    assert api("GET", f"/models/{model}/versions/{version}")["state"] == "rolled_back"
    assert api("GET", f"/models/{model}")["version"] == production
    health = api("GET", f"/models/{model}/health", params={"limit": 5})["records"]
    stopped = next(h for h in health if h["version"] == version and h["details"].get("check") == "gray_release")
    assert stopped["status"] == "failing" and stopped["details"]["metric"] == "error_rate"
    assert stopped["details"]["values"]["candidate_errors"] > 0
    transitions = api("GET", f"/models/{model}/history", params={"kind": "transition"})["events"]
    rolled = next(e for e in transitions if e["toState"] == "rolled_back" and e["version"] == version)
    assert rolled["reason"].startswith("gray_release failed") and "error rate" in rolled["reason"]
    # bad answers: only the candidate's share of calls while it had weight, and none since
    bad = [(t, side) for t, side, status in load.records if status != 200]
    assert bad and all(side == "canary" for _t, side in bad)
    assert len(bad) <= 0.2 * len(load.records)
    assert not load.records or load.records[-1][1] == "stable"


def test_pause_holds_the_weight_and_resume_goes_on(deploy, api, model, examples):
    with Load(model):
        run_id = deploy(examples["b1"], strategy="canary", steps=[30, 100], **FAST)
        wait_for(lambda: (api("GET", f"/models/{model}/traffic")["canary"] or {}).get("weight") == 30, 240, "30%")
        paused = api("POST", f"/models/{model}/release", json={"action": "pause", "reason": "looking at dashboards"})
        assert paused["paused"] is True
        time.sleep(FAST["step_seconds"] + 4)  # longer than the bake: a paused step does not pass
        traffic = api("GET", f"/models/{model}/traffic")
        assert traffic["canary"]["weight"] == 30 and traffic["paused"] is True
        api("POST", f"/models/{model}/release", json={"action": "resume", "reason": "dashboards fine"})
        final, states = deploy.finish(run_id)
    assert final["state"] == "success", states
    controls = api("GET", f"/models/{model}/history", params={"kind": "release_control"})["events"]
    assert {"pause", "resume"} <= {e["details"]["action"] for e in controls}
    assert all(e["details"]["who"] for e in controls)


def test_abort_from_the_registry_api_rolls_back(deploy, api, model, examples):
    production = api("GET", f"/models/{model}")["version"]
    with Load(model):
        run_id = deploy(examples["b2"], strategy="canary", steps=[20, 100], step_seconds=60, check_seconds=1)
        wait_for(lambda: (api("GET", f"/models/{model}/traffic")["canary"] or {}).get("weight") == 20, 240, "20%")
        api("POST", f"/models/{model}/release", json={"action": "abort", "reason": "wrong model"})
        asked = time.time()
        wait_for(lambda: (api("GET", f"/models/{model}/traffic")["canary"] or {}).get("weight", 0) == 0, 30, "0%")
        assert time.time() - asked < 10
        final, states = deploy.finish(run_id)
    assert final["state"] == "failed" and states["rollback"] == "success", states
    assert api("GET", f"/models/{model}")["version"] == production


def test_marking_the_step_failed_in_the_ui_aborts(deploy, airflow, api, model, examples):
    production = api("GET", f"/models/{model}")["version"]
    with Load(model):
        run_id = deploy(examples["b3"], strategy="canary", steps=[20, 100], step_seconds=120, check_seconds=1)
        wait_for(lambda: (api("GET", f"/models/{model}/traffic")["canary"] or {}).get("weight") == 20, 240, "20%")
        airflow.request(
            "PATCH",
            f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances/gray_release",
            json={"new_state": "failed", "include_downstream": False},
        )
        final, states = deploy.finish(run_id)
    assert states["gray_release"] == "failed" and states["rollback"] == "success", states
    assert api("GET", f"/models/{model}")["version"] == production
    assert (api("GET", f"/models/{model}/traffic")["canary"] or {}).get("weight", 0) == 0


def test_bad_strategy_params_are_refused(deploy, airflow, api, model, examples, released):
    for conf in ({"steps": [0, 50]}, {"steps": [10, 101]}, {"step_seconds": -1}, {"strategy": "blue_green"}):
        with pytest.raises(Exception, match="400|422"):
            deploy(examples["better"], **conf)
    before = last_event_id(api, model)
    final, states = deploy.finish(deploy(examples["better"], steps=[50, 10]))
    assert final["state"] == "failed" and states["plan_release"] == "failed"
    assert states["export"] in ("upstream_failed", None) and states["rollback"] != "success"
    # nothing changed: no event of this run in the model's history (model_health's checks may add theirs)
    events = api("GET", f"/models/{model}/history", params={"limit": 100})["events"]
    assert [e for e in events if e["id"] > before and e.get("runId") == final["dag_run_id"]] == []
    log = airflow.request("GET", f"/api/v2/dags/{DAG}/dagRuns/{final['dag_run_id']}/taskInstances/plan_release/logs/1")
    assert "steps must rise strictly" in json.dumps(log)


def test_a_rate_limit_set_in_the_registry_is_applied_by_the_router(api, model, released):
    url = f"{REST}/v1/models/{model}:predict"
    body = {"instances": [[0.5, 0.0, 0.0, 0.0]]}
    api("PUT", f"/models/{model}/rate-limit", json={"rps": 5, "reason": "protect the shared replicas"})
    try:
        assert api("GET", f"/models/{model}")["rateLimitRps"] == 5
        with requests.Session() as session:
            session.trust_env = False
            answers = [session.post(url, json=body, timeout=10) for _ in range(30)]
        codes = [a.status_code for a in answers]
        assert codes[:5] == [200] * 5 and 429 in codes, codes
        refused = next(a for a in answers if a.status_code == 429)
        assert refused.headers["Retry-After"] == "1" and "rate limit" in refused.json()["error"]
        history = api("GET", f"/models/{model}/history", params={"kind": "rate_limit", "limit": 5})["events"]
        assert history[0]["details"]["rps"] == 5
    finally:
        api("PUT", f"/models/{model}/rate-limit", json={"rps": None, "reason": "test over"})
    time.sleep(1.1)  # the router counts the last second
    with requests.Session() as session:
        session.trust_env = False
        assert all(session.post(url, json=body, timeout=10).status_code == 200 for _ in range(20))
