"""Users of the caller's tenant: list, invite, read, edit, deactivate, overrides; /api/me."""

from __future__ import annotations

import uuid
from typing import Any, Literal

import azure.functions as func
from pydantic import Field

from functions._models_auth import StatusMessage
from functions._models_tenancy import Me, Overrides, User, UserInvited, Users
from shared.tenancy import api
from shared.web.endpoint import Reply, RequestContext, endpoint
from shared.web.models import Email, Permission, Reason, ReasonBody, Strict

bp = func.Blueprint()
RoleName = Literal["ADMIN", "MANAGER", "REVIEWER", "OPERATOR", "VIEWER"]


class UserQuery(Strict):
    after: str | None = Field(None, max_length=500, description="Cursor from the previous page's `next`")
    limit: int = Field(50, ge=1, le=200)
    status: Literal["invited", "active", "deactivated"] | None = None
    role: RoleName | None = None


class InviteUser(Strict):
    email: Email
    role: RoleName
    display_name: str = Field("", max_length=200)
    time_zone: str = Field("UTC", max_length=64)
    reason: Reason


class UserPatch(Strict):
    display_name: str | None = Field(None, min_length=1, max_length=200)
    time_zone: str | None = Field(None, max_length=64)
    role: RoleName | None = None
    designations: list[uuid.UUID] | None = Field(None, max_length=50)
    reason: Reason


class Override(Strict):
    permission: Permission
    effect: Literal["grant", "deny"]


class OverridesPut(Strict):
    overrides: list[Override] = Field(max_length=100)
    reason: Reason


@bp.route(route="api/me", methods=["GET"])
@endpoint(response=Me, mfa_enrolment=True, tags=("users",))
def me(ctx: RequestContext) -> dict[str, Any]:
    """The caller: user, role, designations and effective permissions."""
    return api.me(ctx)


@bp.route(route="api/users", methods=["GET"])
@endpoint(response=Users, permission="users.read", query=UserQuery, tags=("users",))
def users_list(ctx: RequestContext) -> dict[str, Any]:
    """The tenant's users, by email, paginated."""
    q: UserQuery = ctx.query
    return api.list_users(ctx, after=q.after, limit=q.limit, status=q.status, role=q.role)


@bp.route(route="api/users", methods=["POST"])
@endpoint(response=UserInvited, permission="users.invite", body=InviteUser, status=201, tags=("users",))
def users_invite(ctx: RequestContext) -> Reply:
    """Invite a user; the invitation goes out by mail."""
    b: InviteUser = ctx.body
    out = api.invite(ctx, email=b.email, role=b.role, display_name=b.display_name, time_zone=b.time_zone,
                     reason=b.reason)
    return Reply(body=out, status=201, headers={"Location": f"/api/users/{out['user']['id']}"})


@bp.route(route="api/users/{id}", methods=["GET"])
@endpoint(response=User, permission="users.read", tags=("users",))
def users_get(ctx: RequestContext) -> dict[str, Any]:
    """One user."""
    return api.get_user(ctx, ctx.uuid_param("id"))


@bp.route(route="api/users/{id}", methods=["PATCH"])
@endpoint(response=User, permission="users.update", body=UserPatch, tags=("users",))
def users_patch(ctx: RequestContext) -> dict[str, Any]:
    """Change a user's name, time zone, role or designations, with a reason."""
    b: UserPatch = ctx.body
    return api.update_user(ctx, user_id=ctx.uuid_param("id"), changes=b.model_dump(include={"display_name", "time_zone", "role"}),
                           designation_ids=b.designations, reason=b.reason)


@bp.route(route="api/users/{id}/deactivate", methods=["POST"])
@endpoint(response=User, permission="users.deactivate", body=ReasonBody, tags=("users",))
def users_deactivate(ctx: RequestContext) -> dict[str, Any]:
    """Deactivate a user (users are never deleted)."""
    return api.deactivate_user(ctx, user_id=ctx.uuid_param("id"), reason=ctx.body.reason)


@bp.route(route="api/users/{id}/overrides", methods=["GET"])
@endpoint(response=Overrides, permission="users.read", tags=("users",))
def overrides_get(ctx: RequestContext) -> dict[str, Any]:
    """A user's permission overrides."""
    return api.get_overrides(ctx, ctx.uuid_param("id"))


@bp.route(route="api/users/{id}/overrides", methods=["PUT"])
@endpoint(response=Overrides, permission="overrides.manage", body=OverridesPut, tags=("users",))
def overrides_put(ctx: RequestContext) -> dict[str, Any]:
    """Replace a user's permission overrides (grant or deny; deny wins)."""
    b: OverridesPut = ctx.body
    return api.put_overrides(ctx, user_id=ctx.uuid_param("id"), overrides=[o.model_dump() for o in b.overrides],
                             reason=b.reason)





@bp.route(route="api/users/{id}/password-reset", methods=["POST"])
@endpoint(response=StatusMessage, permission="users.update", body=ReasonBody, status=202, tags=("users",))
def users_password_reset(ctx: RequestContext) -> Reply:
    """Mail a user a password reset code (admins never see or set passwords)."""
    api.reset_password(ctx, user_id=ctx.uuid_param("id"), reason=ctx.body.reason)
    return Reply(body={"status": "a reset code was mailed to the user"}, status=202)
