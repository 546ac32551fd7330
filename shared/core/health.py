"""Readiness of the services Custos depends on."""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from shared.core import db, storage
from shared.core.errors import ServiceUnavailable
from shared.core.settings import get_settings

log = logging.getLogger("custos.health")

PROBES: dict[str, Callable[[], None]] = {"database": db.ping, "storage": storage.ping}
# Probes run beside each other, so the answer takes the slowest probe's time, not the sum;
# a probe stuck past the budget is reported unavailable and left to end on its own timeouts.
# Few threads: a dead dependency must not let health checks pile up threads without bound.
_pool = concurrent.futures.ThreadPoolExecutor(max_workers=2 * len(PROBES), thread_name_prefix="custos-health")


def _probe(probe: Callable[[], None]) -> str:
    try:
        probe()
    except ServiceUnavailable:
        return "unavailable"
    except Exception:
        log.exception("health probe failed unexpectedly")
        return "unavailable"
    return "ok"


def check(*, timeout_s: float | None = None) -> dict[str, Any]:
    """Each component's state; `ok` is true only when every component is.

    Answers within `timeout_s` (default: setting `HEALTH_TIMEOUT_S`) whatever the
    dependencies do: a probe that has not finished by then counts as unavailable.
    """
    budget = get_settings().health_timeout_s if timeout_s is None else timeout_s
    futures = {name: _pool.submit(_probe, probe) for name, probe in PROBES.items()}
    concurrent.futures.wait(futures.values(), timeout=budget)
    components = {
        name: future.result() if future.done() else "unavailable"
        for name, future in futures.items()
    }
    return {"ok": all(v == "ok" for v in components.values()), "components": components}


def ready(*, timeout_s: float | None = None) -> dict[str, Any]:
    """`check()` when every component is ok.

    Raises:
        ServiceUnavailable: a component is not; the problem names each component's state.
    """
    result = check(timeout_s=timeout_s)
    if not result["ok"]:
        failed = ", ".join(name for name, state in result["components"].items() if state != "ok")
        raise ServiceUnavailable(f"unavailable: {failed}", ok=False, components=result["components"])
    return result


def record_heartbeat(name: str, *, ok: bool, detail: str = "") -> datetime:
    """Store that a scheduled job ran; returns the database time of the run."""
    with db.platform_tx() as conn:
        row = conn.execute(
            """insert into job_heartbeats (name, last_run_at, ok, detail)
               values (%s, now(), %s, %s)
               on conflict (name) do update
                   set last_run_at = excluded.last_run_at, ok = excluded.ok, detail = excluded.detail
               returning last_run_at""",
            (name, ok, detail[:500]),
        ).fetchone()
    assert row is not None
    return row["last_run_at"]


def heartbeats() -> dict[str, Any]:
    with db.platform_tx() as conn:
        rows = conn.execute("select name, last_run_at, ok from job_heartbeats order by name").fetchall()
    return {r["name"]: {"last_run_at": r["last_run_at"], "ok": r["ok"]} for r in rows}
