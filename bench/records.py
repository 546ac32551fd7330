"""Record create and read through the host with the full wrapper, against the bare route.

`python -m bench.records [--threads 4] [--requests 500] [--rounds 2]`

Two devhosts run in the same process tree: one serves the real `function_app:app`, the
other `bench.bench_app:app` (the foundation benchmark's bare route, `/bench/bare`: the same
HTTP stack and no wrapper, no database). A fresh tenant, an active OPERATOR user and a live
session give the bearer token (`tests.conftest.token_for`). Then, with the same closed-loop
load (`--threads` keep-alive clients, `--requests` requests each per route, after a
warm-up, in `--rounds` alternating rounds so drift hits every route alike), in this order:

* `GET /bench/bare` on the other devhost (200);
* `GET /api/records/{id}` over the ids created so far (200);
* `GET /bench/floor/records/{id}` on the other devhost, over the same ids: the least an
  authenticated read can cost on this stack, with no wrapper and no checks (one
  simple-query message with the caller's principal row and the record read, prepared once
  per connection; the row as JSON, the security headers, one log line). Its ratio to the
  bare route bounds what any implementation of the read can reach on this machine;
* `POST /api/records` with `{"type": "document", "payload": {"title": ...}}`: token
  check, session read, permission, body validation, JSON Schema validation of the payload,
  then in one RLS transaction the record, its first version and its audit event (hash
  chain), and the created record read back (201).

Before each measured phase the run waits (at most 20 s) for PostgreSQL to go quiet, so the
autovacuum and checkpoint work the creates leave behind is not billed to the next phase.
The table gives req/s, p50 and p99 of each and their ratios to the bare route, then the CPU
each route costs per request in each process. All clients connect from this run's own random
loopback address (127.x.y.z). The records stay in the test database, in their own tenant
(`bench-records-<random>`), as the tests' data does.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import uuid
from collections.abc import Sequence
from typing import Any

from bench.runner import (
    CpuShare,
    HttpLoad,
    Measured,
    Table,
    devhost,
    loopback_address,
    machine,
    migrate,
    setup_env,
    wait_for_quiet_postgres,
)

ROUTES = ("bare", "read", "floor", "create")
AIMS = {"create": 3.0, "read": 2.0}
"""p50 ratio to the bare route that issue 12 aims for (printed, never asserted)."""
LABELS = {
    "bare": "GET /bench/bare (bare, other devhost)",
    "create": "POST /api/records",
    "read": "GET /api/records/{id}",
    "floor": "floor: one round trip, no wrapper",
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.records", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--threads", type=int, default=4, help="concurrent clients (default 4)")
    parser.add_argument("--requests", type=int, default=500, help="requests per client per route (default 500)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds over the routes (default 2)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up requests per client per route (default requests/10, at most 50)")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="cap per measured phase (default 120)")
    return parser.parse_args(argv)


def bench_token() -> tuple[str, str]:
    """(tenant slug, access token) of an active OPERATOR with a live session in a fresh tenant."""
    from shared.core import db
    from shared.tenancy.tenants import create_tenant
    from tests.conftest import create_session_row, create_user, token_for

    slug = f"bench-records-{uuid.uuid4().hex[:10]}"
    with db.platform_tx() as conn:
        tenant = create_tenant(conn, slug=slug, name="Bench Records", region="uksouth")
    user_id = create_user(tenant.id, "OPERATOR", name="Bench Records User")["id"]
    session_id = create_session_row(tenant.id, user_id)
    return slug, token_for(user_id, tenant.id, "OPERATOR", session_id=session_id, name="Bench Records User")


class Ids:
    """Ids of the records created so far; readers go round them."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self._next = itertools.count()

    def created(self, response: Any) -> None:
        self.ids.append(response.headers["Location"].rsplit("/", 1)[-1])  # list.append: atomic

    def next_path(self) -> str:
        return f"/api/records/{self.ids[next(self._next) % len(self.ids)]}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_env()  # API_RATE_PER_MINUTE is the tests' 100000: the per-IP limiter refuses nothing
    migrate()
    slug, token = bench_token()  # before the devhosts start: creates the test signing key once if missing
    ip = loopback_address()
    per_round = max(1, args.requests // max(1, args.rounds))
    warmup = args.warmup if args.warmup is not None else min(50, max(1, args.requests // 10))
    print(f"## Records through the host ({machine()})\n", flush=True)

    ids = Ids()
    body = {"type": "document", "payload": {"title": "Benchmark document", "document_number": "BENCH-1",
                                            "body": "A short body, as a small document would have."}}
    results: dict[str, Measured] = {}
    with devhost("function_app:app", ready_path="/api/health") as app, \
            devhost("bench.bench_app:app", ready_path="/bench/bare") as bare_host:
        headers = {"Authorization": f"Bearer {token}", "User-Agent": "custos-bench/1"}
        app_load = HttpLoad(app.url, threads=args.threads, headers=headers, local_address=ip)
        bare_load = HttpLoad(bare_host.url, threads=args.threads, headers={"User-Agent": "custos-bench/1"}, local_address=ip)
        floor_load = HttpLoad(bare_host.url, threads=args.threads, headers=headers, local_address=ip)

        cpu = {route: CpuShare() for route in ROUTES}
        quiet_waits: list[float] = []

        def send(route: str, count: int) -> Measured:
            if route == "bare":
                return bare_load.run("/bench/bare", count, max_seconds=args.max_seconds)
            if route == "create":
                return app_load.run("/api/records", count, method="POST", json=body, expect=201,
                                    on_response=ids.created, max_seconds=args.max_seconds)
            if route == "floor":
                return floor_load.run(lambda: "/bench/floor" + ids.next_path().removeprefix("/api"), count,
                                      max_seconds=args.max_seconds)
            return app_load.run(ids.next_path, count, max_seconds=args.max_seconds)

        def run(route: str, count: int, *, account: bool = False) -> Measured:
            if not account:
                return send(route, count)
            share = cpu[route]
            quiet_waits.append(wait_for_quiet_postgres())
            with share.during((bare_host if route in ("bare", "floor") else app).proc.pid):
                measured = send(route, count)
            share.requests += measured.count + measured.errors
            return measured

        for route in sorted(ROUTES, key=lambda r: r != "create"):  # the reads need records to read
            warm = run(route, warmup)
            if warm.errors:
                raise SystemExit(f"warm-up of {route} failed: {warm.first_error}")
        for _ in range(max(1, args.rounds)):
            for route in ROUTES:
                measured = run(route, per_round, account=True)
                results[route] = results[route].merge(measured) if route in results else measured

    table = Table(["route", "requests", "errors", "req/s", "p50 ms", "p99 ms"],
                  title=(f"Records with the full wrapper vs the bare route: {args.threads} keep-alive clients x "
                         f"{per_round * max(1, args.rounds)} requests per route, from {ip}"))
    for route in ROUTES:
        m = results[route]
        table.add(LABELS[route], m.count, m.errors, m.rate, m.p50, m.p99)
    base = results["bare"]
    for route in ("create", "read", "floor"):
        m = results[route]
        table.add(f"ratio {LABELS[route]} / bare", None, None, m.rate / base.rate, m.p50 / base.p50, m.p99 / base.p99)
    table.print()
    shares = {route: cpu[route].per_request_us() for route in ROUTES}
    if all(v is not None for v in shares.values()):
        cpu_table = Table(["route", "host us", "client us", "PostgreSQL us", "total us", "x bare total"],
                          title="CPU per request, by process (Linux /proc; all of them share the same cores)")
        bare_total = sum(shares["bare"] or ())
        for route in ROUTES:
            host_us, client_us, pg_us = shares[route] or (0.0, 0.0, 0.0)
            total = host_us + client_us + pg_us
            cpu_table.add(LABELS[route], host_us, client_us, pg_us, total, total / bare_total if bare_total else None)
        cpu_table.print()
        print("With the clients, both hosts and PostgreSQL on the same cores, a closed loop's p50 ratio follows the\n"
              "ratio of total CPU per request: that column says where a route's time goes.\n", flush=True)
    for route, aim in AIMS.items():
        ratio = results[route].p50 / base.p50
        print(f"aim: {LABELS[route]} p50 <= {aim:g} x bare: measured {ratio:.2f} x ({'met' if ratio <= aim else 'NOT met'})",
              flush=True)
    print(f"floor: an authenticated read with no wrapper at all is {results['floor'].p50 / base.p50:.2f} x bare at p50 here;\n"
          f"the wrapped read is {results['read'].p50 / results['floor'].p50:.2f} x the floor.", flush=True)
    print(f"Before each measured phase the run waited for PostgreSQL to go quiet (autovacuum and the\n"
          f"checkpointer after the creates): {sum(quiet_waits):.1f} s in all, at most {max(quiet_waits, default=0):.1f} s.")
    print(f"Tenant {slug}: {len(ids.ids)} records created (warm-up included); reads went round them.\n"
          "Both devhosts and the clients share the CPUs; each devhost's logs went to a file.\n", flush=True)

    errors = [f"{route}: {m.errors} errors, first {m.first_error}" for route, m in results.items() if m.errors]
    if errors:
        print("errors: " + "; ".join(errors), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
