"""Outgoing mail: an outbox row written with the change that causes it, sent later over SMTP.

`enqueue` inserts into `outbox` in the caller's transaction, so a mail exists exactly when
its change commits. The `deliver_mail` timer calls `deliver_pending`, which sends what is
due over one SMTP connection per run (stdlib `smtplib`, STARTTLS unless turned off for a
local test server) and records the outcome on each row.

Delivery is at least once: a row is locked (`FOR UPDATE SKIP LOCKED`, so two workers never
send the same row) while it is sent and marked sent in the same transaction, but if the
database commit fails after the relay accepted the mail, it is sent again next run. The
`Message-ID` is derived from the row id, so a receiver can recognise such a repeat.

Mail bodies carry one-time secrets (invitation codes, reset links). Once a mail is sent, or
has failed `MAX_ATTEMPTS` times and is given up, its body is blanked so the secret does not
linger in the database. Until then the body is readable by operators: with no `SMTP_HOST`
(local development) `python -m shared.cli outbox` is how a developer reads such mail.
"""

from __future__ import annotations

import logging
import re
import smtplib
import ssl
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

from shared.core import db
from shared.core.db import Conn
from shared.core.errors import InvalidMail, RelayUnavailable
from shared.core.settings import Settings, get_settings

log = logging.getLogger("custos.mail")

MAX_ATTEMPTS = 8
#: After its n-th failed attempt a mail waits BACKOFF * 2**n: 2 min after the first, 2 h 8 min
#: after the seventh; the eighth failure gives up, about 4 h 14 min after the first try.
BACKOFF = timedelta(minutes=1)
SMTP_TIMEOUT_S = 10
MAX_SUBJECT_CHARS = 500
MAX_BODY_CHARS = 100_000
_ERROR_CHARS = 300

# One bare addr-spec: no display name, list separator, group, comment or quoting (which
# header parsers would reinterpret), no whitespace or controls.
_ADDRESS = re.compile(r"^[^@\s<>()\[\]\\,;:\"']{1,64}@[^@\s<>()\[\]\\,;:\"']{1,253}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_KIND = re.compile(r"^[a-z][a-z0-9_.]{0,63}$")

_no_host_logged = False


@dataclass(frozen=True)
class DeliveryReport:
    """What one delivery run did.

    `sent`: accepted by the relay. `failed`: attempts that failed (retried later, up to
    MAX_ATTEMPTS). `skipped`: due mail not attempted, because no SMTP_HOST is set or the
    relay became unavailable (`error` says why; such mail does not use up an attempt).
    """

    sent: int = 0
    failed: int = 0
    skipped: int = 0
    error: str | None = None


def enqueue(conn: Conn, *, tenant_id: str, to: str, subject: str, body: str, kind: str) -> str:
    """Put a plain-text mail in the outbox in the caller's (tenant) transaction; returns its id.

    The body may hold a one-time secret: it stays readable in the outbox until the mail is
    sent (or given up), then it is blanked.

    Raises:
        InvalidMail: `to` is not a single bare address, `to` or `subject` contains CR, LF or
            another control character (header injection), the subject is empty or too long,
            the body is too long or contains NUL, or `kind` is not a short lowercase name.
    """
    if _CONTROL.search(to):
        raise InvalidMail("recipient address contains a line break or control character")
    if len(to) > 254 or not _ADDRESS.match(to):
        raise InvalidMail("recipient is not a single email address")
    if _CONTROL.search(subject):
        raise InvalidMail("subject contains a line break or control character")
    if not subject.strip() or len(subject) > MAX_SUBJECT_CHARS:
        raise InvalidMail(f"subject must have 1 to {MAX_SUBJECT_CHARS} characters")
    if "\x00" in body or len(body) > MAX_BODY_CHARS:
        raise InvalidMail(f"body must have at most {MAX_BODY_CHARS} characters and no NUL")
    if not _KIND.match(kind):
        raise InvalidMail("kind must be a short lowercase name like 'invitation'")
    row = _cursor(conn).execute(
        """insert into outbox (tenant_id, to_address, subject, body, kind) values (%s, %s, %s, %s, %s)
           returning id::text as id""",
        (str(uuid.UUID(str(tenant_id))), to, subject, body, kind),
    ).fetchone()
    assert row is not None
    return str(row["id"])


def deliver_pending(
    *, limit: int = 100, now: datetime | None = None, tenant_ids: Iterable[str] | None = None
) -> DeliveryReport:
    """Send due outbox mail of every tenant that is not purged (or only of `tenant_ids`).

    Due: not sent, fewer than MAX_ATTEMPTS failed attempts, and never tried or tried at
    least BACKOFF * 2**attempts before `now` (database time if None; tests pass a later
    time instead of sleeping). At most `limit` mails per tenant per run, oldest first, so
    one tenant's backlog cannot starve the others. Each mail is locked, sent and marked in
    its own transaction: on success `sent_at` is set and the body blanked; on failure
    `attempts` grows and `last_error` holds the error class and the relay's reply (never
    credentials). Without SMTP_HOST nothing is sent and due mail is counted as skipped.
    """
    global _no_host_logged
    settings = get_settings()
    tenants = list(tenant_ids) if tenant_ids is not None else _tenant_ids()
    if not settings.smtp_host:
        skipped = sum(_count_due(t, now) for t in tenants)
        if not _no_host_logged:
            log.info("SMTP_HOST is not set: mail stays in the outbox (python -m shared.cli outbox shows it)")
            _no_host_logged = True
        return DeliveryReport(skipped=skipped)

    if _CONTROL.search(settings.smtp_from) or "@" not in parseaddr(settings.smtp_from)[1]:
        # a message could not be built: say so once per run rather than failing every mail
        skipped = sum(_count_due(t, now) for t in tenants)
        log.error("SMTP_FROM is not a mail address: no mail is sent")
        return DeliveryReport(skipped=skipped, error="SMTP_FROM is not a mail address")
    relay = _Relay(settings)
    sent = failed = 0
    try:
        for tenant_id in tenants:
            for _ in range(limit):
                outcome = _deliver_one(tenant_id, relay, settings, now)
                if outcome is None:
                    break
                if outcome:
                    sent += 1
                else:
                    failed += 1
    except RelayUnavailable as exc:
        log.error("mail relay unavailable: %s", exc)
        skipped = sum(_count_due(t, now) for t in tenants)
        return DeliveryReport(sent=sent, failed=failed, skipped=skipped, error=str(exc))
    finally:
        relay.close()
    return DeliveryReport(sent=sent, failed=failed)


def list_outbox(tenant_ids: Iterable[str] | None = None, *, include_sent: bool = False) -> list[dict[str, Any]]:
    """Pending mail (all mail with `include_sent`) of the given or all non-purged tenants.

    Pending mail includes its body: this is how a developer without an SMTP relay reads
    invitation and reset mail. Sent mail has had its body blanked.
    """
    result: list[dict[str, Any]] = []
    for tenant_id in list(tenant_ids) if tenant_ids is not None else _tenant_ids():
        with db.tenant_tx(tenant_id) as conn:
            rows = _cursor(conn).execute(
                """select tenant_id::text as tenant_id, id::text as id, to_address, subject, body, kind,
                          created_at, sent_at, attempts, last_attempt_at, last_error
                     from outbox
                    where tenant_id = %s and (%s or sent_at is null)
                    order by created_at, id""",
                (tenant_id, include_sent),
            ).fetchall()
        for r in rows:
            item = {
                "tenant_id": r["tenant_id"], "id": r["id"], "to": r["to_address"], "subject": r["subject"],
                "kind": r["kind"], "created_at": r["created_at"], "sent_at": r["sent_at"],
                "attempts": r["attempts"], "last_attempt_at": r["last_attempt_at"], "last_error": r["last_error"],
            }
            if r["sent_at"] is None:
                item["body"] = r["body"]
            result.append(item)
    return result


# --- internals ------------------------------------------------------------------------------


def _cursor(conn: Conn) -> psycopg.Cursor[dict[str, Any]]:
    from psycopg.rows import dict_row  # with the first delivery, not at import

    return conn.cursor(row_factory=dict_row)


PLATFORM_OUTBOX = "00000000-0000-0000-0000-000000000000"
"""Outbox rows of no tenant (the platform chain's id): mail that must outlive its tenant, like
the deletion attestation sent to a purged tenant's admins (docs/purge.md)."""


def _tenant_ids() -> list[str]:
    with db.platform_tx() as conn:
        rows = _cursor(conn).execute("select id::text as id from tenants where status <> 'PURGED' order by created_at").fetchall()
    return [*(r["id"] for r in rows), PLATFORM_OUTBOX]


_DUE = """tenant_id = %(tenant)s and sent_at is null and attempts < %(max)s
          and (last_attempt_at is null
               or last_attempt_at + %(backoff)s * power(2, attempts) <= coalesce(%(now)s::timestamptz, now()))"""


def _params(tenant_id: str, now: datetime | None) -> dict[str, Any]:
    return {"tenant": tenant_id, "max": MAX_ATTEMPTS, "backoff": BACKOFF, "now": now}


def _count_due(tenant_id: str, now: datetime | None) -> int:
    with db.tenant_tx(tenant_id) as conn:
        row = _cursor(conn).execute(f"select count(*) as n from outbox where {_DUE}", _params(tenant_id, now)).fetchone()  # noqa: S608  # nosec B608  # only module constants are interpolated; values are bound
    return int(row["n"]) if row else 0


def _deliver_one(tenant_id: str, relay: _Relay, settings: Settings, now: datetime | None) -> bool | None:
    """Send the tenant's oldest due mail: True sent, False failed, None if nothing is due.

    Raises:
        RelayUnavailable: the relay cannot be reached; the row is left as it was.
    """
    params = _params(tenant_id, now)
    with db.tenant_tx(tenant_id) as conn:
        row = _cursor(conn).execute(
            f"""select tenant_id, id, to_address, subject, body, attempts, coalesce(%(now)s::timestamptz, now()) as now
                  from outbox where {_DUE}
                 order by created_at, id limit 1
                   for update skip locked""",  # noqa: S608  # nosec B608  # only module constants are interpolated; values are bound
            params,
        ).fetchone()
        if row is None:
            return None
        try:
            message = _message(settings, row)
        except ValueError as exc:  # a row written around enqueue's checks: retrying cannot help
            _record_failure(conn, row, _describe(exc, settings), give_up=True)
            return False
        try:
            relay.send(message, row["to_address"])
        except (smtplib.SMTPException, OSError) as exc:
            error = _describe(exc, settings)
            log.warning("mail %s of tenant %s failed (attempt %d): %s", row["id"], tenant_id, row["attempts"] + 1, error)
            _record_failure(conn, row, error, give_up=row["attempts"] + 1 >= MAX_ATTEMPTS)
            return False
        conn.execute(
            "update outbox set sent_at = %s, body = '' where tenant_id = %s and id = %s",
            (row["now"], tenant_id, row["id"]),
        )
        return True


def _record_failure(conn: Conn, row: dict[str, Any], error: str, *, give_up: bool) -> None:
    if give_up:
        log.error("mail %s given up after %d attempts: %s", row["id"], row["attempts"] + 1, error)
    conn.execute(
        """update outbox
              set attempts = case when %(give_up)s then greatest(attempts + 1, %(max)s) else attempts + 1 end,
                  last_attempt_at = %(now)s, last_error = %(error)s,
                  body = case when %(give_up)s then '' else body end
            where tenant_id = %(tenant)s and id = %(id)s""",
        {"give_up": give_up, "max": MAX_ATTEMPTS, "now": row["now"], "error": error,
         "tenant": row["tenant_id"], "id": row["id"]},
    )


def _message(settings: Settings, row: dict[str, Any]) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = settings.smtp_from
    msg["To"] = row["to_address"]
    msg["Subject"] = row["subject"]
    msg["Date"] = format_datetime(row["now"].astimezone(UTC))
    msg["Message-ID"] = f"<{row['id']}@{_domain(settings.smtp_from)}>"
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies
    body = row["body"]
    # ASCII within SMTP's 998-octet line limit goes as is; anything else quoted-printable, so
    # the mail never needs the relay to support 8BITMIME
    plain = body.isascii() and all(len(line) <= 998 for line in body.splitlines())
    msg.set_content(body, charset="utf-8", cte="7bit" if plain else "quoted-printable")
    return msg


def _domain(address: str) -> str:
    domain = parseaddr(address)[1].rpartition("@")[2]
    return domain if re.fullmatch(r"[A-Za-z0-9.-]{1,253}", domain) else "custos.invalid"


def _describe(exc: BaseException, settings: Settings) -> str:
    """`Class code reply` of an SMTP error, short, one line, credentials masked."""
    name = type(exc).__name__
    if isinstance(exc, smtplib.SMTPRecipientsRefused) and exc.recipients:
        code, reply = next(iter(exc.recipients.values()))
        text = f"{name} {code} {_text(reply)}"
    elif isinstance(exc, smtplib.SMTPResponseException):
        text = f"{name} {exc.smtp_code} {_text(exc.smtp_error)}"
    else:
        text = f"{name}: {exc}" if str(exc) else name
    for secret in (settings.smtp_password, settings.smtp_username):
        if secret:
            text = text.replace(secret, "***")
    return " ".join(text.split())[:_ERROR_CHARS]


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply


class _Relay:
    """One SMTP session for a delivery run, opened on first use and reopened after a drop."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._envelope_from = parseaddr(settings.smtp_from)[1]
        self._smtp: smtplib.SMTP | None = None

    def _connect(self) -> smtplib.SMTP:
        s = self._settings
        try:
            smtp = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=SMTP_TIMEOUT_S)
        except (smtplib.SMTPException, OSError) as exc:
            raise RelayUnavailable(f"cannot connect to {s.smtp_host}:{s.smtp_port}: {_describe(exc, s)}") from None
        try:
            if s.smtp_starttls:
                smtp.starttls(context=ssl.create_default_context())
            if s.smtp_username:
                smtp.login(s.smtp_username, s.smtp_password)
        except (smtplib.SMTPException, OSError) as exc:
            smtp.close()
            raise RelayUnavailable(f"{s.smtp_host}:{s.smtp_port} refused the session: {_describe(exc, s)}") from None
        return smtp

    def send(self, message: EmailMessage, to: str) -> None:
        """Raises RelayUnavailable, or the SMTP error of this one mail (the session survives it)."""
        if self._smtp is None:
            self._smtp = self._connect()
        try:
            self._smtp.send_message(message, from_addr=self._envelope_from, to_addrs=[to])
        except smtplib.SMTPServerDisconnected:
            self.close()
            raise
        except smtplib.SMTPResponseException as exc:
            if exc.smtp_code == 421:  # the relay is closing the session
                self.close()
            raise
        except smtplib.SMTPException:
            raise
        except OSError:  # timeout or reset: the session is unusable
            self.close()
            raise

    def close(self) -> None:
        if self._smtp is None:
            return
        smtp, self._smtp = self._smtp, None
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            smtp.close()
