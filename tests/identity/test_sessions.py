"""Idle sessions end, through the real host.

The database clock decides idleness, so the tests move `last_seen_at` back in the database
instead of sleeping.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import httpx
import psycopg
import pytest

from shared.audit import chain as audit
from shared.core import db
from shared.core.settings import get_settings
from shared.identity.sessions import IssuedTokens, create_session, end_if_idle
from shared.tenancy.tenant_settings import put_setting
from shared.tenancy.tenants import Tenant
from tests.conftest import Host, PersonFactory, auth, create_user

IDLE_MINUTES = 5


def open_session(tenant_id: str) -> IssuedTokens:
    """A signed-in OPERATOR-role user (no second factor needed): access and refresh token."""
    user = create_user(tenant_id, "OPERATOR")
    with db.tenant_tx(tenant_id) as conn:
        row = conn.execute("select id::text as id, role, display_name from users where id = %s", (user["id"],)).fetchone()
        return create_session(conn, tenant_id=tenant_id, user=row, remember_me=False, ip="127.0.0.1", user_agent="pytest")


def set_idle_limit(tenant_id: str, minutes: int = IDLE_MINUTES) -> None:
    with db.tenant_tx(tenant_id) as conn:
        put_setting(conn, tenant_id=tenant_id, key="sessions.max_idle_minutes", value=minutes, actor_id=None)


def last_seen(tenant_id: str, session_id: str) -> datetime:
    with db.tenant_tx(tenant_id) as conn:
        return conn.execute("select last_seen_at from sessions where id = %s", (session_id,)).fetchone()["last_seen_at"]


def idle_for(tenant_id: str, session_id: str, seconds: int) -> datetime:
    """Pretend the session's last activity was `seconds` ago; returns the new last_seen_at."""
    with db.tenant_tx(tenant_id) as conn:
        return conn.execute(
            "update sessions set last_seen_at = now() - make_interval(secs => %s) where id = %s returning last_seen_at",
            (seconds, session_id),
        ).fetchone()["last_seen_at"]


def session_row(tenant_id: str, session_id: str) -> dict[str, Any]:
    with db.tenant_tx(tenant_id) as conn:
        return conn.execute("select revoked_at, revoked_reason from sessions where id = %s", (session_id,)).fetchone()


def expired_events(chain: str, session_id: str) -> list[dict[str, Any]]:
    with db.tenant_tx(chain) as conn:
        return [e for e in audit.list_events(conn, action="session.expired", limit=1000) if e["target_id"] == session_id]


def assert_session_ended(resp: httpx.Response) -> None:
    assert resp.status_code == 401, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    body = resp.json()
    assert body["type"] == "urn:custos:problem:unauthenticated"
    assert "session has ended" in body["detail"] and "idle" in body["detail"]


def test_idle_session_is_refused_and_revoked_once(client: httpx.Client, tenant: Tenant) -> None:
    set_idle_limit(tenant.id)
    s = open_session(tenant.id)
    assert client.get("/api/me", headers=auth(s.access_token)).status_code == 200
    idle_for(tenant.id, s.session_id, IDLE_MINUTES * 60 + 1)

    assert_session_ended(client.get("/api/me", headers=auth(s.access_token)))
    row = session_row(tenant.id, s.session_id)
    assert row["revoked_at"] is not None and row["revoked_reason"] == "idle"
    # Neither a later request nor the session's own refresh token brings it back.
    assert client.get("/api/me", headers=auth(s.access_token)).status_code == 401
    assert client.post("/api/auth/refresh", json={"refresh_token": s.refresh_token}).status_code == 401
    events = expired_events(tenant.id, s.session_id)
    assert len(events) == 1
    assert events[0]["reason"] == "idle" and events[0]["actor_type"] == "system"


def test_refresh_does_not_revive_an_idle_session(client: httpx.Client, tenant: Tenant) -> None:
    set_idle_limit(tenant.id)
    s = open_session(tenant.id)
    idle_for(tenant.id, s.session_id, IDLE_MINUTES * 60 + 1)

    assert_session_ended(client.post("/api/auth/refresh", json={"refresh_token": s.refresh_token}))
    assert session_row(tenant.id, s.session_id)["revoked_reason"] == "idle"
    # The access token still inside its 15 minutes is no way back in either.
    assert client.get("/api/me", headers=auth(s.access_token)).status_code == 401
    assert client.post("/api/auth/refresh", json={"refresh_token": s.refresh_token}).status_code == 401
    assert len(expired_events(tenant.id, s.session_id)) == 1


def test_a_session_active_every_few_minutes_stays_signed_in(client: httpx.Client, tenant: Tenant) -> None:
    set_idle_limit(tenant.id)
    s = open_session(tenant.id)
    token, refresh = s.access_token, s.refresh_token
    # Three gaps of four minutes: twelve minutes in all, more than twice the idle limit.
    for step in range(3):
        before = idle_for(tenant.id, s.session_id, (IDLE_MINUTES - 1) * 60)
        if step == 1:
            rotated = client.post("/api/auth/refresh", json={"refresh_token": refresh})
            assert rotated.status_code == 200, rotated.text
            token, refresh = rotated.json()["access_token"], rotated.json()["refresh_token"]
        else:
            assert client.get("/api/me", headers=auth(token)).status_code == 200
        assert last_seen(tenant.id, s.session_id) > before
    assert session_row(tenant.id, s.session_id)["revoked_at"] is None
    assert expired_events(tenant.id, s.session_id) == []


def test_activity_is_written_at_most_once_a_minute(client: httpx.Client, tenant: Tenant) -> None:
    s = open_session(tenant.id)
    created = last_seen(tenant.id, s.session_id)
    for _ in range(2):
        assert client.get("/api/me", headers=auth(s.access_token)).status_code == 200
    assert last_seen(tenant.id, s.session_id) == created  # seen within the minute: no write

    stale = idle_for(tenant.id, s.session_id, 61)
    assert client.get("/api/me", headers=auth(s.access_token)).status_code == 200
    touched = last_seen(tenant.id, s.session_id)
    assert touched > stale
    assert client.get("/api/me", headers=auth(s.access_token)).status_code == 200
    assert last_seen(tenant.id, s.session_id) == touched


def test_without_an_idle_limit_only_the_session_lifetime_applies(client: httpx.Client, tenant: Tenant) -> None:
    s = open_session(tenant.id)
    idle_for(tenant.id, s.session_id, 3 * 86400)
    assert client.get("/api/me", headers=auth(s.access_token)).status_code == 200


def test_idle_sessions_are_not_listed_as_live(client: httpx.Client, tenant: Tenant) -> None:
    set_idle_limit(tenant.id)
    s = open_session(tenant.id)
    with db.tenant_tx(tenant.id) as conn:
        user = conn.execute("select u.id::text as id, u.role, u.display_name from users u join sessions s on s.user_id = u.id "
                            "where s.id = %s", (s.session_id,)).fetchone()
        other = create_session(conn, tenant_id=tenant.id, user=user, remember_me=False, ip=None, user_agent="pytest")
    idle_for(tenant.id, other.session_id, IDLE_MINUTES * 60 + 1)
    listed = client.get("/api/sessions", headers=auth(s.access_token)).json()["sessions"]
    assert [r["id"] for r in listed] == [s.session_id]


def test_idle_expiry_is_recorded_at_most_once_under_concurrency(host: Host, tenant: Tenant) -> None:
    set_idle_limit(tenant.id)
    s = open_session(tenant.id)
    idle_for(tenant.id, s.session_id, IDLE_MINUTES * 60 + 1)

    def hit(_: int) -> int:
        with httpx.Client(base_url=host.url, timeout=30) as c:
            return c.get("/api/me", headers=auth(s.access_token)).status_code

    with ThreadPoolExecutor(max_workers=6) as pool:
        assert set(pool.map(hit, range(6))) == {401}
    assert len(expired_events(tenant.id, s.session_id)) == 1
    # The revocation itself is conditional: a second attempt finds nothing to end.
    with db.tenant_tx(tenant.id) as conn:
        assert end_if_idle(conn, tenant_id=tenant.id, session_id=s.session_id, meta=audit.RequestMeta()) is False
    assert len(expired_events(tenant.id, s.session_id)) == 1


def test_end_if_idle_leaves_an_active_session_alone(tenant: Tenant) -> None:
    set_idle_limit(tenant.id)
    s = open_session(tenant.id)
    idle_for(tenant.id, s.session_id, IDLE_MINUTES * 60 - 30)
    with db.tenant_tx(tenant.id) as conn:
        assert end_if_idle(conn, tenant_id=tenant.id, session_id=s.session_id, meta=audit.RequestMeta()) is False
    assert session_row(tenant.id, s.session_id)["revoked_at"] is None


# --- platform operators -----------------------------------------------------------------------


def operator_idle_for(session_id: str, seconds: int) -> datetime:
    with db.platform_tx() as conn:
        return conn.execute(
            """update operator_sessions set last_seen_at = now() - make_interval(secs => %s) where id = %s
               returning last_seen_at""",
            (seconds, session_id),
        ).fetchone()["last_seen_at"]


def operator_session(session_id: str) -> dict[str, Any]:
    with db.platform_tx() as conn:
        return conn.execute("select last_seen_at, revoked_at, revoked_reason from operator_sessions where id = %s",
                            (session_id,)).fetchone()


@pytest.fixture
def operator(make_person: PersonFactory) -> tuple[str, str]:
    """An operator's access token and session id."""
    import jwt

    person = make_person(None)
    return person.token, jwt.decode(person.token, options={"verify_signature": False})["sid"]


def test_idle_operator_session_ends(client: httpx.Client, operator: tuple[str, str]) -> None:
    token, sid = operator
    limit = get_settings().operator_session_max_idle_minutes
    assert client.get("/api/platform/tenants", headers=auth(token)).status_code == 200
    operator_idle_for(sid, limit * 60 + 1)

    assert_session_ended(client.get("/api/platform/tenants", headers=auth(token)))
    assert client.get("/api/platform/tenants", headers=auth(token)).status_code == 401
    assert operator_session(sid)["revoked_reason"] == "idle"
    events = expired_events(audit.PLATFORM_CHAIN, sid)
    assert len(events) == 1 and events[0]["target_type"] == "operator_session"


def test_active_operator_session_is_kept_and_touched_at_most_once_a_minute(
    client: httpx.Client, operator: tuple[str, str]
) -> None:
    token, sid = operator
    limit = get_settings().operator_session_max_idle_minutes
    for _ in range(2):
        before = operator_idle_for(sid, (limit - 1) * 60)
        assert client.get("/api/platform/tenants", headers=auth(token)).status_code == 200
        touched = operator_session(sid)["last_seen_at"]
        assert touched > before
        assert client.get("/api/platform/tenants", headers=auth(token)).status_code == 200
        assert operator_session(sid)["last_seen_at"] == touched
    assert operator_session(sid)["revoked_at"] is None


@pytest.mark.parametrize("raw", ["true", "30.5", "\"30\"", "4", "1441", "null"])
def test_the_database_refuses_an_idle_limit_its_requests_could_not_read(tenant: Tenant, raw: str) -> None:
    """Every request reads the limit with `(value)::int` in SQL: a value written around the
    app's validation would fail each of them (and the idle housekeeping), so it cannot be stored."""
    with pytest.raises(psycopg.errors.CheckViolation):
        with psycopg.connect(os.environ["DATABASE_OWNER_URL"]) as conn:
            conn.execute("select set_config('app.tenant_id', %s, false)", (tenant.id,))
            conn.execute("insert into tenant_settings (tenant_id, key, value) values (%s, 'sessions.max_idle_minutes', %s::jsonb)",
                         (tenant.id, raw))
