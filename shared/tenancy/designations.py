"""Designations (tenant-defined bundles of extra permissions) and per-user overrides.

Effective permissions = role + designations + granted overrides - denied overrides (deny
wins; shared.tenancy.rbac.effective_permissions). Nobody grants a permission they do not hold.
"""

from __future__ import annotations

import uuid
from typing import Any

from shared.audit import chain as audit
from shared.core import db
from shared.core.db import Conn
from shared.core.errors import Conflict, Forbidden, NotFound, ValidationFailed
from shared.identity.guards import Principal
from shared.tenancy.rbac import PERMISSIONS, Role
from shared.tenancy.users import get_user

COLUMNS = "id, name, description, permissions, created_at, updated_at"


def check_permissions(permissions: list[str], location: str) -> list[str]:
    unknown = sorted(set(permissions) - PERMISSIONS.keys())
    if unknown:
        raise ValidationFailed(
            "unknown permissions",
            errors=[{"location": ["body", location], "message": f"unknown permission {p}"} for p in unknown],
        )
    return sorted(set(permissions))


def assert_holds(actor: Principal, permissions: set[str] | list[str]) -> None:
    missing = set(permissions) - actor.permissions
    if missing:
        raise Forbidden(f"cannot grant permissions you do not hold: {', '.join(sorted(missing))}")


def _json(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "id": str(row["id"])}


def list_designations(conn: Conn) -> list[dict[str, Any]]:
    rows = conn.execute(
        f"""select {COLUMNS}, (select count(*) from user_designations ud
                                  join users u on u.tenant_id = ud.tenant_id and u.id = ud.user_id
                                 where ud.designation_id = d.id and u.status <> 'deactivated') as members
              from designations d where deleted_at is null order by lower(name)"""  # noqa: S608  # nosec B608  # only module constants are interpolated; values are bound
    ).fetchall()
    return [_json(r) for r in rows]


def get_designation(conn: Conn, designation_id: uuid.UUID, *, lock: bool = False) -> dict[str, Any]:
    row = conn.execute(
        f"select {COLUMNS} from designations where id = %s and deleted_at is null{' for update' if lock else ''}",  # noqa: S608  # nosec B608  # only constants and a fixed FOR UPDATE clause; values are bound
        (str(designation_id),),
    ).fetchone()
    if row is None:
        raise NotFound("no such designation")
    return _json(row)


def create_designation(
    conn: Conn, *, actor: Principal, name: str, description: str, permissions: list[str],
    reason: str, audit_actor: audit.Actor, meta: audit.RequestMeta,
) -> dict[str, Any]:
    perms = check_permissions(permissions, "permissions")
    assert_holds(actor, perms)
    with db.savepoint_or_conflict(conn, "a designation with that name exists"):
        row = conn.execute(
            f"""insert into designations (tenant_id, name, description, permissions)
                values (%s, %s, %s, %s) returning {COLUMNS}""",  # noqa: S608  # nosec B608  # only module constants are interpolated; values are bound
            (actor.tenant_id, name.strip(), description, perms),
        ).fetchone()
    assert row is not None
    out = _json(row)
    audit.append(
        conn, tenant_id=str(actor.tenant_id), actor=audit_actor, action="designation.created",
        target_type="designation", target_id=out["id"],
        after={"name": out["name"], "description": out["description"], "permissions": perms},
        reason=reason, meta=meta,
    )
    return out


def update_designation(
    conn: Conn, *, actor: Principal, designation_id: uuid.UUID, changes: dict[str, Any],
    reason: str, audit_actor: audit.Actor, meta: audit.RequestMeta,
) -> dict[str, Any]:
    current = get_designation(conn, designation_id, lock=True)
    if changes.get("permissions") is not None:
        changes["permissions"] = check_permissions(changes["permissions"], "permissions")
        assert_holds(actor, set(changes["permissions"]) - set(current["permissions"]))
    if changes.get("name") is not None:
        changes["name"] = changes["name"].strip()
    before, after = {}, {}
    for field in ("name", "description", "permissions"):
        if changes.get(field) is not None and changes[field] != current[field]:
            before[field], after[field] = current[field], changes[field]
    if not after:
        return current
    with db.savepoint_or_conflict(conn, "a designation with that name exists"):
        conn.execute(
            f"update designations set {', '.join(f'{k} = %s' for k in after)}, updated_at = now() where id = %s",  # noqa: S608  # nosec B608  # column names come from a literal tuple of fields; values are bound
            [*after.values(), str(designation_id)],
        )
    audit.append(
        conn, tenant_id=str(actor.tenant_id), actor=audit_actor, action="designation.updated",
        target_type="designation", target_id=str(designation_id), before=before, after=after,
        reason=reason, meta=meta,
    )
    return get_designation(conn, designation_id)


def delete_designation(
    conn: Conn, *, actor: Principal, designation_id: uuid.UUID, reason: str,
    audit_actor: audit.Actor, meta: audit.RequestMeta,
) -> None:
    """Retire a designation (kept for the record) and remove it from its holders."""
    current = get_designation(conn, designation_id, lock=True)
    holders = [
        str(r["user_id"])
        for r in conn.execute(
            "delete from user_designations where designation_id = %s returning user_id", (str(designation_id),)
        ).fetchall()
    ]
    conn.execute("update designations set deleted_at = now(), updated_at = now() where id = %s", (str(designation_id),))
    audit.append(
        conn, tenant_id=str(actor.tenant_id), actor=audit_actor, action="designation.deleted",
        target_type="designation", target_id=str(designation_id),
        before={"name": current["name"], "permissions": current["permissions"], "holders": sorted(holders)},
        reason=reason, meta=meta,
    )


def set_user_designations(
    conn: Conn, *, actor: Principal, user_id: uuid.UUID, designation_ids: list[uuid.UUID],
    reason: str, audit_actor: audit.Actor, meta: audit.RequestMeta,
) -> dict[str, Any]:
    """Replace a user's designations. Adding one requires holding all its permissions."""
    target = get_user(conn, user_id, lock=True)
    if target["status"] == "deactivated":
        raise Conflict("a deactivated user cannot be changed")
    if target["role"] == Role.ADMIN and actor.role != Role.ADMIN:
        raise Forbidden("only an ADMIN can change an ADMIN")
    wanted = {str(d) for d in designation_ids}
    current = {d["id"] for d in target["designations"]}
    for added in wanted - current:
        assert_holds(actor, get_designation(conn, uuid.UUID(added))["permissions"])
    if wanted == current:
        return target
    for removed in current - wanted:
        conn.execute("delete from user_designations where user_id = %s and designation_id = %s", (str(user_id), removed))
    for added in wanted - current:
        conn.execute(
            "insert into user_designations (tenant_id, user_id, designation_id) values (%s, %s, %s)",
            (actor.tenant_id, str(user_id), added),
        )
    audit.append(
        conn, tenant_id=str(actor.tenant_id), actor=audit_actor, action="user.designations_changed",
        target_type="user", target_id=str(user_id), before=sorted(current), after=sorted(wanted),
        reason=reason, meta=meta,
    )
    return get_user(conn, user_id)


def get_overrides(conn: Conn, user_id: uuid.UUID) -> list[dict[str, Any]]:
    get_user(conn, user_id)
    rows = conn.execute(
        "select permission, effect, created_at from user_permission_overrides where user_id = %s order by permission",
        (str(user_id),),
    ).fetchall()
    return [dict(r) for r in rows]


def put_overrides(
    conn: Conn, *, actor: Principal, user_id: uuid.UUID, overrides: list[dict[str, str]],
    reason: str, audit_actor: audit.Actor, meta: audit.RequestMeta,
) -> list[dict[str, Any]]:
    """Replace a user's overrides.

    Raises:
        Forbidden: overriding oneself; an ADMIN by a non-ADMIN; granting a permission the
            actor does not hold.
        ValidationFailed: unknown permission, or one permission listed twice.
    """
    target = get_user(conn, user_id, lock=True)
    if target["id"] == actor.user_id:
        raise Forbidden("you cannot change your own permissions")
    if target["role"] == Role.ADMIN and actor.role != Role.ADMIN:
        raise Forbidden("only an ADMIN can change an ADMIN")
    perms = [o["permission"] for o in overrides]
    check_permissions(perms, "overrides")
    if len(perms) != len(set(perms)):
        raise ValidationFailed("a permission is listed twice", errors=[{"location": ["body", "overrides"], "message": "duplicate permission"}])
    assert_holds(actor, {o["permission"] for o in overrides if o["effect"] == "grant"})
    before = {o["permission"]: o["effect"] for o in get_overrides(conn, user_id)}
    after = {o["permission"]: o["effect"] for o in overrides}
    if before != after:
        conn.execute("delete from user_permission_overrides where user_id = %s", (str(user_id),))
        for permission, effect in sorted(after.items()):
            conn.execute(
                """insert into user_permission_overrides (tenant_id, user_id, permission, effect, created_by)
                   values (%s, %s, %s, %s, %s)""",
                (actor.tenant_id, str(user_id), permission, effect, actor.user_id),
            )
        audit.append(
            conn, tenant_id=str(actor.tenant_id), actor=audit_actor, action="user.overrides_changed",
            target_type="user", target_id=str(user_id), before=before, after=after, reason=reason, meta=meta,
        )
    return get_overrides(conn, user_id)
