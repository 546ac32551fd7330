"""PostgreSQL access: one lazily created pool per worker, tenant-scoped transactions.

Pool connections are autocommit, and every unit of work opens an explicit top-level
transaction. That matters for row-level security: `set_config('app.tenant_id', ..., true)`
is transaction-local, and on a non-autocommit connection a nested `conn.transaction()` is
only a savepoint in which a tenant set earlier would still be in force.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from shared.core.errors import ConcurrentChange, Conflict, InvalidValue, ServiceUnavailable
from shared.core.settings import get_settings

log = logging.getLogger("custos.db")

Conn = psycopg.Connection[DictRow]
"""A pooled connection: autocommit, rows as dicts."""

_pool: ConnectionPool[Conn] | None = None
_pool_lock = threading.Lock()


def pool() -> ConnectionPool[Conn]:
    """The worker's pool, created on first use (never at import)."""
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                s = get_settings()
                p: ConnectionPool[Conn] = ConnectionPool(
                    s.database_url,
                    min_size=s.db_pool_min,
                    max_size=s.db_pool_max,
                    kwargs={"autocommit": True, "row_factory": dict_row, "connect_timeout": 5},
                    check=ConnectionPool.check_connection,
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
def _connection(timeout: float | None = None) -> Iterator[Conn]:
    try:
        with pool().connection(timeout=timeout) as conn:
            yield conn
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


@contextmanager
def tenant_tx(tenant_id: uuid.UUID | str) -> Iterator[Conn]:
    """A top-level transaction in which row-level security admits exactly one tenant."""
    tid = str(uuid.UUID(str(tenant_id)))
    with _connection() as conn, conn.transaction():
        conn.execute("select set_config('app.tenant_id', %s, true)", (tid,))
        yield conn


@contextmanager
def platform_tx() -> Iterator[Conn]:
    """A top-level transaction with no tenant set: tenant tables show no rows in it."""
    with _connection() as conn, conn.transaction():
        conn.execute("select set_config('app.tenant_id', '', true)")
        yield conn


def ping(timeout: float = 2.0) -> None:
    """Raises ServiceUnavailable when the database cannot answer `select 1` in time."""
    with _connection(timeout=timeout) as conn:
        conn.execute("select 1")
