"""Supply-chain checks that run in `make test`, offline: bandit (static analysis) over shared/ and
functions/, a reason on every suppression of a security rule, and the secret scan of the tracked
tree against the audited `.secrets.baseline`.

Each check is a function that returns findings as `path:line: rule ...` lines, so that a failure
names the place and the rule; each is also run on a planted file in tmp_path to show it would
catch the defect it exists for. pip-audit and npm audit need advisory databases these machines
cannot reach: they run in the GitHub workflow and through `make audit` (tools/audit_deps.sh).
docs/security.md, "Supply chain".
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / ".secrets.baseline"
SCANNED_BY_BANDIT = ("shared", "functions")
FAILING_SEVERITIES = {"MEDIUM", "HIGH"}

# A suppression of a security rule: a bandit nosec comment, or a ruff noqa comment naming an S (flake8-bandit) code.
_NOSEC = re.compile(r"#\s*nosec\b(?P<rest>[^#]*)", re.IGNORECASE)
_NOSEC_IDS = re.compile(r"^\s*:?\s*B\d{3}(?:\s*,\s*B\d{3}|\s+B\d{3})*\s*$")
_NOQA_S = re.compile(r"#\s*noqa\s*:\s*[A-Z0-9, ]*\bS\d{3}\b", re.IGNORECASE)
_BLANKET_NOQA = re.compile(r"#\s*noqa\b(?!\s*:)", re.IGNORECASE)
_DIRECTIVE = re.compile(r"#\s*(?:noqa\s*:\s*[A-Z]+\d+(?:\s*,\s*[A-Z]+\d+)*|nosec\b[\s:]*(?:B\d{3}[\s,]*)*)", re.IGNORECASE)
_MIN_REASON_WORDS = 3

# Files that must never be tracked: keys, certificates, local settings with real values, env files.
_SECRET_FILE = re.compile(
    r"(^|/)(\.env(\..+)?|local\.settings\.json|\.local/.*|id_(rsa|ecdsa|ed25519)|.*\.(pem|key|pfx|p12|jks|keystore))$"
)
_ALLOWED_SECRET_FILES = {".env.sample", "local.settings.sample.json"}


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule} {self.detail}"


def _tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [p for p in out.decode("utf-8").split("\0") if p and (ROOT / p).is_file()]


def bandit_findings(paths: list[Path], *, cwd: Path = ROOT) -> list[Finding]:
    """bandit's MEDIUM and HIGH findings in `paths` (with pyproject.toml's configuration), and files
    it could not parse (an unparsed file is an unchecked file)."""
    proc = subprocess.run(
        [sys.executable, "-m", "bandit", "-c", str(ROOT / "pyproject.toml"), "-r", *map(str, paths),
         "-f", "json", "-q", "--severity-level", "medium"],
        cwd=cwd, capture_output=True, text=True, check=False,
    )
    if proc.returncode not in (0, 1) or not proc.stdout.strip():
        raise AssertionError(f"bandit did not run (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    report = json.loads(proc.stdout)
    findings = [
        Finding(_rel(r["filename"], cwd), r["line_number"], f"{r['test_id']}:{r['test_name']}",
                f"[{r['issue_severity']}/{r['issue_confidence']}] {r['issue_text']}")
        for r in report["results"] if r["issue_severity"] in FAILING_SEVERITIES
    ]
    findings += [Finding(_rel(e["filename"], cwd), 0, "bandit-error", e["reason"]) for e in report["errors"]]
    return sorted(findings, key=lambda f: (f.path, f.line, f.rule))


def unjustified_suppressions(root: Path, files: list[str]) -> list[Finding]:
    """Suppressions of security rules that name no rule or give no reason.

    A `# nosec` must name bandit test ids (a bare one silences every test on the line) and a
    `# noqa` must name codes; either, when it silences a security rule, must carry a reason of at
    least three words on the same line: `# noqa: S608  # nosec B608  # <why this is safe>`.
    """
    out: list[Finding] = []
    for name in files:
        if not name.endswith(".py"):
            continue
        for number, line in enumerate((root / name).read_text(encoding="utf-8").splitlines(), start=1):
            if "#" not in line:
                continue
            if _BLANKET_NOQA.search(line):
                out.append(Finding(name, number, "blanket-noqa", "name the codes: `# noqa: S608  # <why>`"))
            nosec = _NOSEC.search(line)
            if nosec and not _NOSEC_IDS.match(nosec.group("rest")):
                out.append(Finding(name, number, "nosec-without-test-id",
                                   "name the bandit test: `# nosec B608  # <why>` (then put the reason after a `#`)"))
                continue
            if nosec or _NOQA_S.search(line):
                comment = line[line.index("#"):]
                words = re.findall(r"[A-Za-z]{2,}", _DIRECTIVE.sub(" ", comment))
                if len(words) < _MIN_REASON_WORDS:
                    out.append(Finding(name, number, "suppression-without-reason",
                                       "say why it is safe: `# noqa: S608  # nosec B608  # <why>`"))
    return out


def _baseline() -> dict[str, object]:
    return json.loads(BASELINE.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def _excluded_patterns(baseline: dict[str, object]) -> list[re.Pattern[str]]:
    for entry in baseline["filters_used"]:  # type: ignore[attr-defined]
        if entry["path"] == "detect_secrets.filters.regex.should_exclude_file":
            return [re.compile(p) for p in entry["pattern"]]
    return []


def scannable(files: list[str], baseline: dict[str, object]) -> list[str]:
    excluded = _excluded_patterns(baseline)
    return [f for f in files if f != BASELINE.name and not any(p.search(f) for p in excluded)]


def new_secrets(root: Path, files: list[str], baseline: dict[str, object], *, cache: Path | None = None) -> list[Finding]:
    """Secrets detect-secrets finds in `files` (relative to root) that the baseline does not list
    for that file (matched by file, type and hash, so moving lines is no new secret).

    With `cache` (a git-ignored file under .local/), a file whose path and content were scanned
    before with the same detect-secrets version and settings is not scanned again: detect-secrets
    costs about 0.2 ms a line, ~10 s of CPU for the whole tree. A fresh clone (CI) scans everything.
    """
    files = scannable(files, baseline)
    config = hashlib.sha256(json.dumps(
        [_detect_secrets_version(), baseline["plugins_used"], baseline["filters_used"]], sort_keys=True,
    ).encode()).hexdigest()
    cached: dict[str, list[dict[str, object]]] = {}
    if cache is not None and cache.is_file():
        try:
            stored = json.loads(cache.read_text(encoding="utf-8"))
            cached = stored["files"] if stored.get("config") == config else {}
        except (ValueError, KeyError, TypeError):
            cached = {}
    keys = {name: hashlib.sha256(name.encode() + b"\0" + (root / name).read_bytes()).hexdigest() for name in files}
    found: dict[str, list[dict[str, object]]] = {name: cached[keys[name]] for name in files if keys[name] in cached}
    todo = [name for name in files if name not in found]
    if todo:
        proc = subprocess.run(
            [sys.executable, "-m", "detect_secrets", "scan", "--all-files", *todo],
            cwd=root, capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            raise AssertionError(f"detect-secrets did not run (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
        results = json.loads(proc.stdout)["results"]
        found.update({name: results.get(name, []) for name in todo})
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"config": config, "files": {keys[n]: found[n] for n in files}}), encoding="utf-8")
    known = {(name, s["type"], s["hashed_secret"])
             for name, secrets in baseline["results"].items() for s in secrets}  # type: ignore[attr-defined]
    return sorted(
        (Finding(name, int(s["line_number"]), str(s["type"]), "(not in .secrets.baseline)")  # type: ignore[call-overload]
         for name, secrets in found.items() for s in secrets
         if (name, s["type"], s["hashed_secret"]) not in known),
        key=lambda f: (f.path, f.line),
    )


def _detect_secrets_version() -> str:
    return importlib.metadata.version("detect-secrets")


def _rel(filename: str, cwd: Path) -> str:
    path = Path(filename)
    return str(path.relative_to(cwd)) if path.is_absolute() and path.is_relative_to(cwd) else filename


def _report(findings: list[Finding]) -> str:
    return "\n".join(map(str, findings))


# ---------------------------------------------------------------- bandit


def test_bandit_finds_no_medium_or_high_issue_in_shared_and_functions() -> None:
    findings = bandit_findings([ROOT / p for p in SCANNED_BY_BANDIT])
    assert findings == [], (
        "bandit (MEDIUM/HIGH) in shared/ or functions/: fix the code, or if it is safe add on that line "
        "`# nosec <id>  # <why it is safe>` (docs/security.md, Supply chain):\n" + _report(findings)
    )


def test_bandit_check_catches_shell_injection_weak_hash_and_sql_from_strings(tmp_path: Path) -> None:
    planted = tmp_path / "planted.py"
    planted.write_text(
        "import hashlib\nimport subprocess\n\n\n"
        "def run(x: str) -> None:\n"
        "    subprocess.call(x, shell=True)\n\n\n"
        "def token_digest(token: bytes) -> str:\n"
        "    return hashlib.md5(token).hexdigest()\n\n\n"
        "def find(conn, name: str):\n"
        "    return conn.execute(f\"select * from users where email = '{name}'\")\n",
        encoding="utf-8",
    )
    findings = bandit_findings([planted], cwd=tmp_path)
    assert {(f.path, f.line, f.rule.split(":")[0]) for f in findings} == {
        ("planted.py", 6, "B602"), ("planted.py", 10, "B324"), ("planted.py", 14, "B608"),
    }
    assert str(findings[0]).startswith("planted.py:6: B602:subprocess_popen_with_shell_equals_true [HIGH/")


def test_a_nosec_naming_the_test_silences_only_that_finding(tmp_path: Path) -> None:
    planted = tmp_path / "planted.py"
    planted.write_text(
        "import subprocess\n\n\n"
        "def run(x: str) -> None:\n"
        "    subprocess.call(x, shell=True)  # nosec B608  # the wrong test id silences nothing\n"
        "    subprocess.call('ls', shell=True)  # nosec B602  # a constant command line, no input in it\n",
        encoding="utf-8",
    )
    assert [(f.line, f.rule.split(":")[0]) for f in bandit_findings([planted], cwd=tmp_path)] == [(5, "B602")]


# ---------------------------------------------------------------- suppressions


def test_every_security_suppression_names_its_rule_and_gives_a_reason() -> None:
    files = [f for f in _tracked_files() if not f.startswith("tests/")]
    findings = unjustified_suppressions(ROOT, files)
    assert findings == [], "security suppressions without a rule or a reason:\n" + _report(findings)


def test_suppressions_without_rule_or_reason_are_reported(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text(
        "a = 1  # nosec\n"
        "b = 2  # nosec B608\n"
        "c = 3  # noqa: S608\n"
        "d = 4  # noqa\n"
        "e = 5  # nosec because I said so\n"
        "f = 6  # noqa: S608  # nosec B608  # only module constants are interpolated\n"
        "g = 7  # noqa: S108  (owner and mode are checked before use)\n"
        "h = 8  # noqa: E501\n",
        encoding="utf-8",
    )
    assert [(f.line, f.rule) for f in unjustified_suppressions(tmp_path, ["m.py"])] == [
        (1, "nosec-without-test-id"), (2, "suppression-without-reason"), (3, "suppression-without-reason"),
        (4, "blanket-noqa"), (5, "nosec-without-test-id"),
    ]


# ---------------------------------------------------------------- secrets


def test_no_tracked_file_holds_a_secret_outside_the_audited_baseline() -> None:
    findings = new_secrets(ROOT, _tracked_files(), _baseline(), cache=ROOT / ".local" / "secret-scan-cache.json")
    assert findings == [], (
        "detect-secrets found secrets not in .secrets.baseline. Remove a real secret (and rotate it); for a "
        "test fixture or false positive, add `# pragma: allowlist secret` on the line or update and audit the "
        "baseline (docs/security.md, Supply chain):\n" + _report(findings)
    )


def test_every_baseline_entry_was_audited_as_not_a_secret() -> None:
    unaudited = [f"{name}:{s['line_number']}: {s['type']}"
                 for name, secrets in _baseline()["results"].items()  # type: ignore[attr-defined]
                 for s in secrets if s.get("is_secret") is not False]
    assert unaudited == [], "baseline entries not audited as false positives (detect-secrets audit):\n" + "\n".join(
        unaudited)


def test_secret_scan_catches_a_new_cloud_key_and_private_key(tmp_path: Path) -> None:
    # Assembled at run time so that this file itself holds no secret-shaped literal.
    aws_id = "AKIA" + "QZ7RT2MX4VB6NP3K"
    pem = "-----BEGIN " + "RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAzq1vLm3Tn0bR8hKx\n-----END " + "RSA PRIVATE KEY-----\n"
    (tmp_path / "settings.py").write_text(f'AWS_ACCESS_KEY_ID = "{aws_id}"\nNOTHING = "here"\n', encoding="utf-8")
    (tmp_path / "deploy.key.txt").write_text(pem, encoding="utf-8")
    (tmp_path / "clean.py").write_text('GREETING = "hello"\n', encoding="utf-8")
    findings = new_secrets(tmp_path, ["settings.py", "deploy.key.txt", "clean.py"], _baseline())
    assert {(f.path, f.line, f.rule) for f in findings} == {
        ("settings.py", 1, "AWS Access Key"), ("deploy.key.txt", 1, "Private Key"),
    }


def test_a_baselined_secret_in_another_file_is_still_new(tmp_path: Path) -> None:
    baseline = _baseline()
    name, entry = next((name, s) for name, secrets in baseline["results"].items()  # type: ignore[attr-defined]
                       for s in secrets if s["type"] == "Secret Keyword" and name.endswith(".py"))
    line = (ROOT / name).read_text(encoding="utf-8").splitlines()[entry["line_number"] - 1]
    (tmp_path / "elsewhere.py").write_text(line.strip() + "\n", encoding="utf-8")
    findings = new_secrets(tmp_path, ["elsewhere.py"], baseline)
    assert [f.path for f in findings] == ["elsewhere.py"]


def test_the_scan_cache_never_hides_a_secret_added_to_a_scanned_file(tmp_path: Path) -> None:
    cache = tmp_path / "cache" / "scan.json"
    (tmp_path / "settings.py").write_text('REGION = "uksouth"\n', encoding="utf-8")
    assert new_secrets(tmp_path, ["settings.py"], _baseline(), cache=cache) == []
    assert cache.is_file()
    aws_id = "AKIA" + "QZ7RT2MX4VB6NP3K"
    (tmp_path / "settings.py").write_text(f'REGION = "uksouth"\nAWS_ACCESS_KEY_ID = "{aws_id}"\n', encoding="utf-8")
    assert [(f.path, f.line, f.rule) for f in new_secrets(tmp_path, ["settings.py"], _baseline(), cache=cache)] == [
        ("settings.py", 2, "AWS Access Key")]
    cache.write_text("{not json", encoding="utf-8")
    assert [f.rule for f in new_secrets(tmp_path, ["settings.py"], _baseline(), cache=cache)] == ["AWS Access Key"]


@pytest.mark.parametrize("name", ["infra/prod.pem", ".env", "config/.env.production", "local.settings.json",
                                  ".local/test/services.env", "keys/id_ed25519", "certs/sp.pfx"])
def test_key_and_settings_files_count_as_secret_files(name: str) -> None:
    assert _SECRET_FILE.search(name)


def test_no_key_or_local_settings_file_is_tracked() -> None:
    tracked = [f for f in _tracked_files() if _SECRET_FILE.search(f) and f not in _ALLOWED_SECRET_FILES]
    assert tracked == [], "tracked files that look like keys or local settings:\n" + "\n".join(tracked)


# ---------------------------------------------------------------- dependency audit (network only)


def _audit_without_network(*args: str) -> subprocess.CompletedProcess[str]:
    # A proxy on a closed local port: every probe of an advisory service fails at once, as offline.
    env = {**os.environ, "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
           "no_proxy": "", "NO_PROXY": "", "CUSTOS_AUDIT_TIMEOUT_S": "2"}
    return subprocess.run(["bash", str(ROOT / "tools" / "audit_deps.sh"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=False, timeout=60)


def test_dependency_audit_skips_without_network_and_succeeds() -> None:
    proc = _audit_without_network()
    assert proc.returncode == 0, proc.stderr
    assert "pip-audit: skipped: no network" in proc.stdout
    assert "npm audit: skipped: no network" in proc.stdout


def test_dependency_audit_fails_without_network_when_ci_requires_it() -> None:
    proc = _audit_without_network("--require-network")
    assert proc.returncode == 1
    assert "is not reachable and --require-network was given" in proc.stderr
