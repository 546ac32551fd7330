"""What the platform operators' triggers call: tenants, their cancellation, support tokens and
chain verification across tenants. Each function owns its transaction (see shared.web.caller);
the platform's own events go to the platform chain."""

from __future__ import annotations

import uuid
from typing import Any

from shared.audit import chain as audit
from shared.core import db
from shared.core.errors import NotFound
from shared.identity import mfa
from shared.tenancy import support, tenants
from shared.web.caller import Caller


def _existing(tenant_id: uuid.UUID) -> str:
    tid = str(tenant_id)
    if tenants.get_tenant(tid) is None:
        raise NotFound()
    return tid


def list_tenants(caller: Caller) -> dict[str, Any]:
    """Every tenant's metadata (no tenant data)."""
    return {"tenants": tenants.list_tenants()}


def create_tenant(caller: Caller, *, slug: str, name: str, region: str, admin_email: str, admin_name: str,
                  reason: str) -> dict[str, Any]:
    """A tenant and the invitation of its first ADMIN."""
    with db.platform_tx() as conn:
        tenant, invitation = tenants.create_tenant_with_admin(
            conn, slug=slug, name=name, region=region, admin_email=admin_email, admin_name=admin_name,
            actor=caller.actor, meta=caller.meta, reason=reason,
        )
    return {"tenant": tenant.__dict__, "admin": invitation.user, "invitation": {"expires_at": invitation.expires_at}}


def support_token(caller: Caller, tenant_id: uuid.UUID) -> dict[str, Any]:
    """A read-only token for a tenant that granted this operator support access.

    Raises:
        NotFound: no such tenant, or no live grant. StepUpRequired: no recent second factor.
    """
    tid = _existing(tenant_id)
    mfa.require_recent_second_factor(caller.user)
    return support.issue_support_token(caller.user, tid, caller.meta)


def cancel_tenant(caller: Caller, *, tenant_id: uuid.UUID, reason: str) -> dict[str, Any]:
    """Cancel a tenant (read-only until the purge). Raises StepUpRequired without a recent second factor."""
    mfa.require_recent_second_factor(caller.user)
    return tenants.cancel_tenant(str(tenant_id), reason=reason, actor=caller.actor, meta=caller.meta).__dict__


def reinstate_tenant(caller: Caller, *, tenant_id: uuid.UUID, reason: str) -> dict[str, Any]:
    """Undo a cancellation before the purge date.

    Raises:
        StepUpRequired: no recent second factor. NotFound, TenantNotCancelled, PurgeStarted,
            PurgeDue: see `tenants.reinstate_tenant`.
    """
    mfa.require_recent_second_factor(caller.user)
    return tenants.reinstate_tenant(str(tenant_id), reason=reason, actor=caller.actor, meta=caller.meta).__dict__


def verify_tenant_chain(caller: Caller, tenant_id: uuid.UUID, *, full: bool = False) -> dict[str, Any]:
    """An operator verifies a tenant's chain (no event content is returned); recorded in the platform chain."""
    tid = _existing(tenant_id)
    from shared.audit import checkpoints  # Ed25519 and blob machinery load on first use, not at import
    result = checkpoints.verify_tenant(tid, full=full).as_dict()
    with db.tenant_tx(audit.PLATFORM_CHAIN) as conn:
        audit.append(conn, tenant_id=audit.PLATFORM_CHAIN, actor=caller.actor, action="platform.audit_verified",
                     target_type="tenant", target_id=tid, after={"valid": result["valid"]}, meta=caller.meta)
    return result
