"""What every second-factor recipe shares: the caller's realm, the user lock, throttle keys,
recent proof of a factor, and the record of a failure. Internal to `shared.identity.mfa`.

Each recipe opens its own tenant transaction, appends its audit events in it, and reserves each
code attempt in the "mfa" throttle family before checking it (keyed by user id and client IP,
`ratelimit.subject_keys`). A factor that fails inside the transaction raises `Rejected`; the
recipe records the failure after the rollback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared.audit import chain as audit
from shared.core import db
from shared.core.db import Conn
from shared.core.errors import NotFound
from shared.core.settings import get_settings
from shared.identity import ratelimit
from shared.identity.mfa.errors import StepUpRequired
from shared.identity.mfa.realms import OPERATORS, USERS, Method, Realm
from shared.tenancy.rbac import PLATFORM_OPERATOR

if TYPE_CHECKING:
    from shared.identity.guards import Principal


class Rejected(Exception):
    """A second factor failed inside a transaction; the caller records it after the rollback."""

    def __init__(self, method: str, reason: str, extra: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.method, self.reason, self.extra = method, reason, extra or {}


def tenant_of(principal: Principal) -> str:
    assert principal.tenant_id is not None
    return principal.tenant_id


def realm_of(principal: Principal) -> tuple[Realm, str]:
    """The caller's realm and the chain (tenant, or the platform chain) its events go to."""
    if principal.is_operator:
        return OPERATORS, audit.PLATFORM_CHAIN
    return USERS, tenant_of(principal)


def actor_of(user_id: str, name: str | None, realm: Realm = USERS) -> audit.Actor:
    return audit.Actor(id=user_id, name=name or user_id, type=realm.kind)


def lock_user(conn: Conn, user_id: str, *, lock: bool = True, realm: Realm = USERS) -> dict[str, Any]:
    """The user row, locked: serializes every factor change of one user (so no two removals
    can leave them without a factor). Raises NotFound."""
    role = "role" if realm.tenant_scoped else f"'{PLATFORM_OPERATOR}' as role"
    row = conn.execute(
        f"select id::text as id, email, display_name, {role}, status from {realm.people} where id = %s"  # noqa: S608  # nosec B608  # names come from the fixed MFA realm tables in code; values are bound
        + (" for update" if lock else ""), (user_id,)
    ).fetchone()
    if row is None:
        raise NotFound("no such user")
    return row


def subject_keys(tenant_id: str, user_id: str, ip: str | None) -> list[ratelimit.Key]:
    return ratelimit.subject_keys(subject=user_id, ip=ip or "unknown", tenant=tenant_id)


def ip_keys(ip: str | None) -> list[ratelimit.Key]:
    return [ratelimit.Key("ip", ratelimit.normalize_ip(ip or "unknown"))]


def recent_proof(conn: Conn, session_id: str, realm: Realm = USERS) -> bool:
    """Whether the session proved a second factor within MFA_RECENT_AUTH_S."""
    row = conn.execute(
        f"select mfa_verified_at > now() - make_interval(secs => %s) as recent from {realm.sessions} where id = %s",  # noqa: S608  # nosec B608  # names come from the fixed MFA realm tables in code; values are bound
        (get_settings().mfa_recent_auth_s, session_id),
    ).fetchone()
    return bool(row and row["recent"])


def require_recent_proof(conn: Conn, principal: Principal, realm: Realm = USERS) -> None:
    """Changing the factors of an account that has one needs a session that proved one
    lately: a stolen session alone must not swap in the thief's factor or drop the user's.

    Raises:
        StepUpRequired.
    """
    if not recent_proof(conn, principal.session_id, realm):
        raise StepUpRequired("sign in again with your second factor (it was proved too long ago) and retry")


def mark_session(conn: Conn, session_id: str, method: Method, realm: Realm = USERS) -> None:
    conn.execute(f"update {realm.sessions} set mfa_verified_at = now(), mfa_method = %s where id = %s",  # noqa: S608  # nosec B608  # names come from the fixed MFA realm tables in code; values are bound
                 (method, session_id))


def record_failure(*, tenant_id: str, user_id: str, actor: audit.Actor, action: str, after: dict[str, Any],
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
