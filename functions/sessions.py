"""Sessions: one's own, and (with `sessions.manage`) other users' in the tenant."""

from __future__ import annotations

from typing import Any

import azure.functions as func

from functions._models_auth import MySessions, Sessions
from shared.tenancy import api
from shared.web.endpoint import RequestContext, endpoint

bp = func.Blueprint()


@bp.route(route="api/sessions", methods=["GET"])
@endpoint(response=MySessions, tags=("sessions",))
def my_sessions(ctx: RequestContext) -> dict[str, Any]:
    """The caller's live sessions; `current` marks this one."""
    return api.my_sessions(ctx)


@bp.route(route="api/sessions/{id}", methods=["DELETE"])
@endpoint(allow_cancelled=True, tags=("sessions",))
def revoke_my_session(ctx: RequestContext) -> None:
    """Sign out one of the caller's sessions (another device, or this one)."""
    api.revoke_my_session(ctx, ctx.uuid_param("id"))


@bp.route(route="api/users/{id}/sessions", methods=["GET"])
@endpoint(response=Sessions, permission="sessions.manage", tags=("sessions",))
def user_sessions(ctx: RequestContext) -> dict[str, Any]:
    """A user's live sessions (no token material, ever)."""
    return api.user_sessions(ctx, ctx.uuid_param("id"))


@bp.route(route="api/users/{id}/sessions/{sid}", methods=["DELETE"])
@endpoint(permission="sessions.manage", allow_cancelled=True, tags=("sessions",))
def revoke_user_session(ctx: RequestContext) -> None:
    """Revoke one of a user's sessions; it fails on its very next request."""
    api.revoke_user_session(ctx, user_id=ctx.uuid_param("id"), session_id=ctx.uuid_param("sid"))
