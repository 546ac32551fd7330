"""Second factors: TOTP, recovery codes and passkeys; the sign-in ticket; enforcement data.

The safe, high-level recipes the triggers and `shared.identity.signin` call. Each opens its own tenant
transaction, appends its audit events in it, and reserves each code attempt in the "mfa" throttle
family before checking it (keyed by user id and client IP, `ratelimit.subject_keys`). Passkey ceremonies are
in `shared.identity.mfa.passkeys`. docs/mfa.md explains every choice; in short:

- TOTP is RFC 6238 with SHA-1, 6 digits, 30 s steps, one step of drift either way, and a
  160-bit secret. A code is accepted at most once: the time step of the last accepted code
  is stored and no step at or before it is accepted again. The factor counts only once a
  code from the new secret has been confirmed.
- TOTP secrets are stored encrypted with AES-256-GCM under `MFA_ENCRYPTION_KEY` (the key id,
  the first 16 hex of SHA-256 of the key, is stored beside the ciphertext; retired keys in
  `MFA_DECRYPTION_KEYS` still decrypt, and a secret read under one is re-encrypted under
  the current key). The associated data binds the ciphertext to its tenant and user, so a
  row copied to another user does not decrypt.
- Recovery codes: 10 per set, 16 characters from a 31-letter alphabet (79 bits), stored as
  SHA-256 of user id and code. Each works once; a new set voids the old one.
- Sign-in ticket: after a correct password, a user with a factor gets a ticket
  (`mfa.<tenant hex>.<256 random bits>`, stored as SHA-256, 5 minutes, single use) instead
  of tokens, and trades it with a second factor at `verify_second_factor`.
- Roles in `guards.MFA_REQUIRED_ROLES` (or every role, by tenant setting) must have a
  factor; until they enrol, the endpoint wrapper admits them only to enrolment endpoints.
- Platform operators get the same factors, recipes and checks (a `Realm` names the tables
  of each kind of account): every operator must have a factor, their rows are platform
  tables, their events go to the platform chain, their tickets are `opmfa.<nil>.<random>`.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import io
import logging
import os
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import psycopg
import pyotp
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.audit import chain as audit
from shared.core import db, mail
from shared.core.db import Conn
from shared.core.errors import AppError, Conflict, Forbidden, NotFound
from shared.core.settings import Settings, SettingsError, get_settings
from shared.identity import ratelimit
from shared.identity.guards import MFA_ALL_ROLES_SETTING, MFA_REQUIRED_ROLES
from shared.identity.mfa import passkeys
from shared.identity.opaque import parse_token, same_hash, token_hash
from shared.identity.sessions import IssuedTokens, create_session, device_label, revoke_all
from shared.identity.tokens import issue_access_token
from shared.tenancy.rbac import PLATFORM_OPERATOR

if TYPE_CHECKING:
    from shared.identity.guards import Principal

log = logging.getLogger("custos.mfa")

Method = Literal["totp", "recovery_code", "passkey"]

TOTP_DIGITS = 6
TOTP_INTERVAL_S = 30
TOTP_WINDOW = 1
"""Time steps of drift accepted either side of the server's current step."""
TOTP_SECRET_CHARS = 32
"""Base32 characters of a new secret: 160 bits, the HMAC-SHA-1 block-size advice of RFC 4226."""
TOTP_PENDING_TTL = timedelta(minutes=15)
"""How long an enrolment may wait for its confirming code."""

RECOVERY_CODE_COUNT = 10
RECOVERY_CODE_LENGTH = 16
RECOVERY_ALPHABET = "23456789abcdefghjkmnpqrstuvwxyz"
"""No 0/o, 1/l/i: nothing to misread. 31**16 is about 2**79."""

TICKET_KIND = "mfa"
AAD_CONTEXT = b"custos/mfa/totp-secret/v1"
OPERATOR_AAD_CONTEXT = b"custos/mfa/operator-totp-secret/v1"
OPERATOR_SESSION_HOURS = 8
"""Operator sessions are short and have no refresh token: sign in again."""


@dataclass(frozen=True)
class Realm:
    """The tables of one kind of account's second factors: tenant users (tenant tables under
    row-level security, events in the tenant's chain) or platform operators (platform
    tables, events in the platform chain). Identifiers here are constants, never input."""

    kind: Literal["user", "operator"]
    owner: str
    people: str
    totp: str
    recovery: str
    tickets: str
    sessions: str
    ticket_kind: str
    credentials: passkeys.CredentialStore
    aad_context: bytes

    @property
    def tenant_scoped(self) -> bool:
        return self.kind == "user"


USERS = Realm("user", "user_id", "users", "mfa_totp", "mfa_recovery_codes", "mfa_tickets", "sessions", TICKET_KIND,
              passkeys.USER_CREDENTIALS, AAD_CONTEXT)
OPERATORS = Realm("operator", "operator_id", "platform_operators", "operator_mfa_totp", "operator_mfa_recovery_codes",
                  "operator_mfa_tickets", "operator_sessions", "opmfa", passkeys.OPERATOR_CREDENTIALS,
                  OPERATOR_AAD_CONTEXT)


# --- errors ------------------------------------------------------------------------------------


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


class SecretUnreadable(RuntimeError):
    """A TOTP ciphertext does not decrypt: unknown key id, another user's row, or tampering."""


# --- encryption of TOTP secrets -----------------------------------------------------------------

_key_lock = threading.Lock()


def key_id(key: bytes) -> str:
    """First 16 hex of SHA-256 of the key: names it without revealing it."""
    return hashlib.sha256(key).hexdigest()[:16]


@dataclass(frozen=True)
class Sealed:
    ciphertext: bytes
    nonce: bytes
    key_id: str


@dataclass(frozen=True)
class SecretBox:
    """AES-256-GCM: the current key encrypts; it and every retired key decrypt."""

    current_id: str
    keys: dict[str, bytes]

    def seal(self, plaintext: bytes, aad: bytes) -> Sealed:
        nonce = os.urandom(12)  # random 96-bit nonces: safe far beyond the number of secrets we keep
        return Sealed(AESGCM(self.keys[self.current_id]).encrypt(nonce, plaintext, aad), nonce, self.current_id)

    def open(self, sealed: Sealed, aad: bytes) -> bytes:
        """Raises SecretUnreadable: unknown key id, wrong associated data, or tampering."""
        key = self.keys.get(sealed.key_id)
        if key is None:
            raise SecretUnreadable(f"no MFA key with id {sealed.key_id} is configured")
        try:
            return AESGCM(key).decrypt(sealed.nonce, sealed.ciphertext, aad)
        except InvalidTag:
            raise SecretUnreadable("the secret does not decrypt for this tenant and user") from None


def _dev_key(settings: Settings) -> str:
    """Read, or once generate, the local dev key. Refused outside local/test."""
    if not settings.dev_keys_allowed:
        raise SettingsError("MFA_ENCRYPTION_KEY: not set, and dev keys are off in production")
    path = Path(settings.custos_local_dir) / "keys" / "mfa-aes256.key"
    with _key_lock:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(base64.b64encode(os.urandom(32)).decode("ascii") + "\n")
            try:
                os.link(tmp, path)  # atomic: a concurrent worker's key wins, never a torn file
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        return path.read_text().strip()


def load_secret_box(settings: Settings) -> SecretBox:
    """The key ring from settings (or the local dev key).

    Raises:
        SettingsError: no key in production (settings validation names malformed ones).
    """
    current = base64.b64decode(settings.mfa_encryption_key or _dev_key(settings))
    if len(current) != 32:
        raise SettingsError("MFA_ENCRYPTION_KEY: must be 32 bytes before base64")
    keys = {key_id(current): current}
    for text in settings.mfa_decryption_keys.split(","):
        if text.strip():
            old = base64.b64decode(text.strip())
            keys.setdefault(key_id(old), old)
    return SecretBox(current_id=key_id(current), keys=keys)


@functools.cache
def secret_box() -> SecretBox:
    """This worker's key ring, loaded on first use."""
    return load_secret_box(get_settings())


def _aad(tenant_id: str, user_id: str, realm: Realm = USERS) -> bytes:
    return realm.aad_context + b"\x00" + uuid.UUID(tenant_id).bytes + uuid.UUID(user_id).bytes


def seal_secret(secret: str, *, tenant_id: str, user_id: str, realm: Realm = USERS) -> Sealed:
    return secret_box().seal(secret.encode("ascii"), _aad(tenant_id, user_id, realm))


def open_secret(row: dict[str, Any], *, tenant_id: str, user_id: str, realm: Realm = USERS) -> str:
    """Raises SecretUnreadable."""
    sealed = Sealed(bytes(row["secret_ciphertext"]), bytes(row["secret_nonce"]), row["key_id"])
    return secret_box().open(sealed, _aad(tenant_id, user_id, realm)).decode("ascii")


# --- TOTP (RFC 6238) ----------------------------------------------------------------------------


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
    import segno  # only enrolment draws a QR code: not loaded at import

    buf = io.BytesIO()
    segno.make(text, error="m").save(buf, kind="svg", scale=4, border=4, xmldecl=False, svgns=True, nl=False)
    return buf.getvalue().decode("utf-8")


# --- recovery codes -----------------------------------------------------------------------------


def new_recovery_code() -> str:
    raw = "".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(RECOVERY_CODE_LENGTH))
    return "-".join(raw[i:i + 4] for i in range(0, RECOVERY_CODE_LENGTH, 4))


def normalize_recovery_code(code: str) -> str | None:
    """Lower-cased, without spaces and dashes; None if it cannot be a recovery code."""
    cleaned = "".join(ch for ch in str(code).lower() if ch not in " -\t")
    if len(cleaned) != RECOVERY_CODE_LENGTH or any(ch not in RECOVERY_ALPHABET for ch in cleaned):
        return None
    return cleaned


def recovery_code_hash(user_id: str, code: str) -> str:
    """SHA-256 of user id and normalized code: the user id keeps one search from covering everyone."""
    return hashlib.sha256(f"{uuid.UUID(user_id)}:{code}".encode("ascii")).hexdigest()


def _owner_insert(realm: Realm, tenant_id: str, owner_id: str) -> tuple[str, str, tuple[str, ...]]:
    """Column list, placeholders and values that name a row's owner in an insert."""
    if realm.tenant_scoped:
        return f"tenant_id, {realm.owner}", "%s, %s", (tenant_id, owner_id)
    return realm.owner, "%s", (owner_id,)


def _issue_recovery_codes(conn: Conn, *, tenant_id: str, user_id: str,
                          realm: Realm = USERS) -> tuple[list[str], int]:
    """A new set in the caller's transaction; returns the codes and how many old unused ones it voided."""
    voided = conn.execute(
        f"delete from {realm.recovery} where {realm.owner} = %s returning used_at", (user_id,)
    ).fetchall()
    set_id, codes = uuid.uuid4(), [new_recovery_code() for _ in range(RECOVERY_CODE_COUNT)]
    cols, marks, owner = _owner_insert(realm, tenant_id, user_id)
    with conn.cursor() as cur:
        cur.executemany(
            f"insert into {realm.recovery} ({cols}, set_id, code_hash) values ({marks}, %s, %s)",
            [(*owner, set_id, recovery_code_hash(user_id, normalize_recovery_code(c) or "")) for c in codes],
        )
    return codes, len([r for r in voided if r["used_at"] is None])


# --- factor state --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FactorState:
    totp: bool
    passkeys: int
    recovery_codes_remaining: int
    required: bool

    @property
    def enrolled(self) -> bool:
        return self.totp or self.passkeys > 0

    @property
    def methods(self) -> list[str]:
        return ((["totp"] if self.totp else []) + (["passkey"] if self.passkeys else [])
                + (["recovery_code"] if self.recovery_codes_remaining else []))


def factor_state(conn: Conn, *, user_id: str, role: str, realm: Realm = USERS) -> FactorState:
    """The user's factors and whether their role (or the tenant) requires one. Every
    platform operator must have one."""
    o, all_roles = realm.owner, (
        "coalesce((select value = 'true'::jsonb from tenant_settings where key = %(k)s), false)"
        if realm.tenant_scoped else "true")
    row = conn.execute(
        f"""select exists(select 1 from {realm.totp} where {o} = %(u)s and confirmed_at is not null) as totp,
                   (select count(*) from {realm.credentials.table} where {o} = %(u)s) as passkeys,
                   (select count(*) from {realm.recovery} where {o} = %(u)s and used_at is null) as recovery,
                   {all_roles} as all_roles""",
        {"u": user_id, "k": MFA_ALL_ROLES_SETTING},
    ).fetchone()
    assert row is not None
    return FactorState(totp=bool(row["totp"]), passkeys=int(row["passkeys"]),
                       recovery_codes_remaining=int(row["recovery"]),
                       required=role in MFA_REQUIRED_ROLES or bool(row["all_roles"]))


def status(principal: Principal) -> dict[str, Any]:
    """The caller's second factors, as `GET /api/mfa` (operators: `GET /api/platform/mfa`) shows them."""
    realm, chain = _realm(principal)
    with db.tenant_tx(chain) as conn:
        state = factor_state(conn, user_id=principal.user_id, role=principal.role, realm=realm)
        totp = conn.execute(
            f"select confirmed_at, last_used_at from {realm.totp} where {realm.owner} = %s and confirmed_at is not null",
            (principal.user_id,),
        ).fetchone()
        keys = passkeys.list_credentials(conn, principal.user_id, realm.credentials)
    return {"required": state.required, "enrolled": state.enrolled, "enrolment_required": state.required and not state.enrolled,
            "totp": totp, "passkeys": keys, "recovery_codes_remaining": state.recovery_codes_remaining,
            "methods": state.methods}


# --- shared helpers -------------------------------------------------------------------------------


class _Rejected(Exception):
    """A second factor failed inside a transaction; the caller records it after the rollback."""

    def __init__(self, method: str, reason: str, extra: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.method, self.reason, self.extra = method, reason, extra or {}


def _tenant(principal: Principal) -> str:
    assert principal.tenant_id is not None
    return principal.tenant_id


def _realm(principal: Principal) -> tuple[Realm, str]:
    """The caller's realm and the chain (tenant, or the platform chain) its events go to."""
    if principal.is_operator:
        return OPERATORS, audit.PLATFORM_CHAIN
    return USERS, _tenant(principal)


def _actor(user_id: str, name: str | None, realm: Realm = USERS) -> audit.Actor:
    return audit.Actor(id=user_id, name=name or user_id, type=realm.kind)


def _lock_user(conn: Conn, user_id: str, *, lock: bool = True, realm: Realm = USERS) -> dict[str, Any]:
    """The user row, locked: serializes every factor change of one user (so no two removals
    can leave them without a factor). Raises NotFound."""
    role = "role" if realm.tenant_scoped else f"'{PLATFORM_OPERATOR}' as role"
    row = conn.execute(
        f"select id::text as id, email, display_name, {role}, status from {realm.people} where id = %s"
        + (" for update" if lock else ""), (user_id,)
    ).fetchone()
    if row is None:
        raise NotFound("no such user")
    return row


def _keys(tenant_id: str, user_id: str, ip: str | None) -> list[ratelimit.Key]:
    return ratelimit.subject_keys(subject=user_id, ip=ip or "unknown", tenant=tenant_id)


def _ip_keys(ip: str | None) -> list[ratelimit.Key]:
    return [ratelimit.Key("ip", ratelimit.normalize_ip(ip or "unknown"))]


def _recent_proof(conn: Conn, session_id: str, realm: Realm = USERS) -> bool:
    """Whether the session proved a second factor within MFA_RECENT_AUTH_S."""
    row = conn.execute(
        f"select mfa_verified_at > now() - make_interval(secs => %s) as recent from {realm.sessions} where id = %s",
        (get_settings().mfa_recent_auth_s, session_id),
    ).fetchone()
    return bool(row and row["recent"])


def _require_recent_proof(conn: Conn, principal: Principal, realm: Realm = USERS) -> None:
    """Changing the factors of an account that has one needs a session that proved one
    lately: a stolen session alone must not swap in the thief's factor or drop the user's.

    Raises:
        StepUpRequired.
    """
    if not _recent_proof(conn, principal.session_id, realm):
        raise StepUpRequired("sign in again with your second factor (it was proved too long ago) and retry")


def require_recent_second_factor(principal: Principal) -> None:
    """For the most consequential actions (an operator cancelling a tenant or taking a
    support token): the caller's session must have proved a second factor within
    MFA_RECENT_AUTH_S (at sign-in, or by a step-up).

    Raises:
        StepUpRequired.
    """
    realm, chain = _realm(principal)
    with db.tenant_tx(chain) as conn:
        if not _recent_proof(conn, principal.session_id, realm):
            raise StepUpRequired("prove your second factor again (POST /api/platform/auth/step-up) and retry")


def _mark_session(conn: Conn, session_id: str, method: Method, realm: Realm = USERS) -> None:
    conn.execute(f"update {realm.sessions} set mfa_verified_at = now(), mfa_method = %s where id = %s",
                 (method, session_id))


def _record_failure(*, tenant_id: str, user_id: str, actor: audit.Actor, action: str, after: dict[str, Any],
                    attempt: ratelimit.Attempt, meta: audit.RequestMeta, security: dict[str, Any] | None = None) -> None:
    """Audit a failed second factor (its reserved attempt stays counted) and any throttle its
    reservation tripped, in one transaction."""
    crossings = attempt.crossings
    target = actor.type if actor.type == "operator" else "user"
    with db.tenant_tx(tenant_id) as conn:
        audit.append(conn, tenant_id=tenant_id, actor=actor, action=action, target_type=target, target_id=user_id,
                     after=after, meta=meta)
        if security is not None:
            audit.append(conn, tenant_id=tenant_id, actor=actor, action=security.pop("action"), target_type=target,
                         target_id=user_id, after=security, meta=meta)
        for c in crossings:
            audit.append(conn, tenant_id=tenant_id, actor=audit.Actor(id=None, name="throttle", type="system"),
                         action="security.throttled", target_type=target, target_id=user_id,
                         after={"family": "mfa", "key": c.kind, "failures": c.failures, "delay_s": c.delay_s},
                         meta=meta)


def _check_totp(conn: Conn, row: dict[str, Any], *, tenant_id: str, user_id: str, code: str,
                method: str = "totp", realm: Realm = USERS) -> TotpMatch:
    """Verify `code` against a (locked) mfa_totp row and store its step; re-encrypts under the
    current key if an old one sealed it. Raises _Rejected."""
    try:
        secret = open_secret(row, tenant_id=tenant_id, user_id=user_id, realm=realm)
    except SecretUnreadable as exc:
        log.error("TOTP secret of user %s unreadable: %s", user_id, exc)
        raise _Rejected(method, "secret_unreadable") from None
    try:
        match = verify_totp(code, secret=secret, last_used_step=row["last_used_step"])
    except TotpCodeReused:
        raise _Rejected(method, "code_reused") from None
    except TotpCodeMalformed:
        raise _Rejected(method, "code_malformed") from None
    except TotpCodeInvalid:
        raise _Rejected(method, "code_invalid") from None
    resealed = (None if row["key_id"] == secret_box().current_id
                else seal_secret(secret, tenant_id=tenant_id, user_id=user_id, realm=realm))
    conn.execute(
        f"""update {realm.totp} set last_used_step = %s, last_used_at = now(),
                  secret_ciphertext = coalesce(%s, secret_ciphertext), secret_nonce = coalesce(%s, secret_nonce),
                  key_id = coalesce(%s, key_id)
            where id = %s""",
        (match.step, resealed and resealed.ciphertext, resealed and resealed.nonce, resealed and resealed.key_id,
         row["id"]),
    )
    return match


_TOTP_COLUMNS = "id, secret_ciphertext, secret_nonce, key_id, last_used_step, created_at, confirmed_at"


# --- TOTP enrolment -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TotpEnrolment:
    secret: str
    otpauth_uri: str
    qr_svg: str

    def as_dict(self) -> dict[str, Any]:
        return {"secret": self.secret, "otpauth_uri": self.otpauth_uri, "qr_svg": self.qr_svg,
                "expires_in": int(TOTP_PENDING_TTL.total_seconds())}


def start_totp_enrolment(principal: Principal, *, meta: audit.RequestMeta) -> TotpEnrolment:
    """A new secret, pending until confirmed (an active TOTP keeps working until then).

    Raises:
        StepUpRequired: the user has a factor and this session did not prove one lately.
    """
    (realm, tenant_id), secret = _realm(principal), new_totp_secret()
    sealed = seal_secret(secret, tenant_id=tenant_id, user_id=principal.user_id, realm=realm)
    cols, marks, owner = _owner_insert(realm, tenant_id, principal.user_id)
    with db.tenant_tx(tenant_id) as conn:
        user = _lock_user(conn, principal.user_id, realm=realm)
        if factor_state(conn, user_id=principal.user_id, role=principal.role, realm=realm).enrolled:
            _require_recent_proof(conn, principal, realm)
        slug = (conn.execute("select slug from tenants where id = %s", (tenant_id,)).fetchone() if realm.tenant_scoped
                else {"slug": "platform operator"})
        conn.execute(f"delete from {realm.totp} where {realm.owner} = %s and confirmed_at is null", (principal.user_id,))
        conn.execute(
            f"""insert into {realm.totp} ({cols}, secret_ciphertext, secret_nonce, key_id)
                values ({marks}, %s, %s, %s)""",
            (*owner, sealed.ciphertext, sealed.nonce, sealed.key_id),
        )
        audit.append(conn, tenant_id=tenant_id, actor=_actor(principal.user_id, principal.name, realm),
                     action="mfa.totp_enrolment_started", target_type=realm.kind, target_id=principal.user_id, meta=meta)
    account = f"{user['email']} ({slug['slug']})" if slug else user["email"]
    uri = otpauth_uri(secret, account=account)
    return TotpEnrolment(secret=secret, otpauth_uri=uri, qr_svg=qr_svg(uri))


def confirm_totp(principal: Principal, *, code: str, meta: audit.RequestMeta) -> dict[str, Any]:
    """Activate the pending secret with a code from it; replaces an active one. The first
    factor a user enrols comes with a set of recovery codes, shown only in this answer.

    Raises:
        TooManyRequests, NoPendingEnrolment (none, or older than 15 minutes), InvalidCode,
        StepUpRequired (replacing or adding to a factor without a recent proof).
    """
    (realm, tenant_id), user_id = _realm(principal), principal.user_id
    attempt = ratelimit.throttle().attempt("mfa", _keys(tenant_id, user_id, meta.ip))
    actor = _actor(user_id, principal.name, realm)
    try:
        with db.tenant_tx(tenant_id) as conn:
            _lock_user(conn, user_id, realm=realm)
            pending = conn.execute(
                f"select {_TOTP_COLUMNS}, created_at > now() - %s as fresh from {realm.totp}"
                f" where {realm.owner} = %s and confirmed_at is null",
                (TOTP_PENDING_TTL, user_id),
            ).fetchone()
            if pending is None or not pending["fresh"]:
                raise NoPendingEnrolment("start a TOTP enrolment first" if pending is None
                                         else "the enrolment expired: start it again")
            before = factor_state(conn, user_id=user_id, role=principal.role, realm=realm)
            if before.enrolled:
                _require_recent_proof(conn, principal, realm)
            match = _check_totp(conn, pending, tenant_id=tenant_id, user_id=user_id, code=code, realm=realm)
            conn.execute(f"delete from {realm.totp} where {realm.owner} = %s and confirmed_at is not null", (user_id,))
            row = conn.execute(f"update {realm.totp} set confirmed_at = now() where id = %s returning confirmed_at",
                               (pending["id"],)).fetchone()
            assert row is not None
            _mark_session(conn, principal.session_id, "totp", realm)
            audit.append(conn, tenant_id=tenant_id, actor=actor, action="mfa.totp_enrolled", target_type=realm.kind,
                         target_id=user_id, after={"replaced": before.totp, "drift": match.drift}, meta=meta)
            codes = None
            if before.recovery_codes_remaining == 0:
                codes, _ = _issue_recovery_codes(conn, tenant_id=tenant_id, user_id=user_id, realm=realm)
                audit.append(conn, tenant_id=tenant_id, actor=actor, action="mfa.recovery_codes_issued",
                             target_type=realm.kind, target_id=user_id,
                             after={"count": len(codes), "occasion": "enrolment"}, meta=meta)
    except _Rejected as exc:
        _record_failure(tenant_id=tenant_id, user_id=user_id, actor=actor, action="mfa.totp_confirm_failed",
                        after={"reason": exc.reason}, attempt=attempt, meta=meta)
        raise InvalidCode("the code does not match the new secret: check the device's clock and try the next code") from None
    attempt.succeeded()
    return {"confirmed_at": row["confirmed_at"], "recovery_codes": codes,
            "recovery_codes_remaining": RECOVERY_CODE_COUNT if codes else before.recovery_codes_remaining}


def _removal_allowed(conn: Conn, principal: Principal, *, losing: Method, realm: Realm = USERS) -> FactorState:
    state = factor_state(conn, user_id=principal.user_id, role=principal.role, realm=realm)
    remaining = (state.totp and losing != "totp") or state.passkeys - (1 if losing == "passkey" else 0) > 0
    if state.required and not remaining:
        raise LastFactor()
    return state


def _drop_orphan_codes(conn: Conn, user_id: str, realm: Realm = USERS) -> int:
    """With no factor left, recovery codes would be a factor of their own: they go too."""
    o = realm.owner
    left = conn.execute(
        f"""select exists(select 1 from {realm.totp} where {o} = %(u)s and confirmed_at is not null)
                   or exists(select 1 from {realm.credentials.table} where {o} = %(u)s) as any""",
        {"u": user_id},
    ).fetchone()
    if left and left["any"]:
        return 0
    return len(conn.execute(f"delete from {realm.recovery} where {o} = %s returning id", (user_id,)).fetchall())


def remove_totp(principal: Principal, *, meta: audit.RequestMeta) -> None:
    """Remove one's TOTP (and a pending enrolment).

    Raises:
        NotFound: no active TOTP. LastFactor: it is the last factor of a user who must have one.
        StepUpRequired: this session did not prove a factor lately.
    """
    realm, tenant_id = _realm(principal)
    with db.tenant_tx(tenant_id) as conn:
        _lock_user(conn, principal.user_id, realm=realm)
        if not factor_state(conn, user_id=principal.user_id, role=principal.role, realm=realm).totp:
            raise NotFound("no TOTP is enrolled")
        _require_recent_proof(conn, principal, realm)
        _removal_allowed(conn, principal, losing="totp", realm=realm)
        conn.execute(f"delete from {realm.totp} where {realm.owner} = %s", (principal.user_id,))
        dropped = _drop_orphan_codes(conn, principal.user_id, realm)
        audit.append(conn, tenant_id=tenant_id, actor=_actor(principal.user_id, principal.name, realm),
                     action="mfa.totp_removed", target_type=realm.kind, target_id=principal.user_id,
                     after={"recovery_codes_voided": dropped}, meta=meta)


def _prove_totp(conn: Conn, principal: Principal, *, realm: Realm, tenant_id: str, code: str) -> None:
    """Check a current TOTP code of the caller and mark their session as having proved it.
    Raises _Rejected."""
    totp = conn.execute(
        f"select {_TOTP_COLUMNS} from {realm.totp} where {realm.owner} = %s and confirmed_at is not null for update",
        (principal.user_id,),
    ).fetchone()
    if totp is None:
        raise _Rejected("totp", "no_totp")
    _check_totp(conn, totp, tenant_id=tenant_id, user_id=principal.user_id, code=code, realm=realm)
    _mark_session(conn, principal.session_id, "totp", realm)


def step_up(principal: Principal, *, code: str, meta: audit.RequestMeta) -> dict[str, Any]:
    """Prove a current TOTP code inside a session, so actions that need a recent second
    factor (`require_recent_second_factor`) are allowed for MFA_RECENT_AUTH_S. The code is
    used up like any other (its step is stored).

    Raises:
        TooManyRequests, InvalidCode.
    """
    (realm, tenant_id), user_id = _realm(principal), principal.user_id
    attempt = ratelimit.throttle().attempt("mfa", _keys(tenant_id, user_id, meta.ip))
    actor = _actor(user_id, principal.name, realm)
    try:
        with db.tenant_tx(tenant_id) as conn:
            _prove_totp(conn, principal, realm=realm, tenant_id=tenant_id, code=code)
            audit.append(conn, tenant_id=tenant_id, actor=actor, action="mfa.step_up", target_type="session",
                         target_id=principal.session_id, after={"method": "totp"}, meta=meta)
    except _Rejected as exc:
        _record_failure(tenant_id=tenant_id, user_id=user_id, actor=actor, action="mfa.step_up_failed",
                        after={"method": exc.method, "reason": exc.reason}, attempt=attempt, meta=meta)
        raise InvalidCode(_FAILURE_DETAIL.get(exc.reason, "the code was not accepted")) from None
    attempt.succeeded()
    return {"mfa_method": "totp", "valid_for_s": get_settings().mfa_recent_auth_s}


def regenerate_recovery_codes(principal: Principal, *, code: str | None, meta: audit.RequestMeta) -> dict[str, Any]:
    """A new set of recovery codes; the old set stops working.

    Needs a current TOTP `code`, or a session that proved a second factor within
    `MFA_RECENT_AUTH_S` (signed in with one, or enrolled one).

    Raises:
        TooManyRequests, NotEnrolled, StepUpRequired, InvalidCode.
    """
    (realm, tenant_id), user_id = _realm(principal), principal.user_id
    attempt = ratelimit.throttle().attempt("mfa", _keys(tenant_id, user_id, meta.ip)) if code is not None else None
    actor = _actor(user_id, principal.name, realm)
    try:
        with db.tenant_tx(tenant_id) as conn:
            _lock_user(conn, user_id, realm=realm)
            state = factor_state(conn, user_id=user_id, role=principal.role, realm=realm)
            if not state.enrolled:
                raise NotEnrolled("enrol a second factor first: its confirmation gives you recovery codes")
            if code is None:
                if not _recent_proof(conn, principal.session_id, realm):
                    raise StepUpRequired("send a current TOTP `code`, or sign in again with your second factor")
                proof = "recent_sign_in"
            else:
                _prove_totp(conn, principal, realm=realm, tenant_id=tenant_id, code=code)
                proof = "totp"
            codes, voided = _issue_recovery_codes(conn, tenant_id=tenant_id, user_id=user_id, realm=realm)
            audit.append(conn, tenant_id=tenant_id, actor=actor, action="mfa.recovery_codes_issued",
                         target_type=realm.kind,
                         target_id=user_id, after={"count": len(codes), "occasion": "regenerated", "voided": voided,
                                                   "proof": proof}, meta=meta)
    except _Rejected as exc:
        assert attempt is not None  # only a code is rejected
        _record_failure(tenant_id=tenant_id, user_id=user_id, actor=actor, action="mfa.step_up_failed",
                        after={"method": exc.method, "reason": exc.reason}, attempt=attempt, meta=meta)
        raise InvalidCode("the code was not accepted") from None
    if attempt is not None:
        attempt.succeeded()
    return {"recovery_codes": codes, "recovery_codes_remaining": len(codes)}


# --- passkeys (self-service) ----------------------------------------------------------------------


def passkey_registration_options(principal: Principal) -> dict[str, Any]:
    """Options for a new passkey of the caller (their existing ones excluded).

    Raises:
        StepUpRequired: the user has a factor and this session did not prove one lately.
    """
    realm, tenant_id = _realm(principal)
    with db.tenant_tx(tenant_id) as conn:
        user = _lock_user(conn, principal.user_id, lock=False, realm=realm)
        if factor_state(conn, user_id=principal.user_id, role=principal.role, realm=realm).enrolled:
            _require_recent_proof(conn, principal, realm)
        existing = passkeys.user_credentials(conn, principal.user_id, realm.credentials)
    return passkeys.registration_options(tenant_id=tenant_id, user_id=principal.user_id, user_name=user["email"],
                                         display_name=user["display_name"], existing=existing).as_dict()


def register_passkey(principal: Principal, *, challenge_id: str, credential: dict[str, Any], name: str | None,
                     meta: audit.RequestMeta) -> dict[str, Any]:
    """Verify and store a new passkey; the first factor a user enrols comes with recovery codes.

    Raises:
        PasskeyNotAccepted: the ceremony failed (challenge, origin, RP id, signature ...).
        Conflict: this credential is already registered.
        StepUpRequired: the user has a factor and this session did not prove one lately.
    """
    (realm, tenant_id), user_id = _realm(principal), principal.user_id
    actor = _actor(user_id, principal.name, realm)
    try:
        new = passkeys.verify_registration(challenge_id=challenge_id, credential=credential,
                                           expected_tenant_id=tenant_id, expected_user_id=user_id)
    except passkeys.PasskeyRejected as exc:
        with db.tenant_tx(tenant_id) as conn:
            audit.append(conn, tenant_id=tenant_id, actor=actor, action="mfa.passkey_registration_failed",
                         target_type=realm.kind, target_id=user_id, after={"reason": exc.reason}, meta=meta)
        raise PasskeyNotAccepted(str(exc)[:300]) from None
    label = (name or "").strip() or f"Passkey on {device_label(meta.user_agent)}"[:100]
    try:
        with db.tenant_tx(tenant_id) as conn:
            _lock_user(conn, user_id, realm=realm)
            before = factor_state(conn, user_id=user_id, role=principal.role, realm=realm)
            if before.enrolled:
                _require_recent_proof(conn, principal, realm)
            key = passkeys.insert_credential(conn, tenant_id=tenant_id, user_id=user_id, new=new, name=label,
                                             store=realm.credentials)
            _mark_session(conn, principal.session_id, "passkey", realm)
            audit.append(conn, tenant_id=tenant_id, actor=actor, action="mfa.passkey_registered", target_type="passkey",
                         target_id=key["id"], after={"name": label, "aaguid": new.aaguid,
                                                     "discoverable": new.discoverable, "user_verified": new.user_verified},
                         meta=meta)
            codes = None
            if before.recovery_codes_remaining == 0:
                codes, _ = _issue_recovery_codes(conn, tenant_id=tenant_id, user_id=user_id, realm=realm)
                audit.append(conn, tenant_id=tenant_id, actor=actor, action="mfa.recovery_codes_issued",
                             target_type=realm.kind, target_id=user_id,
                             after={"count": len(codes), "occasion": "enrolment"}, meta=meta)
    except psycopg.errors.UniqueViolation:
        raise Conflict("this passkey is already registered") from None
    return {"passkey": key, "recovery_codes": codes,
            "recovery_codes_remaining": RECOVERY_CODE_COUNT if codes else before.recovery_codes_remaining}


def list_passkeys(principal: Principal) -> list[dict[str, Any]]:
    realm, tenant_id = _realm(principal)
    with db.tenant_tx(tenant_id) as conn:
        return passkeys.list_credentials(conn, principal.user_id, realm.credentials)


def rename_passkey(principal: Principal, passkey_id: uuid.UUID, *, name: str, meta: audit.RequestMeta) -> dict[str, Any]:
    """Raises NotFound: not one of the caller's passkeys."""
    tenant_id = _tenant(principal)
    with db.tenant_tx(tenant_id) as conn:
        old = conn.execute("select name from webauthn_credentials where id = %s and user_id = %s for update",
                           (str(passkey_id), principal.user_id)).fetchone()
        if old is None:
            raise NotFound("no such passkey")
        row = conn.execute(f"update webauthn_credentials set name = %s where id = %s returning {passkeys.PUBLIC_COLUMNS}",
                           (name, str(passkey_id))).fetchone()
        assert row is not None
        audit.append(conn, tenant_id=tenant_id, actor=_actor(principal.user_id, principal.name),
                     action="mfa.passkey_renamed", target_type="passkey", target_id=str(passkey_id),
                     before={"name": old["name"]}, after={"name": name}, meta=meta)
    return passkeys.public(row)


def remove_passkey(principal: Principal, passkey_id: uuid.UUID, *, meta: audit.RequestMeta) -> None:
    """Raises NotFound (not the caller's), StepUpRequired (no recent proof of a factor),
    LastFactor (last factor of a user who must have one)."""
    realm, tenant_id = _realm(principal)
    table = realm.credentials.table
    with db.tenant_tx(tenant_id) as conn:
        _lock_user(conn, principal.user_id, realm=realm)
        row = conn.execute(f"select name from {table} where id = %s and {realm.owner} = %s",
                           (str(passkey_id), principal.user_id)).fetchone()
        if row is None:
            raise NotFound("no such passkey")
        _require_recent_proof(conn, principal, realm)
        _removal_allowed(conn, principal, losing="passkey", realm=realm)
        conn.execute(f"delete from {table} where id = %s", (str(passkey_id),))
        dropped = _drop_orphan_codes(conn, principal.user_id, realm)
        audit.append(conn, tenant_id=tenant_id, actor=_actor(principal.user_id, principal.name, realm),
                     action="mfa.passkey_removed", target_type="passkey", target_id=str(passkey_id),
                     before={"name": row["name"]}, after={"recovery_codes_voided": dropped}, meta=meta)


# --- sign-in ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OperatorTokens:
    """An operator session's access token (no refresh token: operators sign in again)."""

    access_token: str
    session_id: str
    expires_in: int
    session_expires_at: Any

    def as_dict(self) -> dict[str, Any]:
        return {"access_token": self.access_token, "token_type": "Bearer", "expires_in": self.expires_in,
                "session_id": self.session_id, "session_expires_at": self.session_expires_at}


def open_operator_session(conn: Conn, *, operator: dict[str, Any], meta: audit.RequestMeta) -> OperatorTokens:
    """A new operator session and its access token, in the caller's transaction."""
    session = conn.execute(
        """insert into operator_sessions (operator_id, expires_at, ip, user_agent)
           values (%s, now() + make_interval(hours => %s), %s, %s) returning id::text as id, expires_at""",
        (operator["id"], OPERATOR_SESSION_HOURS, meta.ip, (meta.user_agent or "")[:512] or None),
    ).fetchone()
    assert session is not None
    token = issue_access_token(subject=operator["id"], tenant_id=None, session_id=session["id"], role=PLATFORM_OPERATOR,
                               name=operator["display_name"])
    return OperatorTokens(token, session["id"], get_settings().jwt_access_ttl_s, session["expires_at"])


@dataclass(frozen=True)
class SignedIn:
    """Tokens of a new session, and what the client should know besides."""

    tokens: IssuedTokens | OperatorTokens
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {**self.tokens.as_dict(), **self.extra}


@dataclass(frozen=True)
class SecondFactorRequired:
    ticket: str
    methods: list[str]
    expires_in: int

    def as_dict(self) -> dict[str, Any]:
        return {"mfa_required": True, "mfa_ticket": self.ticket, "methods": self.methods, "expires_in": self.expires_in}


def _new_ticket(tenant_id: str, realm: Realm = USERS) -> tuple[str, str]:
    token = f"{realm.ticket_kind}.{uuid.UUID(tenant_id).hex}.{secrets.token_urlsafe(32)}"
    return token, token_hash(token)


def open_ticket(conn: Conn, *, tenant_id: str, user_id: str, state: FactorState, remember_me: bool,
                meta: audit.RequestMeta, realm: Realm = USERS) -> SecondFactorRequired:
    """After a correct password: a single-use ticket for the second step (in the caller's
    transaction). The user's used and expired tickets are cleared on the way."""
    ttl = get_settings().mfa_ticket_ttl_s
    conn.execute(f"delete from {realm.tickets} where {realm.owner} = %s and (used_at is not null or expires_at <= now())",
                 (user_id,))
    ticket, hashed = _new_ticket(tenant_id, realm)
    cols, marks, owner = _owner_insert(realm, tenant_id, user_id)
    conn.execute(
        f"""insert into {realm.tickets} ({cols}, ticket_hash, expires_at, remember_me, ip, user_agent)
            values ({marks}, %s, now() + make_interval(secs => %s), %s, %s, %s)""",
        (*owner, hashed, ttl, remember_me, meta.ip, (meta.user_agent or "")[:512] or None),
    )
    return SecondFactorRequired(ticket=ticket, methods=state.methods, expires_in=ttl)


_TICKET_QUERY = """
    select k.id, k.user_id::text as user_id, k.remember_me, k.ticket_hash, u.role, u.display_name, u.email
      from mfa_tickets k join users u on u.tenant_id = k.tenant_id and u.id = k.user_id
     where k.ticket_hash = %s and k.used_at is null and k.expires_at > now() and u.status = 'active'"""
_OPERATOR_TICKET_QUERY = f"""
    select k.id, k.operator_id::text as user_id, k.remember_me, k.ticket_hash, '{PLATFORM_OPERATOR}' as role,
           o.display_name, o.email
      from operator_mfa_tickets k join platform_operators o on o.id = k.operator_id
     where k.ticket_hash = %s and k.used_at is null and k.expires_at > now() and o.status = 'active'"""


def _ticket_query(realm: Realm) -> str:
    return _TICKET_QUERY if realm.tenant_scoped else _OPERATOR_TICKET_QUERY


def _ticket(ticket: str, ip: str | None, realm: Realm = USERS) -> tuple[str, dict[str, Any]]:
    """The tenant (the platform chain for operators) and row of a live ticket.
    Raises InvalidTicket (counted against the IP)."""
    parsed = parse_token(ticket, realm.ticket_kind)
    if parsed is not None and (parsed.tenant_id == audit.PLATFORM_CHAIN) == realm.tenant_scoped:
        parsed = None  # a user ticket never names the platform chain, an operator ticket always does
    row = None
    if parsed is not None:
        with db.tenant_tx(parsed.tenant_id) as conn:
            row = conn.execute(_ticket_query(realm), (parsed.hash,)).fetchone()
    if parsed is None or row is None or not same_hash(parsed.hash, row["ticket_hash"]):
        # Tickets are 256-bit random, not guessable, so the lookup need not wait for a
        # reservation; a bad one still counts (or gets the 429) against the IP.
        ratelimit.throttle().attempt("mfa", _ip_keys(ip))
        raise InvalidTicket()
    return parsed.tenant_id, row


def second_factor_passkey_options(*, ticket: str, meta: audit.RequestMeta, realm: Realm = USERS) -> dict[str, Any]:
    """Options to prove the ticket's user with one of their passkeys.

    Raises:
        InvalidTicket, NotEnrolled (the user has no passkey).
    """
    tenant_id, row = _ticket(ticket, meta.ip, realm)
    with db.tenant_tx(tenant_id) as conn:
        allowed = passkeys.user_credentials(conn, row["user_id"], realm.credentials)
    if not allowed:
        raise NotEnrolled("this account has no passkey")
    return passkeys.authentication_options(purpose="second_factor", tenant_id=tenant_id, user_id=row["user_id"],
                                           ticket_hash=row["ticket_hash"], allowed=allowed).as_dict()


def verify_second_factor(*, ticket: str, code: str | None = None, recovery_code: str | None = None,
                         assertion: dict[str, Any] | None = None, challenge_id: str | None = None,
                         meta: audit.RequestMeta, realm: Realm = USERS) -> SignedIn:
    """Trade a sign-in ticket and one second factor for the session's tokens. The ticket is
    used up by a success only; failures are counted ("mfa" throttle) and audited.

    Raises:
        TooManyRequests, InvalidTicket, InvalidSecondFactor.
    """
    tenant_id, ticket_row = _ticket(ticket, meta.ip, realm)
    user_id = ticket_row["user_id"]
    attempt = ratelimit.throttle().attempt("mfa", _keys(tenant_id, user_id, meta.ip))
    actor = _actor(user_id, ticket_row["display_name"] or ticket_row["email"], realm)
    method: Method = "totp" if code is not None else "recovery_code" if recovery_code is not None else "passkey"
    extra: dict[str, Any] = {"mfa_method": method}
    tokens: IssuedTokens | OperatorTokens
    try:
        with db.tenant_tx(tenant_id) as conn:
            locked = conn.execute(_ticket_query(realm) + " for update of k", (ticket_row["ticket_hash"],)).fetchone()
            if locked is None:
                raise InvalidTicket()
            security: dict[str, Any] | None = None
            if method == "totp":
                totp = conn.execute(
                    f"select {_TOTP_COLUMNS} from {realm.totp} where {realm.owner} = %s and confirmed_at is not null"
                    " for update",
                    (user_id,),
                ).fetchone()
                if totp is None:
                    raise _Rejected(method, "no_totp")
                _check_totp(conn, totp, tenant_id=tenant_id, user_id=user_id, code=code or "", realm=realm)
            elif method == "recovery_code":
                remaining = _use_recovery_code(conn, user_id=user_id, code=recovery_code or "", realm=realm)
                extra["recovery_codes_remaining"] = remaining
                security = {"action": "security.recovery_code_used", "remaining": remaining}
            else:
                _use_passkey(conn, tenant_id=tenant_id, user_id=user_id, ticket_hash=ticket_row["ticket_hash"],
                             assertion=assertion, challenge_id=challenge_id, realm=realm)
            conn.execute(f"update {realm.tickets} set used_at = now() where id = %s", (locked["id"],))
            user = {"id": user_id, "role": locked["role"], "display_name": locked["display_name"]}
            if realm.tenant_scoped:
                tokens = create_session(conn, tenant_id=tenant_id, user=user, remember_me=locked["remember_me"],
                                        ip=meta.ip, user_agent=meta.user_agent)
                action, target_type = "auth.login_succeeded", "session"
            else:
                tokens = open_operator_session(conn, operator=user, meta=meta)
                action, target_type = "platform.operator_login_succeeded", "operator_session"
            _mark_session(conn, tokens.session_id, method, realm)
            session_meta = audit.RequestMeta(meta.ip, meta.user_agent, tokens.session_id, meta.request_id)
            audit.append(conn, tenant_id=tenant_id, actor=actor, action=action, target_type=target_type,
                         target_id=tokens.session_id, after={"remember_me": locked["remember_me"], "mfa": method},
                         meta=session_meta)
            if security is not None:
                audit.append(conn, tenant_id=tenant_id, actor=actor, action=security.pop("action"),
                             target_type=realm.kind, target_id=user_id, after=security, meta=session_meta)
    except _Rejected as exc:
        regression = exc.extra.get("security")
        _record_failure(tenant_id=tenant_id, user_id=user_id, actor=actor, action="auth.mfa_failed",
                        after={"method": exc.method, "reason": exc.reason}, attempt=attempt, meta=meta,
                        security=regression)
        raise InvalidSecondFactor(_FAILURE_DETAIL.get(exc.reason, "the second factor was not accepted")) from None
    attempt.succeeded()
    if method == "recovery_code":
        left = extra["recovery_codes_remaining"]
        extra["warning"] = (f"You used a recovery code: {left} left. " if left else "You used your last recovery code. ") + \
            "Generate a new set (POST /api/mfa/recovery-codes) if you are running low."
    return SignedIn(tokens, extra)


_FAILURE_DETAIL = {
    "code_reused": "this code was already used: wait for the next one",
    "sign_count_regression": "this passkey's signature counter went backwards: the passkey may have been copied",
}


def _use_recovery_code(conn: Conn, *, user_id: str, code: str, realm: Realm = USERS) -> int:
    """Spend one recovery code; returns how many are left. Raises _Rejected."""
    normalized = normalize_recovery_code(code)
    if normalized is None:
        raise _Rejected("recovery_code", "code_malformed")
    used = conn.execute(
        f"update {realm.recovery} set used_at = now() where {realm.owner} = %s and code_hash = %s and used_at is null"
        " returning id",
        (user_id, recovery_code_hash(user_id, normalized)),
    ).fetchone()
    if used is None:
        raise _Rejected("recovery_code", "code_invalid")
    row = conn.execute(f"select count(*) as n from {realm.recovery} where {realm.owner} = %s and used_at is null",
                       (user_id,)).fetchone()
    return int(row["n"]) if row else 0


def _use_passkey(conn: Conn, *, tenant_id: str, user_id: str, ticket_hash: str,
                 assertion: dict[str, Any] | None, challenge_id: str | None, realm: Realm = USERS) -> None:
    """Raises _Rejected."""
    try:
        challenge = passkeys.take_challenge(challenge_id or "", purpose="second_factor", tenant_id=tenant_id,
                                            user_id=user_id, ticket_hash=ticket_hash)
    except passkeys.PasskeyRejected as exc:
        raise _Rejected("passkey", exc.reason) from None
    _verify_passkey(conn, challenge=challenge, assertion=assertion or {}, user_id=user_id, user_verification=False,
                    realm=realm)


def _verify_passkey(conn: Conn, *, challenge: Any, assertion: dict[str, Any], user_id: str, user_verification: bool,
                    realm: Realm = USERS) -> None:
    """Verify an assertion; a sign-count regression is also a security event. Raises _Rejected."""
    try:
        passkeys.verify_assertion(conn, challenge=challenge, assertion=assertion, expected_user_id=user_id,
                                  require_user_verification=user_verification, store=realm.credentials)
    except passkeys.SignCountRegression as exc:
        raise _Rejected("passkey", exc.reason, {"security": {
            "action": "security.passkey_counter_regression", "stored": exc.stored, "presented": exc.presented,
        }}) from None
    except passkeys.PasskeyRejected as exc:
        raise _Rejected("passkey", exc.reason) from None


def passkey_sign_in_options(*, tenant_slug: str) -> dict[str, Any]:
    """Options for a passwordless sign-in to the tenant named by its slug. An unknown tenant
    gets options too (they will never verify), so the answer tells nothing about tenants."""
    slug = tenant_slug.strip().lower()[:63]
    with db.platform_tx() as conn:
        tenant = conn.execute("select id::text as id, status from tenants where slug = %s", (slug,)).fetchone()
    tenant_id = tenant["id"] if tenant is not None and tenant["status"] != "PURGED" else ""
    return passkeys.authentication_options(purpose="passwordless", tenant_id=tenant_id).as_dict()


def passkey_sign_in(*, challenge_id: str, assertion: dict[str, Any], remember_me: bool,
                    meta: audit.RequestMeta) -> SignedIn:
    """Sign in with a discoverable passkey alone (user verification required).

    Raises:
        TooManyRequests, InvalidSecondFactor (anything that is not a success, alike).
    """
    ip_attempt = ratelimit.throttle().attempt("mfa", _ip_keys(meta.ip))
    try:
        credential_id = passkeys.assertion_credential_id(assertion)
        challenge = passkeys.take_challenge(challenge_id, purpose="passwordless")
    except passkeys.PasskeyRejected:
        raise InvalidSecondFactor() from None
    stored = None
    if challenge.tenant_id:
        with db.tenant_tx(challenge.tenant_id) as conn:
            stored = conn.execute(
                """select c.user_id::text as user_id, u.role, u.display_name, u.email, u.status
                     from webauthn_credentials c join users u on u.tenant_id = c.tenant_id and u.id = c.user_id
                    where c.credential_id = %s""",
                (credential_id,),
            ).fetchone()
    if stored is None:
        raise InvalidSecondFactor()
    ip_attempt.succeeded()  # the user's own reservation below counts this attempt, its IP included
    tenant_id, user_id = challenge.tenant_id, stored["user_id"]
    attempt = ratelimit.throttle().attempt("mfa", _keys(tenant_id, user_id, meta.ip))
    actor = _actor(user_id, stored["display_name"] or stored["email"])
    try:
        with db.tenant_tx(tenant_id) as conn:
            if stored["status"] != "active":
                raise _Rejected("passkey", "inactive_user")
            _verify_passkey(conn, challenge=challenge, assertion=assertion, user_id=user_id, user_verification=True)
            user = {"id": user_id, "role": stored["role"], "display_name": stored["display_name"]}
            tokens = create_session(conn, tenant_id=tenant_id, user=user, remember_me=remember_me, ip=meta.ip,
                                    user_agent=meta.user_agent)
            _mark_session(conn, tokens.session_id, "passkey")
            audit.append(conn, tenant_id=tenant_id, actor=actor, action="auth.login_succeeded", target_type="session",
                         target_id=tokens.session_id, after={"remember_me": remember_me, "mfa": "passkey",
                                                             "passwordless": True},
                         meta=audit.RequestMeta(meta.ip, meta.user_agent, tokens.session_id, meta.request_id))
    except _Rejected as exc:
        _record_failure(tenant_id=tenant_id, user_id=user_id, actor=actor, action="auth.passkey_login_failed",
                        after={"reason": exc.reason}, attempt=attempt, meta=meta, security=exc.extra.get("security"))
        raise InvalidSecondFactor(_FAILURE_DETAIL.get(exc.reason)) from None
    attempt.succeeded()
    return SignedIn(tokens, {"mfa_method": "passkey"})


# --- administration -------------------------------------------------------------------------------


def reset_factors(*, actor: Principal, user_id: uuid.UUID, reason: str, audit_actor: audit.Actor,
                  meta: audit.RequestMeta) -> dict[str, Any]:
    """Remove every second factor of another user of the tenant, with a reason; their
    sessions end and they are told by mail. If their role requires a factor, their next
    sign-in can only enrol a new one.

    Raises:
        NotFound: no such user in the tenant. Forbidden: one's own factors (self-service instead).
    """
    tenant_id = _tenant(actor)
    if str(user_id) == actor.user_id:
        raise Forbidden("you cannot reset your own second factors: manage them under /api/mfa")
    with db.tenant_tx(tenant_id) as conn:
        user = _lock_user(conn, str(user_id))
        state = factor_state(conn, user_id=user["id"], role=user["role"])
        conn.execute("delete from mfa_totp where user_id = %s", (user["id"],))
        removed_keys = conn.execute("delete from webauthn_credentials where user_id = %s returning id",
                                    (user["id"],)).fetchall()
        conn.execute("delete from mfa_recovery_codes where user_id = %s", (user["id"],))
        conn.execute("update mfa_tickets set used_at = now() where user_id = %s and used_at is null", (user["id"],))
        ended = revoke_all(conn, user_id=user["id"], reason="second factors reset")
        when = conn.execute("select now() as now").fetchone()["now"]  # type: ignore[index]
        mail.enqueue(
            conn, tenant_id=tenant_id, to=user["email"], subject="Your Custos second factors were reset", kind="mfa_reset",
            body=(f"{audit_actor.name} reset the second factors (authenticator app, passkeys, recovery codes) of your "
                  f"Custos account on {when.isoformat()}.\n\nReason given: {reason}\n\n"
                  f"Your sessions were ended. {'Sign in and enrol a new second factor.' if state.required else 'Sign in again.'}\n"
                  "If you did not ask for this, tell your administrator or security team now.\n"),
        )
        before = {"totp": state.totp, "passkeys": len(removed_keys), "recovery_codes": state.recovery_codes_remaining}
        audit.append(conn, tenant_id=tenant_id, actor=audit_actor, action="mfa.factors_reset", target_type="user",
                     target_id=user["id"], before=before, after={"sessions_ended": ended}, reason=reason, meta=meta)
    return {"user_id": user["id"], "removed": before, "sessions_ended": ended, "enrolment_required": state.required}


# --- re-authentication inside another transaction (e-signatures) -----------------------------------


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
        f"select {_TOTP_COLUMNS} from mfa_totp where user_id = %s and confirmed_at is not null for update", (user_id,)
    ).fetchone()
    if row is None:
        return False
    try:
        _check_totp(conn, row, tenant_id=tenant_id, user_id=user_id, code=code)
    except _Rejected:
        return False
    return True


# --- fixtures -------------------------------------------------------------------------------------


def seed_confirmed_totp(conn: Conn, *, tenant_id: str, user_id: str, secret: str | None = None,
                        realm: Realm = USERS) -> str:
    """Give a user (or, with `realm=OPERATORS` and the platform chain as tenant, an operator)
    an active TOTP directly, in the caller's transaction; returns the secret.

    For tests and fixtures only (nothing is audited): real users enrol and confirm.
    """
    secret = secret or new_totp_secret()
    sealed = seal_secret(secret, tenant_id=tenant_id, user_id=user_id, realm=realm)
    cols, marks, owner = _owner_insert(realm, tenant_id, user_id)
    conn.execute(
        f"""insert into {realm.totp} ({cols}, secret_ciphertext, secret_nonce, key_id, confirmed_at)
            values ({marks}, %s, %s, %s, now())""",
        (*owner, sealed.ciphertext, sealed.nonce, sealed.key_id),
    )
    return secret
