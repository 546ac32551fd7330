"""Jobs: long work run from a queue message, never inside an HTTP request.

A job is a row of `jobs` (tenant-scoped, row-level security): kind, state
(QUEUED -> RUNNING -> DONE | FAILED), progress (done / total), a safe error (problem type
and detail, never a stack trace), attempts, who created it, when it was created, started
and finished, and its result.

`start` does it in the one right order: the row (and whatever the caller adds, such as its
audit event) in a transaction, then the message after that transaction commits. Its parts:
`create` inserts the row in the caller's transaction; `send` puts the message on the queue
and must be called after that transaction commits (a message sent earlier could be handled
before the row is visible, and be dropped). The message carries only the job's id and
tenant id, never data: a handler that finds no row (the tenant was purged) or a job that is
no longer QUEUED acks and drops the message.

Redelivery is idempotent: a worker claims the job with one conditional UPDATE (QUEUED, or
RUNNING whose lease ran out because its worker died), so a message seen twice never runs
the job twice at once. A handler raising an `AppError` fails the job at once (the input is
what it is: trying again cannot help); any other exception puts the job back to QUEUED and
re-raises, so the Functions host retries the message, up to `MAX_ATTEMPTS` (host.json
`extensions.queues.maxDequeueCount`), after which the job is FAILED and the host moves the
message to the poison queue.

Handlers are registered by kind (`register`), so other parts of the lifecycle (purge,
snapshots, retention) add their kinds without touching this module.

Two queues, two apps: a kind registered with `owner=True` (audit retention) needs the schema
owner's database role, which only the owner-jobs app holds, so its messages go to
OWNER_JOBS_QUEUE, read only by that app; every other kind goes to JOBS_QUEUE, read by the API
app. A message that reaches the other app's queue (sent by an older release, or by hand) is
acked and its job FAILED (`job-wrong-app`, audited): neither app runs the other's kinds
(docs/purge.md, "The owner-jobs app").
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from shared.audit import chain as audit
from shared.core import db, queues
from shared.core.db import Conn
from shared.core.errors import AppError, NotFound, ServiceUnavailable
from shared.core.settings import get_settings
from shared.lifecycle.errors import JobCrashed, JobWrongApp, UnknownJobKind

log = logging.getLogger("custos.jobs")

MAX_ATTEMPTS = 5
"""Tries of one job; equal to host.json `extensions.queues.maxDequeueCount` (a test checks)."""
MAX_DETAIL = 1000
_COLUMNS = ("id, tenant_id, kind, state, params, progress_done, progress_total, error_type, error_detail, "
            "attempts, created_by, created_at, started_at, finished_at, result")


class State(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    DONE = "DONE"
    FAILED = "FAILED"


@dataclass(frozen=True)
class Job:
    """One job row."""

    id: str
    tenant_id: str
    kind: str
    state: State
    params: dict[str, Any]
    progress_done: int
    progress_total: int | None
    error_type: str | None
    error_detail: str | None
    attempts: int
    created_by: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    result: dict[str, Any] | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        return cls(
            id=str(row["id"]), tenant_id=str(row["tenant_id"]), kind=row["kind"], state=State(row["state"]),
            params=row["params"] or {}, progress_done=int(row["progress_done"]),
            progress_total=None if row["progress_total"] is None else int(row["progress_total"]),
            error_type=row["error_type"], error_detail=row["error_detail"], attempts=int(row["attempts"]),
            created_by=None if row["created_by"] is None else str(row["created_by"]),
            created_at=row["created_at"], started_at=row["started_at"], finished_at=row["finished_at"],
            result=row["result"],
        )

    def as_dict(self) -> dict[str, Any]:
        """What `GET /api/jobs/{id}` shows."""
        return {
            "id": self.id, "kind": self.kind, "state": self.state.value,
            "progress": {"done": self.progress_done, "total": self.progress_total},
            "error": None if self.error_type is None else {"type": self.error_type, "detail": self.error_detail},
            "attempts": self.attempts, "created_by": self.created_by,
            "created_at": audit.format_time(self.created_at),
            "started_at": None if self.started_at is None else audit.format_time(self.started_at),
            "finished_at": None if self.finished_at is None else audit.format_time(self.finished_at),
        }


@dataclass(frozen=True)
class Run:
    """What a handler gets: its job (claimed, RUNNING) and a way to report progress."""

    job: Job

    def progress(self, done: int, total: int | None = None) -> None:
        """Record progress (and extend the lease) in a transaction of its own.

        Raises:
            ServiceUnavailable: the database cannot be reached.
        """
        with db.tenant_tx(self.job.tenant_id) as conn:
            conn.execute(
                """update jobs set progress_done = %s, progress_total = coalesce(%s, progress_total),
                          lease_until = now() + make_interval(secs => %s)
                    where id = %s and state = 'RUNNING' and attempts = %s""",
                (done, total, get_settings().job_lease_s, self.job.id, self.job.attempts),
            )


Handler = Callable[[Run], dict[str, Any] | None]
_HANDLERS: dict[str, Handler] = {}
_OWNER_KINDS: set[str] = set()


def register(kind: str, *, owner: bool = False) -> Callable[[Handler], Handler]:
    """Decorator: `handler` runs the jobs of `kind` and returns their result (a JSON object).
    `owner`: the kind runs only in the owner-jobs app, from OWNER_JOBS_QUEUE.

    Raises:
        ValueError: `kind` already has a handler.
    """

    def decorate(handler: Handler) -> Handler:
        if _HANDLERS.get(kind, handler) is not handler:
            raise ValueError(f"job kind {kind!r} already has a handler")
        _HANDLERS[kind] = handler
        if owner:
            _OWNER_KINDS.add(kind)
        return handler

    return decorate


def is_owner_kind(kind: str) -> bool:
    """Whether jobs of `kind` run only in the owner-jobs app (registered with `owner=True`)."""
    return kind in _OWNER_KINDS


def queue_for(kind: str) -> str:
    """The queue of a kind's messages: OWNER_JOBS_QUEUE for owner kinds, JOBS_QUEUE otherwise."""
    return queues.owner_jobs_queue() if is_owner_kind(kind) else queues.jobs_queue()


def create(conn: Conn, *, tenant_id: str, kind: str, created_by: str | None,
           params: dict[str, Any] | None = None) -> Job:
    """Insert a QUEUED job in the caller's (tenant) transaction. Call `send` after it commits.

    Raises:
        ValueError: no handler is registered for `kind`.
    """
    if kind not in _HANDLERS:
        raise ValueError(f"no handler for job kind {kind!r}")
    row = conn.execute(
        f"insert into jobs (tenant_id, kind, params, created_by) values (%s, %s, %s, %s) returning {_COLUMNS}",  # noqa: S608  # nosec B608  # only module constants are interpolated; values are bound
        (tenant_id, kind, json.dumps(params or {}), created_by),
    ).fetchone()
    assert row is not None
    return Job.from_row(row)


def message(job: Job) -> str:
    """The queue message of a job: its ids, nothing else."""
    return json.dumps({"job_id": job.id, "tenant_id": job.tenant_id}, separators=(",", ":"))


def send(job: Job, *, queue: str | None = None) -> None:
    """Put the job's message on its kind's queue (`queue_for`; `queue`: another one, for tests)
    after its row committed.

    Raises:
        ServiceUnavailable: the queue service could not be reached (the job stays QUEUED).
    """
    queues.send(queue or queue_for(job.kind), message(job))


def start(tx: AbstractContextManager[Conn], *, tenant_id: str, kind: str, created_by: str | None,
          params: dict[str, Any] | None = None, then: Callable[[Conn, Job], None] | None = None,
          queue: str | None = None) -> Job:
    """Create a job in the transaction `tx` opens (with `then(conn, job)` inside it, e.g. the
    audit event of the request), commit, then send its message: the one right order.

    Raises:
        ValueError: no handler is registered for `kind`.
        ServiceUnavailable: the database or the queue could not be reached. A job whose row
            committed but whose message could not be sent is FAILED with that problem (nothing
            would ever run it), so no job waits QUEUED forever; the caller may start another.
    """
    with tx as conn:
        job = create(conn, tenant_id=tenant_id, kind=kind, created_by=created_by, params=params)
        if then is not None:
            then(conn, job)
    try:
        send(job, queue=queue)
    except ServiceUnavailable as exc:
        with db.tenant_tx(tenant_id) as conn:
            conn.execute(
                """update jobs set state = 'FAILED', finished_at = now(), error_type = %s, error_detail = %s
                    where id = %s and state = 'QUEUED'""",
                (exc.type, "the job could not be queued: start it again", job.id),
            )
            audit.append(conn, tenant_id=tenant_id, actor=audit.SYSTEM, action="job.failed", target_type="job",
                         target_id=job.id, after={"kind": kind, "state": "FAILED", "error": {"type": exc.type}})
        log.error("job failed: %s (%s): its message could not be queued", job.id, kind)
        raise
    return job


def get(conn: Conn, job_id: uuid.UUID | str, *, kind: str | None = None) -> Job:
    """The job, in the transaction's tenant.

    Raises:
        NotFound: no such job in this tenant (another tenant's job too), or not of `kind`.
    """
    row = conn.execute(f"select {_COLUMNS} from jobs where id = %s", (str(job_id),)).fetchone()  # noqa: S608  # nosec B608  # only module constants are interpolated; values are bound
    if row is None or (kind is not None and row["kind"] != kind):
        raise NotFound("no such job")
    return Job.from_row(row)


def claim(tenant_id: str, job_id: str, *, now: datetime | None = None, owner: bool = False) -> Job | None:
    """Take the job for this worker: QUEUED, or RUNNING past its lease (its worker died).

    None when there is nothing to run: no such row (purged), DONE, FAILED, or RUNNING in
    another worker's lease. The claim is one conditional UPDATE, so two deliveries of one
    message cannot both win. Its `job.started` event names the app that runs it (`owner`:
    the owner-jobs app).

    Raises:
        ServiceUnavailable: the database cannot be reached.
    """
    with db.tenant_tx(tenant_id) as conn:
        row = conn.execute(
            f"""update jobs set state = 'RUNNING', attempts = attempts + 1,
                       started_at = coalesce(started_at, coalesce(%(now)s, now())),
                       lease_until = coalesce(%(now)s, now()) + make_interval(secs => %(lease)s),
                       error_type = null, error_detail = null
                 where id = %(id)s
                   and (state = 'QUEUED' or (state = 'RUNNING' and lease_until < coalesce(%(now)s, now())))
             returning {_COLUMNS}""",  # noqa: S608  # nosec B608  # only module constants are interpolated; values are bound
            {"now": now, "lease": get_settings().job_lease_s, "id": job_id},
        ).fetchone()
        if row is None:
            return None
        job = Job.from_row(row)
        audit.append(conn, tenant_id=tenant_id, actor=audit.SYSTEM, action="job.started", target_type="job",
                     target_id=job.id, after={"kind": job.kind, "attempt": job.attempts,
                                              "app": "owner-jobs" if owner else "api"})
        return job


def _finish(job: Job, state: State, *, result: dict[str, Any] | None = None,
            error: AppError | None = None) -> bool:
    """Move a claimed job to DONE, FAILED or back to QUEUED, if this worker still holds it."""
    detail = None if error is None else (error.detail or error.title)[:MAX_DETAIL]
    with db.tenant_tx(job.tenant_id) as conn:
        row = conn.execute(
            """update jobs set state = %s, result = coalesce(%s, result), error_type = %s, error_detail = %s,
                      lease_until = null,
                      finished_at = case when %s in ('DONE', 'FAILED') then now() end,
                      progress_done = case when %s = 'DONE' then coalesce(progress_total, progress_done)
                                           else progress_done end
                where id = %s and state = 'RUNNING' and attempts = %s
            returning id""",
            (state.value, None if result is None else json.dumps(result), None if error is None else error.type,
             detail, state.value, state.value, job.id, job.attempts),
        ).fetchone()
        if row is None:
            return False  # another worker re-claimed it after our lease ran out: its outcome counts
        after: dict[str, Any] = {"kind": job.kind, "state": state.value, "attempt": job.attempts}
        if error is not None:
            after["error"] = {"type": error.type, "detail": detail}
        audit.append(conn, tenant_id=job.tenant_id, actor=audit.SYSTEM, action=f"job.{state.value.lower()}",
                     target_type="job", target_id=job.id, after=after)
        return True


def _held_for(tenant_id: str, job_id: str, *, now: datetime | None) -> int | None:
    """Seconds left on a RUNNING job's lease; None when the job is gone or finished."""
    with db.tenant_tx(tenant_id) as conn:
        row = conn.execute(
            """select ceil(extract(epoch from lease_until - coalesce(%s, now())))::bigint as left_s
                 from jobs where id = %s and state = 'RUNNING'""",
            (now, job_id),
        ).fetchone()
    return None if row is None else max(0, int(row["left_s"] or 0))


def _parse(text: str) -> tuple[str, str] | None:
    try:
        body = json.loads(text)
        return str(uuid.UUID(str(body["tenant_id"]))), str(uuid.UUID(str(body["job_id"])))
    except (ValueError, TypeError, KeyError):
        return None


def _refuse_other_app(tenant_id: str, job_id: str, *, owner: bool, now: datetime | None) -> str | None:
    """None when the job is of this app's kinds (or gone): the caller runs it as usual.
    Otherwise "refused" (the job was QUEUED, or RUNNING past its lease, and is now FAILED,
    audited) or "dropped" (it is finished, or its own app is running it)."""
    with db.tenant_tx(tenant_id) as conn:
        row = conn.execute("select kind from jobs where id = %s for update", (job_id,)).fetchone()
        if row is None or is_owner_kind(row["kind"]) == owner:
            return None
        kind = row["kind"]
        here, there = ("owner-jobs", "API") if owner else ("API", "owner-jobs")
        error = JobWrongApp(f"a {kind!r} job runs only in the {there} app; its message reached the {here} app's "
                            "queue and was not run: start it again")
        failed = conn.execute(
            """update jobs set state = 'FAILED', finished_at = coalesce(%(now)s, now()), lease_until = null,
                      error_type = %(type)s, error_detail = %(detail)s
                where id = %(id)s
                  and (state = 'QUEUED' or (state = 'RUNNING' and lease_until < coalesce(%(now)s, now())))
            returning id""",
            {"now": now, "type": error.type, "detail": error.detail, "id": job_id},
        ).fetchone()
        if failed is None:
            log.info("job %s (%s) on the %s app's queue is finished or running in its own app: message dropped",
                     job_id, kind, here)
            return "dropped"
        audit.append(conn, tenant_id=tenant_id, actor=audit.SYSTEM, action="job.failed", target_type="job",
                     target_id=job_id, after={"kind": kind, "state": "FAILED",
                                              "error": {"type": error.type, "detail": error.detail}})
    log.error("job failed: %s (%s): its message reached the %s app's queue", job_id, kind, here)
    return "refused"


def run_message(text: str, *, owner: bool = False, now: datetime | None = None) -> str:
    """Handle one queue message; returns what happened: done, failed, held, dropped, malformed,
    refused. `owner`: the message came from OWNER_JOBS_QUEUE (the owner-jobs app), which runs
    only owner kinds; JOBS_QUEUE (the API app) runs only the others. A job of the other app's
    kinds is FAILED, not run (`job-wrong-app`).

    Raises:
        Exception: whatever the handler raised that is not an `AppError`, after putting the
            job back to QUEUED, so the host retries the message (until its poison queue).
    """
    ids = _parse(text)
    if ids is None:
        log.error("job message is not {job_id, tenant_id}: dropped")
        return "malformed"
    tenant_id, job_id = ids
    refused = _refuse_other_app(tenant_id, job_id, owner=owner, now=now)
    if refused is not None:
        return refused
    job = claim(tenant_id, job_id, now=now, owner=owner)
    if job is None:
        held = _held_for(tenant_id, job_id, now=now)
        if held is None:
            log.info("job %s: nothing to run (gone or finished): message dropped", job_id)
            return "dropped"
        # Another worker holds it. If that worker dies, no message is left to rescue the job:
        # look again when its lease runs out (a worker that lives on renews its lease, and the
        # look after that finds the job finished and drops the message).
        queues.send(queues.owner_jobs_queue() if owner else queues.jobs_queue(), text, delay_s=held + 1)
        log.info("job %s is held by another worker: looking again in %d s", job_id, held + 1)
        return "held"
    if job.attempts > MAX_ATTEMPTS:
        # Its workers died (out of memory, timed out) without a word: the re-sent message
        # restarts the dequeue count, so the attempts in the row are what bounds the retries.
        log.error("job failed: %s (%s): its worker stopped %d times", job.id, job.kind, job.attempts - 1)
        _finish(job, State.FAILED, error=JobCrashed(f"the job's worker stopped {job.attempts - 1} times"))
        return "failed"
    handler = _HANDLERS.get(job.kind)
    try:
        if handler is None:
            raise UnknownJobKind(f"no handler for job kind {job.kind!r}")
        result = handler(Run(job))
    except AppError as exc:
        log.error("job failed: %s (%s): %s", job.id, job.kind, exc.type)
        _finish(job, State.FAILED, error=exc)
        return "failed"
    except Exception:
        log.exception("job %s (%s) attempt %d raised", job.id, job.kind, job.attempts)
        if job.attempts >= MAX_ATTEMPTS:
            log.error("job failed: %s (%s) after %d attempts", job.id, job.kind, job.attempts)
            _finish(job, State.FAILED, error=JobCrashed(f"the job failed {job.attempts} times"))
            return "failed"
        _finish(job, State.QUEUED, error=JobCrashed("the attempt failed; the job will be retried"))
        raise
    _finish(job, State.DONE, result=result or {})
    return "done"


def recent(conn: Conn, *, kind: str, limit: int) -> list[Job]:
    """The newest `limit` jobs of `kind` in the transaction's tenant (RLS keeps others out)."""
    rows = conn.execute(f"select {_COLUMNS} from jobs where kind = %s order by created_at desc, id desc limit %s",  # noqa: S608  # nosec B608  # _COLUMNS is a constant column list; values are bound
                        (kind, limit)).fetchall()
    return [Job.from_row(row) for row in rows]
