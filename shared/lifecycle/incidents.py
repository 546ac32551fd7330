"""Security incidents and the 24-hour notification clock (docs/incidents.md).

Signals are the security events the other packages already append to the audit chains
(`platform.audit_chain_invalid`, `security.refresh_token_reused`, `support.refused`, ...)
and failed heartbeats of the purge and snapshot timers. `sweep` reads each chain from its
watermark and turns signals into incidents through `raise_signal`, which opens an incident
or updates the open one of the same kind and tenants. A sweep rather than calls from each
source: the sources sit in packages below this one (they may not import it), and an audit
event commits with the change it records, so a signal cannot be lost between its event and
its incident; a crash between two sweeps only delays it to the next run.

An incident that affects tenant data starts the clock: `notify` mails the affected tenants'
ADMINs a fixed notice through the outbox; `escalate` raises `platform.incident_escalated`
and logs "incident notice overdue" (the `incident-notice-overdue` alert) for one still OPEN
20 hours after it was first seen. Every step is audited in the platform chain and in each
affected tenant's chain, in the transaction of the change; a tenant's event names no other
tenant.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.audit import chain as audit
from shared.core import db, mail
from shared.core.errors import BlankValue, NotFound
from shared.core.settings import get_settings
from shared.lifecycle.errors import IncidentStateConflict

log = logging.getLogger("custos.incidents")

SWEEP_ACTOR = audit.Actor(id=None, name="incident sweep", type="timer")
NOTICE_DUE = timedelta(hours=24)
ESCALATE_AFTER = timedelta(hours=20)
"""Four hours before the 24-hour commitment: time to write and send the notice."""
MAX_EVIDENCE = 100
"""Evidence references kept per incident (the newest); `signals` counts every one."""
SWEEP_BATCH = 1000
#: Batches one sweep reads from one chain: a backlog larger than this waits for the next run.
MAX_BATCHES_PER_CHAIN = 50
"""Events read per chain per sweep; the rest wait for the next run."""


@dataclass(frozen=True)
class Kind:
    """What a signal means: its incident kind, severity, whether it touches tenant data (then the
    24-hour clock runs), what the notice says, and how many signals within the window it takes."""

    name: str
    severity: str
    tenant_data: bool
    what_happened: str
    what_data: str
    what_we_do: str
    burst: str | None = None  # the setting that holds the count, for signals counted over a window


_CHAIN = "The tamper-evident audit trail of your organisation failed verification: an audit event was changed, removed or reordered outside the application."
KINDS: dict[str, Kind] = {
    "audit_chain_invalid": Kind(
        "audit_chain_invalid", "CRITICAL", True, _CHAIN,
        "Your audit trail, and possibly the records and settings whose changes it records.",
        "We preserve the evidence, compare the trail with its signed checkpoints and archived copies, and restore from them where they prove an alteration."),
    "checkpoint_stale": Kind(
        "checkpoint_stale", "HIGH", True,
        "Signed checkpoints of your audit trail stopped being written, so recent audit events are not yet sealed outside the database.",
        "The audit events recorded since the last signed checkpoint.",
        "We restore the checkpoint service and verify the unsealed events against the database before sealing them."),
    "refresh_token_reuse_burst": Kind(
        "refresh_token_reuse_burst", "HIGH", True,
        "Several sign-in sessions of your users presented refresh tokens that had already been used, a sign of stolen tokens; each such session was ended.",
        "Whatever the affected users could read or change while the stolen tokens were valid.",
        "We review the affected sessions' activity in the audit trail and advise which users should change passwords and second factors.",
        burst="incident_reuse_burst"),
    "throttling_spike": Kind(
        "throttling_spike", "MEDIUM", False,
        "An unusual number of sign-in or signing attempts were throttled, a sign of password guessing.",
        "No data is known to be affected: throttled attempts do not reach any account.",
        "We watch the sources of the attempts and block them where they persist.",
        burst="incident_throttle_spike"),
    "support_access_refused": Kind(
        "support_access_refused", "HIGH", False,
        "A platform operator's support access to your organisation was attempted outside the access you granted, and refused.",
        "None was served: the request was refused before it reached your data.",
        "We review the operator's access and actions and report the outcome to you."),
    "attachment_integrity": Kind(
        "attachment_integrity", "CRITICAL", True,
        "An attachment's stored content no longer matches its recorded SHA-256 hash: it was altered in storage.",
        "The affected attachment(s); the records they belong to are unchanged.",
        "We restore the original content from its verified snapshot and investigate how storage was altered."),
    "purge_timer_failed": Kind(
        "purge_timer_failed", "HIGH", False,
        "The scheduled purge of cancelled organisations failed.",
        "Data of cancelled organisations may be kept past its purge date.",
        "We fix the cause; the purge resumes where it stopped."),
    "snapshot_timer_failed": Kind(
        "snapshot_timer_failed", "HIGH", False,
        "The scheduled snapshot of attachment files failed.",
        "Attachments changed since the last snapshot have no backup copy yet.",
        "We fix the cause and take the missing snapshots."),
}

SIGNALS: dict[str, str] = {
    "platform.audit_chain_invalid": "audit_chain_invalid",
    "platform.audit_checkpoint_stale": "checkpoint_stale",
    "security.refresh_token_reused": "refresh_token_reuse_burst",
    "security.throttled": "throttling_spike",
    "security.signature_attempts_exceeded": "throttling_spike",
    "support.refused": "support_access_refused",
    "integrity.attachment_mismatch": "attachment_integrity",
}
"""Audit action -> incident kind."""

TIMERS: dict[str, str] = {"purge_cancelled_tenants": "purge_timer_failed", "snapshot_blobs": "snapshot_timer_failed"}
"""Heartbeat name -> incident kind of its failure."""

OUTSIDE_GRANT = frozenset({401, 403})
"""Statuses of a refused support request that mean "outside its grant" (revoked, expired, a
write or a permission support never has); a 404 or 422 of a read inside the grant is not."""


def _counts(event: dict[str, Any]) -> bool:
    """Whether the audit event is a signal at all (a support request refused for a typo is not)."""
    if event["action"] == "support.refused":
        after = event.get("after") or {}
        return isinstance(after, dict) and after.get("status") in OUTSIDE_GRANT
    return True


def _tid(value: str) -> str:
    return str(uuid.UUID(str(value)))


def _chain(conn: db.Conn, tenant_id: str) -> None:
    """Point the transaction at a chain, so the next audit event (and RLS) is that tenant's."""
    conn.execute("select set_config('app.tenant_id', %s, true)", (tenant_id,))


def _record(conn: db.Conn, incident: dict[str, Any], *, action: str, actor: audit.Actor, reason: str,
            from_state: str | None, at: datetime, after: dict[str, Any] | None = None,
            meta: audit.RequestMeta | None = None) -> None:
    """One step of an incident: its incident_events row, a platform chain event naming every
    affected tenant, and one event in each affected tenant's chain naming only that tenant."""
    conn.execute(
        """insert into incident_events (incident_id, at, action, from_state, to_state, reason, actor_id, actor_name)
           values (%s, %s, %s, %s, %s, %s, %s, %s)""",
        (incident["id"], at, action, from_state, incident["state"], reason, actor.id, actor.name),
    )
    common = {"kind": incident["kind"], "severity": incident["severity"], "state": incident["state"], **(after or {})}
    for tid in incident["affected"]:
        own = {**common, "affected": [str(tid)]}
        if "evidence" in own:  # another tenant's chain and seq would name that tenant
            own["evidence"] = [e for e in own["evidence"] if e.get("chain") == str(tid)]
        _chain(conn, str(tid))
        try:
            # A savepoint: the chain an incident is about may be the one that is damaged (a head
            # out of step with its events refuses the append), and the incident must still open.
            with conn.transaction():
                audit.append(conn, tenant_id=str(tid), actor=actor, action=f"incident.{action}",
                             target_type="incident", target_id=str(incident["id"]),
                             before={"state": from_state} if from_state else None, after=own, reason=reason,
                             meta=meta)
        except Exception as exc:  # the platform chain still records the step, naming the tenant
            log.error("incident event not written to the tenant's chain tenant=%s incident=%s (%s)",
                      tid, incident["id"], type(exc).__name__)
            common.setdefault("tenant_chains_refused", []).append(str(tid))
    _chain(conn, audit.PLATFORM_CHAIN)
    audit.append(conn, tenant_id=audit.PLATFORM_CHAIN, actor=actor, action=f"platform.incident_{action}",
                 target_type="incident", target_id=str(incident["id"]),
                 before={"state": from_state} if from_state else None,
                 after={**common, "affected": [str(t) for t in incident["affected"]]}, reason=reason, meta=meta)


def raise_signal(kind: str, tenant_ids: Sequence[str], evidence: Sequence[dict[str, Any]], *,
                 seen_at: datetime, conn: db.Conn | None = None) -> dict[str, Any]:
    """Open an incident of `kind` for `tenant_ids`, or add the evidence to the open one (not
    RESOLVED) of the same kind and tenants; both audited. `evidence` are audit event references
    `{"chain", "seq", "action"}`; `seen_at` is when the signal happened (the clock starts there).
    In its own platform transaction unless `conn` is given. Returns the incident row.

    Raises:
        KeyError: `kind` is not one of `KINDS`.
    """
    spec = KINDS[kind]
    affected = sorted({_tid(t) for t in tenant_ids if _tid(t) != audit.PLATFORM_CHAIN})
    refs = [dict(e) for e in evidence]
    if conn is None:
        with db.platform_tx() as own:
            return raise_signal(kind, affected, refs, seen_at=seen_at, conn=own)
    _chain(conn, audit.PLATFORM_CHAIN)
    opened = conn.execute(
        """insert into incidents (kind, severity, affected, tenant_data, summary, first_seen, last_seen, evidence,
                                  notify_due_at, signals)
           values (%s, %s, %s::uuid[], %s, %s, %s, %s, %s, %s, %s)
           on conflict (kind, affected) where state <> 'RESOLVED' do nothing
           returning *""",
        (kind, spec.severity, affected, spec.tenant_data, spec.what_happened[:500], seen_at, seen_at,
         db.jsonb(refs[-MAX_EVIDENCE:]), seen_at + NOTICE_DUE if spec.tenant_data else None, max(1, len(refs))),
    ).fetchone()
    if opened is not None:
        log.warning("incident opened id=%s kind=%s severity=%s tenants=%d", opened["id"], kind, spec.severity,
                    len(affected))
        _record(conn, opened, action="opened", actor=SWEEP_ACTOR, reason=f"signal: {kind}", from_state=None,
                at=seen_at, after={"evidence": refs[-MAX_EVIDENCE:]})
        return dict(opened)
    updated = conn.execute(
        """update incidents set last_seen = greatest(last_seen, %s), signals = signals + %s,
                  evidence = (select coalesce(jsonb_agg(e order by n), '[]'::jsonb) from (
                      select e, n from jsonb_array_elements(evidence || %s) with ordinality as x(e, n)
                      order by n desc limit %s) newest)
            where kind = %s and affected = %s::uuid[] and state <> 'RESOLVED' returning *""",
        (seen_at, max(1, len(refs)), db.jsonb(refs), MAX_EVIDENCE, kind, affected),
    ).fetchone()
    assert updated is not None  # the conflicting row is there and locked by the insert
    _record(conn, updated, action="updated", actor=SWEEP_ACTOR, reason=f"signal: {kind}",
            from_state=updated["state"], at=seen_at, after={"evidence": refs[-MAX_EVIDENCE:]})
    return dict(updated)


# --- the sweep ---------------------------------------------------------------------------


def _watermark(source: str) -> dict[str, Any]:
    """The source's watermark (`seq`, `at`), and whether it was ever swept (`swept`)."""
    with db.platform_tx() as conn:
        row = conn.execute("select seq, at from incident_watermarks where source = %s", (source,)).fetchone()
    return {**row, "swept": True} if row else {"seq": 0, "at": None, "swept": False}


def _history_before(now: datetime | None) -> datetime:
    """Events before this are history to a chain's first sweep: `now` less INCIDENT_FIRST_SWEEP_LOOKBACK_S."""
    return (now or datetime.now(UTC)) - timedelta(seconds=get_settings().incident_first_sweep_lookback_s)


def _first_watermark(chain: str, history_before: datetime) -> int:
    """Where the first sweep of a chain starts: after its last event before `history_before`
    (the sweep's start less INCIDENT_FIRST_SWEEP_LOOKBACK_S), so that a deployment does not open
    incidents for years of history; a new tenant's chain has none, and starts at its first event."""
    with db.tenant_tx(chain) as conn:
        row = conn.execute("select coalesce(max(seq), 0) as seq from audit_events where occurred_at < %s",
                           (history_before,)).fetchone()
    return int(row["seq"]) if row else 0


def _advance(conn: db.Conn, source: str, *, seq: int = 0, at: datetime | None = None) -> None:
    conn.execute(
        """insert into incident_watermarks (source, seq, at) values (%s, %s, %s)
           on conflict (source) do update set seq = greatest(incident_watermarks.seq, excluded.seq),
                                             at = coalesce(excluded.at, incident_watermarks.at)""",
        (source, seq, at),
    )


def _chain_ids() -> list[str]:
    with db.platform_tx() as conn:
        rows = conn.execute("select id::text as id from tenants where status <> 'PURGED' order by created_at").fetchall()
    return [audit.PLATFORM_CHAIN, *(r["id"] for r in rows)]


def _affected(chain: str, event: dict[str, Any]) -> list[str]:
    """The tenants a signal concerns: its own chain's tenant, or for a platform alert about a
    tenant's chain (the verifier writes those to the platform chain) that tenant."""
    if chain != audit.PLATFORM_CHAIN:
        return [chain]
    if event["target_type"] == "tenant" and event["target_id"]:
        try:
            return [_tid(event["target_id"])]
        except ValueError:
            return []
    return []


def _sweep_chain(chain: str, *, window: timedelta, history_before: datetime | None = None) -> tuple[int, bool]:
    """Turn the chain's signals after its watermark into incidents, one batch of at most
    `SWEEP_BATCH`; returns how many signals, and whether a full batch was read (more may wait)."""
    source = f"chain:{chain}"
    settings = get_settings()
    mark = _watermark(source)
    since = int(mark["seq"]) if mark["swept"] else _first_watermark(chain, history_before or _history_before(None))
    with db.tenant_tx(chain) as conn:
        rows = conn.execute(
            """select seq, action, occurred_at, target_type, target_id, after from audit_events
                where seq > %s and action = any(%s) order by seq limit %s""",
            (since, list(SIGNALS), SWEEP_BATCH),
        ).fetchall()
        head = conn.execute("select coalesce(max(seq), 0) as seq from audit_events where seq > %s", (since,)).fetchone()
    last = int(head["seq"]) if head and len(rows) < SWEEP_BATCH else (int(rows[-1]["seq"]) if rows else since)
    raised = 0
    with db.platform_tx() as conn:
        # Two sweeps at once (the schedule and an on-demand run) would count the same events
        # twice: the watermark row is the lock, and the later one finds it moved and stops.
        _advance(conn, source, seq=since)
        held = conn.execute("select seq from incident_watermarks where source = %s for update", (source,)).fetchone()
        if held is None or int(held["seq"]) != since:
            return 0, False
        for event in rows:
            if not _counts(event):
                continue
            spec = KINDS[SIGNALS[event["action"]]]
            if spec.burst is not None:
                _chain(conn, chain)
                count = conn.execute(
                    """select count(*) as n from audit_events
                        where action = any(%s) and occurred_at > %s and occurred_at <= %s and seq <= %s""",
                    ([a for a, k in SIGNALS.items() if k == spec.name], event["occurred_at"] - window,
                     event["occurred_at"], event["seq"]),
                ).fetchone()
                if count is None or int(count["n"]) < int(getattr(settings, spec.burst)):
                    continue
            raise_signal(spec.name, _affected(chain, event),
                         [{"chain": chain, "seq": int(event["seq"]), "action": event["action"]}],
                         seen_at=event["occurred_at"], conn=conn)
            raised += 1
        _advance(conn, source, seq=last)
    return raised, len(rows) == SWEEP_BATCH


def _sweep_heartbeats() -> int:
    """A failed run of the purge or snapshot timer since the last sweep: a platform event (the
    incident's evidence) and the incident."""
    raised = 0
    for name, kind in TIMERS.items():
        source = f"heartbeat:{name}"
        seen = _watermark(source)["at"]
        with db.platform_tx() as conn:
            beat = conn.execute("select last_run_at, ok, detail from job_heartbeats where name = %s", (name,)).fetchone()
            if beat is None or (seen is not None and beat["last_run_at"] <= seen):
                continue
            if not beat["ok"]:
                _chain(conn, audit.PLATFORM_CHAIN)
                event = audit.append(conn, tenant_id=audit.PLATFORM_CHAIN, actor=SWEEP_ACTOR, action="platform.timer_failed",
                                     target_type="timer", target_id=name,
                                     after={"last_run_at": audit.format_time(beat["last_run_at"]), "detail": beat["detail"]})
                raise_signal(kind, [], [{"chain": audit.PLATFORM_CHAIN, "seq": event.seq, "action": "platform.timer_failed"}],
                             seen_at=beat["last_run_at"], conn=conn)
                raised += 1
            _advance(conn, source, at=beat["last_run_at"])
    return raised


@dataclass
class SweepReport:
    signals: int
    escalated: int
    failed_chains: list[str]


def sweep(*, now: datetime | None = None) -> SweepReport:
    """Read every chain's signals since its watermark (a chain swept for the first time: since
    INCIDENT_FIRST_SWEEP_LOOKBACK_S before `now`) and the timers' heartbeats into incidents,
    then escalate overdue notices. One chain's failure is logged ("incident sweep failed") and
    does not stop the others.

    Raises:
        Exception: reading the heartbeats or escalating failed (the run fails; signals already
            swept are kept, the watermarks say where the next run starts).
    """
    window = timedelta(seconds=get_settings().incident_window_s)
    history_before = _history_before(now)
    signals, failed = 0, []
    for chain in _chain_ids():
        try:
            for _ in range(MAX_BATCHES_PER_CHAIN):  # a backlog is read to its end, within a bound
                raised, more = _sweep_chain(chain, window=window, history_before=history_before)
                signals += raised
                if not more:
                    break
        except Exception:
            log.exception("incident sweep failed chain=%s", chain)
            failed.append(chain)
    signals += _sweep_heartbeats()
    escalated = escalate(now=now)
    return SweepReport(signals=signals, escalated=len(escalated), failed_chains=failed)


def escalate(*, now: datetime | None = None) -> list[dict[str, Any]]:
    """Escalate every OPEN incident affecting tenant data first seen `ESCALATE_AFTER` or more
    before `now` and not escalated yet: audited, and the "incident notice overdue" log line the
    alert fires on. Returns the escalated incidents."""
    now = now or datetime.now(UTC)
    out = []
    with db.platform_tx() as conn:
        rows = conn.execute(
            """select * from incidents where state = 'OPEN' and tenant_data and escalated_at is null
                and first_seen <= %s order by first_seen for update skip locked""",
            (now - ESCALATE_AFTER,),
        ).fetchall()
        for row in rows:
            conn.execute("update incidents set escalated_at = %s where id = %s", (now, row["id"]))
            hours = (now - row["first_seen"]).total_seconds() / 3600
            _record(conn, row, action="escalated", actor=SWEEP_ACTOR, from_state=row["state"], at=now,
                    reason=f"no notice {hours:.1f} hours after the incident was first seen",
                    after={"notify_due_at": audit.format_time(row["notify_due_at"])})
            log.error("incident notice overdue id=%s kind=%s hours_open=%.1f due=%s", row["id"], row["kind"], hours,
                      audit.format_time(row["notify_due_at"]))
            out.append(view(row))
    return out


# --- operators ---------------------------------------------------------------------------


def _reason(reason: str) -> str:
    if not reason or not reason.strip():
        raise BlankValue("every change of an incident needs a reason", errors=[{"location": ["reason"], "message": "required"}])
    return reason.strip()


def view(row: dict[str, Any]) -> dict[str, Any]:
    """An incident as the API shows it."""
    fmt = audit.format_time
    return {
        "id": str(row["id"]), "kind": row["kind"], "severity": row["severity"], "state": row["state"],
        "summary": row["summary"], "affected": [str(t) for t in row["affected"]], "tenant_data": row["tenant_data"],
        "first_seen": fmt(row["first_seen"]), "last_seen": fmt(row["last_seen"]) if row.get("last_seen") else None,
        "notify_due_at": fmt(row["notify_due_at"]) if row.get("notify_due_at") else None,
        "notified_at": fmt(row["notified_at"]) if row.get("notified_at") else None,
        "resolved_at": fmt(row["resolved_at"]) if row.get("resolved_at") else None,
        "evidence": list(row["evidence"] or []),
    }


LIST_LIMIT = 500


def list_incidents(*, state: str | None = None, tenant_id: str | None = None,
                   kind: str | None = None) -> list[dict[str, Any]]:
    """Incidents for operators, optionally in one state, of one kind or affecting one tenant: OPEN first, then
    NOTIFIED, then RESOLVED, each newest first, at most `LIST_LIMIT` (so an old OPEN incident is
    never pushed out of the list by newer resolved ones)."""
    with db.platform_tx() as conn:
        rows = conn.execute(
            """select * from incidents
                where (%(state)s::text is null or state = %(state)s)
                  and (%(tenant)s::uuid is null or affected @> array[%(tenant)s::uuid])
                  and (%(kind)s::text is null or kind = %(kind)s)
                order by array_position(array['OPEN', 'NOTIFIED', 'RESOLVED'], state), first_seen desc
                limit %(limit)s""",
            {"state": state, "tenant": tenant_id, "kind": kind, "limit": LIST_LIMIT},
        ).fetchall()
    return [view(r) for r in rows]


def get_incident(incident_id: uuid.UUID) -> dict[str, Any]:
    """One incident with its history (operators).

    Raises:
        NotFound: no such incident.
    """
    with db.platform_tx() as conn:
        row = conn.execute("select * from incidents where id = %s", (incident_id,)).fetchone()
        if row is None:
            raise NotFound("no such incident")
        events = conn.execute(
            "select at, action, from_state, to_state, reason, actor_name from incident_events where incident_id = %s order by id",
            (incident_id,),
        ).fetchall()
    return {**view(row), "history": [{**e, "at": audit.format_time(e["at"])} for e in events]}


def notice(kind: str, *, contact: str | None = None) -> tuple[str, str]:
    """The fixed notice of an incident kind: subject and body (what happened, what data, what we
    do, contact). No tenant or person is named in it, so one text serves every addressee."""
    spec = KINDS[kind]
    contact = contact or get_settings().incident_contact
    body = (f"What happened: {spec.what_happened}\n\n"
            f"What data: {spec.what_data}\n\n"
            f"What we do: {spec.what_we_do}\n\n"
            f"Contact: {contact}\n")
    return f"Security incident notice ({spec.severity.lower()} severity)", body


def notify(incident_id: uuid.UUID, *, reason: str, actor: audit.Actor,
           meta: audit.RequestMeta | None = None, now: datetime | None = None) -> dict[str, Any]:
    """Mail the fixed notice to every active ADMIN of every affected tenant through the outbox and
    mark the incident NOTIFIED (a NOTIFIED incident may be notified again, e.g. with news); all in
    one transaction with its audit events. Returns the incident with `mails` (how many were queued).

    Raises:
        BlankValue: no reason. NotFound: no such incident. IncidentStateConflict: it is RESOLVED.
    """
    reason = _reason(reason)
    with db.platform_tx() as conn:
        at = now or conn.execute("select now() as now").fetchone()["now"]  # type: ignore[index]
        row = conn.execute("select * from incidents where id = %s for update", (incident_id,)).fetchone()
        if row is None:
            raise NotFound("no such incident")
        if row["state"] == "RESOLVED":
            raise IncidentStateConflict("a resolved incident is not notified")
        subject, body = notice(row["kind"])
        mails = 0
        for tid in row["affected"]:
            _chain(conn, str(tid))
            admins = conn.execute(
                "select email from users where role = 'ADMIN' and status = 'active' order by email"
            ).fetchall()
            for admin in admins:
                mail.enqueue(conn, tenant_id=str(tid), to=admin["email"], subject=subject, body=body, kind="incident_notice")
                mails += 1
        _chain(conn, audit.PLATFORM_CHAIN)
        updated = conn.execute(
            """update incidents set state = 'NOTIFIED', notified_at = coalesce(notified_at, %s) where id = %s returning *""",
            (at, incident_id),
        ).fetchone()
        assert updated is not None
        _record(conn, updated, action="notified", actor=actor, reason=reason, from_state=row["state"], at=at,
                after={"mails": mails}, meta=meta)
    return {**view(updated), "mails": mails}


def resolve(incident_id: uuid.UUID, *, reason: str, actor: audit.Actor,
            meta: audit.RequestMeta | None = None, now: datetime | None = None) -> dict[str, Any]:
    """Mark the incident RESOLVED with the reason; audited. A later signal of the same kind and
    tenants opens a new incident.

    Raises:
        BlankValue: no reason. NotFound: no such incident. IncidentStateConflict: already RESOLVED.
    """
    reason = _reason(reason)
    with db.platform_tx() as conn:
        at = now or conn.execute("select now() as now").fetchone()["now"]  # type: ignore[index]
        row = conn.execute("select * from incidents where id = %s for update", (incident_id,)).fetchone()
        if row is None:
            raise NotFound("no such incident")
        if row["state"] == "RESOLVED":
            raise IncidentStateConflict("the incident is already resolved")
        updated = conn.execute(
            "update incidents set state = 'RESOLVED', resolved_at = %s where id = %s returning *", (at, incident_id)
        ).fetchone()
        assert updated is not None
        _record(conn, updated, action="resolved", actor=actor, reason=reason, from_state=row["state"], at=at, meta=meta)
    return view(updated)


# --- tenants -----------------------------------------------------------------------------


def tenant_incidents(conn: db.Conn) -> list[dict[str, Any]]:
    """The incidents affecting the transaction's tenant, through the view that shows it only
    itself in `affected` and only its own chain's evidence."""
    rows = conn.execute("select * from tenant_incidents order by first_seen desc limit 500").fetchall()
    return [view(r) for r in rows]


def tenant_incident(conn: db.Conn, incident_id: uuid.UUID) -> dict[str, Any]:
    """One incident affecting the transaction's tenant.

    Raises:
        NotFound: no such incident, or one that does not affect this tenant.
    """
    row = conn.execute("select * from tenant_incidents where id = %s", (incident_id,)).fetchone()
    if row is None:
        raise NotFound("no such incident")
    return view(row)
