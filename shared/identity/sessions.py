"""Sessions: one per sign-in, with a rotating refresh token; visible to the user and to
admins holding `sessions.manage`, revocable by both.

Refresh tokens rotate on every use. Presenting the token just replaced, within
REFRESH_GRACE_S of its rotation, is taken for two tabs racing and rotates again (each tab
ends with a working token; clients sharing storage keep the last one); presenting any other
token the session once had is reuse: the whole session is revoked and a security event
recorded (someone holds a copy of a token they should not have). A token the session never
had (a guess by someone who knows a session id) is refused without touching the session.

A session idle longer than the tenant's `sessions.max_idle_minutes` (no limit when unset) ends:
its next request or refresh is refused and revokes it with reason "idle" and one
`session.expired` event. Platform operator sessions follow the same rule with
OPERATOR_SESSION_MAX_IDLE_MINUTES. Activity is `last_seen_at`, written at most once every
TOUCH_EVERY_S by the statement that authenticates the request, so reading a session costs no
write; idleness is therefore measured up to TOUCH_EVERY_S early, never late.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from shared.audit import chain as audit
from shared.core import db
from shared.core.db import Conn
from shared.core.errors import NotFound, Unauthenticated
from shared.core.settings import get_settings
from shared.identity.opaque import new_token, parse_token, same_hash
from shared.identity.tokens import issue_access_token

RETIRED_KEPT = 100
"""How many rotated-away refresh tokens a session remembers as evidence of reuse."""

IDLE_SETTING = "sessions.max_idle_minutes"
TOUCH_EVERY_S = 60
"""`last_seen_at` is written at most this often per session."""

MAX_IDLE_SQL = (
    "(select make_interval(mins => (ts.value)::int) from tenant_settings ts"  # noqa: S608  # nosec B608  # only module constants are interpolated; values are bound
    f" where ts.key = '{IDLE_SETTING}')"
)
"""The tenant's idle limit as an interval, NULL when unset: inlined into the statements that
read a session so the check costs no extra round trip (a constant: no caller input)."""

IDLE_REASON = "idle"
IDLE_DETAIL = "the session has ended: it was idle too long"
IDLE_ACTOR = audit.Actor(id=None, name="idle session timeout", type="system")

PUBLIC_COLUMNS = (
    "id, user_id, created_at, last_seen_at, expires_at, remember_me, ip, device_label, revoked_at, revoked_reason"
)

_BROWSERS = (("Edg/", "Edge"), ("OPR/", "Opera"), ("Firefox/", "Firefox"), ("Chrome/", "Chrome"), ("Safari/", "Safari"))
_SYSTEMS = (("Windows", "Windows"), ("iPhone", "iOS"), ("iPad", "iPadOS"), ("Android", "Android"),
            ("Mac OS X", "macOS"), ("CrOS", "ChromeOS"), ("Linux", "Linux"))


def device_label(user_agent: str | None) -> str:
    """A short human label like "Firefox on Windows" for the session list."""
    ua = user_agent or ""
    browser = next((name for marker, name in _BROWSERS if marker in ua), None)
    system = next((name for marker, name in _SYSTEMS if marker in ua), None)
    if browser and system:
        return f"{browser} on {system}"
    if browser or system:
        return browser or system or ""
    cleaned = re.sub(r"[^\w ./()-]", "", ua)[:60].strip()
    return cleaned or "Unknown device"


@dataclass(frozen=True)
class IssuedTokens:
    access_token: str
    refresh_token: str
    session_id: str
    expires_in: int
    refresh_expires_at: Any

    def as_dict(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "refresh_token": self.refresh_token,
            "refresh_expires_at": self.refresh_expires_at,
            "session_id": self.session_id,
        }


def _access(user: dict[str, Any], tenant_id: str, session_id: str) -> str:
    return issue_access_token(
        subject=str(user["id"]), tenant_id=tenant_id, session_id=session_id, role=user["role"],
        name=user.get("display_name") or None,
    )


def create_session(
    conn: Conn, *, tenant_id: str, user: dict[str, Any], remember_me: bool,
    ip: str | None, user_agent: str | None,
) -> IssuedTokens:
    """Open a session in the caller's tenant transaction and issue its first tokens."""
    s = get_settings()
    session_id = str(uuid.uuid4())
    refresh, hashed = new_token("rt", tenant_id, session_id)
    ttl = timedelta(days=s.refresh_remember_ttl_days if remember_me else s.refresh_ttl_days)
    row = conn.execute(
        """insert into sessions (tenant_id, id, user_id, expires_at, remember_me, ip, user_agent, device_label, refresh_hash)
           values (%s, %s, %s, now() + %s, %s, %s, %s, %s, %s) returning expires_at""",
        (tenant_id, session_id, user["id"], ttl, remember_me, ip, (user_agent or "")[:512] or None,
         device_label(user_agent), hashed),
    ).fetchone()
    assert row is not None
    return IssuedTokens(_access(user, tenant_id, session_id), refresh, session_id, s.jwt_access_ttl_s, row["expires_at"])


def refresh(token: str, *, meta: audit.RequestMeta) -> IssuedTokens:
    """Rotate a refresh token.

    Raises:
        Unauthenticated: unknown, expired or revoked session; an idle session (which also
            ends it); reuse (which also revokes it).
    """
    parsed = parse_token(token, "rt")
    if parsed is None or parsed.session_id is None:
        raise Unauthenticated("invalid refresh token")
    s = get_settings()
    ended: str | None = None
    with db.tenant_tx(parsed.tenant_id) as conn:
        row = conn.execute(
            f"""select s.*, now() - s.rotated_at <= make_interval(secs => %s) as in_grace, s.expires_at > now() as live,
                      coalesce(s.last_seen_at < now() - {MAX_IDLE_SQL}, false) as idle,
                      u.id as uid, u.role, u.display_name, u.status
                 from sessions s join users u on u.tenant_id = s.tenant_id and u.id = s.user_id
                where s.id = %s for update of s""",  # noqa: S608  # nosec B608  # only module constants are interpolated; values are bound
            (s.refresh_grace_s, parsed.session_id),
        ).fetchone()
        if row is None or row["revoked_at"] is not None or not row["live"] or row["status"] != "active":
            raise Unauthenticated("the session has ended")
        if row["idle"]:
            # Over whichever token is presented: a refresh must not revive an idle session.
            end_if_idle(conn, tenant_id=parsed.tenant_id, session_id=parsed.session_id, meta=meta)
            ended = IDLE_DETAIL
        else:
            current = same_hash(parsed.hash, row["refresh_hash"])
            racing = not current and bool(row["in_grace"]) and same_hash(parsed.hash, row["previous_refresh_hash"])
            if current or racing:
                new, hashed = new_token("rt", parsed.tenant_id, parsed.session_id)
                # Racing or not, the token being replaced becomes the one a racing tab may still
                # present for REFRESH_GRACE_S; anything older is reuse.
                conn.execute(
                    """update sessions set refresh_hash = %s, previous_refresh_hash = refresh_hash, rotated_at = now(),
                              retired_hashes = (array_prepend(refresh_hash, retired_hashes))[1:%s],
                              last_seen_at = now(), generation = generation + 1, ip = coalesce(%s, ip)
                        where id = %s""",
                    (hashed, RETIRED_KEPT, meta.ip, parsed.session_id),
                )
                user = {"id": row["uid"], "role": row["role"], "display_name": row["display_name"]}
                return IssuedTokens(_access(user, parsed.tenant_id, parsed.session_id), new, parsed.session_id,
                                    s.jwt_access_ttl_s, row["expires_at"])
            if not any(same_hash(parsed.hash, old) for old in row["retired_hashes"]):
                # Not a token this session ever had: a guess. Refuse it, but do not let a caller
                # who merely knows a session id end someone else's session.
                raise Unauthenticated("invalid refresh token")
            conn.execute(
                "update sessions set revoked_at = now(), revoked_reason = 'refresh token reused' where id = %s",
                (parsed.session_id,),
            )
            audit.append(
                conn, tenant_id=parsed.tenant_id,
                actor=audit.Actor(id=str(row["uid"]), name=row["display_name"] or "", type="user"),
                action="security.refresh_token_reused", target_type="session", target_id=parsed.session_id,
                after={"generation": row["generation"]}, meta=meta,
            )
            ended = "the refresh token was already used: the session is revoked"
    # Raised after the transaction commits, so the revocation and its event stay.
    assert ended is not None
    raise Unauthenticated(ended)


def end_if_idle(conn: Conn, *, tenant_id: str, session_id: str, meta: audit.RequestMeta) -> bool:
    """Revoke a tenant session that is idle past the tenant's limit, with one `session.expired`
    event; True if this call ended it. A session already revoked (by a concurrent request, say)
    is left alone, so the event is written at most once."""
    row = conn.execute(
        f"""update sessions s set revoked_at = now(), revoked_reason = %s
             where s.id = %s and s.revoked_at is null and s.last_seen_at < now() - {MAX_IDLE_SQL}
            returning s.user_id::text as user_id, s.last_seen_at, {MAX_IDLE_SQL} as max_idle""",  # noqa: S608  # nosec B608  # only module constants are interpolated; values are bound
        (IDLE_REASON, session_id),
    ).fetchone()
    if row is None:
        return False
    audit.append(
        conn, tenant_id=tenant_id, actor=IDLE_ACTOR, action="session.expired", target_type="session",
        target_id=session_id, reason=IDLE_REASON,
        after={"user_id": row["user_id"], "last_seen_at": row["last_seen_at"].isoformat(),
               "max_idle_minutes": int(row["max_idle"].total_seconds() // 60)},
        meta=meta,
    )
    return True


def end_operator_session_if_idle(
    conn: Conn, *, session_id: str, max_idle_minutes: int, meta: audit.RequestMeta
) -> bool:
    """The same for a platform operator's session; the event goes to the platform chain.
    `conn` is a transaction on the platform chain (`db.tenant_tx(audit.PLATFORM_CHAIN)`)."""
    row = conn.execute(
        """update operator_sessions s set revoked_at = now(), revoked_reason = %s
            where s.id = %s and s.revoked_at is null and s.last_seen_at < now() - make_interval(mins => %s)
           returning s.operator_id::text as operator_id, s.last_seen_at""",
        (IDLE_REASON, session_id, max_idle_minutes),
    ).fetchone()
    if row is None:
        return False
    audit.append(
        conn, tenant_id=audit.PLATFORM_CHAIN, actor=IDLE_ACTOR, action="session.expired",
        target_type="operator_session", target_id=session_id, reason=IDLE_REASON,
        after={"operator_id": row["operator_id"], "last_seen_at": row["last_seen_at"].isoformat(),
               "max_idle_minutes": max_idle_minutes},
        meta=meta,
    )
    return True


def list_sessions(conn: Conn, user_id: str, *, include_ended: bool = False) -> list[dict[str, Any]]:
    where = "" if include_ended else (
        f" and revoked_at is null and expires_at > now() and not coalesce(last_seen_at < now() - {MAX_IDLE_SQL}, false)"
    )
    rows = conn.execute(
        f"select {PUBLIC_COLUMNS} from sessions where user_id = %s{where} order by created_at desc", (user_id,)  # noqa: S608  # nosec B608  # where is one of two constant strings; values are bound
    ).fetchall()
    return [{**r, "id": str(r["id"]), "user_id": str(r["user_id"])} for r in rows]


def revoke(
    conn: Conn, *, session_id: uuid.UUID | str, user_id: str, reason: str, by: str | None,
    actor: audit.Actor, meta: audit.RequestMeta, tenant_id: str,
) -> None:
    """Revoke one live session of `user_id`. Raises NotFound if it is not theirs or not live."""
    row = conn.execute(
        """update sessions set revoked_at = now(), revoked_reason = %s, revoked_by = %s
            where id = %s and user_id = %s and revoked_at is null returning id""",
        (reason, by, str(session_id), user_id),
    ).fetchone()
    if row is None:
        raise NotFound("no such live session")
    audit.append(conn, tenant_id=tenant_id, actor=actor, action="session.revoked", target_type="session",
                 target_id=str(session_id), after={"user_id": user_id}, reason=reason, meta=meta)


def revoke_all(conn: Conn, *, user_id: str, reason: str, except_session: str | None = None) -> int:
    """Revoke every live session of a user (password change/reset, deactivation)."""
    rows = conn.execute(
        """update sessions set revoked_at = now(), revoked_reason = %s
            where user_id = %s and revoked_at is null and (%s::uuid is null or id <> %s::uuid) returning id""",
        (reason, user_id, except_session, except_session),
    ).fetchall()
    return len(rows)
