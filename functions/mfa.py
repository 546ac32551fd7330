"""Second factors: TOTP, recovery codes, passkeys; the second sign-in step; passwordless
passkey sign-in; admin reset; the purge of expired WebAuthn challenges."""

from __future__ import annotations

import logging
from typing import Any

import azure.functions as func
from pydantic import ConfigDict, Field, model_validator

from functions._models_auth import (
    FactorsReset,
    MfaStatus,
    OperatorTokens,
    Passkey,
    PasskeyRegistered,
    Passkeys,
    RecoveryCodes,
    SteppedUp,
    Tokens,
    TotpConfirmed,
    TotpEnrolment,
    WebAuthnOptions,
)
from shared.identity import mfa
from shared.web import refresh_cookie
from shared.web.endpoint import Reply, RequestContext, endpoint
from shared.web.models import ReasonBody, Strict

bp = func.Blueprint()
log = logging.getLogger("custos.mfa")

TotpCode = Field(min_length=6, max_length=12, description="The 6-digit code of the authenticator app")
ChallengeId = Field(min_length=1, max_length=64, description="`challenge_id` from the matching options request")


class TotpConfirm(Strict):
    code: str = TotpCode


class RecoveryRegenerate(Strict):
    code: str | None = Field(None, min_length=6, max_length=12,
                             description="A current TOTP code; not needed within MFA_RECENT_AUTH_S of proving a factor")


class PasskeyRegistration(Strict):
    challenge_id: str = ChallengeId
    credential: dict[str, Any] = Field(description="PublicKeyCredential JSON of navigator.credentials.create()")
    name: str | None = Field(None, max_length=100, description="A name to recognise it by")


class PasskeyRename(Strict):
    name: str = Field(min_length=1, max_length=100)


class TicketBody(Strict):
    mfa_ticket: str = Field(min_length=1, max_length=200)


class SecondFactor(Strict):
    """Exactly one of `code`, `recovery_code` or `assertion` (with its `challenge_id`)."""

    model_config = ConfigDict(json_schema_extra={"oneOf": [
        {"required": ["code"], "properties": {"code": {"type": "string"}, "recovery_code": {"type": "null"},
                                              "assertion": {"type": "null"}, "challenge_id": {"type": "null"}}},
        {"required": ["recovery_code"], "properties": {"recovery_code": {"type": "string"}, "code": {"type": "null"},
                                                       "assertion": {"type": "null"}, "challenge_id": {"type": "null"}}},
        {"required": ["assertion", "challenge_id"],
         "properties": {"assertion": {"type": "object"}, "challenge_id": {"type": "string"}, "code": {"type": "null"},
                        "recovery_code": {"type": "null"}}},
    ]})

    mfa_ticket: str = Field(min_length=1, max_length=200)
    code: str | None = Field(None, min_length=6, max_length=12, description="TOTP code")
    recovery_code: str | None = Field(None, min_length=16, max_length=40, description="One of the recovery codes")
    assertion: dict[str, Any] | None = Field(None, description="PublicKeyCredential JSON of navigator.credentials.get()")
    challenge_id: str | None = Field(None, min_length=1, max_length=64, description="With `assertion`")

    @model_validator(mode="after")
    def _one_factor(self) -> SecondFactor:
        given = [name for name in ("code", "recovery_code", "assertion") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("send exactly one of code, recovery_code or assertion")
        if (self.assertion is None) != (self.challenge_id is None):
            raise ValueError("challenge_id goes with assertion, and only with it")
        return self


class PasskeyOptionsBody(Strict):
    tenant: str = Field(min_length=1, max_length=63, description="Tenant slug")


class PasskeySignIn(Strict):
    challenge_id: str = ChallengeId
    assertion: dict[str, Any] = Field(description="PublicKeyCredential JSON of navigator.credentials.get()")
    remember_me: bool = False



# --- the caller's own factors ------------------------------------------------------------------


@bp.route(route="api/mfa", methods=["GET"])
@endpoint(response=MfaStatus, mfa_enrolment=True, tags=("mfa",))
def mfa_status(ctx: RequestContext) -> dict[str, Any]:
    """The caller's second factors, and whether one is required."""
    return mfa.status(ctx.user)


@bp.route(route="api/mfa/totp/enroll", methods=["POST"])
@endpoint(response=TotpEnrolment, mfa_enrolment=True, tags=("mfa",))
def mfa_totp_enroll(ctx: RequestContext) -> dict[str, Any]:
    """Start a TOTP enrolment: secret, otpauth URI and QR code (SVG); confirm with a code."""
    return mfa.start_totp_enrolment(ctx.user, meta=ctx.meta).as_dict()


@bp.route(route="api/mfa/totp/confirm", methods=["POST"])
@endpoint(response=TotpConfirmed, mfa_enrolment=True, body=TotpConfirm, tags=("mfa",))
def mfa_totp_confirm(ctx: RequestContext) -> dict[str, Any]:
    """Activate the pending TOTP with a code; a first factor comes with recovery codes (shown once)."""
    return mfa.confirm_totp(ctx.user, code=ctx.body.code, meta=ctx.meta)


@bp.route(route="api/mfa/totp", methods=["DELETE"])
@endpoint(tags=("mfa",))
def mfa_totp_remove(ctx: RequestContext) -> None:
    """Remove one's TOTP (not the last factor of a role that requires one)."""
    mfa.remove_totp(ctx.user, meta=ctx.meta)


@bp.route(route="api/mfa/recovery-codes", methods=["POST"])
@endpoint(response=RecoveryCodes, body=RecoveryRegenerate, tags=("mfa",))
def mfa_recovery_codes(ctx: RequestContext) -> dict[str, Any]:
    """New recovery codes (shown once); the old ones stop working. Needs a current code or a recent second factor."""
    code = ctx.body.code if ctx.body is not None else None
    return mfa.regenerate_recovery_codes(ctx.user, code=code, meta=ctx.meta)


@bp.route(route="api/mfa/passkeys/registration/options", methods=["POST"])
@endpoint(response=WebAuthnOptions, mfa_enrolment=True, tags=("mfa",))
def mfa_passkey_registration_options(ctx: RequestContext) -> dict[str, Any]:
    """Options for navigator.credentials.create(), with a single-use challenge id."""
    return mfa.passkey_registration_options(ctx.user)


@bp.route(route="api/mfa/passkeys/registration/verify", methods=["POST"])
@endpoint(response=PasskeyRegistered, mfa_enrolment=True, body=PasskeyRegistration, status=201, tags=("mfa",))
def mfa_passkey_register(ctx: RequestContext) -> Reply:
    """Register a passkey from the authenticator's answer; a first factor comes with recovery codes."""
    b: PasskeyRegistration = ctx.body
    result = mfa.register_passkey(ctx.user, challenge_id=b.challenge_id, credential=b.credential, name=b.name,
                                  meta=ctx.meta)
    return Reply(body=result, status=201, headers={"Location": f"/api/mfa/passkeys/{result['passkey']['id']}"})


@bp.route(route="api/mfa/passkeys", methods=["GET"])
@endpoint(response=Passkeys, tags=("mfa",))
def mfa_passkeys_list(ctx: RequestContext) -> dict[str, Any]:
    """The caller's passkeys."""
    return {"passkeys": mfa.list_passkeys(ctx.user)}


@bp.route(route="api/mfa/passkeys/{id}", methods=["PATCH"])
@endpoint(response=Passkey, body=PasskeyRename, tags=("mfa",))
def mfa_passkey_rename(ctx: RequestContext) -> dict[str, Any]:
    """Rename one of the caller's passkeys."""
    return mfa.rename_passkey(ctx.user, ctx.uuid_param("id"), name=ctx.body.name, meta=ctx.meta)


@bp.route(route="api/mfa/passkeys/{id}", methods=["DELETE"])
@endpoint(tags=("mfa",))
def mfa_passkey_remove(ctx: RequestContext) -> None:
    """Remove one of the caller's passkeys (not the last factor of a role that requires one)."""
    mfa.remove_passkey(ctx.user, ctx.uuid_param("id"), meta=ctx.meta)


# --- administration ----------------------------------------------------------------------------


@bp.route(route="api/users/{id}/mfa/reset", methods=["POST"])
@endpoint(response=FactorsReset, permission="mfa.reset", body=ReasonBody, tags=("mfa", "users"))
def mfa_reset(ctx: RequestContext) -> dict[str, Any]:
    """Remove every second factor of a user, with a reason; their sessions end and they are mailed."""
    return mfa.reset_factors(actor=ctx.user, user_id=ctx.uuid_param("id"), reason=ctx.body.reason,
                             audit_actor=ctx.actor, meta=ctx.meta)


# --- sign-in ---------------------------------------------------------------------------------


@bp.route(route="api/auth/mfa/passkey/options", methods=["POST"])
@endpoint(response=WebAuthnOptions, auth=False, body=TicketBody, tags=("auth", "mfa"))
def auth_mfa_passkey_options(ctx: RequestContext) -> dict[str, Any]:
    """Options for proving the sign-in ticket's user with a passkey (second factor)."""
    return mfa.second_factor_passkey_options(ticket=ctx.body.mfa_ticket, meta=ctx.meta)


@bp.route(route="api/auth/mfa/verify", methods=["POST"])
@endpoint(response=Tokens, auth=False, body=SecondFactor, tags=("auth", "mfa"))
def auth_mfa_verify(ctx: RequestContext) -> Reply:
    """Second sign-in step: the ticket and a TOTP code, a recovery code or a passkey assertion give the tokens."""
    b: SecondFactor = ctx.body
    return refresh_cookie.deliver(ctx.request, mfa.verify_second_factor(
        ticket=b.mfa_ticket, code=b.code, recovery_code=b.recovery_code, assertion=b.assertion,
        challenge_id=b.challenge_id, meta=ctx.meta).as_dict())


@bp.route(route="api/auth/passkey/options", methods=["POST"])
@endpoint(response=WebAuthnOptions, auth=False, body=PasskeyOptionsBody, tags=("auth", "mfa"))
def auth_passkey_options(ctx: RequestContext) -> dict[str, Any]:
    """Options for a passwordless sign-in with a discoverable passkey to the named tenant."""
    return mfa.passkey_sign_in_options(tenant_slug=ctx.body.tenant)


@bp.route(route="api/auth/passkey/verify", methods=["POST"])
@endpoint(response=Tokens, auth=False, body=PasskeySignIn, tags=("auth", "mfa"))
def auth_passkey_verify(ctx: RequestContext) -> Reply:
    """Sign in with a passkey alone: the same tokens as a login."""
    b: PasskeySignIn = ctx.body
    return refresh_cookie.deliver(ctx.request, mfa.passkey_sign_in(
        challenge_id=b.challenge_id, assertion=b.assertion, remember_me=b.remember_me, meta=ctx.meta).as_dict())


# --- platform operators: the same factors, under /api/platform -------------------------------------


class StepUp(Strict):
    code: str = TotpCode


@bp.route(route="api/platform/mfa", methods=["GET"])
@endpoint(response=MfaStatus, operator=True, mfa_enrolment=True, tags=("platform", "mfa"))
def platform_mfa_status(ctx: RequestContext) -> dict[str, Any]:
    """The operator's second factors (every operator must have one)."""
    return mfa.status(ctx.user)


@bp.route(route="api/platform/mfa/totp/enroll", methods=["POST"])
@endpoint(response=TotpEnrolment, operator=True, mfa_enrolment=True, tags=("platform", "mfa"))
def platform_mfa_totp_enroll(ctx: RequestContext) -> dict[str, Any]:
    """Start an operator's TOTP enrolment: secret, otpauth URI and QR code; confirm with a code."""
    return mfa.start_totp_enrolment(ctx.user, meta=ctx.meta).as_dict()


@bp.route(route="api/platform/mfa/totp/confirm", methods=["POST"])
@endpoint(response=TotpConfirmed, operator=True, mfa_enrolment=True, body=TotpConfirm, tags=("platform", "mfa"))
def platform_mfa_totp_confirm(ctx: RequestContext) -> dict[str, Any]:
    """Activate the operator's pending TOTP; a first factor comes with recovery codes (shown once)."""
    return mfa.confirm_totp(ctx.user, code=ctx.body.code, meta=ctx.meta)


@bp.route(route="api/platform/mfa/totp", methods=["DELETE"])
@endpoint(operator=True, tags=("platform", "mfa"))
def platform_mfa_totp_remove(ctx: RequestContext) -> None:
    """Remove the operator's TOTP (not their last factor)."""
    mfa.remove_totp(ctx.user, meta=ctx.meta)


@bp.route(route="api/platform/mfa/recovery-codes", methods=["POST"])
@endpoint(response=RecoveryCodes, operator=True, body=RecoveryRegenerate, tags=("platform", "mfa"))
def platform_mfa_recovery_codes(ctx: RequestContext) -> dict[str, Any]:
    """New recovery codes for the operator (shown once); the old ones stop working."""
    code = ctx.body.code if ctx.body is not None else None
    return mfa.regenerate_recovery_codes(ctx.user, code=code, meta=ctx.meta)


@bp.route(route="api/platform/mfa/passkeys/registration/options", methods=["POST"])
@endpoint(response=WebAuthnOptions, operator=True, mfa_enrolment=True, tags=("platform", "mfa"))
def platform_mfa_passkey_registration_options(ctx: RequestContext) -> dict[str, Any]:
    """Options for a new passkey of the operator, with a single-use challenge id."""
    return mfa.passkey_registration_options(ctx.user)


@bp.route(route="api/platform/mfa/passkeys/registration/verify", methods=["POST"])
@endpoint(response=PasskeyRegistered, operator=True, mfa_enrolment=True, body=PasskeyRegistration, status=201,
          tags=("platform", "mfa"))
def platform_mfa_passkey_register(ctx: RequestContext) -> Reply:
    """Register an operator's passkey; a first factor comes with recovery codes."""
    b: PasskeyRegistration = ctx.body
    result = mfa.register_passkey(ctx.user, challenge_id=b.challenge_id, credential=b.credential, name=b.name,
                                  meta=ctx.meta)
    return Reply(body=result, status=201)


@bp.route(route="api/platform/mfa/passkeys/{id}", methods=["DELETE"])
@endpoint(operator=True, tags=("platform", "mfa"))
def platform_mfa_passkey_remove(ctx: RequestContext) -> None:
    """Remove one of the operator's passkeys (not their last factor)."""
    mfa.remove_passkey(ctx.user, ctx.uuid_param("id"), meta=ctx.meta)


@bp.route(route="api/platform/auth/step-up", methods=["POST"])
@endpoint(response=SteppedUp, operator=True, body=StepUp, tags=("platform", "mfa"))
def platform_mfa_step_up(ctx: RequestContext) -> dict[str, Any]:
    """Prove a current TOTP code again: cancelling tenants and support tokens need a recent second factor."""
    return mfa.step_up(ctx.user, code=ctx.body.code, meta=ctx.meta)


@bp.route(route="api/platform/auth/mfa/passkey/options", methods=["POST"])
@endpoint(response=WebAuthnOptions, auth=False, body=TicketBody, tags=("platform", "mfa"))
def platform_auth_mfa_passkey_options(ctx: RequestContext) -> dict[str, Any]:
    """Options for proving an operator's sign-in ticket with a passkey."""
    return mfa.second_factor_passkey_options(ticket=ctx.body.mfa_ticket, meta=ctx.meta, realm=mfa.OPERATORS)


@bp.route(route="api/platform/auth/mfa/verify", methods=["POST"])
@endpoint(response=OperatorTokens, auth=False, body=SecondFactor, tags=("platform", "mfa"))
def platform_auth_mfa_verify(ctx: RequestContext) -> dict[str, Any]:
    """An operator's second sign-in step: ticket and a TOTP code, recovery code or passkey give the session."""
    b: SecondFactor = ctx.body
    return mfa.verify_second_factor(ticket=b.mfa_ticket, code=b.code, recovery_code=b.recovery_code,
                                    assertion=b.assertion, challenge_id=b.challenge_id, meta=ctx.meta,
                                    realm=mfa.OPERATORS).as_dict()
