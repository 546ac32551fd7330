#!/usr/bin/env python3
"""Local development services for Custos: PostgreSQL and Azurite.

Standard library only: this runs with a plain ``python3`` before the venv exists.

Usage::

    python3 scripts/devservices.py up      [--profile run|test]   # start (idempotent), write env files
    python3 scripts/devservices.py down    [--profile run|test]   # stop what `up` started (data stays)
    python3 scripts/devservices.py pg-stop [--profile run|test]   # stop only PostgreSQL
    python3 scripts/devservices.py pg-start [--profile run|test]  # start only PostgreSQL again
    python3 scripts/devservices.py status  [--profile run|test]   # what is running (exit 1 if not all)
    python3 scripts/devservices.py env     [--profile run|test] [--exports]
    python3 scripts/devservices.py node                            # npm ci if node_modules is missing/stale
    python3 scripts/devservices.py destroy [--profile run|test]   # down, then delete the profile's data

Profiles (ports overridable with CUSTOS_PG_PORT and CUSTOS_AZURITE_BASE_PORT; blob/queue/table
use BASE, BASE+1, BASE+2):

    run:  PostgreSQL 54320, Azurite 10000/10001/10002
    test: PostgreSQL 54330, Azurite 20000/20001/20002

Both profiles can run at the same time: they use different ports and data directories.

PostgreSQL, first that applies:
  1. env DATABASE_URL is set (and is not one this script wrote): that server is used as an
     admin login (it must be able to create roles and databases); nothing is started.
  2. the machine's initdb/pg_ctl (PATH, then /usr/lib/postgresql/*/bin): a private cluster.
     As a normal user its data is in .local/<profile>/pg.  As root, PostgreSQL refuses to run,
     so initdb/pg_ctl run as the ``postgres`` user (created as ``custos-pg`` if no such user
     exists) with the data in /var/tmp/custos-pg/<sha256(checkout)[:12]>-<profile>/data, which
     that user can reach even when the checkout sits under a root-only directory like /root.
  3. the ``pgserver`` wheel (pip-installed into .venv only then), whose bundled binaries are
     used the same way.
  CUSTOS_PG_BINARIES=system|pgserver forces the choice between 2 and 3 (default auto).
  The cluster listens on 127.0.0.1 only; its unix socket is in the data directory's parent.
  Generated passwords are kept in .local/ (mode 600, git-ignored) and reused.  Then roles
  custos_owner / custos_app and database custos are created (idempotently) with psql over TCP.

Azurite: node_modules/.bin/azurite (``npm ci`` first when missing), data in
.local/<profile>/azurite, log in .local/<profile>/azurite.log.

Output of ``up``:
  .local/<profile>/services.env  KEY=VALUE lines, unquoted (python, dotenv, make ``include``).
  .local/<profile>/services.sh   the same as ``export KEY='VALUE'`` lines for shells:
                                 ``. .local/<profile>/services.sh`` (values contain ``;`` and
                                 ``=``, so do not source services.env from a shell).
  ``up`` prints the path of services.env on stdout; progress goes to stderr.

What was started is recorded in .local/<profile>/pids.json; ``down``/``pg-stop`` stop only those
processes, by PID (checked against /proc so a recycled PID is never signalled).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import glob
import hashlib
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LOCAL_ROOT = ROOT / ".local"
VENV = ROOT / ".venv"
ROOT_PG_BASE = Path("/var/tmp/custos-pg")  # noqa: S108  (owner and mode are checked before use)
PGSERVER_REQUIREMENT = "pgserver==0.1.4"

PROFILES: dict[str, dict[str, int]] = {
    "run": {"pg_port": 54320, "azurite_base": 10000},
    "test": {"pg_port": 54330, "azurite_base": 20000},
}

DB_NAME = "custos"
OWNER_ROLE = "custos_owner"
APP_ROLE = "custos_app"
SUPERUSER = "postgres"
LOCALHOST = "127.0.0.1"

# Azurite's documented, public, well-known development account (not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

START_TIMEOUT = 90.0


class DevServicesError(Exception):
    pass


def log(msg: str) -> None:
    print(f"devservices: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- small helpers


def checkout_id() -> str:
    return hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_private(path: Path, text: str) -> None:
    """Atomically write a file readable only by its owner."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_or_create_secret(path: Path) -> str:
    if path.exists():
        value = path.read_text().strip()
        if value:
            os.chmod(path, 0o600)
            return value
    value = secrets.token_urlsafe(24)  # [A-Za-z0-9_-]: safe in URLs, shells and psql
    write_private(path, value + "\n")
    return value


def port_open(port: int, host: str = LOCALHOST, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid: int | None, needle: str | None = None) -> bool:
    """True if pid runs (not a zombie) and, when /proc exists, its command line has needle."""
    if not pid or pid <= 0:
        return False
    proc = Path(f"/proc/{pid}")
    if Path("/proc/self").exists():
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return False
        if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
            return False
        return needle is None or needle in cmdline
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_until(pred: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


# --------------------------------------------------------------------------- profile / state


def env_port(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not 1024 <= int(raw) <= 65533:
        raise DevServicesError(f"{name}={raw!r} is not a port number between 1024 and 65533")
    return int(raw)


class Profile:
    def __init__(self, name: str) -> None:
        if name not in PROFILES:
            raise DevServicesError(f"unknown profile {name!r}")
        self.name = name
        self.local = LOCAL_ROOT / name
        defaults = PROFILES[name]
        self.pg_port = env_port("CUSTOS_PG_PORT", defaults["pg_port"])
        base = env_port("CUSTOS_AZURITE_BASE_PORT", defaults["azurite_base"])
        self.blob_port, self.queue_port, self.table_port = base, base + 1, base + 2
        self.state_file = self.local / "pids.json"
        self.env_file = self.local / "services.env"
        self.sh_file = self.local / "services.sh"
        self.lock_file = self.local / ".lock"
        self.pg_log = self.local / "postgres.log"
        self.azurite_log = self.local / "azurite.log"
        self.azurite_dir = self.local / "azurite"

    def load_state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_file.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def save_state(self, state: dict[str, Any]) -> None:
        state["profile"] = self.name
        state["checkout"] = str(ROOT)
        write_private(self.state_file, json.dumps(state, indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------- PostgreSQL: plan


def pg_major(bindir: Path) -> str:
    out = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"(\d+)(?:\.\d+)?", out)
    if not m:
        raise DevServicesError(f"cannot parse PostgreSQL version from {out!r}")
    return m.group(1)


def _complete_bindir(d: Path) -> bool:
    return all(os.access(d / exe, os.X_OK) for exe in ("initdb", "pg_ctl", "postgres"))


def find_system_bindir() -> Path | None:
    candidates: list[Path] = []
    for exe in ("pg_ctl", "initdb"):
        found = shutil.which(exe)
        if found:
            candidates.append(Path(os.path.realpath(found)).parent)

    def version_key(p: str) -> tuple[int, str]:
        m = re.search(r"/postgresql/(\d+)/", p)
        return (int(m.group(1)) if m else 0, p)

    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version_key, reverse=True)]
    for d in candidates:
        if _complete_bindir(d):
            return d
    return None


def venv_python() -> Path:
    py = VENV / "bin" / "python"
    if not py.exists():
        log(f"creating {VENV} (for pgserver)")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    return py


def find_pgserver_bindir(install: bool) -> Path | None:
    def locate() -> Path | None:
        py = VENV / "bin" / "python"
        if not py.exists():
            return None
        code = (
            "import importlib.util as u; s = u.find_spec('pgserver'); "
            "print(list(s.submodule_search_locations)[0] if s and s.submodule_search_locations else '')"
        )
        out = subprocess.run([str(py), "-c", code], check=False, capture_output=True, text=True).stdout.strip()
        if out and _complete_bindir(Path(out) / "pginstall" / "bin"):
            return Path(out) / "pginstall" / "bin"
        return None

    found = locate()
    if found or not install:
        return found
    with file_lock(LOCAL_ROOT / ".venv.lock"):
        found = locate()
        if found:
            return found
        py = venv_python()
        log(f"no PostgreSQL server binaries on this machine: pip installing {PGSERVER_REQUIREMENT} into {VENV}")
        subprocess.run([str(py), "-m", "pip", "install", "--quiet", PGSERVER_REQUIREMENT], check=True)
    found = locate()
    if not found:
        raise DevServicesError("pgserver installed but its binaries (pgserver/pginstall/bin) were not found")
    return found


def external_admin_url(local_ok: bool = True) -> str | None:
    """The DATABASE_URL to use as an admin login, unless it is one this script wrote."""
    url = os.environ.get("DATABASE_URL", "").strip()
    if not url:
        return None
    for env_file in LOCAL_ROOT.glob("*/services.env"):
        with contextlib.suppress(OSError):
            if parse_env_file(env_file).get("DATABASE_URL") == url:
                return None  # our own app URL leaked in from a loaded services.sh: ignore it
    return url


def pg_run_as() -> str | None:
    if not is_root():
        return None
    for name in ("postgres", "custos-pg"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    log("no 'postgres' system user: creating 'custos-pg' to run PostgreSQL (it refuses to run as root)")
    subprocess.run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            str(ROOT_PG_BASE),
            "--shell",
            "/usr/sbin/nologin",
            "custos-pg",
        ],
        check=True,
    )
    return "custos-pg"


def as_user(cmd: list[str], user: str | None) -> list[str]:
    if user is None:
        return cmd
    if shutil.which("runuser"):
        return ["runuser", "-u", user, "--", *cmd]
    if shutil.which("su"):
        return ["su", user, "-s", "/bin/sh", "-c", shlex.join(cmd)]
    raise DevServicesError("running as root but neither runuser nor su exists to drop to the postgres user")


def ensure_root_base(user: str, profile: Profile) -> Path:
    """ROOT_PG_BASE/<checkout-hash>-<profile>/, owned by the postgres user, mode 700."""
    ROOT_PG_BASE.mkdir(mode=0o755, exist_ok=True)
    st = os.lstat(ROOT_PG_BASE)
    if not os.path.isdir(ROOT_PG_BASE) or os.path.islink(ROOT_PG_BASE) or st.st_uid != 0 or st.st_mode & 0o022:
        raise DevServicesError(f"{ROOT_PG_BASE} must be a real directory owned by root and not group/world-writable")
    base = ROOT_PG_BASE / f"{checkout_id()}-{profile.name}"
    base.mkdir(mode=0o700, exist_ok=True)
    if os.path.islink(base):
        raise DevServicesError(f"{base} is a symlink; refusing to use it")
    pw = pwd.getpwnam(user)
    os.chown(base, pw.pw_uid, pw.pw_gid)
    os.chmod(base, 0o700)
    marker = base / "checkout.txt"
    if not marker.exists():
        marker.write_text(f"{ROOT}\n")
        os.chown(marker, pw.pw_uid, pw.pw_gid)
    return base


def reachable_bindir(bindir: Path, user: str | None) -> Path:
    """As root, the postgres user must be able to run the binaries (pgserver's may sit under /root)."""
    if user is None:
        return bindir
    probe = as_user(["test", "-x", str(bindir / "postgres")], user)
    if subprocess.run(probe, check=False, cwd="/", capture_output=True).returncode == 0:
        return bindir
    install_root = bindir.parent
    # Keep the layout the binaries' relative RPATHs expect: pgserver's wheel (auditwheel)
    # links bin/* against $ORIGIN/../../../pgserver.libs.
    copies = [(install_root, Path(install_root.name))]
    bin_rel = Path(install_root.name) / "bin"
    if install_root.parent.name == "pgserver":
        top = install_root.parent.parent
        copies = [(install_root, Path("pgserver") / install_root.name)]
        copies += [(p, Path(p.name)) for p in top.glob("pgserver*.libs")]
        bin_rel = Path("pgserver") / install_root.name / "bin"
    st = (bindir / "postgres").stat()
    key = f"{install_root}|{st.st_size}|{st.st_mtime_ns}"
    dest = ROOT_PG_BASE / f"pginstall-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if not (dest / bin_rel / "postgres").exists():
        log(f"copying {install_root} to {dest} so the {user} user can run it")
        ROOT_PG_BASE.mkdir(mode=0o755, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=ROOT_PG_BASE, prefix=".pginstall-"))
        for src, rel in copies:
            shutil.copytree(src, tmp / "t" / rel, symlinks=True)
        subprocess.run(["chmod", "-R", "a+rX,go-w", str(tmp / "t")], check=True)
        try:
            os.replace(tmp / "t", dest)
        except OSError:
            pass  # another `up` won the race
        shutil.rmtree(tmp, ignore_errors=True)
    return dest / bin_rel


def pg_plan(profile: Profile, *, allow_external: bool, install: bool) -> dict[str, Any]:
    """Where and how PostgreSQL for this profile lives (does not start anything)."""
    if allow_external:
        url = external_admin_url()
        if url:
            return {"mode": "external", "admin_url": url}
    source = os.environ.get("CUSTOS_PG_BINARIES", "auto")
    if source not in ("auto", "system", "pgserver"):
        raise DevServicesError(f"CUSTOS_PG_BINARIES must be auto, system or pgserver, not {source!r}")
    mode = "system"
    bindir = None if source == "pgserver" else find_system_bindir()
    if bindir is None and source == "system":
        raise DevServicesError("CUSTOS_PG_BINARIES=system but no initdb/pg_ctl/postgres found")
    if bindir is None:
        mode = "pgserver"
        bindir = find_pgserver_bindir(install=install)
        if bindir is None:
            raise DevServicesError("no PostgreSQL server binaries found (and pgserver is not installed)")
    user = pg_run_as()
    if user is None:
        base = profile.local
        base.mkdir(parents=True, exist_ok=True)
        datadir = base / "pg"
    else:
        base = ensure_root_base(user, profile)
        datadir = base / "data"
        bindir = reachable_bindir(bindir, user)
    sockdir = str(base)
    if len(sockdir) + len("/.s.PGSQL.65535") >= 107:
        sockdir = ""  # path too long for a unix socket: TCP only
    return {
        "mode": mode,
        "bindir": str(bindir),
        "run_as": user,
        "base": str(base),
        "datadir": str(datadir),
        "socket_dir": sockdir,
    }


def plan_from_state(profile: Profile, state: dict[str, Any]) -> dict[str, Any]:
    pg = state.get("postgres")
    if isinstance(pg, dict) and pg.get("mode"):
        return pg
    return pg_plan(profile, allow_external=False, install=False)


# --------------------------------------------------------------------------- PostgreSQL: passwords


def secrets_dir(profile: Profile, plan: dict[str, Any]) -> Path:
    if plan["mode"] != "external":
        return profile.local
    # Passwords for an external server are shared by both profiles: they use the same roles.
    parts = urllib.parse.urlsplit(plan["admin_url"])
    key = f"{parts.hostname}:{parts.port or 5432}"
    return LOCAL_ROOT / "external" / hashlib.sha256(key.encode()).hexdigest()[:12]


def passwords(profile: Profile, plan: dict[str, Any]) -> dict[str, str]:
    d = secrets_dir(profile, plan)
    out = {
        OWNER_ROLE: read_or_create_secret(d / f"pg-{OWNER_ROLE}.password"),
        APP_ROLE: read_or_create_secret(d / f"pg-{APP_ROLE}.password"),
    }
    if plan["mode"] != "external":
        out[SUPERUSER] = read_or_create_secret(d / f"pg-{SUPERUSER}.password")
    return out


# --------------------------------------------------------------------------- PostgreSQL: run


def postmaster_info(plan: dict[str, Any]) -> tuple[int, int] | None:
    """(pid, port) of a live postmaster for this data directory, else None."""
    try:
        lines = (Path(plan["datadir"]) / "postmaster.pid").read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (OSError, ValueError, IndexError):
        return None
    return (pid, port) if pid_alive(pid, "postgres") else None


def pg_tool(plan: dict[str, Any], name: str) -> str:
    own = Path(plan["bindir"]) / name
    if own.exists():
        return str(own)
    found = shutil.which(name)
    if not found:
        raise DevServicesError(f"{name} not found (looked in {plan['bindir']} and PATH)")
    return found


def run_pg_cmd(plan: dict[str, Any], cmd: list[str], logfile: Path, check: bool = True) -> int:
    full = as_user(cmd, plan.get("run_as"))
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "ab") as lf:
        lf.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n".encode())
        lf.flush()
        # cwd must be reachable by the postgres user (the checkout may be under /root).
        rc = subprocess.run(
            full, check=False, stdin=subprocess.DEVNULL, stdout=lf, stderr=subprocess.STDOUT, cwd=plan["base"]
        ).returncode
    if check and rc != 0:
        raise DevServicesError(f"{shlex.join(cmd)} failed (exit {rc}); last lines of {logfile}:\n{tail(logfile)}")
    return rc


def c_utf8_available() -> bool:
    try:
        out = subprocess.run(["locale", "-a"], check=False, capture_output=True, text=True).stdout.lower()
    except OSError:
        return False
    return "c.utf8" in out or "c.utf-8" in out


def pg_initdb(profile: Profile, plan: dict[str, Any], superuser_pw: str) -> None:
    datadir = Path(plan["datadir"])
    bindir = Path(plan["bindir"])
    if (datadir / "PG_VERSION").exists():
        have, want = (datadir / "PG_VERSION").read_text().strip(), pg_major(bindir)
        if have != want:
            raise DevServicesError(
                f"{datadir} holds a PostgreSQL {have} cluster but the binaries in {bindir} are {want}; "
                f"run `python3 scripts/devservices.py destroy --profile {profile.name}` to start afresh"
            )
        return
    if datadir.exists():
        log(f"removing incomplete data directory {datadir}")
        shutil.rmtree(datadir)
    log(
        f"initdb {datadir} ({plan['mode']} PostgreSQL {pg_major(bindir)}"
        + (f", as user {plan['run_as']})" if plan.get("run_as") else ")")
    )
    base = Path(plan["base"])
    fd, pwfile = tempfile.mkstemp(dir=base, prefix=".pwfile.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(superuser_pw + "\n")
        os.chmod(pwfile, 0o600)
        if plan.get("run_as"):
            pw = pwd.getpwnam(plan["run_as"])
            os.chown(pwfile, pw.pw_uid, pw.pw_gid)
        locale_args = ["--locale=C"] + (["--lc-ctype=C.UTF-8"] if c_utf8_available() else [])
        run_pg_cmd(
            plan,
            [
                str(bindir / "initdb"),
                "-D",
                str(datadir),
                "-U",
                SUPERUSER,
                f"--pwfile={pwfile}",
                "--auth-local=peer",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                *locale_args,
            ],
            profile.pg_log,
        )
    finally:
        with contextlib.suppress(OSError):
            os.unlink(pwfile)


def pg_server_options(profile: Profile, plan: dict[str, Any], port: int) -> str:
    opts = [
        "-c",
        f"listen_addresses={LOCALHOST}",
        "-p",
        str(port),
        "-c",
        f"unix_socket_directories={plan['socket_dir']}",
    ]
    if profile.name == "test":  # throwaway data: trade crash safety for speed
        opts += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
    return " ".join(shlex.quote(o) for o in opts)  # pg_ctl hands -o to /bin/sh


def pg_start(profile: Profile, plan: dict[str, Any], port: int) -> int:
    if port_open(port):
        raise DevServicesError(
            f"port {LOCALHOST}:{port} is already in use by something this script did not start "
            f"(set CUSTOS_PG_PORT to use another port)"
        )
    log(f"starting PostgreSQL on {LOCALHOST}:{port} (data {plan['datadir']}, log {profile.pg_log})")
    # No -l: the server inherits our log file descriptor, so the postgres user never has to
    # open a file under the (possibly root-only) checkout.
    run_pg_cmd(
        plan,
        [
            str(Path(plan["bindir"]) / "pg_ctl"),
            "start",
            "-D",
            plan["datadir"],
            "-w",
            "-t",
            str(int(START_TIMEOUT)),
            "-o",
            pg_server_options(profile, plan, port),
        ],
        profile.pg_log,
    )
    if not wait_until(lambda: pg_ready(plan, port), START_TIMEOUT):
        raise DevServicesError(f"PostgreSQL did not accept connections on port {port}:\n{tail(profile.pg_log)}")
    info = postmaster_info(plan)
    if info is None:
        raise DevServicesError(f"PostgreSQL started but postmaster.pid is unreadable:\n{tail(profile.pg_log)}")
    return info[0]


def pg_ready(plan: dict[str, Any], port: int) -> bool:
    isready = Path(plan.get("bindir", "")) / "pg_isready"
    exe = str(isready) if isready.exists() else shutil.which("pg_isready")
    if exe:
        return subprocess.run([exe, "-q", "-h", LOCALHOST, "-p", str(port), "-t", "2"], check=False).returncode == 0
    return port_open(port)


def pg_stop(profile: Profile, plan: dict[str, Any]) -> bool:
    if plan.get("mode") == "external":
        return False
    if postmaster_info(plan) is None:
        return False
    log(f"stopping PostgreSQL ({plan['datadir']})")
    run_pg_cmd(
        plan,
        [str(Path(plan["bindir"]) / "pg_ctl"), "stop", "-D", plan["datadir"], "-m", "fast", "-w", "-t", "60"],
        profile.pg_log,
    )
    return True


def ensure_postgres(
    profile: Profile, state: dict[str, Any], plan: dict[str, Any], pws: dict[str, str], port: int
) -> None:
    if plan["mode"] == "external":
        state["postgres"] = {"mode": "external", "pid": None}
        return
    info = postmaster_info(plan)
    if info and info[1] != port:
        log(f"PostgreSQL is running on port {info[1]} but {port} is wanted: restarting it")
        pg_stop(profile, plan)
        info = None
    if info and not wait_until(lambda: pg_ready(plan, port), 15):
        raise DevServicesError(f"PostgreSQL pid {info[0]} is running but port {port} does not answer")
    if info:
        pid = info[0]
        log(f"PostgreSQL already running (pid {pid}, port {port})")
    else:
        existed = (Path(plan["datadir"]) / "PG_VERSION").exists()
        pw_file = secrets_dir(profile, plan) / f"pg-{SUPERUSER}.password"
        pg_initdb(profile, plan, pws[SUPERUSER])
        pid = pg_start(profile, plan, port)
        if existed and not check_login(SUPERUSER, pws[SUPERUSER], port):
            reset_superuser_password(profile, plan, pws[SUPERUSER], port, pw_file)
    state["postgres"] = {**plan, "pid": pid, "port": port}


def check_login(user: str, password: str, port: int) -> bool:
    env = {**os.environ, "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "5"}
    cmd = [
        psql_exe(),
        "-X",
        "-q",
        "-w",
        "-h",
        LOCALHOST,
        "-p",
        str(port),
        "-U",
        user,
        "-d",
        "postgres",
        "-c",
        "select 1",
    ]
    return subprocess.run(cmd, check=False, env=env, capture_output=True).returncode == 0


def reset_superuser_password(profile: Profile, plan: dict[str, Any], password: str, port: int, pw_file: Path) -> None:
    """The data survived but .local/ (the password) did not: reset it over the peer-auth socket."""
    if not plan.get("run_as") or not plan.get("socket_dir"):
        raise DevServicesError(
            f"cannot log in to PostgreSQL as {SUPERUSER} with the password in {pw_file}; run "
            f"`python3 scripts/devservices.py destroy --profile {profile.name}` to start afresh"
        )
    log(f"resetting the {SUPERUSER} password over the unix socket (password file was regenerated)")
    cmd = as_user(
        [
            psql_exe(),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            plan["socket_dir"],
            "-p",
            str(port),
            "-U",
            SUPERUSER,
            "-d",
            "postgres",
            "-f",
            "-",
        ],
        plan["run_as"],
    )
    sql = f"\\set pw '{password}'\nALTER ROLE {SUPERUSER} PASSWORD :'pw';\n"
    subprocess.run(cmd, input=sql, text=True, check=True, cwd=plan["base"], capture_output=True)


def psql_exe(plan: dict[str, Any] | None = None) -> str:
    found = shutil.which("psql")
    if found:
        return found
    if plan and (Path(plan.get("bindir", "")) / "psql").exists():
        return str(Path(plan["bindir"]) / "psql")
    for cand in sorted(glob.glob("/usr/lib/postgresql/*/bin/psql"), reverse=True):
        return cand
    raise DevServicesError("psql not found (install the PostgreSQL client, e.g. apt-get install postgresql-client)")


def split_password(url: str) -> tuple[str, str | None]:
    """Remove the password from a postgres URL (so it is not in argv); return (url, password)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url, None
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = (
        urllib.parse.quote(urllib.parse.unquote(parts.username or ""), safe="") + "@" if parts.username else ""
    ) + host
    if parts.port:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc)), urllib.parse.unquote(parts.password)


def with_credentials(url: str, user: str, password: str | None, dbname: str) -> str:
    """Same server (and query string) as url, another login and database."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or LOCALHOST
    if ":" in host:
        host = f"[{host}]"
    cred = urllib.parse.quote(user, safe="")
    if password is not None:
        cred += ":" + urllib.parse.quote(password, safe="")
    netloc = f"{cred}@{host}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(("postgresql", netloc, "/" + dbname, parts.query, ""))


PROVISION_SQL = f"""
\\set ON_ERROR_STOP 1
SELECT rolsuper AS admin_is_superuser FROM pg_roles WHERE rolname = current_user \\gset
SELECT 'CREATE ROLE {OWNER_ROLE}' WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{OWNER_ROLE}') \\gexec
ALTER ROLE {OWNER_ROLE} WITH LOGIN CREATEROLE NOCREATEDB INHERIT PASSWORD :'owner_pw';
SELECT 'CREATE ROLE {APP_ROLE}' WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}') \\gexec
ALTER ROLE {APP_ROLE} WITH LOGIN NOCREATEDB NOCREATEROLE INHERIT PASSWORD :'app_pw';
\\if :admin_is_superuser
ALTER ROLE {OWNER_ROLE} WITH NOSUPERUSER NOBYPASSRLS;
ALTER ROLE {APP_ROLE} WITH NOSUPERUSER NOBYPASSRLS;
\\else
SELECT format('GRANT {OWNER_ROLE} TO %I', current_user)
 WHERE NOT pg_has_role(current_user, '{OWNER_ROLE}', 'MEMBER') \\gexec
\\endif
SELECT 'CREATE DATABASE {DB_NAME} OWNER {OWNER_ROLE} ENCODING ''UTF8'''
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '{DB_NAME}') \\gexec
ALTER DATABASE {DB_NAME} OWNER TO {OWNER_ROLE};
REVOKE ALL ON DATABASE {DB_NAME} FROM PUBLIC;
GRANT CONNECT ON DATABASE {DB_NAME} TO {APP_ROLE};
\\connect {DB_NAME}
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
ALTER SCHEMA public OWNER TO {OWNER_ROLE};
"""  # noqa: S608  # nosec B608  # only this module's role-name constants are interpolated


def provision(admin_url: str, pws: dict[str, str], profile: Profile) -> None:
    """Roles and database, idempotently, as the admin, with psql over TCP."""
    url, password = split_password(admin_url)
    env = {**os.environ, "PGCONNECT_TIMEOUT": "10", "PGAPPNAME": "custos-devservices"}
    if password is not None:
        env["PGPASSWORD"] = password
    # Passwords go in on stdin, never on the command line.
    script = f"\\set owner_pw '{pws[OWNER_ROLE]}'\n\\set app_pw '{pws[APP_ROLE]}'\n" + PROVISION_SQL
    cmd = [psql_exe(), "-X", "-q", "-w", "-v", "ON_ERROR_STOP=1", "-d", url, "-f", "-"]
    res = subprocess.run(cmd, check=False, input=script, text=True, env=env, capture_output=True)
    if res.returncode != 0:
        raise DevServicesError(f"creating roles/database failed (psql exit {res.returncode}):\n{res.stderr.strip()}")


# --------------------------------------------------------------------------- Azurite


def azurite_bin() -> Path:
    return ROOT / "node_modules" / ".bin" / "azurite"


def ensure_node(force_if_stale: bool = False) -> None:
    """npm ci when node_modules/.bin/azurite is missing (or, if asked, older than package-lock.json)."""

    def needed() -> bool:
        if not azurite_bin().exists():
            return True
        if force_if_stale:
            lock, hidden = ROOT / "package-lock.json", ROOT / "node_modules" / ".package-lock.json"
            return not hidden.exists() or hidden.stat().st_mtime < lock.stat().st_mtime
        return False

    if not needed():
        return
    with file_lock(LOCAL_ROOT / ".npm.lock"):
        if not needed():
            return
        npm = shutil.which("npm")
        if not npm:
            raise DevServicesError("npm not found: install Node.js 20+ and npm")
        log("npm ci --no-audit --no-fund (Azurite)")
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=ROOT, check=True, stdout=sys.stderr)
        (ROOT / "node_modules" / ".package-lock.json").touch()
    if not azurite_bin().exists():
        raise DevServicesError("npm ci finished but node_modules/.bin/azurite is missing")


def find_azurite_by_location(location: Path) -> int | None:
    """A running Azurite whose --location is ours (pids.json lost): reuse it."""
    if not Path("/proc/self").exists():
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv]
        if any("azurite" in a for a in args[:3]) and "--location" in args:
            i = args.index("--location")
            if i + 1 < len(args) and os.path.realpath(args[i + 1]) == str(location.resolve()):
                pid = int(proc.name)
                if pid_alive(pid, "azurite"):
                    return pid
    return None


def azurite_ports(profile: Profile) -> list[int]:
    return [profile.blob_port, profile.queue_port, profile.table_port]


def azurite_running(profile: Profile, state: dict[str, Any]) -> int | None:
    az = state.get("azurite") or {}
    pid = az.get("pid") if isinstance(az, dict) else None
    if isinstance(pid, int) and pid_alive(pid, "azurite"):
        if az.get("ports") == azurite_ports(profile):
            return int(pid)
        log(f"Azurite is running on ports {az.get('ports')} but {azurite_ports(profile)} are wanted: restarting it")
        kill_group(int(pid), "azurite")
        return None
    return find_azurite_by_location(profile.azurite_dir)


def azurite_start(profile: Profile, state: dict[str, Any]) -> subprocess.Popen[bytes] | None:
    """Start Azurite detached unless running; returns the Popen when it was started now."""
    pid = azurite_running(profile, state)
    if pid:
        log(f"Azurite already running (pid {pid}, ports {azurite_ports(profile)})")
        state["azurite"] = {"pid": pid, "ports": azurite_ports(profile)}
        return None
    busy = [p for p in azurite_ports(profile) if port_open(p)]
    if busy:
        raise DevServicesError(
            f"port(s) {busy} already in use by something this script did not start "
            f"(set CUSTOS_AZURITE_BASE_PORT to use other ports)"
        )
    ensure_node()
    profile.azurite_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(azurite_bin()),
        "--silent",
        "--disableTelemetry",
        "--skipApiVersionCheck",
        "--loose",
        "--location",
        str(profile.azurite_dir),
        "--blobHost",
        LOCALHOST,
        "--blobPort",
        str(profile.blob_port),
        "--queueHost",
        LOCALHOST,
        "--queuePort",
        str(profile.queue_port),
        "--tableHost",
        LOCALHOST,
        "--tablePort",
        str(profile.table_port),
    ]
    log(f"starting Azurite on {LOCALHOST}:{profile.blob_port}-{profile.table_port} (log {profile.azurite_log})")
    with open(profile.azurite_log, "ab") as lf:
        lf.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n".encode())
        lf.flush()
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=lf, stderr=subprocess.STDOUT, start_new_session=True
        )
    state["azurite"] = {"pid": proc.pid, "ports": azurite_ports(profile)}
    return proc


def azurite_wait(profile: Profile, proc: subprocess.Popen[bytes] | None) -> None:
    def ready() -> bool:
        if proc is not None and proc.poll() is not None:
            raise DevServicesError(f"Azurite exited with {proc.returncode}:\n{tail(profile.azurite_log)}")
        return port_open(profile.blob_port) and port_open(profile.queue_port) and port_open(profile.table_port)

    if not wait_until(ready, START_TIMEOUT):
        raise DevServicesError(f"Azurite did not open its ports in {START_TIMEOUT:.0f}s:\n{tail(profile.azurite_log)}")


def kill_group(pid: int, needle: str, timeout: float = 15.0) -> bool:
    if not pid_alive(pid, needle):
        return False
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return False

    def sig_target(sig: int) -> None:
        if pgid == pid:
            os.killpg(pid, sig)  # Azurite leads its own process group (start_new_session)
        else:
            os.kill(pid, sig)

    with contextlib.suppress(ProcessLookupError):
        sig_target(signal.SIGTERM)
    if not wait_until(lambda: not pid_alive(pid), timeout):
        with contextlib.suppress(ProcessLookupError):
            sig_target(signal.SIGKILL)
        wait_until(lambda: not pid_alive(pid), 5)
    return True


# --------------------------------------------------------------------------- env files


def storage_connection_string(profile: Profile) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint=http://{LOCALHOST}:{profile.blob_port}/{AZURITE_ACCOUNT};"
        f"QueueEndpoint=http://{LOCALHOST}:{profile.queue_port}/{AZURITE_ACCOUNT};"
        f"TableEndpoint=http://{LOCALHOST}:{profile.table_port}/{AZURITE_ACCOUNT};"
    )


def service_values(profile: Profile, plan: dict[str, Any], pws: dict[str, str], port: int) -> dict[str, str]:
    if plan["mode"] == "external":
        server = plan["admin_url"]
        parts = urllib.parse.urlsplit(server)
        admin_user = urllib.parse.unquote(parts.username or SUPERUSER)
        admin_pw = urllib.parse.unquote(parts.password) if parts.password is not None else None
        admin_url = with_credentials(server, admin_user, admin_pw, DB_NAME)
    else:
        server = f"postgresql://{LOCALHOST}:{port}/{DB_NAME}"
        admin_url = with_credentials(server, SUPERUSER, pws[SUPERUSER], DB_NAME)
    conn = storage_connection_string(profile)
    return {
        "DATABASE_URL": with_credentials(server, APP_ROLE, pws[APP_ROLE], DB_NAME),
        "DATABASE_OWNER_URL": with_credentials(server, OWNER_ROLE, pws[OWNER_ROLE], DB_NAME),
        "DATABASE_ADMIN_URL": admin_url,
        "DATABASE_APP_ROLE": APP_ROLE,
        "STORAGE_CONNECTION_STRING": conn,
        "AzureWebJobsStorage": conn,
        "JobsStorage": conn,
        "CUSTOS_LOCAL_DIR": str(profile.local.resolve()),
        "CUSTOS_PROFILE": profile.name,
    }


def render_env(values: dict[str, str]) -> str:
    for k, v in values.items():
        if "\n" in v or "\r" in v:
            raise DevServicesError(f"{k} contains a newline")
    return "".join(f"{k}={v}\n" for k, v in values.items())


def render_sh(values: dict[str, str]) -> str:
    head = "# Generated by scripts/devservices.py; load with: . <this file>\n"
    return head + "".join(f"export {k}={shlex.quote(v)}\n" for k, v in values.items())


def parse_env_file(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            out[k] = v
    return out


# --------------------------------------------------------------------------- commands


def cmd_up(profile: Profile) -> int:
    profile.local.mkdir(mode=0o700, parents=True, exist_ok=True)
    with file_lock(profile.lock_file):
        state = profile.load_state()
        plan = pg_plan(profile, allow_external=True, install=True)
        pws = passwords(profile, plan)
        port = profile.pg_port
        if plan["mode"] == "external":
            log(f"using the PostgreSQL server of DATABASE_URL ({split_password(plan['admin_url'])[0]}); starting none")
        proc = azurite_start(profile, state)  # starts in the background while PostgreSQL comes up
        profile.save_state(state)
        ensure_postgres(profile, state, plan, pws, port)
        profile.save_state(state)
        admin_url = (
            plan["admin_url"]
            if plan["mode"] == "external"
            else with_credentials(f"postgresql://{LOCALHOST}:{port}/postgres", SUPERUSER, pws[SUPERUSER], "postgres")
        )
        provision(admin_url, pws, profile)
        azurite_wait(profile, proc)
        values = service_values(profile, plan, pws, port)
        write_private(profile.env_file, render_env(values))
        write_private(profile.sh_file, render_sh(values))
    where = "external (DATABASE_URL)" if plan["mode"] == "external" else f"{LOCALHOST}:{port}"
    log(
        f"profile {profile.name}: PostgreSQL {where}, "
        f"Azurite {profile.blob_port}/{profile.queue_port}/{profile.table_port}; "
        f"shell env: . {profile.sh_file}"
    )
    print(profile.env_file)
    return 0


def cmd_down(profile: Profile) -> int:
    if not profile.local.exists():
        log(f"profile {profile.name}: nothing to stop")
        return 0
    with file_lock(profile.lock_file):
        state = profile.load_state()
        az = state.get("azurite") or {}
        pid = az.get("pid") if isinstance(az, dict) else None
        if not (pid and pid_alive(int(pid), "azurite")):
            pid = find_azurite_by_location(profile.azurite_dir)  # pids.json lost
        if pid and pid_alive(int(pid), "azurite"):
            log(f"stopping Azurite (pid {pid})")
            kill_group(int(pid), "azurite")
        try:
            plan = plan_from_state(profile, state)
        except DevServicesError:
            plan = {"mode": "external"}
        pg_stop(profile, plan)
        with contextlib.suppress(FileNotFoundError):
            profile.state_file.unlink()
    log(f"profile {profile.name}: stopped (data kept)")
    return 0


def cmd_pg_stop(profile: Profile) -> int:
    with file_lock(profile.lock_file):
        state = profile.load_state()
        plan = plan_from_state(profile, state)
        if plan.get("mode") == "external":
            raise DevServicesError("PostgreSQL comes from DATABASE_URL here: this script does not manage it")
        stopped = pg_stop(profile, plan)
        if state:
            state.setdefault("postgres", plan)["pid"] = None
            profile.save_state(state)
    if not stopped:
        log("PostgreSQL was not running")
    return 0


def cmd_pg_start(profile: Profile) -> int:
    with file_lock(profile.lock_file):
        state = profile.load_state()
        plan = plan_from_state(profile, state)
        if plan.get("mode") == "external":
            raise DevServicesError("PostgreSQL comes from DATABASE_URL here: this script does not manage it")
        recorded = state.get("postgres") or {}
        port = int(recorded.get("port") or profile.pg_port)
        info = postmaster_info(plan)
        if info:
            log(f"PostgreSQL already running (pid {info[0]})")
            pid = info[0]
        else:
            if not (Path(plan["datadir"]) / "PG_VERSION").exists():
                raise DevServicesError(f"no cluster in {plan['datadir']}: run `up --profile {profile.name}` first")
            pid = pg_start(profile, plan, port)
        state["postgres"] = {**plan, "pid": pid, "port": port}
        profile.save_state(state)
    return 0


def cmd_status(profile: Profile) -> int:
    state = profile.load_state()
    ok = True
    print(f"profile {profile.name} (checkout {ROOT}, local dir {profile.local})")
    try:
        plan = plan_from_state(profile, state)
    except DevServicesError as exc:
        plan = {"mode": f"unavailable: {exc}"}
    if plan.get("mode") == "external":
        print("  postgres: external (DATABASE_URL), not managed here")
    elif "datadir" in plan:
        info = postmaster_info(plan)
        port = (state.get("postgres") or {}).get("port") or profile.pg_port
        if info:
            print(
                f"  postgres: running pid {info[0]} on {LOCALHOST}:{info[1]} ({plan['mode']}, data {plan['datadir']})"
            )
        else:
            ok = False
            print(f"  postgres: stopped (port {port}, {plan['mode']}, data {plan['datadir']})")
    else:
        ok = False
        print(f"  postgres: {plan.get('mode')}")
    az = state.get("azurite") or {}
    pid = az.get("pid") if isinstance(az, dict) else None
    if not pid_alive(pid, "azurite"):
        pid = find_azurite_by_location(profile.azurite_dir)
    if pid:
        print(
            f"  azurite:  running pid {pid} on {LOCALHOST}:{'/'.join(map(str, az.get('ports') or azurite_ports(profile)))}"
        )
    else:
        ok = False
        print(f"  azurite:  stopped (ports {'/'.join(map(str, azurite_ports(profile)))})")
    print(f"  env:      {profile.sh_file if profile.sh_file.exists() else '(not written yet: run up)'}")
    return 0 if ok else 1


def cmd_env(profile: Profile, exports: bool) -> int:
    if not profile.sh_file.exists():
        raise DevServicesError(f"{profile.sh_file} does not exist yet: run `up --profile {profile.name}` first")
    if exports:
        sys.stdout.write(profile.sh_file.read_text())
    else:
        print(profile.sh_file)
    return 0


def cmd_destroy(profile: Profile) -> int:
    cmd_down(profile)
    with file_lock(profile.lock_file):
        try:
            plan = pg_plan(profile, allow_external=False, install=False)
        except DevServicesError:
            plan = {}
        if plan.get("run_as") and plan.get("base"):
            log(f"removing {plan['base']}")
            shutil.rmtree(plan["base"], ignore_errors=True)
        for p in (profile.local / "pg", profile.azurite_dir):
            if p.exists():
                log(f"removing {p}")
                shutil.rmtree(p, ignore_errors=True)
        for p in list(profile.local.glob("pg-*.password")) + [profile.env_file, profile.sh_file]:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Local PostgreSQL + Azurite for Custos.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in [
        ("up", "start services (idempotent) and write .local/<profile>/services.env and services.sh"),
        ("down", "stop what up started (data stays)"),
        ("pg-stop", "stop only PostgreSQL"),
        ("pg-start", "start only PostgreSQL"),
        ("status", "show what is running (exit 1 unless everything is)"),
        ("env", "print the path of services.sh (or, with --exports, its export lines)"),
        ("destroy", "down, then delete the profile's data and passwords"),
    ]:
        p = sub.add_parser(name, help=help_)
        p.add_argument("--profile", choices=sorted(PROFILES), default="run")
        if name == "env":
            p.add_argument("--exports", action="store_true", help="print export lines instead of the path")
    sub.add_parser("node", help="npm ci when node_modules is missing or older than package-lock.json")
    args = parser.parse_args(argv)
    try:
        if args.command == "node":
            ensure_node(force_if_stale=True)
            return 0
        profile = Profile(args.profile)
        if args.command == "up":
            return cmd_up(profile)
        if args.command == "down":
            return cmd_down(profile)
        if args.command == "pg-stop":
            return cmd_pg_stop(profile)
        if args.command == "pg-start":
            return cmd_pg_start(profile)
        if args.command == "status":
            return cmd_status(profile)
        if args.command == "env":
            return cmd_env(profile, args.exports)
        if args.command == "destroy":
            return cmd_destroy(profile)
    except DevServicesError as exc:
        log(f"error: {exc}")
        return 2
    except subprocess.CalledProcessError as exc:
        log(f"error: {shlex.join(map(str, exc.cmd))} failed with exit {exc.returncode}")
        return 2
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
