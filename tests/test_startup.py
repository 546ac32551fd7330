"""Start-up: importing the app loads only what indexing needs; heavy SDKs load on first use."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import ROOT

#: Loaded by the first request that needs them, never by `import function_app`
#: (bench/startup.py measures what the import costs).
HEAVY = (
    "azure.storage.blob", "azure.data.tables", "azure.core.pipeline", "azure.identity", "webauthn", "fido2",
    "jsonschema", "referencing", "re2", "segno", "shared.records._schema_engine", "psycopg_pool",
    "shared.audit.checkpoints", "psycopg", "cryptography",
)


def _modules_after(code: str) -> set[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=dict(os.environ), capture_output=True,
                          text=True, timeout=120, check=True)
    return set(json.loads(done.stdout.splitlines()[-1]))


def _loaded(modules: set[str], name: str) -> bool:
    return name in modules or any(m.startswith(name + ".") for m in modules)


def test_importing_the_app_loads_no_heavy_module() -> None:
    modules = _modules_after("import function_app")
    assert "function_app" in modules
    assert [name for name in HEAVY if _loaded(modules, name)] == []


def test_the_heavy_modules_load_when_first_used() -> None:
    # The probe is only meaningful if these names are importable and really are what a request loads.
    modules = _modules_after(
        "import function_app\n"
        "from shared.core import db, storage\n"
        "from shared.audit import checkpoints\n"
        "from shared.identity.mfa import passkeys, totp\n"
        "from shared.records import tenant_schemas\n"
        "storage.blob_service(); storage.table_service(); db.pool(); db.close_pool()\n"
        "passkeys.supported_algorithms(); totp.qr_svg('otpauth://totp/x')\n"
        "tenant_schemas.problems({'type': 'object'})"
    )
    assert [name for name in HEAVY if name not in ("fido2", "azure.identity") and not _loaded(modules, name)] == []
