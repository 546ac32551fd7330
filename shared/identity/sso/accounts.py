"""From a verified identity to a Custos sign-in: the one path SAML and OIDC both take.

After a protocol module has verified an assertion or ID token, it hands over a
`VerifiedIdentity` (the provider's stable subject, email, groups, whether the IdP proved a
second factor). `complete_sign_in` then finds the user by the link (provider, subject), never
by email alone once linked; on a first sign-in it links an existing account only when the
provider allows linking by a verified email, or creates the user when the provider allows
just-in-time provisioning, with a role from the provider's mapping (never ADMIN unless the
provider allows it); it refuses deactivated users; and it ends like a password sign-in: a
second-factor ticket when the user has a factor (unless the provider trusts the IdP's MFA and
the IdP proved one), else a session with its tokens, audited as `auth.sso_login`.

Browsers cannot be handed tokens in a URL, so the browser flows split this in two:
`begin_handoff` resolves the account and stores a one-time code bound to the browser's
cookie; `exchange` trades that code (once, within SSO_HANDOFF_TTL_S, from the same browser)
for what `complete_sign_in` returns. Every refusal appends a security audit event
(`auth.sso_login_failed`) that commits before the refusal is raised, up to a budget per
tenant and client address (`RefusalBudget`: anonymous junk must not grow the chain at will).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from shared.audit import chain as audit
from shared.core import db
from shared.core.db import Conn
from shared.core.errors import Conflict, ValidationFailed
from shared.core.settings import get_settings
from shared.identity import mfa
from shared.identity.opaque import new_token, parse_token, same_hash
from shared.identity.sessions import create_session
from shared.identity.sso.errors import AccountRefused, InvalidHandoff, ProviderUnavailable
from shared.identity.sso.providers import provider_row
from shared.tenancy.rbac import Role
from shared.tenancy.users import create_sso_user, normalize_email

log = logging.getLogger("custos.sso")

SSO_ACTOR_TYPE = "user"
BINDING_COOKIE = "custos_sso"
"""The cookie that binds a browser sign-in to the browser that started it (HttpOnly, Secure)."""


@dataclass(frozen=True)
class VerifiedIdentity:
    """What a protocol module vouches for after verifying the IdP's signed answer."""

    subject: str
    email: str | None = None
    email_verified: bool = False
    display_name: str | None = None
    groups: tuple[str, ...] = ()
    idp_mfa: bool = False
    protocol_details: dict[str, Any] = field(default_factory=dict)
    """Non-secret facts for the audit event (assertion id, issuer, authn context)."""


def binding_hash(binding: str) -> str:
    """SHA-256 of the browser-binding cookie value: only the hash is stored."""
    return hashlib.sha256(binding.encode("utf-8")).hexdigest()


def _actor(user: dict[str, Any] | None, identity: VerifiedIdentity) -> audit.Actor:
    if user is None:
        return audit.Actor(id=None, name=(identity.email or identity.subject)[:200], type=SSO_ACTOR_TYPE)
    return audit.Actor(id=str(user["id"]), name=user.get("display_name") or user["email"], type=SSO_ACTOR_TYPE)


REFUSALS_AUDITED_PER_ADDRESS = 20
"""Refused SSO sign-ins audited per tenant and client address in one REFUSAL_WINDOW_S."""
REFUSALS_AUDITED_PER_TENANT = 200
"""Refused SSO sign-ins audited per tenant in one REFUSAL_WINDOW_S, whatever the address."""
REFUSAL_WINDOW_S = 600
_REFUSAL_KEYS_MAX = 10_000


class RefusalBudget:
    """How many refused sign-ins a worker writes to a tenant's audit chain (see `record_refusal`).

    The ACS and the OIDC callback take anonymous requests, and each refusal appended an audit
    event: anyone could make a tenant's chain (and its database) grow as fast as they can send
    junk. Within a window of REFUSAL_WINDOW_S, the first REFUSALS_AUDITED_PER_ADDRESS refusals
    from one address and REFUSALS_AUDITED_PER_TENANT in all are audited; the rest are counted
    (and logged once per address and window), and the next audited refusal of the tenant says
    how many were left out (`after.refusals_not_audited`). Per worker, in memory, bounded
    (_REFUSAL_KEYS_MAX addresses per window; beyond that only the tenant's budget applies).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._window = 0.0
        self._per_address: dict[tuple[str, str], int] = {}
        self._per_tenant: dict[str, int] = {}
        self._left_out: dict[str, int] = {}

    def take(self, tenant_id: str, address: str | None, *, now: float | None = None) -> tuple[bool, int, bool]:
        """(audit this refusal?, refusals left out before it to report with it, first left out
        of this address in this window?)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if now - self._window >= REFUSAL_WINDOW_S:
                self._window, self._per_address, self._per_tenant = now, {}, {}
            key = (tenant_id, address or "")
            known = key in self._per_address
            by_address = self._per_address.get(key, 0) + 1
            if known or len(self._per_address) < _REFUSAL_KEYS_MAX:
                self._per_address[key] = by_address
            audited = self._per_tenant.get(tenant_id, 0)
            if by_address > REFUSALS_AUDITED_PER_ADDRESS or audited >= REFUSALS_AUDITED_PER_TENANT:
                self._left_out[tenant_id] = self._left_out.get(tenant_id, 0) + 1
                first = by_address == REFUSALS_AUDITED_PER_ADDRESS + 1 or self._left_out[tenant_id] == 1
                return False, 0, first
            self._per_tenant[tenant_id] = audited + 1
            return True, self._left_out.pop(tenant_id, 0), False

    def put_back(self, tenant_id: str, left_out: int) -> None:
        """An audited refusal that failed to commit: its count of left-out refusals is kept."""
        if left_out:
            with self._lock:
                self._left_out[tenant_id] = self._left_out.get(tenant_id, 0) + left_out


refusal_budget = RefusalBudget()


def record_refusal(*, tenant_id: str, provider_id: str | None, reason: str, meta: audit.RequestMeta,
                   subject: str | None = None, details: dict[str, Any] | None = None,
                   action: str = "auth.sso_login_failed") -> None:
    """Append a security event for a refused SSO sign-in, in its own committed transaction,
    within the worker's `refusal_budget` (beyond it the refusal is counted and logged, and the
    tenant's next audited refusal reports the count)."""
    audited, left_out, first = refusal_budget.take(tenant_id, meta.ip)
    if not audited:
        if first:
            log.warning("sso refusals beyond the audit budget: counted, not audited",
                        extra={"tenant": tenant_id, "ip": meta.ip, "reason": reason, "action": action,
                               "window_s": REFUSAL_WINDOW_S})
        return
    after = {"reason": reason, **({"subject": subject[:512]} if subject else {}), **(details or {}),
             **({"refusals_not_audited": left_out} if left_out else {})}
    try:
        with db.tenant_tx(tenant_id) as conn:
            audit.append(conn, tenant_id=tenant_id, actor=audit.Actor(id=None, name="sso", type="system"),
                         action=action, target_type="sso_provider", target_id=provider_id, after=after, meta=meta)
    except BaseException:
        refusal_budget.put_back(tenant_id, left_out)
        raise


def role_for(mapping: dict[str, Any], groups: tuple[str, ...], *, allow_admin: bool) -> str:
    """The role a first sign-in gets: the first rule whose value is among `groups`, else the
    default; ADMIN only when the provider allows ADMIN by mapping (checked again here, not only
    when the mapping is saved)."""
    for rule in mapping.get("rules", []):
        if rule.get("value") in groups and (rule.get("role") != Role.ADMIN or allow_admin):
            return str(Role(rule["role"]))
    default = mapping.get("default_role") or Role.VIEWER
    return str(Role.VIEWER if default == Role.ADMIN and not allow_admin else Role(default))


def _live_provider(conn: Conn, provider_id: str) -> dict[str, Any]:
    row = provider_row(conn, provider_id)
    if row is None or not row["enabled"]:
        raise ProviderUnavailable()
    return row


class _Refused(Exception):
    def __init__(self, reason: str, user: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.user = user


_USER = "select id::text as id, email, display_name, role, status from users where id = %s"


def _resolve(conn: Conn, *, tenant_id: str, provider: dict[str, Any], identity: VerifiedIdentity,
             meta: audit.RequestMeta) -> dict[str, Any]:
    """The linked (or newly linked or created) active user. Raises _Refused."""
    # Two first sign-ins of one subject at once: one links or creates, the other then finds the link.
    conn.execute("select pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"sso:{provider['id']}:{identity.subject}",))
    link = conn.execute("select id, user_id::text as user_id from sso_links where provider_id = %s and subject = %s",
                        (provider["id"], identity.subject)).fetchone()
    if link is not None:
        user = conn.execute(_USER + " for update", (link["user_id"],)).fetchone()
        assert user is not None
        if user["status"] != "active":
            raise _Refused("inactive_user", user)
        conn.execute("update sso_links set last_login_at = now() where id = %s", (link["id"],))
        return user
    email = None
    if identity.email:
        try:
            email = normalize_email(identity.email)
        except ValidationFailed:
            email = None
    existing = (conn.execute("select id::text as id, email, display_name, role, status from users where email = %s"
                             " for update", (email,)).fetchone() if email else None)
    if existing is not None:
        if not (provider["link_by_verified_email"] and identity.email_verified):
            raise _Refused("email_belongs_to_unlinked_account", existing)
        if existing["status"] == "deactivated":
            raise _Refused("inactive_user", existing)
        already = conn.execute("select 1 from sso_links where provider_id = %s and user_id = %s",
                               (provider["id"], existing["id"])).fetchone()
        if already is not None:
            raise _Refused("user_linked_to_another_subject", existing)
        if existing["status"] == "invited":
            conn.execute("update users set status = 'active', updated_at = now() where id = %s", (existing["id"],))
            conn.execute("update invitations set revoked_at = now() where user_id = %s and used_at is null"
                         " and revoked_at is null", (existing["id"],))
            existing["status"] = "active"
            audit.append(conn, tenant_id=tenant_id, actor=_actor(existing, identity), action="user.activated",
                         target_type="user", target_id=str(existing["id"]), before={"status": "invited"},
                         after={"status": "active", "via": "sso", "provider_id": provider["id"]}, meta=meta)
        _link(conn, tenant_id=tenant_id, provider=provider, identity=identity, user=existing, how="verified_email",
              meta=meta)
        return existing
    if not provider["jit"]:
        raise _Refused("not_provisioned")
    if email is None:
        raise _Refused("no_email")
    role = role_for(provider["role_mapping"], identity.groups, allow_admin=provider["allow_admin_mapping"])
    try:
        user = create_sso_user(conn, tenant_id=tenant_id, email=email,
                               display_name=(identity.display_name or email.split("@")[0]), role=role,
                               audit_actor=_actor(None, identity), meta=meta, provider_id=provider["id"])
    except Conflict:
        raise _Refused("email_belongs_to_unlinked_account") from None
    _link(conn, tenant_id=tenant_id, provider=provider, identity=identity, user=user, how="jit", meta=meta)
    return user


def _link(conn: Conn, *, tenant_id: str, provider: dict[str, Any], identity: VerifiedIdentity, user: dict[str, Any],
          how: str, meta: audit.RequestMeta) -> None:
    conn.execute("insert into sso_links (tenant_id, provider_id, subject, user_id, last_login_at)"
                 " values (%s, %s, %s, %s, now())", (tenant_id, provider["id"], identity.subject, user["id"]))
    audit.append(conn, tenant_id=tenant_id, actor=_actor(user, identity), action="sso.account_linked",
                 target_type="user", target_id=str(user["id"]),
                 after={"provider_id": provider["id"], "subject": identity.subject, "how": how}, meta=meta)


def _open(conn: Conn, *, tenant_id: str, provider: dict[str, Any], user: dict[str, Any], idp_mfa: bool,
          remember_me: bool, details: dict[str, Any], meta: audit.RequestMeta) -> mfa.SignedIn | mfa.SecondFactorRequired:
    """The end of a password sign-in, for a user an IdP vouched for."""
    actor = audit.Actor(id=str(user["id"]), name=user.get("display_name") or user["email"], type=SSO_ACTOR_TYPE)
    base = {"provider_id": provider["id"], "kind": provider["kind"], "idp_mfa": idp_mfa, **details}
    trusted = bool(provider["trust_idp_mfa"] and idp_mfa)
    factors = mfa.factor_state(conn, user_id=str(user["id"]), role=user["role"])
    if factors.enrolled and not trusted:
        challenge = mfa.open_ticket(conn, tenant_id=tenant_id, user_id=str(user["id"]), state=factors,
                                    remember_me=remember_me, meta=meta)
        audit.append(conn, tenant_id=tenant_id, actor=actor, action="auth.mfa_challenged", target_type="user",
                     target_id=str(user["id"]), after={"methods": challenge.methods, **base}, meta=meta)
        return challenge
    tokens = create_session(conn, tenant_id=tenant_id, user=user, remember_me=remember_me, ip=meta.ip,
                            user_agent=meta.user_agent)
    if trusted:
        conn.execute("update sessions set mfa_verified_at = now(), mfa_method = 'idp' where id = %s",
                     (tokens.session_id,))
    pending = factors.required and not factors.enrolled and not trusted
    audit.append(conn, tenant_id=tenant_id, actor=actor, action="auth.sso_login", target_type="session",
                 target_id=tokens.session_id,
                 after={**base, "remember_me": remember_me, "mfa": "idp" if trusted else None,
                        "mfa_enrolment_required": pending},
                 meta=audit.RequestMeta(meta.ip, meta.user_agent, tokens.session_id, meta.request_id))
    return mfa.SignedIn(tokens, {"mfa_enrolment_required": True} if pending else {})


def _refuse(tenant_id: str, provider_id: str, exc: _Refused, identity: VerifiedIdentity,
            meta: audit.RequestMeta) -> AccountRefused:
    record_refusal(tenant_id=tenant_id, provider_id=provider_id, reason=exc.reason, meta=meta,
                   subject=identity.subject, details={"user_id": exc.user["id"]} if exc.user else None)
    return AccountRefused(exc.reason)


def complete_sign_in(*, tenant_id: str, provider_id: str, identity: VerifiedIdentity, meta: audit.RequestMeta,
                     remember_me: bool = False) -> mfa.SignedIn | mfa.SecondFactorRequired:
    """Sign in the user a provider vouched for (see the module docstring), in one transaction.

    Raises:
        ProviderUnavailable: the provider is not enabled in this tenant.
        AccountRefused: not provisioned, deactivated, or an unlinked account's email (audited).
    """
    try:
        with db.tenant_tx(tenant_id) as conn:
            provider = _live_provider(conn, provider_id)
            user = _resolve(conn, tenant_id=tenant_id, provider=provider, identity=identity, meta=meta)
            return _open(conn, tenant_id=tenant_id, provider=provider, user=user, idp_mfa=identity.idp_mfa,
                         remember_me=remember_me, details=identity.protocol_details, meta=meta)
    except _Refused as exc:
        raise _refuse(tenant_id, provider_id, exc, identity, meta) from None


def begin_handoff(*, tenant_id: str, provider_id: str, identity: VerifiedIdentity, binding: str, remember_me: bool,
                  meta: audit.RequestMeta) -> str:
    """Resolve the account now (refusals are answered to the browser at once) and return a
    one-time code for `exchange`, bound to `binding` (the browser's cookie value).

    Raises:
        ProviderUnavailable, AccountRefused (audited).
    """
    code, hashed = new_token("sso", tenant_id)
    try:
        with db.tenant_tx(tenant_id) as conn:
            provider = _live_provider(conn, provider_id)
            user = _resolve(conn, tenant_id=tenant_id, provider=provider, identity=identity, meta=meta)
            conn.execute("delete from sso_handoffs where user_id = %s and (used_at is not null or expires_at <= now())",
                         (user["id"],))
            conn.execute(
                """insert into sso_handoffs (tenant_id, provider_id, user_id, code_hash, binding_hash, idp_mfa,
                       remember_me, expires_at)
                   values (%s, %s, %s, %s, %s, %s, %s, now() + make_interval(secs => %s))""",
                (tenant_id, provider_id, user["id"], hashed, binding_hash(binding), identity.idp_mfa, remember_me,
                 get_settings().sso_handoff_ttl_s),
            )
            audit.append(conn, tenant_id=tenant_id, actor=_actor(user, identity), action="auth.sso_verified",
                         target_type="user", target_id=str(user["id"]),
                         after={"provider_id": provider_id, "subject": identity.subject, "idp_mfa": identity.idp_mfa,
                                **identity.protocol_details}, meta=meta)
    except _Refused as exc:
        raise _refuse(tenant_id, provider_id, exc, identity, meta) from None
    return code


def exchange(*, code: str, binding: str | None, meta: audit.RequestMeta) -> mfa.SignedIn | mfa.SecondFactorRequired:
    """Trade a one-time sign-in code for tokens (or a second-factor ticket): once, before it
    expires, and only from the browser that holds the binding cookie.

    Raises:
        InvalidHandoff: unknown, used, expired, or another browser (audited when the code was real).
    """
    parsed = parse_token(code, "sso")
    if parsed is None or not binding:
        raise InvalidHandoff()
    with db.tenant_tx(parsed.tenant_id) as conn:
        row = conn.execute(
            """select h.id, h.provider_id::text as provider_id, h.user_id::text as user_id, h.code_hash,
                      h.binding_hash, h.idp_mfa, h.remember_me, h.used_at is null and h.expires_at > now() as live
                 from sso_handoffs h where h.code_hash = %s for update""",
            (parsed.hash,),
        ).fetchone()
        if row is None or not same_hash(parsed.hash, row["code_hash"]):
            raise InvalidHandoff()
        if not row["live"] or not same_hash(binding_hash(binding), row["binding_hash"]):
            reason = "code_not_live" if not row["live"] else "other_browser"
        else:
            reason = ""
            conn.execute("update sso_handoffs set used_at = now() where id = %s", (row["id"],))
            provider = provider_row(conn, row["provider_id"])
            user = conn.execute(_USER, (row["user_id"],)).fetchone()
            if provider is None or not provider["enabled"]:
                reason = "provider_disabled"
            elif user is None or user["status"] != "active":
                reason = "inactive_user"
            else:
                return _open(conn, tenant_id=parsed.tenant_id, provider=provider, user=user, idp_mfa=row["idp_mfa"],
                             remember_me=row["remember_me"], details={}, meta=meta)
    record_refusal(tenant_id=parsed.tenant_id, provider_id=row["provider_id"], reason=reason, meta=meta,
                   details={"user_id": row["user_id"]}, action="auth.sso_exchange_failed")
    raise InvalidHandoff()
