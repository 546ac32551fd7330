"""Platform operators: tenants and support tokens. Operators see no tenant data here."""

from __future__ import annotations

from typing import Any

import azure.functions as func
from pydantic import Field

from functions._models_auth import OperatorLoginResult, SupportToken
from functions._models_tenancy import Tenant, TenantCreated, Tenants
from shared.audit import chain as audit
from shared.core import db
from shared.core.errors import NotFound
from shared.identity import mfa, operators
from shared.tenancy.support import issue_support_token
from shared.tenancy.tenants import cancel_tenant, create_tenant_with_admin, get_tenant, list_tenants
from shared.web.endpoint import Reply, RequestContext, endpoint
from shared.web.models import Email, Reason, ReasonBody, Strict

bp = func.Blueprint()


class TenantNew(Strict):
    slug: str = Field(min_length=1, max_length=63)
    name: str = Field(min_length=1, max_length=200)
    data_region: str = Field("uksouth", max_length=32)
    admin_email: Email
    admin_name: str = Field("", max_length=200)
    reason: Reason = "tenant onboarding"


@bp.route(route="api/platform/tenants", methods=["GET"])
@endpoint(response=Tenants, operator=True, tags=("platform",))
def platform_tenants(ctx: RequestContext) -> dict[str, Any]:
    """Every tenant's metadata (no tenant data)."""
    return {"tenants": list_tenants()}


@bp.route(route="api/platform/tenants", methods=["POST"])
@endpoint(response=TenantCreated, operator=True, body=TenantNew, status=201, tags=("platform",))
def platform_create_tenant(ctx: RequestContext) -> Reply:
    """Create a tenant and invite its first ADMIN."""
    b: TenantNew = ctx.body
    actor, meta = audit.context_actor(ctx)
    with db.platform_tx() as conn:
        tenant, invitation = create_tenant_with_admin(
            conn, slug=b.slug, name=b.name, region=b.data_region, admin_email=b.admin_email,
            admin_name=b.admin_name, actor=actor, meta=meta, reason=b.reason,
        )
    return Reply(
        body={"tenant": tenant.__dict__, "admin": invitation.user, "invitation": {"expires_at": invitation.expires_at}},
        status=201,
    )


@bp.route(route="api/platform/tenants/{id}/support-token", methods=["POST"])
@endpoint(response=SupportToken, operator=True, tags=("platform",))
def platform_support_token(ctx: RequestContext) -> dict[str, Any]:
    """A short-lived read-only token for a tenant that granted this operator support access (needs a recent second factor)."""
    tenant_id = str(ctx.uuid_param("id"))
    if get_tenant(tenant_id) is None:
        raise NotFound()
    assert ctx.principal is not None
    mfa.require_recent_second_factor(ctx.principal)
    _, meta = audit.context_actor(ctx)
    return issue_support_token(ctx.principal, tenant_id, meta)


@bp.route(route="api/platform/tenants/{id}/cancel", methods=["POST"])
@endpoint(response=Tenant, operator=True, body=ReasonBody, tags=("platform",))
def platform_cancel_tenant(ctx: RequestContext) -> dict[str, Any]:
    """Cancel a tenant: its data turns read-only (reads and exports still work) until the purge (needs a recent second factor)."""
    assert ctx.principal is not None
    mfa.require_recent_second_factor(ctx.principal)
    actor, meta = audit.context_actor(ctx)
    return cancel_tenant(str(ctx.uuid_param("id")), reason=ctx.body.reason, actor=actor, meta=meta).__dict__


class OperatorSetup(Strict):
    token: str = Field(min_length=1, max_length=200)
    password: str = Field(min_length=1, max_length=1024)


class OperatorLogin(Strict):
    email: str = Field(min_length=1, max_length=254)
    password: str = Field(min_length=1, max_length=1024)


@bp.route(route="api/platform/auth/setup", methods=["POST"])
@endpoint(auth=False, body=OperatorSetup, tags=("platform",))
def platform_operator_setup(ctx: RequestContext) -> None:
    """Set an operator's password with the one-time setup token from the ops CLI."""
    _, meta = audit.context_actor(ctx)
    operators.set_password(token=ctx.body.token, password=ctx.body.password, meta=meta)


@bp.route(route="api/platform/auth/login", methods=["POST"])
@endpoint(response=OperatorLoginResult, auth=False, body=OperatorLogin, tags=("platform",))
def platform_operator_login(ctx: RequestContext) -> dict[str, Any]:
    """Sign a platform operator in: an MFA ticket for the second step (a session only to enrol, without a factor)."""
    _, meta = audit.context_actor(ctx)
    return operators.login(email=ctx.body.email, password=ctx.body.password, meta=meta)


@bp.route(route="api/platform/auth/logout", methods=["POST"])
@endpoint(operator=True, mfa_enrolment=True, tags=("platform",))
def platform_operator_logout(ctx: RequestContext) -> None:
    """End the operator's session."""
    assert ctx.principal is not None
    _, meta = audit.context_actor(ctx)
    operators.logout(operator_id=ctx.principal.user_id, session_id=ctx.principal.session_id, name=ctx.principal.name,
                     meta=meta)
