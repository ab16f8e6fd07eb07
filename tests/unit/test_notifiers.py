"""Alert notifiers: the set every alert goes to (``alert_notifiers``), the log line and `alerts.log`
(``DeploymentAlertNotifier``), and a mail through Airflow's SMTP provider (``MailAlertNotifier``) that never
fails the task that alerts. The mail is sent for real to a local SMTP server (aiosmtpd) on 127.0.0.1."""

from __future__ import annotations

import email
import email.policy
import json
import logging
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from tfdeploy.notifiers import DeploymentAlertNotifier, MailAlertNotifier, alert_notifiers

SUBJECT = "[tfdeploy] demo_regressor healthy -> failing"
MESSAGE = "demo_regressor v2 health healthy -> failing: served outputs differ by 8.5 (> 0.0001) <b>&</b>"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def smtp_connection(monkeypatch: pytest.MonkeyPatch, port: int, **extra: Any) -> None:
    """``smtp_default`` as stack.py's ``airflow_env`` writes it, pointing at ``port``."""
    conn = {
        "conn_type": "smtp",
        "host": "127.0.0.1",
        "port": port,
        "extra": {
            "disable_tls": True,
            "disable_ssl": True,
            "from_email": "tfdeploy@localhost",
            "timeout": 10,
            "retry_limit": 1,
        }
        | extra,
    }
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps(conn))


def context() -> dict[str, Any]:
    return {
        "ti": SimpleNamespace(task_id="check"),
        "dag_run": SimpleNamespace(dag_id="model_health", run_id="scheduled__2026-01-01T00:05:00"),
    }


@pytest.fixture
def state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The state directory (alerts.log) in the test's temporary directory, not the test stack's."""
    monkeypatch.setenv("TFDEPLOY_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


# --------------------------------------------------------------------------- alert_notifiers


def test_every_alert_goes_to_the_log_and_a_mail(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALERT_EMAIL_TO", " oncall@example.org, ml@example.org ,")
    monkeypatch.setenv("ALERT_EMAIL_FROM", "alerts@example.org")

    log, mail = alert_notifiers(SUBJECT, MESSAGE)

    assert type(log) is DeploymentAlertNotifier and log.message == MESSAGE
    assert type(mail) is MailAlertNotifier
    assert mail.to == ["oncall@example.org", "ml@example.org"]
    assert (mail.from_email, mail.subject, mail.smtp_conn_id) == ("alerts@example.org", SUBJECT, "smtp_default")
    # the message is HTML-escaped into the mail's body, as it is
    assert mail.html_content == (
        "<pre>demo_regressor v2 health healthy -&gt; failing: served outputs differ by 8.5 (&gt; 0.0001) "
        "&lt;b&gt;&amp;&lt;/b&gt;</pre>"
    )


def test_the_default_recipient(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALERT_EMAIL_TO", raising=False)
    monkeypatch.delenv("ALERT_EMAIL_FROM", raising=False)

    _, mail = alert_notifiers(SUBJECT, MESSAGE)

    assert (mail.to, mail.from_email) == (["ml-platform@localhost"], "tfdeploy@localhost")


@pytest.mark.parametrize("to", ["", "   "])
def test_an_empty_alert_email_to_sends_no_mail(monkeypatch: pytest.MonkeyPatch, to: str) -> None:
    monkeypatch.setenv("ALERT_EMAIL_TO", to)

    notifiers = alert_notifiers(SUBJECT, MESSAGE)

    assert [type(n) for n in notifiers] == [DeploymentAlertNotifier]


# --------------------------------------------------------------------------- DeploymentAlertNotifier


def test_the_alert_is_logged_and_appended_to_alerts_log(state_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="tfdeploy.notifiers"):
        DeploymentAlertNotifier("first").notify(context())
        DeploymentAlertNotifier(MESSAGE).notify({})

    first, second = (json.loads(line) for line in (state_dir / "alerts.log").read_text().splitlines())
    assert {k: first[k] for k in ("dag_id", "run_id", "task_id", "message")} == {
        "dag_id": "model_health",
        "run_id": "scheduled__2026-01-01T00:05:00",
        "task_id": "check",
        "message": "first",
    }
    assert first["at"].endswith("Z")
    assert (second["dag_id"], second["task_id"], second["message"]) == ("", "", MESSAGE)
    assert [r.getMessage().startswith("DEPLOYMENT ALERT: ") for r in caplog.records] == [True, True]


# --------------------------------------------------------------------------- MailAlertNotifier


def test_a_mail_that_cannot_be_sent_is_logged_not_raised(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    smtp_connection(monkeypatch, free_port())  # nothing listens there
    mail = MailAlertNotifier(to=["oncall@example.org"], subject=SUBJECT, html_content="<pre>x</pre>")

    with caplog.at_level(logging.ERROR, logger="tfdeploy.notifiers"):
        mail.notify(context())

    [record] = caplog.records
    assert record.getMessage().startswith("alert mail to ['oncall@example.org'] not sent (")
    assert record.getMessage().endswith(SUBJECT)


def test_a_missing_smtp_connection_is_logged_not_raised(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    mail = MailAlertNotifier(to="oncall@example.org", subject=SUBJECT, html_content="x", smtp_conn_id="no_such_smtp")

    with caplog.at_level(logging.ERROR, logger="tfdeploy.notifiers"):
        mail.notify(context())

    assert "not sent" in caplog.records[0].getMessage()


class Mailbox:
    """aiosmtpd's handler: keeps every envelope it accepts."""

    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"


@pytest.fixture
def mailbox() -> Any:
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield box, controller.port
    finally:
        controller.stop()


def test_the_alert_mail_arrives(mailbox: tuple[Mailbox, int], monkeypatch: pytest.MonkeyPatch, state_dir: Path) -> None:
    box, port = mailbox
    smtp_connection(monkeypatch, port)
    monkeypatch.setenv("ALERT_EMAIL_TO", "oncall@example.org,ml@example.org")
    monkeypatch.setenv("ALERT_EMAIL_FROM", "tfdeploy@example.org")

    for notifier in alert_notifiers(SUBJECT, MESSAGE):
        notifier.notify(context())

    [envelope] = box.envelopes
    assert envelope.mail_from == "tfdeploy@example.org"
    assert sorted(envelope.rcpt_tos) == ["ml@example.org", "oncall@example.org"]
    mail = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
    assert mail["Subject"] == SUBJECT
    assert mail["To"] == "oncall@example.org, ml@example.org"
    html = next(part for part in mail.walk() if part.get_content_type() == "text/html").get_content()
    assert "healthy -&gt; failing: served outputs differ by 8.5" in html
    assert json.loads((state_dir / "alerts.log").read_text())["message"] == MESSAGE  # the log notifier too
