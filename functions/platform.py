"""Platform operators: tenants and support tokens. Operators see no tenant data here."""

from __future__ import annotations

from typing import Any

import azure.functions as func
from pydantic import Field

from functions._models_auth import OperatorLoginResult, SupportToken
from functions._models_tenancy import Tenant, TenantCreated, Tenants
from shared.identity import operators
from shared.tenancy import platform
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
    return platform.list_tenants(ctx)


@bp.route(route="api/platform/tenants", methods=["POST"])
@endpoint(response=TenantCreated, operator=True, body=TenantNew, status=201, tags=("platform",))
def platform_create_tenant(ctx: RequestContext) -> Reply:
    """Create a tenant and invite its first ADMIN."""
    b: TenantNew = ctx.body
    return Reply(body=platform.create_tenant(ctx, slug=b.slug, name=b.name, region=b.data_region, admin_email=b.admin_email,
                                             admin_name=b.admin_name, reason=b.reason), status=201)


@bp.route(route="api/platform/tenants/{id}/support-token", methods=["POST"])
@endpoint(response=SupportToken, operator=True, tags=("platform",))
def platform_support_token(ctx: RequestContext) -> dict[str, Any]:
    """A short-lived read-only token for a tenant that granted this operator support access (needs a recent second factor)."""
    return platform.support_token(ctx, ctx.uuid_param("id"))


@bp.route(route="api/platform/tenants/{id}/cancel", methods=["POST"])
@endpoint(response=Tenant, operator=True, body=ReasonBody, tags=("platform",))
def platform_cancel_tenant(ctx: RequestContext) -> dict[str, Any]:
    """Cancel a tenant: its data turns read-only (reads and exports still work) until the purge (needs a recent second factor)."""
    return platform.cancel_tenant(ctx, tenant_id=ctx.uuid_param("id"), reason=ctx.body.reason)


@bp.route(route="api/platform/tenants/{id}/reinstate", methods=["POST"])
@endpoint(response=Tenant, operator=True, body=ReasonBody, tags=("platform",), statuses=(409,))
def platform_reinstate_tenant(ctx: RequestContext) -> dict[str, Any]:
    """Undo a cancellation before the purge date: the tenant is active again (needs a recent second factor)."""
    return platform.reinstate_tenant(ctx, tenant_id=ctx.uuid_param("id"), reason=ctx.body.reason)


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
    operators.set_password(token=ctx.body.token, password=ctx.body.password, meta=ctx.meta)


@bp.route(route="api/platform/auth/login", methods=["POST"])
@endpoint(response=OperatorLoginResult, auth=False, body=OperatorLogin, tags=("platform",))
def platform_operator_login(ctx: RequestContext) -> dict[str, Any]:
    """Sign a platform operator in: an MFA ticket for the second step (a session only to enrol, without a factor)."""
    return operators.login(email=ctx.body.email, password=ctx.body.password, meta=ctx.meta)


@bp.route(route="api/platform/auth/logout", methods=["POST"])
@endpoint(operator=True, mfa_enrolment=True, tags=("platform",))
def platform_operator_logout(ctx: RequestContext) -> None:
    """End the operator's session."""
    operators.logout(operator_id=ctx.user.user_id, session_id=ctx.user.session_id, name=ctx.user.name,
                     meta=ctx.meta)
