"""function_app loads in the real Functions worker (azure-functions-runtime) on Python 3.13.

The worker venv (requirements-worker.txt: requirements.txt plus the worker) is built once
under .local/worker/, keyed by a hash of the requirement files, the protocol files and the
interpreter, and reused after that. tests/worker/probe.py runs in it: it sends the worker
the host's WorkerInitRequest (the worker imports function_app.py and indexes it),
FunctionsMetadataRequest and an HTTP InvocationRequest for /api/health.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from function_app import create_app

ROOT = Path(__file__).resolve().parent.parent
WORKER_DIR = ROOT / ".local" / "worker"
PROTO_SRC = ROOT / "tests" / "worker" / "proto"
PROBE = ROOT / "tests" / "worker" / "probe.py"
PROTO_PACKAGE = "workerprotos"


def _python313() -> str | None:
    """A Python 3.13 interpreter: $CUSTOS_PYTHON313, python3.13 on PATH, or pyenv's."""
    candidates = [os.environ.get("CUSTOS_PYTHON313"), shutil.which("python3.13")]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.13*/bin/python3.13")), reverse=True)
    for candidate in candidates:
        if not candidate or not os.access(candidate, os.X_OK):
            continue
        # A pyenv shim is on PATH even where it has no 3.13 to run: ask the interpreter itself.
        check = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 13))"],
                               capture_output=True, text=True)
        if check.returncode == 0 and check.stdout.strip() == "True":
            return candidate
    return None


def _venv_key(python: str) -> str:
    digest = hashlib.sha256()
    version = subprocess.run([python, "-c", "import sys; print(sys.version)"], check=True,
                             capture_output=True, text=True).stdout
    digest.update(version.encode())
    files = [ROOT / "requirements.txt", ROOT / "requirements-worker.txt", *sorted(PROTO_SRC.rglob("*.proto"))]
    for path in files:
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _compile_protos(venv_python: Path, out: Path) -> None:
    """Compile the host protocol into `out`/workerprotos, imports prefixed so `shared` stays ours."""
    src = out / "src"
    for proto in PROTO_SRC.rglob("*.proto"):
        target = src / PROTO_PACKAGE / proto.relative_to(PROTO_SRC)
        target.parent.mkdir(parents=True, exist_ok=True)
        text = re.sub(r'^import "(?!google/)', f'import "{PROTO_PACKAGE}/', proto.read_text(), flags=re.M)
        target.write_text(text)
    protos = sorted(str(p.relative_to(src)) for p in src.rglob("*.proto"))
    subprocess.run([str(venv_python), "-m", "grpc_tools.protoc", f"-I{src}", f"--python_out={out}", *protos],
                   cwd=src, check=True, capture_output=True, text=True)


def _worker_venv(python: str) -> Path:
    """The cached worker venv for this interpreter and these requirements (built on first use).

    Raises:
        subprocess.CalledProcessError: the venv, the install or protoc failed.
    """
    venv = WORKER_DIR / f"py313-{_venv_key(python)}"
    WORKER_DIR.mkdir(parents=True, exist_ok=True)
    with open(WORKER_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two pytest runs must not build one venv together
        if (venv / "complete").exists():
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([python, "-m", "venv", str(venv)], check=True, capture_output=True, text=True)
        pip = subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q",
             "-r", str(ROOT / "requirements-worker.txt")],
            capture_output=True, text=True,
        )
        if pip.returncode:
            pytest.fail(f"pip install -r requirements-worker.txt failed on {python}:\n{pip.stdout}\n{pip.stderr}")
        _compile_protos(venv / "bin" / "python", venv / "protos")
        (venv / "complete").write_text("ok\n")
        for stale in WORKER_DIR.glob("py313-*"):  # venvs of older requirement files
            if stale != venv:
                shutil.rmtree(stale, ignore_errors=True)
    return venv


def _index(groups: str) -> dict[str, Any]:
    """The worker's view of function_app with CUSTOS_FUNCTION_GROUPS=`groups`."""
    python = _python313()
    if python is None:
        pytest.skip("no Python 3.13 interpreter (set CUSTOS_PYTHON313, or put python3.13 on PATH or in pyenv)")
    venv = _worker_venv(python)
    run = subprocess.run(
        [str(venv / "bin" / "python"), str(PROBE), str(venv / "protos"), str(ROOT)],
        cwd=ROOT, env={**os.environ, "CUSTOS_FUNCTION_GROUPS": groups}, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    summary: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["init"]["ok"], f"the worker refused function_app: {summary['init']['exception']}"
    assert summary["metadata"]["ok"], summary["metadata"]["exception"]
    return summary


@pytest.fixture(scope="module")
def indexed() -> dict[str, Any]:
    """The HTTP-facing app, as Azure runs it (CUSTOS_FUNCTION_GROUPS=api)."""
    return _index("api")


@pytest.fixture(scope="module")
def indexed_owner() -> dict[str, Any]:
    """The owner-jobs app, as Azure runs it (CUSTOS_FUNCTION_GROUPS=owner)."""
    return _index("owner")


def _expected(groups: tuple[str, ...] = ("api",)) -> dict[str, list[dict[str, Any]]]:
    return {
        fn.get_function_name(): sorted((json.loads(b) for b in fn.get_raw_bindings()), key=lambda b: b["name"])
        for fn in create_app(groups).get_functions()
    }


def test_worker_runs_on_python_313_with_the_sdk_requirements_pins_there(indexed: dict[str, Any]) -> None:
    assert indexed["python"] == "3.13"
    requirements = (ROOT / "requirements.txt").read_text()
    (pin,) = re.findall(r'^azure-functions==(\S+); python_version >= "3\.13"$', requirements, flags=re.M)
    assert indexed["azure_functions"] == pin


def test_worker_indexes_every_function_of_the_app_with_its_bindings(indexed: dict[str, Any]) -> None:
    expected = _expected()
    functions = indexed["functions"]
    assert sorted(functions) == sorted(expected)
    for name, bindings in expected.items():
        got = functions[name]
        assert got["worker_indexed"] == "True"
        assert got["script_file"] == "function_app.py"
        assert sorted(got["raw_bindings"], key=lambda b: b["name"]) == bindings, name
        assert {b: v["type"] for b, v in got["bindings"].items()} == {b["name"]: b["type"] for b in bindings}


def test_worker_sees_http_routes_methods_and_timer_schedules(indexed: dict[str, Any]) -> None:
    triggers = {
        name: next(b for b in fn["raw_bindings"] if b["type"].endswith("Trigger"))
        for name, fn in indexed["functions"].items()
    }
    health = triggers["health_check"]
    assert (health["route"], health["methods"], health["authLevel"]) == ("api/health", ["GET"], "ANONYMOUS")
    timers = {name: t for name, t in triggers.items() if t["type"] == "timerTrigger"}
    assert timers, "the app has timers; the worker indexed none"
    sample = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
    for name, timer in timers.items():
        # The host resolves %SETTING% from app settings; each must be a six-field NCRONTAB there.
        setting = re.fullmatch(r"%(\w+)%", timer["schedule"])
        assert setting, (name, timer["schedule"])
        assert len(sample[setting[1]].split()) == 6, (name, sample[setting[1]])
    http = [t for t in triggers.values() if t["type"] == "httpTrigger"]
    assert http and all(t["route"] and t["methods"] for t in http)


def test_health_answers_through_the_worker_invocation_path(indexed: dict[str, Any]) -> None:
    assert indexed["invocation"]["ok"], indexed["invocation"]["exception"]
    health = indexed["health"]
    assert health["status_code"] == "200", health
    assert health["headers"]["content-type"].startswith("application/json")
    assert health["headers"]["x-content-type-options"] == "nosniff"
    assert health["headers"]["x-request-id"]
    assert json.loads(health["body"])["ok"] is True


def test_worker_indexes_only_the_owner_jobs_in_the_owner_app(indexed_owner: dict[str, Any]) -> None:
    functions = indexed_owner["functions"]
    assert sorted(functions) == ["audit_retention", "purge_cancelled_tenants", "run_owner_job"]
    for name, bindings in _expected(("owner",)).items():
        assert sorted(functions[name]["raw_bindings"], key=lambda b: b["name"]) == bindings, name
    triggers = {b["type"] for fn in functions.values() for b in fn["raw_bindings"]}
    assert triggers == {"timerTrigger", "queueTrigger"}, "the owner app must have no HTTP route"
    assert "invocation" not in indexed_owner, "the probe found a health route in the owner app"


def test_worker_indexes_no_owner_job_in_the_api_app(indexed: dict[str, Any]) -> None:
    assert not {"audit_retention", "purge_cancelled_tenants", "run_owner_job"} & set(indexed["functions"])
