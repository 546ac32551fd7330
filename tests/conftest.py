"""Test harness: real PostgreSQL, real Azurite, the real HTTP host (devhost) in a subprocess.

`make test` starts the services and exports their settings (DATABASE_URL, ...). Run bare,
pytest starts the test profile's services itself through scripts/devservices.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
TEST_ORIGIN = "https://app.example.test"

TEST_SETTINGS = {
    "CUSTOS_ENV": "test",
    "APP_VERSION": "0.1.0-test",
    "HEARTBEAT_SCHEDULE": "0 0 0 1 1 *",
    "AUDIT_CHECKPOINT_SCHEDULE": "0 0 0 1 1 *",
    "AUDIT_VERIFY_SCHEDULE": "0 0 0 1 1 *",
    "BLOB_SNAPSHOT_SCHEDULE": "0 0 0 1 1 *",
    "AUDIT_RETENTION_SCHEDULE": "0 0 0 1 1 *",
    "MAIL_DELIVERY_SCHEDULE": "0 0 0 1 1 *",
    "TENANT_PURGE_SCHEDULE": "0 0 0 1 1 *",
    "HOUSEKEEPING_SCHEDULE": "0 0 0 1 1 *",
    "INCIDENT_SCHEDULE": "0 0 0 1 1 *",
    "SMTP_STARTTLS": "false",
    "API_RATE_PER_MINUTE": "100000",
    "SMTP_HOST": "",
    "CORS_ALLOWED_ORIGINS": f"{TEST_ORIGIN},http://localhost:3000",
    "MAX_BODY_BYTES": "65536",
    "JWT_ISSUER": "https://custos.test",
    "JWT_AUDIENCE": "custos-api-test",
    "DB_POOL_MIN": "0",
    "DB_POOL_MAX": "4",
    "SSO_METADATA_ALLOW_LOOPBACK": "true",
    "SSO_PURGE_SCHEDULE": "0 0 0 1 1 *",
    "CUSTOS_FUNCTION_GROUPS": "api,owner",  # one process runs both groups here (the owner URL is local)
}


def _load_services_env() -> None:
    if os.environ.get("DATABASE_URL") and os.environ.get("STORAGE_CONNECTION_STRING"):
        return
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "devservices.py"), "up", "--profile", "test"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    )
    env_file = ROOT / ".local" / "test" / "services.env"
    for line in env_file.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            os.environ.setdefault(key.strip(), value.strip())
    del out


_load_services_env()
for _k, _v in TEST_SETTINGS.items():
    os.environ[_k] = _v  # the tests' own values win over a developer's shell
os.environ.setdefault("CUSTOS_LOCAL_DIR", str(ROOT / ".local" / "test"))
os.environ.setdefault("AzureWebJobsStorage", os.environ["STORAGE_CONNECTION_STRING"])
os.environ.setdefault("JobsStorage", os.environ["STORAGE_CONNECTION_STRING"])
os.environ.setdefault("JOBS_QUEUE", "custos-jobs")
os.environ.setdefault("OWNER_JOBS_QUEUE", "custos-owner-jobs")

from shared.core import db  # noqa: E402  (settings must be in the environment first)
from shared.core.migrate import MigrationError, migrate  # noqa: E402
from shared.core.settings import get_settings  # noqa: E402
from shared.identity.tokens import issue_access_token  # noqa: E402
from shared.tenancy.tenants import Tenant, create_tenant  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _reset_schema() -> None:
    """Drop the test database's schema (its migrations were edited since they ran)."""
    import psycopg

    with psycopg.connect(os.environ["DATABASE_ADMIN_URL"], autocommit=True) as conn:
        conn.execute("drop schema public cascade")
        conn.execute("create schema public authorization custos_owner")
        conn.execute("revoke create on schema public from public")


@pytest.fixture(scope="session", autouse=True)
def migrated() -> None:
    settings = get_settings()
    try:
        migrate(settings.database_owner_url, settings.database_app_role)
    except MigrationError as exc:
        if "changed after it was applied" not in str(exc) or os.environ.get("CUSTOS_PROFILE") != "test":
            raise
        _reset_schema()
        migrate(settings.database_owner_url, settings.database_app_role)


class Host:
    """A devhost subprocess serving function_app.app."""

    def __init__(self, env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = ROOT / ".local" / "test" / f"devhost-{self.port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        full_env = {**os.environ, "DEVHOST_DISABLE_TIMERS": "1", **(env or {})}
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "devhost", "--port", str(self.port)],
            cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"devhost exited: {self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"devhost did not start: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


@pytest.fixture(scope="session")
def host() -> Iterator[Host]:
    h = Host()
    yield h
    h.stop()


@pytest.fixture
def client(host: Host) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=host.url, timeout=30) as c:
        yield c


@pytest.fixture
def tenant() -> Tenant:
    with db.platform_tx() as conn:
        return create_tenant(conn, slug=f"t-{uuid.uuid4().hex[:12]}", name="Test Tenant", region="uksouth")


@dataclass(frozen=True)
class Person:
    """A user (or operator) in the database, with an access token."""

    id: str
    tenant_id: str | None
    role: str
    email: str
    token: str
    totp_secret: str | None = None


def create_user(
    tenant_id: str, role: str = "ADMIN", *, name: str | None = None, status: str = "active", mfa: bool | None = None
) -> dict:
    """A user row. Roles that must have a second factor (ADMIN, REVIEWER) get a confirmed TOTP
    unless `mfa=False` (its secret is `row["totp_secret"]`); `mfa=True` gives any role one."""
    from shared.identity.guards import MFA_REQUIRED_ROLES
    from shared.identity.mfa import seed_confirmed_totp

    email = f"u-{uuid.uuid4().hex[:12]}@example.test"
    with db.tenant_tx(tenant_id) as conn:
        row = conn.execute(
            """insert into users (tenant_id, email, display_name, role, status) values (%s, %s, %s, %s, %s)
               returning id::text as id, email""",
            (tenant_id, email, name or f"{role.title()} {email[:6]}", role, status),
        ).fetchone()
        if role in MFA_REQUIRED_ROLES if mfa is None else mfa:
            row["totp_secret"] = seed_confirmed_totp(conn, tenant_id=tenant_id, user_id=row["id"])
        return row


def create_session_row(tenant_id: str, user_id: str) -> str:
    """A live session for a user (what a login creates); returns its id."""
    from shared.identity.sessions import create_session

    with db.tenant_tx(tenant_id) as conn:
        user = conn.execute("select id::text as id, role, display_name from users where id = %s", (user_id,)).fetchone()
        return create_session(conn, tenant_id=tenant_id, user=user, remember_me=False, ip="127.0.0.1",
                              user_agent="pytest").session_id


def create_operator(name: str = "Olive Operator", *, mfa: bool = True) -> dict:
    """An operator row; with a confirmed TOTP (`row["totp_secret"]`) unless `mfa=False`, as
    every operator must have a second factor."""
    import psycopg
    from psycopg.rows import dict_row

    from shared.audit.chain import PLATFORM_CHAIN
    from shared.identity.mfa import OPERATORS, seed_confirmed_totp

    email = f"op-{uuid.uuid4().hex[:12]}@custos.test"
    with psycopg.connect(os.environ["DATABASE_OWNER_URL"], row_factory=dict_row) as conn:
        row = conn.execute(
            "insert into platform_operators (email, display_name) values (%s, %s) returning id::text as id, email",
            (email, name),
        ).fetchone()
        if mfa:
            row["totp_secret"] = seed_confirmed_totp(conn, tenant_id=PLATFORM_CHAIN, user_id=row["id"],  # type: ignore[arg-type]
                                                     realm=OPERATORS)
        return row


def create_operator_session(operator_id: str, *, mfa_verified: bool = True) -> str:
    """A live operator session (what an operator sign-in creates); returns its id. It proved
    a TOTP just now unless `mfa_verified=False`."""
    with db.platform_tx() as conn:
        return conn.execute(
            """insert into operator_sessions (operator_id, expires_at, mfa_verified_at, mfa_method)
               values (%s, now() + interval '1 hour', case when %s then now() end, case when %s then 'totp' end)
               returning id::text as id""",
            (operator_id, mfa_verified, mfa_verified),
        ).fetchone()["id"]


def token_for(user_id: str, tenant_id: str | None, role: str, **kw: object) -> str:
    return issue_access_token(
        subject=user_id, tenant_id=tenant_id, session_id=str(kw.pop("session_id", uuid.uuid4())), role=role,
        **kw,  # type: ignore[arg-type]
    )


PersonFactory = Callable[..., Person]
TokenFactory = Callable[..., str]


@pytest.fixture
def make_person() -> PersonFactory:
    """make_person(tenant_id, role) -> an active user with a token; tenant None -> an operator.

    ADMIN and REVIEWER users and operators come with a confirmed TOTP (`Person.totp_secret`),
    as the second-factor enforcement requires (an operator's session has just proved it);
    `mfa=False` makes one without (to test enforcement).
    """

    def make(tenant_id: str | None, role: str = "ADMIN", *, name: str | None = None, mfa: bool | None = None,
             **kw: object) -> Person:
        if tenant_id is None:
            row = create_operator(name or "Olive Operator", mfa=mfa is not False)
            role = "PLATFORM_OPERATOR"
            kw.setdefault("session_id", create_operator_session(row["id"], mfa_verified=mfa is not False))
        else:
            row = create_user(tenant_id, role, name=name, mfa=mfa)
            kw.setdefault("session_id", create_session_row(tenant_id, row["id"]))
        return Person(row["id"], tenant_id, role, row["email"], token_for(row["id"], tenant_id, role, name=name, **kw),
                      totp_secret=row.get("totp_secret"))

    return make


@pytest.fixture
def make_token(make_person: PersonFactory) -> TokenFactory:
    """make_token(tenant_id, role) -> the token of a new active user with that role."""

    def make(tenant_id: str | None, role: str = "ADMIN", **kw: object) -> str:
        return make_person(tenant_id, role, **kw).token

    return make


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- round trips on the wire ---------------------------------------------------------------
# libpq's protocol trace of every pooled connection records each message the client sends;
# each `Query` (simple protocol) or `Sync` (extended protocol) is one wait for the server.


class Wire:
    """The client messages of every pooled connection since the last `clear`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def clear(self) -> None:
        self.path.write_text("")

    def round_trips(self) -> list[str]:
        """The messages that wait for the server: the simple `Query` and the extended `Sync`."""
        out = []
        for line in self.path.read_text(errors="replace").splitlines():
            # libpq keeps writing at its own offset after `clear` truncates: the gap reads as NULs
            parts = line.lstrip("\x00").split("\t")
            if len(parts) >= 3 and parts[0] == "F" and parts[2].split(" ")[0] in ("Query", "Sync"):
                out.append(line)
        return out


@pytest.fixture
def wire(tmp_path: Path) -> Iterator[Wire]:
    from psycopg.pq import Trace

    path = tmp_path / "wire.trace"
    p = db.pool()
    # Take every connection the pool may hold, so whichever one a call gets is traced.
    conns = [p.getconn() for _ in range(p.max_size)]
    handle = open(path, "w")  # noqa: SIM115 - libpq writes to it until untraced below
    try:
        for c in conns:
            c.pgconn.trace(handle.fileno())
            c.pgconn.set_trace_flags(Trace.SUPPRESS_TIMESTAMPS | Trace.REGRESS_MODE)
        for c in conns:
            p.putconn(c)
        yield Wire(path)
    finally:
        conns = [p.getconn() for _ in range(p.max_size)]
        for c in conns:
            c.pgconn.untrace()
            p.putconn(c)
        handle.close()
