"""How fast a tenant's audit chain verifies: full, against the previous implementation in the
same run, and incremental from a signed checkpoint on a long chain.

`python -m bench.audit_verify [--events 100000] [--repeats 3] [--incremental-events 1000000] [--appended 1000]`

Full verify. One tenant with `--events` events, correctly chained, bulk-loaded once and kept
(slug `bench-verify-100k` for 100,000 events, `bench-verify-<n>` otherwise); later runs reuse
it after checking it is complete and verifies. Measured, each the median of `--repeats`:

* `verify_tenant(full)`: the verifier, links and recomputed checksums checked inside
  PostgreSQL, a chain this long in pieces on sibling connections sharing one snapshot
  (docs/audit.md) (the number);
* the baseline, same run: `verify_tenant_streaming`, the previous implementation (every
  event's recomputed checksum streamed to Python and walked there);
* beside them, so a reader sees where the time goes: SHA-256 alone over every event's
  canonical bytes, building those bytes, the chain walk in memory, reading the rows alone.

Incremental verify. One tenant with `--incremental-events` events (slug
`bench-verify-inc-<n>`, built once and kept; it grows by `--appended` each run). Each run
signs a checkpoint of its head, appends `--appended` events, then times
`checkpoints.verify_tenant` (newest signed checkpoint from blob storage, its signature, its
event recomputed, every event after it): the number. Baseline, same run: a full verify of the
same chain.

Aims (issue 12): full verify at least 2x the previous implementation's events/s; the
incremental verify of 1,000 new events on a 1,000,000-event chain under 0.2 s. The output says
whether this run met them.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.runner import Table, machine, migrate, setup_env

AIM_SPEEDUP = 2.0
AIM_INCREMENTAL_S = 0.2
ACTIONS = ("item.created", "item.updated", "user.role_changed", "setting.changed", "export.downloaded", "item.archived")
NAMES = ("Ada Lovelace", "Zoë Ångström", "Łukasz Żółw", "Grace Hopper", "Ólafur Þór", "李小龙", "José Núñez", "Amélie \"Mel\" Poulain")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.audit_verify", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="events in the chain (default 100000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each measurement; the median is shown (default 3)")
    parser.add_argument("--incremental-events", type=int, default=1_000_000,
                        help="events in the long chain of the incremental verify (default 1000000; 0 skips it)")
    parser.add_argument("--appended", type=int, default=1000, help="events appended after its checkpoint (default 1000)")
    args = parser.parse_args(argv)
    if args.events < 2:
        parser.error("--events must be at least 2")
    if args.incremental_events and (args.incremental_events < 2 or args.appended < 1):
        parser.error("--incremental-events must be 0 or at least 2, --appended at least 1")
    return args


def marker_slug(events: int, kind: str = "") -> str:
    return f"bench-verify-{kind}" + (f"{events // 1000}k" if events % 1000 == 0 else str(events))


# ----------------------------------------------------------------------------- the chain


def synthetic_events(
    tenant_id: str, head_seq: int, head_checksum: str, events: int, start: datetime | None = None
) -> Iterator[dict[str, Any]]:
    """Events head_seq+1..events, chained onto the head, as `audit.append` would write them
    (generated one by one: a million of them do not fit comfortably in memory)."""
    from shared.audit import chain as audit
    from shared.core.settings import get_settings

    version = get_settings().app_version
    actors = [(str(uuid.uuid4()), NAMES[i % len(NAMES)]) for i in range(24)]
    sessions = [str(uuid.uuid4()) for _ in range(64)]
    agent = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"
    start = start or datetime.now(UTC) - timedelta(days=30)
    previous = head_checksum
    for seq in range(head_seq + 1, events + 1):
        i = seq - head_seq
        actor_id, actor_name = actors[i % len(actors)]
        action = ACTIONS[i % len(ACTIONS)]
        created = action == "item.created"
        row: dict[str, Any] = {
            "tenant_id": tenant_id,
            "seq": seq,
            "occurred_at": audit.format_time(start + timedelta(microseconds=25_013 * i)),
            "actor_id": actor_id,
            "actor_name": actor_name,
            "actor_type": "user",
            "action": action,
            "target_type": "item",
            "target_id": f"item-{i % 5000}",
            "before": None if created else audit.canonical_json(
                {"title": f"Item {i % 5000}", "owner": actor_name, "tags": ["a", "b"], "count": i - 1, "ok": True}),
            "after": audit.canonical_json(
                {"title": f"Item {i % 5000} (rev)", "owner": actor_name, "tags": ["a", "b", "ç"], "count": i, "price": 12.5}),
            "reason": None if i % 3 else "bulk edit requested by the owner",
            "ip": f"10.0.{i % 250}.{i % 199 + 1}",
            "user_agent": agent,
            "session_id": sessions[i % len(sessions)],
            "request_id": str(uuid.uuid4()),
            "app_version": version,
            "previous_checksum": previous,
        }
        row["checksum"] = previous = audit.compute_checksum(row)
        yield row


def find_tenant(slug: str) -> str | None:
    from shared.core import db

    with db.platform_tx() as conn:
        row = conn.execute("select id::text as id from tenants where slug = %s", (slug,)).fetchone()
    return row["id"] if row else None


def head_seq(tenant_id: str) -> int:
    from shared.core import db

    with db.tenant_tx(tenant_id) as conn:
        row = conn.execute("select seq from audit_chain_heads where tenant_id = %s", (tenant_id,)).fetchone()
    return int(row["seq"]) if row else 0


def retire(tenant_id: str, slug: str) -> None:
    """Move an unusable marker tenant out of the way (tenants and events are never deleted)."""
    import psycopg

    from shared.core.settings import get_settings

    with psycopg.connect(get_settings().database_owner_url) as conn:
        conn.execute("update tenants set slug = %s where id = %s", (f"{slug}-bad-{uuid.uuid4().hex[:8]}", tenant_id))


def bulk_append(tenant_id: str, events: int, start: datetime | None = None) -> int:
    """Chain synthetic events onto the tenant's head up to seq `events` (timed from `start`,
    default 30 days ago), in one transaction as the owner role; returns the new head seq."""
    import psycopg

    from shared.audit import chain as audit
    from shared.audit.chain import _COLUMNS as COLUMNS
    from shared.core.settings import get_settings

    with psycopg.connect(get_settings().database_owner_url) as conn:  # one transaction: all or nothing
        # The owner has row-level security forced on it too: set the tenant for the session.
        conn.execute("select set_config('app.tenant_id', %s, false)", (tenant_id,))
        seq, checksum = conn.execute(
            "select seq, checksum from audit_chain_heads where tenant_id = %s for update", (tenant_id,)
        ).fetchone() or (0, audit.GENESIS)
        last: dict[str, Any] | None = None
        # COPY cannot write into a table with row-level security: stage, then INSERT ... SELECT.
        conn.execute("create temp table audit_stage (like audit_events) on commit drop")
        with conn.cursor().copy(f"copy audit_stage ({', '.join(COLUMNS)}) from stdin") as copy:
            for last in synthetic_events(tenant_id, int(seq), str(checksum), events, start):
                copy.write_row([last[c] for c in COLUMNS])
        if last is None:
            return int(seq)
        conn.execute(f"insert into audit_events ({', '.join(COLUMNS)}) select {', '.join(COLUMNS)} from audit_stage order by seq")  # noqa: S608  # nosec B608  # only the constant COLUMNS is interpolated
        conn.execute(
            "update audit_chain_heads set seq = %s, checksum = %s where tenant_id = %s",
            (last["seq"], last["checksum"], tenant_id),
        )
    with psycopg.connect(get_settings().database_owner_url, autocommit=True) as conn:
        # Fresh statistics, as autovacuum would leave them after a while: without them the
        # planner may scan the whole table for a 1,000-event range right after a bulk load.
        conn.execute("analyze audit_events")
    return int(last["seq"])


def build(slug: str, events: int) -> str:
    """A tenant with `events` chained events, published under `slug` only once complete."""
    import psycopg

    from shared.core import db
    from shared.core.settings import get_settings
    from shared.tenancy.tenants import create_tenant

    with db.platform_tx() as conn:  # event 1, tenant.created, written by the app as usual
        tenant = create_tenant(conn, slug=f"bench-tmp-{uuid.uuid4().hex[:12]}", name="Bench Verify", region="uksouth")
    bulk_append(tenant.id, events)
    with psycopg.connect(get_settings().database_owner_url) as conn:
        conn.execute("update tenants set slug = %s, name = %s where id = %s", (slug, f"Bench Verify {events}", tenant.id))
    return tenant.id


def ensure_chain(events: int, kind: str = "", *, grows: bool = False) -> tuple[str, str]:
    """(tenant id, how it was obtained); the chain holds `events` events (at least, if it
    `grows` run by run) and verifies in full."""
    import psycopg

    from shared.audit import chain as audit

    slug = marker_slug(events, kind)
    for _ in range(2):
        tid = find_tenant(slug)
        how = "reused"
        if tid is None:
            started = time.perf_counter()
            try:
                tid = build(slug, events)
            except psycopg.errors.UniqueViolation:  # a concurrent run published it first
                continue
            how = f"built in {time.perf_counter() - started:.1f} s"
        seq = head_seq(tid)
        complete = seq >= events if grows else seq == events
        check = audit.verify_tenant(tid, None) if complete else None  # also warms the caches
        if check is not None and check.valid and check.events_checked == seq:
            return tid, how
        print(f"tenant {slug} is unusable (head {seq}, {check.first_failure if check else 'incomplete'}): rebuilding", flush=True)
        retire(tid, slug)
    raise SystemExit(f"could not get a valid {slug} chain")


# ----------------------------------------------------------------------------- measuring


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median seconds over `repeats` calls of fn, and the last result."""
    samples, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples), result


def full_verify(args: argparse.Namespace) -> bool:
    """The full verify against the previous implementation; True if the chain verified."""
    from shared.audit import chain as audit
    from shared.core import db

    tid, how = ensure_chain(args.events)
    n = args.events
    print(f"Tenant {marker_slug(n)} ({tid}): {n:,} events, {how}; checked valid before timing.\n", flush=True)

    def read_rows() -> list[dict[str, Any]]:
        with db.tenant_tx(tid) as conn:
            return list(audit.stream_rows(conn))

    # Alternated, so drift on a shared machine affects both alike.
    verify_samples: list[float] = []
    old_samples: list[float] = []
    result = old = None
    for _ in range(args.repeats):
        seconds, result = timed(lambda: audit.verify_tenant(tid, None, full=True), 1)
        verify_samples.append(seconds)
        seconds, old = timed(lambda: audit.verify_tenant_streaming(tid, None), 1)
        old_samples.append(seconds)
    verify_s, old_s = statistics.median(verify_samples), statistics.median(old_samples)
    read_s, rows = timed(read_rows, args.repeats)
    canon_s, blobs = timed(lambda: [audit.canonical_bytes(r) for r in rows], args.repeats)
    sha_s, _ = timed(lambda: [hashlib.sha256(b).hexdigest() for b in blobs], args.repeats)
    walk_s, walked = timed(lambda: audit.verify_rows(iter(rows), tenant_id=tid, checkpoint=None), args.repeats)
    assert result is not None and old is not None  # noqa: S101  # nosec B101  # narrows types for mypy after timed() ran both
    if not (result.valid and old.valid and walked.valid and result.events_checked == n == len(rows)):
        print(f"the chain did not verify: {result.first_failure or old.first_failure or walked.first_failure}", file=sys.stderr)
        return False

    old_rate = n / old_s
    table = Table(["step", "events", "ms", "events/s", "x previous verify", "x sha256 rate"],
                  title=f"Full verify of {n:,} events (median of {args.repeats}); mean canonical size "
                        f"{sum(map(len, blobs)) / n:.0f} bytes")
    for name, seconds in (
        ("verify_tenant_streaming: previous implementation (baseline)", old_s),
        ("verify_tenant(full=True): checks in PostgreSQL (the number)", verify_s),
        ("sha256 alone, precomputed canonical bytes", sha_s),
        ("canonical_bytes alone, rows in memory", canon_s),
        ("verify_rows, rows in memory (whole chain walk)", walk_s),
        ("stream_rows alone (PostgreSQL -> dicts, no checks)", read_s),
    ):
        table.add(name, n, seconds * 1000, n / seconds, (n / seconds) / old_rate, (n / seconds) / (n / sha_s))
    table.print()
    speedup = old_s / verify_s
    print(f"Full verify: {n / verify_s:,.0f} events/s, {speedup:.2f} x the previous implementation's "
          f"{old_rate:,.0f} in this run (aim >= {AIM_SPEEDUP:.1f} x): {'met' if speedup >= AIM_SPEEDUP else 'NOT met'}; "
          f"{(n / verify_s) / (n / sha_s):.3f} x the sha256-alone rate.\n", flush=True)
    return True


def incremental_verify(args: argparse.Namespace) -> bool:
    """The incremental verify of `--appended` events on the long chain; True if it verified."""
    from shared.audit import checkpoints

    n = args.incremental_events
    tid, how = ensure_chain(n, "inc-", grows=True)
    checkpoints.checkpoint_tenant(tid)  # the head as it stands, signed (a no-op if already signed)
    newest = checkpoints.newest_signed(tid).ref
    if newest is None or newest.seq != head_seq(tid):
        print(f"tenant {marker_slug(n, 'inc-')}: its head could not be checkpointed", file=sys.stderr)
        return False
    # Dated now: events older than two checkpoint intervals and not covered would fail as stale.
    head = bulk_append(tid, newest.seq + args.appended, datetime.now(UTC))
    print(f"Tenant {marker_slug(n, 'inc-')} ({tid}): {how}; signed checkpoint at seq {newest.seq:,}, then "
          f"{args.appended:,} events appended (head {head:,}).\n", flush=True)
    inc_s, inc = timed(lambda: checkpoints.verify_tenant(tid), args.repeats)
    full_s, full = timed(lambda: checkpoints.verify_tenant(tid, full=True), 1)
    if not (inc.valid and full.valid and inc.events_checked == args.appended + 1 and full.events_checked == head):
        print(f"the chain did not verify: {inc.first_failure or full.first_failure}", file=sys.stderr)
        return False
    table = Table(["verify", "from seq", "events walked", "ms", "events/s"],
                  title=f"Verifying a {head:,}-event chain with {args.appended:,} events after its newest signed checkpoint")
    table.add("full (baseline, one run)", full.from_seq, full.events_checked, full_s * 1000, full.events_checked / full_s)
    table.add(f"incremental (the number, median of {args.repeats})", inc.from_seq, inc.events_checked, inc_s * 1000,
              inc.events_checked / inc_s)
    table.print()
    print(f"Incremental verify: {inc_s * 1000:.0f} ms, {full_s / inc_s:.0f} x faster than the full verify of the same "
          f"chain (aim < {AIM_INCREMENTAL_S * 1000:.0f} ms): {'met' if inc_s < AIM_INCREMENTAL_S else 'NOT met'}.\n",
          flush=True)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_env()
    migrate()
    print(f"## Audit chain verification ({machine()})\n", flush=True)
    ok = full_verify(args)
    if ok and args.incremental_events:
        ok = incremental_verify(args)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
