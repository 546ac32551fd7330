"""Platform operators: accounts outside every tenant that create tenants and, when a tenant
grants it, give read-only support.

An operator is created by ops with the owner role (`shared.cli create-operator`), which
prints a one-time setup token (24 hours); with it the operator sets a password. Operator
sessions are short (OPERATOR_SESSION_HOURS, no refresh tokens: sign in again) and live in
their own table, out of every tenant's reach.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from shared import audit, db, passwords, ratelimit
from shared.auth import InvalidCredentials, refuse_token, take_one_time_token
from shared.opaque import same_hash
from shared.tokens import issue_access_token

SETUP_TTL = timedelta(hours=24)
OPERATOR_SESSION_HOURS = 8
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
    """An operator session and its access token; every failure looks alike.

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
    session = None
    with db.tenant_tx(audit.PLATFORM_CHAIN) as conn:
        actor = audit.Actor(op["id"] if op else None, op["display_name"] if op else email, "operator")
        if not ok:
            audit.append(conn, tenant_id=audit.PLATFORM_CHAIN, actor=actor, action="platform.operator_login_failed",
                         target_type="operator", target_id=op["id"] if op else None, after={"email": email}, meta=meta)
        else:
            attempt.succeeded()
            assert op is not None
            session = conn.execute(
                """insert into operator_sessions (operator_id, expires_at, ip, user_agent)
                   values (%s, now() + make_interval(hours => %s), %s, %s) returning id::text as id, expires_at""",
                (op["id"], OPERATOR_SESSION_HOURS, meta.ip, (meta.user_agent or "")[:512] or None),
            ).fetchone()
            assert session is not None
            audit.append(conn, tenant_id=audit.PLATFORM_CHAIN, actor=actor, action="platform.operator_login_succeeded",
                         target_type="operator_session", target_id=session["id"], meta=meta)
    if not ok:
        raise InvalidCredentials("the email or password is wrong")
    assert op is not None and session is not None
    token = issue_access_token(subject=op["id"], tenant_id=None, session_id=session["id"], role="PLATFORM_OPERATOR",
                               name=op["display_name"])
    return {"access_token": token, "token_type": "Bearer", "expires_in": 900, "session_id": session["id"],
            "session_expires_at": session["expires_at"]}


def logout(*, operator_id: str, session_id: str, name: str | None, meta: audit.RequestMeta) -> None:
    with db.tenant_tx(audit.PLATFORM_CHAIN) as conn:
        conn.execute("update operator_sessions set revoked_at = now() where id = %s and operator_id = %s and revoked_at is null",
                     (session_id, operator_id))
        audit.append(conn, tenant_id=audit.PLATFORM_CHAIN, actor=audit.Actor(operator_id, name or "", "operator"),
                     action="platform.operator_logout", target_type="operator_session", target_id=session_id, meta=meta)
