"""The problems of sign-in, one-time tokens and second-factor enforcement (the second factors'
own problems are in `shared.identity.mfa.errors`)."""

from __future__ import annotations

from shared.core.errors import AppError, Forbidden, Unauthenticated


class InvalidCredentials(Unauthenticated):
    """Sign-in failed: tenant, email or password wrong, alike in every case (no account oracle)."""

    code, title = "invalid-credentials", "Invalid credentials"

    def headers(self) -> dict[str, str]:
        return {}


class InvalidToken(AppError):
    """An invitation, password reset or operator setup token is unknown, used, revoked or expired."""

    status, code, title = 400, "invalid-token", "The link or code is invalid or has expired"


class MfaEnrolmentRequired(Forbidden):
    """The caller's role requires a second factor and has none: only enrolment endpoints are open."""

    code, title = "mfa-enrolment-required", "A second factor is required"


class SsoRequired(Forbidden):
    """The tenant requires single sign-on: password sign-in is refused (break-glass ADMINs excepted)."""

    code, title = "sso-required", "Sign in through your organisation's identity provider"
