"""TOTP (RFC 6238): codes, secrets, provisioning URIs and QR codes; checking a code against a
user's stored secret; re-authentication inside another transaction (e-signatures).

SHA-1, 6 digits, 30 s steps, one step of drift either way, a 160-bit secret. A code is accepted
at most once: the time step of the last accepted code is stored and no step at or before it is
accepted again. The factor counts only once a code from the new secret has been confirmed.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pyotp

from shared.core.db import Conn
from shared.core.settings import Settings, get_settings
from shared.identity.mfa._common import Rejected, mark_session
from shared.identity.mfa.realms import USERS, Realm, owner_insert
from shared.identity.mfa.secretbox import SecretUnreadable, open_secret, seal_secret, secret_box

if TYPE_CHECKING:
    from shared.identity.guards import Principal

log = logging.getLogger("custos.mfa")

TOTP_DIGITS = 6
TOTP_INTERVAL_S = 30
TOTP_WINDOW = 1
"""Time steps of drift accepted either side of the server's current step."""
TOTP_SECRET_CHARS = 32
"""Base32 characters of a new secret: 160 bits, the HMAC-SHA-1 block-size advice of RFC 4226."""
TOTP_PENDING_TTL = timedelta(minutes=15)
"""How long an enrolment may wait for its confirming code."""


class TotpRejected(ValueError):
    """Root of TOTP verification failures; never raised bare."""


class TotpCodeMalformed(TotpRejected):
    pass


class TotpCodeInvalid(TotpRejected):
    pass


class TotpCodeReused(TotpRejected):
    pass


@dataclass(frozen=True)
class TotpMatch:
    step: int
    """The RFC 6238 time step (counter) the code belongs to."""
    drift: int
    """Steps between that step and the server's: -1, 0 or +1 by default."""


def new_totp_secret() -> str:
    return pyotp.random_base32(TOTP_SECRET_CHARS)


def verify_totp(
    code: str, *, secret: str, now: float | None = None, last_used_step: int | None = None,
    digits: int = TOTP_DIGITS, interval: int = TOTP_INTERVAL_S, window: int = TOTP_WINDOW,
    digest: Callable[..., Any] = hashlib.sha1,
) -> TotpMatch:
    """Check a TOTP code for the steps within `window` of `now`.

    Every candidate is computed and compared in constant time. A code of a step at or
    before `last_used_step` is refused even if right: each code works once.

    Raises:
        TotpCodeMalformed: not `digits` decimal digits (spaces are ignored).
        TotpCodeInvalid: no step within the window has this code.
        TotpCodeReused: the code is right but its step was already used.
    """
    cleaned = "".join(str(code).split())
    if len(cleaned) != digits or not cleaned.isascii() or not cleaned.isdigit():
        raise TotpCodeMalformed(f"a code has {digits} digits")
    totp = pyotp.TOTP(secret, digits=digits, digest=digest, interval=interval)
    current = int((time.time() if now is None else now) // interval)
    match: TotpMatch | None = None
    for drift in sorted(range(-window, window + 1), key=abs):
        step = current + drift
        if step >= 0 and hmac.compare_digest(totp.generate_otp(step).encode(), cleaned.encode()) and match is None:
            match = TotpMatch(step=step, drift=drift)
    if match is None:
        raise TotpCodeInvalid("the code is wrong or too old")
    if last_used_step is not None and match.step <= last_used_step:
        raise TotpCodeReused("this code was already used: wait for the next one")
    return match


def otpauth_uri(secret: str, *, account: str, settings: Settings | None = None) -> str:
    issuer = (settings or get_settings()).mfa_totp_issuer
    return pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_INTERVAL_S).provisioning_uri(
        name=account, issuer_name=issuer
    )


def qr_svg(text: str) -> str:
    """A standalone SVG QR code (error correction M) of `text`."""
    buf = io.BytesIO()
    import segno  # only enrolment draws a QR code: not loaded at import

    segno.make(text, error="m").save(buf, kind="svg", scale=4, border=4, xmldecl=False, svgns=True, nl=False)
    return buf.getvalue().decode("utf-8")

TOTP_COLUMNS = "id, secret_ciphertext, secret_nonce, key_id, last_used_step, created_at, confirmed_at"


def check_stored_totp(conn: Conn, row: dict[str, Any], *, tenant_id: str, user_id: str, code: str,
                      method: str = "totp", realm: Realm = USERS) -> TotpMatch:
    """Verify `code` against a (locked) mfa_totp row and store its step; re-encrypts under the
    current key if an old one sealed it. Raises Rejected."""
    try:
        secret = open_secret(row, tenant_id=tenant_id, user_id=user_id, realm=realm)
    except SecretUnreadable as exc:
        log.error("TOTP secret of user %s unreadable: %s", user_id, exc)
        raise Rejected(method, "secret_unreadable") from None
    try:
        match = verify_totp(code, secret=secret, last_used_step=row["last_used_step"])
    except TotpCodeReused:
        raise Rejected(method, "code_reused") from None
    except TotpCodeMalformed:
        raise Rejected(method, "code_malformed") from None
    except TotpCodeInvalid:
        raise Rejected(method, "code_invalid") from None
    resealed = (None if row["key_id"] == secret_box().current_id
                else seal_secret(secret, tenant_id=tenant_id, user_id=user_id, realm=realm))
    conn.execute(
        f"""update {realm.totp} set last_used_step = %s, last_used_at = now(),
                  secret_ciphertext = coalesce(%s, secret_ciphertext), secret_nonce = coalesce(%s, secret_nonce),
                  key_id = coalesce(%s, key_id)
            where id = %s""",  # noqa: S608  # nosec B608  # names come from the fixed MFA realm tables in code; values are bound
        (match.step, resealed and resealed.ciphertext, resealed and resealed.nonce, resealed and resealed.key_id,
         row["id"]),
    )
    return match


def prove_totp(conn: Conn, principal: Principal, *, realm: Realm, tenant_id: str, code: str) -> None:
    """Check a current TOTP code of the caller and mark their session as having proved it.
    Raises Rejected."""
    totp = conn.execute(
        f"select {TOTP_COLUMNS} from {realm.totp} where {realm.owner} = %s and confirmed_at is not null for update",  # noqa: S608  # nosec B608  # names come from the fixed MFA realm tables in code; values are bound
        (principal.user_id,),
    ).fetchone()
    if totp is None:
        raise Rejected("totp", "no_totp")
    check_stored_totp(conn, totp, tenant_id=tenant_id, user_id=principal.user_id, code=code, realm=realm)
    mark_session(conn, principal.session_id, "totp", realm)


def has_totp(conn: Conn, user_id: str) -> bool:
    """Whether the user has an active TOTP (in the caller's tenant transaction)."""
    row = conn.execute("select exists(select 1 from mfa_totp where user_id = %s and confirmed_at is not null) as e",
                       (user_id,)).fetchone()
    return bool(row and row["e"])


def verify_totp_for_signing(conn: Conn, *, tenant_id: str, user_id: str, code: str) -> bool:
    """Check and use up a TOTP code in the caller's tenant transaction (its step is stored
    with the caller's change, so the code cannot serve twice). False when there is no
    active TOTP or the code is malformed, wrong or already used; the caller counts and
    audits failures."""
    row = conn.execute(
        f"select {TOTP_COLUMNS} from mfa_totp where user_id = %s and confirmed_at is not null for update", (user_id,)  # noqa: S608  # nosec B608  # only module constants are interpolated; values are bound
    ).fetchone()
    if row is None:
        return False
    try:
        check_stored_totp(conn, row, tenant_id=tenant_id, user_id=user_id, code=code)
    except Rejected:
        return False
    return True


def seed_confirmed_totp(conn: Conn, *, tenant_id: str, user_id: str, secret: str | None = None,
                        realm: Realm = USERS) -> str:
    """Give a user (or, with `realm=OPERATORS` and the platform chain as tenant, an operator)
    an active TOTP directly, in the caller's transaction; returns the secret.

    For tests and fixtures only (nothing is audited): real users enrol and confirm.
    """
    secret = secret or new_totp_secret()
    sealed = seal_secret(secret, tenant_id=tenant_id, user_id=user_id, realm=realm)
    cols, marks, owner = owner_insert(realm, tenant_id, user_id)
    conn.execute(
        f"""insert into {realm.totp} ({cols}, secret_ciphertext, secret_nonce, key_id, confirmed_at)
            values ({marks}, %s, %s, %s, now())""",  # noqa: S608  # nosec B608  # names come from the fixed MFA realm tables in code; values are bound
        (*owner, sealed.ciphertext, sealed.nonce, sealed.key_id),
    )
    return secret
