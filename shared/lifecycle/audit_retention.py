"""The audit retention timer and its jobs: every tenant with an `audit.retention_days` window
gets its cut (`shared.audit.retention.cut_tenant`) as a job on the job queue, one per tenant.

Both the timer and the jobs run in the owner-jobs app: the kind is registered as an owner
kind, so its messages go to OWNER_JOBS_QUEUE, and only that app's role may cut audit events.

The daily timer only enqueues (`enqueue_due`): a cut verifies the tenant's whole remaining
chain and streams an archive, which for a large tenant may outlast the Functions timeout, and
one slow tenant must not starve the others. Each job (kind `audit_retention`, in the tenant's
own `jobs` table, which a cut never deletes) carries its window and the instant the timer
decided on (`as_of`), so a retried or late job cuts exactly what the timer decided. A tenant
that already has an `audit_retention` job QUEUED or RUNNING gets no second one. A refusal
fails that job at once (`audit-retention-refused`) with a log line the alert watches; the
other tenants' jobs are independent.

It lives here and not in `shared.audit` because the window is a tenant setting
(`shared.tenancy`), which the audit package may not import.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.audit import chain as audit
from shared.audit import checkpoints
from shared.audit.retention import RetentionRefused, cut_tenant
from shared.core import db, health
from shared.lifecycle import jobs
from shared.lifecycle.errors import AuditRetentionRefused
from shared.tenancy import tenant_settings

SETTING = "audit.retention_days"
KIND = "audit_retention"
log = logging.getLogger("custos.lifecycle")


def windows() -> list[tuple[str, int]]:
    """(tenant id, window in days) of every tenant that is not purged and has a window."""
    found: list[tuple[str, int]] = []
    for tid in checkpoints.chain_ids():
        if tid == audit.PLATFORM_CHAIN:  # the platform's own trail has no window: kept forever
            continue
        with db.tenant_tx(tid) as conn:
            days = tenant_settings.get_setting(conn, SETTING)
        if isinstance(days, int) and not isinstance(days, bool):
            found.append((tid, days))
    return found


@dataclass
class Enqueued:
    """What one timer run queued: a job per tenant with a window, and the tenants skipped
    because a job of theirs is still QUEUED or RUNNING."""

    windows: int = 0
    jobs: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def enqueue_due(*, now: datetime | None = None) -> Enqueued:
    """Queue one `audit_retention` job per tenant with a window (the daily timer); records the
    `audit_retention` heartbeat. `now` (database time if None) is the instant every job cuts at.

    Raises:
        ServiceUnavailable: the database or the queue could not be reached (heartbeat not ok).
    """
    out = Enqueued()
    try:
        if now is None:
            with db.platform_tx() as conn:
                row = conn.execute("select now() as now").fetchone()
                assert row is not None
                now = row["now"]
        assert now is not None
        todo = windows()
        out.windows = len(todo)
        for tid, days in todo:
            job = _enqueue(tid, days, now)
            if job is None:
                out.skipped.append(tid)
            else:
                out.jobs[tid] = job.id
    except Exception as exc:
        health.record_heartbeat("audit_retention", ok=False, detail=f"failed: {type(exc).__name__}")
        raise
    health.record_heartbeat("audit_retention", ok=True,
                            detail=f"{out.windows} tenants with a window, {len(out.jobs)} jobs queued, "
                                   f"{len(out.skipped)} still running")
    return out


def _enqueue(tenant_id: str, days: int, now: datetime) -> jobs.Job | None:
    """The tenant's retention job, or None when one is already QUEUED or RUNNING."""
    tx = db.tenant_tx(tenant_id)
    with tx as conn:
        # One retention job per tenant at a time: a lock per tenant, so two timer runs at once
        # cannot both find none and both insert.
        conn.execute("select pg_advisory_xact_lock(hashtextextended('custos.retention_job:' || %s, 0))", (tenant_id,))
        busy = conn.execute("select 1 from jobs where kind = %s and state in ('QUEUED', 'RUNNING') limit 1",
                            (KIND,)).fetchone()
        if busy is not None:
            return None
        job = jobs.create(conn, tenant_id=tenant_id, kind=KIND, created_by=None,
                          params={"window_days": days, "as_of": audit.format_time(now)})
    jobs.send(job)
    return job


@jobs.register(KIND, owner=True)
def run_job(run: jobs.Run) -> dict[str, Any]:
    """One tenant's cut, at the window and instant its job names.

    Raises:
        AuditRetentionRefused: the cut was refused (nothing removed); logged for the alert.
    """
    tid, params = run.job.tenant_id, run.job.params
    as_of = datetime.fromisoformat(str(params["as_of"]).replace("Z", "+00:00"))
    try:
        cut = cut_tenant(tid, window_days=int(params["window_days"]), now=as_of)
    except RetentionRefused as exc:
        log.error("audit retention refused tenant=%s reason=%s", tid, exc)
        raise AuditRetentionRefused(str(exc)) from None
    if cut is None:
        return {"cut": None}
    return {"cut": {"from_seq": cut.from_seq, "seq": cut.seq, "archive": cut.archive,
                    "archive_sha256": cut.archive_sha256}}
