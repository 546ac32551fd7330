"""The problems of single sign-on and SCIM provisioning.

Single sign-on: provider configuration, metadata fetching, assertions that fail verification,
replays, and accounts a provider may not sign in.

SCIM (RFC 7644 section 3.12): on /scim/v2 routes the endpoint wrapper renders every `AppError` in
the SCIM error schema (`urn:ietf:params:scim:api:messages:2.0:Error`, `status` as a string) with
the `scimType` below where RFC 7644 defines one; elsewhere (the token routes) these are
problem+json like any other error.
"""

from __future__ import annotations

from typing import ClassVar

from shared.core.errors import AppError, Conflict, Forbidden, MalformedRequest, NotFound, ValidationFailed


class ScimError(AppError):
    """Root of the SCIM errors; never raised bare."""

    status, code, title = 400, "scim", "SCIM request refused"
    scim_type: ClassVar[str | None] = None


class ScimInvalidSyntax(ScimError, MalformedRequest):
    """The body is not a SCIM request this endpoint understands (not JSON, wrong schema, wrong shape)."""

    status, code, title, scim_type = 400, "scim-invalid-syntax", "The SCIM request could not be parsed", "invalidSyntax"


class ScimInvalidFilter(ScimError, ValueError):
    """The `filter` is not valid SCIM filter syntax, names an attribute that cannot be filtered,
    or compares it with a value of the wrong type."""

    status, code, title, scim_type = 400, "scim-invalid-filter", "The SCIM filter is not valid", "invalidFilter"


class ScimInvalidPath(ScimError, ValueError):
    """A PATCH `path` is not valid, or names an attribute this server does not have."""

    status, code, title, scim_type = 400, "scim-invalid-path", "The SCIM path is not valid", "invalidPath"


class ScimNoTarget(ScimError, ValueError):
    """A PATCH path's filter matched no value to change."""

    status, code, title, scim_type = 400, "scim-no-target", "The SCIM path matched nothing", "noTarget"


class ScimInvalidValue(ScimError, ValueError):
    """A value is missing, of the wrong type, or not acceptable (an unknown member, a required
    attribute removed, a userName that is no email address with no email beside it)."""

    status, code, title, scim_type = 400, "scim-invalid-value", "A SCIM attribute value is not valid", "invalidValue"


class ScimMutability(ScimError, ValueError):
    """The request changes an attribute that cannot be changed (id, meta, a member's reference)."""

    status, code, title, scim_type = 400, "scim-mutability", "The SCIM attribute cannot be changed", "mutability"


class ScimTooMany(ScimError, ValueError):
    """The request asks for more than this server answers at once (too many PATCH operations)."""

    status, code, title, scim_type = 400, "scim-too-many", "The SCIM request asks for too much", "tooMany"


class ScimUniqueness(ScimError, Conflict):
    """Another user already has this userName or email (or another group this displayName)."""

    status, code, title, scim_type = 409, "scim-uniqueness", "The SCIM value is already taken", "uniqueness"


class ScimPreconditionFailed(ScimError):
    """`If-Match` names a version the resource no longer has (RFC 7644 section 3.14)."""

    status, code, title = 412, "scim-precondition-failed", "The resource has changed"


class ScimNotImplemented(ScimError):
    """A SCIM operation this server does not offer (bulk, a search across resource types)."""

    status, code, title = 501, "scim-not-implemented", "Not implemented"


class ScimNotFound(ScimError, NotFound):
    """No such SCIM resource or endpoint (or one of another tenant: never an existence oracle)."""

    status, code, title = 404, "scim-not-found", "No such SCIM resource"


class ScimMethodNotAllowed(ScimError):
    """A method the SCIM endpoint does not take (the discovery endpoints are read-only)."""

    status, code, title = 405, "scim-method-not-allowed", "Method not allowed"


class SsoError(Exception):
    """Root of the single sign-on problems (each is also an `AppError`); never raised bare."""


class InvalidProviderConfig(SsoError, ValidationFailed):
    """A provider's configuration breaks a rule (missing field, bad certificate, ADMIN by mapping)."""

    status, code, title = 422, "sso-provider-invalid", "The identity provider configuration is not valid"


class MetadataUrlRefused(SsoError, ValidationFailed):
    """The metadata URL is not https, or names a private, loopback or link-local address."""

    status, code, title = 422, "sso-metadata-url-refused", "The metadata URL is not allowed"


class MetadataUnavailable(SsoError, AppError):
    """The IdP metadata could not be fetched (timeout, status, size) or is not valid metadata."""

    status, code, title = 502, "sso-metadata-unavailable", "The identity provider metadata could not be read"


class ProviderUnavailable(SsoError, AppError):
    """No enabled provider of that kind with that id in that tenant (sign-in routes)."""

    status, code, title = 404, "sso-provider-unavailable", "No such identity provider is enabled"


class AssertionRejected(SsoError, AppError):
    """The IdP's answer failed verification (signature, audience, recipient, time, request id).
    `reason` says which check, never any content of the assertion."""

    status, code, title = 401, "sso-assertion-rejected", "The identity provider's answer was not accepted"

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(detail or "the identity provider's answer was not accepted", reason=reason)
        self.reason = reason


class AssertionReplayed(AssertionRejected):
    """An assertion id already used: each assertion signs in once."""

    code, title = "sso-assertion-replayed", "The identity provider's answer was already used"


class AccountRefused(SsoError, Forbidden):
    """A verified identity that may not sign in here: not provisioned, deactivated, or an email
    that belongs to an unlinked account (no takeover by email)."""

    status, code, title = 403, "sso-account-refused", "This identity may not sign in to this tenant"

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(detail or "this identity may not sign in to this tenant", reason=reason)
        self.reason = reason


class InvalidHandoff(SsoError, AppError):
    """A sign-in code that is unknown, used, expired, or presented by another browser."""

    status, code, title = 400, "sso-code-invalid", "The sign-in code is invalid or has expired"


class FlowInvalid(SsoError, AppError):
    """An OIDC callback that does not continue a sign-in this browser started: no flow cookie,
    a forged or expired one, a `state` that does not match it, or a flow already finished.
    `reason` says which."""

    status, code, title = 400, "sso-flow-invalid", "The sign-in does not continue one this browser started"

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(detail or "start the sign-in again", reason=reason)
        self.reason = reason
