"""Who is calling, and may they do this: authentication and permission guards.

The token proves who the caller is and which tenant they act in; what they may do is read
from the database on every request (role, designations, overrides, status), so a role
change or a deactivation takes effect on the caller's very next request. The tenant of a
request comes from its access token only, never from the URL or body.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import azure.functions as func

from shared import db
from shared.errors import Forbidden, Unauthenticated
from shared.rbac import PLATFORM_OPERATOR, SUPPORT, SUPPORT_PERMISSIONS, effective_permissions
from shared.tokens import AccessClaims, verify_access_token

MFA_REQUIRED_ROLES: frozenset[str] = frozenset({"ADMIN", "REVIEWER"})
"""Roles that must have a second factor; the tenant setting below extends it to every role."""

MFA_ALL_ROLES_SETTING = "mfa.required_for_all_roles"


class MfaEnrolmentRequired(Forbidden):
    code, title = "mfa-enrolment-required", "A second factor is required"


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


def authenticate(req: func.HttpRequest) -> Principal:
    """Verify the request's access token and load its principal from the database.

    Raises:
        Unauthenticated: missing, forged, expired or otherwise invalid token, or a caller
            who is no longer active.
    """
    claims = verify_access_token(bearer_token(req))
    if claims.tenant_id is None:
        if claims.role != PLATFORM_OPERATOR:
            raise Unauthenticated("invalid token")
        return _operator(claims)
    if claims.role == SUPPORT:
        return _support(claims)
    return _tenant_user(claims)


def _tenant_user(claims: AccessClaims) -> Principal:
    tenant_id, user_id = _uuid(claims.tenant_id), _uuid(claims.subject)
    with db.tenant_tx(tenant_id) as conn:
        row = conn.execute(
            """select u.role, u.status, u.display_name, u.time_zone, t.status as tenant_status,
                      array(select distinct p from user_designations ud
                              join designations d on d.tenant_id = ud.tenant_id and d.id = ud.designation_id
                              cross join unnest(d.permissions) p
                             where ud.user_id = u.id and d.deleted_at is null) as designation_permissions,
                      array(select permission from user_permission_overrides o
                             where o.user_id = u.id and o.effect = 'grant') as grants,
                      array(select permission from user_permission_overrides o
                             where o.user_id = u.id and o.effect = 'deny') as denies,
                      exists(select 1 from sessions s
                              where s.id = %s and s.user_id = u.id and s.revoked_at is null
                                and s.expires_at > now()) as session_live,
                      exists(select 1 from mfa_totp m where m.user_id = u.id and m.confirmed_at is not null)
                        or exists(select 1 from webauthn_credentials w where w.user_id = u.id) as mfa_enrolled,
                      coalesce((select ts.value = 'true'::jsonb from tenant_settings ts where ts.key = %s),
                               false) as mfa_all_roles
                 from users u join tenants t on t.id = u.tenant_id
                where u.id = %s""",
            (_uuid(claims.session_id), MFA_ALL_ROLES_SETTING, user_id),
        ).fetchone()
    if row is None or row["status"] != "active" or row["tenant_status"] == "PURGED":
        raise Unauthenticated("the account is not active")
    if not row["session_live"]:
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


def _operator(claims: AccessClaims) -> Principal:
    operator_id = _uuid(claims.subject)
    with db.platform_tx() as conn:
        row = conn.execute(
            """select o.display_name, o.status,
                      exists(select 1 from operator_sessions s where s.id = %s and s.operator_id = o.id
                              and s.revoked_at is null and s.expires_at > now()) as session_live,
                      exists(select 1 from operator_mfa_totp m where m.operator_id = o.id and m.confirmed_at is not null)
                        or exists(select 1 from operator_webauthn_credentials w where w.operator_id = o.id)
                        as mfa_enrolled
                 from platform_operators o where o.id = %s""",
            (_uuid(claims.session_id), operator_id),
        ).fetchone()
    if row is None or row["status"] != "active":
        raise Unauthenticated("the account is not active")
    if not row["session_live"]:
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
    with db.tenant_tx(tenant_id) as conn:
        row = conn.execute(
            """select o.display_name from support_access_grants g
                 join platform_operators o on o.id = g.operator_id
                where g.id = %s and g.operator_id = %s and g.revoked_at is null
                  and g.expires_at > now() and o.status = 'active'""",
            (grant_id, operator_id),
        ).fetchone()
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
