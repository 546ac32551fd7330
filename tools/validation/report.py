"""The live validation report: run the marked tests, then write docs/validation/ as JSON and HTML.

    python -m shared.cli validation-report [--all]     (or: make validation)

Per requirement: our own wording, who meets it, the code that does, each test with its outcome
and duration; per run: the commit (and whether the tree had uncommitted changes), the date (UTC)
and the environment. A requirement is green only when at least one of its tests passed and none
failed; anything else (no test, only skipped ones, one failure) is red.
"""

from __future__ import annotations

import html
import json
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tools.validation.catalogue import ALCOA_PRINCIPLES, PART11_CLAUSES, ROOT, Requirement, lookup

OUT_DIR = ROOT / "docs" / "validation"
PASS, RED = "pass", "red"


def run_tests(*, all_tests: bool, pytest_args: list[str] | None = None, cwd: Path = ROOT) -> dict[str, Any]:
    """Run pytest with the recording plugin and return what it recorded.

    Only the tests carrying a requirement marker unless `all_tests`. A failing test does not
    stop the report: it shows up red.

    Raises:
        RuntimeError: pytest ended without writing its results (it could not start or collect).
    """
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "results.json"
        cmd = [sys.executable, "-m", "pytest", "-p", "tools.validation.plugin", "--requirements-json", str(out),
               "-q", "-p", "no:cacheprovider"]
        if not all_tests:
            cmd += ["-m", "requirement"]
        cmd += pytest_args or []
        proc = subprocess.run(cmd, cwd=cwd, check=False)  # noqa: S603  # nosec B603  # argument list, no shell; this process's own python and pytest
        if not out.is_file():
            raise RuntimeError(f"pytest exited with {proc.returncode} before recording any result")
        results: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return results


def commit(cwd: Path = ROOT) -> dict[str, Any]:
    """HEAD and whether tracked files differ from it (the report's own output does not count)."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)  # noqa: S603, S607  # nosec B603 B607  # argument list, no shell; git from PATH reads the checkout
        return done.stdout if done.returncode == 0 else ""  # not stripped: status lines begin with a space

    changed = [line for line in git("status", "--porcelain", "--untracked-files=no").splitlines()
               if not line[3:].startswith("docs/validation/")]
    return {"sha": git("rev-parse", "HEAD").strip() or "unknown", "dirty": bool(changed), "changed": [c[3:] for c in changed]}


def requirements_in(results: dict[str, Any]) -> list[Requirement]:
    """Every Part 11 clause and ALCOA+ principle, then any other id (ASVS) the tests named."""
    listed = [*PART11_CLAUSES, *ALCOA_PRINCIPLES]
    known = {r.id for r in listed}
    extra = sorted({i for t in results.get("tests", []) for i in t.get("requirements", []) if i not in known})
    for req_id in extra:
        try:
            listed.append(lookup(req_id))
        except KeyError:
            continue  # the plugin refuses unknown ids at collection; a hand-made file may not
    return listed


def build(results: dict[str, Any], *, commit_info: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The report as data, from the plugin's results."""
    rows = []
    for req in requirements_in(results):
        tests = [{"nodeid": t["nodeid"], "outcome": t["outcome"], "duration": round(float(t["duration"]), 3)}
                 for t in results.get("tests", []) if req.id in t.get("requirements", [])]
        passed = any(t["outcome"] == "passed" for t in tests)
        broken = any(t["outcome"] in ("failed", "error", "xpassed") for t in tests)
        rows.append({
            "id": req.id, "framework": req.framework, "requirement": req.text,
            "responsibility": req.responsibility, "code": list(req.code), "tests": tests,
            "status": PASS if passed and not broken else RED,
        })
    red = [r["id"] for r in rows if r["status"] == RED]
    return {
        "title": "Custos validation report",
        "generated": now.astimezone(UTC).isoformat(timespec="seconds"),
        "commit": commit_info,
        "run": {k: results.get(k) for k in ("started", "finished", "exit_status", "args")},
        "environment": results.get("environment", {}),
        "summary": {
            "requirements": len(rows),
            "passing": len(rows) - len(red),
            "red": red,
            "part11_red": [r["id"] for r in rows if r["status"] == RED and r["framework"] == PART11_CLAUSES[0].framework],
            "tests": len(results.get("tests", [])),
        },
        "requirements": rows,
    }


_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em;color:#1a1a1a}
table{border-collapse:collapse;width:100%;margin:1em 0}
th,td{border:1px solid #ccc;padding:.35em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3}
tr.red td.status{background:#c62828;color:#fff;font-weight:bold}
tr.pass td.status{background:#2e7d32;color:#fff}
.outcome-passed{color:#2e7d32}.outcome-failed,.outcome-error,.outcome-xpassed{color:#c62828;font-weight:bold}
code{font-size:12px}ul{margin:0;padding-left:1.1em}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def render_html(report: dict[str, Any]) -> str:
    """A self-contained page (inline CSS, no script, no external asset); every text is escaped."""
    summary, commit_info, env = report["summary"], report["commit"], report["environment"]
    out = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; style-src \'unsafe-inline\'">',
           f"<title>{_e(report['title'])}</title><style>{_CSS}</style></head><body>",
           f"<h1>{_e(report['title'])}</h1>",
           f"<p>{_e(summary['passing'])} of {_e(summary['requirements'])} requirements have a passing test "
           f"({_e(summary['tests'])} tests run). Red: {_e(', '.join(summary['red']) or 'none')}.</p>",
           "<table><tbody>",
           f"<tr><th>Commit</th><td><code>{_e(commit_info['sha'])}</code>"
           f"{' (uncommitted changes)' if commit_info.get('dirty') else ''}</td></tr>",
           f"<tr><th>Generated (UTC)</th><td>{_e(report['generated'])}</td></tr>",
           f"<tr><th>Test run</th><td>{_e(report['run'].get('started'))} to {_e(report['run'].get('finished'))}, "
           f"pytest exit status {_e(report['run'].get('exit_status'))}, arguments "
           f"<code>{_e(' '.join(report['run'].get('args') or []))}</code></td></tr>"]
    for key in ("python", "python_implementation", "os", "machine", "postgresql", "azurite"):
        out.append(f"<tr><th>{_e(key)}</th><td>{_e(env.get(key, 'unknown'))}</td></tr>")
    packages = ", ".join(f"{k} {v}" for k, v in sorted((env.get("packages") or {}).items()))
    out.append(f"<tr><th>packages</th><td>{_e(packages)}</td></tr></tbody></table>")
    frameworks: list[str] = []
    for row in report["requirements"]:
        if row["framework"] not in frameworks:
            frameworks.append(row["framework"])
    for framework in frameworks:
        out += [f"<h2>{_e(framework)}</h2>", "<table><thead><tr><th>Id</th><th>Status</th><th>Requirement (our words)"
                "</th><th>Who</th><th>Code</th><th>Tests</th></tr></thead><tbody>"]
        for row in (r for r in report["requirements"] if r["framework"] == framework):
            code = "".join(f"<li><code>{_e(c)}</code></li>" for c in row["code"]) or "—"
            tests = "".join(
                f"<li><code>{_e(t['nodeid'])}</code> <span class=\"outcome-{_e(t['outcome'])}\">{_e(t['outcome'])}"
                f"</span> {_e(format(t['duration'], '.3f'))} s</li>" for t in row["tests"]) or "<li>no test</li>"
            status = "pass" if row["status"] == PASS else "RED"
            out.append(f"<tr class=\"{_e(row['status'])}\" id=\"{_e(row['id'])}\"><td>{_e(row['id'])}</td>"
                       f"<td class=\"status\">{status}</td><td>{_e(row['requirement'])}</td>"
                       f"<td>{_e(row['responsibility'])}</td><td><ul>{code}</ul></td><td><ul>{tests}</ul></td></tr>")
        out.append("</tbody></table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write(report: dict[str, Any], out_dir: Path = OUT_DIR) -> list[Path]:
    """Write report.json and index.html into `out_dir`; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    as_json, as_html = out_dir / "report.json", out_dir / "index.html"
    as_json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    as_html.write_text(render_html(report), encoding="utf-8")
    return [as_json, as_html]


def generate(*, all_tests: bool = False, out_dir: Path = OUT_DIR, pytest_args: list[str] | None = None,
             now: datetime | None = None) -> dict[str, Any]:
    """Run the tests and write the report; returns the report.

    Raises:
        RuntimeError: pytest could not record results.
    """
    sha = commit()  # before the run writes anything
    results = run_tests(all_tests=all_tests, pytest_args=pytest_args)
    report = build(results, commit_info=sha, now=now or datetime.now(UTC))
    write(report, out_dir)
    return report
