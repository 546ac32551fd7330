"""Electronic signatures (21 CFR Part 11): sign, verify, manifest; vocabulary and policy."""

from __future__ import annotations

import re
from typing import Any, Literal

import azure.functions as func
from pydantic import ConfigDict, Field, model_validator

from functions._models_records import Manifest, SignaturePolicy, SignaturesVerified, Signed, Vocabulary
from shared.records import api, signatures
from shared.web.endpoint import Reply, RequestContext, endpoint
from shared.web.models import Reason, Strict

bp = func.Blueprint()


class SignBody(Strict):
    password: str = Field(min_length=1, max_length=1024, description="The signer's password, entered again")
    meaning: str = Field(min_length=2, max_length=40, description="AUTHORED, REVIEWED, APPROVED, REJECTED or a tenant meaning")
    reason: str = Field(min_length=2, max_length=40, description="A reason code from the tenant's vocabulary")
    comment: str | None = Field(None, max_length=1000, description="Free text beside the listed reason")
    code: str | None = Field(None, max_length=16, description="TOTP code, when the signer has TOTP enrolled")


MEANING_CODE = r"^[A-Z][A-Z_]{1,39}$"
REASON_CODE = r"^[a-z][a-z0-9_]{1,39}$"


class VocabularyEntry(Strict):
    """A meaning's code is upper case (`APPROVED`), a reason's lower case (`typo_fixed`)."""

    model_config = ConfigDict(json_schema_extra={
        "if": {"properties": {"kind": {"const": "meaning"}}},
        "then": {"properties": {"code": {"pattern": MEANING_CODE}}},
        "else": {"properties": {"code": {"pattern": REASON_CODE}}},
    })

    kind: Literal["meaning", "reason"]
    code: str = Field(min_length=2, max_length=40)
    text: str = Field(min_length=3, max_length=200)
    reason: Reason

    @model_validator(mode="after")
    def _code_shape(self) -> VocabularyEntry:
        if not re.fullmatch(MEANING_CODE if self.kind == "meaning" else REASON_CODE, self.code):
            raise ValueError(f"a {self.kind} code looks like " + ("APPROVED" if self.kind == "meaning" else "typo_fixed"))
        return self


class PolicyBody(Strict):
    required_reviews: int = Field(1, ge=0, le=10)
    required_approvals: int = Field(1, ge=1, le=10)
    review_permission: Literal["signatures.review", "signatures.approve", "signatures.sign"] = "signatures.review"
    approve_permission: Literal["signatures.review", "signatures.approve", "signatures.sign"] = "signatures.approve"
    reason: Reason


@bp.route(route="api/records/{id}/versions/{v:int}/signatures", methods=["POST"])
@endpoint(response=Signed, body=SignBody, status=201, tags=("signatures",))
def sign_version(ctx: RequestContext) -> Reply:
    """Sign a record version: password again, a meaning and a listed reason (§11.50, §11.200)."""
    b: SignBody = ctx.body
    return Reply(body=api.sign(ctx, record_id=ctx.uuid_param("id"), version=ctx.int_param("v"), password=b.password,
                               meaning=b.meaning, reason_code=b.reason, comment=b.comment, code=b.code), status=201)


@bp.route(route="api/records/{id}/signatures/verify", methods=["GET"])
@endpoint(response=SignaturesVerified, permission="records.read", tags=("signatures",))
def verify_signatures(ctx: RequestContext) -> dict[str, Any]:
    """Re-check every signature's link to its version's content (§11.70)."""
    return api.verify_signatures(ctx, ctx.uuid_param("id"))


@bp.route(route="api/records/{id}/versions/{v:int}/manifest", methods=["GET"])
@endpoint(response=Manifest, permission="records.read", tags=("signatures",))
def version_manifest(ctx: RequestContext) -> dict[str, Any]:
    """A printable manifest of a version with its signatures and audit extract."""
    return api.manifest(ctx, ctx.uuid_param("id"), ctx.int_param("v"))


@bp.route(route="api/signature-vocabulary", methods=["GET"])
@endpoint(response=Vocabulary, permission="records.read", tags=("signatures",))
def signature_vocabulary(ctx: RequestContext) -> dict[str, Any]:
    """The tenant's signature meanings and reasons."""
    return api.vocabulary(ctx)


@bp.route(route="api/signature-vocabulary", methods=["POST"])
@endpoint(response=Vocabulary, permission="vocabulary.manage", body=VocabularyEntry, status=201, tags=("signatures",))
def signature_vocabulary_add(ctx: RequestContext) -> dict[str, Any]:
    """Add a meaning or a reason to the controlled vocabulary."""
    b: VocabularyEntry = ctx.body
    return api.add_vocabulary(ctx, kind=b.kind, code=b.code, text=b.text, reason=b.reason)


@bp.route(route="api/record-types/{name}/signature-policy", methods=["GET"])
@endpoint(response=SignaturePolicy, permission="records.read", tags=("signatures",))
def signature_policy(ctx: RequestContext) -> dict[str, Any]:
    """How many review and approval signatures a record type needs, and who may give them."""
    return api.signature_policy(ctx, ctx.route["name"])


@bp.route(route="api/record-types/{name}/signature-policy", methods=["PUT"])
@endpoint(response=SignaturePolicy, permission="record_types.manage", body=PolicyBody, tags=("signatures",))
def signature_policy_set(ctx: RequestContext) -> dict[str, Any]:
    """Set a record type's signature policy."""
    b: PolicyBody = ctx.body
    policy = signatures.Policy(b.required_reviews, b.required_approvals, b.review_permission, b.approve_permission)
    return api.set_signature_policy(ctx, type_name=ctx.route["name"], policy=policy, reason=b.reason)
