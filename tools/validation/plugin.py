"""A pytest plugin that records, per test, the requirements it demonstrates and how it ended.

    pytest -p tools.validation.plugin --requirements-json results.json -m requirement

Loaded only by `python -m shared.cli validation-report` (or by hand): `make test` does not pay
for it. The `requirement` marker itself is registered in pyproject.toml, so `--strict-markers`
refuses a misspelt marker everywhere; this plugin also refuses an id the catalogue does not know.

The environment (PostgreSQL server version, Azurite version) is read here, from inside the run,
from the very services the tests used.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from tools.validation.catalogue import ROOT, lookup

MARKER = "requirement"


def requirement_ids(item: pytest.Item) -> list[str]:
    """The requirement ids of a test, in the order its markers give them, without repeats.

    Raises:
        pytest.UsageError: a marker names no id, or an id that is not in the catalogue.
    """
    ids: list[str] = []
    for mark in item.iter_markers(MARKER):
        if not mark.args:
            raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.requirement needs at least one id")
        for req_id in mark.args:
            try:
                lookup(str(req_id))
            except KeyError:
                raise pytest.UsageError(f"{item.nodeid}: unknown requirement id {req_id!r}") from None
            if req_id not in ids:
                ids.append(str(req_id))
    return ids


@dataclass
class _Result:
    nodeid: str
    requirements: list[str]
    outcome: str = "not run"
    duration: float = 0.0
    phases: dict[str, str] = field(default_factory=dict)


class Recorder:
    """Collects one `_Result` per test and writes them, with the environment, at the end."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.results: dict[str, _Result] = {}
        self.started = datetime.now(UTC)
        self.collected = False

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            self.results[item.nodeid] = _Result(item.nodeid, requirement_ids(item))
        self.collected = True

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        result = self.results.get(report.nodeid)
        if result is None:
            return
        result.duration += report.duration
        outcome: str = report.outcome
        if hasattr(report, "wasxfail"):
            outcome = "xfailed" if report.skipped else "xpassed"
        result.phases[report.when] = outcome
        result.outcome = _overall(result.phases)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if not self.collected:  # a refused marker: no results rather than a report missing tests
            return
        data = {
            "started": self.started.isoformat(timespec="seconds"),
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "exit_status": int(exitstatus),
            "args": list(session.config.invocation_params.args),
            "environment": environment(),
            "tests": [r.__dict__ for r in self.results.values()],
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")


def _overall(phases: dict[str, str]) -> str:
    """One outcome from the setup, call and teardown phases: an error in setup or teardown
    is an error, a failed call a failure; only a passed call with clean phases around it passes."""
    if phases.get("setup") == "failed" or phases.get("teardown") == "failed":
        return "error"
    if "call" in phases:
        return phases["call"]
    return phases.get("setup", "not run")


def _pg_version() -> str:
    url = os.environ.get("DATABASE_URL", "")
    if not url:
        return "unknown (no DATABASE_URL)"
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=5) as conn:
            row = conn.execute("select version()").fetchone()
        return str(row[0]) if row else "unknown"
    except Exception as exc:  # the report still says why, instead of losing the whole run
        return f"unknown ({type(exc).__name__})"


def _azurite_version() -> str:
    """The `Server` header of the Azurite blob endpoint the tests used (e.g. Azurite-Blob/3.35.0)."""
    conn = os.environ.get("STORAGE_CONNECTION_STRING", "")
    match = re.search(r"BlobEndpoint=(https?://[^;]+)", conn)
    if not match:
        return "unknown (no BlobEndpoint)"
    try:
        urllib.request.urlopen(match.group(1).rstrip("/") + "/?comp=list", timeout=5)  # noqa: S310 (our own endpoint)
    except urllib.error.HTTPError as exc:  # 403 without a signature: the header is still there
        return exc.headers.get("Server") or "unknown"
    except OSError as exc:
        return f"unknown ({type(exc).__name__})"
    return "unknown"


def _packages() -> dict[str, str]:
    """Installed versions of the runtime and test requirements (requirements*.txt)."""
    names: set[str] = set()
    for req in ("requirements.txt", "requirements-dev.txt"):
        path = ROOT / req
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            found = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line)
            if found and not line.lstrip().startswith(("#", "-")):
                names.add(found.group(1).lower())
    versions: dict[str, str] = {}
    for name in sorted(names):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def environment() -> dict[str, Any]:
    """Where the run happened: interpreter, OS, services and packages."""
    return {
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "os": platform.platform(),
        "machine": platform.machine(),
        "postgresql": _pg_version(),
        "azurite": _azurite_version(),
        "packages": _packages(),
    }


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--requirements-json", metavar="PATH", default=None,
                     help="write each test's requirement ids, outcome and duration to PATH (JSON)")


def pytest_configure(config: pytest.Config) -> None:
    path = config.getoption("--requirements-json")
    if path:
        config.pluginmanager.register(Recorder(Path(path)), "validation-recorder")
