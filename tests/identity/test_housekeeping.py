"""shared.identity.housekeeping against real PostgreSQL and Azurite, and its timer through the
real host: exactly the expired rows go, live ones stay, a live throttle still refuses."""

from __future__ import annotations

import hashlib
import os
import socket
import uuid
from datetime import datetime, timedelta

import httpx
import pytest
from azure.data.tables import TableClient

from shared.audit import chain as audit
from shared.core import db, health, storage
from shared.core.errors import TooManyRequests
from shared.identity import housekeeping
from shared.identity.mfa import passkeys
from shared.identity.ratelimit import FAMILIES, TABLE, Policy, RowKeys, Throttle, login_keys
from shared.tenancy.tenant_settings import put_setting
from shared.tenancy.tenants import Tenant
from tests.conftest import create_operator, create_operator_session, create_session_row, create_user

POLICY = Policy(threshold_email_ip=3, threshold_ip=6, threshold_email=10, window_s=600, delay_base_s=60, delay_max_s=600)


def db_now() -> datetime:
    return db.one_statement("select now() as now", ())[0]["now"]  # type: ignore[no-any-return]


def fake_hash() -> str:
    return hashlib.sha256(os.urandom(16)).hexdigest()


def throttle() -> Throttle:
    table = storage.table_service().get_table_client(TABLE)
    return Throttle(table=table, policies=dict.fromkeys(FAMILIES, POLICY), keys=RowKeys(current=os.urandom(32)))


def insert(tenant_id: str, sql: str, params: tuple) -> str:
    with db.tenant_tx(tenant_id) as conn:
        return conn.execute(sql + " returning id::text as id", params).fetchone()["id"]


def ticket(tenant_id: str, user_id: str, *, created: datetime, expires: datetime, used: datetime | None = None) -> str:
    return insert(tenant_id, """insert into mfa_tickets (tenant_id, user_id, ticket_hash, created_at, expires_at, used_at)
                                values (%s, %s, %s, %s, %s, %s)""",
                  (tenant_id, user_id, fake_hash(), created, expires, used))


def reset(tenant_id: str, user_id: str, *, expires: datetime, used: datetime | None = None) -> str:
    return insert(tenant_id, """insert into password_resets (tenant_id, user_id, token_hash, expires_at, used_at)
                                values (%s, %s, %s, %s, %s)""", (tenant_id, user_id, fake_hash(), expires, used))


def invitation(tenant_id: str, user_id: str, *, expires: datetime, used: datetime | None = None,
               revoked: datetime | None = None) -> str:
    return insert(tenant_id, """insert into invitations (tenant_id, user_id, token_hash, expires_at, used_at, revoked_at)
                                values (%s, %s, %s, %s, %s, %s)""",
                  (tenant_id, user_id, fake_hash(), expires, used, revoked))


def mail(tenant_id: str, *, created: datetime, sent: datetime | None) -> str:
    return insert(tenant_id, """insert into outbox (tenant_id, to_address, subject, body, kind, created_at, sent_at)
                                values (%s, 'a@example.test', 'Subject', '', 'test', %s, %s)""",
                  (tenant_id, created, sent))


def remaining(tenant_id: str, table: str, ids: list[str]) -> list[bool]:
    with db.tenant_tx(tenant_id) as conn:
        found = {r["id"] for r in conn.execute(f"select id::text as id from {table} where id = any(%s::uuid[])",
                                               (ids,)).fetchall()}
    return [i in found for i in ids]


def other_tenant() -> Tenant:
    from shared.tenancy.tenants import create_tenant

    with db.platform_tx() as conn:
        return create_tenant(conn, slug=f"t-{uuid.uuid4().hex[:12]}", name="Other Tenant", region="uksouth")


def test_housekeeping_removes_exactly_what_has_expired_in_every_tenant(tenant: Tenant) -> None:
    now = db_now()
    day, minute = timedelta(days=1), timedelta(minutes=1)
    tenants = [tenant, other_tenant()]
    gone: dict[str, list[tuple[str, str]]] = {t.id: [] for t in tenants}
    kept: dict[str, list[tuple[str, str]]] = {t.id: [] for t in tenants}
    for t in tenants:
        user = create_user(t.id, "OPERATOR")["id"]
        gone[t.id] += [
            ("mfa_tickets", ticket(t.id, user, created=now - day, expires=now - minute)),
            ("mfa_tickets", ticket(t.id, user, created=now - minute, expires=now + minute, used=now - minute)),
            ("mfa_tickets", ticket(t.id, user, created=now - day, expires=now)),  # expiring this instant is expired
            ("password_resets", reset(t.id, user, expires=now - minute)),
            ("password_resets", reset(t.id, user, expires=now + day, used=now - minute)),
            ("invitations", invitation(t.id, user, expires=now - minute)),
            ("invitations", invitation(t.id, user, expires=now + day, used=now - minute)),
            ("invitations", invitation(t.id, user, expires=now + day, revoked=now - minute)),
            ("outbox", mail(t.id, created=now - 40 * day, sent=now - 31 * day)),
        ]
        kept[t.id] += [
            ("mfa_tickets", ticket(t.id, user, created=now - minute, expires=now + minute)),
            ("password_resets", reset(t.id, user, expires=now + minute)),
            ("invitations", invitation(t.id, user, expires=now + minute)),
            ("outbox", mail(t.id, created=now - 40 * day, sent=now - 29 * day)),  # sent, but within 30 days
            ("outbox", mail(t.id, created=now - 400 * day, sent=None)),           # never sent: never deleted
        ]

    report = housekeeping.run(now=now, throttle=throttle())

    assert report.ok, report.errors
    for t in tenants:
        for table in ("mfa_tickets", "password_resets", "invitations", "outbox"):
            assert remaining(t.id, table, [i for k, i in gone[t.id] if k == table]) == [False] * sum(
                1 for k, _ in gone[t.id] if k == table), table
            assert all(remaining(t.id, table, [i for k, i in kept[t.id] if k == table])), table
        with db.tenant_tx(t.id) as conn:
            events = audit.list_events(conn, action="housekeeping.purged")
        assert events and events[-1]["actor_type"] == "system"
        assert events[-1]["after"]["deleted"] == {"mfa_tickets": 3, "password_resets": 2, "invitations": 3, "outbox": 1}
    for kind in ("mfa_tickets", "password_resets", "invitations", "outbox"):
        assert report.counts[kind] >= sum(1 for t in tenants for k, _ in gone[t.id] if k == kind)


def test_a_second_run_finds_nothing_more_to_delete_and_writes_no_event(tenant: Tenant) -> None:
    now = db_now()
    user = create_user(tenant.id, "OPERATOR")["id"]
    reset(tenant.id, user, expires=now - timedelta(minutes=1))
    housekeeping.run(now=now, throttle=throttle())
    with db.tenant_tx(tenant.id) as conn:
        before = len(audit.list_events(conn, action="housekeeping.purged"))
    housekeeping.purge_tenant(tenant.id, now=now, outbox_days=30)
    with db.tenant_tx(tenant.id) as conn:
        assert len(audit.list_events(conn, action="housekeeping.purged")) == before == 1


def test_expired_throttle_rows_go_and_a_live_lockout_still_refuses() -> None:
    th = throttle()
    now = db_now()
    t = now.timestamp()
    stale = login_keys(email="stale@example.test", ip="198.51.100.7", tenant=str(uuid.uuid4()))
    th.attempt("login", stale, now=t - POLICY.window_s - 1)
    locked = login_keys(email="victim@example.test", ip="198.51.100.8", tenant=str(uuid.uuid4()))
    for _ in range(POLICY.threshold_email_ip):
        th.attempt("login", locked, now=t - 10)  # delayed until t + 50

    report = housekeeping.run(now=now, throttle=th)

    assert report.counts["throttle_rows"] >= 3
    table = storage.table_service().get_table_client(TABLE)
    rows = {e["RowKey"] for e in table.query_entities("PartitionKey eq 'login'", select=["RowKey"])}
    assert not {th.row_key("login", k) for k in stale} & rows
    assert {th.row_key("login", k) for k in locked} <= rows
    with pytest.raises(TooManyRequests):
        th.attempt("login", locked, now=t)


def test_expired_webauthn_challenges_go_and_live_ones_stay() -> None:
    now = db_now()
    stale = passkeys.new_challenge(purpose="passwordless", now=now.timestamp() - 3600)
    live = passkeys.new_challenge(purpose="passwordless", now=now.timestamp())
    assert housekeeping.run(now=now, throttle=throttle()).counts["webauthn_challenges"] >= 1
    with pytest.raises(passkeys.ChallengeUnknown):
        passkeys.take_challenge(stale.id, purpose="passwordless")
    assert passkeys.take_challenge(live.id, purpose="passwordless").id == live.id


def set_idle_limit(tenant_id: str, minutes: int) -> None:
    with db.tenant_tx(tenant_id) as conn:
        put_setting(conn, tenant_id=tenant_id, key="sessions.max_idle_minutes", value=minutes, actor_id=None)


def idle_for(tenant_id: str, session_id: str, minutes: int) -> None:
    with db.tenant_tx(tenant_id) as conn:
        conn.execute("update sessions set last_seen_at = now() - make_interval(mins => %s) where id = %s",
                     (minutes, session_id))


def revoked(tenant_id: str, session_id: str) -> tuple[object, object]:
    with db.tenant_tx(tenant_id) as conn:
        row = conn.execute("select revoked_at, revoked_reason from sessions where id = %s", (session_id,)).fetchone()
    return row["revoked_at"], row["revoked_reason"]


def test_sessions_idle_past_their_tenants_limit_are_ended_and_audited(tenant: Tenant) -> None:
    set_idle_limit(tenant.id, 30)
    user = create_user(tenant.id, "OPERATOR")["id"]
    idle, active = create_session_row(tenant.id, user), create_session_row(tenant.id, user)
    idle_for(tenant.id, idle, 31)
    idle_for(tenant.id, active, 29)
    unlimited = other_tenant()
    other_user = create_user(unlimited.id, "OPERATOR")["id"]
    no_limit = create_session_row(unlimited.id, other_user)
    idle_for(unlimited.id, no_limit, 10_000)

    report = housekeeping.run(throttle=throttle())

    assert report.counts["idle_sessions"] >= 1
    assert revoked(tenant.id, idle)[1] == "idle"
    assert revoked(tenant.id, active) == (None, None)
    assert revoked(unlimited.id, no_limit) == (None, None)
    with db.tenant_tx(tenant.id) as conn:
        events = audit.list_events(conn, action="session.expired")
    assert [e["target_id"] for e in events] == [idle]
    housekeeping.run(throttle=throttle())  # ended once: a second run writes no second event
    with db.tenant_tx(tenant.id) as conn:
        assert len(audit.list_events(conn, action="session.expired")) == 1


def test_operator_tickets_and_idle_operator_sessions(tenant: Tenant) -> None:
    from shared.core.settings import get_settings

    operator = create_operator()
    now = db_now()
    with db.platform_tx() as conn:
        expired, live = (conn.execute(
            """insert into operator_mfa_tickets (operator_id, ticket_hash, created_at, expires_at)
               values (%s, %s, %s, %s) returning id::text as id""",
            (operator["id"], fake_hash(), now - timedelta(hours=1), expires)).fetchone()["id"]
            for expires in (now - timedelta(seconds=1), now + timedelta(minutes=5)))
    idle, active = create_operator_session(operator["id"]), create_operator_session(operator["id"])
    limit = get_settings().operator_session_max_idle_minutes
    with db.platform_tx() as conn:
        conn.execute("update operator_sessions set last_seen_at = now() - make_interval(mins => %s) where id = %s",
                     (limit + 1, idle))

    report = housekeeping.run(now=now, throttle=throttle())

    assert report.counts["operator_mfa_tickets"] >= 1 and report.counts["operator_idle_sessions"] >= 1
    with db.platform_tx() as conn:
        tickets = {r["id"] for r in conn.execute("select id::text as id from operator_mfa_tickets where id = any(%s::uuid[])",
                                                 ([expired, live],)).fetchall()}
        sessions = {r["id"]: r["revoked_reason"] for r in conn.execute(
            "select id::text as id, revoked_reason from operator_sessions where id = any(%s::uuid[])",
            ([idle, active],)).fetchall()}
    assert tickets == {live}
    assert sessions == {idle: "idle", active: None}


def test_a_failing_step_is_reported_and_the_others_still_run(tenant: Tenant) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = TableClient.from_connection_string(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UOm5uD5WazFLtKt7rHkIJCvJMQGUuL8nAuB8w==;"
        f"TableEndpoint=http://127.0.0.1:{port}/devstoreaccount1;",
        table_name=TABLE,
    )
    now = db_now()
    user = create_user(tenant.id, "OPERATOR")["id"]
    expired = reset(tenant.id, user, expires=now - timedelta(minutes=1))

    report = housekeeping.run(now=now, throttle=Throttle(table=dead, policies=dict.fromkeys(FAMILIES, POLICY),
                                                          keys=RowKeys(current=os.urandom(32))))

    assert report.errors == {"throttle_rows": "ServiceUnavailable"}
    assert not report.ok and "failed: throttle_rows (ServiceUnavailable)" in report.detail()
    assert remaining(tenant.id, "password_resets", [expired]) == [False]


def test_the_timer_runs_through_the_admin_endpoint_and_records_its_counts(client: httpx.Client, tenant: Tenant) -> None:
    now = db_now()
    user = create_user(tenant.id, "OPERATOR")["id"]
    expired = reset(tenant.id, user, expires=now - timedelta(minutes=1))
    stale = passkeys.new_challenge(purpose="passwordless", now=now.timestamp() - 3600)

    assert client.post("/admin/functions/housekeeping").status_code == 202

    assert remaining(tenant.id, "password_resets", [expired]) == [False]
    with pytest.raises(passkeys.ChallengeUnknown):
        passkeys.take_challenge(stale.id, purpose="passwordless")
    beat = health.heartbeats()["housekeeping"]
    assert beat["ok"] is True
    with db.platform_tx() as conn:
        detail = conn.execute("select detail from job_heartbeats where name = 'housekeeping'").fetchone()["detail"]
    assert "password_resets=" in detail and "webauthn_challenges=" in detail
