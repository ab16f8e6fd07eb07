"""The registry's web page in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

The registry runs standalone in-process on a free loopback port, with data seeded through RegistryService;
the test checks what a person would: the auth message without a token, the model list and its filters, a
model's production/canary, the version timeline and its links to Airflow, the gray release's traffic split,
rate limit and release controls, the production version's health and the recent checks, open alerts, the
settings toggles, freeze/unfreeze and "roll back to version", and saves a full-page screenshot; then the live
performance per pool, the replica logs (collapsed, fetched when opened) and the diagnosis bundles with their
download links, from fake sources in place of the plugin's (Prometheus, the Docker engine; WebHDFS' URL).
It needs no other service of the stack.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import uvicorn
from playwright.sync_api import expect, sync_playwright

from tfdeploy.core.errors import PrometheusError
from tfdeploy.registry.api import create_app
from tfdeploy.registry.config import RegistryConfig
from tfdeploy.registry.service import Actor, RegistryService

CHROMIUM = "/usr/bin/chromium"
TOKEN = "test-token"
AIRFLOW = "http://airflow.example"
DAG = "train_fraud_detector"
RUN_V2 = "manual__2026-11-24T14:05:00+00:00"
RUN_V3 = "scheduled__2026-11-25T02:00:00+00:00"
MANUAL_RUN = "manual__2026-12-02T11:00:00+00:00"
AUTO_RUN = "manual__2026-12-02T10:00:05+00:00"
ESCAPED_REASON = "<b>accuracy below gate</b> & <script>window.pwned = 1</script>"
WEBHDFS = "http://hdfs.example:9870"
BUNDLE_OLD = "/diagnostics/fraud-detector/20261201T080000Z-manual__2026-12-01T08_00_00_00_00.tar.gz"
BUNDLE_NEW = "/diagnostics/fraud-detector/20261202T100010Z-manual__2026-12-02T10_00_05_00_00.tar.gz"
PERFORMANCE = {
    "window": "5m",
    "pools": {
        "stable": {"requestRate": 12.5, "errorRate": 0.002, "p50Ms": 3.25, "p99Ms": 48.7},
        "canary": {"requestRate": 1.4, "errorRate": 0.25, "p50Ms": 4.1, "p99Ms": 120.0},
    },
}
REPLICA_LOGS = {
    "tfdeploy-local": [
        "2026-12-02 10:00:01 Successfully loaded servable version {name: fraud-detector version: 2}",
        f"2026-12-02 10:00:02 fraud-detector request Authorization: Bearer {TOKEN}",
    ],
    "tfdeploy-local-1": ["2026-12-02 10:00:01 Successfully loaded servable version {name: fraud-detector version: 2}"],
    "tfdeploy-local-canary": [
        "2026-12-02 10:00:03 Successfully loaded servable version {name: fraud-detector version: 3}"
    ],
}
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


def _alert(name: str, severity: str, status: str, summary: str, starts: str) -> dict:
    return {
        "fingerprint": f"fp-{name}",
        "status": status,
        "labels": {"alertname": name, "severity": severity, "model": "fraud-detector"},
        "annotations": {"summary": summary},
        "starts_at": starts,
        "ends_at": "2026-12-01T08:05:00Z" if status == "resolved" else "0001-01-01T00:00:00Z",
        "generator_url": "http://127.0.0.1:9090/graph",
    }


def _seed(service: RegistryService) -> None:
    def by(user: str, run_id: str = "", task_id: str = "", interface: str = "pipeline") -> Actor:
        return Actor(
            actor=user,
            principal="api-token",
            interface=interface,
            dag_id=DAG if run_id else "",
            run_id=run_id,
            task_id=task_id,
        )

    runs = {1: "manual__2026-11-20T09:00:00+00:00", 2: RUN_V2, 3: RUN_V3}
    metrics = {
        1: {"accuracy": 0.91, "auc": 0.955},
        2: {"accuracy": 0.95, "auc": 0.97},
        3: {"accuracy": 0.962, "auc": 0.981},
    }
    for v in (1, 2, 3):
        run = runs[v]
        service.register_version(
            "fraud-detector",
            by("alice", run, "register_model"),
            version=v,
            hdfs_uri=f"hdfs:///models/fraud-detector/{v}",
            manifest_sha256=f"{v:02d}" * 32,
            source="gs-free/train.py",
            metrics=metrics[v],
        )
        service.transition("fraud-detector", v, "validated", by("alice", run, "validate_model"))
        service.transition("fraud-detector", v, "canary", by("alice", run, "deploy_canary"), reason="gates passed")
        if v < 3:
            service.transition("fraud-detector", v, "production", by("alice", run, "promote"), reason="canary healthy")
    service.set_deployment("fraud-detector", "tfserving-prod", "stable", 2, by("alice", RUN_V2, "promote"))
    service.set_deployment("fraud-detector", "tfserving-prod", "canary", 3, by("alice", RUN_V3, "deploy_canary"))
    service.record_health("fraud-detector", 3, "tfserving-prod", "degraded", by("monitor", interface="schedule"))
    service.record_health("fraud-detector", 2, "tfserving-prod", "healthy", by("monitor", interface="schedule"))
    # the canary failed its smoke test: its own record, the model stays healthy (its production version is)
    service.record_health(
        "fraud-detector", 3, "tfserving-prod", "unhealthy", by("smoke"), {"problems": ["noisy answers: 2 of 8"]}
    )
    service.set_settings("fraud-detector", by("alice", interface="ui"), auto_rollback_on_failing=True, reason="on call")
    service.receive_alerts(
        [
            _alert("ModelFailing", "critical", "firing", "v2 answers wrongly", "2026-12-02T10:00:00Z"),
            _alert("P99OverBudget", "warning", "resolved", "p99 380 ms", "2026-12-01T08:00:00Z"),
        ],
        Actor("api-token", "api-token", "rest_api"),
        receiver="tfdeploy-registry",
        starter=lambda model, reason: AUTO_RUN,
    )
    service.set_traffic(
        "fraud-detector",
        by("alice", RUN_V3, "shift_traffic"),
        stable_version=2,
        canary_version=3,
        canary_weight=10,
        reason="canary step 1",
    )
    service.set_rate_limit("fraud-detector", 50, by("alice", interface="ui"), reason="protect the GPU pool")
    for path, reason in ((BUNDLE_OLD, "diagnosis: on demand"), (BUNDLE_NEW, "rollback of v2: golden answers wrong")):
        service.record_serving_event(
            "fraud-detector",
            "diagnosis",
            by("airflow", AUTO_RUN if path == BUNDLE_NEW else RUN_V2, "diagnose"),
            version=2,
            reason=reason,
            details={"path": path, "parts": ["README.txt", "manifest.json"], "missing": {}},
        )
    service.acquire_lock("fraud-detector", "deploy_fraud_detector", by("alice", RUN_V3), ttl_seconds=900, run_id=RUN_V3)

    service.register_version("churn-predictor", by("bob", interface="cli"), metrics={"rmse": 0.31})
    service.transition("churn-predictor", 1, "validated", by("bob", interface="cli"))
    service.transition("churn-predictor", 1, "canary", by("bob", interface="cli"))
    service.transition("churn-predictor", 1, "production", by("bob", interface="ui"))
    service.record_health("churn-predictor", 1, "tfserving-prod", "unhealthy", by("monitor", interface="schedule"))

    service.register_version("spam-filter", by("carol", "manual__2026-11-25T08:00:00+00:00", "register_model"))
    service.transition(
        "spam-filter",
        1,
        "rejected",
        by("carol", "manual__2026-11-25T08:00:00+00:00", "validate_model"),
        reason=ESCAPED_REASON,
    )


@pytest.fixture
def rollbacks() -> list[tuple[str, int, str]]:
    """The page's "roll back to version" calls the plugin's starter would have turned into model_rollback runs."""
    return []


@pytest.fixture
def log_calls() -> list[tuple[str, int]]:
    """The replica-log fetches the page made (the plugin's source would have read the containers' logs)."""
    return []


def performance(model: str) -> dict:
    if model == "churn-predictor":
        raise PrometheusError("Prometheus at http://127.0.0.1:9090/api/v1/query did not answer: Connection refused")
    return PERFORMANCE


@pytest.fixture
def registry_url(tmp_path: Path, rollbacks: list, log_calls: list) -> Iterator[str]:
    db_url = f"sqlite:///{tmp_path / 'registry.db'}"
    service = RegistryService(db_url)
    service.migrate()
    _seed(service)

    def start_rollback_to(model: str, version: int, reason: str) -> str:
        rollbacks.append((model, version, reason))
        return MANUAL_RUN

    def replica_logs(model: str, lines: int) -> dict[str, list[str]]:
        log_calls.append((model, lines))
        return REPLICA_LOGS

    app = create_app(
        RegistryConfig(db_url=db_url, api_token=TOKEN, airflow_url=AIRFLOW),
        rollback_starter_to=start_rollback_to,
        performance_source=performance,
        logs_source=replica_logs,
        webhdfs_url=WEBHDFS,
    )
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the registry did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (include/scripts/setup.sh does)")
    # launch() gives Chromium a fresh temporary --user-data-dir of its own (passing one is refused: that is
    # launch_persistent_context's job, which allows one context only; this test needs two)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield browser
        browser.close()


def _run_href(run_id: str) -> str:
    return f"{AIRFLOW}/dags/{DAG}/runs/{quote(run_id, safe='')}"


def test_registry_page(registry_url: str, browser, artifacts_dir: Path, rollbacks: list) -> None:
    # 1. no token: the page says to sign in to Airflow (or paste a token) and shows the registry's message
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    page.goto(registry_url)
    auth = page.get_by_test_id("auth-box")
    expect(auth).to_be_visible()
    expect(auth).to_contain_text("Sign in to Airflow")
    expect(page.get_by_test_id("auth-message")).to_contain_text("401")
    expect(page.get_by_test_id("auth-message")).to_contain_text("missing bearer token")
    expect(page.get_by_test_id("model-row")).to_have_count(0)
    # a pasted token (kept in sessionStorage, sent as a bearer header) lets the page in
    page.get_by_test_id("token-input").fill(TOKEN)
    page.get_by_test_id("token-save").click()
    expect(page.get_by_test_id("model-row")).to_have_count(3)
    expect(auth).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('tfdeploy.registry.token')") == TOKEN
    context.close()

    # 2. the Airflow UI's `_token` cookie is enough (a fresh context: no pasted token)
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    page.goto(registry_url)
    expect(page.get_by_test_id("auth-box")).to_be_visible()
    context.add_cookies([{"name": "_token", "value": TOKEN, "url": registry_url}])
    page.reload()
    rows = page.get_by_test_id("model-row")
    expect(rows).to_have_count(3)
    expect(page.get_by_test_id("auth-box")).to_be_hidden()
    expect(page.get_by_test_id("error-box")).to_be_hidden()
    expect(page.get_by_test_id("model-name")).to_have_text(["churn-predictor", "fraud-detector", "spam-filter"])

    fraud = page.locator("[data-testid=model-row][data-model='fraud-detector']")
    expect(fraud.get_by_test_id("production")).to_have_text("2")
    expect(fraud.get_by_test_id("canary")).to_have_text("3")
    expect(fraud.get_by_test_id("latest")).to_have_text("3")
    expect(fraud.get_by_test_id("health")).to_have_text("healthy")
    churn = page.locator("[data-testid=model-row][data-model='churn-predictor']")
    expect(churn.get_by_test_id("production")).to_have_text("1")
    expect(churn.get_by_test_id("canary")).to_have_text("—")
    expect(churn.get_by_test_id("health")).to_have_text("failing")  # recorded as "unhealthy", the old word
    spam = page.locator("[data-testid=model-row][data-model='spam-filter']")
    expect(spam.get_by_test_id("production")).to_have_text("—")
    expect(spam.get_by_test_id("health")).to_have_text("none")
    expect(page.get_by_test_id("model-count")).to_have_text("3 models")

    # search (server-side q=) narrows the list; the filters narrow it on the page
    search = page.get_by_test_id("search")
    search.fill("churn")
    expect(page.get_by_test_id("model-name")).to_have_text(["churn-predictor"])
    search.fill("nothing-like-this")
    expect(rows).to_have_count(0)
    expect(page.get_by_test_id("model-empty")).to_contain_text("nothing-like-this")
    search.fill("")
    expect(rows).to_have_count(3)
    page.get_by_test_id("filter").select_option("canary")
    expect(page.get_by_test_id("model-name")).to_have_text(["fraud-detector"])
    page.get_by_test_id("filter").select_option("")
    page.get_by_test_id("health-filter").select_option("failing")
    expect(page.get_by_test_id("model-name")).to_have_text(["churn-predictor"])
    expect(page.get_by_test_id("model-count")).to_have_text("1 of 3 models")
    page.get_by_test_id("health-filter").select_option("")
    expect(rows).to_have_count(3)

    # text from the API is shown as text, never parsed as HTML
    spam.click()
    expect(page.get_by_test_id("detail-name")).to_have_text("spam-filter")
    rejected = page.locator("[data-testid=history-row][data-kind=transition]")
    expect(rejected).to_have_count(1)
    expect(rejected).to_contain_text(ESCAPED_REASON)
    assert page.locator("#history-rows b, #history-rows script").count() == 0
    assert page.evaluate("window.pwned") is None

    # 3. a model's detail: production, canary, lock, deployments, the version timeline and its Airflow links
    fraud.click()
    expect(page).to_have_url(re.compile(r"#model=fraud-detector$"))
    expect(fraud).to_have_class(re.compile(r"\bselected\b"))
    expect(page.get_by_test_id("detail-name")).to_have_text("fraud-detector")
    expect(page.get_by_test_id("detail-production")).to_have_text("v2")
    expect(page.get_by_test_id("detail-canary")).to_have_text("v3")
    expect(page.get_by_test_id("detail-health")).to_have_text("healthy")
    expect(page.get_by_test_id("lock")).to_contain_text("deploy_fraud_detector")
    expect(page.get_by_test_id("deployment-row")).to_have_count(2)
    deployments = page.get_by_test_id("deployment-row")
    expect(deployments.filter(has_text="stable").get_by_test_id("deployment-version")).to_have_text("2")
    expect(deployments.filter(has_text="canary").get_by_test_id("deployment-version")).to_have_text("3")

    entries = page.get_by_test_id("timeline-entry")
    expect(entries).to_have_count(3)
    expect(entries.get_by_test_id("version-number")).to_have_text(["v3", "v2", "v1"])
    expect(entries.get_by_test_id("version-state")).to_have_text(["canary", "production", "superseded"])
    assert [entries.nth(i).get_attribute("data-state") for i in range(3)] == ["canary", "production", "superseded"]
    v2 = page.locator("[data-testid=timeline-entry][data-version='2']")
    expect(v2.get_by_test_id("metric")).to_have_text(["accuracy=0.95", "auc=0.97"])
    expect(v2.get_by_test_id("created-by")).to_have_text("by alice")
    expect(v2.get_by_test_id("run-link")).to_have_attribute("href", _run_href(RUN_V2))
    assert _run_href(RUN_V2) == f"{AIRFLOW}/dags/{DAG}/runs/manual__2026-11-24T14%3A05%3A00%2B00%3A00"
    expect(page.locator("[data-testid=timeline-entry][data-version='3'] [data-testid=run-link]")).to_have_attribute(
        "href", _run_href(RUN_V3)
    )

    # the history: newest first, with from -> to states and links to the run and the task's logs
    history = page.get_by_test_id("history-row")
    expect(history.first).to_contain_text("lock")
    promoted = history.filter(has_text="canary healthy").filter(
        has=page.get_by_test_id("event-to").filter(has_text="production")
    )
    expect(promoted).to_have_count(2)  # v1 then v2 went canary -> production
    expect(promoted.first.get_by_test_id("event-from")).to_have_text("canary")
    expect(promoted.first.get_by_test_id("history-task-link")).to_have_attribute(
        "href", _run_href(RUN_V2) + "/tasks/promote"
    )
    superseded = history.filter(has_text="superseded by version 2")
    expect(superseded.get_by_test_id("event-to")).to_have_text("superseded")

    # filter the versions by state (server-side state=)
    page.get_by_test_id("version-filter").select_option("production")
    expect(entries).to_have_count(1)
    expect(entries.get_by_test_id("version-number")).to_have_text(["v2"])
    page.get_by_test_id("version-filter").select_option("")
    expect(entries).to_have_count(3)

    # 4. the gray release: the live split, the rate limit, and the controls (each asks why, then POSTs)
    expect(page.get_by_test_id("traffic-stable")).to_have_text("stable v2 at 90%")
    expect(page.get_by_test_id("traffic-canary")).to_have_text("canary v3 at 10%")
    expect(page.get_by_test_id("rate-limit")).to_have_text("50 rps")
    expect(page.get_by_test_id("traffic-paused")).to_have_count(0)
    buttons = {a: page.get_by_test_id(f"release-{a}") for a in ("pause", "resume", "promote", "abort")}
    for button in buttons.values():
        expect(button).to_be_visible()
    expect(buttons["resume"]).to_be_disabled()  # not paused
    traffic_event = page.locator("[data-testid=history-row][data-kind=traffic]")
    expect(traffic_event.get_by_test_id("event-extra")).to_have_text(
        "stable v2 90% · canary v3 10% (was stable v2 100% · no canary)"
    )
    expect(page.locator("[data-testid=history-row][data-kind=rate_limit]")).to_contain_text("50 rps (was no limit)")
    page.once("dialog", lambda dialog: dialog.dismiss())  # cancelled: nothing is sent
    buttons["abort"].click()
    page.once("dialog", lambda dialog: dialog.accept("p99 up 30% on the canary"))
    buttons["pause"].click()
    expect(page.get_by_test_id("traffic-paused")).to_have_text("paused")
    expect(page.get_by_test_id("release-resume")).to_be_enabled()
    expect(page.get_by_test_id("release-pause")).to_be_disabled()
    control = page.locator("[data-testid=history-row][data-kind=release_control]")
    expect(control).to_have_count(1)  # the cancelled abort left no trace
    expect(control.get_by_test_id("event-extra")).to_have_text("pause by tfdeploy-service")
    expect(control.get_by_test_id("event-actor")).to_have_text("tfdeploy-service")
    expect(control).to_contain_text("p99 up 30% on the canary")
    page.once("dialog", lambda dialog: dialog.accept("canary is fine"))
    page.get_by_test_id("release-promote").click()
    expect(page.get_by_test_id("traffic-pending")).to_have_text("promote now pending")
    expect(control).to_have_count(2)
    # no release in progress: the split alone, no controls
    churn.click()
    expect(page.get_by_test_id("detail-name")).to_have_text("churn-predictor")
    expect(page.get_by_test_id("traffic-stable")).to_have_text("stable v1 at 100%")
    expect(page.get_by_test_id("traffic-canary")).to_have_text("no release in progress")
    expect(page.get_by_test_id("rate-limit")).to_have_text("no limit")
    expect(page.get_by_test_id("release-controls")).to_have_count(0)
    fraud.click()
    expect(page.get_by_test_id("traffic-pending")).to_be_visible()

    # 5. health: the production version's latest check, prominent; every version's recent checks below it
    expect(page.get_by_test_id("health-now")).to_have_attribute("data-status", "healthy")
    expect(page.get_by_test_id("production-health")).to_have_text("healthy")
    expect(page.get_by_test_id("production-health-when")).to_contain_text("production v2")
    checks = page.get_by_test_id("health-record")
    expect(checks).to_have_count(3)
    expect(checks.get_by_test_id("health-record-version")).to_have_text(["3", "2", "3"])
    expect(checks.get_by_test_id("health-record-status")).to_have_text(["failing", "healthy", "degraded"])
    expect(checks.first.get_by_test_id("health-record-details")).to_have_text("noisy answers: 2 of 8")
    expect(checks.first).to_contain_text("canary")

    # 6. open alerts first, with the automatic rollback the critical one started
    expect(page.get_by_test_id("open-alerts")).to_have_text("1 open")
    alerts = page.get_by_test_id("alert-row")
    expect(alerts).to_have_count(2)
    expect(alerts.get_by_test_id("alert-name")).to_have_text(["ModelFailing", "P99OverBudget"])
    expect(alerts.get_by_test_id("alert-status")).to_have_text(["firing", "resolved"])
    expect(alerts.first.get_by_test_id("alert-summary")).to_have_text("v2 answers wrongly")
    expect(alerts.first.get_by_test_id("alert-rollback")).to_contain_text("started")
    expect(alerts.first.get_by_test_id("alert-rollback-run")).to_have_attribute(
        "href", f"{AIRFLOW}/dags/model_rollback/runs/{quote(AUTO_RUN, safe='')}"
    )
    expect(page.locator("[data-testid=history-row][data-kind=auto_rollback]")).to_contain_text("started")

    # 7. settings: each toggle asks why (cancel: unchanged), then PATCHes; recorded with the signed-in principal
    auto_rollback = page.get_by_test_id("setting-auto-rollback")
    approval = page.get_by_test_id("setting-require-approval")
    expect(auto_rollback).to_be_checked()
    expect(approval).not_to_be_checked()
    page.once("dialog", lambda dialog: dialog.dismiss())
    auto_rollback.click()
    expect(auto_rollback).to_be_checked()
    page.once("dialog", lambda dialog: dialog.accept("release needs a sign-off"))
    approval.click()
    settings_event = page.locator("[data-testid=history-row][data-kind=settings]").first
    expect(settings_event.get_by_test_id("event-extra")).to_have_text("require approval off → on")
    expect(settings_event.get_by_test_id("event-actor")).to_have_text("tfdeploy-service")
    expect(page.get_by_test_id("setting-require-approval")).to_be_checked()

    # freeze (asks why), then unfreeze
    page.once("dialog", lambda dialog: dialog.accept("incident 42"))
    page.get_by_test_id("freeze").click()
    expect(page.get_by_test_id("detail-frozen")).to_have_text("frozen")
    expect(page.get_by_test_id("frozen-note")).to_contain_text("Frozen by tfdeploy-service")
    expect(page.get_by_test_id("frozen-note")).to_contain_text("incident 42")
    expect(page.locator("[data-testid=history-row][data-kind=freeze]")).to_contain_text("incident 42")
    shot = artifacts_dir / "registry-page-operations.png"
    page.screenshot(path=str(shot), full_page=True)
    page.once("dialog", lambda dialog: dialog.accept("incident closed"))
    page.get_by_test_id("unfreeze").click()
    expect(page.get_by_test_id("freeze")).to_be_visible()
    expect(page.get_by_test_id("detail-frozen")).to_have_count(0)
    expect(page.locator("[data-testid=history-row][data-kind=unfreeze]")).to_contain_text("incident closed")

    # 8. roll back to a version that was in production: starts model_rollback (the plugin's starter)
    expect(page.get_by_test_id("rollback-version").locator("option")).to_have_text(["v1"])
    page.once("dialog", lambda dialog: dialog.accept("p99 regression on v2"))
    page.get_by_test_id("rollback-button").click()
    expect(page.get_by_test_id("rollback-started")).to_contain_text("model_rollback to v1 started")
    expect(page.get_by_test_id("rollback-run-link")).to_have_attribute(
        "href", f"{AIRFLOW}/dags/model_rollback/runs/{quote(MANUAL_RUN, safe='')}"
    )
    assert rollbacks == [("fraud-detector", 1, "p99 regression on v2")]
    expect(page.locator("[data-testid=history-row][data-kind=rollback]")).to_contain_text("to v1 (from v2)")
    spam.click()
    expect(page.get_by_test_id("rollback-button")).to_be_disabled()  # nothing was ever in production
    fraud.click()
    expect(page.get_by_test_id("health-now")).to_be_visible()

    page.wait_for_load_state("networkidle")
    shot = artifacts_dir / "registry-page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    context.close()


def test_registry_page_performance_logs_and_diagnosis_bundles(
    registry_url: str, browser, artifacts_dir: Path, log_calls: list
) -> None:
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    context.add_cookies([{"name": "_token", "value": TOKEN, "url": registry_url}])
    page = context.new_page()
    page.goto(registry_url + "#model=fraud-detector")
    expect(page.get_by_test_id("detail-name")).to_have_text("fraud-detector")

    # performance: one row per pool, stable first; an error rate over 5 % stands out
    rows = page.get_by_test_id("perf-row")
    expect(rows).to_have_count(2)
    assert [rows.nth(i).get_attribute("data-pool") for i in range(2)] == ["stable", "canary"]
    expect(rows.get_by_test_id("perf-rate")).to_have_text(["12.5", "1.40"])
    expect(rows.get_by_test_id("perf-p50")).to_have_text(["3.25 ms", "4.10 ms"])
    expect(rows.get_by_test_id("perf-p99")).to_have_text(["48.7 ms", "120.0 ms"])
    expect(rows.get_by_test_id("perf-errors")).to_have_text(["0.20 %", "25.0 %"])
    expect(rows.nth(1).get_by_test_id("perf-errors")).to_have_class(re.compile(r"\bbad\b"))
    expect(page.get_by_test_id("performance")).to_contain_text("last 5m, from Prometheus")

    # diagnosis bundles: newest first, each with its WebHDFS download link and the run that collected it
    bundles = page.get_by_test_id("diagnosis-row")
    expect(bundles).to_have_count(2)
    expect(page.get_by_test_id("diagnostics-count")).to_have_text("2 bundles")
    expect(bundles.get_by_test_id("diagnosis-reason")).to_have_text(
        ["rollback of v2: golden answers wrong", "diagnosis: on demand"]
    )
    expect(bundles.get_by_test_id("diagnosis-download")).to_have_text(
        [BUNDLE_NEW.rsplit("/", 1)[1], BUNDLE_OLD.rsplit("/", 1)[1]]
    )
    expect(bundles.first.get_by_test_id("diagnosis-download")).to_have_attribute(
        "href", f"{WEBHDFS}/webhdfs/v1{BUNDLE_NEW}?op=OPEN"
    )
    expect(bundles.first.get_by_test_id("diagnosis-run")).to_have_attribute("href", _run_href(AUTO_RUN))
    expect(page.locator("[data-testid=history-row][data-kind=diagnosis]").first).to_contain_text(BUNDLE_NEW)

    # replica logs: collapsed, nothing fetched until opened; then every container's lines, redacted
    logs = page.get_by_test_id("replica-logs")
    expect(logs).not_to_have_attribute("open", "")
    expect(page.get_by_test_id("log-container")).to_have_count(0)
    assert log_calls == []
    page.get_by_test_id("replica-logs-toggle").click()
    containers = page.get_by_test_id("log-container")
    expect(containers).to_have_count(3)
    assert [containers.nth(i).get_attribute("data-container") for i in range(3)] == list(REPLICA_LOGS)
    assert log_calls == [("fraud-detector", 50)]
    expect(containers.first.get_by_test_id("log-container-name")).to_have_text("tfdeploy-local · 2 lines")
    first = containers.first.get_by_test_id("log-lines")
    expect(first).to_contain_text("{name: fraud-detector version: 2}")
    expect(first).to_contain_text("Authorization: Bearer [REDACTED]")
    assert TOKEN not in page.get_by_test_id("replica-logs-body").inner_text()
    expect(containers.nth(2).get_by_test_id("log-lines")).to_contain_text("version: 3")
    shot = artifacts_dir / "registry-page-performance-logs.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    # the page's refresh fetches the open logs again; another model's performance, Prometheus down: says why
    page.get_by_test_id("refresh").click()
    deadline = time.monotonic() + 10
    while len(log_calls) < 2 and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    assert log_calls == [("fraud-detector", 50)] * 2
    expect(page.get_by_test_id("replica-logs")).to_have_attribute("open", "")
    expect(page.get_by_test_id("log-container")).to_have_count(3)
    page.locator("[data-testid=model-row][data-model='churn-predictor']").click()
    expect(page.get_by_test_id("detail-name")).to_have_text("churn-predictor")
    expect(page.get_by_test_id("perf-row")).to_have_count(0)
    expect(page.get_by_test_id("performance-unavailable")).to_contain_text(
        "Live performance unavailable: PrometheusError: Prometheus at http://127.0.0.1:9090"
    )
    expect(page.get_by_test_id("no-diagnostics")).to_have_text("No diagnosis bundle recorded.")
    expect(page.get_by_test_id("replica-logs")).not_to_have_attribute("open", "")  # open for fraud-detector only
    context.close()
