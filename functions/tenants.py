"""The caller's tenant and its settings."""

from __future__ import annotations

from typing import Any

import azure.functions as func
from pydantic import BaseModel, ConfigDict, Field

from functions._models_tenancy import SettingChanged, Tenant, TenantSettings
from shared.audit import chain as audit
from shared.core import db
from shared.core.errors import NotFound
from shared.tenancy.tenant_settings import CATALOGUE, list_settings, put_setting
from shared.tenancy.tenants import get_tenant
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
    tenant = get_tenant(ctx.tenant_id)
    if tenant is None:
        raise NotFound()
    return tenant.__dict__


@bp.route(route="api/tenant/settings", methods=["GET"])
@endpoint(response=TenantSettings, permission="tenant.settings.read", tags=("tenant",))
def tenant_settings(ctx: RequestContext) -> dict[str, Any]:
    """The tenant's settings, with the catalogue of keys that exist."""
    with db.tenant_tx(ctx.tenant_id) as conn:
        stored = list_settings(conn)
    return {
        "settings": stored,
        "catalogue": {key: description for key, (description, _) in CATALOGUE.items()},
    }


@bp.route(route="api/tenant/settings/{key}", methods=["PUT"])
@endpoint(response=SettingChanged, permission="tenant.settings.manage", body=SettingChange, tags=("tenant",))
def change_tenant_setting(ctx: RequestContext) -> dict[str, Any]:
    """Set one tenant setting, with a reason."""
    key = ctx.route["key"]
    body: SettingChange = ctx.body
    assert ctx.principal is not None
    with db.tenant_tx(ctx.tenant_id) as conn:
        old, new = put_setting(conn, tenant_id=ctx.tenant_id, key=key, value=body.value, actor_id=ctx.principal.user_id)
        audit.record(
            conn, ctx, "tenant.setting_changed", target_type="tenant_setting", target_id=key,
            before=old, after=new, reason=body.reason,
        )
    return {"key": key, "value": new, "previous": old}
