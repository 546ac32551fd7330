"""Designations: tenant-defined bundles of extra permissions."""

from __future__ import annotations

from typing import Any

import azure.functions as func
from pydantic import Field

from functions._models_tenancy import Designation, Designations
from shared.tenancy import api
from shared.web.endpoint import Reply, RequestContext, endpoint
from shared.web.models import Permission, Reason, ReasonQuery, Strict

bp = func.Blueprint()


class DesignationNew(Strict):
    name: str = Field(min_length=1, max_length=100)
    description: str = Field("", max_length=1000)
    permissions: list[Permission] = Field(max_length=50)
    reason: Reason


class DesignationPatch(Strict):
    name: str | None = Field(None, min_length=1, max_length=100)
    description: str | None = Field(None, max_length=1000)
    permissions: list[Permission] | None = Field(None, max_length=50)
    reason: Reason


@bp.route(route="api/designations", methods=["GET"])
@endpoint(response=Designations, permission="designations.read", tags=("designations",))
def designations_list(ctx: RequestContext) -> dict[str, Any]:
    """The tenant's designations."""
    return api.list_designations(ctx)


@bp.route(route="api/designations", methods=["POST"])
@endpoint(response=Designation, permission="designations.manage", body=DesignationNew, status=201, tags=("designations",))
def designations_create(ctx: RequestContext) -> Reply:
    """Create a designation (only with permissions you hold)."""
    b: DesignationNew = ctx.body
    d = api.create_designation(ctx, name=b.name, description=b.description, permissions=b.permissions, reason=b.reason)
    return Reply(body=d, status=201, headers={"Location": f"/api/designations/{d['id']}"})


@bp.route(route="api/designations/{id}", methods=["GET"])
@endpoint(response=Designation, permission="designations.read", tags=("designations",))
def designations_get(ctx: RequestContext) -> dict[str, Any]:
    """One designation."""
    return api.get_designation(ctx, ctx.uuid_param("id"))


@bp.route(route="api/designations/{id}", methods=["PATCH"])
@endpoint(response=Designation, permission="designations.manage", body=DesignationPatch, tags=("designations",))
def designations_patch(ctx: RequestContext) -> dict[str, Any]:
    """Rename, describe or change the permissions of a designation."""
    b: DesignationPatch = ctx.body
    return api.update_designation(ctx, designation_id=ctx.uuid_param("id"), changes=b.model_dump(exclude={"reason"}),
                                  reason=b.reason)


@bp.route(route="api/designations/{id}", methods=["DELETE"])
@endpoint(permission="designations.manage", query=ReasonQuery, tags=("designations",))
def designations_delete(ctx: RequestContext) -> None:
    """Retire a designation and remove it from its holders (`?reason=` required)."""
    api.delete_designation(ctx, designation_id=ctx.uuid_param("id"), reason=ctx.query.reason)
