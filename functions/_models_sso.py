"""Response models of single sign-on: providers, break-glass accounts, sign-in buttons."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.web.models import Out


class Provider(Out):
    id: str
    kind: str
    name: str
    enabled: bool
    required: bool
    config: dict[str, Any]
    role_mapping: dict[str, Any]
    jit: bool
    allow_admin_mapping: bool
    trust_idp_mfa: bool
    link_by_verified_email: bool
    has_client_secret: bool
    created_at: datetime
    updated_at: datetime


class Providers(Out):
    providers: list[Provider]


class ProviderButton(Out):
    id: str
    name: str
    kind: str
    required: bool


class ProviderButtons(Out):
    providers: list[ProviderButton]


class BreakGlassAccount(Out):
    user_id: str
    email: str
    display_name: str
    role: str
    status: str
    created_at: datetime


class BreakGlassAccounts(Out):
    accounts: list[BreakGlassAccount]


class BreakGlassAdded(Out):
    user_id: str
    break_glass: bool
