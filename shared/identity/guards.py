"""Who is calling, and may they do this: authentication and permission guards.

The token proves who the caller is and which tenant they act in; what they may do is read
from the database on every request (role, designations, overrides, status), so a role
change or a deactivation takes effect on the caller's very next request. The tenant of a
request comes from its access token only, never from the URL or body.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import azure.functions as func

from shared.audit import chain as audit
from shared.core import db
from shared.core.db import Conn
from shared.core.errors import Forbidden, Unauthenticated
from shared.core.settings import get_settings
from shared.identity import sessions
from shared.identity.errors import MfaEnrolmentRequired
from shared.identity.tokens import AccessClaims, verify_access_token
from shared.tenancy.rbac import PLATFORM_OPERATOR, SCIM_TOKEN, SUPPORT, SUPPORT_PERMISSIONS, effective_permissions

MFA_REQUIRED_ROLES: frozenset[str] = frozenset({"ADMIN", "REVIEWER"})
"""Roles that must have a second factor; the tenant setting below extends it to every role."""

MFA_ALL_ROLES_SETTING = "mfa.required_for_all_roles"


@dataclass(frozen=True)
class Principal:
    """The authenticated caller."""

    user_id: str
    tenant_id: str | None
    session_id: str
    role: str
    permissions: frozenset[str]
    name: str | None = None
    time_zone: str = "UTC"
    support_grant_id: str | None = None
    tenant_status: str = "ACTIVE"
    mfa_required: bool = False
    mfa_enrolled: bool = False

    @property
    def is_operator(self) -> bool:
        """A platform operator outside every tenant."""
        return self.role == PLATFORM_OPERATOR and self.tenant_id is None

    @property
    def is_support(self) -> bool:
        """A platform operator inside a tenant under granted, time-limited support access."""
        return self.support_grant_id is not None

    @property
    def is_scim_token(self) -> bool:
        """A tenant's SCIM provisioning token (shared.identity.sso.scim_tokens), not a person."""
        return self.role == SCIM_TOKEN

    @property
    def mfa_enrolment_pending(self) -> bool:
        """Must have a second factor and has none yet: may only reach enrolment endpoints."""
        return self.mfa_required and not self.mfa_enrolled


def bearer_token(req: func.HttpRequest) -> str:
    """The token of an `Authorization: Bearer` header.

    Raises:
        Unauthenticated: no header, another scheme, or an empty token.
    """
    header = req.headers.get("Authorization") or ""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("a bearer access token is required")
    return token.strip()


def _uuid(value: str | None) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise Unauthenticated("invalid token") from None


def authenticate(req: func.HttpRequest, *, request_id: str | None = None, client_ip: str | None = None) -> Principal:
    """Verify the request's access token and load its principal from the database; the
    session's activity is recorded on the way (see shared.identity.sessions). `request_id` and
    `client_ip` go into the event of a session that ends here for idleness.

    Raises:
        Unauthenticated: missing, forged, expired or otherwise invalid token, a session that
            has ended (revoked, expired, idle: an idle one is revoked now), or a caller who is
            no longer active.
    """
    claims = verify_access_token(bearer_token(req))
    meta = audit.RequestMeta(client_ip or None, (req.headers.get("User-Agent") or "")[:512] or None,
                             claims.session_id, request_id)
    return principal_for(claims, meta)


def principal_for(claims: AccessClaims, meta: audit.RequestMeta) -> Principal:
    """The principal of verified token claims, loaded from the database; `meta` goes into the
    event of a session that ends here for idleness.

    Raises:
        Unauthenticated: the caller, their session or their support grant is no longer live.
    """
    if claims.tenant_id is None:
        if claims.role != PLATFORM_OPERATOR:
            raise Unauthenticated("invalid token")
        return _operator(claims, meta)
    if claims.role == SUPPORT:
        return _support(claims)
    return _tenant_user(claims, meta)


def _tenant_user(claims: AccessClaims, meta: audit.RequestMeta) -> Principal:
    tenant_id, user_id, session_id = _uuid(claims.tenant_id), _uuid(claims.subject), _uuid(claims.session_id)
    # One round trip: custos_principal (migration 0017) sets the tenant, records the session's
    # activity at most once every TOUCH_EVERY_S and returns all the guard decides on, as one
    # autocommit statement. Its idle test matches the one that revokes (sessions.MAX_IDLE_SQL).
    rows = db.one_statement(
        "select * from custos_principal(%(tid)s, %(uid)s, %(sid)s, %(touch)s, %(mfa_key)s)",
        {"tid": tenant_id, "uid": user_id, "sid": session_id, "touch": sessions.TOUCH_EVERY_S,
         "mfa_key": MFA_ALL_ROLES_SETTING},
    )
    return _tenant_principal(claims, meta, rows[0] if rows else None)


def principal_in_tenant_tx(claims: AccessClaims, meta: audit.RequestMeta) -> tuple[Principal, Conn | None]:
    """`principal_for` of a tenant user, read in the same message that opens the request's
    tenant transaction (`db.open_tenant_tx`): returns the principal and the connection inside
    that transaction, for the handler's first `tenant_tx` (`db.held_tx`) or `db.release`.

    The read writes nothing, so the request's transaction never holds a session row lock.
    When the session's activity is due to be recorded (its last touch older than
    TOUCH_EVERY_S) or the caller is to be refused, the transaction is released and
    `principal_for`'s own statement touches or refuses, as for any request; the connection
    returned is then None.

    Raises:
        Unauthenticated: as `principal_for`.
        ValueError: `claims` has no tenant, or is a support token's.
    """
    if claims.tenant_id is None or claims.role == SUPPORT:
        raise ValueError("principal_in_tenant_tx is for tenant users")
    tenant_id, user_id, session_id = _uuid(claims.tenant_id), _uuid(claims.subject), _uuid(claims.session_id)
    # Literals, not parameters (the simple query protocol carries several statements in one
    # message): two validated UUIDs, an integer and a constant. custos_principal_tx (migration
    # 0034) reads what custos_principal does, plus `touch_due`, and writes nothing; its query is
    # planned once per connection (an ad-hoc statement here was planned on every request).
    conn, rows = db.open_tenant_tx(
        tenant_id,
        f"select * from custos_principal_tx('{user_id}', '{session_id}', {int(sessions.TOUCH_EVERY_S)},"  # noqa: S608  # nosec B608  # only validated UUIDs (uuid.UUID round trip) and module constants are interpolated
        f" '{MFA_ALL_ROLES_SETTING}')",
    )
    row = rows[0] if rows else None
    if row is None or not _live(row) or row["touch_due"]:
        # A session to touch (at most once every TOUCH_EVERY_S) or a caller to refuse: the
        # transaction is given back first (a second connection held by one request could
        # starve the pool), and the autocommit read of `principal_for` touches or refuses.
        db.release(conn)
        return _tenant_user(claims, meta), None
    try:
        return _tenant_principal(claims, meta, row), conn
    except BaseException:
        db.release(conn)
        raise


def _live(row: Any) -> bool:
    return (row["status"] == "active" and row["tenant_status"] not in ("PURGING", "PURGED") and row["session_state"] == "live")


def _tenant_principal(claims: AccessClaims, meta: audit.RequestMeta, row: Any) -> Principal:
    """The principal of custos_principal's row (an idle session is ended here).

    Raises:
        Unauthenticated: the account, the tenant or the session is not live.
    """
    tenant_id, user_id, session_id = _uuid(claims.tenant_id), _uuid(claims.subject), _uuid(claims.session_id)
    if row is None or row["status"] != "active" or row["tenant_status"] in ("PURGING", "PURGED"):
        raise Unauthenticated("the account is not active")
    if row["session_state"] == "idle":
        with db.tenant_tx(tenant_id) as conn:
            sessions.end_if_idle(conn, tenant_id=tenant_id, session_id=session_id, meta=meta)
        raise Unauthenticated(sessions.IDLE_DETAIL)
    if row["session_state"] != "live":
        raise Unauthenticated("the session has ended")
    return Principal(
        user_id=user_id,
        tenant_id=tenant_id,
        session_id=claims.session_id,
        role=row["role"],
        permissions=effective_permissions(
            row["role"], set(row["designation_permissions"]), set(row["grants"]), set(row["denies"])
        ),
        name=row["display_name"] or claims.name,
        time_zone=row["time_zone"],
        tenant_status=row["tenant_status"],
        mfa_required=row["role"] in MFA_REQUIRED_ROLES or bool(row["mfa_all_roles"]),
        mfa_enrolled=bool(row["mfa_enrolled"]),
    )


def _operator(claims: AccessClaims, meta: audit.RequestMeta) -> Principal:
    operator_id, session_id = _uuid(claims.subject), _uuid(claims.session_id)
    max_idle = get_settings().operator_session_max_idle_minutes
    # One autocommit statement, no tenant set (operator tables are platform tables): a
    # CTE's update runs even though nothing reads it.
    rows = db.one_statement(
        """with touched as (
                update operator_sessions s set last_seen_at = now()
                 where s.id = %(sid)s and s.operator_id = %(oid)s and s.revoked_at is null
                   and s.expires_at > now() and s.last_seen_at < now() - make_interval(secs => %(touch)s)
                   and s.last_seen_at >= now() - make_interval(mins => %(idle)s)
                returning s.id)
           select o.display_name, o.status,
                  (select case when s.revoked_at is not null or s.expires_at <= now() then 'ended'
                               when s.last_seen_at < now() - make_interval(mins => %(idle)s) then 'idle'
                               else 'live' end
                     from operator_sessions s where s.id = %(sid)s and s.operator_id = o.id) as session_state,
                  exists(select 1 from operator_mfa_totp m where m.operator_id = o.id and m.confirmed_at is not null)
                    or exists(select 1 from operator_webauthn_credentials w where w.operator_id = o.id)
                    as mfa_enrolled
             from platform_operators o where o.id = %(oid)s""",
        {"sid": session_id, "oid": operator_id, "touch": sessions.TOUCH_EVERY_S, "idle": max_idle},
    )
    row = rows[0] if rows else None
    if row is None or row["status"] != "active":
        raise Unauthenticated("the account is not active")
    if row["session_state"] == "idle":
        with db.tenant_tx(audit.PLATFORM_CHAIN) as conn:
            sessions.end_operator_session_if_idle(conn, session_id=session_id, max_idle_minutes=max_idle, meta=meta)
        raise Unauthenticated(sessions.IDLE_DETAIL)
    if row["session_state"] != "live":
        raise Unauthenticated("the session has ended")
    return Principal(
        user_id=operator_id,
        tenant_id=None,
        session_id=claims.session_id,
        role=PLATFORM_OPERATOR,
        permissions=frozenset(),
        name=row["display_name"],
        mfa_required=True,
        mfa_enrolled=bool(row["mfa_enrolled"]),
    )


def _support(claims: AccessClaims) -> Principal:
    """An operator's support token: valid only while the tenant's grant is live."""
    tenant_id, operator_id, grant_id = _uuid(claims.tenant_id), _uuid(claims.subject), _uuid(claims.session_id)
    rows = db.one_statement("select * from custos_support_principal(%s, %s, %s)", (tenant_id, operator_id, grant_id))
    row = rows[0] if rows else None
    if row is None:
        raise Unauthenticated("support access has ended")
    return Principal(
        user_id=operator_id,
        tenant_id=tenant_id,
        session_id=grant_id,
        role=SUPPORT,
        permissions=SUPPORT_PERMISSIONS,
        name=row["display_name"],
        support_grant_id=grant_id,
    )


def require_permission(principal: Principal, permission: str) -> None:
    """Raises Forbidden unless the principal holds `permission` in its own tenant."""
    if principal.tenant_id is None or permission not in principal.permissions:
        raise Forbidden(f"requires permission {permission}")


def require_mfa_enrolment(principal: Principal, *, enrolment_endpoint: bool) -> None:
    """Raises MfaEnrolmentRequired when the caller must have a second factor, has none, and
    the endpoint is not one of those that let them enrol (`endpoint(mfa_enrolment=True)`)."""
    if principal.mfa_enrolment_pending and not enrolment_endpoint:
        where = "/api/platform/mfa" if principal.is_operator else "/api/mfa"
        raise MfaEnrolmentRequired(
            f"your role requires a second factor: enrol one (POST {where}/totp/enroll or a passkey) first"
        )


def require_tenant_user(principal: Principal) -> None:
    """Raises Forbidden unless the caller acts inside a tenant (a user or support access)."""
    if principal.tenant_id is None:
        raise Forbidden("requires a tenant user")


def require_operator(principal: Principal) -> None:
    """Raises Forbidden unless the caller is a platform operator."""
    if not principal.is_operator:
        raise Forbidden("requires a platform operator")
