"""Security incidents: operators list, notify and resolve them; tenant admins see their own."""

from __future__ import annotations

import uuid
from typing import Any, Literal

import azure.functions as func
from pydantic import Field

from functions._models_incidents import Incident, IncidentDetail, IncidentNotified, Incidents
from shared.lifecycle import api
from shared.web.endpoint import RequestContext, endpoint
from shared.web.models import ReasonBody, Strict

bp = func.Blueprint()


class IncidentQuery(Strict):
    state: Literal["OPEN", "NOTIFIED", "RESOLVED"] | None = None
    tenant: uuid.UUID | None = Field(None, description="Only incidents affecting this tenant")


@bp.route(route="api/platform/incidents", methods=["GET"])
@endpoint(response=Incidents, operator=True, query=IncidentQuery, tags=("platform",))
def platform_incidents(ctx: RequestContext) -> dict[str, Any]:
    """Security incidents, OPEN first, newest first within a state (filter by state or tenant)."""
    return api.list_incidents(ctx, state=ctx.query.state, tenant_id=ctx.query.tenant)


@bp.route(route="api/platform/incidents/{id}", methods=["GET"])
@endpoint(response=IncidentDetail, operator=True, tags=("platform",))
def platform_incident(ctx: RequestContext) -> dict[str, Any]:
    """One incident with every change of its state and the reason."""
    return api.get_incident(ctx, ctx.uuid_param("id"))


@bp.route(route="api/platform/incidents/{id}/notify", methods=["POST"])
@endpoint(response=IncidentNotified, operator=True, body=ReasonBody, tags=("platform",), statuses=(409,))
def platform_notify_incident(ctx: RequestContext) -> dict[str, Any]:
    """Mail the fixed notice to every ADMIN of each affected tenant; the incident turns NOTIFIED."""
    return api.notify_incident(ctx, ctx.uuid_param("id"), reason=ctx.body.reason)


@bp.route(route="api/platform/incidents/{id}/resolve", methods=["POST"])
@endpoint(response=Incident, operator=True, body=ReasonBody, tags=("platform",), statuses=(409,))
def platform_resolve_incident(ctx: RequestContext) -> dict[str, Any]:
    """Resolve the incident, with the reason."""
    return api.resolve_incident(ctx, ctx.uuid_param("id"), reason=ctx.body.reason)


@bp.route(route="api/incidents", methods=["GET"])
@endpoint(permission="incidents.read", response=Incidents, tags=("incidents",))
def incidents(ctx: RequestContext) -> dict[str, Any]:
    """Security incidents affecting the caller's organisation."""
    return api.my_incidents(ctx)


@bp.route(route="api/incidents/{id}", methods=["GET"])
@endpoint(permission="incidents.read", response=Incident, tags=("incidents",))
def incident(ctx: RequestContext) -> dict[str, Any]:
    """One security incident affecting the caller's organisation."""
    return api.my_incident(ctx, ctx.uuid_param("id"))
