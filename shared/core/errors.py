"""Application errors: one root, specific children, rendered once as RFC 9457 problems.

Each error knows its HTTP status and a stable problem `type`; `shared.web.endpoint` turns any
`AppError` into `application/problem+json`. `AppError` itself is never raised bare.
"""

from __future__ import annotations

from typing import Any, ClassVar

PROBLEM_BASE = "urn:custos:problem:"


class AppError(Exception):
    """Root of every error a client may see. Subclass it; never raise it bare."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str | None = None, **extensions: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail
        self.extensions = extensions

    @property
    def type(self) -> str:
        return PROBLEM_BASE + self.code

    def headers(self) -> dict[str, str]:
        return {}

    def to_problem(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"type": self.type, "title": self.title, "status": self.status}
        if self.detail:
            body["detail"] = self.detail
        if instance:
            body["instance"] = instance
        body.update(self.extensions)
        return body


class MalformedRequest(AppError, ValueError):
    status, code, title = 400, "malformed-request", "The request could not be parsed"


class Unauthenticated(AppError):
    status, code, title = 401, "unauthenticated", "Authentication required"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="custos", error="invalid_token"'}


class Forbidden(AppError):
    status, code, title = 403, "forbidden", "Not allowed"


class OriginNotAllowed(Forbidden):
    code, title = "origin-not-allowed", "Origin not allowed"


class NotFound(AppError):
    status, code, title = 404, "not-found", "Not found"


class Conflict(AppError):
    status, code, title = 409, "conflict", "Conflict"


class ConcurrentChange(Conflict):
    """The database rolled the transaction back for a concurrent one (deadlock, serialization)."""

    code, title = "concurrent-change", "A concurrent change got in the way"


class PayloadTooLarge(AppError):
    status, code, title = 413, "payload-too-large", "Request body too large"


class UnsupportedMediaType(AppError):
    status, code, title = 415, "unsupported-media-type", "Unsupported media type"


class ValidationFailed(AppError, ValueError):
    """The body or query is well-formed but breaks a rule; `errors` lists each failure."""

    status, code, title = 422, "validation", "The request is not valid"

    def __init__(self, detail: str | None = None, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail, errors=errors or [])


class BlankValue(ValidationFailed):
    """A required text held nothing but white space (a rule no JSON Schema length states)."""

    code, title = "blank-value", "A required text is blank"


class InvalidValue(ValidationFailed):
    """The database refused a value (out of range, unrepresentable, or against a constraint)."""

    code, title = "invalid-value", "A value is out of range or not acceptable"


class RecordSchemaInvalid(ValidationFailed):
    """A record type's schema breaks a rule of tenant schemas (outside URIs, RE2, depth, size)."""

    code, title = "record-schema-invalid", "The record type's schema is not acceptable"


class PayloadInvalid(ValidationFailed):
    """A record's payload does not match its type's (tenant-defined) schema."""

    code, title = "record-payload-invalid", "The payload does not match its record type's schema"


class RecordSchemaUnusable(ValidationFailed):
    """A record type's stored schema cannot be evaluated safely; an admin must define a new version."""

    code, title = "record-schema-unusable", "The record type's schema cannot be used"


class CardDataRefused(AppError):
    """A card number or CVV was sent: refused before it is stored or logged."""

    status, code, title = 422, "card-data-refused", "Card numbers and security codes are not accepted"

    def __init__(self, location: list[str | int]) -> None:
        super().__init__(
            "send a payment gateway token instead of card data",
            errors=[{"location": location, "message": "card number or security code", "code": "card_data"}],
        )


class IntegrityFailure(AppError):
    """Stored content no longer matches its recorded hash: it is not served."""

    status, code, title = 502, "integrity-failure", "Stored content failed its integrity check"


class TenantLocked(AppError):
    status, code, title = 423, "tenant-read-only", "The tenant is read-only"


class TooManyRequests(AppError):
    status, code, title = 429, "rate-limited", "Too many requests"

    def __init__(self, retry_after_s: int, detail: str | None = None) -> None:
        super().__init__(detail, retry_after=retry_after_s)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class ServiceUnavailable(AppError):
    status, code, title = 503, "unavailable", "A dependency is unavailable"


class InternalError(AppError):
    """Rendered for any unexpected exception: no details, only the request id."""

    status, code, title = 500, "internal", "Internal error"
