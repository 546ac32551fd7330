"""Support access: a tenant ADMIN lets a platform operator in, read-only, for a while.

Operators see no tenant data by default. A grant names the operator, a reason and an end
(at most 72 hours); with it the operator can obtain a short-lived support token for that
tenant, whose permissions are shared.tenancy.rbac.SUPPORT_PERMISSIONS (read only). Every request
made with it is written to the tenant's audit trail (shared.web.endpoint), so the tenant sees it.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from shared.audit import chain as audit
from shared.core import db
from shared.core.db import Conn
from shared.core.errors import Forbidden, NotFound
from shared.core.settings import get_settings
from shared.identity.guards import Principal
from shared.identity.tokens import issue_access_token
from shared.tenancy.rbac import SUPPORT, Role

MAX_GRANT = timedelta(hours=72)
SUPPORT_TOKEN_TTL_S = 900
GRANT_COLUMNS = "id, operator_id, granted_by, reason, created_at, expires_at, revoked_at, revoked_by"


def _json(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, uuid.UUID) else v) for k, v in row.items()}


def grant(
    conn: Conn, *, actor: Principal, operator_email: str, reason: str, hours: int,
    audit_actor: audit.Actor, meta: audit.RequestMeta,
) -> dict[str, Any]:
    """Raises Forbidden unless the actor is an ADMIN; NotFound for an unknown operator."""
    if actor.role != Role.ADMIN or actor.is_support:
        raise Forbidden("only a tenant ADMIN grants support access")
    op = conn.execute(
        "select id, display_name from platform_operators where email = %s and status = 'active'",
        (operator_email.strip().lower(),),
    ).fetchone()
    if op is None:
        raise NotFound("no such platform operator")
    duration = min(timedelta(hours=hours), MAX_GRANT)
    row = conn.execute(
        f"""insert into support_access_grants (tenant_id, operator_id, granted_by, reason, expires_at)
            values (%s, %s, %s, %s, now() + %s) returning {GRANT_COLUMNS}""",  # noqa: S608  # nosec B608  # only module constants are interpolated; values are bound
        (actor.tenant_id, op["id"], actor.user_id, reason, duration),
    ).fetchone()
    assert row is not None
    out = _json(row)
    audit.append(
        conn, tenant_id=str(actor.tenant_id), actor=audit_actor, action="support.granted",
        target_type="support_grant", target_id=out["id"],
        after={"operator_id": out["operator_id"], "operator_name": op["display_name"],
               "expires_at": out["expires_at"].isoformat()},
        reason=reason, meta=meta,
    )
    return out


def list_grants(conn: Conn) -> list[dict[str, Any]]:
    rows = conn.execute(f"select {GRANT_COLUMNS} from support_access_grants order by created_at desc").fetchall()  # noqa: S608  # nosec B608  # only module constants are interpolated; values are bound
    return [_json(r) for r in rows]


def revoke(
    conn: Conn, *, actor: Principal, grant_id: uuid.UUID, reason: str,
    audit_actor: audit.Actor, meta: audit.RequestMeta,
) -> dict[str, Any]:
    if actor.role != Role.ADMIN or actor.is_support:
        raise Forbidden("only a tenant ADMIN revokes support access")
    row = conn.execute(
        f"""update support_access_grants set revoked_at = now(), revoked_by = %s
             where id = %s and revoked_at is null returning {GRANT_COLUMNS}""",  # noqa: S608  # nosec B608  # only module constants are interpolated; values are bound
        (actor.user_id, str(grant_id)),
    ).fetchone()
    if row is None:
        raise NotFound("no such active grant")
    audit.append(
        conn, tenant_id=str(actor.tenant_id), actor=audit_actor, action="support.revoked",
        target_type="support_grant", target_id=str(grant_id), reason=reason, meta=meta,
    )
    return _json(row)


def end(*, principal: Principal, meta: audit.RequestMeta) -> None:
    """A support token's logout: the grant it stands for ends now, so no token of it works."""
    assert principal.support_grant_id is not None and principal.tenant_id is not None
    with db.tenant_tx(principal.tenant_id) as conn:
        conn.execute(
            "update support_access_grants set revoked_at = now(), revoked_by = %s where id = %s and revoked_at is null",
            (principal.user_id, principal.support_grant_id),
        )
        audit.append(
            conn, tenant_id=principal.tenant_id,
            actor=audit.Actor(id=principal.user_id, name=principal.name or "", type="operator"),
            action="support.ended", target_type="support_grant", target_id=principal.support_grant_id, meta=meta,
        )


def issue_support_token(operator: Principal, tenant_id: str, meta: audit.RequestMeta) -> dict[str, Any]:
    """A read-only token for the tenant, if it has a live grant for this operator.

    Raises:
        NotFound: no live grant (the same answer whether or not the tenant exists).
    """
    with db.tenant_tx(tenant_id) as conn:
        row = conn.execute(
            """select id, expires_at, extract(epoch from expires_at - now())::int as left_s
                 from support_access_grants
                where operator_id = %s and revoked_at is null and expires_at > now()
                order by expires_at desc limit 1""",
            (operator.user_id,),
        ).fetchone()
        if row is None:
            raise NotFound("no live support access grant for this tenant")
        ttl = max(1, min(SUPPORT_TOKEN_TTL_S, get_settings().jwt_access_ttl_s, int(row["left_s"])))
        token = issue_access_token(
            subject=operator.user_id, tenant_id=tenant_id, session_id=str(row["id"]), role=SUPPORT,
            name=operator.name, ttl_s=ttl,
        )
        audit.append(
            conn, tenant_id=tenant_id, actor=audit.Actor(id=operator.user_id, name=operator.name or "", type="operator"),
            action="support.token_issued", target_type="support_grant", target_id=str(row["id"]), meta=meta,
        )
    return {"access_token": token, "token_type": "Bearer", "expires_in": ttl, "grant_id": str(row["id"])}
