"""Records: types, versions, frozen references, attachments, retirement; payment methods."""

from __future__ import annotations

import uuid
from typing import Any, Literal

import azure.functions as func
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
from shared.records import api, records, tenant_schemas
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
    return api.list_types(ctx)


@bp.route(route="api/record-types", methods=["POST"])
@endpoint(response=RecordType, permission="record_types.manage", body=TypeNew, status=201, tags=("records",))
def record_type_create(ctx: RequestContext) -> Reply:
    """Define a record type with a JSON Schema for its payload."""
    b: TypeNew = ctx.body
    return Reply(body=api.create_type(ctx, name=b.name, display_name=b.display_name, schema=b.json_schema,
                                      reason=b.reason), status=201)


@bp.route(route="api/record-types/{name}", methods=["GET"])
@endpoint(response=RecordType, permission="records.read", tags=("records",))
def record_type_get(ctx: RequestContext) -> dict[str, Any]:
    """One record type."""
    return api.get_type(ctx, ctx.route["name"])


@bp.route(route="api/record-types/{name}/schema", methods=["PUT"])
@endpoint(response=RecordType, permission="record_types.manage", body=SchemaChange, tags=("records",))
def record_type_schema(ctx: RequestContext) -> dict[str, Any]:
    """A new schema version; stored records keep theirs."""
    return api.change_type_schema(ctx, name=ctx.route["name"], schema=ctx.body.json_schema, reason=ctx.body.reason)


@bp.route(route="api/records", methods=["POST"])
@endpoint(response=Record, permission="records.create", body=RecordNew, status=201, tags=("records",))
def record_create(ctx: RequestContext) -> Reply:
    """Create a record (version 1); referenced records are frozen into it."""
    b: RecordNew = ctx.body
    r = api.create_record(ctx, type_name=b.type, payload=b.payload, references=_refs(b.references) or [])
    return Reply(body=r, status=201, headers={"Location": f"/api/records/{r['id']}"})


@bp.route(route="api/records", methods=["GET"])
@endpoint(response=Records, permission="records.read", query=RecordQuery, tags=("records",))
def record_list(ctx: RequestContext) -> dict[str, Any]:
    """Records, oldest first, filtered by type and status, paginated."""
    q: RecordQuery = ctx.query
    return api.list_records(ctx, type_name=q.type, status=q.status, after=q.after, limit=q.limit)


@bp.route(route="api/records/{id}", methods=["GET"])
@endpoint(response=Record, permission="records.read", tags=("records",))
def record_get(ctx: RequestContext) -> dict[str, Any]:
    """A record with its current version, frozen context and whether each source changed."""
    return api.get_record(ctx, ctx.uuid_param("id"))


@bp.route(route="api/records/{id}", methods=["PATCH"])
@endpoint(response=Record, permission="records.update", body=RecordEdit, tags=("records",))
def record_edit(ctx: RequestContext) -> dict[str, Any]:
    """A new version of the record, with a reason; editing a stale version gets 409."""
    b: RecordEdit = ctx.body
    return api.update_record(ctx, record_id=ctx.uuid_param("id"), expected_version=b.version, payload=b.payload,
                             references=_refs(b.references), reason=b.reason)


@bp.route(route="api/records/{id}/versions", methods=["GET"])
@endpoint(response=Versions, permission="records.read", tags=("records",))
def record_versions(ctx: RequestContext) -> dict[str, Any]:
    """Every version of a record, oldest first."""
    return api.list_versions(ctx, ctx.uuid_param("id"))


@bp.route(route="api/records/{id}/versions/{v:int}", methods=["GET"])
@endpoint(response=Version, permission="records.read", tags=("records",))
def record_version(ctx: RequestContext) -> dict[str, Any]:
    """One version of a record."""
    return api.get_version(ctx, ctx.uuid_param("id"), ctx.int_param("v"))


@bp.route(route="api/records/{id}/retire", methods=["POST"])
@endpoint(response=Record, permission="records.retire", body=ReasonBody, tags=("records",))
def record_retire(ctx: RequestContext) -> dict[str, Any]:
    """Retire a record (records are never deleted; retired ones stay readable)."""
    return api.retire_record(ctx, record_id=ctx.uuid_param("id"), reason=ctx.body.reason)


@bp.route(route="api/records/{id}/attachments", methods=["POST"])
@endpoint(response=Attached, permission="records.update", query=AttachQuery, body_limit="attachment_max_bytes", status=201,
          tags=("records",), raw_body={"*/*": None})
def record_attach(ctx: RequestContext) -> Reply:
    """Attach a file (raw body, its Content-Type, filename in Content-Disposition): a new version."""
    req = ctx.request
    return Reply(body=api.attach(ctx, record_id=ctx.uuid_param("id"), data=req.get_body() or b"",
                                 content_type=req.headers.get("Content-Type") or "application/octet-stream",
                                 content_disposition=req.headers.get("Content-Disposition"),
                                 expected_version=ctx.query.version), status=201)


@bp.route(route="api/records/{id}/attachments/{sha256}", methods=["GET"])
@endpoint(media_type="*/*", statuses=(502,), permission="records.read", tags=("records",))
def record_attachment(ctx: RequestContext) -> Reply:
    """Download an attachment; its hash is checked again on the way out."""
    data, entry = api.download(ctx, record_id=ctx.uuid_param("id"), sha256=ctx.route["sha256"])
    safe = entry["filename"].replace('"', "")
    return Reply(body=data, media_type=entry["content_type"],
                 headers={"Content-Disposition": f'attachment; filename="{safe}"', "Digest": f"sha-256={entry['sha256']}",
                          "X-Content-SHA256": entry["sha256"]})


@bp.route(route="api/payment-methods", methods=["GET"])
@endpoint(response=PaymentMethods, permission="payment_methods.manage", tags=("payments",))
def payment_methods(ctx: RequestContext) -> dict[str, Any]:
    """Stored payment methods: gateway token, brand, last four digits, expiry. Never card data."""
    return api.list_payment_methods(ctx)


@bp.route(route="api/payment-methods", methods=["POST"])
@endpoint(response=PaymentMethod, permission="payment_methods.manage", body=PaymentMethodNew, status=201, tags=("payments",))
def payment_method_create(ctx: RequestContext) -> Reply:
    """Store a payment method as the gateway's token with brand, last four and expiry."""
    b: PaymentMethodNew = ctx.body
    return Reply(body=api.create_payment_method(ctx, gateway=b.gateway, gateway_token=b.gateway_token, brand=b.brand,
                                                last4=b.last4, exp_month=b.exp_month, exp_year=b.exp_year,
                                                label=b.label), status=201)
