"""The audit trail: list, verify, export; operators verify any tenant."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import azure.functions as func
from pydantic import BaseModel, ConfigDict, Field

from functions._models_system import AuditEvents, ChainVerified
from shared.audit import api as audit_api
from shared.tenancy import platform
from shared.web.endpoint import Reply, RequestContext, endpoint

bp = func.Blueprint()


class AuditQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    actor: str | None = Field(None, max_length=200, description="Actor id")
    action: str | None = Field(None, max_length=100, description="Action, e.g. tenant.setting_changed")
    target_type: str | None = Field(None, max_length=100)
    target_id: str | None = Field(None, max_length=200)
    since: datetime | None = Field(None, description="Events at or after this time (ISO 8601 with offset)")
    until: datetime | None = Field(None, description="Events before this time")
    after: int = Field(0, ge=0, description="Cursor: return events with seq greater than this")
    limit: int = Field(100, ge=1, le=1000)


class VerifyQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    full: bool = Field(False, description="Walk every event from 1, not only from the newest signed checkpoint")


@bp.route(route="api/audit", methods=["GET"])
@endpoint(response=AuditEvents, permission="audit.read", query=AuditQuery, tags=("audit",))
def list_audit(ctx: RequestContext) -> dict[str, Any]:
    """The tenant's audit events in seq order, filtered, paginated by seq cursor."""
    q: AuditQuery = ctx.query
    return audit_api.list_events(ctx, after=q.after, limit=q.limit, actor_id=q.actor, action=q.action,
                                 target_type=q.target_type, target_id=q.target_id, since=q.since, until=q.until)


@bp.route(route="api/audit/verify", methods=["GET"])
@endpoint(response=ChainVerified, query=VerifyQuery, tags=("audit",))
def verify_audit(ctx: RequestContext) -> dict[str, Any]:
    """Walk the tenant's chain from its newest signed checkpoint (`full=true`: from the first event)."""
    return audit_api.verify(ctx, full=ctx.query.full)


@bp.route(route="api/audit/export", methods=["GET"])
@endpoint(media_type="application/jsonl", permission="audit.export", tags=("audit",))
def export_audit(ctx: RequestContext) -> Reply:
    """The tenant's events with their checksums and the signed checkpoints, as JSON Lines."""
    return Reply(body=audit_api.export(ctx), media_type="application/jsonl",
                 headers={"Content-Disposition": f'attachment; filename="audit-{ctx.tenant_id}.jsonl"'})


@bp.route(route="api/platform/tenants/{id}/audit/verify", methods=["GET"])
@endpoint(response=ChainVerified, operator=True, query=VerifyQuery, tags=("platform",))
def operator_verify_audit(ctx: RequestContext) -> dict[str, Any]:
    """A platform operator verifies any tenant's chain (no event content is returned)."""
    return platform.verify_tenant_chain(ctx, ctx.uuid_param("id"), full=ctx.query.full)
