"""Audit appends per second: one tenant with 1, 4 and 16 concurrent writers, and 8 tenants
with one writer each.

`python -m bench.audit_append [--appends 4000] [--max-seconds 60]`

Every append is its own transaction: `shared.core.db.tenant_tx` + `shared.audit.chain.append` +
commit, as a request that changes one thing does it. The latency is that whole unit
(pool checkout, BEGIN, set tenant, the append's statements, COMMIT). Appends to one tenant
serialize on its chain-head row; different tenants never wait on each other.

Baseline, same run, same writers: an empty tenant transaction (`tenant_tx` + `select 1`),
the floor any tenant-scoped write pays. The aim (docs): append p99 under 20 ms with 4
writers in one tenant; the output says whether this run met it.

Tenants are created with random slugs (`bench-append-...`). The pool is sized for the
writers (DB_POOL_MAX overrides the test setting of 4, so 16 writers each hold a connection).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bench.runner import Measured, Table, machine, migrate, run_closed_loop, setup_env

AIM_P99_MS = 20.0
AIM_WRITERS = 4
MAX_WRITERS = 16


@dataclass(frozen=True)
class Scenario:
    name: str
    writers: int
    tenants: int  # writers are spread round-robin over this many tenants


SCENARIOS = (
    Scenario("1 tenant, 1 writer", 1, 1),
    Scenario("1 tenant, 4 writers", 4, 1),
    Scenario("1 tenant, 16 writers", 16, 1),
    Scenario("8 tenants, 1 writer each", 8, 8),
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.audit_append", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--appends", type=int, default=4000, help="appends per scenario, split over its writers (default 4000)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up appends per writer (default 20, fewer for tiny runs)")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="cap per measured phase (default 60)")
    return parser.parse_args(argv)


def create_tenants(n: int) -> list[str]:
    from shared.core import db
    from shared.tenancy.tenants import create_tenant

    ids = []
    with db.platform_tx() as conn:
        for _ in range(n):
            slug = f"bench-append-{uuid.uuid4().hex[:12]}"
            ids.append(create_tenant(conn, slug=slug, name="Bench Append", region="uksouth").id)
    return ids


def append_op(tenant_id: str, writer: int) -> Callable[[], None]:
    from shared.audit import chain as audit
    from shared.core import db

    actor = audit.Actor(id=str(uuid.uuid4()), name=f"Bench Writer {writer}", type="user")
    meta = audit.RequestMeta(ip="127.0.0.1", user_agent="custos-bench/1", session_id=str(uuid.uuid4()))
    counter = itertools.count(1)

    def op() -> None:
        n = next(counter)
        with db.tenant_tx(tenant_id) as conn:
            audit.append(
                conn, tenant_id=tenant_id, actor=actor, action="bench.item_updated", target_type="item",
                target_id=f"{writer}-{n}", before={"n": n - 1, "label": "before"}, after={"n": n, "label": "after"},
                reason="benchmark", meta=meta,
            )

    return op


def empty_op(tenant_id: str) -> Callable[[], None]:
    from shared.core import db

    def op() -> None:
        with db.tenant_tx(tenant_id) as conn:
            conn.execute("select 1")

    return op


def run(scenario: Scenario, tenants: list[str], make: Callable[[str, int], Callable[[], None]],
        per_writer: int, warmup: int, max_seconds: float) -> Measured:
    ops = [make(tenants[i % scenario.tenants], i) for i in range(scenario.writers)]
    warm = run_closed_loop(ops, warmup, max_seconds=max_seconds)
    if warm.errors:
        raise SystemExit(f"warm-up of {scenario.name} failed: {warm.first_error}")
    return run_closed_loop(ops, per_writer, max_seconds=max_seconds)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_env({"DB_POOL_MAX": str(MAX_WRITERS + 1)})
    migrate()
    from shared.audit import chain as audit
    from shared.core.settings import get_settings

    tenants = create_tenants(max(s.tenants for s in SCENARIOS))
    print(f"## Audit appends ({machine()}; pool max {get_settings().db_pool_max})\n", flush=True)

    table = Table(
        ["scenario", "writers", "appends", "errors", "appends/s", "p50 ms", "p99 ms", "empty tx/s", "empty p50 ms", "p50 / empty"],
        title=f"One append per transaction (commit included); baseline: empty tenant_tx, same writers; {args.appends} per scenario",
    )
    aim: Measured | None = None
    failures: list[str] = []
    for scenario in SCENARIOS:
        per_writer = max(1, args.appends // scenario.writers)
        warmup = args.warmup if args.warmup is not None else min(20, max(1, per_writer // 10))
        base = run(scenario, tenants, lambda t, _i: empty_op(t), per_writer, warmup, args.max_seconds)
        m = run(scenario, tenants, append_op, per_writer, warmup, args.max_seconds)
        table.add(scenario.name, scenario.writers, m.count, m.errors, m.rate, m.p50, m.p99, base.rate, base.p50, m.p50 / base.p50)
        failures += [f"{scenario.name}: {x.first_error}" for x in (base, m) if x.errors]
        if scenario.writers == AIM_WRITERS and scenario.tenants == 1:
            aim = m
    table.print()

    checked = [audit.verify_tenant(t, None) for t in tenants]
    events = sum(v.events_checked for v in checked)
    print(f"Chains after the run: {sum(v.valid for v in checked)}/{len(checked)} valid, {events:,} events checked.")
    if aim is not None:
        met = aim.p99 < AIM_P99_MS
        print(f"Aim: p99 < {AIM_P99_MS:.0f} ms with {AIM_WRITERS} writers in one tenant: "
              f"{'met' if met else 'NOT met'} (p99 {aim.p99:.2f} ms).")
    print(flush=True)
    if failures or not all(v.valid for v in checked):
        print("errors: " + "; ".join(failures or ["a chain did not verify"]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
