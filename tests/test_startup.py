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


OWNER_JOBS = {"purge_cancelled_tenants", "audit_retention", "run_owner_job"}


def _names(groups: tuple[str, ...]) -> set[str]:
    from function_app import create_app

    return {fn.get_function_name() for fn in create_app(groups).get_functions()}


def test_the_owner_group_registers_only_the_owner_timers_and_queue_and_no_route() -> None:
    from function_app import create_app

    functions = create_app(("owner",)).get_functions()
    assert {fn.get_function_name() for fn in functions} == OWNER_JOBS
    assert {fn.get_trigger().get_binding_name() for fn in functions} == {"timerTrigger", "queueTrigger"}
    queue = next(fn.get_trigger() for fn in functions if fn.get_function_name() == "run_owner_job")
    assert (queue.queue_name, queue.connection) == ("%OWNER_JOBS_QUEUE%", "JobsStorage")


def test_the_api_group_registers_everything_but_the_owner_jobs() -> None:
    api, both = _names(("api",)), _names(("api", "owner"))
    assert not api & OWNER_JOBS
    assert both == api | OWNER_JOBS and "health_check" in api


def test_function_app_registers_the_groups_its_setting_names() -> None:
    code = "import function_app\nprint(sorted(f.get_function_name() for f in function_app.app.get_functions()))"
    for groups, want in (("owner", sorted(OWNER_JOBS)), ("api", sorted(_names(("api",))))):
        env = {**os.environ, "CUSTOS_FUNCTION_GROUPS": groups}
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=120, check=True)
        assert json.loads(done.stdout.splitlines()[-1].replace("'", '"')) == want, groups
    env = {k: v for k, v in os.environ.items() if k != "CUSTOS_FUNCTION_GROUPS"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120, check=True)
    assert not OWNER_JOBS & set(json.loads(done.stdout.splitlines()[-1].replace("'", '"'))), "the default is api"
