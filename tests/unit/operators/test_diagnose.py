"""DiagnoseOperator (the model_diagnose DAG) and the best-effort bundles of the rollback and the health checks:
the path in the XCom, the registry's history and the alert; a failing collection never fails those steps."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from tests.unit.operators.conftest import (
    MODEL,
    FakeRegistry,
    FakeRouter,
    FakeService,
    RecordingAlertNotifier,
    RecordingNotifier,
    exported,
    inject,
    make_context,
)
from tfdeploy.core.errors import NotFound, RegistryError, RegistryUnavailable
from tfdeploy.hooks.registry import ModelRecord
from tfdeploy.operators import diagnose as diagnose_module
from tfdeploy.operators import health as health_module
from tfdeploy.operators import rollback as rollback_module
from tfdeploy.operators.diagnose import DiagnoseOperator, diagnose_best_effort, task_ref
from tfdeploy.operators.health import ModelHealthOperator
from tfdeploy.operators.rollback import RollbackOperator
from tfdeploy.services.diagnosis import DiagnosisBundle, TaskRef
from tfdeploy.services.health import HealthReport

PATH = f"/diagnostics/{MODEL}/20260504T102030Z-manual__2026-01-01T00_00_00.tar.gz"
BUNDLE = DiagnosisBundle(
    MODEL, PATH, f"webhdfs://127.0.0.1:9870{PATH}", ["README.txt", "manifest.json"], {"prometheus/x.json": "down"}, 10
)


class FakeDiagnosis:
    """Stands in for DiagnosisService: records what it was asked, answers BUNDLE (or raises ``error``)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.calls: list[dict[str, Any]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> FakeDiagnosis:  # stands in for the class
        self.built = (args, kwargs)
        return self

    def collect(self, model: str, *, run_id: str, reason: str = "", task: TaskRef | None = None) -> DiagnosisBundle:
        self.calls.append({"model": model, "run_id": run_id, "reason": reason, "task": task})
        if self.error is not None:
            raise self.error
        return BUNDLE


# --------------------------------------------------------------------------- DiagnoseOperator


def test_operator_defaults_and_checks() -> None:
    op = DiagnoseOperator(task_id="collect", model_name="{{ params.model_name }}")
    assert op.execution_timeout == timedelta(minutes=10)
    assert set(op.template_fields) >= {"model_name", "reason", "serving_target", "failed_task_id"}
    with pytest.raises(ValueError):
        DiagnoseOperator(task_id="collect", model_name="bad/name")
    with pytest.raises(ValueError, match="positive"):
        DiagnoseOperator(task_id="collect", model_name=MODEL, total_timeout_s=0)
    with pytest.raises(TypeError):
        DiagnoseOperator("collect", model_name=MODEL)  # type: ignore[misc] - keyword-only


def test_operator_stores_records_and_returns_a_small_xcom(registry: FakeRegistry) -> None:
    fake = FakeDiagnosis()
    op = inject(DiagnoseOperator(task_id="collect", model_name=MODEL, reason="  "), registry=registry)
    op.service = lambda: fake  # type: ignore[method-assign]
    ctx = make_context("collect", dag_id="model_diagnose", run_id="manual__2026-01-01T00:00:00")

    out = op.execute(ctx)

    assert out == {"path": PATH, "parts": ["README.txt", "manifest.json"], "missing": {"prometheus/x.json": "down"}}
    [call] = fake.calls
    assert call["reason"] == "on demand" and call["run_id"] == "manual__2026-01-01T00:00:00"
    assert call["task"] == TaskRef("model_diagnose", "manual__2026-01-01T00:00:00", "collect")
    [(kind, model, version, reason, details)] = registry.events
    assert (kind, model, version) == ("diagnosis", MODEL, None)
    assert reason == "diagnosis: on demand" and details["path"] == PATH and details["parts"] == BUNDLE.parts


def test_operator_links_the_failing_task_it_is_given(registry: FakeRegistry) -> None:
    fake = FakeDiagnosis()
    op = inject(
        DiagnoseOperator(
            task_id="collect",
            model_name=MODEL,
            failed_dag_id="model_deploy",
            failed_run_id="r1",
            failed_task_id="smoke",
        ),
        registry=registry,
    )
    op.service = lambda: fake  # type: ignore[method-assign]
    op.execute(make_context("collect", dag_id="model_diagnose"))
    assert fake.calls[0]["task"] == TaskRef("model_deploy", "r1", "smoke")


def test_operator_fails_when_nothing_could_be_stored(registry: FakeRegistry) -> None:
    op = inject(DiagnoseOperator(task_id="collect", model_name=MODEL), registry=registry)
    op.service = lambda: FakeDiagnosis(OSError("HDFS down"))  # type: ignore[method-assign]
    with pytest.raises(OSError, match="HDFS down"):
        op.execute(make_context("collect"))
    assert registry.events == []


def test_operator_keeps_a_bundle_of_a_model_the_registry_does_not_know(monkeypatch: pytest.MonkeyPatch) -> None:
    class UnknownModel(FakeRegistry):
        def record_serving_event(self, model: str, *args: Any, **kwargs: Any) -> None:
            raise NotFound(f"model {model!r} not found")

    op = inject(DiagnoseOperator(task_id="collect", model_name=MODEL), registry=UnknownModel())
    op.service = lambda: FakeDiagnosis()  # type: ignore[method-assign]
    assert op.execute(make_context("collect"))["path"] == PATH


def test_operator_fails_when_the_registry_cannot_record_the_bundle(monkeypatch: pytest.MonkeyPatch) -> None:
    class DownRegistry(FakeRegistry):
        def record_serving_event(self, *args: Any, **kwargs: Any) -> None:
            raise RegistryUnavailable("no answer after 5 attempts")

    op = inject(DiagnoseOperator(task_id="collect", model_name=MODEL), registry=DownRegistry())
    op.service = lambda: FakeDiagnosis()  # type: ignore[method-assign]
    with pytest.raises(RegistryError, match=f"stored at {PATH} but could not be recorded"):
        op.execute(make_context("collect"))


def test_task_ref_is_the_running_task_or_one_of_its_run() -> None:
    ctx = make_context("rollback", run_id="r9")
    ctx["ti"].try_number = 3
    ctx["ti"].map_index = 0
    assert task_ref(ctx) == TaskRef("model_deploy", "r9", "rollback", try_number=3, map_index=0)
    assert task_ref(ctx, "smoke") == TaskRef("model_deploy", "r9", "smoke")


# --------------------------------------------------------------------------- best effort


def test_best_effort_returns_none_and_never_raises(registry: FakeRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(diagnose_module, "DiagnosisService", FakeDiagnosis(RuntimeError("docker and HDFS down")))
    op = DiagnoseOperator(task_id="t", model_name=MODEL)
    assert diagnose_best_effort(op, make_context("t"), MODEL, reason="r", registry=registry) is None
    assert registry.events == []


def test_best_effort_keeps_the_bundle_when_the_registry_refuses_the_event(monkeypatch: pytest.MonkeyPatch) -> None:
    class DownRegistry(FakeRegistry):
        def record_serving_event(self, *args: Any, **kwargs: Any) -> None:
            raise RuntimeError("registry down")

    fake = FakeDiagnosis()
    monkeypatch.setattr(diagnose_module, "DiagnosisService", fake)
    op = DiagnoseOperator(task_id="t", model_name=MODEL)
    bundle = diagnose_best_effort(
        op, make_context("rollback"), MODEL, reason="r", registry=DownRegistry(), failed_task_id="smoke"
    )
    assert bundle is BUNDLE
    assert fake.calls[0]["task"].task_id == "smoke"
    assert fake.built[1]["total_timeout_s"] == 90.0, "bounded below the step's own timeout"


# --------------------------------------------------------------------------- the rollback


def smoke_failed(registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter) -> dict:
    registry.seed(1, "production")
    registry.seed(2, "canary")
    service.serve(1, stable=1)
    canary.serve(2, canary=2)
    router.routes[f"{MODEL}/2"] = "canary"
    rollout = {"model": MODEL, "version": 2, "target": "local", "stable": 1}
    return make_context("rollback", {"export": exported(2), "rollout": rollout})


def rollback_op(registry: FakeRegistry, service: FakeService, canary: FakeService, router: FakeRouter) -> Any:
    alert, other = RecordingAlertNotifier(), RecordingNotifier()
    op = RollbackOperator(task_id="rollback", model_name=MODEL, notifiers=[alert, other])
    return inject(op, registry=registry, service=service, canary=canary, router=router), alert


def test_rollback_names_the_bundle_in_its_history_event_and_alert(
    registry: FakeRegistry,
    service: FakeService,
    canary: FakeService,
    router: FakeRouter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeDiagnosis()
    monkeypatch.setattr(diagnose_module, "DiagnosisService", fake)
    ctx = smoke_failed(registry, service, canary, router)
    op, alert = rollback_op(registry, service, canary, router)

    op.execute(ctx)

    [call] = fake.calls
    assert call["task"] == TaskRef("model_deploy", "manual__2026-01-01T00:00:00", "smoke"), "the failed step's log"
    assert call["reason"].startswith("v2 rolled back after smoke failed")
    [rolled_back] = [w for w in registry.writes_of("transition") if w.args["to"] == "rolled_back"]
    assert rolled_back.args["details"]["diagnosis"] == PATH
    assert [e for e in registry.events if e[0] == "diagnosis"][0][4]["path"] == PATH
    assert alert.sent and alert.sent[0].endswith(f"Diagnosis bundle: HDFS {PATH}")


def test_a_failing_collection_never_fails_the_rollback(
    registry: FakeRegistry,
    service: FakeService,
    canary: FakeService,
    router: FakeRouter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(diagnose_module, "DiagnosisService", FakeDiagnosis(RuntimeError("HDFS down")))
    ctx = smoke_failed(registry, service, canary, router)
    op, alert = rollback_op(registry, service, canary, router)

    out = op.execute(ctx)

    assert out["restored"] == 1 and registry.state(2).value == "rolled_back"
    assert "Diagnosis" not in alert.sent[0]
    assert not [e for e in registry.events if e[0] == "diagnosis"]


def test_rollback_module_uses_the_shared_best_effort_helper() -> None:
    assert rollback_module.diagnose_best_effort is diagnose_best_effort
    assert health_module.diagnose_best_effort is diagnose_best_effort


# --------------------------------------------------------------------------- the health checks


class HealthRegistry(FakeRegistry):
    """What ModelHealthOperator asks of the registry for one model in production (v2), last seen ``before``."""

    def __init__(self, before: str) -> None:
        super().__init__()
        self.before = before
        self.recorded: list[str] = []

    def get_model(self, model: str) -> ModelRecord:
        return ModelRecord(model=model, production_version=2)

    def get_version(self, model: str, version: int) -> Any:
        return type("V", (), {"validation_report": {}})()

    def latest_health(self, model: str, *, limit: int = 1, version: int | None = None) -> list[Any]:
        return [type("H", (), {"version": 2, "status": self.before})()]

    def record_health(self, model: str, **kwargs: Any) -> None:
        self.recorded.append(kwargs["status"])

    def get_settings(self, model: str) -> Any:
        raise NotFound("no settings")


def run_health(monkeypatch: pytest.MonkeyPatch, status: str, before: str, fake: FakeDiagnosis) -> tuple[Any, list]:
    monkeypatch.setattr(diagnose_module, "DiagnosisService", fake)
    monkeypatch.setattr(
        health_module,
        "check_model",
        lambda model, version, *a, **k: HealthReport(model, version, status, problems=["golden predict wrong"]),
    )
    monkeypatch.setattr(health_module, "run_context", lambda context: {"actor": "scheduler"})
    monkeypatch.setattr(diagnose_module, "run_context", lambda context: {"actor": "scheduler"})
    sent: list[str] = []

    def notifiers(subject: str, message: str) -> list[Any]:
        sent.append(message)
        return [RecordingNotifier()]

    registry = HealthRegistry(before)
    op = ModelHealthOperator(task_id="check", models=[MODEL], notifiers=notifiers)
    op.__dict__["registry"] = registry
    op.execute(make_context("check", dag_id="model_health"))
    return registry, sent


def test_a_model_going_failing_gets_a_bundle_named_in_its_alert(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeDiagnosis()
    registry, sent = run_health(monkeypatch, "failing", "healthy", fake)
    [call] = fake.calls
    assert call["task"].task_id == "check" and call["reason"].startswith("model_health found v2 failing")
    assert sent == [f"{MODEL} v2 health healthy -> failing: golden predict wrong Diagnosis bundle: HDFS {PATH}"]
    alert = [e for e in registry.events if e[0] == "alert"][0]
    assert alert[4]["diagnosis"] == PATH
    assert [e[0] for e in registry.events] == ["diagnosis", "alert"]


def test_no_bundle_while_a_model_stays_failing_or_is_only_degraded(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeDiagnosis()
    run_health(monkeypatch, "failing", "failing", fake)
    run_health(monkeypatch, "degraded", "healthy", fake)
    assert fake.calls == []


def test_a_failing_collection_never_fails_the_health_check(monkeypatch: pytest.MonkeyPatch) -> None:
    registry, sent = run_health(monkeypatch, "failing", "healthy", FakeDiagnosis(RuntimeError("docker down")))
    assert registry.recorded == ["failing"]
    assert sent == [f"{MODEL} v2 health healthy -> failing: golden predict wrong"]
