"""Tenants: created by platform operators, cancelled, and after 30 days purged."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.audit import chain as audit
from shared.core import db
from shared.core.db import Conn
from shared.core.errors import Conflict, NotFound, ValidationFailed
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

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Tenant:
        return cls(**{**row, "id": str(row["id"])})


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
               returning id, slug, name, status, data_region, created_at, cancelled_at""",
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
            "select id, slug, name, status, data_region, created_at, cancelled_at from tenants where id = %s",
            (tenant_id,),
        ).fetchone()
    return Tenant.from_row(row) if row else None


def list_tenants() -> list[dict[str, Any]]:
    with db.platform_tx() as conn:
        rows = conn.execute(
            "select id, slug, name, status, data_region, created_at, cancelled_at from tenants order by created_at"
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
    """ACTIVE -> CANCELLED: read-only for 30 days, then purged.

    Raises:
        NotFound: no such tenant. Conflict: the tenant is not active.
    """
    with db.tenant_tx(tenant_id) as conn:
        row = conn.execute(
            """update tenants set status = 'CANCELLED', cancelled_at = now() where id = %s and status = 'ACTIVE'
               returning id, slug, name, status, data_region, created_at, cancelled_at""",
            (tenant_id,),
        ).fetchone()
        if row is None:
            if get_tenant(tenant_id) is None:
                raise NotFound()
            raise Conflict("the tenant is not active")
        audit.append(conn, tenant_id=tenant_id, actor=actor, action="tenant.cancelled", target_type="tenant",
                     target_id=tenant_id, before={"status": "ACTIVE"}, after={"status": "CANCELLED"},
                     reason=reason, meta=meta)
    return Tenant.from_row(row)
