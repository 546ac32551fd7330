"""Users of the caller's tenant: list, invite, read, edit, deactivate, overrides; /api/me."""

from __future__ import annotations

import uuid
from typing import Any, Literal

import azure.functions as func
from pydantic import Field

from functions._models_auth import StatusMessage
from functions._models_tenancy import Me, Overrides, User, UserInvited, Users
from shared.audit import chain as audit
from shared.core import db
from shared.identity.guards import require_permission
from shared.identity.signin import admin_reset
from shared.tenancy.designations import get_overrides, put_overrides, set_user_designations
from shared.tenancy.users import deactivate_user, get_user, invite, list_users, update_user
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
    p = ctx.principal
    assert p is not None
    if p.is_support:
        return {"user": {"id": p.user_id, "display_name": p.name}, "role": p.role, "designations": [],
                "permissions": sorted(p.permissions), "support_grant_id": p.support_grant_id}
    with db.tenant_tx(ctx.tenant_id) as conn:
        user = get_user(conn, uuid.UUID(p.user_id))
    return {"user": user, "role": p.role, "designations": user["designations"], "permissions": sorted(p.permissions)}


@bp.route(route="api/users", methods=["GET"])
@endpoint(response=Users, permission="users.read", query=UserQuery, tags=("users",))
def users_list(ctx: RequestContext) -> dict[str, Any]:
    """The tenant's users, by email, paginated."""
    q: UserQuery = ctx.query
    with db.tenant_tx(ctx.tenant_id) as conn:
        return list_users(conn, after=q.after, limit=q.limit, status=q.status, role=q.role)


@bp.route(route="api/users", methods=["POST"])
@endpoint(response=UserInvited, permission="users.invite", body=InviteUser, status=201, tags=("users",))
def users_invite(ctx: RequestContext) -> Reply:
    """Invite a user; the invitation goes out by mail."""
    b: InviteUser = ctx.body
    actor, meta = audit.context_actor(ctx)
    with db.tenant_tx(ctx.tenant_id) as conn:
        inv = invite(conn, tenant_id=ctx.tenant_id, email=b.email, role=b.role, display_name=b.display_name,
                     time_zone=b.time_zone, actor=ctx.principal, audit_actor=actor, meta=meta, reason=b.reason)
    return Reply(body={"user": inv.user, "invitation": {"expires_at": inv.expires_at}}, status=201,
                 headers={"Location": f"/api/users/{inv.user['id']}"})


@bp.route(route="api/users/{id}", methods=["GET"])
@endpoint(response=User, permission="users.read", tags=("users",))
def users_get(ctx: RequestContext) -> dict[str, Any]:
    """One user."""
    with db.tenant_tx(ctx.tenant_id) as conn:
        return get_user(conn, ctx.uuid_param("id"))


@bp.route(route="api/users/{id}", methods=["PATCH"])
@endpoint(response=User, permission="users.update", body=UserPatch, tags=("users",))
def users_patch(ctx: RequestContext) -> dict[str, Any]:
    """Change a user's name, time zone, role or designations, with a reason."""
    b: UserPatch = ctx.body
    p = ctx.principal
    assert p is not None
    user_id = ctx.uuid_param("id")
    actor, meta = audit.context_actor(ctx)
    with db.tenant_tx(ctx.tenant_id) as conn:
        user = update_user(conn, actor=p, user_id=user_id, reason=b.reason, meta=meta, audit_actor=actor,
                           changes=b.model_dump(include={"display_name", "time_zone", "role"}))
        if b.designations is not None:
            require_permission(p, "designations.manage")
            user = set_user_designations(conn, actor=p, user_id=user_id, designation_ids=b.designations,
                                         reason=b.reason, audit_actor=actor, meta=meta)
    return user


@bp.route(route="api/users/{id}/deactivate", methods=["POST"])
@endpoint(response=User, permission="users.deactivate", body=ReasonBody, tags=("users",))
def users_deactivate(ctx: RequestContext) -> dict[str, Any]:
    """Deactivate a user (users are never deleted)."""
    actor, meta = audit.context_actor(ctx)
    assert ctx.principal is not None
    with db.tenant_tx(ctx.tenant_id) as conn:
        return deactivate_user(conn, actor=ctx.principal, user_id=ctx.uuid_param("id"), reason=ctx.body.reason,
                               meta=meta, audit_actor=actor)


@bp.route(route="api/users/{id}/overrides", methods=["GET"])
@endpoint(response=Overrides, permission="users.read", tags=("users",))
def overrides_get(ctx: RequestContext) -> dict[str, Any]:
    """A user's permission overrides."""
    with db.tenant_tx(ctx.tenant_id) as conn:
        return {"overrides": get_overrides(conn, ctx.uuid_param("id"))}


@bp.route(route="api/users/{id}/overrides", methods=["PUT"])
@endpoint(response=Overrides, permission="overrides.manage", body=OverridesPut, tags=("users",))
def overrides_put(ctx: RequestContext) -> dict[str, Any]:
    """Replace a user's permission overrides (grant or deny; deny wins)."""
    b: OverridesPut = ctx.body
    actor, meta = audit.context_actor(ctx)
    assert ctx.principal is not None
    with db.tenant_tx(ctx.tenant_id) as conn:
        result = put_overrides(conn, actor=ctx.principal, user_id=ctx.uuid_param("id"),
                               overrides=[o.model_dump() for o in b.overrides], reason=b.reason,
                               audit_actor=actor, meta=meta)
    return {"overrides": result}





@bp.route(route="api/users/{id}/password-reset", methods=["POST"])
@endpoint(response=StatusMessage, permission="users.update", body=ReasonBody, status=202, tags=("users",))
def users_password_reset(ctx: RequestContext) -> Reply:
    """Mail a user a password reset code (admins never see or set passwords)."""
    actor, meta = audit.context_actor(ctx)
    assert ctx.principal is not None
    with db.tenant_tx(ctx.tenant_id) as conn:
        admin_reset(conn, actor=ctx.principal, user_id=str(ctx.uuid_param("id")), reason=ctx.body.reason,
                    audit_actor=actor, meta=meta)
    return Reply(body={"status": "a reset code was mailed to the user"}, status=202)
