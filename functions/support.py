"""Support access, tenant side: an ADMIN grants, lists and revokes operators' access."""

from __future__ import annotations

from typing import Any

import azure.functions as func
from pydantic import Field

from functions._models_tenancy import Grant, SupportGrants
from shared.tenancy import api
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
    return api.list_support_grants(ctx)


@bp.route(route="api/support-access", methods=["POST"])
@endpoint(response=Grant, permission="tenant.settings.manage", body=SupportGrant, status=201, tags=("support",))
def support_grant(ctx: RequestContext) -> Reply:
    """Let a platform operator read this tenant's data for a limited time (ADMIN only)."""
    b: SupportGrant = ctx.body
    return Reply(body=api.grant_support(ctx, operator_email=b.operator_email, reason=b.reason, hours=b.hours), status=201)


@bp.route(route="api/support-access/{id}", methods=["DELETE"])
@endpoint(response=Grant, permission="tenant.settings.manage", query=ReasonQuery, tags=("support",))
def support_revoke(ctx: RequestContext) -> dict[str, Any]:
    """End a support access grant now (`?reason=` required)."""
    return api.revoke_support(ctx, grant_id=ctx.uuid_param("id"), reason=ctx.query.reason)
