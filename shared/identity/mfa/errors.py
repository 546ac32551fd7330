"""The problems second factors answer with, under the one `AppError` root."""

from __future__ import annotations

from shared.core.errors import AppError, Conflict, Forbidden


class InvalidSecondFactor(AppError):
    """Sign-in: the code, recovery code or passkey was not accepted."""

    status, code, title = 401, "mfa-failed", "The second factor was not accepted"


class InvalidTicket(AppError):
    """The sign-in ticket of the second step is unknown, used or expired: sign in again."""

    status, code, title = 401, "mfa-ticket-invalid", "The sign-in ticket is invalid, used or expired: sign in again"


class InvalidCode(AppError):
    """A signed-in user's code (enrolment confirmation, step-up) was not accepted."""

    status, code, title = 400, "mfa-code-invalid", "The code was not accepted"


class PasskeyNotAccepted(AppError):
    """A passkey registration ceremony failed (challenge, origin, RP id, signature ...)."""

    status, code, title = 400, "passkey-invalid", "The passkey was not accepted"


class StepUpRequired(Forbidden):
    """The action needs a session that proved a second factor within MFA_RECENT_AUTH_S."""

    code, title = "mfa-step-up-required", "Prove a second factor first"


class LastFactor(Conflict):
    """Removing this factor would leave a user whose role requires one without any."""

    code, title = "mfa-last-factor", "Your role requires a second factor: enrol another before removing this one"


class NoPendingEnrolment(Conflict):
    """A TOTP confirmation without a pending enrolment, or after it expired."""

    code, title = "mfa-no-pending-enrolment", "No TOTP enrolment is waiting: start one first"


class NotEnrolled(Conflict):
    """The action needs an enrolled second factor and the user has none (or no passkey)."""

    code, title = "mfa-not-enrolled", "No second factor is enrolled"
