"""The deployment package holds the app and nothing else (.funcignore).

`package_files` lists files the way Core Tools does for `func azure functionapp publish`
and `func pack` (FileSystemHelpers.GetLocalFiles): walk the app root, skip directories
named .git and .vscode and files named .funcignore, .gitignore, local.settings.json and
project.lock.json anywhere, then keep each file whose path from the root (with "/")
.funcignore's gitignore rules accept.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pathspec

from function_app import create_app

ROOT = Path(__file__).resolve().parent.parent

CORE_TOOLS_SKIPPED_DIRS = {".git", ".vscode"}
CORE_TOOLS_SKIPPED_FILES = {".funcignore", ".gitignore", "local.settings.json", "project.lock.json"}

APP_FILES = {
    "function_app.py", "host.json", "requirements.txt",
    "functions/__init__.py", "functions/system.py",
    "shared/db.py", "shared/migrations/0001_tenants.sql",
    "shared/data/common-passwords.txt", "shared/data/NOTICE.md",
    # the layout after shared/ moves into sub-packages
    "shared/core/__init__.py", "shared/core/migrations/0020_x.sql", "shared/identity/mfa/totp.py",
    # the console's built assets (console/dist is built, not committed)
    "console/dist/index.html", "console/dist/assets/index-AbCd1234.js", "console/dist/assets/index-AbCd1234.css",
}

NOT_SHIPPED = {
    # secrets and local state
    ".local/test/keys/signing.pem", ".local/test/services.env", ".local/worker/py313-x/bin/python",
    ".local/test/pgdata/PG_VERSION", "local.settings.json", "local.settings.sample.json",
    "local.settings.prod.json", "shared/stray-tenant-key.pem", "key.pem", "tls.key", "cert.pfx",
    ".env", ".env.production",
    # environments, dependencies, caches
    ".venv/lib/python3.11/site-packages/jwt/__init__.py", "venv/bin/activate",
    ".python_packages/lib/site-packages/x.py", "node_modules/azurite/package.json",
    "shared/__pycache__/db.cpython-311.pyc", "functions/__pycache__/system.cpython-313.pyc", "shared/db.pyc",
    ".pytest_cache/v/cache/lastfailed", ".mypy_cache/3.11/shared/db.data.json", ".ruff_cache/0.17.6/123",
    ".hypothesis/examples/abc/def", ".coverage", "htmlcov/index.html",
    # version control, CI, editors
    ".git/config", ".gitignore", ".gitattributes", ".github/workflows/ci.yml", ".ci/run",
    ".vscode/settings.json", ".idea/workspace.xml", ".funcignore",
    # development, test and ops tooling, docs, infrastructure
    "devhost/server.py", "tests/conftest.py", "tests/worker/proto/FunctionRpc.proto", "bench/runner.py",
    "tools/readme_tables.py", "scripts/devservices.py", "docs/security.md", "infra/bicep/main.bicep",
    "azure.yaml", "Makefile", "pyproject.toml", "package.json", "package-lock.json",
    "requirements-dev.txt", "requirements-worker.txt", "README.md",
    # the console's sources and toolchain
    "console/src/main.ts", "console/src/pages/signin.ts", "console/index.html", "console/package.json",
    "console/package-lock.json", "console/tsconfig.json", "console/vite.config.ts",
    "console/node_modules/vite/package.json",
}

FORBIDDEN = ("*.pem", ".local/*", "local.settings.json", "*/local.settings.json")


def _spec(root: Path) -> pathspec.GitIgnoreSpec:
    return pathspec.GitIgnoreSpec.from_lines((root / ".funcignore").read_text().splitlines())


def package_files(root: Path) -> set[str]:
    """The files Core Tools would put in the deployment package of `root`."""
    spec = _spec(root)
    files: set[str] = set()
    # followlinks: .NET's directory walk enters symlinked directories (.venv and node_modules
    # are symlinks in worktrees); an excluded directory is pruned before it is entered.
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        rel = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if rel == "." else rel + "/"
        dirnames[:] = [d for d in dirnames
                       if d not in CORE_TOOLS_SKIPPED_DIRS and not spec.match_file(prefix + d + "/")]
        files.update(prefix + f for f in filenames
                     if f not in CORE_TOOLS_SKIPPED_FILES and not spec.match_file(prefix + f))
    return files


def test_funcignore_has_no_reinclude_rules() -> None:
    # package_files prunes excluded directories, as git does; a "!" rule would make Core
    # Tools (which tests every file) and this test disagree.
    rules = [line.strip() for line in (ROOT / ".funcignore").read_text().splitlines()]
    assert not [r for r in rules if r.startswith("!")]


def test_package_holds_the_app_and_leaves_out_tooling_secrets_and_caches(tmp_path: Path) -> None:
    shutil.copy(ROOT / ".funcignore", tmp_path / ".funcignore")
    for name in APP_FILES | NOT_SHIPPED - {".funcignore"}:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    assert package_files(tmp_path) == APP_FILES


def test_package_of_this_tree_has_every_app_file_and_nothing_forbidden() -> None:
    package = package_files(ROOT)
    app = {"function_app.py", "host.json", "requirements.txt"}
    for top in ("functions", "shared", "console/dist"):
        app |= {p.relative_to(ROOT).as_posix() for p in (ROOT / top).rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    assert any(p.endswith(".sql") for p in app) and any("/data/" in p for p in app)
    assert app <= package, sorted(app - package)
    assert package == app, sorted(package - app)
    assert not [p for p in package if any(fnmatch.fnmatch(p, f) for f in FORBIDDEN)]


def test_package_imports_and_registers_every_function_on_its_own(tmp_path: Path) -> None:
    for name in package_files(ROOT):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tmp_path / name)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = ("import json, sys, function_app; print(json.dumps({'files': [m.__file__ for n, m in sys.modules.items() "
             "if n.split('.')[0] in ('function_app', 'functions', 'shared') and getattr(m, '__file__', None)], "
             "'functions': sorted(f.get_function_name() for f in function_app.app.get_functions())}))")
    run = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    loaded = json.loads(run.stdout.strip().splitlines()[-1])
    assert all(Path(f).is_relative_to(tmp_path) for f in loaded["files"]), loaded["files"]
    assert loaded["functions"] == sorted(f.get_function_name() for f in create_app().get_functions())
