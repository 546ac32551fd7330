"""The caller's tenant and its settings."""

from __future__ import annotations

from typing import Any

import azure.functions as func
from pydantic import BaseModel, ConfigDict, Field

from functions._models_tenancy import SettingChanged, Tenant, TenantSettings
from shared.tenancy import api
from shared.web.endpoint import RequestContext, endpoint

bp = func.Blueprint()


class SettingChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: Any = Field(description="The new value; its type depends on the setting")
    reason: str = Field(min_length=3, max_length=500, description="Why the setting changes")


@bp.route(route="api/tenant", methods=["GET"])
@endpoint(response=Tenant, tags=("tenant",))
def current_tenant(ctx: RequestContext) -> dict[str, Any]:
    """The caller's tenant."""
    return api.current_tenant(ctx)


@bp.route(route="api/tenant/settings", methods=["GET"])
@endpoint(response=TenantSettings, permission="tenant.settings.read", tags=("tenant",))
def tenant_settings(ctx: RequestContext) -> dict[str, Any]:
    """The tenant's settings, with the catalogue of keys that exist."""
    return api.settings(ctx)


@bp.route(route="api/tenant/settings/{key}", methods=["PUT"])
@endpoint(response=SettingChanged, permission="tenant.settings.manage", body=SettingChange, tags=("tenant",))
def change_tenant_setting(ctx: RequestContext) -> dict[str, Any]:
    """Set one tenant setting, with a reason."""
    body: SettingChange = ctx.body
    return api.change_setting(ctx, key=ctx.route["key"], value=body.value, reason=body.reason)
