"""Second factors: TOTP (secrets sealed at rest), recovery codes, passkeys (WebAuthn),
enrolment, the sign-in second step, step-up, and admin resets.

The front door: callers write `from shared.identity import mfa` and use the names in `__all__`
(`mfa.confirm_totp(...)`). The recipes open their own tenant transaction and append their audit
events in it; docs/mfa.md explains every choice. The modules, one concern each:

- `errors`: the problems these recipes answer with.
- `realms`: tenant users and platform operators, and the tables of each (`USERS`, `OPERATORS`).
- `secretbox`: AES-256-GCM sealing of TOTP secrets, key ids, key rotation.
- `totp`: RFC 6238, and checking a code against a stored secret.
- `recovery`: recovery codes.
- `passkeys`: the WebAuthn ceremonies and their challenges (building blocks, no policy).
- `enrolment`: self-service factor management (factor state, TOTP, recovery codes, passkeys).
- `second_step`: sign-in tickets, the second step, passwordless sign-in, step-up.
- `admin`: an administrator's reset of another user's factors.
- `_common`: what the recipes share; internal to this package, like every name not in `__all__`.

May import: `shared.core`, `shared.audit`, `shared.tenancy.rbac`, and the other modules of
`shared.identity`.
"""

from shared.identity.mfa.admin import reset_factors
from shared.identity.mfa.enrolment import (
    FactorState,
    TotpEnrolment,
    confirm_totp,
    factor_state,
    list_passkeys,
    passkey_registration_options,
    regenerate_recovery_codes,
    register_passkey,
    remove_passkey,
    remove_totp,
    rename_passkey,
    start_totp_enrolment,
    status,
)
from shared.identity.mfa.errors import (
    InvalidCode,
    InvalidSecondFactor,
    InvalidTicket,
    LastFactor,
    NoPendingEnrolment,
    NotEnrolled,
    PasskeyNotAccepted,
    StepUpRequired,
)
from shared.identity.mfa.passkeys import purge_expired_challenges
from shared.identity.mfa.realms import AAD_CONTEXT, OPERATOR_AAD_CONTEXT, OPERATORS, USERS, Method, Realm
from shared.identity.mfa.recovery import (
    RECOVERY_ALPHABET,
    RECOVERY_CODE_COUNT,
    RECOVERY_CODE_LENGTH,
    new_recovery_code,
    normalize_recovery_code,
    recovery_code_hash,
)
from shared.identity.mfa.second_step import (
    OPERATOR_SESSION_HOURS,
    OperatorTokens,
    SecondFactorRequired,
    SignedIn,
    open_operator_session,
    open_ticket,
    passkey_sign_in,
    passkey_sign_in_options,
    require_recent_second_factor,
    second_factor_passkey_options,
    step_up,
    verify_second_factor,
)
from shared.identity.mfa.secretbox import (
    Sealed,
    SecretBox,
    SecretUnreadable,
    key_id,
    load_secret_box,
    open_secret,
    seal_secret,
    secret_box,
)
from shared.identity.mfa.totp import (
    TOTP_DIGITS,
    TOTP_INTERVAL_S,
    TOTP_PENDING_TTL,
    TOTP_SECRET_CHARS,
    TOTP_WINDOW,
    TotpCodeInvalid,
    TotpCodeMalformed,
    TotpCodeReused,
    TotpMatch,
    TotpRejected,
    has_totp,
    new_totp_secret,
    otpauth_uri,
    qr_svg,
    seed_confirmed_totp,
    verify_totp,
    verify_totp_for_signing,
)

__all__ = [
    # errors
    "InvalidCode", "InvalidSecondFactor", "InvalidTicket", "LastFactor", "NoPendingEnrolment", "NotEnrolled",
    "PasskeyNotAccepted", "StepUpRequired",
    # realms
    "AAD_CONTEXT", "OPERATOR_AAD_CONTEXT", "OPERATORS", "USERS", "Method", "Realm",
    # secretbox
    "SecretBox", "SecretUnreadable", "Sealed", "key_id", "load_secret_box", "open_secret", "seal_secret", "secret_box",
    # totp
    "TOTP_DIGITS", "TOTP_INTERVAL_S", "TOTP_PENDING_TTL", "TOTP_SECRET_CHARS", "TOTP_WINDOW", "TotpCodeInvalid",
    "TotpCodeMalformed", "TotpCodeReused", "TotpMatch", "TotpRejected", "has_totp", "new_totp_secret", "otpauth_uri",
    "qr_svg", "seed_confirmed_totp", "verify_totp", "verify_totp_for_signing",
    # recovery
    "RECOVERY_ALPHABET", "RECOVERY_CODE_COUNT", "RECOVERY_CODE_LENGTH", "new_recovery_code",
    "normalize_recovery_code", "recovery_code_hash",
    # passkeys
    "purge_expired_challenges",
    # enrolment
    "FactorState", "TotpEnrolment", "confirm_totp", "factor_state", "list_passkeys", "passkey_registration_options",
    "regenerate_recovery_codes", "register_passkey", "remove_passkey", "remove_totp", "rename_passkey",
    "start_totp_enrolment", "status",
    # second_step
    "OPERATOR_SESSION_HOURS", "OperatorTokens", "SecondFactorRequired", "SignedIn", "open_operator_session",
    "open_ticket", "passkey_sign_in", "passkey_sign_in_options", "require_recent_second_factor",
    "second_factor_passkey_options", "step_up", "verify_second_factor",
    # admin
    "reset_factors",
]
