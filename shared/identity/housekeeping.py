"""Housekeeping: short-lived state deleted once nobody can use it, idle sessions ended.

The `housekeeping` timer (HOUSEKEEPING_SCHEDULE) calls `run`, which goes through `STEPS` in
order; each step removes one kind of state, in bounded batches, and a failing step is
reported without stopping the others:

- `throttle_rows`: rate-limit rows every reader would treat as empty (`Throttle.purge_expired`:
  forgotten, no delay running, no known-pair marker in force), each deleted under its ETag.
- `webauthn_challenges`: challenges that expired without being taken.
- per tenant, in one transaction per batch with one `housekeeping.purged` audit event giving
  the counts: `mfa_tickets` used or expired, `password_resets` and `invitations` (one-time
  tokens) used, revoked or expired, `outbox` mail sent more than OUTBOX_SENT_RETENTION_DAYS
  ago. A redemption refuses an unknown token exactly as a used or expired one, so deleting
  them changes no answer; unsent mail is never deleted.
- `idle_sessions`: tenant sessions idle past their tenant's limit (`sessions.max_idle_minutes`)
  are ended with the same `session.expired` event the request path writes
  (`sessions.end_if_idle`), so the sessions list and the audit trail say when they ended
  rather than waiting for the next use; likewise operator sessions past
  OPERATOR_SESSION_MAX_IDLE_MINUTES. Sessions are ended (revoked), never deleted.
- `operator_mfa_tickets`: operators' used or expired tickets (platform chain event).

The time limits use the injected `now` (the database clock by default); session idleness is
judged by the database clock only, as on the request path, so the two can never disagree.
Nothing here touches audit events, records or signatures.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from shared.audit import chain as audit
from shared.core import db
from shared.core.db import Conn
from shared.core.errors import AppError
from shared.core.settings import get_settings
from shared.identity import ratelimit, sessions
from shared.identity.mfa import passkeys

log = logging.getLogger("custos.housekeeping")

BATCH = 1000
"""Rows of one kind deleted per statement (and sessions ended per transaction)."""

MAX_BATCHES = 100
"""Batches per tenant and kind in one run; what is left waits for the next run."""

ACTOR = audit.Actor(id=None, name="housekeeping", type="system")

# Per-tenant deletes: the condition that makes a row useless, on the injected clock.
_TENANT_DELETES: dict[str, str] = {
    "mfa_tickets": "used_at is not null or expires_at <= %(now)s",
    "password_resets": "used_at is not null or expires_at <= %(now)s",
    "invitations": "used_at is not null or revoked_at is not null or expires_at <= %(now)s",
    "outbox": "sent_at < %(now)s - make_interval(days => %(outbox_days)s)",
}


@dataclass
class Report:
    """What one run removed, per kind, and the steps that failed (kind: error type)."""

    counts: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def add(self, kind: str, n: int) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + n

    def detail(self) -> str:
        text = ", ".join(f"{kind}={n}" for kind, n in sorted(self.counts.items()))
        if self.errors:
            text += "; failed: " + ", ".join(f"{k} ({v})" for k, v in sorted(self.errors.items()))
        return text


def _db_now() -> datetime:
    rows = db.one_statement("select now() as now", ())
    return rows[0]["now"]  # type: ignore[no-any-return]


def _tenant_ids() -> list[str]:
    with db.platform_tx() as conn:
        rows = conn.execute("select id::text as id from tenants where status <> 'PURGED' order by created_at").fetchall()
    return [r["id"] for r in rows]


def _delete_batch(conn: Conn, table: str, condition: str, params: dict[str, object]) -> int:
    # `table` and `condition` are constants of this module, never input.
    rows = conn.execute(
        f"delete from {table} where id in (select id from {table} where {condition} limit {BATCH}) returning id",  # noqa: S608  # nosec B608  # table and condition are this module's constants, BATCH an int constant
        params,
    ).fetchall()
    return len(rows)


def purge_tenant(tenant_id: str, *, now: datetime, outbox_days: int) -> dict[str, int]:
    """Delete one tenant's used or expired tickets and one-time tokens and its old sent mail;
    each batch is one transaction with one `housekeeping.purged` event of its counts.

    Raises:
        ServiceUnavailable: the database cannot be reached.
    """
    params: dict[str, object] = {"now": now, "outbox_days": outbox_days}
    totals = dict.fromkeys(_TENANT_DELETES, 0)
    pending = set(_TENANT_DELETES)
    for _ in range(MAX_BATCHES):
        if not pending:
            break
        with db.tenant_tx(tenant_id) as conn:
            counts = {kind: _delete_batch(conn, kind, _TENANT_DELETES[kind], params) for kind in sorted(pending)}
            if any(counts.values()):
                audit.append(conn, tenant_id=tenant_id, actor=ACTOR, action="housekeeping.purged",
                             target_type="tenant", target_id=tenant_id,
                             reason="used or expired short-lived rows", after={"deleted": counts})
        for kind, n in counts.items():
            totals[kind] += n
            if n < BATCH:
                pending.discard(kind)
    return totals


def end_idle_sessions(tenant_id: str) -> int:
    """End the tenant's sessions idle past its limit (none if the tenant set no limit), one
    `session.expired` event each; returns how many.

    Raises:
        ServiceUnavailable: the database cannot be reached.
    """
    ended = 0
    for _ in range(MAX_BATCHES):
        with db.tenant_tx(tenant_id) as conn:
            ids = [r["id"] for r in conn.execute(
                f"""select id::text as id from sessions
                     where revoked_at is null and expires_at > now() and last_seen_at < now() - {sessions.MAX_IDLE_SQL}
                     order by last_seen_at limit {BATCH}""",  # noqa: S608  # nosec B608  # only module constants are interpolated; values are bound
            ).fetchall()]
            for session_id in ids:
                ended += sessions.end_if_idle(conn, tenant_id=tenant_id, session_id=session_id,
                                              meta=audit.RequestMeta())
        if len(ids) < BATCH:
            break
    return ended


def purge_platform(*, now: datetime) -> dict[str, int]:
    """Operators' used or expired tickets deleted, idle operator sessions ended; one
    `housekeeping.purged` event on the platform chain when tickets went.

    Raises:
        ServiceUnavailable: the database cannot be reached.
    """
    max_idle = get_settings().operator_session_max_idle_minutes
    counts = {"operator_mfa_tickets": 0, "operator_idle_sessions": 0}
    for _ in range(MAX_BATCHES):
        with db.tenant_tx(audit.PLATFORM_CHAIN) as conn:
            n = _delete_batch(conn, "operator_mfa_tickets", "used_at is not null or expires_at <= %(now)s", {"now": now})
            if n:
                audit.append(conn, tenant_id=audit.PLATFORM_CHAIN, actor=ACTOR, action="housekeeping.purged",
                             target_type="platform", reason="used or expired short-lived rows",
                             after={"deleted": {"operator_mfa_tickets": n}})
            ids = [r["id"] for r in conn.execute(
                f"""select id::text as id from operator_sessions
                     where revoked_at is null and expires_at > now() and last_seen_at < now() - make_interval(mins => %s)
                     order by last_seen_at limit {BATCH}""",  # noqa: S608  # nosec B608  # only module constants are interpolated; values are bound
                (max_idle,),
            ).fetchall()]
            for session_id in ids:
                counts["operator_idle_sessions"] += sessions.end_operator_session_if_idle(
                    conn, session_id=session_id, max_idle_minutes=max_idle, meta=audit.RequestMeta())
        counts["operator_mfa_tickets"] += n
        if n < BATCH and len(ids) < BATCH:
            break
    return counts


def run(*, now: datetime | None = None, throttle: ratelimit.Throttle | None = None) -> Report:
    """One housekeeping pass over every step (`now`: the database clock by default).

    A step that fails is recorded in `Report.errors` (and logged) and the others still run;
    the caller decides what a failed report means (the timer fails the run).
    """
    settings = get_settings()
    report = Report()
    clock = now if now is not None else _db_now()
    th = throttle if throttle is not None else ratelimit.throttle()

    def each_tenant(step: str, work: Callable[[str], None]) -> None:
        """One tenant's failure is recorded and the step goes on with the others; the step
        then fails as a whole, naming how many tenants it could not finish."""
        failed: list[str] = []
        for tenant_id in _tenant_ids():
            try:
                work(tenant_id)
            except Exception as exc:
                failed.append(tenant_id)
                log.error("housekeeping step %s failed for tenant %s (%s)", step, tenant_id, type(exc).__name__,
                          extra={"housekeeping_step": step, "tenant_id": tenant_id,
                                 "housekeeping_error": type(exc).__name__})
        if failed:
            raise RuntimeError(f"{len(failed)} tenant(s) failed")

    def tenants() -> None:
        def one(tenant_id: str) -> None:
            for kind, n in purge_tenant(tenant_id, now=clock, outbox_days=settings.outbox_sent_retention_days).items():
                report.add(kind, n)
        each_tenant("tenants", one)

    def idle() -> None:
        each_tenant("idle_sessions", lambda tenant_id: report.add("idle_sessions", end_idle_sessions(tenant_id)))

    def platform() -> None:
        for kind, n in purge_platform(now=clock).items():
            report.add(kind, n)

    steps: list[tuple[str, Callable[[], None]]] = [
        ("throttle_rows", lambda: report.add("throttle_rows", th.purge_expired(now=clock.timestamp()))),
        ("webauthn_challenges",
         lambda: report.add("webauthn_challenges", passkeys.purge_expired_challenges(now=clock.timestamp()))),
        ("tenants", tenants),
        ("idle_sessions", idle),
        ("platform", platform),
    ]
    for name, step in steps:
        try:
            step()
        except Exception as exc:  # one broken step must not keep the others from running
            report.errors[name] = type(exc).__name__
            if isinstance(exc, AppError):
                log.error("housekeeping step failed: %s (%s)", name, type(exc).__name__,
                          extra={"housekeeping_step": name, "housekeeping_error": type(exc).__name__})
            else:
                log.exception("housekeeping step failed: %s (%s)", name, type(exc).__name__,
                              extra={"housekeeping_step": name, "housekeeping_error": type(exc).__name__})
    # Flat fields: telemetry exports log attributes as custom dimensions, which take scalars only.
    log.info("housekeeping: %s", report.detail(),
             extra={"housekeeping_ok": report.ok, **{f"housekeeping_{k}": n for k, n in report.counts.items()}})
    return report
