"""Outbox and delivery against a real SMTP server (aiosmtpd on loopback)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import logging
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from shared.core import db, mail
from shared.core.settings import get_settings
from shared.tenancy.tenants import Tenant
from tests.conftest import ROOT, Host, free_port


@dataclass
class Received:
    peer: Any
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    message: EmailMessage


class Collector:
    """aiosmtpd handler: keeps accepted mail, or answers DATA with `reject_next` (once each) or `reject`."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.reject: str | None = None
        self.reject_next: list[str] = []
        self.delay_s = 0.0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.reject_next:
            return self.reject_next.pop(0)
        if self.reject:
            return self.reject
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.received.append(Received(session.peer, envelope.mail_from, list(envelope.rcpt_tos), envelope.content, message))
        return "250 OK"

    def to(self, address: str) -> list[Received]:
        return [r for r in self.received if address in r.rcpt_tos]


@dataclass
class Relay:
    port: int
    handler: Collector


@pytest.fixture(scope="module")
def relay_server() -> Iterator[Relay]:
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every command at INFO
    handler = Collector()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield Relay(port, handler)
    controller.stop()


@pytest.fixture
def relay(relay_server: Relay) -> Iterator[Relay]:
    relay_server.handler.reject = None
    relay_server.handler.reject_next = []
    relay_server.handler.delay_s = 0.0
    yield relay_server
    relay_server.handler.reject = None
    relay_server.handler.reject_next = []
    relay_server.handler.delay_s = 0.0


@pytest.fixture(scope="module")
def mail_host(relay_server: Relay) -> Iterator[Host]:
    """A devhost whose settings point at the test relay (the session host has no SMTP_HOST)."""
    h = Host(env={"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(relay_server.port), "SMTP_STARTTLS": "false"})
    yield h
    h.stop()


@pytest.fixture
def smtp_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """set(**settings): in-process settings for deliver_pending, restored afterwards."""

    def set_env(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name.upper(), value)
        get_settings.cache_clear()

    yield set_env
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.fixture
def use_relay(relay: Relay, smtp_env: Any) -> Relay:
    smtp_env(smtp_host="127.0.0.1", smtp_port=str(relay.port), smtp_starttls="false", smtp_username="")
    return relay


@pytest.fixture(autouse=True)
def _no_mail_left_behind(tenant: Tenant) -> Iterator[None]:
    """Give up this test's undelivered mail, so other tests' delivery runs do not send it."""
    yield
    with db.tenant_tx(tenant.id) as conn:
        conn.execute("update outbox set attempts = greatest(attempts, %s), body = '' where sent_at is null",
                     (mail.MAX_ATTEMPTS,))


def address() -> str:
    return f"m-{uuid.uuid4().hex[:12]}@example.test"


def put(tenant: Tenant, to: str, *, subject: str = "Hello", body: str = "Body\n", kind: str = "test") -> str:
    with db.tenant_tx(tenant.id) as conn:
        return mail.enqueue(conn, tenant_id=tenant.id, to=to, subject=subject, body=body, kind=kind)


def row(tenant: Tenant, mail_id: str) -> dict[str, Any]:
    with db.tenant_tx(tenant.id) as conn:
        found = conn.execute("select * from outbox where id = %s", (mail_id,)).fetchone()
    assert found is not None
    return found


def test_timer_delivers_utf8_mail_once_and_blanks_the_body(mail_host: Host, relay: Relay, tenant: Tenant) -> None:
    to = address()
    subject = "Willkommen bei Custos – Zoë’s Einladung"
    body = "Grüße!\n\nInvitation code: tok-ÄÖÜ-123\n"
    mail_id = put(tenant, to, subject=subject, body=body, kind="invitation")
    with httpx.Client(base_url=mail_host.url, timeout=30) as c:
        assert c.post("/admin/functions/deliver_mail").status_code == 202, mail_host.log()
        [got] = relay.handler.to(to)
        assert got.rcpt_tos == [to]
        assert got.mail_from == "no-reply@custos.invalid"
        assert got.message["To"] == to
        assert got.message["Subject"] == subject
        assert got.message["From"] == "Custos <no-reply@custos.invalid>"
        assert got.message["Message-ID"] == f"<{mail_id}@custos.invalid>"
        assert got.message["Date"]
        assert got.message.get_content_type() == "text/plain"
        assert got.message.get_content_charset() == "utf-8"
        assert got.message.get_content().replace("\r\n", "\n") == body  # CRLF on the wire
        sent = row(tenant, mail_id)
        assert sent["sent_at"] is not None and sent["body"] == "" and sent["attempts"] == 0
        assert c.post("/admin/functions/deliver_mail").status_code == 202
    assert len(relay.handler.to(to)) == 1
    assert row(tenant, mail_id)["sent_at"] == sent["sent_at"]
    with db.platform_tx() as conn:
        beat = conn.execute("select ok, detail from job_heartbeats where name = 'deliver_mail'").fetchone()
    assert beat is not None and "sent" in beat["detail"]


def test_one_connection_carries_the_batch(use_relay: Relay, tenant: Tenant) -> None:
    recipients = [address() for _ in range(3)]
    link = "http://localhost:3000/accept?token=inv." + "a" * 32 + "." + "b" * 120
    for to in recipients:
        put(tenant, to, body=f"Open {link}\n")
    report = mail.deliver_pending(tenant_ids=[tenant.id])
    assert report == mail.DeliveryReport(sent=3, failed=0, skipped=0)
    got = [r for to in recipients for r in use_relay.handler.to(to)]
    assert len(got) == 3 and len({r.peer for r in got}) == 1
    # an ASCII body travels unencoded, long lines unbroken
    assert got[0].message["Content-Transfer-Encoding"] == "7bit" and link.encode() in got[0].raw


def test_rejected_mail_is_retried_after_backoff(use_relay: Relay, tenant: Tenant) -> None:
    to = address()
    mail_id = put(tenant, to, body="code 123\n")
    use_relay.handler.reject = "550 5.7.1 Not today"
    assert mail.deliver_pending(tenant_ids=[tenant.id]) == mail.DeliveryReport(sent=0, failed=1, skipped=0)
    failed = row(tenant, mail_id)
    assert failed["sent_at"] is None and failed["attempts"] == 1 and failed["body"] == "code 123\n"
    assert failed["last_error"] == "SMTPDataError 550 5.7.1 Not today"
    use_relay.handler.reject = None
    # the first retry waits BACKOFF * 2**1 = 2 minutes after the failed attempt
    assert mail.deliver_pending(tenant_ids=[tenant.id]).sent == 0
    early = failed["last_attempt_at"] + timedelta(minutes=1, seconds=50)
    assert mail.deliver_pending(tenant_ids=[tenant.id], now=early) == mail.DeliveryReport()
    assert use_relay.handler.to(to) == []
    later = failed["last_attempt_at"] + timedelta(minutes=2, seconds=1)
    assert mail.deliver_pending(tenant_ids=[tenant.id], now=later) == mail.DeliveryReport(sent=1)
    assert len(use_relay.handler.to(to)) == 1
    done = row(tenant, mail_id)
    assert done["sent_at"] == later and done["body"] == "" and done["attempts"] == 1


def test_mail_is_given_up_after_max_attempts_and_its_body_blanked(use_relay: Relay, tenant: Tenant) -> None:
    mail_id = put(tenant, address(), body="secret token\n")
    with db.tenant_tx(tenant.id) as conn:
        conn.execute("update outbox set attempts = %s where id = %s", (mail.MAX_ATTEMPTS - 1, mail_id))
    use_relay.handler.reject = "554 5.0.0 Never"
    assert mail.deliver_pending(tenant_ids=[tenant.id]).failed == 1
    dead = row(tenant, mail_id)
    assert dead["attempts"] == mail.MAX_ATTEMPTS and dead["body"] == "" and dead["sent_at"] is None
    use_relay.handler.reject = None
    far = dead["last_attempt_at"] + timedelta(days=30)
    assert mail.deliver_pending(tenant_ids=[tenant.id], now=far) == mail.DeliveryReport()


def test_a_relay_closing_the_session_fails_one_mail_and_the_next_reconnects(use_relay: Relay, tenant: Tenant) -> None:
    first, second = address(), address()
    first_id = put(tenant, first)
    put(tenant, second)
    use_relay.handler.reject_next = ["421 4.3.2 Shutting down"]
    assert mail.deliver_pending(tenant_ids=[tenant.id]) == mail.DeliveryReport(sent=1, failed=1)
    assert use_relay.handler.to(first) == [] and len(use_relay.handler.to(second)) == 1
    assert row(tenant, first_id)["last_error"] == "SMTPDataError 421 4.3.2 Shutting down"


def test_malformed_smtp_from_sends_nothing(use_relay: Relay, smtp_env: Any, tenant: Tenant) -> None:
    smtp_env(smtp_from="Custos")
    mail_id = put(tenant, address())
    report = mail.deliver_pending(tenant_ids=[tenant.id])
    assert report == mail.DeliveryReport(skipped=1, error="SMTP_FROM is not a mail address")
    assert row(tenant, mail_id)["attempts"] == 0


def test_two_workers_never_send_the_same_mail(use_relay: Relay, tenant: Tenant) -> None:
    recipients = [address() for _ in range(8)]
    for to in recipients:
        put(tenant, to)
    use_relay.handler.delay_s = 0.05
    reports: list[mail.DeliveryReport] = []
    workers = [threading.Thread(target=lambda: reports.append(mail.deliver_pending(tenant_ids=[tenant.id])))
               for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=30)
    assert sum(r.sent for r in reports) == 8 and all(r.failed == 0 for r in reports)
    assert all(len(use_relay.handler.to(to)) == 1 for to in recipients)


def test_unreachable_relay_leaves_mail_untouched(smtp_env: Any, tenant: Tenant) -> None:
    smtp_env(smtp_host="127.0.0.1", smtp_port=str(free_port()), smtp_starttls="false")
    mail_id = put(tenant, address())
    report = mail.deliver_pending(tenant_ids=[tenant.id])
    assert report.sent == 0 and report.failed == 0 and report.skipped == 1
    assert report.error is not None and report.error.startswith("cannot connect to 127.0.0.1:")
    untouched = row(tenant, mail_id)
    assert untouched["attempts"] == 0 and untouched["last_error"] is None and untouched["body"] == "Body\n"


def test_refused_login_is_reported_without_the_password(smtp_env: Any, tenant: Tenant) -> None:
    def refuse(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        return AuthResult(success=False, handled=False)

    port = free_port()
    controller = Controller(Collector(), hostname="127.0.0.1", port=port, authenticator=refuse, auth_require_tls=False)
    controller.start()
    try:
        smtp_env(smtp_host="127.0.0.1", smtp_port=str(port), smtp_starttls="false",
                 smtp_username="custos", smtp_password="hunter2-very-secret")
        mail_id = put(tenant, address())
        report = mail.deliver_pending(tenant_ids=[tenant.id])
    finally:
        controller.stop()
    assert report.error is not None and "SMTPAuthenticationError 535" in report.error
    assert "hunter2" not in report.error
    assert row(tenant, mail_id)["attempts"] == 0


def test_starttls_is_required_when_configured(use_relay: Relay, smtp_env: Any, tenant: Tenant) -> None:
    smtp_env(smtp_starttls="true")
    put(tenant, address())
    report = mail.deliver_pending(tenant_ids=[tenant.id])
    assert report.sent == 0 and report.error is not None and "SMTPNotSupportedError" in report.error


@pytest.mark.parametrize(
    ("to", "subject", "message"),
    [
        ("victim@example.test\r\nBcc: all@example.test", "Hi", "recipient address contains a line break"),
        ("victim@example.test\n", "Hi", "recipient address contains a line break"),
        ("victim@example.test", "Hi\r\nBcc: all@example.test", "subject contains a line break"),
        ("victim@example.test", "Hi\nthere", "subject contains a line break"),
        ("a@example.test, b@example.test", "Hi", "not a single email address"),
        ("Victim <victim@example.test>", "Hi", "not a single email address"),
        ("no-at-sign", "Hi", "not a single email address"),
        ("victim@example.test", "  ", "subject must have"),
    ],
)
def test_enqueue_refuses_header_injection_and_bad_addresses(tenant: Tenant, to: str, subject: str, message: str) -> None:
    with db.tenant_tx(tenant.id) as conn:
        with pytest.raises(ValueError, match=message) as caught:
            mail.enqueue(conn, tenant_id=tenant.id, to=to, subject=subject, body="x", kind="test")
        assert isinstance(caught.value, mail.InvalidMail)
        assert conn.execute("select count(*) as n from outbox").fetchone()["n"] == 0


def test_without_smtp_host_mail_waits_in_the_outbox(
    smtp_env: Any, client: httpx.Client, relay: Relay, tenant: Tenant
) -> None:
    to = address()
    mail_id = put(tenant, to)
    assert client.post("/admin/functions/deliver_mail").status_code == 202  # the session host has no SMTP_HOST
    smtp_env(smtp_host="")
    assert mail.deliver_pending(tenant_ids=[tenant.id]) == mail.DeliveryReport(skipped=1)
    pending = row(tenant, mail_id)
    assert pending["sent_at"] is None and pending["attempts"] == 0 and pending["body"] == "Body\n"
    assert relay.handler.to(to) == []


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", "outbox", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_cli_outbox_shows_pending_mail_with_its_body(use_relay: Relay, tenant: Tenant) -> None:
    first, second = address(), address()
    put(tenant, first, subject="Reset your password", body="Reset code: r-ß-1\n", kind="password_reset")
    out = _cli("--tenant", tenant.slug)
    assert out.returncode == 0, out.stderr
    [shown] = json.loads(out.stdout)["mail"]
    assert shown["to"] == first and shown["subject"] == "Reset your password" and shown["kind"] == "password_reset"
    assert shown["body"] == "Reset code: r-ß-1\n" and shown["attempts"] == 0 and shown["last_error"] is None
    assert mail.deliver_pending(tenant_ids=[tenant.id]).sent == 1
    put(tenant, second)
    assert [m["to"] for m in json.loads(_cli("--tenant", tenant.id).stdout)["mail"]] == [second]
    everything = json.loads(_cli("--tenant", tenant.id, "--all").stdout)["mail"]
    assert [m["to"] for m in everything] == [first, second]
    assert "body" not in everything[0] and everything[0]["sent_at"]
    missing = _cli("--tenant", "no-such-tenant")
    assert missing.returncode == 2 and "no-such-tenant" in missing.stderr


def test_platform_outbox_mail_outlives_any_tenant_and_is_delivered(use_relay: Relay) -> None:
    """Mail that must survive its tenant's purge (the deletion attestation) is a platform row,
    delivered by the ordinary run that names no tenant."""
    to = address()
    with db.tenant_tx(mail.PLATFORM_OUTBOX) as conn:
        mail_id = mail.enqueue(conn, tenant_id=mail.PLATFORM_OUTBOX, to=to, subject="Your data has been deleted",
                               body="attestation\n", kind="tenant_purged")
    try:
        assert [m["id"] for m in mail.list_outbox() if m["id"] == mail_id] == [mail_id]
        mail.deliver_pending()
        assert [r.message["Subject"] for r in use_relay.handler.to(to)] == ["Your data has been deleted"]
        with db.tenant_tx(mail.PLATFORM_OUTBOX) as conn:
            sent = conn.execute("select sent_at, body from outbox where id = %s", (mail_id,)).fetchone()
        assert sent is not None and sent["sent_at"] is not None and sent["body"] == ""
    finally:
        with db.tenant_tx(mail.PLATFORM_OUTBOX) as conn:
            conn.execute("update outbox set attempts = greatest(attempts, %s), body = '' where sent_at is null",
                         (mail.MAX_ATTEMPTS,))
