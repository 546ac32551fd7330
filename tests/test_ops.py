"""Operations: settings at start-up, timers on demand, the CLI, health while the database is down."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import psycopg
import psycopg.sql
import pytest

from shared.core import db
from shared.core.settings import SettingsError, load_settings
from tests.conftest import ROOT, Host, free_port


def test_missing_setting_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL")
    with pytest.raises(SettingsError, match="DATABASE_URL"):
        load_settings()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "mysql://nope"),
        ("MAX_BODY_BYTES", "lots"),
        ("CORS_ALLOWED_ORIGINS", "*"),
        ("HEARTBEAT_SCHEDULE", "*/5 * * * *"),
        ("CUSTOS_ENV", "staging"),
    ],
)
def test_malformed_setting_is_named(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=name):
        load_settings()


def test_production_requires_a_signing_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUSTOS_ENV", "production")
    monkeypatch.setenv("JWT_SIGNING_KEY", "")
    with pytest.raises(SettingsError, match="jwt_signing_key"):
        load_settings()


def test_host_start_up_stops_on_a_missing_setting() -> None:
    env = {k: v for k, v in os.environ.items() if k != "HEARTBEAT_SCHEDULE"}
    proc = subprocess.run(
        [sys.executable, "-m", "devhost", "--port", str(free_port()), "--settings", "/nonexistent.json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0
    assert "HEARTBEAT_SCHEDULE" in proc.stdout + proc.stderr


def test_timer_runs_through_admin_endpoint(client: httpx.Client) -> None:
    with db.platform_tx() as conn:
        before = conn.execute("select last_run_at from job_heartbeats where name = 'heartbeat'").fetchone()
    resp = client.post("/admin/functions/heartbeat", json={"input": ""})
    assert resp.status_code == 202, resp.text
    with db.platform_tx() as conn:
        after = conn.execute("select last_run_at, ok from job_heartbeats where name = 'heartbeat'").fetchone()
    assert after is not None and after["ok"] is True
    assert before is None or after["last_run_at"] > before["last_run_at"]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def _role_events(action: str, role: str) -> list[dict]:
    """The platform chain's events of `action` about database role `role`."""
    from shared.audit import chain as audit

    with db.tenant_tx(audit.PLATFORM_CHAIN) as conn:
        return [e for e in audit.list_events(conn, action=action, limit=1000) if e["target_id"] == role]


def test_cli_create_tenant_and_duplicate() -> None:
    slug = f"cli-{uuid.uuid4().hex[:10]}"
    out = _cli("create-tenant", "--slug", slug, "--name", "CLI Tenant")
    assert out.returncode == 0, out.stderr
    tenant = json.loads(out.stdout)["tenant"]
    assert tenant["slug"] == slug and tenant["status"] == "ACTIVE"
    uuid.UUID(tenant["id"])
    again = _cli("create-tenant", "--slug", slug, "--name", "CLI Tenant")
    assert again.returncode == 2
    assert "taken" in again.stderr
    bad = _cli("create-tenant", "--slug", "Not A Slug", "--name", "x")
    assert bad.returncode == 2 and "slug" in bad.stderr


def test_cli_check_and_migrate() -> None:
    out = _cli("check")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["components"] == {"database": "ok", "storage": "ok"}
    out = _cli("migrate")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"applied": []}


def test_cli_create_app_role_is_idempotent_and_rejects_bad_input() -> None:
    role = f"custos_app_{uuid.uuid4().hex[:10]}"
    try:
        first = _cli("create-app-role", "--role", role)
        assert first.returncode == 0, first.stderr
        assert json.loads(first.stdout)["role"] == {"name": role, "created": True, "granted": True, "entra_object_id": None}
        again = _cli("create-app-role", "--role", role)
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["role"]["created"] is False
        # Both runs are in the platform chain, with what each found or did and who ran it.
        events = _role_events("platform.app_role_ensured", role)
        assert [e["after"]["created"] for e in sorted(events, key=lambda e: e["seq"])] == [True, False]
        assert json.loads(again.stdout)["audit"]["seq"] == max(e["seq"] for e in events)
        assert all(e["actor_type"] == "operator" and e["actor_name"].startswith("ops CLI") for e in events)
        bad = _cli("create-app-role", "--role", role, "--entra-object-id", "'; drop role custos_owner; --")
        assert bad.returncode == 2 and "not a UUID" in bad.stderr and "Traceback" not in bad.stderr
    finally:
        with psycopg.connect(os.environ["DATABASE_ADMIN_URL"], autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("drop role if exists {}").format(psycopg.sql.Identifier(role)))


def test_cli_migrate_can_leave_unreachable_storage_alone() -> None:
    """A deploy step that reaches the database but not Storage (private endpoints) still migrates."""
    closed = free_port()
    unreachable = re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{closed}", os.environ["STORAGE_CONNECTION_STRING"])
    env = {**os.environ, "STORAGE_CONNECTION_STRING": unreachable, "STORAGE_RETRIES": "0"}

    def migrate(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "shared.cli", "migrate", *extra], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)

    assert migrate().returncode == 2
    out = migrate("--skip-storage")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"applied": []}


def test_deploy_steps_need_only_the_owner_url(tmp_path: Path) -> None:
    """The deploying machine holds the owner's token, not the app's keys or Storage settings."""
    role = f"custos_app_{uuid.uuid4().hex[:10]}"
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "DATABASE_OWNER_URL": os.environ["DATABASE_OWNER_URL"],
           "DATABASE_APP_ROLE": role}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "shared.cli", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)

    try:
        made = cli("create-app-role")
        assert made.returncode == 0, made.stderr
        assert json.loads(made.stdout)["role"]["name"] == role
        migrated = cli("migrate", "--skip-storage")
        assert migrated.returncode == 0, migrated.stderr
        assert json.loads(migrated.stdout) == {"applied": []}
    finally:
        with psycopg.connect(os.environ["DATABASE_ADMIN_URL"], autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("drop role if exists {}").format(psycopg.sql.Identifier(role)))
    env["DATABASE_OWNER_URL"] = "mysql://root@db/custos"
    wrong = cli("migrate", "--skip-storage")
    assert wrong.returncode == 2 and "DATABASE_OWNER_URL" in wrong.stderr and "Traceback" not in wrong.stderr
    del env["DATABASE_OWNER_URL"]
    missing = cli("create-app-role")
    assert missing.returncode == 2 and "DATABASE_OWNER_URL: required" in missing.stderr


def _devservices(*args: str) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "devservices.py"), *args, "--profile", os.environ.get("CUSTOS_PROFILE", "test")],
        cwd=ROOT, check=True, capture_output=True, timeout=120,
    )


@pytest.mark.skipif(not os.environ.get("CUSTOS_PROFILE"), reason="needs the services devservices.py started")
def test_health_is_503_while_database_is_down() -> None:
    h = Host()
    try:
        with httpx.Client(base_url=h.url, timeout=30) as c:
            assert c.get("/api/health").status_code == 200
            _devservices("pg-stop")
            try:
                resp = c.get("/api/health")
                assert resp.status_code == 503
                assert resp.json()["components"] == {"database": "unavailable", "storage": "ok"}
            finally:
                _devservices("pg-start")
                db.close_pool()  # this test process's pool: start afresh rather than wait out its reconnect backoff
            deadline = time.monotonic() + 30
            while c.get("/api/health").status_code != 200:
                assert time.monotonic() < deadline, "health did not recover after the database came back"
                time.sleep(0.5)
    finally:
        h.stop()


def test_every_setting_is_documented_and_in_the_sample() -> None:
    from shared.core.settings import Settings

    names = {name.upper() for name in Settings.model_fields}
    sample = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
    assert names <= set(sample), sorted(names - set(sample))
    readme = (ROOT / "README.md").read_text().split("<!-- settings:start -->")[1].split("<!-- settings:end -->")[0]
    documented = {line.split("`")[1] for line in readme.splitlines() if line.startswith("| `")}
    assert documented == names


def test_sample_settings_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    sample = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
    for name in list(os.environ):
        if name.upper() in {k.upper() for k in sample}:
            monkeypatch.delenv(name)
    for name, value in sample.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.custos_env == "local"


def test_cli_purge_due_lists_cancelled_tenants_within_the_horizon() -> None:
    from shared.audit import chain as audit
    from shared.tenancy.tenants import cancel_tenant, create_tenant

    with db.platform_tx() as conn:
        tenant = create_tenant(conn, slug=f"p-{uuid.uuid4().hex[:12]}", name="Purge Soon", region="uksouth")
    cancel_tenant(tenant.id, reason="contract ended", actor=audit.Actor(id=None, name="ops", type="operator"), meta=None)
    now_due = _cli("purge-due")
    assert now_due.returncode == 0, now_due.stderr
    assert tenant.id not in {t["id"] for t in json.loads(now_due.stdout)["tenants"]}
    soon = _cli("purge-due", "--within-days", "31")
    assert soon.returncode == 0, soon.stderr
    row = next(t for t in json.loads(soon.stdout)["tenants"] if t["id"] == tenant.id)
    assert row["status"] == "CANCELLED" and row["due"] is False and row["purge_after"]


def test_cli_create_owner_role_grants_the_schema_owner_idempotently_and_never_to_the_app() -> None:
    role = f"id_custos_owner_{uuid.uuid4().hex[:10]}"
    app_role = os.environ["DATABASE_APP_ROLE"]
    pivot = f"custos_pivot_{uuid.uuid4().hex[:10]}"
    try:
        first = _cli("create-owner-role", "--principal-name", role)
        assert first.returncode == 0, first.stderr
        made = json.loads(first.stdout)["role"]
        assert made == {"name": role, "created": True, "owner_role": made["owner_role"], "entra_object_id": None}
        with psycopg.connect(os.environ["DATABASE_ADMIN_URL"], autocommit=True) as conn:
            owner = conn.execute("select tableowner from pg_tables where tablename = 'audit_events'").fetchone()
            assert owner is not None and made["owner_role"] == owner[0]
            held = conn.execute("select pg_has_role(%s, %s, 'MEMBER')", (role, owner[0])).fetchone()
            assert held is not None and held[0] is True
        again = _cli("create-owner-role", "--principal-name", role)
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["role"]["created"] is False
        granted = _role_events("platform.owner_role_ensured", role)
        assert sorted(e["after"]["created"] for e in granted) == [False, True]
        assert {e["after"]["owner_role"] for e in granted} == {made["owner_role"]}
        for name in (app_role, "custos_app_rw"):
            refused = _cli("create-owner-role", "--principal-name", name)
            assert refused.returncode == 2 and "app" in refused.stderr and "Traceback" not in refused.stderr
        # A role the app role is a member of would pass the owner's rights on to the app.
        with psycopg.connect(os.environ["DATABASE_ADMIN_URL"], autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("create role {} nologin").format(psycopg.sql.Identifier(pivot)))
            conn.execute(psycopg.sql.SQL("grant {} to {}").format(psycopg.sql.Identifier(pivot), psycopg.sql.Identifier(app_role)))
        pivoted = _cli("create-owner-role", "--principal-name", pivot)
        assert pivoted.returncode == 2 and "is a member of" in pivoted.stderr
        with psycopg.connect(os.environ["DATABASE_ADMIN_URL"], autocommit=True) as conn:
            app_is_owner = conn.execute("select pg_has_role(%s, %s, 'MEMBER')", (app_role, made["owner_role"])).fetchone()
            assert app_is_owner is not None and app_is_owner[0] is False
        bad = _cli("create-owner-role", "--principal-name", role, "--principal-id", "'; drop role custos_owner; --")
        assert bad.returncode == 2 and "not a UUID" in bad.stderr and "Traceback" not in bad.stderr
        # Azure's Entra mapping function does not exist on stock PostgreSQL: a clear refusal, no role.
        entra = f"id_custos_owner_{uuid.uuid4().hex[:10]}"
        no_entra = _cli("create-owner-role", "--principal-name", entra, "--principal-id", str(uuid.uuid4()))
        assert no_entra.returncode == 2 and "pgaadauth_create_principal_with_oid is missing" in no_entra.stderr
        with psycopg.connect(os.environ["DATABASE_ADMIN_URL"], autocommit=True) as conn:
            assert conn.execute("select 1 from pg_roles where rolname = %s", (entra,)).fetchone() is None
        # An existing role without the identity's Entra mapping is not taken over.
        unmapped = _cli("create-owner-role", "--principal-name", role, "--principal-id", str(uuid.uuid4()))
        assert unmapped.returncode == 2 and "is not the Entra principal" in unmapped.stderr
    finally:
        with psycopg.connect(os.environ["DATABASE_ADMIN_URL"], autocommit=True) as conn:
            for name in (role, pivot):
                conn.execute(psycopg.sql.SQL("drop role if exists {}").format(psycopg.sql.Identifier(name)))
