"""Which tenants are due for purge, as an operator sees them before the purge timer runs: time is
injected, so "due" is decided at a chosen instant, never by waiting."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shared.audit import chain as audit
from shared.tenancy.tenants import Tenant, cancel_tenant, purge_schedule, reinstate_tenant

OPS = audit.Actor(id=None, name="ops test", type="operator")


def _ids(rows: list[dict[str, object]]) -> dict[str, bool]:
    return {str(r["id"]): bool(r["due"]) for r in rows}


def test_a_cancelled_tenant_is_listed_once_its_purge_date_is_within_reach(tenant: Tenant) -> None:
    cancelled = cancel_tenant(tenant.id, reason="contract ended", actor=OPS, meta=None)
    assert cancelled.purge_after is not None
    just_before = cancelled.purge_after - timedelta(seconds=1)
    assert tenant.id not in _ids(purge_schedule(now=just_before))
    assert _ids(purge_schedule(now=just_before, within_days=1))[tenant.id] is False
    assert _ids(purge_schedule(now=cancelled.purge_after))[tenant.id] is True
    row = next(r for r in purge_schedule(now=cancelled.purge_after) if r["id"] == tenant.id)
    assert row["purge_after"] == cancelled.purge_after and row["status"] == "CANCELLED" and row["purged_at"] is None


def test_active_and_reinstated_tenants_are_never_listed(tenant: Tenant) -> None:
    far = tenant.created_at + timedelta(days=3650)
    assert tenant.id not in _ids(purge_schedule(now=far))
    cancel_tenant(tenant.id, reason="contract ended", actor=OPS, meta=None)
    reinstate_tenant(tenant.id, reason="renewed", actor=OPS, meta=None)
    assert tenant.id not in _ids(purge_schedule(now=far))


def test_a_negative_horizon_is_refused() -> None:
    with pytest.raises(ValueError, match="within_days"):
        purge_schedule(within_days=-1)
