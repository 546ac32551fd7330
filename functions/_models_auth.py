"""Response models of sign-in, sessions, second factors and platform operators."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field

from shared.web.models import Out


class Tokens(Out):
    """A new session's tokens, and what the client should know besides."""

    access_token: str
    token_type: str
    expires_in: int
    refresh_token: str | None = Field(description="Null when it was set in the console's cookie instead")
    refresh_expires_at: datetime
    session_id: str
    mfa_enrolment_required: bool | None = None
    mfa_method: str | None = None
    recovery_codes_remaining: int | None = None
    warning: str | None = None


class SecondFactorRequired(Out):
    mfa_required: bool
    mfa_ticket: str
    methods: list[str]
    expires_in: int


class LoginResult(Out):
    """Tokens, or (for a user with a second factor) a ticket for the second step.

    One flat model rather than a union: schemathesis and clients see every field that can
    appear; which ones do is told by `mfa_required`.
    """

    access_token: str | None = None
    token_type: str | None = None
    expires_in: int
    refresh_token: str | None = None
    refresh_expires_at: datetime | None = None
    session_id: str | None = None
    mfa_enrolment_required: bool | None = None
    mfa_required: bool | None = None
    mfa_ticket: str | None = None
    methods: list[str] | None = None


class StatusMessage(Out):
    status: str


class PasswordChanged(Out):
    other_sessions_ended: int


class Session(Out):
    id: str
    user_id: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    remember_me: bool
    ip: str | None
    device_label: str | None
    revoked_at: datetime | None
    revoked_reason: str | None


class MySession(Session):
    current: bool


class MySessions(Out):
    sessions: list[MySession]


class Sessions(Out):
    sessions: list[Session]


class Passkey(Out):
    id: str
    name: str | None
    created_at: datetime
    last_used_at: datetime | None
    transports: list[str] | None
    discoverable: bool | None
    backed_up: bool | None
    aaguid: str | None


class Passkeys(Out):
    passkeys: list[Passkey]


class TotpState(Out):
    confirmed_at: datetime
    last_used_at: datetime | None


class MfaStatus(Out):
    required: bool
    enrolled: bool
    enrolment_required: bool
    totp: TotpState | None
    passkeys: list[Passkey]
    recovery_codes_remaining: int
    methods: list[str]


class TotpEnrolment(Out):
    secret: str
    otpauth_uri: str
    qr_svg: str
    expires_in: int


class TotpConfirmed(Out):
    confirmed_at: datetime
    recovery_codes: list[str] | None
    recovery_codes_remaining: int


class RecoveryCodes(Out):
    recovery_codes: list[str]
    recovery_codes_remaining: int


class WebAuthnOptions(Out):
    challenge_id: str
    options: dict[str, Any]


class PasskeyRegistered(Out):
    passkey: Passkey
    recovery_codes: list[str] | None
    recovery_codes_remaining: int


class FactorsReset(Out):
    user_id: str
    removed: dict[str, Any]
    sessions_ended: int
    enrolment_required: bool


class OperatorTokens(Out):
    """An operator session (after the second step; or, without a factor, one that may only enrol)."""

    access_token: str
    token_type: str
    expires_in: int
    session_id: str
    session_expires_at: datetime
    mfa_enrolment_required: bool | None = None
    mfa_method: str | None = None
    recovery_codes_remaining: int | None = None
    warning: str | None = None


class OperatorLoginResult(Out):
    """Either an MFA ticket for the second step, or (no factor yet) an enrolment-only session."""

    access_token: str | None = None
    token_type: str | None = None
    expires_in: int
    session_id: str | None = None
    session_expires_at: datetime | None = None
    mfa_enrolment_required: bool | None = None
    mfa_required: bool | None = None
    mfa_ticket: str | None = None
    methods: list[str] | None = None


class SteppedUp(Out):
    mfa_method: str
    valid_for_s: int


class SupportToken(Out):
    access_token: str
    token_type: str
    expires_in: int
    grant_id: str
