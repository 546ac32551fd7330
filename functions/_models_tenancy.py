"""Response models of tenants, users, designations, overrides and support access."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.web.models import Out


class Tenant(Out):
    id: str
    slug: str
    name: str
    status: str
    data_region: str
    created_at: datetime
    cancelled_at: datetime | None
    purge_after: datetime | None = None
    purged_at: datetime | None = None


class Tenants(Out):
    tenants: list[Tenant]


class TenantSettings(Out):
    settings: dict[str, Any]
    catalogue: dict[str, str]


class SettingChanged(Out):
    key: str
    value: Any
    previous: Any


class DesignationRef(Out):
    id: str
    name: str


class User(Out):
    id: str
    email: str
    display_name: str
    time_zone: str
    role: str
    status: str
    created_at: datetime
    updated_at: datetime
    deactivated_at: datetime | None
    designations: list[DesignationRef]


class Users(Out):
    users: list[User]
    next: str | None


class Invitation(Out):
    expires_at: datetime


class UserInvited(Out):
    user: User
    invitation: Invitation


class TenantCreated(Out):
    tenant: Tenant
    admin: User
    invitation: Invitation


class MeUser(Out):
    """The caller; a support session shows only the operator's id and name."""

    id: str
    display_name: str | None
    email: str | None = None
    time_zone: str | None = None
    role: str | None = None
    status: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    deactivated_at: datetime | None = None
    designations: list[DesignationRef] | None = None


class Me(Out):
    user: MeUser
    role: str
    designations: list[DesignationRef]
    permissions: list[str]
    support_grant_id: str | None = None


class Designation(Out):
    id: str
    name: str
    description: str
    permissions: list[str]
    created_at: datetime
    updated_at: datetime
    members: int | None = None


class Designations(Out):
    designations: list[Designation]


class OverrideEntry(Out):
    permission: str
    effect: str
    created_at: datetime


class Overrides(Out):
    overrides: list[OverrideEntry]


class Grant(Out):
    id: str
    operator_id: str
    granted_by: str
    reason: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    revoked_by: str | None


class SupportGrants(Out):
    grants: list[Grant]
