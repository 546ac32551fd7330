"""The problems of records, their schemas, attachments and signatures."""

from __future__ import annotations

from shared.core.errors import AppError, Forbidden, ValidationFailed


class RecordSchemaInvalid(ValidationFailed):
    """A record type's schema breaks a rule of tenant schemas (outside URIs, RE2, depth, size)."""

    code, title = "record-schema-invalid", "The record type's schema is not acceptable"


class PayloadInvalid(ValidationFailed):
    """A record's payload does not match its type's (tenant-defined) schema."""

    code, title = "record-payload-invalid", "The payload does not match its record type's schema"


class RecordSchemaUnusable(ValidationFailed):
    """A record type's stored schema cannot be evaluated safely; an admin must define a new version."""

    code, title = "record-schema-unusable", "The record type's schema cannot be used"


class IntegrityFailure(AppError):
    """Stored content no longer matches its recorded hash: it is not served."""

    status, code, title = 502, "integrity-failure", "Stored content failed its integrity check"


class SignatureRefused(Forbidden):
    """An e-signature is not allowed: missing permission, separation of duties, or out of order."""

    code, title = "signature-refused", "The signature was refused"


class InvalidSigningCredentials(Forbidden):
    """Wrong password or code: 403, not 401 — the caller's session itself is fine."""

    code, title = "invalid-signing-credentials", "The password or code is wrong"
