"""Response models of records, record types, attachments, payment methods and signatures."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field

from shared.web.models import Out


class RecordType(Out):
    id: str
    name: str
    display_name: str
    builtin: bool
    schema_version: int
    created_at: datetime
    updated_at: datetime
    json_schema: dict[str, Any] = Field(alias="schema")


class RecordTypes(Out):
    types: list[RecordType]


class Attachment(Out):
    sha256: str
    size: int
    content_type: str
    filename: str


class RecordRef(Out):
    name: str
    record_id: str


class Signature(Out):
    """§11.50: printed name, time with zone, meaning."""

    id: str
    version: int
    signer_id: str
    printed_name: str
    meaning: str
    reason: str
    reason_code: str
    comment: str | None
    signed_at: datetime
    signed_at_local: datetime
    time_zone: str
    content_checksum: str


class Version(Out):
    version: int
    schema_version: int
    payload: Any
    checksum: str
    references: list[RecordRef]
    frozen_context: dict[str, Any]
    attachments: list[Attachment]
    created_at: datetime
    created_by: str
    created_by_name: str
    created_tz: str | None
    reason: str | None
    previous_version: int | None


class CurrentVersion(Version):
    signatures: list[Signature]


class Record(Out):
    id: str
    type: str
    type_id: str
    status: str
    current_version: int
    created_at: datetime
    created_by: str
    updated_at: datetime
    retired_at: datetime | None
    retired_by: str | None
    retire_reason: str | None
    version: CurrentVersion
    signatures: list[Signature]
    changed_after_signing: bool


class RecordSummary(Out):
    id: str
    type: str
    status: str
    current_version: int
    created_at: datetime
    created_by: str
    updated_at: datetime
    retired_at: datetime | None
    retired_by: str | None
    retire_reason: str | None
    checksum: str
    last_changed_by: str
    last_changed_at: datetime


class Records(Out):
    records: list[RecordSummary]
    next: str | None


class Versions(Out):
    versions: list[Version]


class Attached(Attachment):
    version: int
    record: Record


class PaymentMethod(Out):
    id: str
    gateway: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    label: str
    created_at: datetime


class PaymentMethods(Out):
    payment_methods: list[PaymentMethod]


class Signed(Out):
    signature: Signature
    record: Record


class SignatureCheck(Out):
    id: str
    version: int
    meaning: str
    valid: bool
    problems: list[str]


class SignaturesVerified(Out):
    record_id: str
    valid: bool
    signatures: list[SignatureCheck]
    current_version: int


class ManifestRecord(Out):
    id: str
    type: str
    status: str
    current_version: int


class ManifestVersion(Out):
    version: int
    payload: Any
    checksum: str
    created_at: datetime
    created_by: str
    created_by_name: str
    created_tz: str | None
    reason: str | None
    previous_version: int | None
    attachments: list[Attachment]


class AuditExtract(Out):
    seq: int
    occurred_at: datetime
    actor_name: str
    action: str
    reason: str | None
    checksum: str


class Manifest(Out):
    title: str
    generated_at: datetime
    record: ManifestRecord
    version: ManifestVersion
    signatures: list[Signature]
    audit_extract: list[AuditExtract]


class Meaning(Out):
    code: str
    description: str
    builtin: bool


class ReasonEntry(Out):
    code: str
    text: str


class Vocabulary(Out):
    meanings: list[Meaning]
    reasons: list[ReasonEntry]


class SignaturePolicy(Out):
    required_reviews: int
    required_approvals: int
    review_permission: str
    approve_permission: str
