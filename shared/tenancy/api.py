"""What the tenancy triggers call: users, designations, overrides, sessions, support access
and tenant settings; one function per endpoint, each owning its transaction (see
shared.web.caller)."""

from __future__ import annotations

import uuid
from typing import Any

from shared.audit import chain as audit
from shared.core.errors import NotFound
from shared.identity import sessions, signin
from shared.identity.guards import require_permission
from shared.tenancy import designations, support, tenant_settings, tenants, users
from shared.web.caller import Caller

# --- me and users ---------------------------------------------------------------------------------


def me(caller: Caller) -> dict[str, Any]:
    """The caller: user, role, designations and effective permissions (support access: the operator)."""
    p = caller.user
    if p.is_support:
        return {"user": {"id": p.user_id, "display_name": p.name}, "role": p.role, "designations": [],
                "permissions": sorted(p.permissions), "support_grant_id": p.support_grant_id}
    with caller.tenant_tx() as conn:
        user = users.get_user(conn, uuid.UUID(p.user_id))
    return {"user": user, "role": p.role, "designations": user["designations"], "permissions": sorted(p.permissions)}


def list_users(caller: Caller, *, after: str | None, limit: int, status: str | None, role: str | None) -> dict[str, Any]:
    with caller.tenant_tx() as conn:
        return users.list_users(conn, after=after, limit=limit, status=status, role=role)


def get_user(caller: Caller, user_id: uuid.UUID) -> dict[str, Any]:
    with caller.tenant_tx() as conn:
        return users.get_user(conn, user_id)


def invite(caller: Caller, *, email: str, role: str, display_name: str, time_zone: str, reason: str) -> dict[str, Any]:
    """Invite a user; the invitation goes out by mail (its token never appears in the answer)."""
    with caller.tenant_tx() as conn:
        inv = users.invite(conn, tenant_id=caller.tenant_id, email=email, role=role, display_name=display_name,
                           time_zone=time_zone, actor=caller.user, audit_actor=caller.actor, meta=caller.meta,
                           reason=reason)
    return {"user": inv.user, "invitation": {"expires_at": inv.expires_at}}


def update_user(caller: Caller, *, user_id: uuid.UUID, changes: dict[str, Any], designation_ids: list[uuid.UUID] | None,
                reason: str) -> dict[str, Any]:
    """Change name, time zone or role, and (with `designations.manage`) designations, in one transaction.

    Raises:
        Forbidden: designations given without `designations.manage`.
    """
    if designation_ids is not None:
        require_permission(caller.user, "designations.manage")
    with caller.tenant_tx() as conn:
        user = users.update_user(conn, actor=caller.user, user_id=user_id, reason=reason, meta=caller.meta,
                                 audit_actor=caller.actor, changes=changes)
        if designation_ids is not None:
            user = designations.set_user_designations(conn, actor=caller.user, user_id=user_id,
                                                      designation_ids=designation_ids, reason=reason,
                                                      audit_actor=caller.actor, meta=caller.meta)
    return user


def deactivate_user(caller: Caller, *, user_id: uuid.UUID, reason: str) -> dict[str, Any]:
    with caller.tenant_tx() as conn:
        return users.deactivate_user(conn, actor=caller.user, user_id=user_id, reason=reason, meta=caller.meta,
                                     audit_actor=caller.actor)


def reset_password(caller: Caller, *, user_id: uuid.UUID, reason: str) -> None:
    """Mail a user a reset code (admins never see or set passwords)."""
    with caller.tenant_tx() as conn:
        signin.admin_reset(conn, actor=caller.user, user_id=str(user_id), reason=reason, audit_actor=caller.actor,
                           meta=caller.meta)


def get_overrides(caller: Caller, user_id: uuid.UUID) -> dict[str, Any]:
    with caller.tenant_tx() as conn:
        return {"overrides": designations.get_overrides(conn, user_id)}


def put_overrides(caller: Caller, *, user_id: uuid.UUID, overrides: list[dict[str, Any]], reason: str) -> dict[str, Any]:
    with caller.tenant_tx() as conn:
        return {"overrides": designations.put_overrides(conn, actor=caller.user, user_id=user_id, overrides=overrides,
                                                        reason=reason, audit_actor=caller.actor, meta=caller.meta)}


# --- designations ----------------------------------------------------------------------------------


def list_designations(caller: Caller) -> dict[str, Any]:
    with caller.tenant_tx() as conn:
        return {"designations": designations.list_designations(conn)}


def get_designation(caller: Caller, designation_id: uuid.UUID) -> dict[str, Any]:
    with caller.tenant_tx() as conn:
        return designations.get_designation(conn, designation_id)


def create_designation(caller: Caller, *, name: str, description: str, permissions: list[str],
                       reason: str) -> dict[str, Any]:
    with caller.tenant_tx() as conn:
        return designations.create_designation(conn, actor=caller.user, name=name, description=description,
                                               permissions=permissions, reason=reason, audit_actor=caller.actor,
                                               meta=caller.meta)


def update_designation(caller: Caller, *, designation_id: uuid.UUID, changes: dict[str, Any],
                       reason: str) -> dict[str, Any]:
    with caller.tenant_tx() as conn:
        return designations.update_designation(conn, actor=caller.user, designation_id=designation_id,
                                               changes=changes, reason=reason, audit_actor=caller.actor,
                                               meta=caller.meta)


def delete_designation(caller: Caller, *, designation_id: uuid.UUID, reason: str) -> None:
    with caller.tenant_tx() as conn:
        designations.delete_designation(conn, actor=caller.user, designation_id=designation_id, reason=reason,
                                        audit_actor=caller.actor, meta=caller.meta)


# --- sessions ----------------------------------------------------------------------------------------


def my_sessions(caller: Caller) -> dict[str, Any]:
    """The caller's live sessions; `current` marks this one."""
    p = caller.user
    with caller.tenant_tx() as conn:
        rows = sessions.list_sessions(conn, p.user_id)
    return {"sessions": [{**r, "current": r["id"] == p.session_id} for r in rows]}


def revoke_my_session(caller: Caller, session_id: uuid.UUID) -> None:
    p = caller.user
    with caller.tenant_tx() as conn:
        sessions.revoke(conn, session_id=session_id, user_id=p.user_id, reason="revoked by the user", by=p.user_id,
                        actor=caller.actor, meta=caller.meta, tenant_id=caller.tenant_id)


def user_sessions(caller: Caller, user_id: uuid.UUID) -> dict[str, Any]:
    with caller.tenant_tx() as conn:
        user = users.get_user(conn, user_id)
        return {"sessions": sessions.list_sessions(conn, user["id"])}


def revoke_user_session(caller: Caller, *, user_id: uuid.UUID, session_id: uuid.UUID) -> None:
    with caller.tenant_tx() as conn:
        user = users.get_user(conn, user_id)
        sessions.revoke(conn, session_id=session_id, user_id=user["id"], reason="revoked by an admin",
                        by=caller.user.user_id, actor=caller.actor, meta=caller.meta, tenant_id=caller.tenant_id)


# --- support access ----------------------------------------------------------------------------------


def list_support_grants(caller: Caller) -> dict[str, Any]:
    with caller.tenant_tx() as conn:
        return {"grants": support.list_grants(conn)}


def grant_support(caller: Caller, *, operator_email: str, reason: str, hours: int) -> dict[str, Any]:
    with caller.tenant_tx() as conn:
        return support.grant(conn, actor=caller.user, operator_email=operator_email, reason=reason, hours=hours,
                             audit_actor=caller.actor, meta=caller.meta)


def revoke_support(caller: Caller, *, grant_id: uuid.UUID, reason: str) -> dict[str, Any]:
    with caller.tenant_tx() as conn:
        return support.revoke(conn, actor=caller.user, grant_id=grant_id, reason=reason, audit_actor=caller.actor,
                              meta=caller.meta)


# --- the tenant and its settings ---------------------------------------------------------------------


def current_tenant(caller: Caller) -> dict[str, Any]:
    tenant = tenants.get_tenant(caller.tenant_id)
    if tenant is None:
        raise NotFound()
    return tenant.__dict__


def settings(caller: Caller) -> dict[str, Any]:
    """The tenant's settings, with the catalogue of keys that exist."""
    with caller.tenant_tx() as conn:
        stored = tenant_settings.list_settings(conn)
    return {"settings": stored,
            "catalogue": {key: description for key, (description, _) in tenant_settings.CATALOGUE.items()}}


def change_setting(caller: Caller, *, key: str, value: Any, reason: str) -> dict[str, Any]:
    """Set one tenant setting; the change and its event commit together."""
    with caller.tenant_tx() as conn:
        old, new = tenant_settings.put_setting(conn, tenant_id=caller.tenant_id, key=key, value=value,
                                               actor_id=caller.user.user_id)
        audit.append(conn, tenant_id=caller.tenant_id, actor=caller.actor, action="tenant.setting_changed",
                     target_type="tenant_setting", target_id=key, before=old, after=new, reason=reason,
                     meta=caller.meta)
    return {"key": key, "value": new, "previous": old}
