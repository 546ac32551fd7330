"""Sign-in: login, refresh, logout, invitations, password reset and change."""

from __future__ import annotations

from typing import Any

import azure.functions as func
from pydantic import Field

from functions._models_auth import LoginResult, PasswordChanged, StatusMessage, Tokens
from shared.identity import signin as auth
from shared.identity.sessions import refresh
from shared.web import refresh_cookie
from shared.web.endpoint import Reply, RequestContext, endpoint
from shared.web.models import Strict

bp = func.Blueprint()
Password = Field(min_length=1, max_length=1024, description="Checked against the policy where it is set")


class Login(Strict):
    tenant: str = Field(min_length=1, max_length=63, description="Tenant slug")
    email: str = Field(min_length=1, max_length=254)
    password: str = Password
    remember_me: bool = False


class RefreshBody(Strict):
    refresh_token: str | None = Field(None, min_length=1, max_length=200,
                                      description="Omit to use the console's refresh cookie (with X-Custos-CSRF: 1)")


class AcceptInvitation(Strict):
    token: str = Field(min_length=1, max_length=200)
    display_name: str = Field(min_length=1, max_length=200)
    password: str = Password


class ResetRequest(Strict):
    tenant: str = Field(min_length=1, max_length=63)
    email: str = Field(min_length=1, max_length=254)


class ResetConfirm(Strict):
    token: str = Field(min_length=1, max_length=200)
    new_password: str = Password


class PasswordChange(Strict):
    current_password: str = Password
    new_password: str = Password



@bp.route(route="api/auth/login", methods=["POST"])
@endpoint(response=LoginResult, auth=False, body=Login, tags=("auth",))
def auth_login(ctx: RequestContext) -> Reply:
    """Sign in with tenant, email and password: an access token and a refresh token."""
    b: Login = ctx.body
    return refresh_cookie.deliver(ctx.request, auth.login(tenant_slug=b.tenant, email=b.email, password=b.password,
                                                          remember_me=b.remember_me, meta=ctx.meta).as_dict())


@bp.route(route="api/auth/refresh", methods=["POST"])
@endpoint(response=Tokens, auth=False, body=RefreshBody, tags=("auth",))
def auth_refresh(ctx: RequestContext) -> Reply:
    """Rotate a refresh token (from the body, or the console's cookie): the old one dies, a new pair is issued."""
    token = ctx.body.refresh_token or refresh_cookie.read(ctx.request)
    return refresh_cookie.deliver(ctx.request, refresh(token, meta=ctx.meta).as_dict())


@bp.route(route="api/auth/logout", methods=["POST"])
@endpoint(mfa_enrolment=True, allow_cancelled=True, allow_support=True, status=204, tags=("auth",))
def auth_logout(ctx: RequestContext) -> Reply:
    """End the caller's session (a support token's logout ends that support access); the console's cookie goes too."""
    auth.logout(principal=ctx.user, meta=ctx.meta)
    return refresh_cookie.logged_out(ctx.request)


@bp.route(route="api/auth/invitations/accept", methods=["POST"])
@endpoint(response=Tokens, auth=False, body=AcceptInvitation, tags=("auth",))
def auth_accept_invitation(ctx: RequestContext) -> Reply:
    """Accept an invitation: set name and password, and sign in."""
    b: AcceptInvitation = ctx.body
    return refresh_cookie.deliver(ctx.request, auth.accept_invitation(token=b.token, display_name=b.display_name,
                                                                      password=b.password, meta=ctx.meta).as_dict())


@bp.route(route="api/auth/password/reset/request", methods=["POST"])
@endpoint(response=StatusMessage, auth=False, body=ResetRequest, status=202, tags=("auth",))
def auth_reset_request(ctx: RequestContext) -> Reply:
    """Mail a reset code if the account exists (the answer is the same either way)."""
    b: ResetRequest = ctx.body
    auth.request_reset(tenant_slug=b.tenant, email=b.email, meta=ctx.meta)
    return Reply(body={"status": "If the account exists, a reset code is on its way."}, status=202)


@bp.route(route="api/auth/password/reset/confirm", methods=["POST"])
@endpoint(auth=False, body=ResetConfirm, tags=("auth",))
def auth_reset_confirm(ctx: RequestContext) -> None:
    """Set a new password with a reset code; every session of the account ends."""
    auth.confirm_reset(token=ctx.body.token, new_password=ctx.body.new_password, meta=ctx.meta)


@bp.route(route="api/auth/password/change", methods=["POST"])
@endpoint(response=PasswordChanged, body=PasswordChange, tags=("auth",))
def auth_password_change(ctx: RequestContext) -> dict[str, Any]:
    """Change one's password (the current one is required); other sessions end."""
    ended = auth.change_password(principal=ctx.user, current=ctx.body.current_password,
                                 new=ctx.body.new_password, meta=ctx.meta)
    return {"other_sessions_ended": ended}
