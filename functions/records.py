"""Records: types, versions, frozen references, attachments, retirement; payment methods."""

from __future__ import annotations

import uuid
from typing import Any, Literal

import azure.functions as func
import psycopg
from pydantic import Field

from functions._models_records import (
    Attached,
    PaymentMethod,
    PaymentMethods,
    Record,
    Records,
    RecordType,
    RecordTypes,
    Version,
    Versions,
)
from shared.audit import chain as audit
from shared.core import db
from shared.core.errors import NotFound, ValidationFailed
from shared.records import attachments, records, tenant_schemas
from shared.web.endpoint import Reply, RequestContext, endpoint
from shared.web.models import Reason, ReasonBody, Strict

bp = func.Blueprint()
SCHEMA_RULES = ("JSON Schema (draft 2020-12) of the payload: local references (#...) only, no $id, RE2 regular "
                f"expressions, at most {tenant_schemas.MAX_SCHEMA_BYTES // 1024} KiB and "
                f"{tenant_schemas.MAX_SCHEMA_DEPTH} levels deep")
TypeName = Field(pattern=r"^[a-z][a-z0-9_]{0,62}$", description="Type name, e.g. invoice")


class TypeNew(Strict):
    name: str = TypeName
    display_name: str = Field(min_length=1, max_length=200)
    json_schema: dict[str, Any] = Field(alias="schema", description=SCHEMA_RULES)
    reason: Reason


class SchemaChange(Strict):
    json_schema: dict[str, Any] = Field(alias="schema", description=SCHEMA_RULES)
    reason: Reason


class Reference(Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,62}$", description="Role of the reference, e.g. customer")
    record_id: uuid.UUID


class RecordNew(Strict):
    type: str = TypeName
    payload: dict[str, Any]
    references: list[Reference] = Field(default_factory=list, max_length=records.MAX_REFERENCES)


class RecordEdit(Strict):
    version: int = Field(ge=1, description="The version being edited; a stale one gets 409")
    payload: dict[str, Any]
    references: list[Reference] | None = Field(None, max_length=records.MAX_REFERENCES,
                                               description="Omit to keep the frozen references of the last version")
    reason: Reason


class RecordQuery(Strict):
    type: str | None = Field(None, max_length=63)
    status: Literal["DRAFT", "IN_REVIEW", "APPROVED", "REJECTED", "RETIRED"] | None = None
    after: str | None = Field(None, max_length=500)
    limit: int = Field(50, ge=1, le=200)


class AttachQuery(Strict):
    version: int | None = Field(None, ge=1, description="The version being attached to; a stale one gets 409")


class PaymentMethodNew(Strict):
    gateway: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")
    gateway_token: str = Field(min_length=4, max_length=200)
    brand: Literal["visa", "mastercard", "amex", "discover", "diners", "jcb", "unionpay", "other"]
    last4: str = Field(pattern=r"^[0-9]{4}$")
    exp_month: int = Field(ge=1, le=12)
    exp_year: int = Field(ge=2000, le=2100)
    label: str = Field("", max_length=100)


def _refs(refs: list[Reference] | None) -> list[dict[str, Any]] | None:
    return None if refs is None else [r.model_dump() for r in refs]


@bp.route(route="api/record-types", methods=["GET"])
@endpoint(response=RecordTypes, permission="records.read", tags=("records",))
def record_types(ctx: RequestContext) -> dict[str, Any]:
    """Record types with their current schemas (built-in: document, invoice, payslip)."""
    with db.tenant_tx(ctx.tenant_id) as conn:
        return {"types": records.list_types(conn, ctx.tenant_id)}


@bp.route(route="api/record-types", methods=["POST"])
@endpoint(response=RecordType, permission="record_types.manage", body=TypeNew, status=201, tags=("records",))
def record_type_create(ctx: RequestContext) -> Reply:
    """Define a record type with a JSON Schema for its payload."""
    b: TypeNew = ctx.body
    actor, meta = audit.context_actor(ctx)
    assert ctx.principal is not None
    with db.tenant_tx(ctx.tenant_id) as conn:
        t = records.create_type(conn, actor=ctx.principal, name=b.name, display_name=b.display_name,
                                schema=b.json_schema, reason=b.reason, meta=meta, audit_actor=actor)
    return Reply(body=t, status=201)


@bp.route(route="api/record-types/{name}", methods=["GET"])
@endpoint(response=RecordType, permission="records.read", tags=("records",))
def record_type_get(ctx: RequestContext) -> dict[str, Any]:
    """One record type."""
    with db.tenant_tx(ctx.tenant_id) as conn:
        return records.get_type(conn, ctx.tenant_id, ctx.route["name"])


@bp.route(route="api/record-types/{name}/schema", methods=["PUT"])
@endpoint(response=RecordType, permission="record_types.manage", body=SchemaChange, tags=("records",))
def record_type_schema(ctx: RequestContext) -> dict[str, Any]:
    """A new schema version; stored records keep theirs."""
    actor, meta = audit.context_actor(ctx)
    assert ctx.principal is not None
    with db.tenant_tx(ctx.tenant_id) as conn:
        return records.change_type_schema(conn, actor=ctx.principal, name=ctx.route["name"], schema=ctx.body.json_schema,
                                          reason=ctx.body.reason, meta=meta, audit_actor=actor)


@bp.route(route="api/records", methods=["POST"])
@endpoint(response=Record, permission="records.create", body=RecordNew, status=201, tags=("records",))
def record_create(ctx: RequestContext) -> Reply:
    """Create a record (version 1); referenced records are frozen into it."""
    b: RecordNew = ctx.body
    actor, meta = audit.context_actor(ctx)
    assert ctx.principal is not None
    with db.tenant_tx(ctx.tenant_id) as conn:
        r = records.create_record(conn, actor=ctx.principal, type_name=b.type, payload=b.payload,
                                  references=_refs(b.references) or [], meta=meta, audit_actor=actor)
    return Reply(body=r, status=201, headers={"Location": f"/api/records/{r['id']}"})


@bp.route(route="api/records", methods=["GET"])
@endpoint(response=Records, permission="records.read", query=RecordQuery, tags=("records",))
def record_list(ctx: RequestContext) -> dict[str, Any]:
    """Records, oldest first, filtered by type and status, paginated."""
    q: RecordQuery = ctx.query
    with db.tenant_tx(ctx.tenant_id) as conn:
        return records.list_records(conn, ctx.tenant_id, type_name=q.type, status=q.status, after=q.after, limit=q.limit)


@bp.route(route="api/records/{id}", methods=["GET"])
@endpoint(response=Record, permission="records.read", tags=("records",))
def record_get(ctx: RequestContext) -> dict[str, Any]:
    """A record with its current version, frozen context and whether each source changed."""
    with db.tenant_tx(ctx.tenant_id) as conn:
        return records.get_record(conn, ctx.uuid_param("id"))


@bp.route(route="api/records/{id}", methods=["PATCH"])
@endpoint(response=Record, permission="records.update", body=RecordEdit, tags=("records",))
def record_edit(ctx: RequestContext) -> dict[str, Any]:
    """A new version of the record, with a reason; editing a stale version gets 409."""
    b: RecordEdit = ctx.body
    actor, meta = audit.context_actor(ctx)
    assert ctx.principal is not None
    with db.tenant_tx(ctx.tenant_id) as conn:
        return records.update_record(conn, actor=ctx.principal, record_id=ctx.uuid_param("id"), expected_version=b.version,
                                     payload=b.payload, references=_refs(b.references), reason=b.reason,
                                     meta=meta, audit_actor=actor)


@bp.route(route="api/records/{id}/versions", methods=["GET"])
@endpoint(response=Versions, permission="records.read", tags=("records",))
def record_versions(ctx: RequestContext) -> dict[str, Any]:
    """Every version of a record, oldest first."""
    with db.tenant_tx(ctx.tenant_id) as conn:
        return {"versions": records.list_versions(conn, ctx.uuid_param("id"))}


@bp.route(route="api/records/{id}/versions/{v:int}", methods=["GET"])
@endpoint(response=Version, permission="records.read", tags=("records",))
def record_version(ctx: RequestContext) -> dict[str, Any]:
    """One version of a record."""
    record_id = ctx.uuid_param("id")
    with db.tenant_tx(ctx.tenant_id) as conn:
        records.get_record(conn, record_id)
        return records.get_version(conn, str(record_id), ctx.int_param("v"))


@bp.route(route="api/records/{id}/retire", methods=["POST"])
@endpoint(response=Record, permission="records.retire", body=ReasonBody, tags=("records",))
def record_retire(ctx: RequestContext) -> dict[str, Any]:
    """Retire a record (records are never deleted; retired ones stay readable)."""
    actor, meta = audit.context_actor(ctx)
    assert ctx.principal is not None
    with db.tenant_tx(ctx.tenant_id) as conn:
        return records.retire_record(conn, actor=ctx.principal, record_id=ctx.uuid_param("id"), reason=ctx.body.reason,
                                     meta=meta, audit_actor=actor)


@bp.route(route="api/records/{id}/attachments", methods=["POST"])
@endpoint(response=Attached, permission="records.update", query=AttachQuery, body_limit="attachment_max_bytes", status=201, tags=("records",))
def record_attach(ctx: RequestContext) -> Reply:
    """Attach a file (raw body, its Content-Type, filename in Content-Disposition): a new version."""
    req = ctx.request
    record_id = ctx.uuid_param("id")
    actor, meta = audit.context_actor(ctx)
    assert ctx.principal is not None
    with db.tenant_tx(ctx.tenant_id) as conn:
        records.get_record(conn, record_id)  # 404 before any upload
    stored = attachments.store(ctx.tenant_id, req.get_body() or b"",
                               content_type=req.headers.get("Content-Type") or "application/octet-stream",
                               filename=attachments.filename_from(req.headers.get("Content-Disposition")))
    with db.tenant_tx(ctx.tenant_id) as conn:
        r = records.add_attachment_version(conn, actor=ctx.principal, record_id=record_id,
                                           expected_version=ctx.query.version, attachment=stored.as_dict(),
                                           meta=meta, audit_actor=actor)
    return Reply(body={**stored.as_dict(), "version": r["current_version"], "record": r}, status=201)


@bp.route(route="api/records/{id}/attachments/{sha256}", methods=["GET"])
@endpoint(media_type="*/*", statuses=(502,), permission="records.read", tags=("records",))
def record_attachment(ctx: RequestContext) -> Reply:
    """Download an attachment; its hash is checked again on the way out."""
    record_id = ctx.uuid_param("id")
    sha256 = ctx.route["sha256"].lower()
    with db.tenant_tx(ctx.tenant_id) as conn:
        versions = records.list_versions(conn, record_id)
    entry = next((a for v in versions for a in v["attachments"] if a["sha256"] == sha256), None)
    if entry is None:
        raise NotFound("no such attachment on this record")
    actor, meta = audit.context_actor(ctx)
    data = attachments.read_verified(ctx.tenant_id, sha256, record_id=str(record_id), meta=meta, actor=actor)
    safe = entry["filename"].replace('"', "")
    return Reply(body=data, media_type=entry["content_type"],
                 headers={"Content-Disposition": f'attachment; filename="{safe}"', "Digest": f"sha-256={sha256}",
                          "X-Content-SHA256": sha256})


@bp.route(route="api/payment-methods", methods=["GET"])
@endpoint(response=PaymentMethods, permission="payment_methods.manage", tags=("payments",))
def payment_methods(ctx: RequestContext) -> dict[str, Any]:
    """Stored payment methods: gateway token, brand, last four digits, expiry. Never card data."""
    with db.tenant_tx(ctx.tenant_id) as conn:
        rows = conn.execute(
            """select id::text as id, gateway, brand, last4, exp_month, exp_year, label, created_at
                 from payment_methods where retired_at is null order by created_at"""
        ).fetchall()
    return {"payment_methods": rows}


@bp.route(route="api/payment-methods", methods=["POST"])
@endpoint(response=PaymentMethod, permission="payment_methods.manage", body=PaymentMethodNew, status=201, tags=("payments",))
def payment_method_create(ctx: RequestContext) -> Reply:
    """Store a payment method as the gateway's token with brand, last four and expiry."""
    b: PaymentMethodNew = ctx.body
    actor, meta = audit.context_actor(ctx)
    assert ctx.principal is not None
    with db.tenant_tx(ctx.tenant_id) as conn:
        try:
            row = conn.execute(
                """insert into payment_methods (tenant_id, gateway, gateway_token, brand, last4, exp_month, exp_year, label, created_by)
                   values (%s, %s, %s, %s, %s, %s, %s, %s, %s)
                   returning id::text as id, gateway, brand, last4, exp_month, exp_year, label, created_at""",
                (ctx.tenant_id, b.gateway, b.gateway_token, b.brand, b.last4, b.exp_month, b.exp_year, b.label,
                 ctx.principal.user_id),
            ).fetchone()
        except psycopg.errors.CheckViolation:
            raise ValidationFailed("the payment method is not valid") from None
        assert row is not None
        audit.append(conn, tenant_id=ctx.tenant_id, actor=actor, action="payment_method.created",
                     target_type="payment_method", target_id=row["id"],
                     after={"gateway": b.gateway, "brand": b.brand, "last4": b.last4,
                            "expiry": f"{b.exp_month:02d}/{b.exp_year}"}, meta=meta)
    return Reply(body=row, status=201)



