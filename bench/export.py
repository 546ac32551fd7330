"""How fast a tenant export runs and how much memory it holds, at two sizes.

`python -m bench.export [--sizes 10000,100000]`

For each size, one tenant with that many records (each with one version, a payload of a few
fields, and one audit event per record), bulk-loaded once and kept (slug `bench-export-<n>`);
later runs reuse it. Measured:

* `write_export`: the whole export (one REPEATABLE READ snapshot, every tenant table to CSV,
  JSONL and JSON Schema in Azurite as staged blocks, the signed manifest), in process, no
  queue: records/s and seconds (the numbers);
* its peak Python heap (tracemalloc, a second run, since tracing slows the code) and the
  process's peak RSS growth: the aim is a flat peak, about the same at both sizes;
* the baseline, same run: `copy (select ... from record_versions) to stdout` of the same
  tenant's versions, read and discarded in chunks (how fast PostgreSQL alone hands the
  rows over).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc
import uuid
from collections.abc import Sequence

from bench.runner import Table, machine, migrate, setup_env

#: The peak heap of the larger size may be at most this many times the smaller's (flat, with noise).
AIM_FLAT = 1.5


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.export", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="records per tenant, comma-separated (default 10000,100000)")
    args = parser.parse_args(argv)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error("--sizes must be integers")
    if not args.sizes or min(args.sizes) < 1:
        parser.error("--sizes must be positive")
    return args


def tenant_with_records(n: int) -> str:
    """The kept tenant `bench-export-<n>` with n records (built once)."""
    from shared.audit import chain as audit
    from shared.core import db
    from shared.records.records import ensure_builtin_types
    from shared.tenancy.tenants import create_tenant

    slug = f"bench-export-{n}"
    with db.platform_tx() as conn:
        row = conn.execute("select id::text as id from tenants where slug = %s", (slug,)).fetchone()
        tenant_id = row["id"] if row else create_tenant(conn, slug=slug, name=f"Bench export {n}", region="uksouth").id
    with db.tenant_tx(tenant_id) as conn:
        have = conn.execute("select count(*) as n from records").fetchone()
        if not have or int(have["n"]) < n:
            ensure_builtin_types(conn, tenant_id)
            author = str(uuid.uuid4())
            conn.execute(
                """insert into records (tenant_id, type_id, status, current_version, created_by)
                   select %(t)s, (select id from record_types where name = 'document'), 'DRAFT', 1, %(a)s
                     from generate_series(1, %(n)s)""",
                {"t": tenant_id, "a": author, "n": n},
            )
            conn.execute(
                """insert into record_versions (tenant_id, record_id, version, schema_version, payload, checksum,
                                                created_by, created_by_name, created_tz)
                   select %(t)s, r.id, 1, 1,
                          json_build_object('title', 'SOP ' || r.id, 'document_number', left(r.id::text, 8),
                                            'body', repeat('Lorem ipsum dolor sit amet. ', 8)),
                          encode(sha256(r.id::text::bytea), 'hex'), %(a)s, 'Bench Author', 'UTC'
                     from records r""",
                {"t": tenant_id, "a": author},
            )
        events = conn.execute("select count(*) as n from audit_events where action = 'record.created'").fetchone()
    missing = n - int(events["n"] if events else 0)
    for start in range(0, missing, 5000):  # one audit event per record, through the real append, in batches
        with db.tenant_tx(tenant_id) as conn:
            for _ in range(min(5000, missing - start)):
                audit.append(conn, tenant_id=tenant_id, actor=audit.SYSTEM, action="record.created",
                             target_type="record", target_id=str(uuid.uuid4()), after={"title": "bench"})
    return str(tenant_id)


def copy_baseline(tenant_id: str) -> float:
    """Seconds to stream the tenant's record_versions out of PostgreSQL with COPY."""
    from shared.core import db

    started = time.perf_counter()
    with db.tenant_tx(tenant_id) as conn, conn.cursor().copy(
        "copy (select * from record_versions order by record_id, version) to stdout"
    ) as copy:
        for _ in copy:
            pass
    return time.perf_counter() - started


def run_export(tenant_id: str, *, trace: bool) -> tuple[float, int]:
    """(seconds, peak traced bytes) of one export."""
    from shared.lifecycle import export

    if trace:
        tracemalloc.start()
    started = time.perf_counter()
    export.write_export(tenant_id, str(uuid.uuid4()))
    elapsed = time.perf_counter() - started
    peak = 0
    if trace:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return elapsed, peak


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_env()
    migrate()
    print(f"## Tenant export ({machine()})\n", flush=True)
    table = Table(["records", "export s", "records/s", "peak heap MiB", "RSS growth MiB", "COPY baseline rec/s",
                   "export / COPY"], digits=2)
    peaks: list[int] = []
    for n in args.sizes:
        tenant_id = tenant_with_records(n)
        run_export(tenant_id, trace=False)  # warm: imports, clients, containers
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        elapsed, _ = run_export(tenant_id, trace=False)
        rss_growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
        _, peak = run_export(tenant_id, trace=True)
        peaks.append(peak)
        baseline = copy_baseline(tenant_id)
        table.add(n, elapsed, n / elapsed, peak / 2**20, rss_growth, n / baseline, (n / elapsed) / (n / baseline))
    table.print()
    flat = max(peaks) <= AIM_FLAT * min(peaks)
    print(f"\nAim: peak heap flat across sizes (largest <= {AIM_FLAT} x smallest): "
          f"{'met' if flat else 'NOT met'} ({max(peaks) / 2**20:.1f} vs {min(peaks) / 2**20:.1f} MiB).")
    print("RSS growth is the rise of the process's high-water mark during the untraced run (0: no new peak).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
