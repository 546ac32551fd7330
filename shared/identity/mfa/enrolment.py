"""Self-service factor management: the caller's factor state, TOTP enrolment and removal,
recovery code regeneration, and their passkeys.

Changing the factors of an account that has one needs a session that proved one lately. The
first factor a user enrols comes with a set of recovery codes. Roles in
`guards.MFA_REQUIRED_ROLES` (or every role, by tenant setting) must keep a factor; until they
enrol, the endpoint wrapper admits them only to enrolment endpoints.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.audit import chain as audit
from shared.core import db
from shared.core.db import Conn
from shared.core.errors import Conflict, NotFound
from shared.identity import ratelimit
from shared.identity.guards import MFA_ALL_ROLES_SETTING, MFA_REQUIRED_ROLES
from shared.identity.mfa import passkeys
from shared.identity.mfa._common import (
    Rejected,
    actor_of,
    lock_user,
    mark_session,
    realm_of,
    recent_proof,
    record_failure,
    require_recent_proof,
    subject_keys,
    tenant_of,
)
from shared.identity.mfa.errors import (
    InvalidCode,
    LastFactor,
    NoPendingEnrolment,
    NotEnrolled,
    PasskeyNotAccepted,
    StepUpRequired,
)
from shared.identity.mfa.realms import USERS, Method, Realm, owner_insert
from shared.identity.mfa.recovery import RECOVERY_CODE_COUNT, issue_recovery_codes
from shared.identity.mfa.secretbox import seal_secret
from shared.identity.mfa.totp import (
    TOTP_COLUMNS,
    TOTP_PENDING_TTL,
    check_stored_totp,
    new_totp_secret,
    otpauth_uri,
    prove_totp,
    qr_svg,
)
from shared.identity.sessions import device_label

if TYPE_CHECKING:
    from shared.identity.guards import Principal


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
                   {all_roles} as all_roles""",  # noqa: S608  # nosec B608  # names come from the fixed MFA realm tables in code; values are bound
        {"u": user_id, "k": MFA_ALL_ROLES_SETTING},
    ).fetchone()
    assert row is not None
    return FactorState(totp=bool(row["totp"]), passkeys=int(row["passkeys"]),
                       recovery_codes_remaining=int(row["recovery"]),
                       required=role in MFA_REQUIRED_ROLES or bool(row["all_roles"]))


def status(principal: Principal) -> dict[str, Any]:
    """The caller's second factors, as `GET /api/mfa` (operators: `GET /api/platform/mfa`) shows them."""
    realm, chain = realm_of(principal)
    with db.tenant_tx(chain) as conn:
        state = factor_state(conn, user_id=principal.user_id, role=principal.role, realm=realm)
        totp = conn.execute(
            f"select confirmed_at, last_used_at from {realm.totp} where {realm.owner} = %s and confirmed_at is not null",  # noqa: S608  # nosec B608  # names come from the fixed MFA realm tables in code; values are bound
            (principal.user_id,),
        ).fetchone()
        keys = passkeys.list_credentials(conn, principal.user_id, realm.credentials)
    return {"required": state.required, "enrolled": state.enrolled, "enrolment_required": state.required and not state.enrolled,
            "totp": totp, "passkeys": keys, "recovery_codes_remaining": state.recovery_codes_remaining,
            "methods": state.methods}


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
    (realm, tenant_id), secret = realm_of(principal), new_totp_secret()
    sealed = seal_secret(secret, tenant_id=tenant_id, user_id=principal.user_id, realm=realm)
    cols, marks, owner = owner_insert(realm, tenant_id, principal.user_id)
    with db.tenant_tx(tenant_id) as conn:
        user = lock_user(conn, principal.user_id, realm=realm)
        if factor_state(conn, user_id=principal.user_id, role=principal.role, realm=realm).enrolled:
            require_recent_proof(conn, principal, realm)
        slug = (conn.execute("select slug from tenants where id = %s", (tenant_id,)).fetchone() if realm.tenant_scoped
                else {"slug": "platform operator"})
        conn.execute(f"delete from {realm.totp} where {realm.owner} = %s and confirmed_at is null", (principal.user_id,))  # noqa: S608  # nosec B608  # names come from the fixed MFA realm tables in code; values are bound
        conn.execute(
            f"""insert into {realm.totp} ({cols}, secret_ciphertext, secret_nonce, key_id)
                values ({marks}, %s, %s, %s)""",  # noqa: S608  # nosec B608  # names come from the fixed MFA realm tables in code; values are bound
            (*owner, sealed.ciphertext, sealed.nonce, sealed.key_id),
        )
        audit.append(conn, tenant_id=tenant_id, actor=actor_of(principal.user_id, principal.name, realm),
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
    (realm, tenant_id), user_id = realm_of(principal), principal.user_id
    attempt = ratelimit.throttle().attempt("mfa", subject_keys(tenant_id, user_id, meta.ip))
    actor = actor_of(user_id, principal.name, realm)
    try:
        with db.tenant_tx(tenant_id) as conn:
            lock_user(conn, user_id, realm=realm)
            pending = conn.execute(
                f"select {TOTP_COLUMNS}, created_at > now() - %s as fresh from {realm.totp}"  # noqa: S608  # nosec B608  # names come from the fixed MFA realm tables in code; values are bound
                f" where {realm.owner} = %s and confirmed_at is null",
                (TOTP_PENDING_TTL, user_id),
            ).fetchone()
            if pending is None or not pending["fresh"]:
                raise NoPendingEnrolment("start a TOTP enrolment first" if pending is None
                                         else "the enrolment expired: start it again")
            before = factor_state(conn, user_id=user_id, role=principal.role, realm=realm)
            if before.enrolled:
                require_recent_proof(conn, principal, realm)
            match = check_stored_totp(conn, pending, tenant_id=tenant_id, user_id=user_id, code=code, realm=realm)
            conn.execute(f"delete from {realm.totp} where {realm.owner} = %s and confirmed_at is not null", (user_id,))  # noqa: S608  # nosec B608  # names come from the fixed MFA realm tables in code; values are bound
            row = conn.execute(f"update {realm.totp} set confirmed_at = now() where id = %s returning confirmed_at",  # noqa: S608  # nosec B608  # names come from the fixed MFA realm tables in code; values are bound
                               (pending["id"],)).fetchone()
            assert row is not None
            mark_session(conn, principal.session_id, "totp", realm)
            audit.append(conn, tenant_id=tenant_id, actor=actor, action="mfa.totp_enrolled", target_type=realm.kind,
                         target_id=user_id, after={"replaced": before.totp, "drift": match.drift}, meta=meta)
            codes = None
            if before.recovery_codes_remaining == 0:
                codes, _ = issue_recovery_codes(conn, tenant_id=tenant_id, user_id=user_id, realm=realm)
                audit.append(conn, tenant_id=tenant_id, actor=actor, action="mfa.recovery_codes_issued",
                             target_type=realm.kind, target_id=user_id,
                             after={"count": len(codes), "occasion": "enrolment"}, meta=meta)
    except Rejected as exc:
        record_failure(tenant_id=tenant_id, user_id=user_id, actor=actor, action="mfa.totp_confirm_failed",
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
                   or exists(select 1 from {realm.credentials.table} where {o} = %(u)s) as any""",  # noqa: S608  # nosec B608  # names come from the fixed MFA realm tables in code; values are bound
        {"u": user_id},
    ).fetchone()
    if left and left["any"]:
        return 0
    return len(conn.execute(f"delete from {realm.recovery} where {o} = %s returning id", (user_id,)).fetchall())  # noqa: S608  # nosec B608  # names come from the fixed MFA realm tables in code; values are bound


def remove_totp(principal: Principal, *, meta: audit.RequestMeta) -> None:
    """Remove one's TOTP (and a pending enrolment).

    Raises:
        NotFound: no active TOTP. LastFactor: it is the last factor of a user who must have one.
        StepUpRequired: this session did not prove a factor lately.
    """
    realm, tenant_id = realm_of(principal)
    with db.tenant_tx(tenant_id) as conn:
        lock_user(conn, principal.user_id, realm=realm)
        if not factor_state(conn, user_id=principal.user_id, role=principal.role, realm=realm).totp:
            raise NotFound("no TOTP is enrolled")
        require_recent_proof(conn, principal, realm)
        _removal_allowed(conn, principal, losing="totp", realm=realm)
        conn.execute(f"delete from {realm.totp} where {realm.owner} = %s", (principal.user_id,))  # noqa: S608  # nosec B608  # names come from the fixed MFA realm tables in code; values are bound
        dropped = _drop_orphan_codes(conn, principal.user_id, realm)
        audit.append(conn, tenant_id=tenant_id, actor=actor_of(principal.user_id, principal.name, realm),
                     action="mfa.totp_removed", target_type=realm.kind, target_id=principal.user_id,
                     after={"recovery_codes_voided": dropped}, meta=meta)


def regenerate_recovery_codes(principal: Principal, *, code: str | None, meta: audit.RequestMeta) -> dict[str, Any]:
    """A new set of recovery codes; the old set stops working.

    Needs a current TOTP `code`, or a session that proved a second factor within
    `MFA_RECENT_AUTH_S` (signed in with one, or enrolled one).

    Raises:
        TooManyRequests, NotEnrolled, StepUpRequired, InvalidCode.
    """
    (realm, tenant_id), user_id = realm_of(principal), principal.user_id
    attempt = ratelimit.throttle().attempt("mfa", subject_keys(tenant_id, user_id, meta.ip)) if code is not None else None
    actor = actor_of(user_id, principal.name, realm)
    try:
        with db.tenant_tx(tenant_id) as conn:
            lock_user(conn, user_id, realm=realm)
            state = factor_state(conn, user_id=user_id, role=principal.role, realm=realm)
            if not state.enrolled:
                raise NotEnrolled("enrol a second factor first: its confirmation gives you recovery codes")
            if code is None:
                if not recent_proof(conn, principal.session_id, realm):
                    raise StepUpRequired("send a current TOTP `code`, or sign in again with your second factor")
                proof = "recent_sign_in"
            else:
                prove_totp(conn, principal, realm=realm, tenant_id=tenant_id, code=code)
                proof = "totp"
            codes, voided = issue_recovery_codes(conn, tenant_id=tenant_id, user_id=user_id, realm=realm)
            audit.append(conn, tenant_id=tenant_id, actor=actor, action="mfa.recovery_codes_issued",
                         target_type=realm.kind,
                         target_id=user_id, after={"count": len(codes), "occasion": "regenerated", "voided": voided,
                                                   "proof": proof}, meta=meta)
    except Rejected as exc:
        assert attempt is not None  # only a code is rejected
        record_failure(tenant_id=tenant_id, user_id=user_id, actor=actor, action="mfa.step_up_failed",
                       after={"method": exc.method, "reason": exc.reason}, attempt=attempt, meta=meta)
        raise InvalidCode("the code was not accepted") from None
    if attempt is not None:
        attempt.succeeded()
    return {"recovery_codes": codes, "recovery_codes_remaining": len(codes)}


def passkey_registration_options(principal: Principal) -> dict[str, Any]:
    """Options for a new passkey of the caller (their existing ones excluded).

    Raises:
        StepUpRequired: the user has a factor and this session did not prove one lately.
    """
    realm, tenant_id = realm_of(principal)
    with db.tenant_tx(tenant_id) as conn:
        user = lock_user(conn, principal.user_id, lock=False, realm=realm)
        if factor_state(conn, user_id=principal.user_id, role=principal.role, realm=realm).enrolled:
            require_recent_proof(conn, principal, realm)
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
    (realm, tenant_id), user_id = realm_of(principal), principal.user_id
    actor = actor_of(user_id, principal.name, realm)
    from psycopg.errors import UniqueViolation  # with the first enrolment, not at import

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
            lock_user(conn, user_id, realm=realm)
            before = factor_state(conn, user_id=user_id, role=principal.role, realm=realm)
            if before.enrolled:
                require_recent_proof(conn, principal, realm)
            key = passkeys.insert_credential(conn, tenant_id=tenant_id, user_id=user_id, new=new, name=label,
                                             store=realm.credentials)
            mark_session(conn, principal.session_id, "passkey", realm)
            audit.append(conn, tenant_id=tenant_id, actor=actor, action="mfa.passkey_registered", target_type="passkey",
                         target_id=key["id"], after={"name": label, "aaguid": new.aaguid,
                                                     "discoverable": new.discoverable, "user_verified": new.user_verified},
                         meta=meta)
            codes = None
            if before.recovery_codes_remaining == 0:
                codes, _ = issue_recovery_codes(conn, tenant_id=tenant_id, user_id=user_id, realm=realm)
                audit.append(conn, tenant_id=tenant_id, actor=actor, action="mfa.recovery_codes_issued",
                             target_type=realm.kind, target_id=user_id,
                             after={"count": len(codes), "occasion": "enrolment"}, meta=meta)
    except UniqueViolation:
        raise Conflict("this passkey is already registered") from None
    return {"passkey": key, "recovery_codes": codes,
            "recovery_codes_remaining": RECOVERY_CODE_COUNT if codes else before.recovery_codes_remaining}


def list_passkeys(principal: Principal) -> list[dict[str, Any]]:
    realm, tenant_id = realm_of(principal)
    with db.tenant_tx(tenant_id) as conn:
        return passkeys.list_credentials(conn, principal.user_id, realm.credentials)


def rename_passkey(principal: Principal, passkey_id: uuid.UUID, *, name: str, meta: audit.RequestMeta) -> dict[str, Any]:
    """Raises NotFound: not one of the caller's passkeys."""
    tenant_id = tenant_of(principal)
    with db.tenant_tx(tenant_id) as conn:
        old = conn.execute("select name from webauthn_credentials where id = %s and user_id = %s for update",
                           (str(passkey_id), principal.user_id)).fetchone()
        if old is None:
            raise NotFound("no such passkey")
        row = conn.execute(f"update webauthn_credentials set name = %s where id = %s returning {passkeys.PUBLIC_COLUMNS}",  # noqa: S608  # nosec B608  # only module constants are interpolated; values are bound
                           (name, str(passkey_id))).fetchone()
        assert row is not None
        audit.append(conn, tenant_id=tenant_id, actor=actor_of(principal.user_id, principal.name),
                     action="mfa.passkey_renamed", target_type="passkey", target_id=str(passkey_id),
                     before={"name": old["name"]}, after={"name": name}, meta=meta)
    return passkeys.public(row)


def remove_passkey(principal: Principal, passkey_id: uuid.UUID, *, meta: audit.RequestMeta) -> None:
    """Raises NotFound (not the caller's), StepUpRequired (no recent proof of a factor),
    LastFactor (last factor of a user who must have one)."""
    realm, tenant_id = realm_of(principal)
    table = realm.credentials.table
    with db.tenant_tx(tenant_id) as conn:
        lock_user(conn, principal.user_id, realm=realm)
        row = conn.execute(f"select name from {table} where id = %s and {realm.owner} = %s",  # noqa: S608  # nosec B608  # names come from the fixed MFA realm tables in code; values are bound
                           (str(passkey_id), principal.user_id)).fetchone()
        if row is None:
            raise NotFound("no such passkey")
        require_recent_proof(conn, principal, realm)
        _removal_allowed(conn, principal, losing="passkey", realm=realm)
        conn.execute(f"delete from {table} where id = %s", (str(passkey_id),))  # noqa: S608  # nosec B608  # names come from the fixed MFA realm tables in code; values are bound
        dropped = _drop_orphan_codes(conn, principal.user_id, realm)
        audit.append(conn, tenant_id=tenant_id, actor=actor_of(principal.user_id, principal.name, realm),
                     action="mfa.passkey_removed", target_type="passkey", target_id=str(passkey_id),
                     before={"name": row["name"]}, after={"recovery_codes_voided": dropped}, meta=meta)
