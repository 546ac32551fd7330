"""Service endpoints: health, the OpenAPI document, CORS preflight."""

from __future__ import annotations

from typing import Any

import azure.functions as func

from functions._models_system import Health, OpenApiDocument
from shared.core import health
from shared.core.settings import get_settings
from shared.web.endpoint import Reply, RequestContext, endpoint
from shared.web.openapi import served_document

bp = func.Blueprint()


@bp.route(route="api/health", methods=["GET"])
@endpoint(response=Health, auth=False, tags=("system",))
def health_check(ctx: RequestContext) -> Reply:
    """Readiness: database and storage; a 503 problem names each part's state."""
    return Reply(body=health.ready())


@bp.route(route="api/openapi.json", methods=["GET"])
@endpoint(response=OpenApiDocument, auth=False, tags=("system",))
def openapi_document(ctx: RequestContext) -> dict[str, Any]:
    """The OpenAPI 3.1 description of this API."""
    return served_document(get_settings().app_version)


@bp.route(route="{*path}", methods=["OPTIONS"])
@endpoint(auth=False, preflight=True)
def cors_preflight(ctx: RequestContext) -> None:
    """CORS preflight for every route (the wrapper answers it)."""
