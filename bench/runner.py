"""Shared helpers for the benchmarks: environment, percentiles, tables, an HTTP load driver
(optionally from a loopback address of its own), a devhost subprocess and its access log.

Nothing here asserts on time: benchmarks print what they measured next to a baseline
measured in the same run.
"""

from __future__ import annotations

import math
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def setup_env(overrides: dict[str, str] | None = None) -> None:
    """Put the test profile's settings into os.environ, before any setting is read.

    Imports tests/conftest.py, which does exactly what the test session does: takes the
    service settings (DATABASE_URL, ...) from the environment (`. .local/test/services.sh`)
    or else starts the test profile's services and reads `.local/test/services.env`, then
    sets every TEST_SETTINGS value not already set. Importing it keeps the benchmarks in
    step with the tests' settings (a copy here went stale once already).
    `overrides` replace whatever is set (a benchmark that needs a bigger pool says so).
    """
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import tests.conftest  # noqa: F401  (sets os.environ)

    for key, value in (overrides or {}).items():
        os.environ[key] = value


def migrate() -> None:
    """Apply pending migrations (idempotent, as the test session does). A migration edited
    after it ran is not repaired here (the test session resets the test schema for that)."""
    from shared.core.migrate import MigrationError
    from shared.core.migrate import migrate as run
    from shared.core.settings import get_settings

    settings = get_settings()
    try:
        run(settings.database_owner_url, settings.database_app_role)
    except MigrationError as exc:
        raise SystemExit(f"cannot migrate the benchmark database: {exc}\n"
                         "run the tests once (they reset the test schema) or `make services-destroy PROFILE=test`") from None


def work_dir() -> Path:
    """Where benchmarks write logs (git-ignored)."""
    path = Path(os.environ.get("CUSTOS_LOCAL_DIR") or ROOT / ".local" / "test") / "bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def machine() -> str:
    return f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs, {platform.machine()}"


# ----------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100), linear interpolation between closest ranks; nan if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * min(max(p, 0.0), 100.0) / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


# ----------------------------------------------------------------------------- tables


class Table:
    """A fixed-width, markdown-style table: `Table(["a", "b"]).add(1, 2).print()`.

    Numbers are right-aligned, text left-aligned; floats print with `digits` decimals.
    """

    def __init__(self, headers: Sequence[str], *, title: str | None = None, digits: int = 2) -> None:
        self.headers = [str(h) for h in headers]
        self.title = title
        self.digits = digits
        self.rows: list[list[Any]] = []

    def add(self, *cells: Any) -> Table:
        if len(cells) != len(self.headers):
            raise ValueError(f"expected {len(self.headers)} cells, got {len(cells)}")
        self.rows.append(list(cells))
        return self

    def _text(self, cell: Any) -> str:
        if isinstance(cell, bool) or cell is None:
            return "-" if cell is None else ("yes" if cell else "no")
        if isinstance(cell, float):
            if math.isnan(cell):
                return "-"
            return f"{cell:,.{self.digits}f}"
        if isinstance(cell, int):
            return f"{cell:,}"
        return str(cell)

    def render(self) -> str:
        texts = [[self._text(c) for c in row] for row in self.rows]
        numeric = [
            all(row[i] is None or (isinstance(row[i], (int, float)) and not isinstance(row[i], bool)) for row in self.rows)
            and any(row[i] is not None for row in self.rows)
            for i in range(len(self.headers))
        ]
        widths = [max([len(h)] + [len(t[i]) for t in texts]) for i, h in enumerate(self.headers)]

        def line(cells: Sequence[str]) -> str:
            parts = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric, strict=True)]
            return "| " + " | ".join(parts) + " |"

        rule = "|" + "|".join(("-" * (w + 1) + ":") if num else ("-" * (w + 2)) for w, num in zip(widths, numeric, strict=True)) + "|"
        out = []
        if self.title:
            out += [f"### {self.title}", ""]
        out += [line(self.headers), rule, *(line(t) for t in texts)]
        return "\n".join(out)

    def print(self) -> None:
        print(self.render(), flush=True)
        print(flush=True)


# ----------------------------------------------------------------------------- concurrency


@dataclass
class Measured:
    """What a closed-loop run measured: one latency (seconds) per completed operation."""

    latencies: list[float]
    seconds: float
    errors: int = 0
    first_error: str | None = None

    @property
    def count(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else math.nan

    def p(self, q: float) -> float:
        """q-th percentile latency in milliseconds."""
        return percentile(self.latencies, q) * 1000

    @property
    def p50(self) -> float:
        return self.p(50)

    @property
    def p99(self) -> float:
        return self.p(99)

    def merge(self, other: Measured) -> Measured:
        return Measured(
            self.latencies + other.latencies,
            self.seconds + other.seconds,
            self.errors + other.errors,
            self.first_error or other.first_error,
        )


def run_closed_loop(
    operations: Sequence[Any],
    per_worker: int,
    *,
    max_seconds: float = 120.0,
) -> Measured:
    """Run `len(operations)` workers at once, each calling its operation `per_worker` times
    back to back (closed loop), or until `max_seconds` have passed. An operation is a
    callable that raises on failure. Failures are counted, not timed."""
    n = len(operations)
    latencies: list[list[float]] = [[] for _ in range(n)]
    errors = [0] * n
    first: list[str | None] = [None] * n
    start = threading.Barrier(n + 1)
    deadline_box: list[float] = [0.0]

    def work(i: int) -> None:
        op, mine = operations[i], latencies[i]
        start.wait()
        deadline = deadline_box[0]
        clock = time.perf_counter
        for _ in range(per_worker):
            t0 = clock()
            try:
                op()
            except Exception as exc:  # counted and reported by the caller
                errors[i] += 1
                if first[i] is None:
                    first[i] = f"{type(exc).__name__}: {exc}"[:300]
            else:
                mine.append(clock() - t0)
            if clock() > deadline:
                break

    threads = [threading.Thread(target=work, args=(i,), daemon=True, name=f"bench-{i}") for i in range(n)]
    for t in threads:
        t.start()
    began = time.perf_counter()
    deadline_box[0] = began + max_seconds
    start.wait()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - began
    return Measured(
        [x for part in latencies for x in part],
        seconds,
        sum(errors),
        next((f for f in first if f), None),
    )


def loopback_address() -> str:
    """A random loopback source address (127.x.y.z, never 127.0.0.1) for one benchmark run.

    Linux routes all of 127/8 to the loopback interface, and devhost reports the TCP peer
    as the client IP, so the app's per-IP counters (the login throttle in Table Storage, the
    API limiter) see this run's traffic apart from every other run's and the tests'."""
    import secrets

    return f"127.{secrets.randbelow(254) + 1}.{secrets.randbelow(256)}.{secrets.randbelow(254) + 1}"


def http_client(base_url: str, *, headers: dict[str, str] | None = None, timeout: float = 30.0,
                local_address: str | None = None) -> Any:
    """A keep-alive `httpx.Client`, its connections from `local_address` when given."""
    import httpx

    transport = httpx.HTTPTransport(local_address=local_address) if local_address else None
    return httpx.Client(base_url=base_url, headers=headers or {}, timeout=timeout, transport=transport)


@dataclass
class HttpLoad:
    """A closed-loop HTTP load: `threads` clients, each with its own keep-alive connection
    (from `local_address`, if given)."""

    base_url: str
    threads: int = 4
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = 30.0
    local_address: str | None = None

    def run(
        self,
        path: str | Callable[[], str],
        per_thread: int,
        *,
        max_seconds: float = 120.0,
        method: str = "GET",
        json: Any = None,
        expect: int = 200,
        on_response: Callable[[Any], None] | None = None,
    ) -> Measured:
        """Send `method path` (with the `json` body, if any) `per_thread` times from each
        thread (or until `max_seconds`); any status other than `expect` counts as an error.

        `path` may be a callable returning each request's path, and `on_response(response)`
        sees every answer with the expected status; both run inside the timed part, so keep
        them cheap."""
        clients = [http_client(self.base_url, headers=self.headers, timeout=self.timeout, local_address=self.local_address)
                   for _ in range(self.threads)]

        def make(client: Any) -> Callable[[], None]:
            def send() -> None:
                target = path() if callable(path) else path
                response = client.request(method, target, json=json)
                if response.status_code != expect:
                    raise RuntimeError(f"{method} {target} -> {response.status_code}: {response.text[:200]}")
                if on_response is not None:
                    on_response(response)

            return send

        try:
            return run_closed_loop([make(c) for c in clients], per_thread, max_seconds=max_seconds)
        finally:
            for c in clients:
                c.close()


# ----------------------------------------------------------------------------- CPU accounting


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process (Linux /proc), or None where it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu_s() -> float | None:
    """CPU seconds of every process named `postgres` on this machine (the test server's
    backends, when it is the only one running), or None without /proc."""
    total, seen = 0.0, False
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if (entry / "comm").read_text().strip() != "postgres":
                continue
        except OSError:
            continue
        cpu = process_cpu_s(int(entry.name))
        if cpu is not None:
            total, seen = total + cpu, True
    return total if seen else None


def wait_for_quiet_postgres(max_s: float = 20.0, window_s: float = 0.5, busy: float = 0.03) -> float:
    """Wait until PostgreSQL's processes on this machine use less than `busy` of a core over
    `window_s` (autovacuum, the checkpointer and the background writer catching up after a
    write-heavy phase), at most `max_s`; returns the seconds waited (0 without /proc).

    Called before each measured phase, so work one phase leaves behind is not billed to the
    next one's latency and CPU."""
    waited, before = 0.0, postgres_cpu_s()
    while before is not None and waited < max_s:
        time.sleep(window_s)
        waited += window_s
        after = postgres_cpu_s()
        if after is None or (after - before) / window_s < busy:
            break
        before = after
    return waited


@dataclass
class CpuShare:
    """CPU seconds spent by the host process, this (client) process and PostgreSQL over the
    phases measured with `during`, and the requests they served."""

    host: float = 0.0
    client: float = 0.0
    postgres: float = 0.0
    requests: int = 0
    complete: bool = True

    @contextmanager
    def during(self, host_pid: int) -> Iterator[None]:
        before = (process_cpu_s(host_pid), process_cpu_s(os.getpid()), postgres_cpu_s())
        yield
        after = (process_cpu_s(host_pid), process_cpu_s(os.getpid()), postgres_cpu_s())
        if None in before or None in after:
            self.complete = False
            return
        self.host += after[0] - before[0]  # type: ignore[operator]
        self.client += after[1] - before[1]  # type: ignore[operator]
        self.postgres += after[2] - before[2]  # type: ignore[operator]

    def per_request_us(self) -> tuple[float, float, float] | None:
        if not self.complete or not self.requests:
            return None
        return tuple(x / self.requests * 1e6 for x in (self.host, self.client, self.postgres))  # type: ignore[return-value]


# ----------------------------------------------------------------------------- devhost


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Devhost:
    url: str
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes]


@contextmanager
def devhost(app: str, *, ready_path: str | None = None, env: dict[str, str] | None = None) -> Iterator[Devhost]:
    """A `python -m devhost --app <app>` subprocess on a free loopback port, timers off,
    its output (access log included) written to a file under .local/test/bench/. Waits
    until the port accepts connections (and `ready_path` answers, if given); stops it after."""
    port = free_port()
    log_path = work_dir() / f"devhost-{port}.log"
    full_env = {**os.environ, "DEVHOST_DISABLE_TIMERS": "1", **(env or {})}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "devhost", "--host", "127.0.0.1", "--port", str(port), "--app", app, "--route-prefix", ""],
            cwd=ROOT,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    host = Devhost(url=f"http://127.0.0.1:{port}", port=port, log_path=log_path, proc=proc)
    ok = False
    try:
        _wait_ready(host, ready_path)
        yield host
        ok = True
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if ok:
            log_path.unlink(missing_ok=True)
        else:
            print(f"devhost log kept at {log_path}", file=sys.stderr)


def _wait_ready(host: Devhost, ready_path: str | None, timeout: float = 30.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if host.proc.poll() is not None:
            raise RuntimeError(f"devhost exited ({host.proc.returncode}): {host.log_path.read_text(errors='replace')[-2000:]}")
        try:
            if ready_path is None:
                with socket.create_connection(("127.0.0.1", host.port), timeout=0.5):
                    return
            else:
                if httpx.get(host.url + ready_path, timeout=2).status_code < 500:
                    return
        except (OSError, httpx.HTTPError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"devhost did not start in {timeout:.0f} s: {host.log_path.read_text(errors='replace')[-2000:]}")


def access_log(host: Devhost, request_ids: Sequence[str] = (), *, wait_s: float = 5.0) -> dict[str, dict[str, Any]]:
    """The wrapper's access-log lines (JSON lines of logger `custos.access`) in the devhost's
    log, by request id. Waits up to `wait_s` for every one of `request_ids` to be written."""
    import json

    deadline = time.monotonic() + wait_s
    while True:
        entries: dict[str, dict[str, Any]] = {}
        with open(host.log_path, encoding="utf-8", errors="replace") as log:
            for line in log:
                if '"custos.access"' not in line:
                    continue
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict) and entry.get("logger") == "custos.access" and "request_id" in entry:
                    entries[entry["request_id"]] = entry
        if all(r in entries for r in request_ids) or time.monotonic() > deadline:
            return entries
        time.sleep(0.1)
