"""Alerts for failed releases, as Airflow notifiers (pass SmtpNotifier, Slack... to the DAG as well)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

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
