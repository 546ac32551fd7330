"""How fast a tenant's audit chain verifies, against hashing the same bytes alone.

`python -m bench.audit_verify [--events 100000] [--repeats 3]`

The chain: one tenant with `--events` events, correctly chained, bulk-loaded once and kept
(slug `bench-verify-100k` for 100,000 events, `bench-verify-<n>` otherwise); later runs reuse
it after checking it is complete and verifies. Measured, each the median of `--repeats`:

* `verify_tenant`: the real verifier, streaming the chain out of PostgreSQL (the number);
* the baseline, same run: SHA-256 alone over every event's canonical bytes, precomputed;
* in between, so a reader sees where the time goes: building the canonical bytes, the
  checksums over rows in memory, the whole chain walk in memory, and reading the rows alone.

Aim (docs): verify_tenant at least 0.30 of the SHA-256-alone rate; the output says whether
this run met it.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.runner import Table, machine, migrate, setup_env

AIM_RATIO = 0.30
ACTIONS = ("item.created", "item.updated", "user.role_changed", "setting.changed", "export.downloaded", "item.archived")
NAMES = ("Ada Lovelace", "Zoë Ångström", "Łukasz Żółw", "Grace Hopper", "Ólafur Þór", "李小龙", "José Núñez", "Amélie \"Mel\" Poulain")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.audit_verify", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="events in the chain (default 100000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each measurement; the median is shown (default 3)")
    args = parser.parse_args(argv)
    if args.events < 2:
        parser.error("--events must be at least 2")
    return args


def marker_slug(events: int) -> str:
    return "bench-verify-" + (f"{events // 1000}k" if events % 1000 == 0 else str(events))


# ----------------------------------------------------------------------------- the chain


def synthetic_events(tenant_id: str, head_seq: int, head_checksum: str, events: int) -> list[dict[str, Any]]:
    """Events head_seq+1..events, chained onto the head, as `audit.append` would write them."""
    from shared.audit import chain as audit
    from shared.core.settings import get_settings

    version = get_settings().app_version
    actors = [(str(uuid.uuid4()), NAMES[i % len(NAMES)]) for i in range(24)]
    sessions = [str(uuid.uuid4()) for _ in range(64)]
    agent = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"
    start = datetime.now(UTC) - timedelta(days=30)
    previous, rows = head_checksum, []
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
        rows.append(row)
    return rows


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


def build(slug: str, events: int) -> str:
    """A tenant with `events` chained events, published under `slug` only once complete."""
    import psycopg

    from shared.audit import chain as audit
    from shared.audit.chain import _COLUMNS as COLUMNS
    from shared.core import db
    from shared.core.settings import get_settings
    from shared.tenancy.tenants import create_tenant

    with db.platform_tx() as conn:  # event 1, tenant.created, written by the app as usual
        tenant = create_tenant(conn, slug=f"bench-tmp-{uuid.uuid4().hex[:12]}", name="Bench Verify", region="uksouth")
    with psycopg.connect(get_settings().database_owner_url) as conn:  # one transaction: all or nothing
        # The owner has row-level security forced on it too: set the tenant for the session.
        conn.execute("select set_config('app.tenant_id', %s, false)", (tenant.id,))
        seq, checksum = conn.execute(
            "select seq, checksum from audit_chain_heads where tenant_id = %s for update", (tenant.id,)
        ).fetchone() or (0, audit.GENESIS)
        rows = synthetic_events(tenant.id, int(seq), str(checksum), events)
        # COPY cannot write into a table with row-level security: stage, then INSERT ... SELECT.
        conn.execute("create temp table audit_stage (like audit_events) on commit drop")
        with conn.cursor().copy(f"copy audit_stage ({', '.join(COLUMNS)}) from stdin") as copy:
            for row in rows:
                copy.write_row([row[c] for c in COLUMNS])
        conn.execute(f"insert into audit_events ({', '.join(COLUMNS)}) select {', '.join(COLUMNS)} from audit_stage order by seq")
        conn.execute(
            "update audit_chain_heads set seq = %s, checksum = %s where tenant_id = %s",
            (rows[-1]["seq"], rows[-1]["checksum"], tenant.id),
        )
        conn.execute("update tenants set slug = %s, name = %s where id = %s", (slug, f"Bench Verify {events}", tenant.id))
    return tenant.id


def ensure_chain(events: int) -> tuple[str, str]:
    """(tenant id, how it was obtained); the chain is complete and verifies."""
    import psycopg

    from shared.audit import chain as audit

    slug = marker_slug(events)
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
        check = audit.verify_tenant(tid, None) if seq == events else None  # also warms the caches
        if check is not None and check.valid and check.events_checked == events:
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


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_env()
    migrate()
    from shared.audit import chain as audit
    from shared.core import db

    tid, how = ensure_chain(args.events)
    n = args.events
    print(f"## Audit chain verification ({machine()})\n", flush=True)
    print(f"Tenant {marker_slug(n)} ({tid}): {n:,} events, {how}; checked valid before timing.\n", flush=True)

    def read_rows() -> list[dict[str, Any]]:
        with db.tenant_tx(tid) as conn:
            return list(audit.stream_rows(conn))

    def verify() -> audit.Verification:
        return audit.verify_tenant(tid, None)

    verify_s, result = timed(verify, args.repeats)
    read_s, rows = timed(read_rows, args.repeats)
    canon_s, blobs = timed(lambda: [audit.canonical_bytes(r) for r in rows], args.repeats)
    sha_s, _ = timed(lambda: [hashlib.sha256(b).hexdigest() for b in blobs], args.repeats)
    checksum_s, _ = timed(lambda: [audit.compute_checksum(r) for r in rows], args.repeats)
    walk_s, walked = timed(lambda: audit.verify_rows(iter(rows), tenant_id=tid, checkpoint=None), args.repeats)
    if not (result.valid and walked.valid and result.events_checked == n == len(rows)):
        print(f"the chain did not verify: {result.first_failure or walked.first_failure}", file=sys.stderr)
        return 1

    sha_rate = n / sha_s
    table = Table(["step", "events", "ms", "events/s", "x sha256 rate"],
                  title=f"Verifying {n:,} events (median of {args.repeats}); mean canonical size {sum(map(len, blobs)) / n:.0f} bytes")
    for name, seconds in (
        ("sha256 alone, precomputed canonical bytes (baseline)", sha_s),
        ("canonical_bytes alone, rows in memory", canon_s),
        ("compute_checksum, rows in memory", checksum_s),
        ("verify_rows, rows in memory (whole chain walk)", walk_s),
        ("stream_rows alone (PostgreSQL -> dicts, no checks)", read_s),
        ("verify_tenant, end to end (the number)", verify_s),
    ):
        table.add(name, n, seconds * 1000, n / seconds, (n / seconds) / sha_rate)
    table.print()
    ratio = (n / verify_s) / sha_rate
    print(f"verify_tenant / sha256-alone rate: {ratio:.3f} (aim >= {AIM_RATIO:.2f}): {'met' if ratio >= AIM_RATIO else 'NOT met'}.")
    print(f"Of verify_tenant's {verify_s * 1000:.0f} ms: reading rows ~{read_s / verify_s:.0%}, "
          f"checking in memory ~{walk_s / verify_s:.0%} (canonical bytes ~{canon_s / verify_s:.0%}, sha256 ~{sha_s / verify_s:.0%}).\n",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
