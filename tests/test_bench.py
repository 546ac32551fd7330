"""Smoke test of the benchmarks: each runs with tiny sizes, exits 0 and prints its table.

No timing is asserted here (benchmarks compare against a baseline measured in the same run
and only print). The subprocesses inherit the test environment conftest.py set up.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("name", "args", "header"),
    [
        ("http_overhead", ["--requests", "50", "--threads", "2", "--rounds", "1", "--calls", "50"], "| route "),
        ("audit_append", ["--appends", "32"], "| scenario "),
        ("audit_verify", ["--events", "200", "--repeats", "1", "--incremental-events", "300", "--appended", "10"], "| verify "),
        ("login", ["--n", "2", "--throttled", "5"], "| measurement "),
        ("records", ["--threads", "2", "--requests", "10", "--rounds", "1", "--warmup", "2"], "| route "),
        ("reset_timing", ["--n", "3"], "| kind "),
        ("startup", ["--runs", "1", "--top", "3", "--health-runs", "1"], "| import "),
        ("export", ["--sizes", "20,40"], "| records "),
    ],
)
def test_benchmark_runs_and_prints_its_table(name: str, args: list[str], header: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", *args],
        cwd=ROOT, env=os.environ.copy(), capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert header in out.stdout, out.stdout


def test_percentile_and_table() -> None:
    from bench.runner import Table, percentile

    assert percentile([3, 1, 2], 50) == 2
    assert percentile([1, 2, 3, 4], 100) == 4
    assert percentile([1.0, 2.0], 50) == 1.5
    text = Table(["name", "value"]).add("a", 1.5).add("bb", None).render()
    assert text.splitlines()[0] == "| name | value |"
    assert "|  bb  |" not in text and "| bb   |     - |" in text
