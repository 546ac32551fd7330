"""Sign-in: login, invitations, password reset and change, logout.

Unknown tenant, unknown user, deactivated user and wrong password all get the same answer
after the same Argon2 work (a dummy verify stands in when there is no hash to check).
Throttling runs first: every attempt is reserved (counted as a failure) before any secret is
checked, and a throttled request does no Argon2 work at all.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any, NoReturn

from shared.audit import chain as audit
from shared.core import db, mail
from shared.core.db import Conn
from shared.core.errors import Conflict, Forbidden, NotFound, ValidationFailed
from shared.core.settings import get_settings
from shared.identity import mfa, passwords, ratelimit
from shared.identity.errors import InvalidCredentials, InvalidToken, SsoRequired
from shared.identity.guards import Principal
from shared.identity.opaque import ParsedToken, new_token, parse_token
from shared.identity.sessions import create_session, revoke_all
from shared.identity.sso import providers as sso_providers
from shared.tenancy import support
from shared.tenancy.users import normalize_email

RESET_TTL = timedelta(minutes=30)
log = logging.getLogger("custos.auth")


def take_one_time_token(token: str, *, kind: str, family: ratelimit.Family, password: str, field: str,
                        meta: audit.RequestMeta) -> tuple[ParsedToken, ratelimit.Attempt]:
    """The shared intake of invitation, reset and operator-setup tokens: reserve an attempt per
    IP (before any work), parse, and check the new password's policy. Returns the token and the
    reserved attempt: the caller calls `succeeded()` on it once the token is used, or
    `refuse_token(attempt)` to refuse it (the reservation then stays counted).

    Raises:
        TooManyRequests, InvalidToken (not a token of `kind`; counted), ValidationFailed.
    """
    attempt = ratelimit.throttle().attempt(family, [ratelimit.Key("ip", meta.ip or "unknown")])
    parsed = parse_token(token, kind)
    if parsed is None:
        refuse_token(attempt)
    try:
        passwords.check_policy(password, field=field)
    except ValidationFailed:
        attempt.succeeded()  # the token was never tried: a weak password is not a guess
        raise
    assert parsed is not None
    return parsed, attempt


def refuse_token(attempt: ratelimit.Attempt) -> NoReturn:
    """Refuse a bad one-time token; its reserved attempt stays counted against the caller's IP."""
    del attempt  # kept in the signature so a refusal cannot be written without a reservation
    raise InvalidToken()



def _actor(user: dict[str, Any] | None, email: str) -> audit.Actor:
    if user is None:
        return audit.Actor(id=None, name=email, type="user")
    return audit.Actor(id=str(user["id"]), name=user["display_name"] or user["email"], type="user")


def _record_crossings(crossings: list[Any], tenant_id: str | None, family: str, email: str, meta: audit.RequestMeta) -> None:
    if not crossings:
        return
    chain = tenant_id or audit.PLATFORM_CHAIN
    with db.tenant_tx(chain) as conn:
        for c in crossings:
            audit.append(conn, tenant_id=chain, actor=audit.Actor(id=None, name="throttle", type="system"),
                         action="security.throttled", target_type="login", target_id=email,
                         after={"family": family, "key": c.kind, "failures": c.failures, "delay_s": c.delay_s},
                         meta=meta)


def _find_user(tenant_slug: str, email: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    with db.platform_tx() as conn:
        tenant = conn.execute("select id::text as id, status from tenants where slug = %s", (tenant_slug,)).fetchone()
    if tenant is None or tenant["status"] in ("PURGING", "PURGED"):
        return None, None
    with db.tenant_tx(tenant["id"]) as conn:
        user = conn.execute(
            "select id::text as id, email, display_name, role, status, password_hash from users where email = %s",
            (email,),
        ).fetchone()
    return tenant, user


def login(
    *, tenant_slug: str, email: str, password: str, remember_me: bool, meta: audit.RequestMeta
) -> mfa.SignedIn | mfa.SecondFactorRequired:
    """Check a password and open a session, or, for a user with a second factor, hand out a
    sign-in ticket for `mfa.verify_second_factor` instead of tokens. A user who must have a
    factor and has none gets a session that may only enrol one (`mfa_enrolment_required`).

    Raises:
        TooManyRequests: throttled (before any hashing).
        InvalidCredentials: anything else that is not a success, always alike.
    """
    try:
        email = normalize_email(email)
    except ValidationFailed:
        email = email.strip().lower()[:254]
    slug = tenant_slug.strip().lower()[:63]
    keys = ratelimit.login_keys(email=email, ip=meta.ip or "unknown", tenant=slug)
    attempt = ratelimit.throttle().attempt("login", keys)
    tenant, user = _find_user(slug, email)
    if user is None or user["password_hash"] is None:
        passwords.dummy_verify(password)
        check = passwords.PasswordCheck(ok=False, needs_rehash=False)
        reason = "unknown_tenant" if tenant is None else "unknown_user"
    else:
        check = passwords.verify_password(user["password_hash"], password)
        reason = "bad_password" if not check.ok else ("inactive_user" if user["status"] != "active" else "")
    if reason:
        crossings = attempt.crossings
        chain = tenant["id"] if tenant else audit.PLATFORM_CHAIN
        with db.tenant_tx(chain) as conn:
            audit.append(conn, tenant_id=chain, actor=_actor(user, email), action="auth.login_failed",
                         target_type="user", target_id=user["id"] if user else None,
                         after={"reason": reason, "email": email, "tenant": slug}, meta=meta)
        _record_crossings(crossings, tenant["id"] if tenant else None, "login", email, meta)
        raise InvalidCredentials("the tenant, email or password is wrong")
    assert tenant is not None and user is not None
    attempt.succeeded()
    _refuse_if_sso_required(tenant["id"], user, email, meta)
    with db.tenant_tx(tenant["id"]) as conn:
        if check.needs_rehash:
            conn.execute("update users set password_hash = %s where id = %s",
                         (passwords.hash_password(password), user["id"]))
        factors = mfa.factor_state(conn, user_id=user["id"], role=user["role"])
        if factors.enrolled:
            challenge = mfa.open_ticket(conn, tenant_id=tenant["id"], user_id=user["id"], state=factors,
                                        remember_me=remember_me, meta=meta)
            audit.append(conn, tenant_id=tenant["id"], actor=_actor(user, email), action="auth.mfa_challenged",
                         target_type="user", target_id=user["id"],
                         after={"methods": challenge.methods, "rehashed": check.needs_rehash}, meta=meta)
            return challenge
        tokens = create_session(conn, tenant_id=tenant["id"], user=user, remember_me=remember_me,
                                ip=meta.ip, user_agent=meta.user_agent)
        audit.append(conn, tenant_id=tenant["id"], actor=_actor(user, email), action="auth.login_succeeded",
                     target_type="session", target_id=tokens.session_id,
                     after={"remember_me": remember_me, "rehashed": check.needs_rehash,
                            "mfa_enrolment_required": factors.required},
                     meta=audit.RequestMeta(meta.ip, meta.user_agent, tokens.session_id, meta.request_id))
    return mfa.SignedIn(tokens, {"mfa_enrolment_required": True} if factors.required else {})


def _refuse_if_sso_required(tenant_id: str, user: dict[str, Any], email: str, meta: audit.RequestMeta) -> None:
    """When the tenant requires single sign-on, only its break-glass ADMINs who have a second
    factor may sign in with a password. Checked after the password, so the answer tells nobody
    without the password who is on the break-glass list.

    Raises:
        SsoRequired (audited as `auth.login_refused`).
    """
    with db.tenant_tx(tenant_id) as conn:
        if not sso_providers.sso_required(conn):
            return
        if user["role"] == "ADMIN" and sso_providers.is_break_glass(conn, user["id"]):
            if mfa.factor_state(conn, user_id=user["id"], role=user["role"]).enrolled:
                return
            reason = "break_glass_without_second_factor"
        else:
            reason = "sso_required"
    with db.tenant_tx(tenant_id) as conn:
        audit.append(conn, tenant_id=tenant_id, actor=_actor(user, email), action="auth.login_refused",
                     target_type="user", target_id=user["id"], after={"reason": reason}, meta=meta)
    raise SsoRequired("this tenant signs in through its identity provider (GET /api/sso/tenants/{tenant}/providers)")


def _refuse_invitation_if_sso_required(tenant_id: str, token_hash: str, meta: audit.RequestMeta) -> None:
    """An invitation of a tenant that requires single sign-on sets no password and opens no
    session: the invited user signs in through the provider (which links them by their verified
    e-mail where the provider allows it). The invitation stays unused.

    Raises:
        SsoRequired (audited as `auth.login_refused`).
    """
    with db.tenant_tx(tenant_id) as conn:
        if not sso_providers.sso_required(conn):
            return
        row = conn.execute("select user_id::text as user_id from invitations where token_hash = %s and used_at is null"
                           " and revoked_at is null and expires_at > now()", (token_hash,)).fetchone()
        if row is None:
            return  # an unknown or spent token is refused as such by the caller
        audit.append(conn, tenant_id=tenant_id, actor=audit.Actor(id=row["user_id"], name="invited user", type="user"),
                     action="auth.login_refused", target_type="user", target_id=row["user_id"],
                     after={"reason": "sso_required", "via": "invitation"}, meta=meta)
    raise SsoRequired("this tenant signs in through its identity provider: use it instead of the invitation")


def _set_password(conn: Conn, user_id: str, password: str) -> None:
    conn.execute("update users set password_hash = %s, password_changed_at = now(), updated_at = now() where id = %s",
                 (passwords.hash_password(password), user_id))


def accept_invitation(*, token: str, display_name: str, password: str, meta: audit.RequestMeta) -> mfa.SignedIn:
    """Activate an invited user with their password and open their first session.

    Raises:
        TooManyRequests, InvalidToken (unknown, used, revoked or expired), ValidationFailed (password policy).
    """
    parsed, attempt = take_one_time_token(token, kind="inv", family="invitation", password=password, field="password",
                                          meta=meta)
    _refuse_invitation_if_sso_required(parsed.tenant_id, parsed.hash, meta)
    with db.tenant_tx(parsed.tenant_id) as conn:
        row = conn.execute(
            """select i.id, i.user_id::text as user_id, u.email, u.role, u.status
                 from invitations i join users u on u.tenant_id = i.tenant_id and u.id = i.user_id
                where i.token_hash = %s and i.used_at is null and i.revoked_at is null and i.expires_at > now()
                for update of i""",
            (parsed.hash,),
        ).fetchone()
        if row is None or row["status"] != "invited":
            refuse_token(attempt)
        conn.execute("update invitations set used_at = now() where id = %s", (row["id"],))
        _set_password(conn, row["user_id"], password)
        conn.execute("update users set status = 'active', display_name = %s where id = %s",
                     (display_name.strip(), row["user_id"]))
        user = {"id": row["user_id"], "email": row["email"], "role": row["role"], "display_name": display_name.strip()}
        tokens = create_session(conn, tenant_id=parsed.tenant_id, user=user, remember_me=False,
                                ip=meta.ip, user_agent=meta.user_agent)
        audit.append(conn, tenant_id=parsed.tenant_id, actor=_actor(user, row["email"]),
                     action="auth.invitation_accepted", target_type="user", target_id=row["user_id"],
                     before={"status": "invited"}, after={"status": "active", "display_name": user["display_name"]},
                     meta=meta)
        factors = mfa.factor_state(conn, user_id=row["user_id"], role=row["role"])
    attempt.succeeded()
    return mfa.SignedIn(tokens, {"mfa_enrolment_required": True} if factors.required and not factors.enrolled else {})


def request_reset(*, tenant_slug: str, email: str, meta: audit.RequestMeta) -> None:
    """Queue a reset request; `process_reset_requests` later mails a code if the account exists.

    The request path never looks the account up: it does the same steps (one throttle
    reservation, one insert) for every address, so neither its answer nor its timing says
    whether the account exists.

    Raises:
        TooManyRequests: throttled.
    """
    email = email.strip().lower()[:254]
    slug = tenant_slug.strip().lower()[:63]
    keys = ratelimit.login_keys(email=email, ip=meta.ip or "unknown", tenant=slug)
    ratelimit.throttle().attempt("reset", keys)  # never given back: resets are rare for real users
    with db.platform_tx() as conn:
        conn.execute(
            "insert into reset_requests (tenant_slug, email, ip, user_agent, request_id) values (%s, %s, %s, %s, %s)",
            (slug, email, (meta.ip or "")[:64] or None, (meta.user_agent or "")[:512] or None,
             (meta.request_id or "")[:128] or None),
        )


def process_reset_requests(*, limit: int = 500) -> int:
    """Handle queued reset requests (the `deliver_mail` timer runs this before delivering):
    a reset code for each that names an active account, nothing for the rest. Returns how
    many were handled.

    Each batch is claimed by deleting it (a row two workers both pick is returned by one
    delete only), so two workers never handle one request twice; a
    request whose handling then fails is logged and dropped (the user asks again), which is
    the right way round for a mail that grants access.
    """
    with db.platform_tx() as conn:
        claimed = conn.execute(
            """delete from reset_requests where id in (select id from reset_requests order by created_at limit %s)
               returning tenant_slug, email, ip, user_agent, request_id""",
            (limit,),
        ).fetchall()
    for row in claimed:
        meta = audit.RequestMeta(ip=row["ip"], user_agent=row["user_agent"], request_id=row["request_id"])
        try:
            tenant, user = _find_user(row["tenant_slug"], row["email"])
            if tenant is None or user is None or user["status"] != "active":
                continue
            with db.tenant_tx(tenant["id"]) as tx:
                _send_reset(tx, tenant_id=tenant["id"], user=user, actor=_actor(user, row["email"]), meta=meta,
                            reason=None)
        except Exception:  # one bad request must not stop the others; the logs say which
            log.exception("reset request not handled (request_id=%s)", row["request_id"])
    return len(claimed)


def _send_reset(conn: Conn, *, tenant_id: str, user: dict[str, Any], actor: audit.Actor, meta: audit.RequestMeta,
                reason: str | None) -> None:
    token, hashed = new_token("pwr", tenant_id)
    row = conn.execute(
        "insert into password_resets (tenant_id, user_id, token_hash, expires_at) values (%s, %s, %s, now() + %s) returning expires_at",
        (tenant_id, user["id"], hashed, RESET_TTL),
    ).fetchone()
    assert row is not None
    mail.enqueue(conn, tenant_id=tenant_id, to=user["email"], subject="Reset your Custos password", kind="password_reset",
                 body=(f"A reset of your Custos password was requested{' by an administrator' if reason else ''}.\n\n"
                       f"Reset code: {token}\n"
                       f"Open {get_settings().public_app_url}/reset and enter it before {row['expires_at'].isoformat()}.\n"
                       "If you did not expect this, tell your administrator: your password is unchanged until you use the code.\n"))
    audit.append(conn, tenant_id=tenant_id, actor=actor, action="auth.password_reset_requested",
                 target_type="user", target_id=str(user["id"]), reason=reason, meta=meta)


def admin_reset(conn: Conn, *, actor: Principal, user_id: str, reason: str, audit_actor: audit.Actor,
                meta: audit.RequestMeta) -> None:
    """An admin sends a user a reset code (admins never see or set passwords).

    Raises:
        NotFound: no such user. Conflict: the user is not active. Forbidden: an ADMIN by a non-ADMIN.
    """
    user = conn.execute("select id::text as id, email, role, status from users where id = %s", (user_id,)).fetchone()
    if user is None:
        raise NotFound("no such user")
    if user["status"] != "active":
        raise Conflict("only an active user can reset a password")
    if user["role"] == "ADMIN" and actor.role != "ADMIN":
        raise Forbidden("only an ADMIN can reset an ADMIN's password")
    _send_reset(conn, tenant_id=str(actor.tenant_id), user=user, actor=audit_actor, meta=meta, reason=reason)


def confirm_reset(*, token: str, new_password: str, meta: audit.RequestMeta) -> None:
    """Set a new password with a reset token; every session of the user ends.

    Raises:
        TooManyRequests, InvalidToken, ValidationFailed (password policy).
    """
    parsed, attempt = take_one_time_token(token, kind="pwr", family="reset", password=new_password,
                                          field="new_password", meta=meta)
    with db.tenant_tx(parsed.tenant_id) as conn:
        row = conn.execute(
            """select r.id, r.user_id::text as user_id, u.email, u.display_name from password_resets r
                 join users u on u.tenant_id = r.tenant_id and u.id = r.user_id
                where r.token_hash = %s and r.used_at is null and r.expires_at > now() and u.status = 'active'
                for update of r""",
            (parsed.hash,),
        ).fetchone()
        if row is None:
            refuse_token(attempt)
        conn.execute("update password_resets set used_at = now() where user_id = %s and used_at is null", (row["user_id"],))
        _set_password(conn, row["user_id"], new_password)
        ended = revoke_all(conn, user_id=row["user_id"], reason="password reset")
        audit.append(conn, tenant_id=parsed.tenant_id, actor=_actor({"id": row["user_id"], **row}, row["email"]),
                     action="auth.password_reset", target_type="user", target_id=row["user_id"],
                     after={"sessions_ended": ended}, meta=meta)
    attempt.succeeded()


def change_password(*, principal: Principal, current: str, new: str, meta: audit.RequestMeta) -> int:
    """Change one's own password; other sessions end. Returns how many ended.

    Raises:
        TooManyRequests, InvalidCredentials (wrong current password), ValidationFailed.
    """
    tenant_id = principal.tenant_id
    assert tenant_id is not None
    with db.tenant_tx(tenant_id) as conn:
        user = conn.execute("select email, password_hash from users where id = %s", (principal.user_id,)).fetchone()
    assert user is not None
    keys = ratelimit.login_keys(email=user["email"], ip=meta.ip or "unknown", tenant=tenant_id)
    attempt = ratelimit.throttle().attempt("login", keys)
    if not passwords.verify_password(user["password_hash"], current).ok:
        with db.tenant_tx(tenant_id) as conn:
            audit.append(conn, tenant_id=tenant_id, actor=audit.Actor(principal.user_id, principal.name or "", "user"),
                         action="auth.password_change_failed", target_type="user", target_id=principal.user_id,
                         after={"reason": "bad_password"}, meta=meta)
        raise InvalidCredentials("the current password is wrong")
    attempt.succeeded()
    passwords.check_policy(new, field="new_password")
    with db.tenant_tx(tenant_id) as conn:
        _set_password(conn, principal.user_id, new)
        ended = revoke_all(conn, user_id=principal.user_id, reason="password changed", except_session=principal.session_id)
        audit.append(conn, tenant_id=tenant_id, actor=audit.Actor(principal.user_id, principal.name or "", "user"),
                     action="auth.password_changed", target_type="user", target_id=principal.user_id,
                     after={"other_sessions_ended": ended}, meta=meta)
    return ended


def logout(*, principal: Principal, meta: audit.RequestMeta) -> None:
    """End the caller's own session; for a support token, the support access it stands for."""
    tenant_id = principal.tenant_id
    assert tenant_id is not None
    if principal.is_support:
        support.end(principal=principal, meta=meta)
        return
    with db.tenant_tx(tenant_id) as conn:
        conn.execute("update sessions set revoked_at = now(), revoked_reason = 'logout' where id = %s and revoked_at is null",
                     (principal.session_id,))
        audit.append(conn, tenant_id=tenant_id, actor=audit.Actor(principal.user_id, principal.name or "", "user"),
                     action="auth.logout", target_type="session", target_id=principal.session_id, meta=meta)
