"""Sessions: one's own, and (with `sessions.manage`) other users' in the tenant."""

from __future__ import annotations

from typing import Any

import azure.functions as func

from functions._models_auth import MySessions, Sessions
from shared.audit import chain as audit
from shared.core import db
from shared.identity import sessions
from shared.tenancy.users import get_user
from shared.web.endpoint import RequestContext, endpoint

bp = func.Blueprint()


@bp.route(route="api/sessions", methods=["GET"])
@endpoint(response=MySessions, tags=("sessions",))
def my_sessions(ctx: RequestContext) -> dict[str, Any]:
    """The caller's live sessions; `current` marks this one."""
    assert ctx.principal is not None
    with db.tenant_tx(ctx.tenant_id) as conn:
        rows = sessions.list_sessions(conn, ctx.principal.user_id)
    return {"sessions": [{**r, "current": r["id"] == ctx.principal.session_id} for r in rows]}


@bp.route(route="api/sessions/{id}", methods=["DELETE"])
@endpoint(allow_cancelled=True, tags=("sessions",))
def revoke_my_session(ctx: RequestContext) -> None:
    """Sign out one of the caller's sessions (another device, or this one)."""
    p = ctx.principal
    assert p is not None
    actor, meta = audit.context_actor(ctx)
    with db.tenant_tx(ctx.tenant_id) as conn:
        sessions.revoke(conn, session_id=ctx.uuid_param("id"), user_id=p.user_id, reason="revoked by the user",
                        by=p.user_id, actor=actor, meta=meta, tenant_id=ctx.tenant_id)


@bp.route(route="api/users/{id}/sessions", methods=["GET"])
@endpoint(response=Sessions, permission="sessions.manage", tags=("sessions",))
def user_sessions(ctx: RequestContext) -> dict[str, Any]:
    """A user's live sessions (no token material, ever)."""
    with db.tenant_tx(ctx.tenant_id) as conn:
        user = get_user(conn, ctx.uuid_param("id"))
        return {"sessions": sessions.list_sessions(conn, user["id"])}


@bp.route(route="api/users/{id}/sessions/{sid}", methods=["DELETE"])
@endpoint(permission="sessions.manage", allow_cancelled=True, tags=("sessions",))
def revoke_user_session(ctx: RequestContext) -> None:
    """Revoke one of a user's sessions; it fails on its very next request."""
    p = ctx.principal
    assert p is not None
    actor, meta = audit.context_actor(ctx)
    with db.tenant_tx(ctx.tenant_id) as conn:
        user = get_user(conn, ctx.uuid_param("id"))
        sessions.revoke(conn, session_id=ctx.uuid_param("sid"), user_id=user["id"], reason="revoked by an admin",
                        by=p.user_id, actor=actor, meta=meta, tenant_id=ctx.tenant_id)
