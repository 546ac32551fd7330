"""The audit retention timer's loop: every tenant with an `audit.retention_days` window gets
its cut (`shared.audit.retention.cut_tenant`), one tenant at a time.

It lives here and not in `shared.audit` because the window is a tenant setting
(`shared.tenancy`), which the audit package may not import.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from shared.audit import chain as audit
from shared.audit import checkpoints
from shared.audit.retention import Cut, cut_tenant
from shared.core import db, health
from shared.tenancy import tenant_settings

SETTING = "audit.retention_days"
log = logging.getLogger("custos.lifecycle")


@dataclass
class RetentionRun:
    """What one run did: the cuts made and the tenants refused (logged, and the run fails)."""

    windows: int = 0
    cuts: list[Cut] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)


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


def run(*, now: datetime | None = None) -> RetentionRun:
    """Cut every tenant with a window; records the `audit_retention` heartbeat. One tenant's
    refusal is logged and does not stop the others; the run then fails, so an alert sees it.

    Raises:
        RuntimeError: one or more tenants were refused (after every tenant had its turn).
    """
    result = RetentionRun()
    try:
        todo = windows()
        result.windows = len(todo)
        for tid, days in todo:
            try:
                cut = cut_tenant(tid, window_days=days, now=now)
            except Exception as exc:  # noqa: BLE001 - one tenant's failure must not stop the others
                log.error("audit retention refused tenant=%s reason=%s", tid, exc)
                result.refused[tid] = str(exc)
                continue
            if cut is not None:
                result.cuts.append(cut)
    except Exception as exc:
        health.record_heartbeat("audit_retention", ok=False, detail=f"failed: {type(exc).__name__}")
        raise
    detail = f"{result.windows} tenants with a window, {len(result.cuts)} cut, {len(result.refused)} refused"
    health.record_heartbeat("audit_retention", ok=not result.refused, detail=detail)
    if result.refused:
        raise RuntimeError(f"audit retention refused {len(result.refused)} tenant(s): {sorted(result.refused)}")
    return result
