"""The app signs in to PostgreSQL with its managed identity's Entra token as the password.

Against the real PostgreSQL: each token the stand-in identity endpoint issues becomes the
password of a real login role, so only the right token, fetched the right way, signs in.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from shared.core import db, entra
from shared.core.errors import ServiceUnavailable
from shared.core.settings import get_settings
from tests.core.identity_endpoint import TOKEN_LIFETIME_S, IdentityEndpoint, identity_endpoint

POSTGRES = entra.POSTGRES_SCOPE.removesuffix("/.default")


def _url_as(role: str, **query: str) -> str:
    parts = urlsplit(os.environ["DATABASE_URL"])
    netloc = f"{role}@{parts.hostname}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "&".join(f"{k}={v}" for k, v in query.items()), ""))


def _admin() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(os.environ["DATABASE_ADMIN_URL"], autocommit=True)


@pytest.fixture
def role() -> Iterator[str]:
    """A login role like the one Azure maps to the managed identity: a member of the app role."""
    name = f"custos_entra_{secrets.token_hex(4)}"
    with _admin() as conn:
        conn.execute(sql.SQL("create role {} login nosuperuser nobypassrls in role {}").format(
            sql.Identifier(name), sql.Identifier(get_settings().database_app_role)))
    yield name
    with _admin() as conn:
        conn.execute("select pg_terminate_backend(pid) from pg_stat_activity where usename = %s", (name,))
        conn.execute(sql.SQL("drop role {}").format(sql.Identifier(name)))


@pytest.fixture
def endpoint(role: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[IdentityEndpoint]:
    """The worker configured for Entra sign-in as `role`, the stand-in issuing its passwords."""

    def make_password(resource: str, token: str) -> None:
        if resource == POSTGRES:
            with _admin() as conn:
                conn.execute(sql.SQL("alter role {} password {}").format(sql.Identifier(role), sql.Literal(token)))

    with identity_endpoint(on_issue=make_password) as ep:
        # The local server has no TLS; the URL's own sslmode wins over entra's verify-full.
        for name, value in {**ep.env(), "DATABASE_AUTH": "entra", "DATABASE_URL": _url_as(role, sslmode="disable"),
                            "DB_POOL_MIN": "1", "DB_CONNECT_TIMEOUT_S": "2"}.items():
            monkeypatch.setenv(name, value)
        _forget_worker_state()
        # The stand-in's tokens live minutes, not an hour: a proportionate margin.
        entra.database_password().margin_s = 60
        try:
            yield ep
        finally:
            _forget_worker_state()


def _forget_worker_state() -> None:
    db.close_pool()
    get_settings.cache_clear()
    entra.reset()


def test_the_pool_signs_in_with_the_identitys_token(endpoint: IdentityEndpoint, role: str) -> None:
    rows = db.one_statement("select current_user as who", ())
    assert rows[0]["who"] == role
    assert [(i.resource, i.client_id) for i in endpoint.issued] == [(POSTGRES, endpoint.client_id)]
    assert endpoint.refused == []


def test_a_token_is_reused_until_it_nears_expiry(endpoint: IdentityEndpoint) -> None:
    pool = db.pool()
    held = [pool.getconn() for _ in range(3)]
    try:
        assert len({c.info.backend_pid for c in held}) == 3
        assert len(endpoint.tokens(POSTGRES)) == 1
    finally:
        for conn in held:
            pool.putconn(conn)


def test_connections_opened_after_a_refresh_use_the_new_token_and_old_ones_keep_working(
    endpoint: IdentityEndpoint, role: str
) -> None:
    now = [time.time()]
    password = entra.database_password()
    password.clock = endpoint.clock = lambda: now[0]
    pool = db.pool()
    pool.wait()
    old = pool.getconn()
    try:
        assert len(endpoint.tokens(POSTGRES)) == 1
        assert pool.get_stats().get("pool_available", 0) == 0  # the next connection is a new one
        # Just past the point where the token is too close to expiry to hand to a new connection.
        now[0] += TOKEN_LIFETIME_S - password.margin_s + 1
        new = pool.getconn()
        try:
            first, second = endpoint.tokens(POSTGRES)
            assert new.info.backend_pid != old.info.backend_pid
            assert new.execute("select current_user as who").fetchone() == {"who": role}
            # The role's password is now the second token: the first no longer signs anyone in,
            # so the new connection can only have used the refreshed one.
            with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
                psycopg.connect(_url_as(role, sslmode="disable"), password=first, connect_timeout=2).close()
            psycopg.connect(_url_as(role, sslmode="disable"), password=second, connect_timeout=2).close()
            # A connection signed in with the old token is still in use.
            assert old.execute("select 1 as one").fetchone() == {"one": 1}
        finally:
            pool.putconn(new)
    finally:
        pool.putconn(old)


def test_an_identity_endpoint_that_refuses_is_a_503_not_a_500(endpoint: IdentityEndpoint) -> None:
    endpoint.failing = True
    with pytest.raises(ServiceUnavailable) as info:
        db.ping(timeout=1)
    assert endpoint.issued == [] and "failing" in endpoint.refused
    assert "database" in str(info.value)


def test_entra_sign_in_verifies_the_servers_name_unless_the_url_says_otherwise(endpoint: IdentityEndpoint) -> None:
    bare = "postgresql://custos-id@custos.postgres.database.azure.com/custos"
    params = entra.connect_params(bare, "entra")
    assert params["sslmode"] == "verify-full" and params["sslrootcert"] == "system"
    assert params["password"] == endpoint.tokens(POSTGRES)[-1]
    assert "sslmode" not in entra.connect_params(bare + "?sslmode=verify-full&sslrootcert=/etc/ca.pem", "entra")


def test_password_sign_in_adds_nothing_and_asks_no_identity_endpoint(endpoint: IdentityEndpoint) -> None:
    assert entra.connect_params(os.environ["DATABASE_URL"], "password") == {}
    assert endpoint.issued == []


def test_threads_that_need_a_token_at_once_share_one_fetch(endpoint: IdentityEndpoint) -> None:
    now = [time.time()]
    endpoint.clock = password_clock = lambda: now[0]
    password = entra.TokenPassword(entra.make_credential(endpoint.client_id), margin_s=60, clock=password_clock)
    first = password()
    now[0] += TOKEN_LIFETIME_S  # expired for everyone at once
    endpoint.latency_s = 0.3
    start = threading.Barrier(8)
    got: list[str] = []

    def connect() -> None:
        start.wait()
        got.append(password())

    threads = [threading.Thread(target=connect) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(endpoint.tokens(POSTGRES)) == 2
    assert set(got) == {endpoint.tokens(POSTGRES)[1]} and first not in got
