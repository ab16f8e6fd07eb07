"""ModelHealthOperator (the model_health DAG) with fakes: each production model checked and recorded on its
production version, an alert through the notifiers only on a change of health, and the automatic rollbacks
handed to model_rollback (those with ``autoRollbackOnFailing`` and an earlier version to go back to)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from tests.unit.operators.conftest import MODEL, FakeRegistry, RecordingNotifier, make_context
from tfdeploy.core.errors import NotFound, RegistryUnavailable
from tfdeploy.hooks.registry import ModelSettings
from tfdeploy.operators import health as health_module
from tfdeploy.operators.health import ROLLBACK_DAG, ModelHealthOperator
from tfdeploy.services.health import Budgets, HealthReport

OTHER = "other_model"
GOLDEN = {"goldenInputs": [[1.0, 2.0]], "goldenPredictions": [[0.5]]}


class FakeServer:
    """A replica (``model_status``) or the router (``predict``), as TFServingHook."""

    def __init__(self, rest_url: str, statuses: dict[str, dict[int, str]] | None = None, answer: float = 0.5) -> None:
        self.rest_url = rest_url
        self.statuses = statuses or {}
        self.answer = answer
        self.predicts: list[str] = []

    def model_status(self, model: str) -> dict[int, tuple[str, str]]:
        return {v: (s, "") for v, s in self.statuses.get(model, {}).items()}

    def predict(self, model: str, rows: list, **spec: Any) -> dict:
        self.predicts.append(model)
        return {"predictions": [[self.answer] for _ in rows]}


class Env:
    """What execute() builds from the serving target, replaced: the stable pool's replicas, the router and
    Prometheus; ``reports`` ({model: HealthReport}) short-cuts ``check_model`` when set."""

    def __init__(self) -> None:
        self.replicas = [FakeServer("http://127.0.0.1:18501"), FakeServer("http://127.0.0.1:18503")]
        self.router = FakeServer("http://127.0.0.1:18080")
        self.hooks: list[tuple[Any, dict]] = []
        self.prometheus_conn_ids: list[str] = []
        self.checked: list[dict[str, Any]] = []
        self.diagnosed: list[dict[str, Any]] = []
        self.bundle: str | None = None

    def serve(self, model: str, version: int, *, on: int | None = None) -> None:
        """``model`` v``version`` AVAILABLE on the first ``on`` replicas (default: all)."""
        for replica in self.replicas[:on]:
            replica.statuses[model] = {version: "AVAILABLE"}

    def tfserving(self, conn_id: str | None = None, **kwargs: Any) -> Any:
        self.hooks.append((conn_id, kwargs))
        if conn_id is None:
            return self.router
        return type("Pool", (), {"replicas": lambda _self: self.replicas})()

    def prometheus(self, conn_id: str) -> None:
        self.prometheus_conn_ids.append(conn_id)
        return None  # no rates: check_model leaves them out

    def diagnose(self, op: Any, context: Any, model: str, **kwargs: Any) -> Any:
        self.diagnosed.append({"model": model, **kwargs})
        return type("Bundle", (), {"path": self.bundle})() if self.bundle else None


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Env:
    env = Env()
    monkeypatch.setattr(health_module, "TFServingHook", env.tfserving)
    monkeypatch.setattr(health_module, "PrometheusHook", env.prometheus)
    monkeypatch.setattr(health_module, "diagnose_best_effort", env.diagnose)
    real = health_module.check_model

    def check_model(model: str, version: int, report: dict, **kwargs: Any) -> HealthReport:
        env.checked.append({"model": model, "version": version, "report": report, **kwargs})
        return real(model, version, report, **kwargs)

    monkeypatch.setattr(health_module, "check_model", check_model)
    return env


class Alerts:
    """The notifiers factory: what each alert said, and the notifiers it handed out."""

    def __init__(self, *, failing_first: bool = False) -> None:
        self.sent: list[tuple[str, str]] = []
        self.notifiers: list[list[Any]] = []
        self.failing_first = failing_first

    def __call__(self, subject: str, message: str) -> list[Any]:
        self.sent.append((subject, message))
        notifiers: list[Any] = [RecordingNotifier(), RecordingNotifier()]
        if self.failing_first:
            notifiers.insert(0, Broken())
        self.notifiers.append(notifiers)
        return notifiers


class Broken(RecordingNotifier):
    def notify(self, context: Any) -> None:
        raise ConnectionRefusedError("SMTP down")


def in_production(registry: FakeRegistry, model: str = MODEL, *, superseded: tuple[int, ...] = (1,)) -> int:
    """``model`` with ``superseded`` versions and the next one in production (with golden predictions)."""
    for version in superseded:
        registry.seed(version, "superseded", model=model, validation_report=GOLDEN)
    version = max(superseded, default=0) + 1
    registry.seed(version, "production", model=model, validation_report=GOLDEN)
    return version


def last_seen(registry: FakeRegistry, status: str, version: int = 2, model: str = MODEL) -> None:
    registry.record_health(model, version=version, target="local", status=status, context={"actor": "t"})
    registry.writes.clear()


def health_op(registry: FakeRegistry, alerts: Any = None, **kwargs: Any) -> ModelHealthOperator:
    op = ModelHealthOperator(task_id="check", notifiers=alerts, **kwargs)
    op.__dict__["registry"] = registry
    return op


def run(op: ModelHealthOperator) -> list[dict[str, Any]]:
    return op.execute(make_context("check", dag_id="model_health", run_id="scheduled__2026-01-01T00:05:00"))


def recorded(registry: FakeRegistry) -> list[tuple[str, int, str]]:
    return [(w.model, w.args["version"], w.args["status"]) for w in registry.writes_of("record_health")]


def alert_events(registry: FakeRegistry) -> list[tuple]:
    return [e for e in registry.events if e[0] == "alert"]


# --------------------------------------------------------------------------- construction


def test_defaults_and_budgets() -> None:
    op = ModelHealthOperator(task_id="check", max_error_rate=0.1, p99_budget_ms=250, window="2m")
    assert op.budgets == Budgets(max_error_rate=0.1, p99_ms=250, window="2m")
    assert op.execution_timeout == timedelta(minutes=10)
    assert op.template_fields == ("models",)
    assert (op.models, op.serving_target, op.notifiers) == ((), "local", None)
    assert ROLLBACK_DAG == "model_rollback"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"max_error_rate": 1.5}, "fraction"), ({"max_error_rate": -0.1}, "fraction"), ({"p99_budget_ms": 0}, "positive")],
)
def test_budgets_are_checked(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ModelHealthOperator(task_id="check", **kwargs)


# --------------------------------------------------------------------------- checks and records


def test_a_healthy_model_is_recorded_on_its_production_version_without_alert(env: Env, registry: FakeRegistry) -> None:
    in_production(registry)
    env.serve(MODEL, 2)
    last_seen(registry, "healthy")
    alerts = Alerts()

    assert run(health_op(registry, alerts)) == []

    assert recorded(registry) == [(MODEL, 2, "healthy")]
    [write] = registry.writes_of("record_health")
    assert write.args["target"] == "local"
    assert write.args["context"]["dagId"] == "model_health"
    _, record = registry.health[-1]
    assert record.details == {
        "check": "model_health",
        "replicas": {"http://127.0.0.1:18501": "AVAILABLE", "http://127.0.0.1:18503": "AVAILABLE"},
        "goldenMaxDiff": 0.0,
        "problems": [],
    }
    [checked] = env.checked
    assert (checked["model"], checked["version"], checked["report"]) == (MODEL, 2, GOLDEN)
    assert checked["replicas"] == env.replicas and checked["router"] is env.router
    assert checked["budgets"] == Budgets()
    assert env.router.predicts == [MODEL]
    assert alerts.sent == [] and alert_events(registry) == [] and env.diagnosed == []


def test_the_serving_target_s_pool_router_and_prometheus_are_used(env: Env, registry: FakeRegistry) -> None:
    in_production(registry)
    env.serve(MODEL, 2)

    run(health_op(registry, prometheus_conn_id="prom_x"))

    (pool_conn, _), (router_conn, router_kwargs) = env.hooks
    assert pool_conn == "tfserving_local"
    assert router_conn is None and set(router_kwargs) == {"grpc_target", "rest_url"}
    assert env.prometheus_conn_ids == ["prom_x"]


def test_every_model_in_production_is_checked_by_default(env: Env, registry: FakeRegistry) -> None:
    in_production(registry)
    in_production(registry, OTHER, superseded=())
    registry.seed(1, "validated", model="not_yet_released")
    env.serve(MODEL, 2)
    env.serve(OTHER, 1)

    run(health_op(registry))

    assert sorted(recorded(registry)) == [(MODEL, 2, "healthy"), (OTHER, 1, "healthy")]


def test_only_the_models_named_are_checked(env: Env, registry: FakeRegistry) -> None:
    in_production(registry)
    in_production(registry, OTHER, superseded=())
    registry.seed(1, "validated", model="not_yet_released")
    env.serve(OTHER, 1)

    run(health_op(registry, models=[OTHER, "not_yet_released"]))

    assert recorded(registry) == [(OTHER, 1, "healthy")]  # a model without production version is skipped


def test_a_bad_model_name_is_refused(env: Env, registry: FakeRegistry) -> None:
    with pytest.raises(ValueError):
        run(health_op(registry, models=["../etc"]))


def test_a_candidate_s_records_do_not_count_as_the_model_s_health(env: Env, registry: FakeRegistry) -> None:
    """The last status is the production version's: a candidate (v3) that failed smoke since is not a change."""
    in_production(registry)
    registry.seed(3, "rolled_back")
    env.serve(MODEL, 2)
    last_seen(registry, "healthy", version=2)
    for _ in range(25):
        last_seen(registry, "failing", version=3)
    alerts = Alerts()

    run(health_op(registry, alerts))

    assert alerts.sent == []
    assert recorded(registry) == [(MODEL, 2, "healthy")]


# --------------------------------------------------------------------------- alerts on a change of health


def test_a_change_alerts_every_notifier_and_the_history(env: Env, registry: FakeRegistry) -> None:
    in_production(registry)
    env.serve(MODEL, 2, on=1)
    last_seen(registry, "healthy")
    alerts = Alerts()

    assert run(health_op(registry, alerts)) == []

    assert recorded(registry) == [(MODEL, 2, "degraded")]
    [(subject, message)] = alerts.sent
    assert subject == f"[tfdeploy] {MODEL} healthy -> degraded"
    assert message.startswith(f"{MODEL} v2 health healthy -> degraded: v2 is AVAILABLE on 1 of 2 replicas")
    assert "rollback" not in message.lower()
    for notifier in alerts.notifiers[0]:
        [context] = notifier.notified
        assert context["ti"].task_id == "check"
    [(kind, model, version, reason, details)] = alert_events(registry)
    assert (model, version, reason, details) == (MODEL, 2, message, {"change": "healthy -> degraded"})
    assert env.diagnosed == []  # degraded: no diagnosis bundle


def test_a_first_check_is_a_change_from_unknown(env: Env, registry: FakeRegistry) -> None:
    in_production(registry)
    env.serve(MODEL, 2)
    alerts = Alerts()

    run(health_op(registry, alerts))

    assert [s for s, _ in alerts.sent] == [f"[tfdeploy] {MODEL} unknown -> healthy"]


def test_back_to_healthy_alerts_too(env: Env, registry: FakeRegistry) -> None:
    in_production(registry)
    env.serve(MODEL, 2)
    last_seen(registry, "failing")
    alerts = Alerts()

    run(health_op(registry, alerts))

    [(subject, message)] = alerts.sent
    assert subject == f"[tfdeploy] {MODEL} failing -> healthy"
    assert message == f"{MODEL} v2 health failing -> healthy"


def test_no_notifiers_still_records_the_change(env: Env, registry: FakeRegistry) -> None:
    in_production(registry)
    env.serve(MODEL, 2, on=1)
    last_seen(registry, "healthy")

    run(health_op(registry, None))

    assert [e[4] for e in alert_events(registry)] == [{"change": "healthy -> degraded"}]


def test_a_notifier_raising_does_not_stop_the_others(env: Env, registry: FakeRegistry) -> None:
    in_production(registry)
    env.serve(MODEL, 2, on=1)
    last_seen(registry, "healthy")
    alerts = Alerts(failing_first=True)

    run(health_op(registry, alerts))

    broken, *others = alerts.notifiers[0]
    assert isinstance(broken, Broken)
    assert [len(n.notified) for n in others] == [1, 1]
    assert len(alert_events(registry)) == 1
    assert recorded(registry) == [(MODEL, 2, "degraded")]


def test_an_alert_the_registry_cannot_record_does_not_fail_the_check(env: Env, registry: FakeRegistry) -> None:
    in_production(registry)
    env.serve(MODEL, 2, on=1)
    last_seen(registry, "healthy")
    registry.fail["record_serving_event"] = RegistryUnavailable("registry down")
    alerts = Alerts()

    assert run(health_op(registry, alerts)) == []

    assert len(alerts.sent) == 1
    assert recorded(registry) == [(MODEL, 2, "degraded")]


def test_each_model_alerts_on_its_own_change(env: Env, registry: FakeRegistry) -> None:
    in_production(registry)
    in_production(registry, OTHER, superseded=())
    env.serve(MODEL, 2)
    env.serve(OTHER, 1, on=1)
    last_seen(registry, "healthy")
    last_seen(registry, "healthy", version=1, model=OTHER)
    alerts = Alerts()

    run(health_op(registry, alerts))

    assert [s for s, _ in alerts.sent] == [f"[tfdeploy] {OTHER} healthy -> degraded"]


# --------------------------------------------------------------------------- failing: diagnosis and rollbacks


def failing(env: Env, registry: FakeRegistry, *, superseded: tuple[int, ...] = (1,), auto: bool | None = True) -> int:
    """Production answering wrongly through the router (``auto``: the model's autoRollbackOnFailing)."""
    version = in_production(registry, superseded=superseded)
    env.serve(MODEL, version)
    env.router.answer = 9.0
    if auto is not None:
        registry.settings[MODEL] = ModelSettings(auto_rollback_on_failing=auto)
    last_seen(registry, "healthy", version=version)
    return version


def test_a_failing_model_with_auto_rollback_is_handed_to_model_rollback(env: Env, registry: FakeRegistry) -> None:
    failing(env, registry)
    env.bundle = f"/diagnostics/{MODEL}/x.tar.gz"
    alerts = Alerts()

    confs = run(health_op(registry, alerts))

    problem = "served outputs via the router differ from validation's by 8.5 (> 0.0001)"
    assert confs == [
        {"model_name": MODEL, "version": 1, "reason": f"automatic: model_health found v2 failing: {problem}"}
    ]
    assert recorded(registry) == [(MODEL, 2, "failing")]
    [(subject, message)] = alerts.sent
    assert subject == f"[tfdeploy] {MODEL} healthy -> failing"
    assert message == (
        f"{MODEL} v2 health healthy -> failing: {problem}. Automatic rollback to v1 started (model_rollback)."
        f" Diagnosis bundle: HDFS /diagnostics/{MODEL}/x.tar.gz"
    )
    [diagnosis] = env.diagnosed
    assert diagnosis["model"] == MODEL and diagnosis["version"] == 2
    assert diagnosis["reason"] == f"model_health found v2 failing: {problem}"
    assert diagnosis["serving_target"] == "local" and diagnosis["registry"] is registry
    assert alert_events(registry)[0][4] == {
        "change": "healthy -> failing",
        "diagnosis": f"/diagnostics/{MODEL}/x.tar.gz",
    }
    # the operator only asks: the rollback itself is model_rollback's (nothing moved here)
    assert registry.transitions() == []


def test_the_rollback_goes_to_the_newest_superseded_version(env: Env, registry: FakeRegistry) -> None:
    failing(env, registry, superseded=(1, 2, 3))
    registry.seed(5, "rolled_back")

    [conf] = run(health_op(registry, Alerts()))

    assert conf["version"] == 3


def test_no_earlier_version_is_no_rollback_and_said_so(env: Env, registry: FakeRegistry) -> None:
    failing(env, registry, superseded=())
    alerts = Alerts()

    assert run(health_op(registry, alerts)) == []

    assert recorded(registry) == [(MODEL, 1, "failing")]
    [(_, message)] = alerts.sent
    assert message.endswith(
        ". Automatic rollback is on but NO ROLLBACK WAS POSSIBLE: no earlier version to go back to."
    )
    assert "started" not in message


@pytest.mark.parametrize("auto", [False, None])  # off, or never set (the fake's default: all off)
def test_without_auto_rollback_a_failing_model_only_alerts(env: Env, registry: FakeRegistry, auto: bool | None) -> None:
    failing(env, registry, auto=auto)
    alerts = Alerts()

    assert run(health_op(registry, alerts)) == []

    [(_, message)] = alerts.sent
    assert "rollback" not in message.lower()


def test_settings_of_a_model_the_registry_does_not_know_mean_no_rollback(
    env: Env, registry: FakeRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing(env, registry)
    registry.fail["get_settings"] = NotFound("no settings")

    assert run(health_op(registry, Alerts())) == []


def test_a_model_staying_failing_is_not_alerted_again_but_still_rolled_back(env: Env, registry: FakeRegistry) -> None:
    """The schedule is the safety net: a rollback that did not happen (or failed) is asked again."""
    failing(env, registry)
    last_seen(registry, "failing")
    alerts = Alerts()

    confs = run(health_op(registry, alerts))

    assert [c["version"] for c in confs] == [1]
    assert alerts.sent == [] and alert_events(registry) == [] and env.diagnosed == []


def test_the_rollback_reason_is_cut_to_1000_characters(
    env: Env, registry: FakeRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_production(registry)
    registry.settings[MODEL] = ModelSettings(auto_rollback_on_failing=True)
    monkeypatch.setattr(
        health_module,
        "check_model",
        lambda model, version, *a, **k: HealthReport(model, version, "failing", problems=["x" * 2000]),
    )

    [conf] = run(health_op(registry, Alerts()))

    assert len(conf["reason"]) == 1000 and conf["reason"].startswith("automatic: model_health found v2 failing: xx")


def test_only_models_with_a_rollback_to_do_are_returned(env: Env, registry: FakeRegistry) -> None:
    failing(env, registry)  # MODEL: v2 failing, auto-rollback to v1
    in_production(registry, OTHER, superseded=(1,))  # OTHER: v2 healthy
    env.serve(OTHER, 2)
    env.router.answer = 9.0  # the router answers wrongly for both...
    registry.settings[OTHER] = ModelSettings(auto_rollback_on_failing=False)  # ...OTHER is not rolled back

    confs = run(health_op(registry, Alerts()))

    assert [(c["model_name"], c["version"]) for c in confs] == [(MODEL, 1)]
    assert sorted(recorded(registry)) == [(MODEL, 2, "failing"), (OTHER, 2, "failing")]
