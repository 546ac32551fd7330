#!/usr/bin/env bash
# Known-vulnerability audit of the pinned dependencies: pip-audit over requirements*.txt and
# npm audit over package-lock.json and console/package-lock.json.
#
# Both need an advisory database on the network (PyPI's JSON API / OSV, the npm registry's bulk
# advisory endpoint). When it cannot be reached this prints "skipped: no network" and exits 0, so a
# machine without network never fails on it; it is not part of `make test`'s failure path.
# The GitHub workflow runs it with --require-network: there an unreachable database fails the job,
# and so does any known vulnerability (pip-audit --strict; npm audit at moderate or above).
#
#   tools/audit_deps.sh                      (or: make audit)
#   tools/audit_deps.sh --require-network    (CI)
#
# Environment: PIP_AUDIT (default: .venv/bin/pip-audit, else pip-audit on PATH), NPM (default: npm),
# CUSTOS_AUDIT_TIMEOUT_S (reachability probe, default 5).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

require_network=false
case "${1:-}" in
  --require-network) require_network=true ;;
  "") ;;
  *) echo "usage: $0 [--require-network]" >&2; exit 2 ;;
esac

timeout_s="${CUSTOS_AUDIT_TIMEOUT_S:-5}"
PY="$(command -v python3)"

# The probes ask the advisory services themselves, not just the hosts: a registry mirror or proxy
# may serve packages yet have no advisory data. 0 when the service answers, 1 otherwise.
pypi_advisories_reachable() {
  "$PY" - "$timeout_s" <<'EOF'
import json, sys, urllib.request
try:
    with urllib.request.urlopen("https://pypi.org/pypi/pip/24.0/json", timeout=float(sys.argv[1])) as r:
        sys.exit(0 if "vulnerabilities" in json.load(r) else 1)
except Exception:
    sys.exit(1)
EOF
}

npm_advisories_reachable() {
  "$PY" - "$1" "$timeout_s" <<'EOF'
import sys, urllib.request
url = sys.argv[1].rstrip("/") + "/-/npm/v1/security/advisories/bulk"
request = urllib.request.Request(url, data=b'{"jose":["6.2.18"]}', headers={"content-type": "application/json"}, method="POST")
try:
    with urllib.request.urlopen(request, timeout=float(sys.argv[2])) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
EOF
}

skip() {
  if $require_network; then
    echo "audit_deps: $1 is not reachable and --require-network was given" >&2
    exit 1
  fi
  echo "$2: skipped: no network ($1 not reachable)"
}

status=0

# ---------------------------------------------------------------- Python (pip-audit)
PIP_AUDIT="${PIP_AUDIT:-}"
if [ -z "$PIP_AUDIT" ]; then
  if [ -x .venv/bin/pip-audit ]; then PIP_AUDIT=.venv/bin/pip-audit; else PIP_AUDIT="$(command -v pip-audit || true)"; fi
fi
if ! pypi_advisories_reachable; then
  skip "PyPI's advisory data (https://pypi.org/pypi/NAME/VERSION/json)" pip-audit
elif [ -z "$PIP_AUDIT" ]; then
  echo "audit_deps: pip-audit is not installed (make venv installs requirements-dev.txt)" >&2
  status=1
else
  # requirements-dev.txt includes requirements.txt; requirements-infra.txt is checkov's own venv.
  for req in requirements-dev.txt requirements-infra.txt; do
    echo "+ pip-audit --strict -r $req"
    "$PIP_AUDIT" --strict --progress-spinner off -r "$req" || status=1
  done
fi

# ---------------------------------------------------------------- npm (npm audit)
NPM="${NPM:-npm}"
if ! command -v "$NPM" >/dev/null; then
  echo "audit_deps: npm is not installed" >&2
  status=1
elif ! npm_advisories_reachable "$("$NPM" config get registry)"; then
  skip "the npm registry's advisory endpoint" "npm audit"
else
  for dir in . console; do
    echo "+ npm audit --package-lock-only --audit-level=moderate ($dir)"
    "$NPM" --prefix "$dir" audit --package-lock-only --audit-level=moderate || status=1
  done
fi

exit "$status"
