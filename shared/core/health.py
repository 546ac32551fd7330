"""Readiness of the services Custos depends on."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.core import db, storage
from shared.core.errors import ServiceUnavailable


def check() -> dict[str, Any]:
    """Each component's state; `ok` is true only when every component is."""
    components: dict[str, str] = {}
    for name, probe in (("database", db.ping), ("storage", storage.ping)):
        try:
            probe()
            components[name] = "ok"
        except ServiceUnavailable:
            components[name] = "unavailable"
    return {"ok": all(v == "ok" for v in components.values()), "components": components}


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
