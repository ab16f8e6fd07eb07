"""RollbackOperator: the previous stable served again (or the first deployment unloaded), recorded, alerted."""

from __future__ import annotations

from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from tests.unit.operators.conftest import (
    MODEL,
    TARGET,
    FakeModelStore,
    FakeRegistry,
    FakeService,
    RecordingAlertNotifier,
    RecordingNotifier,
    exported,
    inject,
    make_context,
)
from tfdeploy.core.errors import ServingReloadError
from tfdeploy.core.models_config import ServedModel
from tfdeploy.notifiers import DeploymentAlertNotifier
from tfdeploy.operators import rollback as rollback_module
from tfdeploy.operators.rollback import RollbackOperator


class Rollback:
    """The operator with its fakes and notifiers."""

    def __init__(self, registry: FakeRegistry, service: FakeService) -> None:
        self.alert = RecordingAlertNotifier()
        self.other = RecordingNotifier()
        op = RollbackOperator(task_id="rollback", model_name=MODEL, notifiers=[self.alert, self.other])
        self.op = inject(op, registry=registry, service=service)

    def execute(self, context: dict) -> Any:
        return self.op.execute(context)


def context(**xcoms: Any) -> dict:
    return make_context("rollback", xcoms)


ROLLOUT = {"model": MODEL, "version": 2, "target": TARGET, "stable": 1}


def smoke_failed(registry: FakeRegistry, service: FakeService) -> dict:
    """v2 canary beside stable v1; smoke found it unhealthy."""
    registry.seed(1, "production")
    registry.seed(2, "canary")
    registry.deployments.update({(MODEL, TARGET, "stable"): 1, (MODEL, TARGET, "canary"): 2})
    registry.record_health(
        MODEL, version=2, target=TARGET, status="unhealthy", details={"problems": ["parity off by 0.37"]}, context={}
    )
    registry.writes.clear()
    service.serve(1, 2, stable=1, canary=2)
    return context(export=exported(2), rollout=ROLLOUT)


def test_defaults() -> None:
    op = RollbackOperator(task_id="rollback", model_name=MODEL)
    assert op.trigger_rule == "one_failed"
    assert [type(n) for n in op.notifiers] == [DeploymentAlertNotifier]


def test_nothing_exported_skips(registry: FakeRegistry, service: FakeService) -> None:
    with pytest.raises(AirflowSkipException, match="nothing was exported"):
        Rollback(registry, service).execute(context())
    assert service.calls == {}
    assert registry.writes == []


def test_candidate_that_never_reached_serving_is_discarded_and_skipped(
    registry: FakeRegistry, service: FakeService
) -> None:
    registry.seed(1, "production")
    registry.seed(2, "validated")
    service.serve(1, stable=1)
    service.staged.add((MODEL, 2))  # staged, then the config change failed
    rb = Rollback(registry, service)

    with pytest.raises(AirflowSkipException, match=r"v2 never reached serving \(validated\): production untouched"):
        rb.execute(context(export=exported(2)))

    assert service.discarded == [(MODEL, 2)]
    assert (MODEL, 2) not in service.staged
    assert service.calls["change"] == 0
    assert registry.writes == []
    assert rb.alert.sent == [] and rb.other.notified == []


def test_previous_stable_restored_after_smoke_failed(registry: FakeRegistry, service: FakeService) -> None:
    ctx = smoke_failed(registry, service)
    rb = Rollback(registry, service)

    result = rb.execute(ctx)

    assert result == {"model": MODEL, "version": 2, "restored": 1, "failed_step": "smoke", "served": [1]}
    assert service.config[MODEL] == ServedModel(MODEL, f"/models/{MODEL}", (1,), {"stable": 1})
    assert service.calls["label_version"] == 1
    assert service.discarded == [(MODEL, 2)]
    assert (MODEL, 2) not in service.staged and (MODEL, 1) in service.staged
    assert registry.transitions() == [(2, "canary", "rolled_back")]
    [transition] = registry.writes_of("transition")
    assert transition.args["reason"] == "smoke failed: parity off by 0.37"
    assert transition.args["details"] == {"target": TARGET}
    assert registry.deployments == {(MODEL, TARGET, "stable"): 1}
    message = f"{MODEL} v2 rolled back on {TARGET} after smoke failed: parity off by 0.37; v1 serves as stable"
    assert rb.alert.sent == [message]
    assert rb.other.notified == [ctx]


def test_previous_superseded_by_a_failed_promotion_goes_back_to_production(
    registry: FakeRegistry, service: FakeService
) -> None:
    registry.seed(1, "superseded")
    registry.seed(2, "production")
    service.serve(1, 2, stable=2)
    rb = Rollback(registry, service)

    result = rb.execute(context(export=exported(2), rollout=ROLLOUT, smoke={"version": 2}))

    assert (result["failed_step"], result["restored"]) == ("promote", 1)
    assert registry.transitions() == [(2, "production", "rolled_back"), (1, "superseded", "production")]
    assert registry.writes_of("transition")[1].args["reason"] == "restored by rollback of v2"
    assert registry.deployments == {(MODEL, TARGET, "stable"): 1}
    assert dict(service.config[MODEL].labels) == {"stable": 1}
    assert rb.alert.sent[0].endswith("after promote failed; v1 serves as stable")


def test_previous_looked_up_in_the_registry_when_rollout_left_no_result(
    registry: FakeRegistry, service: FakeService
) -> None:
    registry.seed(1, "production")
    registry.seed(2, "validated")  # rollout changed the config, then failed before recording canary
    service.serve(1, 2, stable=1, canary=2)

    result = Rollback(registry, service).execute(context(export=exported(2)))

    assert (result["failed_step"], result["restored"], result["served"]) == ("rollout", 1, [1])
    assert registry.transitions() == []  # v2 never became canary: nothing to mark


def test_first_deployment_unloads_the_candidate(registry: FakeRegistry, service: FakeService) -> None:
    registry.seed(2, "canary")
    service.serve(2, canary=2)
    rb = Rollback(registry, service)

    result = rb.execute(context(export=exported(2), rollout={**ROLLOUT, "stable": None}))

    assert (result["restored"], result["served"], result["failed_step"]) == (None, [], "smoke")
    assert MODEL not in service.config
    assert service.calls["label_version"] == 0
    assert (MODEL, 2) not in service.staged
    assert registry.transitions() == [(2, "canary", "rolled_back")]
    assert [w.args["label"] for w in registry.writes_of("clear_deployment")] == ["stable", "canary"]
    assert registry.writes_of("clear_deployment")[0].args["reason"] == "first deployment rolled back"
    assert rb.alert.sent[0].endswith("no version of it is served")


def test_failed_restore_says_what_to_do_by_hand(registry: FakeRegistry, service: FakeService) -> None:
    ctx = smoke_failed(registry, service)
    before = dict(service.config)
    service.fail_change = ServingReloadError("reload failed", code="UNAVAILABLE", details="server down")
    rb = Rollback(registry, service)

    with pytest.raises(AirflowFailException) as err:
        rb.execute(ctx)

    text = str(err.value)
    assert f"ROLLBACK OF {MODEL} v2 ON {TARGET} FAILED: reload failed" in text
    assert "By hand" in text
    assert "`tfserving-local` (local/tfserving-compat:latest)" in text
    assert "/srv/models.config serve v1 labelled stable" in text
    assert isinstance(err.value.__cause__, ServingReloadError)
    assert service.config == before
    assert service.discarded == []
    assert registry.writes == []
    assert rb.alert.sent == [] and rb.other.notified == []


def test_failed_restore_of_a_first_deployment(registry: FakeRegistry, service: FakeService) -> None:
    registry.seed(2, "canary")
    service.serve(2, canary=2)
    service.fail_change = ServingReloadError("reload failed", code="UNAVAILABLE", details="down")

    with pytest.raises(AirflowFailException, match=f"serve no version of {MODEL}, reload it"):
        Rollback(registry, service).execute(context(export=exported(2), rollout={**ROLLOUT, "stable": None}))


def test_stable_answering_from_another_version_fails(registry: FakeRegistry, service: FakeService) -> None:
    ctx = smoke_failed(registry, service)
    service.label_answers["stable"] = 2

    with pytest.raises(AirflowFailException, match="FAILED: after the rollback, stable answers from v2, not v1"):
        Rollback(registry, service).execute(ctx)
    assert service.discarded == []
    assert registry.writes == []


def test_rerun_after_a_rollback_changes_nothing(registry: FakeRegistry, service: FakeService) -> None:
    ctx = smoke_failed(registry, service)
    Rollback(registry, service).execute(ctx)
    writes, config = list(registry.writes), dict(service.config)
    rb = Rollback(registry, service)

    with pytest.raises(AirflowSkipException, match=r"never reached serving \(rolled_back\)"):
        rb.execute(ctx)

    assert registry.writes == writes
    assert service.config == config
    assert service.calls["change"] == 1
    assert rb.alert.sent == []


def test_unknown_failed_step(registry: FakeRegistry, service: FakeService) -> None:
    smoke_failed(registry, service)
    ctx = context(export=exported(2), rollout=ROLLOUT, smoke={}, promote={})
    rb = Rollback(registry, service)

    assert rb.execute(ctx)["failed_step"] == "unknown"
    assert "after unknown failed" in rb.alert.sent[0]


def test_preset_alert_message_is_kept(registry: FakeRegistry, service: FakeService) -> None:
    ctx = smoke_failed(registry, service)
    rb = Rollback(registry, service)
    rb.alert.message = "custom page"

    rb.execute(ctx)

    assert rb.alert.sent == ["custom page"]


def test_previous_unloaded_by_a_failed_promotion_is_staged_again(
    registry: FakeRegistry, service: FakeService, monkeypatch: pytest.MonkeyPatch, store: FakeModelStore
) -> None:
    monkeypatch.setattr(rollback_module, "ModelStoreHook", store)
    registry.seed(1, "production")
    registry.seed(2, "canary")
    # promote with keep_versions=1 dropped v1 and its staged copy, then its registry write failed
    service.serve(2, stable=2)

    result = Rollback(registry, service).execute(context(export=exported(2), rollout=ROLLOUT, smoke={"version": 2}))

    assert result["served"] == [1]
    # staged again from the model store, pinned to the registered manifest, before the config change
    assert [(c["model"], c["version"], c["sha"]) for c in service.stage_calls] == [
        (MODEL, 1, registry.get_version(MODEL, 1).manifest_sha256)
    ]
