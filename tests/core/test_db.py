"""Database: the migration runner, the roles, and row-level security."""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest

from shared.audit import chain as audit
from shared.core import db
from shared.core.errors import ServiceUnavailable
from shared.core.migrate import MigrationError, discover, migrate
from shared.core.settings import get_settings
from shared.identity.guards import principal_for
from shared.identity.tokens import verify_access_token
from shared.tenancy.tenants import Tenant
from tests.conftest import Host, PersonFactory


def _with_db(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


@pytest.fixture
def scratch_db() -> Iterator[str]:
    """A fresh database owned by the owner role; the owner URL pointing at it."""
    name = f"custos_scratch_{uuid.uuid4().hex[:10]}"
    admin = os.environ["DATABASE_ADMIN_URL"]
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'create database "{name}" owner custos_owner')
        conn.execute(f'grant connect on database "{name}" to custos_app')
    yield _with_db(get_settings().database_owner_url, name)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'drop database "{name}" with (force)')


def _applied(url: str) -> list[tuple[int, str]]:
    with psycopg.connect(url) as conn:
        return [(r[0], r[1]) for r in conn.execute("select version, name from schema_migrations order by version")]


def test_migrations_apply_once_when_run_twice(scratch_db: str) -> None:
    first = migrate(scratch_db, "custos_app")
    assert first == [m.name for m in discover()]
    assert migrate(scratch_db, "custos_app") == []
    assert _applied(scratch_db) == [(m.version, m.name) for m in discover()]


def test_migrations_run_concurrently_apply_once(scratch_db: str) -> None:
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(migrate(scratch_db, "custos_app"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(len(r) for r in results) == [0, 0, 0, len(discover())]
    assert _applied(scratch_db) == [(m.version, m.name) for m in discover()]


def test_changed_migration_is_refused(scratch_db: str, tmp_path: Path) -> None:
    (tmp_path / "0001_one.sql").write_text("create table one (id int);")
    migrate(scratch_db, "custos_app", tmp_path)
    (tmp_path / "0001_one.sql").write_text("create table one (id bigint);")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        migrate(scratch_db, "custos_app", tmp_path)


def test_failed_migration_leaves_no_trace(scratch_db: str, tmp_path: Path) -> None:
    (tmp_path / "0001_ok.sql").write_text("create table ok (id int);")
    (tmp_path / "0002_bad.sql").write_text("create table half (id int); select 1/0;")
    with pytest.raises(MigrationError, match="0002_bad.sql failed"):
        migrate(scratch_db, "custos_app", tmp_path)
    assert [v for v, _ in _applied(scratch_db)] == [1]
    with psycopg.connect(scratch_db) as conn:
        assert conn.execute("select to_regclass('half')").fetchone() == (None,)


def test_app_role_is_unprivileged_and_owns_nothing() -> None:
    role = get_settings().database_app_role
    with psycopg.connect(os.environ["DATABASE_ADMIN_URL"]) as conn:
        row = conn.execute(
            "select rolsuper, rolbypassrls, rolcreaterole, rolcreatedb from pg_roles where rolname = %s", (role,)
        ).fetchone()
        assert row == (False, False, False, False)
        owned = conn.execute(
            "select count(*) from pg_class c join pg_roles r on r.oid = c.relowner where r.rolname = %s", (role,)
        ).fetchone()
        assert owned == (0,)


def test_app_connects_as_app_role() -> None:
    with db.platform_tx() as conn:
        assert conn.execute("select current_user as u").fetchone()["u"] == get_settings().database_app_role


def _put(conn: psycopg.Connection, tenant_id: str, key: str) -> None:
    conn.execute(
        "insert into tenant_settings (tenant_id, key, value) values (%s, %s, 'true'::jsonb)", (tenant_id, key)
    )


def test_no_tenant_set_sees_no_rows(tenant: Tenant) -> None:
    with db.tenant_tx(tenant.id) as conn:
        _put(conn, tenant.id, "mfa.required_for_all_roles")
        assert conn.execute("select count(*) as n from tenant_settings").fetchone()["n"] == 1
    with db.platform_tx() as conn:
        assert conn.execute("select count(*) as n from tenant_settings").fetchone()["n"] == 0
    # a pooled connection that once had a tenant set reads '' afterwards, still nothing
    with db.pool().connection() as conn:
        assert conn.execute("select count(*) as n from tenant_settings").fetchone()["n"] == 0


def test_tenant_cannot_read_or_write_another_tenant(tenant: Tenant) -> None:
    from tests.conftest import create_tenant

    with db.platform_tx() as conn:
        other = create_tenant(conn, slug=f"o-{uuid.uuid4().hex[:12]}", name="Other", region="uksouth")
    with db.tenant_tx(other.id) as conn:
        _put(conn, other.id, "mfa.required_for_all_roles")
    with db.tenant_tx(tenant.id) as conn:
        assert conn.execute("select count(*) as n from tenant_settings where tenant_id = %s", (other.id,)).fetchone()["n"] == 0
        updated = conn.execute("update tenant_settings set value = 'false' where tenant_id = %s", (other.id,))
        assert updated.rowcount == 0
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
        with db.tenant_tx(tenant.id) as conn:
            _put(conn, other.id, "display.time_zone")
    with db.tenant_tx(other.id) as conn:
        assert conn.execute("select value from tenant_settings").fetchall() == [{"value": True}]


def test_tenant_setting_does_not_leak_through_savepoints(tenant: Tenant) -> None:
    """The pitfall DESIGN.md names: each tenant_tx is a real top-level transaction."""
    with db.tenant_tx(tenant.id) as conn:
        _put(conn, tenant.id, "mfa.required_for_all_roles")
    with db.pool().connection() as conn:
        with conn.transaction():
            assert conn.execute("select current_setting('app.tenant_id', true) as t").fetchone()["t"] in ("", None)


def test_app_role_cannot_delete_tenants_or_alter_schema(tenant: Tenant) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        with db.platform_tx() as conn:
            conn.execute("delete from tenants where id = %s", (tenant.id,))
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        with db.platform_tx() as conn:
            conn.execute("create table sneaky (id int)")


# --- broken connections, dead servers ---------------------------------------------------------


def _terminate(pids: list[int]) -> None:
    """End these server processes, as a restart or a failover would, and wait until they are gone."""
    with psycopg.connect(os.environ["DATABASE_ADMIN_URL"], autocommit=True) as admin:
        admin.execute("select pg_terminate_backend(pid, 5000) from unnest(%s::int[]) pid", (pids,))


def _drop_every_pooled_connection() -> None:
    p = db.pool()
    conns = [p.getconn() for _ in range(p.max_size)]
    pids = [c.info.backend_pid for c in conns]
    for c in conns:
        p.putconn(c)
    _terminate(pids)


def test_a_transaction_survives_the_server_dropping_every_pooled_connection(tenant: Tenant) -> None:
    """No connection check on checkout: the retry rule catches the broken first statement."""
    _drop_every_pooled_connection()
    with db.tenant_tx(tenant.id) as conn:
        assert conn.execute("select current_setting('app.tenant_id') as t").fetchone()["t"] == tenant.id


def test_authentication_survives_the_server_dropping_every_pooled_connection(
    tenant: Tenant, make_person: PersonFactory,
) -> None:
    person = make_person(tenant.id, "VIEWER")
    _drop_every_pooled_connection()
    principal = principal_for(verify_access_token(person.token), audit.RequestMeta())
    assert principal.user_id == person.id


def test_a_connection_broken_inside_the_work_is_a_503_and_the_work_is_not_repeated(tenant: Tenant) -> None:
    """Only the first statement is retried: a unit that has started is never run twice."""
    runs = 0
    with pytest.raises(ServiceUnavailable):
        with db.tenant_tx(tenant.id) as conn:
            runs += 1
            conn.execute("insert into tenant_settings (tenant_id, key, value) values (%s, 'x.broken', '1')",
                         (tenant.id,))
            _terminate([conn.info.backend_pid])
            conn.execute("select 1")
    assert runs == 1
    with db.tenant_tx(tenant.id) as conn:
        assert conn.execute("select count(*) as n from tenant_settings where key = 'x.broken'").fetchone()["n"] == 0


def test_app_connections_carry_the_statement_timeout(tenant: Tenant) -> None:
    expected = int(get_settings().db_statement_timeout_s * 1000)
    with db.tenant_tx(tenant.id) as conn:
        row = conn.execute("select setting::int as ms from pg_settings where name = 'statement_timeout'").fetchone()
    assert row["ms"] == expected > 0


@pytest.fixture
def silent_database() -> Iterator[str]:
    """A DATABASE_URL whose server accepts TCP connections and never says a word."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    parts = urlsplit(get_settings().database_url)
    netloc = f"{parts.username}:{parts.password}@127.0.0.1:{listener.getsockname()[1]}"
    try:
        yield urlunsplit(parts._replace(netloc=netloc))
    finally:
        listener.close()
        for s in held:
            s.close()


def test_health_answers_503_when_the_database_never_answers(silent_database: str) -> None:
    """Bounded waits: the request returns with a 503 instead of hanging on the database.
    (How fast is measured, not asserted: see bench/.)"""
    h = Host(env={"DATABASE_URL": silent_database})
    try:
        with httpx.Client(base_url=h.url, timeout=15) as c:
            resp = c.get("/api/health")
        assert resp.status_code == 503
        assert resp.json()["components"]["database"] == "unavailable"
    finally:
        h.stop()


# --- one snapshot on several connections (a long audit walk in pieces) --------------------------


def _checked_out() -> int:
    stats = db.pool().get_stats()
    return stats.get("pool_size", 0) - stats.get("pool_available", 0)


def test_sibling_transactions_see_exactly_the_snapshot_of_theirs(tenant: Tenant, make_person: PersonFactory) -> None:
    """Rows committed after the snapshot was taken are invisible to the siblings opened after
    the commit; the siblings are read-only and in the tenant; all go back to the pool."""
    make_person(tenant.id, "VIEWER")
    with db.tenant_snapshot_tx(tenant.id) as conn:
        before = conn.execute("select count(*) as n from users").fetchone()["n"]
        make_person(tenant.id, "VIEWER")  # committed meanwhile, by another connection
        with db.sibling_txs(conn, tenant.id, 2) as siblings:
            assert len(siblings) == 2
            for sibling in siblings:
                row = sibling.execute("select count(*) as n, current_setting('app.tenant_id') as tid from users").fetchone()
                assert row is not None and (row["n"], row["tid"]) == (before, tenant.id)
                with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                    sibling.execute("update users set display_name = 'x'")
        assert conn.execute("select count(*) as n from users").fetchone()["n"] == before
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("update users set display_name = 'x'")
    with db.tenant_tx(tenant.id) as conn:
        assert conn.execute("select count(*) as n from users").fetchone()["n"] == before + 1
    assert _checked_out() == 0


def test_a_busy_pool_gives_fewer_siblings_and_nothing_waits_long(tenant: Tenant) -> None:
    p = db.pool()
    with db.tenant_snapshot_tx(tenant.id) as conn:
        held = [p.getconn() for _ in range(p.max_size - 1)]  # every connection but conn's
        try:
            with db.sibling_txs(conn, tenant.id, 2, wait_s=0.2) as siblings:
                assert siblings == []
        finally:
            for c in held:
                p.putconn(c)
        with db.sibling_txs(conn, tenant.id, p.max_size + 3, wait_s=0.2) as siblings:
            assert len(siblings) == p.max_size - 1  # as many as there are
    assert _checked_out() == 0


def test_a_snapshot_that_ended_gives_no_siblings(tenant: Tenant) -> None:
    """Outside a transaction the exported snapshot ends with its own statement: no sibling can
    import it, so none is given (the caller walks alone), and every connection goes back."""
    p = db.pool()
    conn = p.getconn()
    try:
        with db.sibling_txs(conn, tenant.id, 2, wait_s=0.2) as siblings:
            assert siblings == []
    finally:
        p.putconn(conn)
    assert _checked_out() == 0
