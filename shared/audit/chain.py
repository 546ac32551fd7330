"""The audit trail: append-only, one SHA-256 hash chain per tenant.

Each event's `checksum` is the SHA-256 (hex) of the RFC 8785 canonical JSON of all its
fields, `previous_checksum` included; the first event of a chain links to GENESIS (64
zeros). `append` runs inside the caller's transaction, so the change and its event commit
together or not at all, and serializes one tenant's appends on that tenant's chain-head
row (different tenants never wait on each other). docs/audit.md is the full description.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import rfc8785

from shared.core import db
from shared.core.db import Conn
from shared.core.settings import Settings, SettingsError, get_settings
from shared.web.jsonio import loads_stored

if TYPE_CHECKING:
    from shared.web.endpoint import RequestContext

GENESIS = "0" * 64
PLATFORM_CHAIN = "00000000-0000-0000-0000-000000000000"
"""Chain of platform-level events (operator actions, integrity alerts)."""

ACTOR_TYPES = frozenset({"user", "operator", "system", "timer", "scim_token"})
MAX_SAFE_INT = 2**53 - 1

# Every field that the checksum covers, in RFC 8785 order (sorted keys).
FIELDS = (
    "action", "actor_id", "actor_name", "actor_type", "after", "app_version", "before", "ip",
    "occurred_at", "previous_checksum", "reason", "request_id", "seq", "session_id",
    "target_id", "target_type", "tenant_id", "user_agent",
)
JSON_FIELDS = frozenset({"before", "after"})
INT_FIELDS = frozenset({"seq"})
_SELECT = (
    "select tenant_id::text, seq, "
    "to_char(occurred_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') as occurred_at, "
    "actor_id, actor_name, actor_type, action, target_type, target_id, before::text as before, "
    "after::text as after, reason, ip, user_agent, session_id, request_id, app_version, "
    "previous_checksum, checksum from audit_events"
)
_COLUMNS = (
    "tenant_id", "seq", "occurred_at", "actor_id", "actor_name", "actor_type", "action",
    "target_type", "target_id", "before", "after", "reason", "ip", "user_agent", "session_id",
    "request_id", "app_version", "previous_checksum", "checksum",
)


@dataclass(frozen=True)
class Actor:
    """Who acted: id and printed name as they were at the time."""

    id: str | None
    name: str
    type: str = "user"

    def __post_init__(self) -> None:
        if self.type not in ACTOR_TYPES:
            raise ValueError(f"actor type {self.type!r} is not one of {sorted(ACTOR_TYPES)}")


SYSTEM = Actor(id=None, name="Custos", type="system")


@dataclass(frozen=True)
class RequestMeta:
    ip: str | None = None
    user_agent: str | None = None
    session_id: str | None = None
    request_id: str | None = None


@dataclass(frozen=True)
class Appended:
    seq: int
    checksum: str
    occurred_at: str



def _tuple_row() -> Any:
    """psycopg's tuple row factory, imported with the first read rather than at import."""
    from psycopg.rows import tuple_row

    return tuple_row

def context_actor(ctx: RequestContext) -> tuple[Actor, RequestMeta]:
    """The actor and request metadata of an HTTP request."""
    p = ctx.principal
    if p is None:
        actor = Actor(id=None, name="anonymous", type="system")
    else:
        kind = "operator" if p.is_operator or p.is_support else "user"
        if getattr(p, "is_scim_token", False):
            kind = "scim_token"
        actor = Actor(id=p.user_id, name=p.name or p.user_id, type=kind)
    meta = RequestMeta(
        ip=ctx.client_ip or None,
        user_agent=ctx.user_agent or None,
        session_id=p.session_id if p else None,
        request_id=ctx.request_id,
    )
    return actor, meta


def json_safe(value: Any) -> Any:
    """A JSON value that RFC 8785 can canonicalize: integers beyond 2**53 and non-finite
    floats become strings (JSON numbers are IEEE doubles; such values would not survive)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value if -MAX_SAFE_INT <= value <= MAX_SAFE_INT else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return str(value)


def canonical_json(value: Any) -> str | None:
    if value is None:
        return None
    return rfc8785.dumps(json_safe(value)).decode("utf-8")


# RFC 8785 strings are ECMAScript JSON.stringify strings: what json.dumps produces with
# ensure_ascii=False (text from PostgreSQL holds no lone surrogates). encode_basestring is
# that same encoder without building a JSONEncoder per call (verify's hot path).
_string = json.encoder.encode_basestring  # type: ignore[attr-defined]


def canonical_bytes(row: dict[str, Any]) -> bytes:
    """RFC 8785 canonical JSON of an event's fields (checksum excluded).

    `before`/`after` are already canonical JSON text and are embedded as stored, byte for
    byte, so any change to them changes the checksum. Equal to `rfc8785.dumps` of the same
    fields with those two parsed (a test checks this on generated rows).
    """
    parts = []
    for name in FIELDS:
        value = row[name]
        if value is None:
            text = "null"
        elif name in JSON_FIELDS:
            text = value
        elif name in INT_FIELDS:
            text = str(int(value))
        else:
            text = _string(value)
        parts.append(f'"{name}":{text}')
    return ("{" + ",".join(parts) + "}").encode("utf-8")


def compute_checksum(row: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_bytes(row)).hexdigest()


def normal_tenant_id(tenant_id: str) -> str:
    """The tenant id in its canonical lowercase hyphenated form.

    Raises:
        ValueError: it is not a UUID.
    """
    return str(uuid.UUID(str(tenant_id)))


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def append(
    conn: Conn,
    *,
    tenant_id: str,
    actor: Actor,
    action: str,
    target_type: str | None = None,
    target_id: str | None = None,
    before: Any = None,
    after: Any = None,
    reason: str | None = None,
    meta: RequestMeta | None = None,
    commit: bool = False,
) -> Appended:
    """Append one event to the tenant's chain inside the caller's transaction.

    The caller's transaction must have `tenant_id` set (shared.core.db.tenant_tx), so the
    event cannot be written to another tenant's chain (row-level security refuses it).
    With `commit`, the append is the transaction's last statement and commits with it, in
    its one round trip (`db.commit_with`): the caller's transaction must end right after.

    Raises:
        psycopg.Error: the database refused the event (mapped by the enclosing transaction);
            with `commit`, nothing has committed then.
    """
    meta = meta or RequestMeta()
    tid = str(uuid.UUID(str(tenant_id)))
    values = _append_values(tid, actor, action, target_type, target_id, before, after, reason, meta)
    if commit:
        [[started]] = db.commit_with(conn, (_APPEND_OR_START, values))
        return Appended(seq=int(started["seq"]), checksum=started["checksum"], occurred_at=started["occurred_at"])
    done = conn.execute(_APPEND, values).fetchone()
    if done is not None:
        return Appended(seq=int(done["seq"]), checksum=done["checksum"], occurred_at=done["occurred_at"])
    # The tenant's first event (no chain head yet): the head is created, then locked as always.
    lock_head = "select seq, checksum, clock_timestamp() as now from audit_chain_heads where tenant_id = %s for update"
    head = conn.execute(lock_head, (tid,)).fetchone()
    if head is None:  # the tenant's first event: create its head, then lock it like any other
        conn.execute(
            "insert into audit_chain_heads (tenant_id, seq, checksum) values (%s, 0, %s) on conflict do nothing",
            (tid, GENESIS),
        )
        head = conn.execute(lock_head, (tid,)).fetchone()
    if head is None:
        raise RuntimeError("the audit chain head is not visible: is the tenant set on this transaction?")
    row: dict[str, Any] = {
        "tenant_id": tid,
        "seq": int(head["seq"]) + 1,
        "occurred_at": format_time(head["now"]),
        "actor_id": actor.id,
        "actor_name": actor.name,
        "actor_type": actor.type,
        "action": action,
        "target_type": target_type,
        "target_id": None if target_id is None else str(target_id),
        "before": canonical_json(before),
        "after": canonical_json(after),
        "reason": reason,
        "ip": meta.ip,
        "user_agent": meta.user_agent,
        "session_id": meta.session_id,
        "request_id": meta.request_id,
        "app_version": app_version(),
        "previous_checksum": head["checksum"],
    }
    row["checksum"] = compute_checksum(row)
    # The event and the head move together, in one round trip.
    conn.execute(
        f"""with event as (insert into audit_events ({', '.join(_COLUMNS)})
                           values ({', '.join(['%s'] * len(_COLUMNS))}) returning seq, checksum)
            update audit_chain_heads h set seq = event.seq, checksum = event.checksum
              from event where h.tenant_id = %s""",  # noqa: S608  # nosec B608  # the column list and its placeholders come from the constant _COLUMNS
        [*(row[c] for c in _COLUMNS), tid],
    )
    return Appended(seq=row["seq"], checksum=row["checksum"], occurred_at=row["occurred_at"])


def app_version() -> str:
    """The version written into an event: the settings' APP_VERSION, or, where the settings
    cannot load (the deploy steps hold the owner URL and nothing else), APP_VERSION from the
    environment or the settings' default."""
    try:
        return get_settings().app_version
    except SettingsError:
        return os.environ.get("APP_VERSION") or str(Settings.model_fields["app_version"].default)


def _append_values(tid: str, actor: Actor, action: str, target_type: str | None, target_id: str | None,
                   before: Any, after: Any, reason: str | None, meta: RequestMeta) -> dict[str, Any]:
    return {
        "tid": tid, "actor_id": actor.id, "actor_name": actor.name, "actor_type": actor.type, "action": action,
        "target_type": target_type, "target_id": None if target_id is None else str(target_id),
        "before": canonical_json(before), "after": canonical_json(after), "reason": reason, "ip": meta.ip,
        "user_agent": meta.user_agent, "session_id": meta.session_id, "request_id": meta.request_id,
        "app_version": app_version(),
    }


def append_statement(
    *,
    tenant_id: str,
    actor: Actor,
    action: str,
    target_type: str | None = None,
    target_id: str | None = None,
    before: Any = None,
    after: Any = None,
    reason: str | None = None,
    meta: RequestMeta | None = None,
) -> tuple[str, dict[str, Any]]:
    """`append(..., commit=True)` as a statement and its values, to go LAST in a
    `db.commit_with(conn, ..., append_statement(...))`: the change's statements, its event and
    the commit in one round trip. Its row: `seq`, `checksum`, `occurred_at`.

    Raises:
        ValueError: `tenant_id` is not a UUID.
    """
    tid = str(uuid.UUID(str(tenant_id)))
    return _APPEND_OR_START, _append_values(tid, actor, action, target_type, target_id, before, after, reason,
                                            meta or RequestMeta())


def record(
    conn: Conn, ctx: RequestContext, action: str, *, tenant_id: str | None = None, **fields: Any
) -> Appended:
    """`append` for an HTTP request: actor and metadata come from the request."""
    actor, meta = context_actor(ctx)
    return append(conn, tenant_id=tenant_id or ctx.tenant_id, actor=actor, action=action, meta=meta, **fields)


# --- reading ------------------------------------------------------------------------------


def _event(row: tuple[Any, ...]) -> dict[str, Any]:
    event = dict(zip(_COLUMNS, row, strict=True))
    for name in JSON_FIELDS:
        if event[name] is not None:
            event[name] = loads_stored(event[name])
    return event


def list_events(
    conn: Conn,
    *,
    after_seq: int = 0,
    limit: int = 100,
    actor_id: str | None = None,
    action: str | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[dict[str, Any]]:
    """Events of the transaction's tenant in seq order, after `after_seq`, filtered."""
    clauses: list[str] = ["seq > %s"]
    params: list[Any] = [after_seq]
    for column, value in (
        ("actor_id", actor_id), ("action", action), ("target_type", target_type), ("target_id", target_id)
    ):
        if value is not None:
            clauses.append(f"{column} = %s")
            params.append(value)
    if since is not None:
        clauses.append("occurred_at >= %s")
        params.append(since)
    if until is not None:
        clauses.append("occurred_at < %s")
        params.append(until)
    params.append(limit)
    with conn.cursor(row_factory=_tuple_row()) as cur:
        cur.execute(f"{_SELECT} where {' and '.join(clauses)} order by seq limit %s", params)
        return [_event(r) for r in cur.fetchall()]


def stream_rows(conn: Conn, batch: int = 2000) -> Iterator[dict[str, Any]]:
    """All rows of the transaction's tenant in seq order, through a server-side cursor
    (bounded memory however long the chain). JSON fields stay canonical text."""
    with conn.cursor(name=f"audit_{uuid.uuid4().hex}", row_factory=_tuple_row()) as cur:
        cur.itersize = batch
        cur.execute(f"{_SELECT} order by seq")
        for row in cur:
            yield dict(zip(_COLUMNS, row, strict=True))


# --- verifying ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointRef:
    """A signed checkpoint already checked for its signature."""

    seq: int
    checksum: str
    created_at: str


@dataclass
class Verification:
    valid: bool
    events_checked: int
    head: dict[str, Any] | None
    checkpoint: dict[str, Any] | None
    first_failure: dict[str, Any] | None
    duration_ms: float
    from_seq: int = 1
    """The first event walked: 1 for a full verify, the checkpoint's seq for an incremental one."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "from_seq": self.from_seq,
            "events_checked": self.events_checked,
            "head": self.head,
            "checkpoint": self.checkpoint,
            "first_failure": self.first_failure,
            "duration_ms": self.duration_ms,
        }


def verify_rows(
    rows: Iterator[dict[str, Any]],
    *,
    tenant_id: str,
    checkpoint: CheckpointRef | None,
    start_seq: int = 1,
) -> Verification:
    """Walk a chain: seq continuity, each previous link, each checksum, and agreement with
    the newest signed checkpoint (which catches a cut tail and a recomputed chain).

    From `start_seq` 1 the first event must link to GENESIS; a walk that starts later (a
    segment from a checkpoint's event on) takes the first event's link as given. Each
    failure carries a stable `code` beside its human `reason`.
    """
    started = time.perf_counter()
    expected_seq, checked = start_seq, 0
    previous: str | None = GENESIS if start_seq == 1 else None
    failure: dict[str, Any] | None = None
    head: dict[str, Any] | None = None
    for row in rows:
        seq = int(row["seq"])
        if seq != expected_seq:
            failure = (
                {"seq": expected_seq, "code": "missing_event", "reason": "missing event"}
                if seq > expected_seq
                else {"seq": expected_seq, "code": "duplicate_event", "reason": "duplicate or reordered event"}
            )
            break
        if row["tenant_id"] != tenant_id:
            failure = {"seq": seq, "code": "foreign_event", "reason": "event of another tenant"}
            break
        if previous is not None and row["previous_checksum"] != previous:
            failure = {"seq": seq, "code": "broken_link", "reason": "previous_checksum does not link to the event before"}
            break
        checksum = row["computed"] if "computed" in row else compute_checksum(row)
        if checksum != row["checksum"]:
            failure = {"seq": seq, "code": "checksum_mismatch", "reason": "checksum does not match the event's content"}
            break
        if checkpoint is not None and seq == checkpoint.seq and checksum != checkpoint.checksum:
            failure = {"seq": seq, "code": "checkpoint_mismatch", "reason": "event differs from the signed checkpoint"}
            break
        checked += 1
        previous = checksum
        expected_seq += 1
        head = {"seq": seq, "checksum": checksum}
    if failure is None and checkpoint is not None and (head is None or head["seq"] < checkpoint.seq):
        failure = {
            "seq": (head["seq"] + 1) if head else start_seq,
            "code": "chain_truncated",
            "reason": f"chain ends before signed checkpoint seq {checkpoint.seq}",
        }
    return Verification(
        valid=failure is None,
        events_checked=checked,
        head=head,
        checkpoint=None if checkpoint is None else {"seq": checkpoint.seq, "created_at": checkpoint.created_at},
        first_failure=failure,
        duration_ms=round((time.perf_counter() - started) * 1000, 2),
        from_seq=start_seq,
    )


def _sql_text(column: str) -> str:
    return f"coalesce(to_json({column})::text, 'null')"


# The canonical form of `canonical_bytes`, built by PostgreSQL: strings through to_json (the
# same escapes as RFC 8785: \" \\ \b \f \n \r \t, other controls as lowercase \u00xx, nothing
# else), `before`/`after` embedded as stored, seq as an integer. A test checks it is
# byte-identical to canonical_bytes on generated rows.
_SQL_CANONICAL = " || ".join([
    """'{"action":' || """ + _sql_text("action"),
    """',"actor_id":' || """ + _sql_text("actor_id"),
    """',"actor_name":' || """ + _sql_text("actor_name"),
    """',"actor_type":' || """ + _sql_text("actor_type"),
    """',"after":' || coalesce(after::text, 'null')""",
    """',"app_version":' || """ + _sql_text("app_version"),
    """',"before":' || coalesce(before::text, 'null')""",
    """',"ip":' || """ + _sql_text("ip"),
    """',"occurred_at":"' || to_char(occurred_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') || '"'""",
    """',"previous_checksum":' || """ + _sql_text("previous_checksum"),
    """',"reason":' || """ + _sql_text("reason"),
    """',"request_id":' || """ + _sql_text("request_id"),
    """',"seq":' || seq::text""",
    """',"session_id":' || """ + _sql_text("session_id"),
    """',"target_id":' || """ + _sql_text("target_id"),
    """',"target_type":' || """ + _sql_text("target_type"),
    """',"tenant_id":' || """ + _sql_text("tenant_id::text"),
    """',"user_agent":' || """ + _sql_text("user_agent"),
    "'}'",
])
SQL_CHECKSUM = f"encode(sha256(convert_to({_SQL_CANONICAL}, 'UTF8')), 'hex')"

_TIME_TEXT = "to_char({} at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"

# `append` in one round trip once the tenant's chain head exists: lock the head, build the
# event beside it, checksum it with SQL_CHECKSUM (the very expression the verifier recomputes,
# byte-identical to canonical_bytes: a test checks both), insert it and move the head. The
# event's time is the clock after the head's lock was granted, as in the two-step form.
_EVENT = f"""event as (
  select %(tid)s::uuid as tenant_id, head.seq + 1 as seq, head.now as occurred_at,
         %(actor_id)s::text as actor_id, %(actor_name)s::text as actor_name, %(actor_type)s::text as actor_type,
         %(action)s::text as action, %(target_type)s::text as target_type, %(target_id)s::text as target_id,
         %(before)s::json as before, %(after)s::json as after, %(reason)s::text as reason, %(ip)s::text as ip,
         %(user_agent)s::text as user_agent, %(session_id)s::text as session_id,
         %(request_id)s::text as request_id, %(app_version)s::text as app_version,
         head.checksum as previous_checksum
    from head
), inserted as (
  insert into audit_events ({', '.join(_COLUMNS)})
  select {', '.join(_COLUMNS[:-1])}, {SQL_CHECKSUM} from event
  returning seq, checksum, occurred_at
)"""  # noqa: S608  # nosec B608  # only module constants (columns, the genesis checksum) are interpolated; values are bound
_APPEND = f"""
with head as (
  select seq, checksum, clock_timestamp() as now from audit_chain_heads where tenant_id = %(tid)s for update
), {_EVENT}
update audit_chain_heads h set seq = inserted.seq, checksum = inserted.checksum
  from inserted where h.tenant_id = %(tid)s
returning inserted.seq, inserted.checksum, {_TIME_TEXT.format('inserted.occurred_at')} as occurred_at"""  # noqa: S608  # nosec B608  # only module constants (columns, the genesis checksum) are interpolated; values are bound

# The same, for an append that commits in its round trip (`commit=True`), where "no row" cannot
# be answered by a second step: a missing head is the genesis head, created by the statement.
# Two first appends of one tenant at once: the second fails on the first's event (a conflict).
_APPEND_OR_START = f"""
with locked as (
  select seq, checksum from audit_chain_heads where tenant_id = %(tid)s for update
), head as (
  select seq, checksum, clock_timestamp() as now from locked
  union all
  select 0, '{GENESIS}', clock_timestamp() where not exists (select 1 from locked)
), {_EVENT}
insert into audit_chain_heads (tenant_id, seq, checksum) select %(tid)s, seq, checksum from inserted
on conflict (tenant_id) do update set seq = excluded.seq, checksum = excluded.checksum
returning seq, checksum, (select {_TIME_TEXT.format('occurred_at')} from inserted) as occurred_at"""  # noqa: S608  # nosec B608  # only module constants (columns, the genesis checksum) are interpolated; values are bound


def stream_checksums(conn: Conn, batch: int = 5000, *, from_seq: int = 1) -> Iterator[dict[str, Any]]:
    """Each event's seq, links and stored checksum with the checksum recomputed by the
    database from the same canonical form: the server-side verifier's fast path (the
    offline verifier recomputes everything itself with the rfc8785 package)."""
    with conn.cursor(name=f"audit_{uuid.uuid4().hex}", row_factory=_tuple_row()) as cur:
        cur.itersize = batch
        cur.execute(
            f"select seq, tenant_id::text, previous_checksum, checksum, {SQL_CHECKSUM} from audit_events"  # noqa: S608  # nosec B608  # only module constants are interpolated; values are bound
            " where seq >= %s order by seq",
            (from_seq,),
        )
        for seq, tenant, previous, checksum, computed in cur:
            yield {"seq": seq, "tenant_id": tenant, "previous_checksum": previous, "checksum": checksum,
                   "computed": computed}


_REASONS = {
    "missing_event": "missing event",
    "duplicate_event": "duplicate or reordered event",
    "foreign_event": "event of another tenant",
    "broken_link": "previous_checksum does not link to the event before",
    "checksum_mismatch": "checksum does not match the event's content",
    "checkpoint_mismatch": "event differs from the signed checkpoint",
}

# One ordered pass over the segment: each event's checksum recomputed from its fields beside
# the seq and checksum of the event before it (lag), so the table is read once and the first
# failing event is the first row. The recomputation sits in its own subquery (OFFSET 0 keeps
# the planner from folding it into the window's projection): that is what lets PostgreSQL
# hash in parallel workers under the Gather, leaving only the ordered window to the leader.
# Comparing each link with the *stored* checksum of the event before is as strict as
# comparing it with the recomputed one for the first failure: every event before it passed
# its checksum check. Rows before `check_from` are read only as the link of the first one
# checked, and a walk whose last event falls short of `end` is missing the next one: both
# matter only to a piece of a parallel verify (see `verify_segment`), since a whole segment
# starts at `check_from` and ends at its last event.
_SQL_SEGMENT = f"""
select seq, tenant_id::text as tenant_id, previous_checksum, prev_seq, prev_checksum, next_seq, bad_checksum, bad_checkpoint
from (
  select seq, tenant_id, previous_checksum, bad_checksum, bad_checkpoint,
         lag(seq) over w as prev_seq, lag(checksum) over w as prev_checksum, lead(seq) over w as next_seq
  from (select seq, tenant_id, previous_checksum, checksum,
               {SQL_CHECKSUM} is distinct from checksum as bad_checksum,
               seq = %(checkpoint_seq)s and {SQL_CHECKSUM} <> %(checkpoint_checksum)s as bad_checkpoint
        from audit_events where seq >= %(start)s and seq <= %(end)s offset 0) recomputed
  window w as (order by seq)
) e
where (seq >= %(check_from)s
       and (seq <> coalesce(prev_seq + 1, %(start)s)
            or tenant_id <> %(tenant)s::uuid
            or previous_checksum <> coalesce(prev_checksum, %(first_link)s, previous_checksum)
            or bad_checksum
            or bad_checkpoint))
   or (next_seq is null and seq < %(end)s)
order by seq limit 1"""  # noqa: S608  # nosec B608  # only module constants are interpolated; values are bound


PARALLEL_MIN_EVENTS = 20_000
"""A segment at least this long is verified in pieces on sibling connections, when the caller
offers them (`verify_tenant` does, for a full verify): below it the extra connections cost
more than they save."""

FULL_VERIFY_CONNECTIONS = 2
"""Connections (so PostgreSQL backends, so cores) a full verify of a long chain uses at most:
its own and one sibling sharing its snapshot (docs/audit.md)."""


def verify_segment(
    conn: Conn,
    *,
    tenant_id: str,
    checkpoint: CheckpointRef | None,
    start_seq: int = 1,
    first_link: str | None = None,
    siblings: Callable[[], AbstractContextManager[list[Conn]]] | None = None,
) -> Verification:
    """`verify_rows` over the transaction tenant's events from `start_seq` on, done by
    PostgreSQL: the same checks and the same first failure, without shipping each event
    to Python. Events appended while it runs are left for the next verify.

    From `start_seq` 1 the first event must link to GENESIS; from a checkpoint's seq the
    checkpoint's event is recomputed from its fields and must equal the signed checksum
    (its own link is covered by that checksum, which hashes `previous_checksum`). After a
    retention cut the walk starts at the cut's seq + 1 and `first_link` is the signed
    checksum of the last removed event, which the first remaining event must link to.

    With `siblings` (transactions seeing exactly what `conn` sees: `db.sibling_txs` of a
    `db.tenant_snapshot_tx`) a segment of PARALLEL_MIN_EVENTS or more is cut into consecutive
    pieces, one per connection, checked at once: each piece also reads the event before it,
    as the link of its first event, and the first failure is the first piece's that has one.
    """
    started = time.perf_counter()
    tid = normal_tenant_id(tenant_id)
    last = conn.execute("select seq, checksum from audit_events order by seq desc limit 1").fetchone()
    end = int(last["seq"]) if last else 0
    in_range = checkpoint is not None and start_seq <= checkpoint.seq <= end
    # A walk from a retention cut's base reaches the cut even when no event remains after it.
    reached_before = start_seq - 1 if first_link is not None else 0
    if first_link is None and start_seq == 1:
        first_link = GENESIS
    params = {
        "start": start_seq, "check_from": start_seq, "end": end, "tenant": tid, "first_link": first_link,
        # seq 0 matches no event: a NULL here would make every row evaluate the AND's right side.
        "checkpoint_seq": checkpoint.seq if checkpoint is not None and in_range else 0,
        "checkpoint_checksum": checkpoint.checksum if checkpoint is not None and in_range else "",
    }
    found: tuple[int, str] | None = None
    if end >= start_seq:
        if siblings is not None and end - start_seq + 1 >= PARALLEL_MIN_EVENTS:
            with siblings() as others:
                found = _segment_in_pieces([conn, *others], params)
        else:
            found = _first_failure(conn.execute(_SQL_SEGMENT, params).fetchone(), params)
    failure: dict[str, Any] | None = None
    if found is not None:
        seq, code = found
        failure = {"seq": seq, "code": code, "reason": _REASONS[code]}
    elif checkpoint is not None and max(end, reached_before) < checkpoint.seq:
        failure = {"seq": max(end, reached_before) + 1, "code": "chain_truncated",
                   "reason": f"chain ends before signed checkpoint seq {checkpoint.seq}"}
    # Every event before the first failure passed, so the walk's head is the one before it.
    head_seq = end if failure is None else min(failure["seq"] - 1, end)
    head: dict[str, Any] | None = None
    if head_seq >= start_seq:
        if last is not None and head_seq == end:
            head = {"seq": end, "checksum": last["checksum"]}
        else:
            row = conn.execute("select checksum from audit_events where seq = %s", (head_seq,)).fetchone()
            head = {"seq": head_seq, "checksum": row["checksum"]} if row else None
    return Verification(
        valid=failure is None,
        events_checked=max(0, head_seq - start_seq + 1),
        head=head,
        checkpoint=None if checkpoint is None else {"seq": checkpoint.seq, "created_at": checkpoint.created_at},
        first_failure=failure,
        duration_ms=round((time.perf_counter() - started) * 1000, 2),
        from_seq=start_seq,
    )


def _segment_in_pieces(conns: list[Conn], params: dict[str, Any]) -> tuple[int, str] | None:
    """The first failure of `_SQL_SEGMENT` over [start, end], walked in consecutive pieces,
    one per connection, all at once (each statement waits on its own backend, so the threads
    hold no lock meanwhile).

    A piece after the first starts one event early: that event is the link of the piece's
    first, and is checked by the piece before. A piece also fails when its last event falls
    short of its end (the events after it are missing). Every piece's failures come after the
    failures of the pieces before, so the first failure is the first piece's that has one. An
    empty piece after a piece with events is therefore reported by that piece; only an empty
    first piece needs a look of its own (its first event is missing)."""
    from concurrent.futures import ThreadPoolExecutor

    start, end, n = params["start"], params["end"], len(conns)
    bounds = [start + (end - start + 1) * i // n for i in range(n)]
    pieces = [
        {**params, "start": lo if i == 0 else lo - 1, "check_from": lo, "first_link": params["first_link"] if i == 0 else None,
         "end": (bounds[i + 1] - 1) if i + 1 < n else end}
        for i, lo in enumerate(bounds)
    ]

    def run(conn: Conn, piece: dict[str, Any]) -> tuple[int, str] | None:
        conn.execute("set local max_parallel_workers_per_gather = 0")  # one core per piece, not more
        found = _first_failure(conn.execute(_SQL_SEGMENT, piece).fetchone(), piece)
        if found is None and piece is pieces[0] and conn.execute(
                "select 1 from audit_events where seq >= %s and seq <= %s limit 1", (piece["start"], piece["end"])).fetchone() is None:
            found = (piece["start"], "missing_event")  # nothing at all in the first piece
        return found

    with ThreadPoolExecutor(max_workers=max(1, n - 1), thread_name_prefix="audit-verify") as pool:
        others = [pool.submit(run, c, p) for c, p in zip(conns[1:], pieces[1:], strict=True)]
        first = run(conns[0], pieces[0])
        return next((f for f in (first, *(o.result() for o in others)) if f is not None), None)


def _first_failure(bad: Any, walk: dict[str, Any]) -> tuple[int, str] | None:
    """The failure `_SQL_SEGMENT`'s row `bad` stands for in the walk `walk` (its parameters),
    in the walk's order of checks on one event: seq, tenant, link, checksum, checkpoint; then,
    for the last event of a piece, that the events after it up to the piece's end are missing."""
    if bad is None:
        return None
    seq = int(bad["seq"])
    if seq >= walk["check_from"]:
        expected = int(bad["prev_seq"]) + 1 if bad["prev_seq"] is not None else walk["start"]
        if seq != expected:
            return (expected, "missing_event" if seq > expected else "duplicate_event")
        if bad["tenant_id"] != walk["tenant"]:
            return (seq, "foreign_event")
        if bad["previous_checksum"] != (bad["prev_checksum"] or walk["first_link"] or bad["previous_checksum"]):
            return (seq, "broken_link")
        if bad["bad_checksum"]:
            return (seq, "checksum_mismatch")
        if bad["bad_checkpoint"]:
            return (seq, "checkpoint_mismatch")
    return (seq + 1, "missing_event")  # the last event read, short of the walk's end


@dataclass(frozen=True)
class Base:
    """Where a tenant's chain begins: after `seq`, linking to `checksum`. GENESIS_BASE for a
    chain that was never cut; after a retention cut, the signed retention checkpoint's seq
    and the checksum of the last removed event."""

    seq: int
    checksum: str


GENESIS_BASE = Base(seq=0, checksum=GENESIS)


def verify_tenant(
    tenant_id: str,
    checkpoint: CheckpointRef | None,
    *,
    full: bool = True,
    stale_after: timedelta | None = None,
    now: datetime | None = None,
    base: Base = GENESIS_BASE,
) -> Verification:
    """Verify a tenant's chain from the database against its newest signed checkpoint.

    `full` walks every event from `base` (event 1 unless a retention cut removed the oldest);
    otherwise the walk starts at the checkpoint's event, or at the base when the cut removed
    that event (docs/audit.md says what that proves and what only the full walk catches). With
    `stale_after`, a sound chain whose oldest event not covered by `checkpoint` occurred
    more than `stale_after` before `now` (default: the database clock) fails as
    `checkpoint_stale`: checkpoints stopped, and the uncovered tail could be cut unnoticed.
    """
    tid = normal_tenant_id(tenant_id)
    incremental = not full and checkpoint is not None and checkpoint.seq > base.seq
    start = checkpoint.seq if incremental and checkpoint is not None else base.seq + 1
    # One snapshot for the whole walk, which a long chain's pieces share on sibling connections.
    with db.tenant_snapshot_tx(tid) as conn:
        result = verify_segment(conn, tenant_id=tid, checkpoint=checkpoint, start_seq=start,
                                first_link=None if incremental else base.checksum,
                                siblings=lambda: db.sibling_txs(conn, tid, FULL_VERIFY_CONNECTIONS - 1))
        if result.valid and stale_after is not None:
            covered = checkpoint.seq if checkpoint else 0
            oldest = conn.execute(
                "select seq, occurred_at, now() as db_now from audit_events where seq > %s order by seq limit 1",
                (covered,),
            ).fetchone()
            if oldest is not None and oldest["occurred_at"] < (now or oldest["db_now"]) - stale_after:
                result.valid = False
                result.first_failure = {
                    "seq": int(oldest["seq"]),
                    "code": "checkpoint_stale",
                    "reason": f"events since {format_time(oldest['occurred_at'])} are not covered by a signed "
                    f"checkpoint (allowed: {int(stale_after.total_seconds())} s)",
                }
        return result


def verify_tenant_streaming(tenant_id: str, checkpoint: CheckpointRef | None) -> Verification:
    """The full verify as it was before `verify_segment`: every event's recomputed checksum
    streamed to Python and walked there. Kept as the benchmark's same-run baseline and as an
    independent cross-check in tests."""
    tid = normal_tenant_id(tenant_id)
    with db.tenant_tx(tid) as conn:
        return verify_rows(stream_checksums(conn), tenant_id=tid, checkpoint=checkpoint)
