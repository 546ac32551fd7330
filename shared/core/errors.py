"""Application errors: one root, specific children, rendered once as RFC 9457 problems.

Each error knows its HTTP status and a stable problem `type`; `shared.web.endpoint` turns any
`AppError` into `application/problem+json`. `AppError` itself is never raised bare.

This module holds the root, the generic HTTP-shaped errors every package may raise, and the errors
of `shared.core`'s own modules (pagination, mail, the ops CLI's checks). Each other package keeps its
own in its `errors.py` (`shared.web.errors`, `shared.identity.errors`, `shared.identity.mfa.errors`,
`shared.tenancy.errors`, `shared.records.errors`); docs/problems.md lists every problem type.
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
    """The body or query could not be parsed at all (not JSON, wrong encoding, wrong shape)."""

    status, code, title = 400, "malformed-request", "The request could not be parsed"


class Unauthenticated(AppError):
    """No valid access token: missing, malformed, expired, or its session is over."""

    status, code, title = 401, "unauthenticated", "Authentication required"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="custos", error="invalid_token"'}


class Forbidden(AppError):
    """The caller is known but may not do this (permission, tenant state, policy)."""

    status, code, title = 403, "forbidden", "Not allowed"


class OriginNotAllowed(Forbidden):
    """A browser request from an origin not in the CORS allow-list."""

    code, title = "origin-not-allowed", "Origin not allowed"


class NotFound(AppError):
    """No such resource, or one of another tenant (never a 403: no existence oracle)."""

    status, code, title = 404, "not-found", "Not found"


class Conflict(AppError):
    """The request clashes with the resource's current state (duplicate, wrong status)."""

    status, code, title = 409, "conflict", "Conflict"


class ConcurrentChange(Conflict):
    """The database rolled the transaction back for a concurrent one (deadlock, serialization)."""

    code, title = "concurrent-change", "A concurrent change got in the way"


class PayloadTooLarge(AppError):
    """The body is larger than the endpoint accepts; refused before it is read."""

    status, code, title = 413, "payload-too-large", "Request body too large"


class UnsupportedMediaType(AppError):
    """The body's Content-Type is not one the endpoint accepts."""

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


class TenantLocked(AppError):
    """The tenant is read-only (cancelled, awaiting its purge): its data may be read, not changed."""

    status, code, title = 423, "tenant-read-only", "The tenant is read-only"


class TooManyRequests(AppError):
    """A throttle refused the attempt; `retry_after` (and Retry-After) says when to try again."""

    status, code, title = 429, "rate-limited", "Too many requests"

    def __init__(self, retry_after_s: int, detail: str | None = None) -> None:
        super().__init__(detail, retry_after=retry_after_s)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class ServiceUnavailable(AppError):
    """A dependency (database, storage, mail relay) did not answer in time."""

    status, code, title = 503, "unavailable", "A dependency is unavailable"


class InternalError(AppError):
    """Rendered for any unexpected exception: no details, only the request id."""

    status, code, title = 500, "internal", "Internal error"


class InvalidCursor(ValidationFailed):
    """A cursor this API did not issue (or one that was edited)."""

    code, title = "invalid-cursor", "The cursor is not valid"


class MailError(Exception):
    """Root of the mail errors; never raised bare."""


class InvalidMail(MailError, ValidationFailed):
    """`enqueue` was given an address, subject, body or kind it refuses; the message says which.

    A ValueError, and a 422 problem should it reach a client.
    """


class RelayUnavailable(MailError):
    """The SMTP relay could not be reached, refused STARTTLS, or refused our login."""


class CheckFailed(AppError):
    """An ops CLI check found a dependency unavailable (the CLI's exit status, not an HTTP answer)."""

    status, code, title = 503, "check-failed", "A dependency is unavailable"


class ValidationReportRed(AppError):
    """The validation report found a Part 11 clause without a passing test, or with a failing one (the CLI's exit status,
    not an HTTP answer); docs/validation/ is written all the same and shows it red."""

    status, code, title = 500, "validation-report-red", "A Part 11 clause is red in the validation report"
