"""Support access, tenant side: an ADMIN grants, lists and revokes operators' access."""

from __future__ import annotations

from typing import Any

import azure.functions as func
from pydantic import Field

from functions._models_tenancy import Grant, SupportGrants
from shared.audit import chain as audit
from shared.core import db
from shared.tenancy.support import grant, list_grants, revoke
from shared.web.endpoint import Reply, RequestContext, endpoint
from shared.web.models import Email, Reason, ReasonQuery, Strict

bp = func.Blueprint()


class SupportGrant(Strict):
    operator_email: Email
    hours: int = Field(ge=1, le=72, description="How long the access lasts (at most 72 hours)")
    reason: Reason


@bp.route(route="api/support-access", methods=["GET"])
@endpoint(response=SupportGrants, permission="tenant.settings.read", tags=("support",))
def support_list(ctx: RequestContext) -> dict[str, Any]:
    """Support access grants of the tenant, newest first."""
    with db.tenant_tx(ctx.tenant_id) as conn:
        return {"grants": list_grants(conn)}


@bp.route(route="api/support-access", methods=["POST"])
@endpoint(response=Grant, permission="tenant.settings.manage", body=SupportGrant, status=201, tags=("support",))
def support_grant(ctx: RequestContext) -> Reply:
    """Let a platform operator read this tenant's data for a limited time (ADMIN only)."""
    b: SupportGrant = ctx.body
    actor, meta = audit.context_actor(ctx)
    assert ctx.principal is not None
    with db.tenant_tx(ctx.tenant_id) as conn:
        g = grant(conn, actor=ctx.principal, operator_email=b.operator_email, reason=b.reason, hours=b.hours,
                  audit_actor=actor, meta=meta)
    return Reply(body=g, status=201)


@bp.route(route="api/support-access/{id}", methods=["DELETE"])
@endpoint(response=Grant, permission="tenant.settings.manage", query=ReasonQuery, tags=("support",))
def support_revoke(ctx: RequestContext) -> dict[str, Any]:
    """End a support access grant now (`?reason=` required)."""
    actor, meta = audit.context_actor(ctx)
    assert ctx.principal is not None
    with db.tenant_tx(ctx.tenant_id) as conn:
        return revoke(conn, actor=ctx.principal, grant_id=ctx.uuid_param("id"), reason=ctx.query.reason,
                      audit_actor=actor, meta=meta)
