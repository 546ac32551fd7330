"""Platform operators: accounts outside every tenant that create tenants and, when a tenant
grants it, give read-only support.

An operator is created by ops with the owner role (`shared.cli create-operator`), which
prints a one-time setup token (24 hours); with it the operator sets a password. Operator
sessions are short (OPERATOR_SESSION_HOURS, no refresh tokens: sign in again) and live in
their own table, out of every tenant's reach.

Every operator must have a second factor (TOTP with recovery codes, or a passkey: the
recipes of `shared.identity.mfa` over its OPERATORS realm). A correct password of an operator with a
factor gives an MFA ticket, traded at `/api/platform/auth/mfa/verify` for a session; one
without a factor gets a session that may only enrol one. Cancelling a tenant and taking a
support token need a second factor proved within MFA_RECENT_AUTH_S (docs/mfa.md).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from shared.audit import chain as audit
from shared.core import db
from shared.identity import mfa, passwords, ratelimit
from shared.identity.errors import InvalidCredentials
from shared.identity.opaque import same_hash
from shared.identity.signin import refuse_token, take_one_time_token

SETUP_TTL = timedelta(hours=24)
OPERATOR_SESSION_HOURS = mfa.OPERATOR_SESSION_HOURS
PLATFORM_SLUG = "platform"


def set_password(*, token: str, password: str, meta: audit.RequestMeta) -> None:
    """Set an operator's password with the setup token (single use).

    Raises:
        TooManyRequests, InvalidToken, ValidationFailed (password policy).
    """
    parsed, attempt = take_one_time_token(token, kind="ops", family="invitation", password=password, field="password",
                                          meta=meta)
    with db.platform_tx() as conn:
        row = conn.execute(
            """select id::text as id, display_name, setup_token_hash from platform_operators
                where setup_token_hash = %s and setup_expires_at > now() and status = 'active' for update""",
            (parsed.hash,),
        ).fetchone()
        if row is None or not same_hash(row["setup_token_hash"], parsed.hash):
            refuse_token(attempt)
        conn.execute(
            "update platform_operators set password_hash = %s, setup_token_hash = null, setup_expires_at = null where id = %s",
            (passwords.hash_password(password), row["id"]),
        )
        conn.execute("select set_config('app.tenant_id', %s, true)", (audit.PLATFORM_CHAIN,))
        audit.append(conn, tenant_id=audit.PLATFORM_CHAIN, actor=audit.Actor(row["id"], row["display_name"], "operator"),
                     action="platform.operator_password_set", target_type="operator", target_id=row["id"], meta=meta)
    attempt.succeeded()


def login(*, email: str, password: str, meta: audit.RequestMeta) -> dict[str, Any]:
    """After a correct password: an MFA ticket if the operator has a second factor, else a
    session that may only enrol one (`mfa_enrolment_required`). Every failure looks alike.

    Raises:
        TooManyRequests, InvalidCredentials.
    """
    email = email.strip().lower()[:254]
    keys = ratelimit.login_keys(email=email, ip=meta.ip or "unknown", tenant=PLATFORM_SLUG)
    attempt = ratelimit.throttle().attempt("login", keys)
    with db.platform_tx() as conn:
        op = conn.execute(
            "select id::text as id, display_name, status, password_hash from platform_operators where email = %s", (email,)
        ).fetchone()
    if op is None or op["password_hash"] is None:
        passwords.dummy_verify(password)
        ok = False
    else:
        ok = passwords.verify_password(op["password_hash"], password).ok and op["status"] == "active"
    result: dict[str, Any] = {}
    with db.tenant_tx(audit.PLATFORM_CHAIN) as conn:
        actor = audit.Actor(op["id"] if op else None, op["display_name"] if op else email, "operator")
        if not ok:
            audit.append(conn, tenant_id=audit.PLATFORM_CHAIN, actor=actor, action="platform.operator_login_failed",
                         target_type="operator", target_id=op["id"] if op else None, after={"email": email}, meta=meta)
        else:
            attempt.succeeded()
            assert op is not None
            factors = mfa.factor_state(conn, user_id=op["id"], role="PLATFORM_OPERATOR", realm=mfa.OPERATORS)
            if factors.enrolled:
                challenge = mfa.open_ticket(conn, tenant_id=audit.PLATFORM_CHAIN, user_id=op["id"], state=factors,
                                            remember_me=False, meta=meta, realm=mfa.OPERATORS)
                audit.append(conn, tenant_id=audit.PLATFORM_CHAIN, actor=actor, action="platform.operator_mfa_challenged",
                             target_type="operator", target_id=op["id"], after={"methods": challenge.methods}, meta=meta)
                result = challenge.as_dict()
            else:
                tokens = mfa.open_operator_session(conn, operator=op, meta=meta)
                audit.append(conn, tenant_id=audit.PLATFORM_CHAIN, actor=actor,
                             action="platform.operator_login_succeeded", target_type="operator_session",
                             target_id=tokens.session_id, after={"mfa_enrolment_required": True}, meta=meta)
                result = {**tokens.as_dict(), "mfa_enrolment_required": True}
    if not ok:
        raise InvalidCredentials("the email or password is wrong")
    return result


def logout(*, operator_id: str, session_id: str, name: str | None, meta: audit.RequestMeta) -> None:
    with db.tenant_tx(audit.PLATFORM_CHAIN) as conn:
        conn.execute("update operator_sessions set revoked_at = now() where id = %s and operator_id = %s and revoked_at is null",
                     (session_id, operator_id))
        audit.append(conn, tenant_id=audit.PLATFORM_CHAIN, actor=audit.Actor(operator_id, name or "", "operator"),
                     action="platform.operator_logout", target_type="operator_session", target_id=session_id, meta=meta)
