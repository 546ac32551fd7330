"""The problems second factors answer with, under the one `AppError` root."""

from __future__ import annotations

from shared.core.errors import AppError, Conflict, Forbidden


class InvalidSecondFactor(AppError):
    """Sign-in: the code, recovery code or passkey was not accepted."""

    status, code, title = 401, "mfa-failed", "The second factor was not accepted"


class InvalidTicket(AppError):
    status, code, title = 401, "mfa-ticket-invalid", "The sign-in ticket is invalid, used or expired: sign in again"


class InvalidCode(AppError):
    """A signed-in user's code (enrolment confirmation, step-up) was not accepted."""

    status, code, title = 400, "mfa-code-invalid", "The code was not accepted"


class PasskeyNotAccepted(AppError):
    status, code, title = 400, "passkey-invalid", "The passkey was not accepted"


class StepUpRequired(Forbidden):
    code, title = "mfa-step-up-required", "Prove a second factor first"


class LastFactor(Conflict):
    code, title = "mfa-last-factor", "Your role requires a second factor: enrol another before removing this one"


class NoPendingEnrolment(Conflict):
    code, title = "mfa-no-pending-enrolment", "No TOTP enrolment is waiting: start one first"


class NotEnrolled(Conflict):
    code, title = "mfa-not-enrolled", "No second factor is enrolled"
