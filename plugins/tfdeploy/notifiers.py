"""Alerts (failed releases, health changes), as Airflow notifiers: a log line and `alerts.log`
(:class:`DeploymentAlertNotifier`) and a mail through Airflow's SMTP provider (:class:`MailAlertNotifier`,
its ``SmtpNotifier``). :func:`alert_notifiers` is the set every alert goes to."""

from __future__ import annotations

import html
import json
import logging
import time
from typing import Any

from airflow.providers.smtp.notifications.smtp import SmtpNotifier
from airflow.sdk import BaseNotifier

from tfdeploy.settings import get_settings

log = logging.getLogger(__name__)


class DeploymentAlertNotifier(BaseNotifier):
    """Logs the alert at ERROR and appends it as a JSON line to `$TFDEPLOY_STATE_DIR/alerts.log`, the local
    stack's alert sink (production deployments add their paging or e-mail notifier next to it)."""

    template_fields = ("message",)

    def __init__(self, message: str = "") -> None:
        super().__init__()
        self.message = message

    def notify(self, context: Any) -> None:
        ti = context.get("ti")
        dag_run = context.get("dag_run")
        record = {
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "dag_id": getattr(dag_run, "dag_id", ""),
            "run_id": getattr(dag_run, "run_id", ""),
            "task_id": getattr(ti, "task_id", ""),
            "message": self.message,
        }
        log.error("DEPLOYMENT ALERT: %s", json.dumps(record))
        path = get_settings().state_dir / "alerts.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")


class MailAlertNotifier(SmtpNotifier):
    """Airflow's ``SmtpNotifier``, except that a mail that cannot be sent (no SMTP server answering) is logged
    and does not fail the task that alerts: the alert is still in the log, `alerts.log` and the registry."""

    def notify(self, context: Any) -> None:
        try:
            super().notify(context)
        except Exception as exc:  # noqa: BLE001 - smtplib, socket and provider errors alike
            log.error("alert mail to %s not sent (%s: %s): %s", self.to, type(exc).__name__, exc, self.subject)


def alert_notifiers(subject: str, message: str) -> list[BaseNotifier]:
    """The notifiers an alert goes to: the log and `alerts.log`, and a mail to ALERT_EMAIL_TO (if set)."""
    s = get_settings()
    notifiers: list[BaseNotifier] = [DeploymentAlertNotifier(message)]
    if s.alert_email_to:
        notifiers.append(
            MailAlertNotifier(
                to=[a.strip() for a in s.alert_email_to.split(",") if a.strip()],
                from_email=s.alert_email_from,
                subject=subject,
                html_content=f"<pre>{html.escape(message)}</pre>",
                smtp_conn_id="smtp_default",
            )
        )
    return notifiers
