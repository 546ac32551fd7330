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
    "CORS_ALLOWED_ORIGINS": f"{TEST_ORIGIN},http://localhost:3000",
    "MAX_BODY_BYTES": "65536",
    "JWT_ISSUER": "https://custos.test",
    "JWT_AUDIENCE": "custos-api-test",
    "DB_POOL_MIN": "0",
    "DB_POOL_MAX": "4",
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
    os.environ.setdefault(_k, _v)
os.environ.setdefault("CUSTOS_LOCAL_DIR", str(ROOT / ".local" / "test"))
os.environ.setdefault("AzureWebJobsStorage", os.environ["STORAGE_CONNECTION_STRING"])

from shared import db  # noqa: E402  (settings must be in the environment first)
from shared.migrate import migrate  # noqa: E402
from shared.settings import get_settings  # noqa: E402
from shared.tenants import Tenant, create_tenant  # noqa: E402
from shared.tokens import issue_access_token  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session", autouse=True)
def migrated() -> None:
    settings = get_settings()
    migrate(settings.database_owner_url, settings.database_app_role)


class Host:
    """A devhost subprocess serving function_app.app."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
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


TokenFactory = Callable[..., str]


@pytest.fixture
def make_token() -> TokenFactory:
    def make(tenant_id: str | None, role: str = "ADMIN", **kw: object) -> str:
        return issue_access_token(
            subject=str(kw.pop("subject", uuid.uuid4())),
            tenant_id=tenant_id,
            session_id=str(kw.pop("session_id", uuid.uuid4())),
            role=role,
            **kw,  # type: ignore[arg-type]
        )

    return make


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
