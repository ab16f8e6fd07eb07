"""Human approval before any production traffic moves to the candidate: Airflow 3's human-in-the-loop
``ApprovalOperator`` (standard provider), after smoke and before the first gray-release step.

Required when the run's ``require_approval`` Param is on or the registry requires it for the model; otherwise
the step succeeds at once. Approve (the Airflow UI's "Required actions", or the REST API's
``PATCH .../hitlDetails``) goes on; Reject, or no answer within ``response_timeout`` (which takes the default,
Reject), fails the step so the rollback runs. Who decided and why goes to the registry's history.
"""

from __future__ import annotations

from datetime import timedelta
from functools import cached_property
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator

from tfdeploy.core.errors import NotFound
from tfdeploy.core.names import validate_model_name
from tfdeploy.hooks.registry import RegistryHook
from tfdeploy.lineage import run_context
from tfdeploy.operators.base import LOCK_TASK_ID
from tfdeploy.operators.lease import run_lease

SUBJECT = "Release {{ params.model_name }} v{{ ti.xcom_pull(task_ids='export')['version'] }} to production?"
BODY = """\
The candidate passed validation and the smoke test and serves in the canary pool; no production traffic
reaches it yet. **Approve** starts the release ({{ params.strategy }}); **Reject** rolls it back.

- model: `{{ params.model_name }}`, candidate v{{ ti.xcom_pull(task_ids='export')['version'] }}
- smoke: {{ ti.xcom_pull(task_ids='smoke') }}
- registry: /registry/ (the model's validation report and history)
"""


class ReleaseApprovalOperator(ApprovalOperator):
    """Waits for a human to approve the release when one is required.

    :param model_name: the model (templated).
    :param require_approval: the run's Param (templated; a bool after rendering); the registry's per-model
        ``requireApproval`` setting requires it too.
    :param registry_conn_id: the registry's Connection.
    :param response_timeout: how long to wait for an answer; no answer rejects.
    :param timeout_seconds: the same in seconds, templated (the run's Param); overrides ``response_timeout``.
    """

    template_fields = (*ApprovalOperator.template_fields, "model_name", "require_approval", "timeout_seconds")
    # never retried: a retry would ask again after a human rejected (or the time ran out)
    retriable = False

    def __init__(
        self,
        *,
        model_name: str,
        require_approval: bool | str = False,
        registry_conn_id: str = RegistryHook.default_conn_name,
        response_timeout: timedelta = timedelta(hours=1),
        timeout_seconds: int | str | None = None,
        **kwargs: Any,
    ) -> None:
        if response_timeout <= timedelta(0):
            raise ValueError(f"response_timeout must be positive, got {response_timeout}")
        kwargs.setdefault("subject", SUBJECT)
        kwargs.setdefault("body", BODY)
        super().__init__(
            fail_on_reject=True,  # a rejection is a failed release: the rollback runs on it
            defaults="Reject",  # no answer in time rejects
            response_timeout=response_timeout,
            **kwargs,
        )
        self.retries = 0  # over the DAG's default_args too: see ``retriable``
        self.model_name = model_name
        self.require_approval = require_approval
        self.timeout_seconds = timeout_seconds
        self.registry_conn_id = registry_conn_id

    @cached_property
    def registry(self) -> RegistryHook:
        return RegistryHook(self.registry_conn_id)

    def _required(self, model: str) -> str | None:
        """Why approval is required (None: it is not)."""
        if self.require_approval is True:
            return "the run's require_approval Param"
        try:
            if self.registry.get_settings(model).require_approval:
                return "the registry's setting for the model"
        except NotFound:
            pass
        return None

    def execute(self, context: Any) -> Any:
        model = validate_model_name(self.model_name)
        why = self._required(model)
        version = int(context["ti"].xcom_pull(task_ids="export")["version"])
        if why is None:
            self.log.info("no approval required for %s v%s: going on", model, version)
            return {"approved": True, "by": None, "required": False}
        if self.timeout_seconds is not None:
            if isinstance(self.timeout_seconds, bool) or not isinstance(self.timeout_seconds, int | float):
                raise TypeError(f"timeout_seconds must be a number of seconds, got {self.timeout_seconds!r}")
            if self.timeout_seconds <= 0:
                raise ValueError(f"timeout_seconds must be positive, got {self.timeout_seconds}")
            self.response_timeout = timedelta(seconds=self.timeout_seconds)
        lease = run_lease(context, LOCK_TASK_ID)
        if lease:  # the lease outlasts the wait: nobody else may deploy while a person decides
            waiting = self.response_timeout.total_seconds() if self.response_timeout else 0.0
            self.registry.renew_lock(
                model, ttl_seconds=min(86400.0, waiting + float(lease["lease_seconds"])), context=run_context(context)
            )
        self.registry.record_serving_event(
            model,
            "approval",
            version=version,
            reason=f"waiting for approval ({why})",
            details={
                "state": "requested",
                "timeoutSeconds": self.response_timeout.total_seconds() if self.response_timeout else None,
            },
            context=run_context(context),
        )
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        model = validate_model_name(self.model_name)
        version = int(context["ti"].xcom_pull(task_ids="export")["version"])
        chosen = (event.get("chosen_options") or ["Reject"])[0]
        user = event.get("responded_by_user") or {}
        who = user.get("name") or user.get("id") or "nobody (timed out)"
        decided = "approved" if chosen == self.APPROVE else "rejected"
        reason = f"{decided} by {who}" if event.get("responded_by_user") else "timed out: rejected"
        self.registry.record_serving_event(
            model,
            "approval",
            version=version,
            reason=reason,
            details={"state": chosen.lower(), "by": who, "at": str(event.get("responded_at") or "")},
            context=run_context(context),
        )
        self.log.info("%s v%s: %s", model, version, reason)
        return super().execute_complete(context, event)
