"""Roles and permissions: the one role-to-permission table of Custos.

Everything that decides what a user may do reads `ROLE_PERMISSIONS`; the README's table
is checked against it by a test. Designations and per-user overrides (deny wins) build on
this table in later work.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    ADMIN = "ADMIN"
    MANAGER = "MANAGER"
    REVIEWER = "REVIEWER"
    OPERATOR = "OPERATOR"
    VIEWER = "VIEWER"


PLATFORM_OPERATOR = "PLATFORM_OPERATOR"
"""Role claim of platform operators: accounts outside every tenant."""

SUPPORT = "SUPPORT"
"""Role claim of an operator's support token inside one tenant (granted by a tenant ADMIN)."""

SCIM_TOKEN = "SCIM_TOKEN"  # noqa: S105 (a role name, not a secret)
"""Role of a SCIM bearer token's principal: it reaches the /scim/v2 endpoints and nothing else."""

PERMISSIONS: dict[str, str] = {
    "records.read": "Read records, versions, attachments and signatures",
    "records.create": "Create records",
    "records.update": "Edit records (new versions) and add attachments",
    "records.retire": "Retire records",
    "record_types.manage": "Create and change record types and their schemas",
    "signatures.sign": "Sign record versions as author",
    "signatures.review": "Sign record versions as reviewer",
    "signatures.approve": "Sign record versions as approver",
    "vocabulary.manage": "Manage signature meanings and reasons",
    "audit.read": "Read the tenant's audit trail",
    "audit.export": "Export the tenant's audit trail",
    "users.read": "List and read users",
    "users.invite": "Invite users",
    "users.update": "Change users' names, time zones and roles",
    "users.deactivate": "Deactivate users",
    "designations.read": "List designations",
    "designations.manage": "Create, change and delete designations and assign them",
    "overrides.manage": "Grant or deny single permissions to users",
    "sessions.manage": "See and revoke other users' sessions",
    "mfa.reset": "Reset another user's second factors",
    "exports.create": "Export tenant data",
    "payment_methods.manage": "Store and list payment methods (gateway tokens only)",
    "tenant.settings.read": "Read tenant settings",
    "tenant.settings.manage": "Change tenant settings and grant support access",
    "scim.manage": "Create, list and revoke SCIM provisioning tokens",
    "tenant.export": "Export everything the tenant holds (tables, attachments, audit trail) as a signed archive",
    "jobs.read": "See the state and progress of the tenant's jobs",
    "sso.manage": "Configure identity providers (SAML, OIDC) and break-glass accounts",
    "incidents.read": "See security incidents affecting the tenant and their notification state",
}

ROLE_PERMISSIONS: dict[Role, frozenset[str]] = {
    Role.ADMIN: frozenset(PERMISSIONS),
    Role.MANAGER: frozenset(
        {
            "records.read", "records.create", "records.update", "records.retire",
            "signatures.sign", "audit.read", "users.read", "users.invite",
            "designations.read", "exports.create", "tenant.settings.read", "payment_methods.manage",
        }
    ),
    Role.REVIEWER: frozenset(
        {"records.read", "signatures.sign", "signatures.review", "signatures.approve", "audit.read"}
    ),
    Role.OPERATOR: frozenset({"records.read", "records.create", "records.update", "signatures.sign"}),
    Role.VIEWER: frozenset({"records.read"}),
}


SUPPORT_PERMISSIONS: frozenset[str] = frozenset(
    {"records.read", "audit.read", "users.read", "designations.read", "tenant.settings.read"}
)
"""What a platform operator may do inside a tenant during granted support access: read only."""


def effective_permissions(
    role: str, designation_permissions: set[str] | frozenset[str], grants: set[str], denies: set[str]
) -> frozenset[str]:
    """Role, plus designations, plus granted overrides, minus denied overrides: deny wins."""
    known = PERMISSIONS.keys()
    return frozenset((role_permissions(role) | (designation_permissions & known) | (grants & known)) - denies)


def role_permissions(role: str) -> frozenset[str]:
    """Permissions a role grants; an unknown role grants nothing."""
    try:
        return ROLE_PERMISSIONS[Role(role)]
    except ValueError:
        return frozenset()


def _check_table() -> None:
    for role, perms in ROLE_PERMISSIONS.items():
        unknown = perms - PERMISSIONS.keys()
        if unknown:
            raise AssertionError(f"{role} names unknown permissions {sorted(unknown)}")


_check_table()
