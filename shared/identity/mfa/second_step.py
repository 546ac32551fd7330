"""The sign-in second step, passwordless passkey sign-in, and step-up inside a session.

After a correct password, a user with a factor gets a ticket (`mfa.<tenant hex>.<256 random
bits>`, stored as SHA-256, 5 minutes, single use) instead of tokens, and trades it with a second
factor at `verify_second_factor`. Operators do the same in the OPERATORS realm and get a short
operator session with no refresh token.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shared.audit import chain as audit
from shared.core import db
from shared.core.db import Conn
from shared.core.settings import get_settings
from shared.identity import ratelimit
from shared.identity.mfa import passkeys
from shared.identity.mfa._common import (
    Rejected,
    actor_of,
    ip_keys,
    mark_session,
    realm_of,
    recent_proof,
    record_failure,
    subject_keys,
)
from shared.identity.mfa.enrolment import FactorState
from shared.identity.mfa.errors import InvalidCode, InvalidSecondFactor, InvalidTicket, NotEnrolled, StepUpRequired
from shared.identity.mfa.realms import USERS, Method, Realm, owner_insert
from shared.identity.mfa.recovery import use_recovery_code
from shared.identity.mfa.totp import TOTP_COLUMNS, check_stored_totp, prove_totp
from shared.identity.opaque import parse_token, same_hash, token_hash
from shared.identity.sessions import IssuedTokens, create_session
from shared.identity.tokens import issue_access_token
from shared.tenancy.rbac import PLATFORM_OPERATOR

if TYPE_CHECKING:
    from shared.identity.guards import Principal

OPERATOR_SESSION_HOURS = 8
"""Operator sessions are short and have no refresh token: sign in again."""


def require_recent_second_factor(principal: Principal) -> None:
    """For the most consequential actions (an operator cancelling a tenant or taking a
    support token): the caller's session must have proved a second factor within
    MFA_RECENT_AUTH_S (at sign-in, or by a step-up).

    Raises:
        StepUpRequired.
    """
    realm, chain = realm_of(principal)
    with db.tenant_tx(chain) as conn:
        if not recent_proof(conn, principal.session_id, realm):
            raise StepUpRequired("prove your second factor again (POST /api/platform/auth/step-up) and retry")


def step_up(principal: Principal, *, code: str, meta: audit.RequestMeta) -> dict[str, Any]:
    """Prove a current TOTP code inside a session, so actions that need a recent second
    factor (`require_recent_second_factor`) are allowed for MFA_RECENT_AUTH_S. The code is
    used up like any other (its step is stored).

    Raises:
        TooManyRequests, InvalidCode.
    """
    (realm, tenant_id), user_id = realm_of(principal), principal.user_id
    attempt = ratelimit.throttle().attempt("mfa", subject_keys(tenant_id, user_id, meta.ip))
    actor = actor_of(user_id, principal.name, realm)
    try:
        with db.tenant_tx(tenant_id) as conn:
            prove_totp(conn, principal, realm=realm, tenant_id=tenant_id, code=code)
            audit.append(conn, tenant_id=tenant_id, actor=actor, action="mfa.step_up", target_type="session",
                         target_id=principal.session_id, after={"method": "totp"}, meta=meta)
    except Rejected as exc:
        record_failure(tenant_id=tenant_id, user_id=user_id, actor=actor, action="mfa.step_up_failed",
                       after={"method": exc.method, "reason": exc.reason}, attempt=attempt, meta=meta)
        raise InvalidCode(_FAILURE_DETAIL.get(exc.reason, "the code was not accepted")) from None
    attempt.succeeded()
    return {"mfa_method": "totp", "valid_for_s": get_settings().mfa_recent_auth_s}


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
    conn.execute(f"delete from {realm.tickets} where {realm.owner} = %s and (used_at is not null or expires_at <= now())",  # noqa: S608  # nosec B608  # names come from the fixed MFA realm tables in code; values are bound
                 (user_id,))
    ticket, hashed = _new_ticket(tenant_id, realm)
    cols, marks, owner = owner_insert(realm, tenant_id, user_id)
    conn.execute(
        f"""insert into {realm.tickets} ({cols}, ticket_hash, expires_at, remember_me, ip, user_agent)
            values ({marks}, %s, now() + make_interval(secs => %s), %s, %s, %s)""",  # noqa: S608  # nosec B608  # names come from the fixed MFA realm tables in code; values are bound
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
     where k.ticket_hash = %s and k.used_at is null and k.expires_at > now() and o.status = 'active'"""  # noqa: S608  # nosec B608  # only module constants are interpolated; values are bound


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
        ratelimit.throttle().attempt("mfa", ip_keys(ip))
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
    attempt = ratelimit.throttle().attempt("mfa", subject_keys(tenant_id, user_id, meta.ip))
    actor = actor_of(user_id, ticket_row["display_name"] or ticket_row["email"], realm)
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
                    f"select {TOTP_COLUMNS} from {realm.totp} where {realm.owner} = %s and confirmed_at is not null"  # noqa: S608  # nosec B608  # names come from the fixed MFA realm tables in code; values are bound
                    " for update",
                    (user_id,),
                ).fetchone()
                if totp is None:
                    raise Rejected(method, "no_totp")
                check_stored_totp(conn, totp, tenant_id=tenant_id, user_id=user_id, code=code or "", realm=realm)
            elif method == "recovery_code":
                remaining = use_recovery_code(conn, user_id=user_id, code=recovery_code or "", realm=realm)
                extra["recovery_codes_remaining"] = remaining
                security = {"action": "security.recovery_code_used", "remaining": remaining}
            else:
                _use_passkey(conn, tenant_id=tenant_id, user_id=user_id, ticket_hash=ticket_row["ticket_hash"],
                             assertion=assertion, challenge_id=challenge_id, realm=realm)
            conn.execute(f"update {realm.tickets} set used_at = now() where id = %s", (locked["id"],))  # noqa: S608  # nosec B608  # names come from the fixed MFA realm tables in code; values are bound
            user = {"id": user_id, "role": locked["role"], "display_name": locked["display_name"]}
            if realm.tenant_scoped:
                tokens = create_session(conn, tenant_id=tenant_id, user=user, remember_me=locked["remember_me"],
                                        ip=meta.ip, user_agent=meta.user_agent)
                action, target_type = "auth.login_succeeded", "session"
            else:
                tokens = open_operator_session(conn, operator=user, meta=meta)
                action, target_type = "platform.operator_login_succeeded", "operator_session"
            mark_session(conn, tokens.session_id, method, realm)
            session_meta = audit.RequestMeta(meta.ip, meta.user_agent, tokens.session_id, meta.request_id)
            audit.append(conn, tenant_id=tenant_id, actor=actor, action=action, target_type=target_type,
                         target_id=tokens.session_id, after={"remember_me": locked["remember_me"], "mfa": method},
                         meta=session_meta)
            if security is not None:
                audit.append(conn, tenant_id=tenant_id, actor=actor, action=security.pop("action"),
                             target_type=realm.kind, target_id=user_id, after=security, meta=session_meta)
    except Rejected as exc:
        regression = exc.extra.get("security")
        record_failure(tenant_id=tenant_id, user_id=user_id, actor=actor, action="auth.mfa_failed",
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


def _use_passkey(conn: Conn, *, tenant_id: str, user_id: str, ticket_hash: str,
                 assertion: dict[str, Any] | None, challenge_id: str | None, realm: Realm = USERS) -> None:
    """Raises Rejected."""
    try:
        challenge = passkeys.take_challenge(challenge_id or "", purpose="second_factor", tenant_id=tenant_id,
                                            user_id=user_id, ticket_hash=ticket_hash)
    except passkeys.PasskeyRejected as exc:
        raise Rejected("passkey", exc.reason) from None
    _verify_passkey(conn, challenge=challenge, assertion=assertion or {}, user_id=user_id, user_verification=False,
                    realm=realm)


def _verify_passkey(conn: Conn, *, challenge: Any, assertion: dict[str, Any], user_id: str, user_verification: bool,
                    realm: Realm = USERS) -> None:
    """Verify an assertion; a sign-count regression is also a security event. Raises Rejected."""
    try:
        passkeys.verify_assertion(conn, challenge=challenge, assertion=assertion, expected_user_id=user_id,
                                  require_user_verification=user_verification, store=realm.credentials)
    except passkeys.SignCountRegression as exc:
        raise Rejected("passkey", exc.reason, {"security": {
            "action": "security.passkey_counter_regression", "stored": exc.stored, "presented": exc.presented,
        }}) from None
    except passkeys.PasskeyRejected as exc:
        raise Rejected("passkey", exc.reason) from None


def passkey_sign_in_options(*, tenant_slug: str) -> dict[str, Any]:
    """Options for a passwordless sign-in to the tenant named by its slug. An unknown tenant
    gets options too (they will never verify), so the answer tells nothing about tenants."""
    slug = tenant_slug.strip().lower()[:63]
    with db.platform_tx() as conn:
        tenant = conn.execute("select id::text as id, status from tenants where slug = %s", (slug,)).fetchone()
    tenant_id = tenant["id"] if tenant is not None and tenant["status"] not in ("PURGING", "PURGED") else ""
    return passkeys.authentication_options(purpose="passwordless", tenant_id=tenant_id).as_dict()


def passkey_sign_in(*, challenge_id: str, assertion: dict[str, Any], remember_me: bool,
                    meta: audit.RequestMeta) -> SignedIn:
    """Sign in with a discoverable passkey alone (user verification required).

    Raises:
        TooManyRequests, InvalidSecondFactor (anything that is not a success, alike).
    """
    ip_attempt = ratelimit.throttle().attempt("mfa", ip_keys(meta.ip))
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
    attempt = ratelimit.throttle().attempt("mfa", subject_keys(tenant_id, user_id, meta.ip))
    actor = actor_of(user_id, stored["display_name"] or stored["email"])
    try:
        with db.tenant_tx(tenant_id) as conn:
            if stored["status"] != "active":
                raise Rejected("passkey", "inactive_user")
            _verify_passkey(conn, challenge=challenge, assertion=assertion, user_id=user_id, user_verification=True)
            user = {"id": user_id, "role": stored["role"], "display_name": stored["display_name"]}
            tokens = create_session(conn, tenant_id=tenant_id, user=user, remember_me=remember_me, ip=meta.ip,
                                    user_agent=meta.user_agent)
            mark_session(conn, tokens.session_id, "passkey")
            audit.append(conn, tenant_id=tenant_id, actor=actor, action="auth.login_succeeded", target_type="session",
                         target_id=tokens.session_id, after={"remember_me": remember_me, "mfa": "passkey",
                                                             "passwordless": True},
                         meta=audit.RequestMeta(meta.ip, meta.user_agent, tokens.session_id, meta.request_id))
    except Rejected as exc:
        record_failure(tenant_id=tenant_id, user_id=user_id, actor=actor, action="auth.passkey_login_failed",
                       after={"reason": exc.reason}, attempt=attempt, meta=meta, security=exc.extra.get("security"))
        raise InvalidSecondFactor(_FAILURE_DETAIL.get(exc.reason)) from None
    attempt.succeeded()
    return SignedIn(tokens, {"mfa_method": "passkey"})
