"""The app role: created once by the owner, only ever a member of custos_app_rw, never trusted if unsafe."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from shared.core.migrate import APP_GROUP_ROLE, MigrationError, ensure_app_role
from shared.core.settings import get_settings


def _admin(statement: sql.Composable | str) -> None:
    with psycopg.connect(os.environ["DATABASE_ADMIN_URL"], autocommit=True) as conn:
        conn.execute(statement)  # type: ignore[arg-type]


def _role(name: str) -> dict[str, object] | None:
    with psycopg.connect(os.environ["DATABASE_ADMIN_URL"]) as conn:
        row = conn.execute(
            """select rolcanlogin, rolsuper, rolbypassrls, rolcreaterole, rolcreatedb,
                      pg_has_role(rolname, %s, 'MEMBER') as in_group
               from pg_roles where rolname = %s""",
            (APP_GROUP_ROLE, name),
        ).fetchone()
    if row is None:
        return None
    keys = ("login", "super", "bypassrls", "createrole", "createdb", "in_group")
    return dict(zip(keys, row, strict=True))


@pytest.fixture
def role_name() -> Iterator[str]:
    """A role name no other test uses; the role (if made) is dropped afterwards."""
    name = f"custos_app_{uuid.uuid4().hex[:10]}"
    yield name
    _admin(sql.SQL("drop role if exists {}").format(sql.Identifier(name)))


def owner_url() -> str:
    return get_settings().database_owner_url


def test_missing_app_role_is_created_safe_and_in_the_group_and_a_rerun_changes_nothing(role_name: str) -> None:
    first = ensure_app_role(owner_url(), role_name)
    assert (first.created, first.granted, first.entra_object_id) == (True, True, None)
    made = _role(role_name)
    assert made == {"login": True, "super": False, "bypassrls": False, "createrole": False,
                    "createdb": False, "in_group": True}
    again = ensure_app_role(owner_url(), role_name)
    assert (again.created, again.granted) == (False, True)
    assert _role(role_name) == made


def test_existing_role_that_bypasses_rls_is_refused_and_not_granted(role_name: str) -> None:
    _admin(sql.SQL("create role {} login bypassrls").format(sql.Identifier(role_name)))
    with pytest.raises(MigrationError, match=f"{role_name}.*BYPASSRLS"):
        ensure_app_role(owner_url(), role_name)
    assert _role(role_name)["in_group"] is False  # type: ignore[index]


def test_existing_role_inside_the_owner_role_is_refused(role_name: str) -> None:
    """Attributes alone are not enough: membership of the owner would hand over the tables."""
    _admin(sql.SQL("create role {} login").format(sql.Identifier(role_name)))
    _admin(sql.SQL("grant custos_owner to {}").format(sql.Identifier(role_name)))
    with pytest.raises(MigrationError, match="member of custos_owner"):
        ensure_app_role(owner_url(), role_name)
    assert _role(role_name)["in_group"] is False  # type: ignore[index]


def test_role_name_is_an_identifier_not_sql(role_name: str) -> None:
    hostile = role_name + '"; drop table tenants; --'
    try:
        assert ensure_app_role(owner_url(), hostile).created is True
        assert _role(hostile) is not None
        with psycopg.connect(owner_url()) as conn:
            assert conn.execute("select to_regclass('public.tenants') is not null").fetchone() == (True,)
    finally:
        _admin(sql.SQL("drop role if exists {}").format(sql.Identifier(hostile)))


@pytest.mark.parametrize("object_id", ["not-a-uuid", "00000000-0000-0000-0000-000000000000', 'user', true, false); --"])
def test_entra_object_id_must_be_a_uuid(role_name: str, object_id: str) -> None:
    with pytest.raises(MigrationError, match="not a UUID"):
        ensure_app_role(owner_url(), role_name, entra_object_id=object_id)
    assert _role(role_name) is None


def test_entra_principal_on_a_server_without_entra_is_a_clear_error(role_name: str) -> None:
    """Stock PostgreSQL has no pgaadauth: the Entra path fails plainly and creates nothing."""
    with pytest.raises(MigrationError, match="pgaadauth_create_principal_with_oid is missing"):
        ensure_app_role(owner_url(), role_name, entra_object_id=str(uuid.uuid4()))
    assert _role(role_name) is None


def test_existing_role_without_the_entra_mapping_is_not_taken_for_the_managed_identity(role_name: str) -> None:
    """A password role squatting on the app role's name must not become the identity's role."""
    _admin(sql.SQL("create role {} login password 'squatter'").format(sql.Identifier(role_name)))
    object_id = str(uuid.uuid4())
    with pytest.raises(MigrationError, match=f"not the Entra principal of object {object_id}.*none"):
        ensure_app_role(owner_url(), role_name, entra_object_id=object_id.upper())
    assert _role(role_name)["in_group"] is False  # type: ignore[index]
