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
import uuid
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


# Azure Database for PostgreSQL Flexible Server only: maps a new login role to a Microsoft Entra
# object (here the app's managed identity, type 'service'), so a token issued to that identity
# is accepted as the role's password. No stock PostgreSQL has this function, which is why it is
# kept apart from the portable statements below and only runs when an object id is given.
ENTRA_CREATE_PRINCIPAL = "select pgaadauth_create_principal_with_oid(%s, %s, 'service', false, false)"

# The attributes that would let the app role escape row-level security or widen its own rights.
_UNSAFE_ROLE_ATTRIBUTES = ("rolsuper", "rolbypassrls", "rolcreaterole", "rolcreatedb", "rolreplication")


@dataclass(frozen=True)
class AppRole:
    """What `ensure_app_role` found or did: `created` this run, `granted` the group role now held."""

    name: str
    created: bool
    granted: bool
    entra_object_id: str | None


def ensure_app_role(owner_url: str, app_role: str, *, entra_object_id: str | None = None) -> AppRole:
    """Create the app's login role if missing and make it a member of `custos_app_rw`; idempotent.

    With `entra_object_id` (Azure) the role is created by Flexible Server's
    `pgaadauth_create_principal_with_oid` as the Entra principal of that object, and an
    existing role must already carry that mapping. Without it (local, or a server where the
    role is made another way) a plain LOGIN role without a password is created. Either way an
    existing role is refused if it could bypass row-level security or create roles, databases
    or replication connections: the app role must be NOSUPERUSER NOBYPASSRLS and own nothing.
    The group role is granted when it exists; before the first migration it does not, and
    `migrate` grants it.

    Raises:
        MigrationError: the object id is not a UUID; the role exists with unsafe attributes, as
            a member of a role with them or of the database owner, or mapped to a different (or
            no) Entra object; the Entra function is missing (not an
            Azure server with Entra authentication); or the owner may not create the role.
    """
    if entra_object_id is not None:
        try:
            entra_object_id = str(uuid.UUID(entra_object_id))
        except ValueError:
            raise MigrationError(f"--entra-object-id {entra_object_id!r}: not a UUID") from None
    created = False
    with psycopg.connect(owner_url, autocommit=True) as conn:
        conn.execute("select pg_advisory_lock(%s)", (LOCK_KEY,))
        try:
            existing = conn.execute(
                sql.SQL("select {} from pg_roles where rolname = %s").format(
                    sql.SQL(", ").join(sql.Identifier(a) for a in _UNSAFE_ROLE_ATTRIBUTES)
                ),
                (app_role,),
            ).fetchone()
            if existing is None:
                _create_login(conn, app_role, entra_object_id)
                created = True
            else:
                unsafe = [a.removeprefix("rol").upper() for a, on in zip(_UNSAFE_ROLE_ATTRIBUTES, existing, strict=True) if on]
                if unsafe:
                    raise MigrationError(
                        f"role {app_role!r} exists with {', '.join(unsafe)}: the app role must be "
                        "NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB NOREPLICATION; fix or drop it by hand"
                    )
                _check_memberships(conn, app_role)
                if entra_object_id is not None:
                    _check_entra_label(conn, app_role, entra_object_id)
            granted = conn.execute("select 1 from pg_roles where rolname = %s", (APP_GROUP_ROLE,)).fetchone() is not None
            if granted:
                _grant_app_role(conn, app_role)
        finally:
            conn.execute("select pg_advisory_unlock(%s)", (LOCK_KEY,))
    return AppRole(app_role, created, granted, entra_object_id)


def _create_login(conn: psycopg.Connection, app_role: str, entra_object_id: str | None) -> None:
    """A login role with no power of its own (the app role, or the owner-jobs login, which gets the
    owner's rights by membership only), or an Entra principal mapped to `entra_object_id`."""
    try:
        if entra_object_id is None:
            conn.execute(sql.SQL(
                "create role {} login nosuperuser nobypassrls nocreatedb nocreaterole noreplication inherit"
            ).format(sql.Identifier(app_role)))
            return
        with conn.transaction():
            conn.execute(ENTRA_CREATE_PRINCIPAL, (app_role, entra_object_id))
    except psycopg.errors.UndefinedFunction:
        raise MigrationError(
            "pgaadauth_create_principal_with_oid is missing: the server is not Azure Database for "
            "PostgreSQL Flexible Server with Microsoft Entra authentication, or the owner is not its Entra admin"
        ) from None
    except psycopg.Error as exc:
        raise MigrationError(f"could not create role {app_role!r}: {exc.diag.message_primary or exc}") from None


def _check_entra_label(conn: psycopg.Connection, app_role: str, entra_object_id: str) -> None:
    row = conn.execute(
        """select l.label from pg_shseclabel l join pg_roles r on r.oid = l.objoid
           where l.classoid = 'pg_authid'::regclass and l.provider = 'pgaadauth' and r.rolname = %s""",
        (app_role,),
    ).fetchone()
    fields = dict(
        part.split("=", 1) if "=" in part else (part, "") for part in (row[0].split(",") if row else [])
    )
    if "aadauth" not in fields or fields.get("oid", "").lower() != entra_object_id:
        raise MigrationError(
            f"role {app_role!r} exists but is not the Entra principal of object {entra_object_id} "
            f"(its pgaadauth label: {row[0] if row else 'none'}); drop it or choose another DATABASE_APP_ROLE"
        )


def _check_memberships(conn: psycopg.Connection, app_role: str) -> None:
    # Membership passes rights on: an app role inside the owner role (or any role with unsafe
    # attributes) could ALTER the tables or switch RLS off, whatever its own attributes say.
    rows = conn.execute(
        """select r.rolname from pg_roles r
           where r.rolname <> %s and pg_has_role(%s, r.oid, 'MEMBER')
             and (r.rolsuper or r.rolbypassrls or r.rolcreaterole or r.rolcreatedb or r.rolreplication
                  or r.oid = (select datdba from pg_database where datname = current_database()))
           order by r.rolname""",
        (app_role, app_role),
    ).fetchall()
    if rows:
        raise MigrationError(
            f"role {app_role!r} is a member of {', '.join(r[0] for r in rows)}: the app role may only "
            f"hold {APP_GROUP_ROLE}; revoke the membership by hand"
        )


@dataclass(frozen=True)
class OwnerRole:
    """What `ensure_owner_role` found or did: the login role, `created` this run, and the schema
    owner role it now holds (`owner_role`)."""

    name: str
    created: bool
    owner_role: str
    entra_object_id: str | None


def ensure_owner_role(owner_url: str, name: str, *, app_role: str, entra_object_id: str | None = None) -> OwnerRole:
    """Create the owner-jobs app's login role if missing and grant it the schema owner role (the
    owner of `schema_migrations`, that is of every table the migrations made); idempotent.

    With `entra_object_id` (Azure) the role is created by Flexible Server's
    `pgaadauth_create_principal_with_oid` as the Entra principal of that object (the owner-jobs
    app's managed identity), and an existing role must already carry that mapping. Without it
    (local) a plain LOGIN role without a password is created. The grant is refused when it would
    reach the app: to the app role, to its group role, or to any role the app role is a member
    of (membership passes the owner's rights on, so the HTTP-facing app could delete the trail).

    Raises:
        MigrationError: the name is empty or would reach the app role, the object id is not a
            UUID, the migrations have not run (no schema owner yet), the role exists mapped to a
            different (or no) Entra object, the Entra function is missing (not an Azure server
            with Entra authentication), or the owner may not create or grant the role.
    """
    if not name.strip():
        raise MigrationError("--principal-name: required (the owner-jobs app identity's name)")
    if entra_object_id is not None:
        try:
            entra_object_id = str(uuid.UUID(entra_object_id))
        except ValueError:
            raise MigrationError(f"--principal-id {entra_object_id!r}: not a UUID") from None
    if name in (app_role, APP_GROUP_ROLE):
        raise MigrationError(f"role {name!r} is the app's role: the HTTP-facing app must never hold the schema owner")
    created = False
    with psycopg.connect(owner_url, autocommit=True) as conn:
        conn.execute("select pg_advisory_lock(%s)", (LOCK_KEY,))
        try:
            row = conn.execute(
                "select tableowner from pg_tables where schemaname = current_schema() and tablename = 'schema_migrations'"
            ).fetchone()
            if row is None:
                raise MigrationError("no schema owner yet: run `migrate` before `create-owner-role`")
            owner_role = str(row[0])
            if name == owner_role:
                raise MigrationError(f"role {name!r} is the schema owner itself: give the owner-jobs app a role of its own")
            exists = conn.execute("select 1 from pg_roles where rolname = %s", (name,)).fetchone() is not None
            if exists:
                reaches_app = conn.execute(
                    "select 1 from pg_roles a where a.rolname = %s and pg_has_role(a.oid, %s, 'MEMBER')",
                    (app_role, name),
                ).fetchone()
                if reaches_app is not None:
                    raise MigrationError(f"role {app_role!r} (the app) is a member of {name!r}: granting it the schema "
                                         "owner would give the HTTP-facing app the owner's rights; revoke that membership")
                if entra_object_id is not None:
                    _check_entra_label(conn, name, entra_object_id)
            else:
                _create_login(conn, name, entra_object_id)
                created = True
            try:
                conn.execute(sql.SQL("grant {} to {}").format(sql.Identifier(owner_role), sql.Identifier(name)))
            except psycopg.Error as exc:
                raise MigrationError(f"could not grant {owner_role!r} to {name!r}: {exc.diag.message_primary or exc}") from None
        finally:
            conn.execute("select pg_advisory_unlock(%s)", (LOCK_KEY,))
    return OwnerRole(name, created, owner_role, entra_object_id)
