"""Checks of the local services that `make test` starts with scripts/devservices.py.

The service tests need the environment written by `devservices.py up` (`make test` loads
.local/test/services.sh before pytest); without it they are skipped with a reason.  The
env-file tests at the bottom need no services.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import urllib.parse
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "devservices.py"

SERVICE_VARS = ("DATABASE_URL", "DATABASE_ADMIN_URL", "DATABASE_APP_ROLE", "STORAGE_CONNECTION_STRING")
_missing = [name for name in SERVICE_VARS if not os.environ.get(name)]
needs_services = pytest.mark.skipif(
    bool(_missing),
    reason=f"local services not configured ({', '.join(_missing)} unset): run via `make test`, "
    "or `python3 scripts/devservices.py up --profile test` and `. .local/test/services.sh`",
)


def _connect(url: str):  # type: ignore[no-untyped-def]
    psycopg = pytest.importorskip("psycopg")
    return psycopg.connect(url, connect_timeout=10, autocommit=True)


def _managed_postgres() -> bool:
    """False when devservices used an external server (DATABASE_URL given to `up`)."""
    local_dir = os.environ.get("CUSTOS_LOCAL_DIR")
    if not local_dir:
        return False
    try:
        state = json.loads((Path(local_dir) / "pids.json").read_text())
    except (OSError, ValueError):
        return False
    return (state.get("postgres") or {}).get("mode") not in (None, "external")


@needs_services
def test_app_role_is_unprivileged() -> None:
    role = os.environ["DATABASE_APP_ROLE"]
    with _connect(os.environ["DATABASE_URL"]) as conn:
        row = conn.execute(
            "SELECT current_user, rolsuper, rolbypassrls, rolcreaterole, rolcreatedb, rolinherit, rolcanlogin"
            " FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
    assert row is not None
    user, superuser, bypassrls, createrole, createdb, inherit, login = row
    assert user == role
    assert (superuser, bypassrls, createrole, createdb) == (False, False, False, False)
    assert inherit is True  # gets the privileges of group roles granted to it later
    assert login is True


@needs_services
def test_owner_role_and_database_privileges() -> None:
    app = os.environ["DATABASE_APP_ROLE"]
    with _connect(os.environ["DATABASE_ADMIN_URL"]) as conn:
        owner = conn.execute(
            "SELECT rolname, rolsuper, rolbypassrls, rolcreaterole FROM pg_roles r"
            " JOIN pg_database d ON d.datdba = r.oid WHERE d.datname = current_database()"
        ).fetchone()
        assert owner == ("custos_owner", False, False, True)
        schema_owner = conn.execute(
            "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'public'"
        ).fetchone()
        assert schema_owner == ("custos_owner",)
        public_db_grants = conn.execute(
            "SELECT count(*) FROM pg_database d, aclexplode(d.datacl) a"
            " WHERE d.datname = current_database() AND a.grantee = 0"
        ).fetchone()
        assert public_db_grants == (0,), "PUBLIC must have no privileges on the database"
        can = conn.execute(
            "SELECT has_database_privilege(%s, current_database(), 'CONNECT'),"
            " has_database_privilege(%s, current_database(), 'CREATE'),"
            " has_schema_privilege(%s, 'public', 'CREATE')",
            (app, app, app),
        ).fetchone()
        assert can == (True, False, False)


@needs_services
def test_postgres_listens_on_loopback_only() -> None:
    if not _managed_postgres():
        pytest.skip("PostgreSQL is an external server (DATABASE_URL), not started by devservices")
    with _connect(os.environ["DATABASE_ADMIN_URL"]) as conn:
        row = conn.execute("SHOW listen_addresses").fetchone()
    assert row == ("127.0.0.1",)
    assert urllib.parse.urlsplit(os.environ["DATABASE_URL"]).hostname == "127.0.0.1"


@needs_services
def test_azurite_blob_endpoint_answers() -> None:
    blob = pytest.importorskip("azure.storage.blob")
    client = blob.BlobServiceClient.from_connection_string(os.environ["STORAGE_CONNECTION_STRING"])
    props = client.get_service_properties()
    assert isinstance(props, dict)


@needs_services
def test_azurite_table_and_queue_ports_answer() -> None:
    parts = dict(p.split("=", 1) for p in os.environ["STORAGE_CONNECTION_STRING"].split(";") if p)
    for key in ("QueueEndpoint", "TableEndpoint"):
        url = urllib.parse.urlsplit(parts[key])
        assert url.hostname == "127.0.0.1"
        with socket.create_connection((url.hostname, url.port), timeout=5):
            pass


@needs_services
def test_status_reports_running() -> None:
    profile = os.environ.get("CUSTOS_PROFILE", "test")
    res = subprocess.run(
        [sys.executable, str(SCRIPT), "status", "--profile", profile],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "azurite:  running" in res.stdout, res.stdout + res.stderr
    if _managed_postgres():
        assert res.returncode == 0, res.stdout + res.stderr


# ---------------------------------------------------------------- no services needed


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("devservices", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TRICKY = {
    "STORAGE_CONNECTION_STRING": "A=b;C=d==;E=http://127.0.0.1:1/x;",
    "QUOTES": 'it\'s "quoted" $HOME `x`',
    "PLAIN": "postgresql://u:p-_x@127.0.0.1:5/db",
}


def test_services_sh_round_trips_through_bash(tmp_path: Path) -> None:
    ds = _load_script()
    sh = tmp_path / "services.sh"
    sh.write_text(ds.render_sh(TRICKY))
    script = '. "$1"; for k in STORAGE_CONNECTION_STRING QUOTES PLAIN; do printf \'%s\\0\' "${!k}"; done'
    out = subprocess.run(["bash", "-c", script, "bash", str(sh)], capture_output=True, check=True).stdout
    assert out.decode().split("\0")[:-1] == list(TRICKY.values())


def test_services_env_parses_raw(tmp_path: Path) -> None:
    ds = _load_script()
    env = tmp_path / "services.env"
    env.write_text(ds.render_env(TRICKY))
    assert ds.parse_env_file(env) == TRICKY


def test_profiles_do_not_share_ports() -> None:
    ds = _load_script()
    run, test = ds.PROFILES["run"], ds.PROFILES["test"]
    run_ports = {run["pg_port"], *range(run["azurite_base"], run["azurite_base"] + 3)}
    test_ports = {test["pg_port"], *range(test["azurite_base"], test["azurite_base"] + 3)}
    assert not run_ports & test_ports
