"""How long a worker takes to import the app, against importing the Functions library alone;
and how long health takes to answer with storage down.

`python -m bench.startup [--runs 7] [--top 15] [--health-runs 3]`

Each import is timed in a fresh interpreter (`python -c`, import only, interpreter start-up
excluded), `--runs` times, in alternating order so machine drift hits every row alike; the
median is shown. Rows:

* `pass` (nothing): what the timing harness itself costs;
* `import azure.functions` (the baseline, same run): the least any Functions app imports;
* `import function_app`: the app, as the worker's indexer imports it (settings validated,
  every Blueprint registered).

Each twice: as the environment says (here `PYTHONDONTWRITEBYTECODE=1` is usual, so the app's
own modules are compiled from source on every import, as on a read-only package mount), and
with a warm bytecode cache (`PYTHONPYCACHEPREFIX` under .local/test/bench/, as on a worker that
has imported the app before). The aim is judged on the first.

Then one `-X importtime` run of `import function_app`: the packages that cost the most
(self time summed per package), so the next thing to make lazy is visible, and whether any
module that should load on first use (tests/test_startup.py's list) was imported.

Last, devhost with `STORAGE_CONNECTION_STRING` pointing at a closed loopback port and at a
port that accepts connections and never answers: the client-observed time of
`GET /api/health` (503 expected; the aim is an answer within 5 s).

Aims (issue 12): `import function_app` at most 0.5 s; health within 5 s with storage down.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence

from bench.runner import ROOT, Table, devhost, free_port, machine, median, setup_env, work_dir

AIM_IMPORT_S = 0.5
AIM_HEALTH_S = 5.0
TARGETS = (("pass", "nothing (harness)"), ("azure.functions", "import azure.functions (baseline)"),
           ("function_app", "import function_app (the app)"))
#: Same list as tests/test_startup.py: loaded on first use, never by the import.
HEAVY = ("azure.storage.blob", "azure.data.tables", "azure.core.pipeline", "azure.identity", "webauthn", "fido2",
         "jsonschema", "referencing", "re2", "segno", "shared.records._schema_engine")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="fresh interpreters per row; the median is shown (default 7)")
    parser.add_argument("--top", type=int, default=15, help="packages listed from -X importtime (default 15)")
    parser.add_argument("--health-runs", type=int, default=3, help="health requests per dead-storage kind (0: skip)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.top < 0 or args.health_runs < 0:
        parser.error("--runs must be at least 1, --top and --health-runs at least 0")
    return args


def cached_env() -> dict[str, str]:
    """The environment with a bytecode cache of its own (outside the source tree)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(work_dir() / "pycache")
    return env


def import_seconds(module: str, env: dict[str, str] | None = None) -> float:
    """Seconds `import module` takes in a fresh interpreter (start-up excluded)."""
    statement = "pass" if module == "pass" else f"import {module}"
    code = f"import time\nt = time.perf_counter()\n{statement}\nprint(repr(time.perf_counter() - t))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env or os.environ.copy(), capture_output=True,
                          text=True, timeout=120, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def importtime(module: str) -> list[tuple[str, int, int]]:
    """(module, self us, cumulative us) of each import `-X importtime` reports for `import module`."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"], cwd=ROOT,
                          env=os.environ.copy(), capture_output=True, text=True, timeout=120, check=True)
    rows = []
    for line in done.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if m:
            rows.append((m.group(4), int(m.group(1)), int(m.group(2))))
    return rows


def package(name: str) -> str:
    """The package a module's time is summed under: two levels for ours and azure.*, else one."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] in ("azure", "shared", "functions") else parts[0]


class _Silent:
    """A loopback port whose connections complete in the kernel's backlog and are never answered."""

    def __enter__(self) -> int:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        return int(self.sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def health_seconds(port: int, runs: int) -> tuple[list[float], list[int]]:
    """Client-observed seconds and statuses of `GET /api/health` with storage at loopback `port`."""
    import httpx

    storage = re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{port}", os.environ["STORAGE_CONNECTION_STRING"])
    seconds, statuses = [], []
    with devhost("function_app:app", env={"STORAGE_CONNECTION_STRING": storage}) as host, \
            httpx.Client(base_url=host.url, timeout=300) as client:
        for _ in range(runs):
            started = time.perf_counter()
            statuses.append(client.get("/api/health").status_code)
            seconds.append(time.perf_counter() - started)
    return seconds, statuses


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_env()
    print(f"# bench.startup: {machine()}\n", flush=True)

    warm = cached_env()
    for module, _ in TARGETS:
        import_seconds(module, warm)  # fills the bytecode cache
    modes = (("as set", os.environ.copy()), ("bytecode cached", warm))
    times: dict[tuple[str, str], list[float]] = {(mode, module): [] for mode, _ in modes for module, _ in TARGETS}
    for run in range(args.runs):
        order = [(mode, env, module) for mode, env in modes for module, _ in TARGETS]
        for mode, env, module in order if run % 2 == 0 else reversed(order):
            times[mode, module].append(import_seconds(module, env))
    table = Table(["import", "bytecode", "runs", "median ms", "min ms", "x baseline"],
                  title=f"Import in a fresh interpreter (median of {args.runs})")
    for mode, _ in modes:
        baseline = median(times[mode, "azure.functions"])
        for module, label in TARGETS:
            values = times[mode, module]
            table.add(label, mode, len(values), median(values) * 1000, min(values) * 1000,
                      median(values) / baseline if baseline else None)
    table.print()
    app, baseline = median(times["as set", "function_app"]), median(times["as set", "azure.functions"])
    print(f"aim: import function_app <= {AIM_IMPORT_S} s: {app:.3f} s, "
          f"{'met' if app <= AIM_IMPORT_S else 'NOT met'} ({app / baseline:.1f}x azure.functions; "
          f"{median(times['bytecode cached', 'function_app']):.3f} s with a warm bytecode cache)\n", flush=True)

    rows = importtime("function_app")
    loaded = {name for name, _, _ in rows}
    by_package: Counter[str] = Counter()
    for name, self_us, _ in rows:
        by_package[package(name)] += self_us
    total = max((cum for name, _, cum in rows if name == "function_app"), default=0)
    top = Table(["package", "self ms", "share of import"],
                title=f"Biggest packages in `-X importtime` of import function_app (one run, {total / 1000:.0f} ms in all)")
    for name, self_us in by_package.most_common(args.top):
        top.add(name, self_us / 1000, self_us / total if total else None)
    top.print()
    eager = [m for m in HEAVY if any(n == m or n.startswith(m + ".") for n in loaded)]
    print(f"modules meant to load on first use but imported: {', '.join(eager) or 'none'}\n", flush=True)

    if args.health_runs:
        health = Table(["storage", "requests", "statuses", "median s", "max s", "within aim"],
                       title=f"GET /api/health with storage down (aim: an answer within {AIM_HEALTH_S:.0f} s)")
        with _Silent() as silent:
            for label, port in (("closed port (connection refused)", free_port()),
                                ("accepts, never answers", silent)):
                seconds, statuses = health_seconds(port, args.health_runs)
                health.add(label, len(seconds), ",".join(map(str, sorted(set(statuses)))), median(seconds),
                           max(seconds), max(seconds) < AIM_HEALTH_S)
        health.print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
