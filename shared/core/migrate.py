"""Migration runner: numbered SQL files, applied once each, in order, under an advisory lock.

Files are `shared/core/migrations/NNNN_name.sql`. Each runs in its own transaction together with
its `schema_migrations` row, so a failed file leaves no trace. A session-level advisory
lock serializes concurrent runners (two deploy slots, two developers): the second waits,
then finds everything applied. A file edited after it was applied is refused, because the
database would no longer match the repository.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
LOCK_KEY = 0x637573746F73  # "custos"
APP_GROUP_ROLE = "custos_app_rw"
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class MigrationError(RuntimeError):
    """A migration file is malformed, was changed after being applied, or failed."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Migration files in version order.

    Raises:
        MigrationError: a file name is not `NNNN_name.sql` or a version repeats.
    """
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"{path.name}: version {version} appears twice")
        found[version] = Migration(version, path.name, path.read_text())
    return [found[v] for v in sorted(found)]


def migrate(owner_url: str, app_role: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending migrations as the owner role; returns the names applied now.

    Raises:
        MigrationError: as `discover`, or an applied file changed, or a file failed.
    """
    migrations = discover(directory)
    applied_now: list[str] = []
    with psycopg.connect(owner_url, autocommit=True) as conn:
        conn.execute("select pg_advisory_lock(%s)", (LOCK_KEY,))
        try:
            conn.execute(
                """create table if not exists schema_migrations (
                       version integer primary key,
                       name text not null,
                       checksum text not null,
                       applied_at timestamptz not null default now())"""
            )
            done = {
                row[0]: row[1]
                for row in conn.execute("select version, checksum from schema_migrations")
            }
            for m in migrations:
                if m.version in done:
                    if done[m.version] != m.checksum:
                        raise MigrationError(f"{m.name} changed after it was applied")
                    continue
                try:
                    with conn.transaction():
                        conn.execute(m.sql.encode())  # type: ignore[arg-type]
                        conn.execute(
                            "insert into schema_migrations (version, name, checksum) values (%s, %s, %s)",
                            (m.version, m.name, m.checksum),
                        )
                except psycopg.Error as exc:
                    raise MigrationError(f"{m.name} failed: {exc}") from exc
                applied_now.append(m.name)
            _grant_app_role(conn, app_role)
        finally:
            conn.execute("select pg_advisory_unlock(%s)", (LOCK_KEY,))
    return applied_now


def _grant_app_role(conn: psycopg.Connection, app_role: str) -> None:
    exists = conn.execute("select 1 from pg_roles where rolname = %s", (app_role,)).fetchone()
    if not exists:
        raise MigrationError(f"DATABASE_APP_ROLE {app_role!r} does not exist")
    conn.execute(sql.SQL("grant {} to {}").format(sql.Identifier(APP_GROUP_ROLE), sql.Identifier(app_role)))
