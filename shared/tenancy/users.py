"""Tenant users: invitations, guarded edits, deactivation. Never deleted, ids never reused.

The guards here are the server's word on who may change whom; the HTTP layer only checks
that the caller holds the endpoint's permission. Every edit takes a reason and appends an
audit event with the old and new values in the same transaction.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from shared.audit import chain as audit
from shared.core import db, mail
from shared.core.db import Conn
from shared.core.errors import Conflict, Forbidden, NotFound, ValidationFailed
from shared.core.pagination import decode_cursor, encode_cursor
from shared.core.settings import get_settings
from shared.identity.guards import Principal
from shared.identity.opaque import new_token
from shared.identity.sessions import revoke_all
from shared.tenancy.errors import UnknownTimeZone
from shared.tenancy.rbac import Role, role_permissions
from shared.web.models import EMAIL_ADDRESS

INVITATION_TTL = timedelta(days=7)
EMAIL = re.compile(rf"^{EMAIL_ADDRESS}$")
USER_COLUMNS = "id, email, display_name, time_zone, role, status, created_at, updated_at, deactivated_at"


def normalize_email(email: str) -> str:
    """Lower-cased, trimmed; raises ValidationFailed if it is not an address."""
    value = email.strip().lower()
    if len(value) > 254 or not EMAIL.match(value):
        raise ValidationFailed("not an email address", errors=[{"location": ["body", "email"], "message": "not an email address"}])
    return value


def check_time_zone(zone: str) -> str:
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise UnknownTimeZone(
            "unknown time zone", errors=[{"location": ["body", "time_zone"], "message": "not an IANA time zone"}]
        ) from None
    return zone


def _user_json(row: dict[str, Any], designations: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    out = {k: (str(v) if k == "id" else v) for k, v in row.items()}
    if designations is not None:
        out["designations"] = designations
    return out


def _designations_of(conn: Conn, user_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    rows = conn.execute(
        """select ud.user_id::text as user_id, d.id::text as id, d.name
             from user_designations ud join designations d on d.tenant_id = ud.tenant_id and d.id = ud.designation_id
            where ud.user_id = any(%s::uuid[]) and d.deleted_at is null order by d.name""",
        (user_ids,),
    ).fetchall()
    out: dict[str, list[dict[str, Any]]] = {uid: [] for uid in user_ids}
    for r in rows:
        out[r["user_id"]].append({"id": r["id"], "name": r["name"]})
    return out


def get_user(conn: Conn, user_id: uuid.UUID | str, *, lock: bool = False) -> dict[str, Any]:
    """A user of the transaction's tenant. Raises NotFound (also for another tenant's id)."""
    row = conn.execute(
        f"select {USER_COLUMNS} from users where id = %s{' for update' if lock else ''}", (str(user_id),)  # noqa: S608  # nosec B608  # only constants and a fixed FOR UPDATE clause; values are bound
    ).fetchone()
    if row is None:
        raise NotFound("no such user")
    return _user_json(row, _designations_of(conn, [str(row["id"])])[str(row["id"])])


def list_users(
    conn: Conn, *, after: str | None, limit: int, status: str | None, role: str | None
) -> dict[str, Any]:
    cursor = decode_cursor(after, ("text", "uuid"))
    clauses, params = ["true"], []
    if cursor:
        clauses.append("(email, id) > (%s, %s::uuid)")
        params += cursor
    if status:
        clauses.append("status = %s")
        params.append(status)
    if role:
        clauses.append("role = %s")
        params.append(role)
    rows = conn.execute(
        f"select {USER_COLUMNS} from users where {' and '.join(clauses)} order by email, id limit %s",  # noqa: S608  # nosec B608  # clauses holds only literal conditions; values are bound
        [*params, limit + 1],
    ).fetchall()
    page = rows[:limit]
    des = _designations_of(conn, [str(r["id"]) for r in page])
    return {
        "users": [_user_json(r, des[str(r["id"])]) for r in page],
        "next": encode_cursor(page[-1]["email"], str(page[-1]["id"])) if len(rows) > limit else None,
    }


# --- guards -------------------------------------------------------------------------------


def assert_can_assign_role(actor: Principal, role: str) -> None:
    """Only an ADMIN makes an ADMIN; nobody grants a permission they do not hold."""
    if role == Role.ADMIN and actor.role != Role.ADMIN:
        raise Forbidden("only an ADMIN can make an ADMIN")
    missing = role_permissions(role) - actor.permissions
    if missing:
        raise Forbidden(f"cannot grant permissions you do not hold: {', '.join(sorted(missing))}")


def _assert_may_manage(actor: Principal, target: dict[str, Any]) -> None:
    if target["role"] == Role.ADMIN and actor.role != Role.ADMIN:
        raise Forbidden("only an ADMIN can change an ADMIN")


def _lock_active_admins(conn: Conn) -> int:
    """Lock every active ADMIN row, always in id order, and count them. Taken before the
    target's row, so two ADMINs removing each other serialize instead of deadlocking, and
    the second one sees the first one's change."""
    return len(conn.execute("select id from users where role = 'ADMIN' and status = 'active' order by id for update").fetchall())


def _assert_not_last_admin(target: dict[str, Any], active_admins: int) -> None:
    if target["role"] == Role.ADMIN and target["status"] == "active" and active_admins <= 1:
        raise Conflict("the last active ADMIN cannot be demoted or deactivated")


# --- invitations --------------------------------------------------------------------------


@dataclass(frozen=True)
class Invitation:
    user: dict[str, Any]
    token: str
    expires_at: Any


def invite(
    conn: Conn,
    *,
    tenant_id: str,
    email: str,
    role: str,
    display_name: str = "",
    time_zone: str = "UTC",
    actor: Principal | None,
    audit_actor: audit.Actor,
    meta: audit.RequestMeta | None,
    reason: str,
) -> Invitation:
    """Create an invited user with a single-use invitation (token stored hashed) and queue
    the invitation mail. `actor` None means the platform (first ADMIN of a new tenant).

    Raises:
        Forbidden: the actor may not grant that role.
        Conflict: a user with that email exists in the tenant.
    """
    email = normalize_email(email)
    check_time_zone(time_zone)
    if actor is not None:
        assert_can_assign_role(actor, role)
    with db.savepoint_or_conflict(conn, "a user with that email already exists in this tenant"):
        row = conn.execute(
            f"""insert into users (tenant_id, email, display_name, time_zone, role)
                values (%s, %s, %s, %s, %s) returning {USER_COLUMNS}""",  # noqa: S608  # nosec B608  # only module constants are interpolated; values are bound
            (tenant_id, email, display_name.strip(), time_zone, role),
        ).fetchone()
    assert row is not None
    token, hashed = new_token("inv", tenant_id)
    inv = conn.execute(
        """insert into invitations (tenant_id, user_id, token_hash, expires_at, created_by)
           values (%s, %s, %s, now() + %s, %s) returning id, expires_at""",
        (tenant_id, row["id"], hashed, INVITATION_TTL, actor.user_id if actor else None),
    ).fetchone()
    assert inv is not None
    mail.enqueue(
        conn, tenant_id=tenant_id, to=email, subject="You are invited to Custos", kind="invitation",
        body=(f"You have been invited to Custos as {role}.\n\nInvitation code: {token}\n"
              f"Open {get_settings().public_app_url}/invitation and enter it before {inv['expires_at'].isoformat()}.\n"),
    )
    user = _user_json(row, [])
    audit.append(
        conn, tenant_id=tenant_id, actor=audit_actor, action="user.invited", target_type="user",
        target_id=str(row["id"]), after={"email": email, "role": role, "display_name": user["display_name"]},
        reason=reason, meta=meta,
    )
    return Invitation(user=user, token=token, expires_at=inv["expires_at"])


# --- edits --------------------------------------------------------------------------------


def update_user(
    conn: Conn,
    *,
    actor: Principal,
    user_id: uuid.UUID,
    changes: dict[str, Any],
    reason: str,
    meta: audit.RequestMeta,
    audit_actor: audit.Actor,
) -> dict[str, Any]:
    """Change display name, time zone and/or role, with the guards.

    Raises:
        NotFound: no such user in the tenant.
        Forbidden: changing one's own role; an ADMIN by a non-ADMIN; granting unheld permissions.
        Conflict: demoting the last active ADMIN; editing a deactivated user.
    """
    active_admins = _lock_active_admins(conn) if changes.get("role") is not None else 0
    target = get_user(conn, user_id, lock=True)
    tenant_id = actor.tenant_id
    assert tenant_id is not None
    if target["status"] == "deactivated":
        raise Conflict("a deactivated user cannot be changed")
    before, after = {}, {}
    for field in ("display_name", "time_zone", "role"):
        if field in changes and changes[field] is not None and changes[field] != target[field]:
            before[field], after[field] = target[field], changes[field]
    if not after:
        return target
    if "time_zone" in after:
        check_time_zone(after["time_zone"])
    if "role" in after:
        if target["id"] == actor.user_id:
            raise Forbidden("you cannot change your own role")
        _assert_may_manage(actor, target)
        assert_can_assign_role(actor, after["role"])
        if after["role"] != Role.ADMIN:
            _assert_not_last_admin(target, active_admins)
    sets = ", ".join(f"{k} = %s" for k in after)
    conn.execute(f"update users set {sets}, updated_at = now() where id = %s", [*after.values(), str(user_id)])  # noqa: S608  # nosec B608  # column names come from a literal tuple of fields; values are bound
    audit.append(
        conn, tenant_id=tenant_id, actor=audit_actor,
        action="user.role_changed" if "role" in after else "user.updated",
        target_type="user", target_id=str(user_id), before=before, after=after, reason=reason, meta=meta,
    )
    return get_user(conn, user_id)


def deactivate_user(
    conn: Conn, *, actor: Principal, user_id: uuid.UUID, reason: str,
    meta: audit.RequestMeta, audit_actor: audit.Actor,
) -> dict[str, Any]:
    """Deactivate (never delete) a user; pending invitations die with it.

    Raises:
        NotFound, Forbidden (an ADMIN by a non-ADMIN), Conflict (last active ADMIN, already deactivated).
    """
    active_admins = _lock_active_admins(conn)
    target = get_user(conn, user_id, lock=True)
    assert actor.tenant_id is not None
    if target["status"] == "deactivated":
        raise Conflict("the user is already deactivated")
    _assert_may_manage(actor, target)
    _assert_not_last_admin(target, active_admins)
    conn.execute(
        "update users set status = 'deactivated', deactivated_at = now(), updated_at = now() where id = %s",
        (str(user_id),),
    )
    conn.execute(
        "update invitations set revoked_at = now() where user_id = %s and used_at is null and revoked_at is null",
        (str(user_id),),
    )
    revoke_all(conn, user_id=str(user_id), reason="user deactivated")
    audit.append(
        conn, tenant_id=actor.tenant_id, actor=audit_actor, action="user.deactivated", target_type="user",
        target_id=str(user_id), before={"status": target["status"]}, after={"status": "deactivated"},
        reason=reason, meta=meta,
    )
    return get_user(conn, user_id)


def create_sso_user(conn: Conn, *, tenant_id: str, email: str, display_name: str, role: str,
                    audit_actor: audit.Actor, meta: audit.RequestMeta | None, provider_id: str) -> dict[str, Any]:
    """An active user created by a first single sign-on (just-in-time provisioning): no
    password, no invitation; the provider vouched for the person. Audited as `user.provisioned`.

    Raises:
        Conflict: a user with that email exists in the tenant.
        ValidationFailed: not an email address.
    """
    email = normalize_email(email)
    with db.savepoint_or_conflict(conn, "a user with that email already exists in this tenant"):
        row = conn.execute(
            f"""insert into users (tenant_id, email, display_name, role, status)
                values (%s, %s, %s, %s, 'active') returning {USER_COLUMNS}""",  # noqa: S608  # nosec B608  # only module constants are interpolated; values are bound
            (tenant_id, email, display_name.strip()[:200], Role(role).value),
        ).fetchone()
    assert row is not None
    user = _user_json(row)
    audit.append(conn, tenant_id=tenant_id, actor=audit_actor, action="user.provisioned", target_type="user",
                 target_id=user["id"], after={"email": email, "role": user["role"], "display_name": user["display_name"],
                                              "provider_id": provider_id, "status": "active"}, meta=meta)
    return user
