"""Tenant exports: start one (a job), watch it, download its files through signed links."""

from __future__ import annotations

from typing import Any

import azure.functions as func
from pydantic import Field

from functions._models_lifecycle import Export, Exports
from shared.lifecycle import api
from shared.web.endpoint import Reply, RequestContext, endpoint
from shared.web.models import ReasonBody, Strict

bp = func.Blueprint()


class DownloadQuery(Strict):
    file: str = Field(min_length=1, max_length=300, pattern=r"^[a-z0-9_./-]+$", description="Path inside the export")
    token: str = Field(min_length=10, max_length=2000, description="The link's signature")


@bp.route(route="api/exports", methods=["POST"])
@endpoint(response=Export, permission="tenant.export", body=ReasonBody, status=202, allow_cancelled=True,
          tags=("exports",))
def start_export(ctx: RequestContext) -> Reply:
    """Export every table, attachment and audit event of the tenant as a signed archive (a job)."""
    view = api.start_export(ctx, reason=ctx.body.reason)
    return Reply(body=view, status=202, headers={"Location": f"/api/exports/{view['id']}"})


@bp.route(route="api/exports/{id}", methods=["GET"])
@endpoint(response=Export, permission="tenant.export", tags=("exports",))
def get_export(ctx: RequestContext) -> dict[str, Any]:
    """The export's progress and, once done, short-lived download links of every file."""
    return api.get_export(ctx, ctx.uuid_param("id"))


@bp.route(route="api/exports/{id}/download", methods=["GET"])
@endpoint(auth=False, query=DownloadQuery, media_type="application/octet-stream", statuses=(502,), tags=("exports",))
def download_export_file(ctx: RequestContext) -> Reply:
    """One file of a finished export; the signed link is the credential (each download is audited)."""
    got = api.download(ctx.uuid_param("id"), file=ctx.query.file, token=ctx.query.token, meta=ctx.meta)
    return Reply(body=got.body, media_type=got.media_type,
                 headers={"Content-Disposition": f'attachment; filename="{got.filename}"'})


class ExportListQuery(Strict):
    limit: int = Field(20, ge=1, le=100, description="How many of the newest exports")


@bp.route(route="api/exports", methods=["GET"])
@endpoint(response=Exports, permission="tenant.export", query=ExportListQuery, allow_cancelled=True, tags=("exports",))
def list_exports(ctx: RequestContext) -> dict[str, Any]:
    """The tenant's newest exports with their state and progress (open one for its download links)."""
    return api.list_exports(ctx, limit=ctx.query.limit)
