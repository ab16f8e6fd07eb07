"""Operations end to end on the test stack: human approval before promotion (approve, reject, timeout), a
model's health checked by model_health (healthy stays healthy; a model swapped to answer wrongly goes failing,
alerts by mail through a real SMTP server the test starts, and with auto-rollback on is rolled back), a killed
replica raising a Prometheus alert that reaches the registry and the mailbox, and a frozen model refused.

One model per module; the releases build on each other.
"""

from __future__ import annotations

import time
import uuid
from email import message_from_bytes
from pathlib import Path

import pytest
import requests
from aiosmtpd.controller import Controller

from tests.integration.pipeline.releases import Deployer, build_examples, registry_api, wait_for
from tests.integration.serving_hosts import replica_engine
from tfdeploy.settings import get_settings

ROOT = Path(__file__).resolve().parents[3]
SETTINGS = get_settings()
REST = f"http://127.0.0.1:{SETTINGS.serving_rest_port}"
VARIANTS = {
    "good": ("good", 0),
    "better": ("better", 0),
    "b1": ("better", 1),
    "b2": ("better", 2),
    "b3": ("better", 3),
    "noisy": ("noisy", 0),
}


class Mailbox:
    """aiosmtpd's handler: keeps every message it receives."""

    def __init__(self) -> None:
        self.messages: list = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"

    def subjects(self) -> list[str]:
        return [str(m["Subject"]) for m in self.messages]


@pytest.fixture(scope="module")
def mailbox():
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=SETTINGS.smtp_port)
    controller.start()
    yield box
    controller.stop()


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> dict[str, Path]:
    return build_examples(tmp_path_factory.mktemp("ops-examples"), VARIANTS)


@pytest.fixture(scope="module")
def model() -> str:
    return f"ops_{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def api(settings, airflow):
    return registry_api(settings.airflow_url, airflow.token())


@pytest.fixture(scope="module")
def deploy(airflow, model) -> Deployer:
    return Deployer(airflow, model, dags=("model_deploy", "model_rollback", "model_health"), strategy="all_at_once")


@pytest.fixture(scope="module")
def released(deploy, api, model, examples):
    """v1 (good), then v2 (better): v2 in production, v1 superseded."""
    for name in ("good", "better"):
        final, states = deploy.finish(deploy(examples[name]))
        assert final["state"] == "success", states
    return api("GET", f"/models/{model}")["version"]


def task_state(airflow, run_id: str, task: str, dag: str = "model_deploy") -> str | None:
    return next((ti["state"] for ti in airflow.task_instances(dag, run_id) if ti["task_id"] == task), None)


def answer_approval(airflow, run_id: str, option: str) -> None:
    wait_for(lambda: task_state(airflow, run_id, "approval") in ("awaiting_input", "deferred"), 300, "approval waits")
    time.sleep(4)  # an answer within about a second of the task starting to wait can be lost (platform notes)
    airflow.request(
        "PATCH",
        f"/api/v2/dags/model_deploy/dagRuns/{run_id}/taskInstances/approval/-1/hitlDetails",
        json={"chosen_options": [option], "params_input": {}},
    )


def approvals(api, model: str) -> list[dict]:
    events = api("GET", f"/models/{model}/history", params={"kind": "approval", "limit": 50})["events"]
    return sorted(events, key=lambda e: e["id"])


LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def page_shows_pending_approval(airflow, model: str, version: int, run_id: str) -> Path:
    """The registry's page in a real headless Chromium (the Airflow UI's `_token` cookie): the model's health and
    the pending approval with its link into Airflow. Returns the screenshot."""
    from playwright.sync_api import expect, sync_playwright

    url = f"{SETTINGS.airflow_url}/registry/"
    shot = ROOT / "test-artifacts" / "registry-page-pending-approval.png"
    shot.parent.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=LAUNCH_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1440, "height": 1000})
            context.add_cookies([{"name": "_token", "value": airflow.token(), "url": url}])
            page = context.new_page()
            page.goto(f"{url}#model={model}")
            expect(page.get_by_test_id("detail-name")).to_have_text(model)
            expect(page.get_by_test_id("detail-health")).to_have_text("healthy")
            pending = page.get_by_test_id("pending-approval")
            expect(pending).to_contain_text(f"v{version} waits for a human decision")
            link = page.get_by_test_id("pending-approval-link").get_attribute("href") or ""
            assert link.startswith("/dags/model_deploy/runs/") and link.endswith("/tasks/approval/required_actions")
            assert requests.utils.unquote(link.split("/runs/")[1].split("/tasks/")[0]) == run_id
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    return shot


def test_approve_promotes(deploy, airflow, api, model, examples, released):
    run_id = deploy(examples["b1"], require_approval=True)
    wait_for(lambda: task_state(airflow, run_id, "approval") in ("awaiting_input", "deferred"), 300, "approval waits")
    pending = api("GET", f"/models/{model}")["pendingApproval"]
    assert pending["version"] == released + 1 and pending["runId"] == run_id
    assert page_shows_pending_approval(airflow, model, released + 1, run_id).stat().st_size > 10_000
    answer_approval(airflow, run_id, "Approve")
    final, states = deploy.finish(run_id)
    assert final["state"] == "success", states
    assert states["approval"] == "success" and states["promote"] == "success"
    assert api("GET", f"/models/{model}")["version"] == released + 1
    decided = [e for e in approvals(api, model) if e["details"]["state"] == "approve"]
    assert decided and decided[-1]["details"]["by"] not in ("", None, "nobody (timed out)")
    assert api("GET", f"/models/{model}")["pendingApproval"] is None


def test_reject_rolls_back(deploy, airflow, api, model, examples):
    production = api("GET", f"/models/{model}")["version"]
    run_id = deploy(examples["b2"], require_approval=True)
    answer_approval(airflow, run_id, "Reject")
    final, states = deploy.finish(run_id)
    assert final["state"] == "failed" and states["approval"] == "failed" and states["rollback"] == "success", states
    assert api("GET", f"/models/{model}")["version"] == production
    assert approvals(api, model)[-1]["details"]["state"] == "reject"


def test_no_answer_in_time_rolls_back(deploy, api, model, examples):
    production = api("GET", f"/models/{model}")["version"]
    final, states = deploy.finish(deploy(examples["b3"], require_approval=True, approval_timeout_seconds=15))
    assert final["state"] == "failed" and states["approval"] == "failed" and states["rollback"] == "success", states
    assert api("GET", f"/models/{model}")["version"] == production
    assert "timed out" in approvals(api, model)[-1]["reason"]


def test_a_frozen_model_refuses_new_releases(deploy, api, model, examples):
    api("POST", f"/models/{model}/freeze", json={"reason": "incident 42"})
    try:
        final, states = deploy.finish(deploy(examples["b3"]))
        assert final["state"] == "failed" and states["plan_release"] == "failed", states
        assert states["export"] in ("upstream_failed", None)
    finally:
        api("DELETE", f"/models/{model}/freeze", params={"reason": "incident over"})


def run_health(airflow, model: str) -> tuple[dict, dict[str, str]]:
    run = airflow.trigger("model_health", conf={"models": [model]})
    final = airflow.wait_for_run("model_health", run["dag_run_id"], timeout=300)
    return final, {ti["task_id"]: ti["state"] for ti in airflow.task_instances("model_health", run["dag_run_id"])}


def health_of(api, model: str, version: int) -> list[dict]:
    records = api("GET", f"/models/{model}/health", params={"limit": 20})["records"]
    return [r for r in records if r["version"] == version and r["details"].get("check") == "model_health"]


def test_a_healthy_model_stays_healthy(airflow, api, model, released, mailbox):
    version = api("GET", f"/models/{model}")["version"]
    for _ in range(2):
        final, states = run_health(airflow, model)
        assert final["state"] == "success", states
    records = health_of(api, model, version)
    assert len(records) >= 2 and all(r["status"] == "healthy" for r in records[:2]), records[:2]
    checks = records[0]["details"]
    assert checks["goldenMaxDiff"] is not None and checks["goldenMaxDiff"] < 1e-3
    assert set(checks["replicas"].values()) == {"AVAILABLE"}
    assert api("GET", f"/models/{model}")["health"] == "healthy"


def swap_to_noise(model: str, version: int, noisy: Path) -> None:
    """Someone overwrites the production version's files on the serving host with a model that answers noise,
    and the replicas load them again (unload, then load): clients get wrong answers from v<version>."""
    from tfdeploy.core.models_config import ServedModel
    from tfdeploy.services.serving_target import ServingTargetService
    from tfdeploy.services.targets import get_target

    service = ServingTargetService(get_target("local"))
    entry = service.entry(model)
    assert entry is not None and version in entry.versions
    service.change(model, lambda _e: None)
    for host in service.hosts:  # the change above removed the staged copies: stage the other model's files
        host.stage_version(noisy / "saved_model", model, version)
    service.change(model, lambda _e: ServedModel(model, entry.base_path, (version,), {"stable": version}))


def test_a_model_answering_wrongly_goes_failing_alerts_and_is_rolled_back(airflow, api, model, examples, mailbox):
    record = api("GET", f"/models/{model}")
    version = record["version"]
    api("PATCH", f"/models/{model}/settings", json={"autoRollbackOnFailing": True, "reason": "test"})
    before = len(mailbox.messages)
    swap_to_noise(model, version, examples["noisy"])
    final, states = run_health(airflow, model)
    assert final["state"] == "success", states
    failing = health_of(api, model, version)[0]
    assert failing["status"] == "failing" and any("differ" in p for p in failing["details"]["problems"])
    wait_for(lambda: len(mailbox.messages) > before, 60, "the alert mail")
    assert any(model in s and "failing" in s for s in mailbox.subjects()[before:])
    assert states.get("auto_rollback") == "success"
    wait_for(lambda: api("GET", f"/models/{model}")["version"] != version, 300, "the automatic rollback")
    transitions = api("GET", f"/models/{model}/history", params={"kind": "transition"})["events"]
    rolled = next(e for e in transitions if e["toState"] == "rolled_back" and e["version"] == version)
    assert rolled["reason"].startswith("automatic rollback") and "failing" in rolled["reason"]


def test_a_killed_replica_raises_an_alert_in_the_registry_and_the_mailbox(api, model, mailbox):
    # replica 1: on the second Docker host where the stack runs two (Prometheus finds it through that engine)
    container = replica_engine(SETTINGS, 1).containers.get(f"{SETTINGS.serving_container_prefix}-local-1")
    before = len(mailbox.messages)
    started = time.monotonic()
    container.stop(timeout=1)
    try:
        alert = wait_for(
            lambda: next(
                (
                    a
                    for a in api("GET", "/alerts", params={"status": "firing"})["alerts"]
                    if a["alertname"] == "ServingReplicaDown"
                ),
                None,
            ),
            90,
            "ServingReplicaDown in the registry",
            every=2,
        )
        to_registry = time.monotonic() - started
        wait_for(lambda: any("ServingReplicaDown" in s for s in mailbox.subjects()[before:]), 60, "the alert mail")
        print(f"replica stopped -> alert in the registry {to_registry:.1f}s, mail {time.monotonic() - started:.1f}s")
        assert alert["severity"] == "critical"
    finally:
        container.start()
