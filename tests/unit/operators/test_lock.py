"""DeploymentLockSensor and ReleaseLockOperator against a fake registry."""

from __future__ import annotations

import pytest

from tests.unit.operators.conftest import MODEL, FakeRegistry, Lineage, inject, make_context
from tfdeploy.core.errors import Conflict, LockHeld
from tfdeploy.operators.lock import DeploymentLockSensor, ReleaseLockOperator

RUN = "manual__2026-01-01T00:00:00"


def sensor(registry: FakeRegistry, **kwargs) -> DeploymentLockSensor:
    return inject(DeploymentLockSensor(task_id="acquire_lock", model_name=MODEL, **kwargs), registry=registry)


def releaser(registry: FakeRegistry) -> ReleaseLockOperator:
    return inject(ReleaseLockOperator(task_id="release_lock", model_name=MODEL), registry=registry)


def test_defaults_reschedule_mode_and_refuse_bad_lease() -> None:
    op = DeploymentLockSensor(task_id="acquire_lock", model_name=MODEL)
    assert op.mode == "reschedule"
    with pytest.raises(ValueError, match="lease_seconds"):
        DeploymentLockSensor(task_id="acquire_lock", model_name=MODEL, lease_seconds=0)


def test_free_lock_is_acquired_with_lineage_looked_up_once(registry: FakeRegistry, lineage: Lineage) -> None:
    result = sensor(registry, lease_seconds=120).poke(make_context("acquire_lock"))

    assert result.is_done
    assert result.xcom_value["token"] == registry.locks[MODEL]["token"]
    assert result.xcom_value["expires_at"] == registry.locks[MODEL]["expires_at"].isoformat()
    [write] = registry.writes_of("acquire_lock")
    assert write.args["holder"] == f"model_deploy/{RUN}"
    assert write.args["context"]["runId"] == RUN
    assert len(lineage.calls) == 1


def test_lock_of_a_known_model_nobody_holds(registry: FakeRegistry) -> None:
    registry.seed(1, "production")
    assert sensor(registry).poke(make_context("acquire_lock")).is_done


def test_held_lock_waits_without_looking_up_lineage(registry: FakeRegistry, lineage: Lineage) -> None:
    registry.hold_lock(holder="model_deploy/other", run_id="other", expires_in=600)

    result = sensor(registry).poke(make_context("acquire_lock"))

    assert not result.is_done
    assert lineage.calls == []
    assert registry.writes == []
    assert registry.locks[MODEL]["run_id"] == "other"


def test_expired_lock_of_another_run_is_taken(registry: FakeRegistry) -> None:
    old = registry.hold_lock(holder="model_deploy/dead", run_id="dead", expires_in=-1)

    result = sensor(registry).poke(make_context("acquire_lock"))

    assert result.is_done
    assert registry.locks[MODEL]["run_id"] == RUN
    assert result.xcom_value["token"] != old


def test_lock_race_lost_is_not_done(registry: FakeRegistry, lineage: Lineage) -> None:
    registry.fail["acquire_lock"] = LockHeld("taken between the read and the write")

    result = sensor(registry).poke(make_context("acquire_lock"))

    assert not result.is_done
    assert MODEL not in registry.locks


def test_rerun_of_the_same_run_keeps_its_lease(registry: FakeRegistry) -> None:
    op = sensor(registry)
    first = op.poke(make_context("acquire_lock"))
    second = sensor(registry).poke(make_context("acquire_lock"))

    assert first.is_done and second.is_done
    assert first.xcom_value["token"] == second.xcom_value["token"]
    assert [w.args["extended"] for w in registry.writes_of("acquire_lock")] == [False, True]


def test_release_with_lease(registry: FakeRegistry) -> None:
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
        releaser(registry).execute(make_context("release_lock", {"acquire_lock": {"token": "stale"}}))
    assert registry.locks[MODEL]["run_id"] == "other"


def test_release_lock_runs_whatever_happened() -> None:
    assert ReleaseLockOperator(task_id="release_lock", model_name=MODEL).trigger_rule == "all_done"
