"""ReleaseApprovalOperator: goes on at once when no approval is required; otherwise records the request in the
registry's history and waits for a person (Airflow's human-in-the-loop, the standard provider's
ApprovalOperator); the answer (approve, reject, or none in time: reject) is recorded with who gave it, and
anything but Approve fails the step so the rollback runs. Fakes only: the HITL request is recorded, not sent."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from airflow.providers.standard.exceptions import HITLRejectException
from airflow.providers.standard.operators import hitl as hitl_module
from airflow.sdk import DAG
from airflow.sdk.exceptions import TaskAwaitingInput

from tests.unit.operators.conftest import MODEL, FakeRegistry, exported, make_context
from tfdeploy.core.errors import InvalidModelName, RegistryUnavailable
from tfdeploy.hooks.registry import ModelSettings
from tfdeploy.operators.approval import BODY, SUBJECT, ReleaseApprovalOperator

TI_ID = uuid.UUID("0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b")
AT = dt.datetime(2026, 5, 4, 10, 20, 30, tzinfo=dt.UTC)
BOB = {"id": "7", "name": "bob"}


@pytest.fixture
def hitl(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """``upsert_hitl_detail`` (which writes the request through the task's supervisor) recorded instead."""
    requests: list[dict[str, Any]] = []
    monkeypatch.setattr(hitl_module, "upsert_hitl_detail", lambda **kwargs: requests.append(kwargs))
    return requests


def approval(registry: FakeRegistry, **kwargs: Any) -> ReleaseApprovalOperator:
    op = ReleaseApprovalOperator(task_id="approval", model_name=MODEL, **kwargs)
    op.__dict__["registry"] = registry
    return op


def context(version: int = 3) -> dict[str, Any]:
    ctx = make_context("approval", {"export": exported(version), "smoke": {"p99_ms": 3.0}})
    ctx["task_instance"] = type("TI", (), {"id": TI_ID})()
    return ctx


def candidate(registry: FakeRegistry, *, require: bool = False) -> None:
    registry.seed(2, "production")
    registry.seed(3, "canary")
    registry.settings[MODEL] = ModelSettings(require_approval=require)


def approvals(registry: FakeRegistry) -> list[tuple[int | None, str, dict]]:
    return [(version, reason, details) for kind, _, version, reason, details in registry.events if kind == "approval"]


def answer(option: str | None, user: dict | None = BOB, *, timedout: bool = False) -> dict[str, Any]:
    """The event the task resumes with (as Airflow 3.3's ``HITLDetail.as_resume_event_payload``)."""
    return {
        "chosen_options": [option] if option else [],
        "params_input": {},
        "responded_at": AT,
        "responded_by_user": user,
        "timedout": timedout,
    }


# --------------------------------------------------------------------------- construction


def test_a_rejection_or_no_answer_fails_and_nothing_is_retried() -> None:
    with DAG("d", schedule=None, default_args={"owner": "ml-platform", "retries": 3}):
        op = ReleaseApprovalOperator(task_id="approval", model_name="{{ params.model_name }}")

    assert op.retries == 0 and op.retriable is False  # a retry would ask again after a human said no
    assert op.fail_on_reject is True
    assert op.options == ["Approve", "Reject"] and op.defaults == ["Reject"] and op.multiple is False
    assert op.response_timeout == dt.timedelta(hours=1)
    assert (op.subject, op.body) == (SUBJECT, BODY)
    assert (op.require_approval, op.timeout_seconds) == (False, None)
    assert {"subject", "body", "model_name", "require_approval", "timeout_seconds"} <= set(op.template_fields)


def test_a_subject_and_body_of_its_own() -> None:
    op = ReleaseApprovalOperator(task_id="approval", model_name=MODEL, subject="Ship it?", body="see the registry")
    assert (op.subject, op.body) == ("Ship it?", "see the registry")


@pytest.mark.parametrize("timeout", [dt.timedelta(0), dt.timedelta(seconds=-1)])
def test_the_response_timeout_must_be_positive(timeout: dt.timedelta) -> None:
    with pytest.raises(ValueError, match="response_timeout must be positive"):
        ReleaseApprovalOperator(task_id="approval", model_name=MODEL, response_timeout=timeout)


def test_the_subject_and_body_render_with_the_candidate() -> None:
    op = ReleaseApprovalOperator(task_id="approval", model_name=MODEL)
    ctx = context(7) | {"params": {"model_name": MODEL, "strategy": "canary"}}

    assert op.render_template(op.subject, ctx) == f"Release {MODEL} v7 to production?"
    body = op.render_template(op.body, ctx)
    assert "candidate v7" in body and "(canary)" in body and "{'p99_ms': 3.0}" in body


# --------------------------------------------------------------------------- no approval required


@pytest.mark.parametrize("require", [False, None, "True"])  # rendered natively: only the bool True requires it
def test_no_approval_required_goes_on_at_once(registry: FakeRegistry, hitl: list, require: Any) -> None:
    candidate(registry)

    result = approval(registry, require_approval=require).execute(context())

    assert result == {"approved": True, "by": None, "required": False}
    assert hitl == [] and registry.events == [] and registry.writes == []
    assert ("get_settings", MODEL) in registry.reads


def test_a_model_the_registry_does_not_know_requires_none(registry: FakeRegistry, hitl: list) -> None:
    assert approval(registry).execute(context())["required"] is False
    assert hitl == []


def test_the_timeout_is_not_looked_at_when_no_approval_is_required(registry: FakeRegistry, hitl: list) -> None:
    candidate(registry)
    assert approval(registry, timeout_seconds="not a number").execute(context())["required"] is False


def test_a_registry_that_cannot_answer_fails_the_step(registry: FakeRegistry, hitl: list) -> None:
    """Not known whether a person must approve: the release does not go on (the rollback runs)."""
    candidate(registry)
    registry.fail["get_settings"] = RegistryUnavailable("registry down")
    with pytest.raises(RegistryUnavailable):
        approval(registry).execute(context())
    assert hitl == []


def test_a_bad_model_name_is_refused(registry: FakeRegistry, hitl: list) -> None:
    op = approval(registry, require_approval=True)
    op.model_name = "../x"
    with pytest.raises(InvalidModelName):
        op.execute(context())
    assert hitl == [] and registry.events == []


# --------------------------------------------------------------------------- waiting for a person


def test_the_run_s_param_requires_approval(registry: FakeRegistry, hitl: list) -> None:
    candidate(registry)

    with pytest.raises(TaskAwaitingInput) as parked:
        approval(registry, require_approval=True).execute(context())

    assert parked.value.method_name == "execute_complete"
    assert parked.value.timeout == dt.timedelta(hours=1)
    [request] = hitl
    assert request["ti_id"] == TI_ID
    assert request["options"] == ["Approve", "Reject"] and request["defaults"] == ["Reject"]
    assert request["multiple"] is False
    assert (request["subject"], request["body"]) == (SUBJECT, BODY)  # rendered by Airflow before execute
    assert approvals(registry) == [
        (3, "waiting for approval (the run's require_approval Param)", {"state": "requested", "timeoutSeconds": 3600.0})
    ]
    # the Param alone decides: the registry's setting is not asked
    assert ("get_settings", MODEL) not in registry.reads


def test_the_registry_s_setting_requires_approval(registry: FakeRegistry, hitl: list) -> None:
    candidate(registry, require=True)

    with pytest.raises(TaskAwaitingInput):
        approval(registry, require_approval=False).execute(context())

    assert len(hitl) == 1
    [(version, reason, details)] = approvals(registry)
    assert (version, reason) == (3, "waiting for approval (the registry's setting for the model)")
    assert details["state"] == "requested"


def test_the_request_is_recorded_with_the_run_s_lineage(registry: FakeRegistry, hitl: list, lineage: Any) -> None:
    candidate(registry)
    with pytest.raises(TaskAwaitingInput):
        approval(registry, require_approval=True).execute(context())
    assert [c["ti"].task_id for c in lineage.calls] == ["approval"]


@pytest.mark.parametrize("seconds", [15, 2.5])
def test_timeout_seconds_overrides_the_response_timeout(registry: FakeRegistry, hitl: list, seconds: float) -> None:
    candidate(registry)
    op = approval(registry, require_approval=True, timeout_seconds=seconds, response_timeout=dt.timedelta(days=1))

    with pytest.raises(TaskAwaitingInput) as parked:
        op.execute(context())

    assert parked.value.timeout == op.response_timeout == dt.timedelta(seconds=seconds)
    assert approvals(registry)[0][2]["timeoutSeconds"] == seconds


@pytest.mark.parametrize(
    ("seconds", "error"),
    [("15", TypeError), (True, TypeError), ([15], TypeError), (0, ValueError), (-5, ValueError)],
)
def test_a_bad_timeout_is_refused_before_anything_is_asked(
    registry: FakeRegistry, hitl: list, seconds: Any, error: type[Exception]
) -> None:
    candidate(registry)
    with pytest.raises(error, match="timeout_seconds"):
        approval(registry, require_approval=True, timeout_seconds=seconds).execute(context())
    assert hitl == [] and registry.events == []


def test_a_registry_that_cannot_record_the_request_fails_before_asking(registry: FakeRegistry, hitl: list) -> None:
    candidate(registry)
    registry.fail["record_serving_event"] = RegistryUnavailable("registry down")
    with pytest.raises(RegistryUnavailable):
        approval(registry, require_approval=True).execute(context())
    assert hitl == []


# --------------------------------------------------------------------------- the answer


def test_approve_goes_on_and_is_recorded_with_who(registry: FakeRegistry) -> None:
    candidate(registry)

    result = approval(registry, require_approval=True).execute_complete(context(), answer("Approve"))

    assert result["chosen_options"] == ["Approve"] and result["responded_by_user"] == BOB
    [(version, reason, details)] = approvals(registry)
    assert (version, reason) == (3, "approved by bob")
    assert details == {"state": "approve", "by": "bob", "at": str(AT)}


def test_the_decider_is_named_in_the_history_event_not_claimed_as_its_actor(
    registry: FakeRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    contexts: list[dict] = []
    details: list[dict] = []

    def record(*a, **kwargs) -> None:
        contexts.append(kwargs["context"])
        details.append(kwargs["details"])

    monkeypatch.setattr(registry, "record_serving_event", record)

    approval(registry).execute_complete(context(), answer("Approve"))

    [ctx] = contexts
    # who acted is the registry's to decide (the run's triggering user); the decider is in the event's details
    assert "actor" not in ctx and ctx["dagId"] == "model_deploy" and ctx["taskId"] == "approval"
    assert details[0]["by"] == "bob"


def test_a_user_without_a_name_is_named_by_id(registry: FakeRegistry) -> None:
    approval(registry).execute_complete(context(), answer("Approve", {"id": "42", "name": ""}))
    assert approvals(registry)[0][1:] == ("approved by 42", {"state": "approve", "by": "42", "at": str(AT)})


def test_reject_fails_the_step_and_is_recorded_with_who(registry: FakeRegistry) -> None:
    candidate(registry)

    with pytest.raises(HITLRejectException):
        approval(registry).execute_complete(context(), answer("Reject"))

    [(version, reason, details)] = approvals(registry)
    assert (version, reason) == (3, "rejected by bob")
    assert details == {"state": "reject", "by": "bob", "at": str(AT)}


def test_no_answer_in_time_rejects(registry: FakeRegistry) -> None:
    """Airflow 3.3's timeout sweep resumes the task with the defaults (Reject) and nobody as the user."""
    candidate(registry)

    with pytest.raises(HITLRejectException):
        approval(registry).execute_complete(context(), answer("Reject", None, timedout=True))

    [(version, reason, details)] = approvals(registry)
    assert (version, reason) == (3, "timed out: rejected")
    assert details == {"state": "reject", "by": "nobody (timed out)", "at": str(AT)}


def test_an_answer_without_options_is_recorded_as_a_rejection_then_refused(registry: FakeRegistry) -> None:
    """No option chosen at all (not something the UI sends): recorded as a rejection, never as an approval; the
    provider then fails the step (it reads the first option chosen)."""
    with pytest.raises(IndexError):
        approval(registry).execute_complete(context(), answer(None))
    assert approvals(registry)[0][2]["state"] == "reject"


def test_an_option_that_does_not_exist_is_refused(registry: FakeRegistry) -> None:
    with pytest.raises(ValueError, match="not in"):
        approval(registry).execute_complete(context(), answer("Maybe"))
