"""DeploymentLockSensor, ReleaseLockOperator and the lease heartbeat against a fake registry."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.unit.operators.conftest import MODEL, FakeRegistry, FakeService, Lineage, inject, make_context
from tfdeploy.core.errors import Conflict, LeaseLost, LockHeld, RegistryUnavailable
from tfdeploy.operators import lock as lock_module
from tfdeploy.operators.lease import LeaseHeartbeat
from tfdeploy.operators.lock import DeploymentLockSensor, ReleaseLockOperator

RUN = "manual__2026-01-01T00:00:00"
LEASE = {"expires_at": "2026-01-01T00:15:00", "lease_seconds": 900}


def sensor(registry: FakeRegistry, **kwargs) -> DeploymentLockSensor:
    return inject(DeploymentLockSensor(task_id="acquire_lock", model_name=MODEL, **kwargs), registry=registry)


def releaser(registry: FakeRegistry) -> ReleaseLockOperator:
    return inject(ReleaseLockOperator(task_id="release_lock", model_name=MODEL), registry=registry)


@pytest.fixture
def stable(monkeypatch: pytest.MonkeyPatch) -> FakeService:
    """The stable pool the sensor checks when it takes over an expired lease."""
    pool = FakeService()
    monkeypatch.setattr(lock_module, "get_target", lambda name, pool="stable": name)
    monkeypatch.setattr(lock_module, "ServingTargetService", lambda target: pool)
    return pool


def test_defaults_reschedule_mode_and_refuse_bad_lease() -> None:
    op = DeploymentLockSensor(task_id="acquire_lock", model_name=MODEL)
    assert op.mode == "reschedule"
    with pytest.raises(ValueError, match="lease_seconds"):
        DeploymentLockSensor(task_id="acquire_lock", model_name=MODEL, lease_seconds=0)


def test_free_lock_is_acquired_and_its_token_never_reaches_xcom(registry: FakeRegistry, lineage: Lineage) -> None:
    result = sensor(registry, lease_seconds=120).poke(make_context("acquire_lock"))

    assert result.is_done
    assert result.xcom_value == {"expires_at": registry.locks[MODEL]["expires_at"].isoformat(), "lease_seconds": 120}
    assert registry.locks[MODEL]["token"] not in str(result.xcom_value)
    [write] = registry.writes_of("acquire_lock")
    assert write.args["holder"] == f"model_deploy/{RUN}"
    assert write.args["context"]["runId"] == RUN
    assert len(lineage.calls) == 1


def test_lock_of_a_known_model_nobody_holds(registry: FakeRegistry) -> None:
    registry.seed(1, "production")
    assert sensor(registry).poke(make_context("acquire_lock")).is_done


def test_held_lock_waits_without_writing(registry: FakeRegistry, lineage: Lineage) -> None:
    registry.hold_lock(holder="model_deploy/other", run_id="other", expires_in=600)

    result = sensor(registry).poke(make_context("acquire_lock"))

    assert not result.is_done
    assert lineage.calls == []
    assert registry.writes == []
    assert registry.locks[MODEL]["run_id"] == "other"


def test_expired_lock_is_taken_over_when_serving_agrees_with_the_registry(
    registry: FakeRegistry, stable: FakeService
) -> None:
    registry.seed(1, "production")
    stable.serve(1, stable=1)
    registry.hold_lock(holder="model_deploy/dead", run_id="dead", expires_in=-1)

    result = sensor(registry).poke(make_context("acquire_lock"))

    assert result.is_done
    assert registry.locks[MODEL]["run_id"] == RUN
    assert stable.calls["entry"] == 1


def test_expired_lock_is_given_back_when_serving_and_registry_disagree(
    registry: FakeRegistry, stable: FakeService
) -> None:
    """A run killed mid-promote: the registry says v1 is in production, the stable pool serves v2 as stable."""
    registry.seed(1, "production")
    stable.serve(1, 2, stable=2)
    registry.hold_lock(holder="model_deploy/dead", run_id="dead", expires_in=-1)

    with pytest.raises(Exception, match=r"model_deploy/dead .*disagree: .*label `stable` points at v2, not v1"):
        sensor(registry).poke(make_context("acquire_lock"))

    assert MODEL not in registry.locks  # released: model_rollback can take it and repair serving
    assert registry.writes_of("release_lock")


def test_a_rollback_takes_over_without_the_agreement_check(registry: FakeRegistry, stable: FakeService) -> None:
    registry.seed(1, "production")
    stable.serve(1, 2, stable=2)
    registry.hold_lock(holder="model_deploy/dead", run_id="dead", expires_in=-1)

    assert sensor(registry, check_serving_on_takeover=False).poke(make_context("acquire_lock")).is_done
    assert stable.calls["entry"] == 0


def test_lock_race_lost_is_not_done(registry: FakeRegistry) -> None:
    registry.fail["acquire_lock"] = LockHeld("taken between the read and the write")

    result = sensor(registry).poke(make_context("acquire_lock"))

    assert not result.is_done
    assert MODEL not in registry.locks


def test_rerun_of_the_same_run_keeps_its_lease(registry: FakeRegistry) -> None:
    first = sensor(registry).poke(make_context("acquire_lock"))
    token = registry.locks[MODEL]["token"]
    second = sensor(registry).poke(make_context("acquire_lock"))

    assert first.is_done and second.is_done
    assert registry.locks[MODEL]["token"] == token
    assert [w.args["extended"] for w in registry.writes_of("acquire_lock")] == [False, True]


def test_release_by_the_run_that_holds_it(registry: FakeRegistry) -> None:
    lease = sensor(registry).poke(make_context("acquire_lock")).xcom_value

    releaser(registry).execute(make_context("release_lock", {"acquire_lock": lease}))

    assert MODEL not in registry.locks
    assert len(registry.writes_of("release_lock")) == 1


def test_release_twice_changes_nothing_the_second_time(registry: FakeRegistry) -> None:
    lease = sensor(registry).poke(make_context("acquire_lock")).xcom_value
    context = make_context("release_lock", {"acquire_lock": lease})

    releaser(registry).execute(context)
    releaser(registry).execute(context)

    assert len(registry.writes_of("release_lock")) == 1


def test_release_without_lease_does_nothing(registry: FakeRegistry) -> None:
    registry.hold_lock(holder="model_deploy/other", run_id="other", expires_in=600)

    releaser(registry).execute(make_context("release_lock"))

    assert registry.writes == []
    assert registry.locks[MODEL]["run_id"] == "other"


def test_release_of_a_lease_taken_over_is_refused(registry: FakeRegistry) -> None:
    registry.hold_lock(holder="model_deploy/other", run_id="other", expires_in=600)

    with pytest.raises(Conflict):
        releaser(registry).execute(make_context("release_lock", {"acquire_lock": LEASE}))
    assert registry.locks[MODEL]["run_id"] == "other"


def test_release_lock_runs_whatever_happened() -> None:
    assert ReleaseLockOperator(task_id="release_lock", model_name=MODEL).trigger_rule == "all_done"


# --------------------------------------------------------------------------- the heartbeat


def lineage_of(run_id: str = RUN) -> dict[str, Any]:
    return {"interface": "pipeline", "dagId": "model_deploy", "runId": run_id, "taskId": "rollout"}


def test_heartbeat_renews_at_start_and_every_third_of_the_lease(registry: FakeRegistry) -> None:
    registry.hold_lock(holder=f"model_deploy/{RUN}", run_id=RUN, expires_in=1)
    beat = LeaseHeartbeat(registry, MODEL, lineage_of(), lease_seconds=0.3).start()  # type: ignore[arg-type]
    time.sleep(0.45)
    beat.stop()

    renewals = registry.writes_of("renew_lock")
    assert len(renewals) >= 3  # at start, then at 0.1 s, 0.2 s, ...
    assert {w.args["ttl_seconds"] for w in renewals} == {0.3}


def test_a_lease_taken_by_another_run_fails_the_step_before_it_starts(registry: FakeRegistry) -> None:
    registry.hold_lock(holder="model_deploy/other", run_id="other", expires_in=600)

    with pytest.raises(LeaseLost, match="no longer this run's"):
        LeaseHeartbeat(registry, MODEL, lineage_of(), lease_seconds=60).start()  # type: ignore[arg-type]


def test_a_lease_lost_while_the_step_runs_fails_it_when_it_ends(registry: FakeRegistry) -> None:
    registry.hold_lock(holder=f"model_deploy/{RUN}", run_id=RUN, expires_in=60)
    beat = LeaseHeartbeat(registry, MODEL, lineage_of(), lease_seconds=0.15).start()  # type: ignore[arg-type]
    registry.hold_lock(holder="model_deploy/thief", run_id="thief", expires_in=600)  # expired and taken meanwhile
    time.sleep(0.2)

    with pytest.raises(LeaseLost):
        beat.stop()


def test_an_unreachable_registry_is_tried_again_at_the_next_beat(registry: FakeRegistry) -> None:
    registry.hold_lock(holder=f"model_deploy/{RUN}", run_id=RUN, expires_in=60)
    registry.fail["renew_lock"] = RegistryUnavailable("down for a moment")
    beat = LeaseHeartbeat(registry, MODEL, lineage_of(), lease_seconds=60).start()  # type: ignore[arg-type]
    beat.stop()  # no LeaseLost: a lease is lost only when the registry says so

    assert beat.lost is None


def test_every_step_of_a_run_holding_the_lease_renews_it_while_it_runs(registry: FakeRegistry) -> None:
    from tfdeploy.operators.register import RegisterModelOperator

    registry.hold_lock(holder=f"model_deploy/{RUN}", run_id=RUN, expires_in=60)
    op = inject(RegisterModelOperator(task_id="register", model_name=MODEL), registry=registry)
    context = make_context("register", {"acquire_lock": LEASE})

    op.pre_execute(context)
    op.post_execute(context)

    [renewal] = registry.writes_of("renew_lock")
    assert renewal.args["ttl_seconds"] == 900 and renewal.args["context"]["runId"] == RUN


def test_the_gate_and_the_release_do_not_renew(registry: FakeRegistry) -> None:
    from tfdeploy.operators.gate import ReleaseGateOperator

    registry.hold_lock(holder="model_deploy/other", run_id="other", expires_in=600)  # no longer this run's
    for op in (ReleaseGateOperator(task_id="release_gate", model_name=MODEL), releaser(registry)):
        inject(op, registry=registry).pre_execute(make_context(op.task_id, {"acquire_lock": LEASE}))
    assert registry.writes_of("renew_lock") == []


def test_a_step_of_a_run_without_the_lease_does_not_renew(registry: FakeRegistry) -> None:
    from tfdeploy.operators.register import RegisterModelOperator

    op = inject(RegisterModelOperator(task_id="register", model_name=MODEL), registry=registry)
    op.pre_execute(make_context("register"))
    op.post_execute(make_context("register"))
    assert registry.writes_of("renew_lock") == []


def test_a_rerun_after_the_run_released_its_lease_takes_it_again_when_free(registry: FakeRegistry) -> None:
    """A finished run's tasks cleared from the UI: the lease was released at the end; the rerun's first step takes
    it again (nobody else holds it) instead of failing or going on without it."""
    beat = LeaseHeartbeat(registry, MODEL, lineage_of(), lease_seconds=60).start()  # type: ignore[arg-type]
    beat.stop()

    assert registry.locks[MODEL]["run_id"] == RUN
    assert [w.method for w in registry.writes if w.method in ("renew_lock", "acquire_lock")] == ["acquire_lock"]
