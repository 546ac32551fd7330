"""PostgreSQL access: one lazily created pool per worker, tenant-scoped transactions.

Pool connections are autocommit, and every unit of work opens an explicit top-level
transaction. That matters for row-level security: `set_config('app.tenant_id', ..., true)`
is transaction-local, and on a non-autocommit connection a nested `conn.transaction()` is
only a savepoint in which a tenant set earlier would still be in force.

Round trips are the cost of a request here, so none is spent needlessly:

- A transaction opens with one message, `begin; select set_config(...)` (simple query
  protocol, the tenant id a validated UUID literal), not two.
- The pool does not check a connection on every checkout (a `select 1` round trip each
  time). Instead, the retry rule: when the *first* statement of a checkout fails because the
  connection is broken (`conn.broken`: the server closed it, a failover, an idle cut), the
  connection is discarded, the pool's idle connections are tested (their siblings are
  usually broken too), and the unit of work starts once more on another one. Nothing of
  the unit had been done yet (only `begin` and `set_config`, or one statement the caller
  declares safe to repeat), so repeating it cannot apply anything twice. A failure after
  that, or a second broken connection, is a 503 `service-unavailable`.
- Bounded waits: libpq's `connect_timeout`, TCP keepalives and `tcp_user_timeout` end a
  connection to a dead server in seconds, and a server-side `statement_timeout` ends a
  runaway statement (see docs/security.md).
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

if TYPE_CHECKING:
    # psycopg and psycopg_pool load with the first pool (`pool()`) or unit of work, not at
    # import: indexing the app needs neither (bench/startup.py measures it).
    import psycopg
    from psycopg.rows import DictRow
    from psycopg_pool import ConnectionPool

from shared.core import entra
from shared.core.errors import ConcurrentChange, Conflict, InvalidValue, ServiceUnavailable
from shared.core.settings import get_settings

log = logging.getLogger("custos.db")

Conn: TypeAlias = "psycopg.Connection[DictRow]"
"""A pooled connection: autocommit, rows as dicts (a name for type checking only)."""

T = TypeVar("T")

_pool: ConnectionPool[Conn] | None = None
_pool_lock = threading.Lock()

TCP_USER_TIMEOUT_MS = 10_000
"""Unacknowledged data older than this ends the connection (a server gone from the network)."""


def connect_kwargs() -> dict[str, Any]:
    """libpq and psycopg options of a new pooled connection (timeouts: see the module doc), with
    the Entra token as its password when `DATABASE_AUTH=entra`.

    Raises:
        azure.core.exceptions.ClientAuthenticationError: no token could be had (the pool retries).
    """
    from psycopg.rows import dict_row

    s = get_settings()
    kwargs: dict[str, Any] = {
        "autocommit": True,
        "row_factory": dict_row,
        # libpq counts whole seconds, and at least 2.
        "connect_timeout": max(2, round(s.db_connect_timeout_s)),
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 5,
        "keepalives_count": 3,
        "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
    }
    if s.db_statement_timeout_s:
        kwargs["options"] = f"-c statement_timeout={int(s.db_statement_timeout_s * 1000)}"
    # Entra: this connection's password is the identity's current token (shared/core/entra.py).
    kwargs.update(entra.connect_params(s.database_url, s.database_auth))
    return kwargs


def pool() -> ConnectionPool[Conn]:
    """The worker's pool, created on first use (never at import)."""
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                from psycopg_pool import ConnectionPool

                s = get_settings()
                p: ConnectionPool[Conn] = ConnectionPool(
                    s.database_url,
                    min_size=s.db_pool_min,
                    max_size=s.db_pool_max,
                    kwargs=connect_kwargs,  # called for each new connection: a token is fetched when due
                    # No `check`: a broken connection is caught by the retry rule instead
                    # of a `select 1` round trip on every checkout.
                    timeout=s.db_connect_timeout_s,
                    name="custos",
                    open=False,
                )
                p.open(wait=False)
                _pool = p
    return _pool


def close_pool() -> None:
    global _pool
    with _pool_lock:
        if _pool is not None:
            _pool.close()
            _pool = None


@contextmanager
def _mapped_errors() -> Iterator[None]:
    """Database errors as the application's: the client's fault, a conflict, or a 503."""
    import psycopg
    from psycopg_pool import PoolTimeout  # loads with the first unit of work, as the pool does

    try:
        yield
    except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure) as exc:
        raise ConcurrentChange("a concurrent change got in the way: try again") from exc
    except (PoolTimeout, psycopg.OperationalError) as exc:
        raise ServiceUnavailable("the database is unavailable", component="database") from exc
    except (psycopg.errors.UniqueViolation, psycopg.errors.ExclusionViolation) as exc:
        raise Conflict("the value conflicts with one that exists") from exc
    except (psycopg.DataError, psycopg.errors.CheckViolation, psycopg.errors.NotNullViolation,
            psycopg.errors.ForeignKeyViolation) as exc:
        # Input the database cannot hold (a date out of range, a blank name against a check
        # constraint): the client's problem, never a 500. Which constraint is logged, not shown.
        log.warning("database refused a value: %s %s", exc.sqlstate, type(exc).__name__)
        raise InvalidValue("a value is out of range or breaks a rule of the data") from exc


def first_statement(first: Callable[[Conn], T], *, timeout: float | None = None) -> tuple[Conn, T]:
    """Check out a connection and run `first` on it, under the retry rule: when `first` fails
    because the connection is broken, that connection is discarded and `first` runs once more
    on another. Returns the connection (give it back with `pool().putconn`) and `first`'s
    result. Not for general use: `tenant_tx`, `platform_tx` and `one_statement` are.

    `first` must be safe to run twice (it is, when it is the first thing a unit of work does).

    Raises:
        psycopg.OperationalError: the second connection is broken too, or `first` failed
            otherwise (the caller maps it).
        PoolTimeout: no connection within `timeout` (default: the pool's).
    """
    import psycopg

    p = pool()
    for attempt in (1, 2):
        conn = p.getconn(timeout=timeout)
        try:
            return conn, first(conn)
        except BaseException as exc:
            p.putconn(conn)  # a broken connection is discarded by the pool, not reused
            if attempt == 2 or not (isinstance(exc, psycopg.OperationalError) and conn.broken):
                raise
            # One broken connection usually means all of its siblings are too (a restart, a
            # failover): test the idle ones now, so the retry gets a working connection
            # rather than the next dead one.
            log.info("database connection was broken before its first statement: retrying once")
            p.check()
    raise AssertionError("unreachable")


@contextmanager
def _transaction(begin: str) -> Iterator[Conn]:
    with _mapped_errors():
        conn, _ = first_statement(lambda c: c.execute(begin))
    with held_tx(conn) as held:
        yield held


@contextmanager
def held_tx(conn: Conn) -> Iterator[Conn]:
    """The rest of a transaction already open on `conn` (see `open_tenant_tx`): committed when
    the block ends, rolled back when it raises; the connection goes back to the pool either way.

    Raises:
        ServiceUnavailable, Conflict, ConcurrentChange, InvalidValue: see `_mapped_errors`.
    """
    with _mapped_errors():
        try:
            try:
                yield conn
            except BaseException:
                if not conn.broken:
                    import psycopg

                    with suppress(psycopg.Error):  # the error that got us here is the one to report
                        conn.rollback()
                raise
            conn.commit()
        finally:
            pool().putconn(conn)


def tenant_tx(tenant_id: uuid.UUID | str) -> AbstractContextManager[Conn]:
    """A top-level transaction in which row-level security admits exactly one tenant.

    Raises:
        ValueError: `tenant_id` is not a UUID.
        ServiceUnavailable: the database cannot be reached (after the retry rule).
    """
    tid = str(uuid.UUID(str(tenant_id)))  # a UUID's text: safe as a literal below
    return _transaction(f"begin; select set_config('app.tenant_id', '{tid}', true)")


def open_tenant_tx(tenant_id: uuid.UUID | str, then: str) -> tuple[Conn, list[DictRow]]:
    """Open a tenant transaction and run `then` in it, in ONE message: `begin; select
    set_config(...); <then>`. Returns the connection, still inside the transaction (finish it
    with `held_tx` or `release`), and the rows of `then`'s last statement.

    For the statement that authenticates a request, so the request's own tenant transaction
    costs no round trip of its own. `then` travels in the simple query protocol, so it takes
    no parameters: every value in it must be a literal the caller has validated (UUIDs,
    integers, constants). It runs under the retry rule, so it must not write.

    Raises:
        ValueError: `tenant_id` is not a UUID.
        ServiceUnavailable: the database cannot be reached (after the retry rule).
    """
    tid = str(uuid.UUID(str(tenant_id)))

    def first(c: Conn) -> list[DictRow]:
        cur = c.execute(f"begin; select set_config('app.tenant_id', '{tid}', true); {then}")
        while cur.nextset():
            pass
        return cur.fetchall()

    with _mapped_errors():
        return first_statement(first)


def commit_with(conn: Conn, *statements: tuple[str, dict[str, Any] | tuple[Any, ...]]) -> list[list[DictRow]]:
    """Run a transaction's LAST statements and commit, all in one round trip (a pipeline of the
    statements and COMMIT, one Sync), and return each statement's rows. The enclosing
    `tenant_tx` or `held_tx` then finds nothing left to commit. If a statement fails, the
    pipeline stops there: nothing after it runs, nothing commits, and the error is raised.

    Raises:
        psycopg.Error: a statement or the commit failed (the enclosing transaction maps it).
    """
    with conn.pipeline():
        cursors = [conn.execute(query, params) for query, params in statements]
        conn.execute("commit")
    return [cur.fetchall() for cur in cursors]


def release(conn: Conn) -> None:
    """End a transaction opened by `open_tenant_tx` that nobody used, and give the connection back.

    Raises:
        ServiceUnavailable: the database went away meanwhile.
    """
    import psycopg

    with _mapped_errors():
        try:
            if not conn.broken:
                with suppress(psycopg.Error):  # only begin and reads ran in it: nothing to lose
                    conn.rollback()
        finally:
            pool().putconn(conn)


def platform_tx() -> AbstractContextManager[Conn]:
    """A top-level transaction with no tenant set: tenant tables show no rows in it.

    Raises:
        ServiceUnavailable: the database cannot be reached (after the retry rule).
    """
    return _transaction("begin; select set_config('app.tenant_id', '', true)")


def one_statement(query: str, params: dict[str, Any] | tuple[Any, ...]) -> list[DictRow]:
    """Run one statement that is its own transaction (autocommit), in one round trip, and
    return its rows. Under the retry rule, so the statement must be safe to run twice (a read,
    or a write that repeats harmlessly, like recording a session's activity).

    Raises:
        ServiceUnavailable: the database cannot be reached (after the retry rule).
    """
    with _mapped_errors():
        conn, rows = first_statement(lambda c: c.execute(query, params).fetchall())
        pool().putconn(conn)
    return rows


@contextmanager
def savepoint_or_conflict(conn: Conn, message: str | Callable[[Exception], Exception]) -> Iterator[None]:
    """A savepoint in which a unique violation becomes `Conflict(message)`, or the error
    `message(violation)` makes (the rest of the transaction goes on); for inserts and
    renames whose natural key may already exist.

    Raises:
        Conflict: a unique constraint refused a row (or what `message` made of it).
    """
    from psycopg.errors import UniqueViolation

    try:
        with conn.transaction():
            yield
    except UniqueViolation as exc:
        raise (Conflict(message) if isinstance(message, str) else message(exc)) from None


def jsonb(value: Any) -> Any:
    """`value` as a jsonb query parameter (psycopg's `Jsonb`, loaded with the first use)."""
    from psycopg.types.json import Jsonb

    return Jsonb(value)


def ping(timeout: float = 2.0) -> None:
    """Raises ServiceUnavailable when the database cannot answer `select 1` in time."""
    with _mapped_errors():
        conn, _ = first_statement(lambda c: c.execute("select 1"), timeout=timeout)
        pool().putconn(conn)


def tenant_snapshot_tx(tenant_id: uuid.UUID | str) -> AbstractContextManager[Conn]:
    """A READ ONLY, REPEATABLE READ transaction in one tenant: every statement in it sees
    the same snapshot, taken at its first query (for exports that read many tables).

    Raises:
        ValueError: `tenant_id` is not a UUID.
        ServiceUnavailable: the database cannot be reached (after the retry rule).
    """
    tid = str(uuid.UUID(str(tenant_id)))
    return _transaction(
        f"begin isolation level repeatable read read only; select set_config('app.tenant_id', '{tid}', true)"
    )


_SNAPSHOT_ID = re.compile(r"[0-9A-F]+-[0-9A-F]+-[0-9]+")


@contextmanager
def sibling_txs(conn: Conn, tenant_id: uuid.UUID | str, count: int, *, wait_s: float = 1.0) -> Iterator[list[Conn]]:
    """Up to `count` more read-only transactions in `tenant_id` that see exactly what `conn`'s
    `tenant_snapshot_tx` sees (`pg_export_snapshot`, then `SET TRANSACTION SNAPSHOT` in each), for
    reading one large thing in parallel pieces. Each waits at most `wait_s` for a pool
    connection; fewer (or none) are given when the pool is busy or a connection is broken,
    so the caller must cope with any number. All are rolled back and given back at the end.

    Raises:
        ValueError: `tenant_id` is not a UUID.
        ServiceUnavailable: `conn` is no longer usable.
    """
    import psycopg
    from psycopg_pool import PoolTimeout

    tid = str(uuid.UUID(str(tenant_id)))
    with _mapped_errors():
        row = conn.execute("select pg_export_snapshot() as id").fetchone()
    snapshot = str(row["id"]) if row else ""
    if not _SNAPSHOT_ID.fullmatch(snapshot):  # the server's own format; never interpolate anything else
        raise ServiceUnavailable("the database gave no usable snapshot", component="database")
    p, siblings = pool(), []
    try:
        for _ in range(count):
            try:
                sibling = p.getconn(timeout=wait_s)
            except PoolTimeout:
                break
            try:
                sibling.execute(f"begin isolation level repeatable read read only; set transaction snapshot '{snapshot}';"
                                f" select set_config('app.tenant_id', '{tid}', true)")
            except psycopg.Error:
                p.putconn(sibling)
                log.warning("a sibling transaction could not share the snapshot: going on with fewer")
                continue
            siblings.append(sibling)
        yield siblings
    finally:
        for sibling in siblings:
            if not sibling.broken:
                with suppress(psycopg.Error):
                    sibling.rollback()
            p.putconn(sibling)
