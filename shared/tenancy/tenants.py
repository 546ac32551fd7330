"""Tenants: created by platform operators, cancelled, reinstated or, after TENANT_PURGE_AFTER_DAYS,
purged (the purge itself is shared.lifecycle.purge; docs/purge.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.audit import chain as audit
from shared.core import db
from shared.core.db import Conn
from shared.core.errors import Conflict, NotFound, ValidationFailed
from shared.core.settings import get_settings
from shared.tenancy.errors import PurgeDue, PurgeStarted, TenantNotCancelled
from shared.tenancy.users import invite

SLUG = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
REGIONS = frozenset({"uksouth", "westeurope", "eastus", "australiaeast"})


@dataclass(frozen=True)
class Tenant:
    id: str
    slug: str
    name: str
    status: str
    data_region: str
    created_at: datetime
    cancelled_at: datetime | None
    purge_after: datetime | None = None
    purged_at: datetime | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Tenant:
        return cls(**{**row, "id": str(row["id"])})


_COLUMNS = "id, slug, name, status, data_region, created_at, cancelled_at, purge_after, purged_at"


def validate_new(slug: str, name: str, region: str) -> None:
    errors = []
    if not SLUG.match(slug):
        errors.append({"location": ["slug"], "message": "lowercase letters, digits and inner hyphens, 1-63"})
    if not name.strip() or len(name) > 200:
        errors.append({"location": ["name"], "message": "1 to 200 characters"})
    if region not in REGIONS:
        errors.append({"location": ["data_region"], "message": f"one of {sorted(REGIONS)}"})
    if errors:
        raise ValidationFailed("the tenant is not valid", errors=errors)


def create_tenant(
    conn: Conn,
    *,
    slug: str,
    name: str,
    region: str,
    actor: audit.Actor = audit.SYSTEM,
    meta: audit.RequestMeta | None = None,
) -> Tenant:
    """Insert a tenant and the first event of its audit chain, in the caller's transaction.

    Raises:
        ValidationFailed: slug, name or region malformed.
        Conflict: the slug is taken.
    """
    validate_new(slug, name, region)
    with db.savepoint_or_conflict(conn, f"tenant slug {slug!r} is taken"):
        row = conn.execute(
            """insert into tenants (slug, name, data_region) values (%s, %s, %s)
               returning id, slug, name, status, data_region, created_at, cancelled_at, purge_after, purged_at""",
            (slug, name.strip(), region),
        ).fetchone()
    assert row is not None
    tenant = Tenant.from_row(row)
    conn.execute("select set_config('app.tenant_id', %s, true)", (tenant.id,))
    audit.append(
        conn, tenant_id=tenant.id, actor=actor, action="tenant.created", target_type="tenant",
        target_id=tenant.id, after={"slug": tenant.slug, "name": tenant.name, "data_region": tenant.data_region},
        meta=meta,
    )
    conn.execute("select set_config('app.tenant_id', '', true)")  # back to the caller's platform scope
    return tenant


def get_tenant(tenant_id: str) -> Tenant | None:
    with db.platform_tx() as conn:
        row = conn.execute(
            f"select {_COLUMNS} from tenants where id = %s",  # noqa: S608  # nosec B608  # only module constants are interpolated; values are bound
            (tenant_id,),
        ).fetchone()
    return Tenant.from_row(row) if row else None


def list_tenants() -> list[dict[str, Any]]:
    with db.platform_tx() as conn:
        rows = conn.execute(
            f"select {_COLUMNS} from tenants order by created_at"  # noqa: S608  # nosec B608  # only module constants are interpolated; values are bound
        ).fetchall()
    return [Tenant.from_row(r).__dict__ for r in rows]


def create_tenant_with_admin(
    conn: Conn,
    *,
    slug: str,
    name: str,
    region: str,
    admin_email: str,
    admin_name: str,
    actor: audit.Actor,
    meta: audit.RequestMeta | None,
    reason: str,
) -> tuple[Tenant, Any]:
    """A tenant and the invitation of its first ADMIN, in the caller's transaction."""
    tenant = create_tenant(conn, slug=slug, name=name, region=region, actor=actor, meta=meta)
    conn.execute("select set_config('app.tenant_id', %s, true)", (tenant.id,))
    invitation = invite(
        conn, tenant_id=tenant.id, email=admin_email, role="ADMIN", display_name=admin_name,
        actor=None, audit_actor=actor, meta=meta, reason=reason,
    )
    conn.execute("select set_config('app.tenant_id', '', true)")
    return tenant, invitation


def cancel_tenant(tenant_id: str, *, reason: str, actor: audit.Actor, meta: audit.RequestMeta | None) -> Tenant:
    """ACTIVE -> CANCELLED: read-only until `purge_after` (cancellation + TENANT_PURGE_AFTER_DAYS),
    then purged (shared.lifecycle.purge). Recorded in the tenant's chain and the platform's.

    Raises:
        NotFound: no such tenant. Conflict: the tenant is not active.
    """
    days = get_settings().tenant_purge_after_days
    with db.tenant_tx(tenant_id) as conn:
        row = conn.execute(
            f"""update tenants set status = 'CANCELLED', cancelled_at = now(),
                                   purge_after = now() + make_interval(days => %s)
                 where id = %s and status = 'ACTIVE' returning {_COLUMNS}""",  # noqa: S608  # nosec B608  # only module constants are interpolated; values are bound
            (days, tenant_id),
        ).fetchone()
        if row is None:
            if get_tenant(tenant_id) is None:
                raise NotFound()
            raise Conflict("the tenant is not active")
        after = {"status": "CANCELLED", "purge_after": audit.format_time(row["purge_after"])}
        audit.append(conn, tenant_id=tenant_id, actor=actor, action="tenant.cancelled", target_type="tenant",
                     target_id=tenant_id, before={"status": "ACTIVE"}, after=after, reason=reason, meta=meta)
        _platform_event(conn, tenant_id, "platform.tenant_cancelled", actor=actor, meta=meta, reason=reason,
                        before={"status": "ACTIVE"}, after=after)
    return Tenant.from_row(row)


def reinstate_tenant(
    tenant_id: str, *, reason: str, actor: audit.Actor, meta: audit.RequestMeta | None, now: datetime | None = None
) -> Tenant:
    """CANCELLED -> ACTIVE, only while the purge is not yet due (`now` < `purge_after`; `now`
    is the database clock unless given). Recorded in the tenant's chain and the platform's.

    Raises:
        NotFound: no such tenant.
        TenantNotCancelled: the tenant is active.
        PurgeStarted: the tenant is being or has been purged.
        PurgeDue: the purge date has passed (the purge may start at any moment).
    """
    with db.tenant_tx(tenant_id) as conn:
        row = conn.execute(
            f"select {_COLUMNS}, coalesce(%s::timestamptz, now()) as now from tenants where id = %s for update",  # noqa: S608  # nosec B608  # only module constants are interpolated; values are bound
            (now, tenant_id),
        ).fetchone()
        if row is None:
            raise NotFound()
        if row["status"] in ("PURGING", "PURGED"):
            raise PurgeStarted(f"the tenant is {row['status'].lower()}: it cannot be reinstated")
        if row["status"] != "CANCELLED":
            raise TenantNotCancelled("the tenant is not cancelled")
        if row["now"] >= row["purge_after"]:
            raise PurgeDue("the purge date has passed: the tenant cannot be reinstated")
        before = {"status": "CANCELLED", "cancelled_at": audit.format_time(row["cancelled_at"]),
                  "purge_after": audit.format_time(row["purge_after"])}
        updated = conn.execute(
            f"""update tenants set status = 'ACTIVE', cancelled_at = null, purge_after = null
                 where id = %s and status = 'CANCELLED' returning {_COLUMNS}""",  # noqa: S608  # nosec B608  # only module constants are interpolated; values are bound
            (tenant_id,),
        ).fetchone()
        assert updated is not None  # the row is locked above
        audit.append(conn, tenant_id=tenant_id, actor=actor, action="tenant.reinstated", target_type="tenant",
                     target_id=tenant_id, before=before, after={"status": "ACTIVE"}, reason=reason, meta=meta)
        _platform_event(conn, tenant_id, "platform.tenant_reinstated", actor=actor, meta=meta, reason=reason,
                        before=before, after={"status": "ACTIVE"})
    return Tenant.from_row(updated)


def _platform_event(conn: Conn, tenant_id: str, action: str, *, actor: audit.Actor, meta: audit.RequestMeta | None,
                    reason: str, before: Any, after: Any) -> None:
    """The same change in the platform chain, which outlives the tenant's own (the purge deletes that)."""
    conn.execute("select set_config('app.tenant_id', %s, true)", (audit.PLATFORM_CHAIN,))
    audit.append(conn, tenant_id=audit.PLATFORM_CHAIN, actor=actor, action=action, target_type="tenant",
                 target_id=tenant_id, before=before, after=after, reason=reason, meta=meta)
    conn.execute("select set_config('app.tenant_id', %s, true)", (tenant_id,))


def purge_schedule(*, now: datetime | None = None, within_days: int = 0) -> list[dict[str, Any]]:
    """Tenants an operator should know about before the purge timer runs: CANCELLED ones whose
    purge date is at or before `now` + `within_days` (`due`: at or before `now`, the next purge
    run takes them) and PURGING ones (a purge that stopped half way; the next run resumes it),
    soonest first. `now` defaults to the database clock.

    Raises:
        ValueError: `within_days` is negative.
    """
    if within_days < 0:
        raise ValueError("within_days must not be negative")
    with db.platform_tx() as conn:
        rows = conn.execute(
            f"""select {_COLUMNS}, coalesce(%(now)s::timestamptz, now()) as now from tenants
                 where (status = 'CANCELLED'
                        and purge_after <= coalesce(%(now)s::timestamptz, now()) + make_interval(days => %(days)s))
                    or status = 'PURGING'
                 order by purge_after, id""",  # noqa: S608  # nosec B608  # only module constants are interpolated; values are bound
            {"now": now, "days": within_days},
        ).fetchall()
    out = []
    for row in rows:
        at = row.pop("now")
        out.append({**Tenant.from_row(row).__dict__,
                    "due": row["status"] == "PURGING" or row["purge_after"] <= at})
    return out
