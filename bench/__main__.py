"""`python -m bench [name ...]`: run the benchmarks in sequence, each in its own process.

Names: http_overhead, audit_append, audit_verify, login, records, reset_timing, startup, export (default: all, in that
order). Each runs with its default sizes; run `python -m bench.<name> --help` for its
options.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence

from bench.runner import ROOT

BENCHMARKS = ("http_overhead", "audit_append", "audit_verify", "login", "records", "reset_timing", "startup", "export")


def main(argv: Sequence[str] | None = None) -> int:
    names = list(sys.argv[1:] if argv is None else argv)
    if any(n in ("-h", "--help") for n in names):
        print(__doc__)
        return 0
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    failed = []
    for name in names or BENCHMARKS:
        started = time.perf_counter()
        rc = subprocess.run([sys.executable, "-m", f"bench.{name}"], cwd=ROOT).returncode
        print(f"(bench.{name}: exit {rc}, {time.perf_counter() - started:.0f} s)\n", flush=True)
        if rc != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
