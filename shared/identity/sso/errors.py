"""The problems of single sign-on: provider configuration, metadata fetching, assertions that
fail verification, replays, and accounts a provider may not sign in."""

from __future__ import annotations

from shared.core.errors import AppError, Forbidden, ValidationFailed


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
