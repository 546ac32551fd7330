"""Deployment wiring: azure.yaml, the GitHub workflow, Dependabot and the postprovision hook.

No JSON schema can be fetched here (no network), so the files are parsed as YAML and held to
structural rules a reviewer would check by hand: Azure access only through OpenID Connect, no
stored Azure secret, every check the issue asks for present, what-if only on pull requests,
deploy only from main, actions pinned. The hook is run for real up to the database connection.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from shared.cli import parser
from tests.conftest import ROOT, free_port

WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
DEPENDABOT = ROOT / ".github" / "dependabot.yml"
AZURE_YAML = ROOT / "azure.yaml"
HOOK = ROOT / "infra" / "scripts" / "postprovision.sh"


def load(path: Path) -> dict[Any, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path.name}: not a YAML mapping"
    return data


def workflow() -> dict[Any, Any]:
    return load(WORKFLOW)


def triggers(wf: dict[Any, Any]) -> dict[str, Any]:
    on = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` key as true
    assert isinstance(on, dict), "workflow triggers must be a mapping"
    return on


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return list(job.get("steps", []))


def runs(job: dict[str, Any]) -> str:
    return "\n".join(str(step.get("run", "")) for step in steps(job))


def uses(job: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [s for s in steps(job) if str(s.get("uses", "")).lower().startswith(action.lower() + "@")]


# ---------------------------------------------------------------- azure.yaml


def test_azure_yaml_deploys_the_function_app_from_the_bicep_and_runs_the_hook() -> None:
    doc = load(AZURE_YAML)
    assert isinstance(doc.get("name"), str) and doc["name"]
    assert doc["infra"]["provider"] == "bicep"
    assert doc["infra"]["path"] == "infra/bicep" and doc["infra"].get("module", "main") == "main"
    assert set(doc["services"]) == {"api", "owner-jobs"}
    for service in doc["services"].values():
        assert (service["host"], service["language"]) == ("function", "python")
        assert (ROOT / service["project"] / "function_app.py").is_file()
    assert doc["services"]["owner-jobs"]["project"] == doc["services"]["api"]["project"], "one package, two apps"
    hook = doc["hooks"]["postprovision"]
    for platform in ("posix", "windows"):
        assert hook[platform]["shell"] == "sh"
        assert (ROOT / hook[platform]["run"]).resolve() == HOOK
        assert hook[platform].get("continueOnError", False) is False
    assert HOOK.stat().st_mode & stat.S_IXUSR, "the hook must be executable"


# ---------------------------------------------------------------- workflow


def test_workflow_runs_on_pull_requests_and_main_and_reads_only_by_default() -> None:
    wf = workflow()
    on = triggers(wf)
    assert "pull_request" in on
    assert on["push"]["branches"] == ["main"]
    assert wf["permissions"] == {"contents": "read"}
    for name, job in wf["jobs"].items():
        granted = job.get("permissions", {})
        assert granted != "write-all" and all(v in ("read", "none") or k == "id-token" for k, v in granted.items()), name


def test_azure_access_is_openid_connect_only_without_stored_secrets() -> None:
    wf = workflow()
    text = WORKFLOW.read_text()
    logins = {name: uses(job, "azure/login") for name, job in wf["jobs"].items()}
    assert {n for n, found in logins.items() if found} == {"what-if", "deploy"}
    for name, found in logins.items():
        job = wf["jobs"][name]
        if not found:
            assert job.get("permissions", {}).get("id-token") is None, f"{name} asks for an OIDC token it does not use"
            continue
        assert job["permissions"]["id-token"] == "write", name
        for step in found:
            inputs = step["with"]
            assert set(inputs) == {"client-id", "tenant-id", "subscription-id"}, f"{name}: {sorted(inputs)}"
            assert all(re.fullmatch(r"\$\{\{ vars\.AZURE_[A-Z_]+ \}\}", v) for v in inputs.values()), inputs
    assert set(re.findall(r"secrets\.([A-Za-z_]+)", text)) <= {"GITHUB_TOKEN"}
    content = yaml.safe_dump(wf).lower()  # comments dropped: they may explain what is absent
    for forbidden in ("azure_client_secret", "azure_credentials", "client-secret", "creds", "publish-profile", "password"):
        assert forbidden not in content, forbidden


def test_workflow_runs_every_check_the_issue_asks_for() -> None:
    jobs = workflow()["jobs"]
    everything = "\n".join(runs(job) for job in jobs.values())
    test_runs = runs(jobs["test"])
    assert "make test" in test_runs or ("bash .ci/run" in test_runs and "make test" in (ROOT / ".ci" / "run").read_text())
    assert re.search(r"apt-get install .*postgresql", test_runs), "make test needs PostgreSQL's initdb/pg_ctl"
    assert uses(jobs["test"], "actions/setup-node"), "make test needs Node for Azurite"
    assert re.search(r"tools/audit_deps\.sh --require-network", everything), "pip-audit and npm audit, failing offline"
    audit_script = (ROOT / "tools" / "audit_deps.sh").read_text()
    assert "for req in requirements-dev.txt" in audit_script and '"$PIP_AUDIT" --strict' in audit_script
    assert re.search(r"audit --package-lock-only --audit-level=moderate", audit_script)
    assert re.search(r"^bandit .*-r shared functions", everything, re.M)
    assert any(uses(job, "gitleaks/gitleaks-action") for job in jobs.values()) or "detect-secrets" in everything
    assert "az bicep build --file infra/bicep/main.bicep" in everything


def test_what_if_runs_only_on_pull_requests_with_the_uk_south_parameters() -> None:
    wf = workflow()
    job = wf["jobs"]["what-if"]
    assert "github.event_name == 'pull_request'" in job["if"]
    command = runs(job)
    assert "az deployment sub what-if" in command and "--template-file infra/bicep/main.bicep" in command
    assert wf["env"]["BICEP_PARAMETERS"] == "infra/bicep/main.uksouth.bicepparam"
    assert '--parameters "$BICEP_PARAMETERS"' in command
    assert "az deployment sub create" not in command


def test_deploy_runs_only_on_main_after_every_check_and_migrates_before_the_code() -> None:
    jobs = workflow()["jobs"]
    deploy = jobs["deploy"]
    assert deploy["if"] == "github.event_name == 'push' && github.ref == 'refs/heads/main'"
    assert set(deploy["needs"]) == set(jobs) - {"deploy", "what-if"}
    assert deploy["environment"] == "production"
    names = [str(s.get("run", "")) + str(s.get("uses", "")) for s in steps(deploy)]
    order = [next(i for i, n in enumerate(names) if key in n)
             for key in ("azure/login", "az deployment sub create", "postprovision.sh", "functions-action")]
    assert order == sorted(order), "login, provision, migrate, then deploy the code"
    assert not any("deploy" in str(job.get("if", "")) for job in jobs.values() if job is not deploy)


def test_actions_are_pinned_by_commit_or_say_why_not() -> None:
    for line in WORKFLOW.read_text().splitlines():
        match = re.match(r"\s*(?:- )?uses:\s*([^@\s]+)@(\S+)(.*)", line)
        if not match:
            continue
        action, ref, rest = match.groups()
        if re.fullmatch(r"[0-9a-f]{40}", ref):
            assert re.match(r"\s*# v\d", rest), f"{action}: say which tag the SHA is"
        else:
            comment = "\n".join(WORKFLOW.read_text().split(line)[0].splitlines()[-3:])
            assert "Pinned by tag" in comment, f"{action}@{ref}: pin by SHA or say why not"


def test_dependabot_watches_pip_npm_and_actions() -> None:
    doc = load(DEPENDABOT)
    assert doc["version"] == 2
    ecosystems = {u["package-ecosystem"]: u for u in doc["updates"]}
    assert set(ecosystems) == {"pip", "npm", "github-actions"}
    for update in ecosystems.values():
        assert update["directory"] == "/" and update["schedule"]["interval"] in ("daily", "weekly")
    assert (ROOT / "requirements.txt").is_file() and (ROOT / "package-lock.json").is_file()


def test_readme_shows_deploying_in_three_lines_and_links_the_guides() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Deploy on Azure", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert block == ["azd auth login", "azd env new custos-uks --location uksouth", "azd up"]
    for guide in ("docs/deploy.md", "docs/scale.md"):
        assert f"]({guide})" in section and (ROOT / guide).is_file()
    assert "make run" in readme and "make test" in readme


# ---------------------------------------------------------------- the postprovision hook


def test_hook_calls_cli_options_that_exist_in_the_right_order() -> None:
    script = HOOK.read_text()
    calls = re.findall(r'^"\$py" -m shared\.cli (.+)$', script, re.M)
    assert [c.split()[0] for c in calls] == ["create-app-role", "migrate", "create-owner-role"]
    for call in calls:
        argv = [a.strip('"') for a in call.split()]
        parser().parse_args([a if not a.startswith("$") else "00000000-0000-0000-0000-000000000000" for a in argv])
    assert "--skip-storage" in calls[1]
    assert "sslmode=verify-full" in script
    assert subprocess.run(["bash", "-n", str(HOOK)], capture_output=True).returncode == 0


def _hook(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    base = {"PATH": f"{tmp_path}:{os.environ['PATH']}", "CUSTOS_PYTHON": sys.executable, "HOME": str(tmp_path)}
    return subprocess.run(["bash", str(HOOK)], env={**base, **env}, capture_output=True, text=True, timeout=60)


INPUTS = {
    "AZURE_POSTGRES_HOST": "127.0.0.1",
    "AZURE_APP_IDENTITY_NAME": "id-custos-api",
    "AZURE_APP_IDENTITY_PRINCIPAL_ID": "3f2504e0-4f89-11d3-9a0c-0305e82c3301",
    "AZURE_POSTGRES_OWNER": "ops@example.com",
    "AZURE_OWNER_IDENTITY_NAME": "id-custos-owner",
    "AZURE_OWNER_IDENTITY_PRINCIPAL_ID": "9a1c0e4b-7d2f-4e8a-b6c3-2f5d8e1a0b7c",
    "AZURE_KEY_VAULT_NAME": "kv-custos-uks",
}


@pytest.mark.parametrize("missing", sorted(set(INPUTS) - {"AZURE_POSTGRES_OWNER"}))
def test_hook_names_a_missing_bicep_output(missing: str, tmp_path: Path) -> None:
    out = _hook({k: v for k, v in INPUTS.items() if k != missing}, tmp_path)
    assert out.returncode == 2 and missing in out.stderr


def test_hook_says_the_server_is_private_when_it_cannot_reach_it(tmp_path: Path) -> None:
    _fake_az(tmp_path, secret_exists=True)
    out = _hook({**INPUTS, "AZURE_POSTGRES_PORT": str(free_port())}, tmp_path)
    assert out.returncode == 2
    assert "private access" in out.stderr and "Traceback" not in out.stderr


def test_hook_insists_on_verified_tls_and_never_prints_the_token(tmp_path: Path) -> None:
    """A server without TLS (our local one stands in for a spoofed host) is refused; the token stays hidden."""
    token = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.stand-in-token.sig"
    fake_az = tmp_path / "az"
    fake_az.write_text(f"#!/bin/sh\n# stand-in for the Azure CLI: the identity endpoint is the only fake\necho '{token}'\n")
    fake_az.chmod(0o755)
    local = urlsplit(os.environ["DATABASE_OWNER_URL"])
    out = _hook({**INPUTS, "AZURE_POSTGRES_HOST": local.hostname or "127.0.0.1", "AZURE_POSTGRES_PORT": str(local.port),
                 "AZURE_POSTGRES_DATABASE": local.path.lstrip("/")}, tmp_path)
    assert out.returncode == 2
    assert "database unavailable" in out.stderr and "SSL" in out.stderr
    assert "Traceback" not in out.stderr
    assert token not in out.stdout + out.stderr and "stand-in-token" not in out.stdout + out.stderr


def test_azure_yaml_services_are_the_bicep_apps_tags() -> None:
    bicep = (ROOT / "infra" / "bicep" / "modules" / "functionapp.bicep").read_text()
    tag = re.search(r"'azd-service-name': isOwner \? '([a-z-]+)' : '([a-z-]+)'", bicep)
    assert tag is not None, "functionapp.bicep tags each app with its azd service name"
    assert set(load(AZURE_YAML)["services"]) == {tag.group(1), tag.group(2)}


def _fake_az(tmp_path: Path, *, secret_exists: bool) -> Path:
    """A stand-in for the Azure CLI (the one outside edge here): logs its arguments, answers the
    vault id, and says whether the secret exists as ARM would (exit 3: ResourceNotFound)."""
    log = tmp_path / "az.log"
    vault = "/subscriptions/0000/resourceGroups/rg-custos/providers/Microsoft.KeyVault/vaults/kv-custos-uks"
    (tmp_path / "az").write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> "{log}"\n'
        f'case "$1 $2" in\n'
        f'  "keyvault show") echo "{vault}" ;;\n'
        f'  "resource show") {"echo found" if secret_exists else "exit 3"} ;;\n'
        '  "role assignment") echo "{}" ;;\n'
        '  *) echo "stand-in-token" ;;\n'
        "esac\n")
    (tmp_path / "az").chmod(0o755)
    return log


def test_hook_grants_the_owner_identity_only_the_signing_key_secret(tmp_path: Path) -> None:
    log = _fake_az(tmp_path, secret_exists=True)
    out = _hook({**INPUTS, "AZURE_POSTGRES_PORT": str(free_port())}, tmp_path)  # stops at the database probe
    assert out.returncode == 2 and "private access" in out.stderr
    grants = [line for line in log.read_text().splitlines() if line.startswith("role assignment create")]
    assert len(grants) == 1
    assert f"--assignee-object-id {INPUTS['AZURE_OWNER_IDENTITY_PRINCIPAL_ID']} " in grants[0]
    assert " --role Key Vault Secrets User " in grants[0]
    scope = re.search(r"--scope (\S+)", grants[0])
    assert scope is not None and scope.group(1).endswith("/vaults/kv-custos-uks/secrets/audit-signing-key")


def test_hook_waits_for_the_secret_before_granting_and_says_so(tmp_path: Path) -> None:
    log = _fake_az(tmp_path, secret_exists=False)
    out = _hook({**INPUTS, "AZURE_POSTGRES_PORT": str(free_port())}, tmp_path)
    assert "audit-signing-key is not in kv-custos-uks yet" in out.stderr and "azd hooks run postprovision" in out.stderr
    assert not [line for line in log.read_text().splitlines() if line.startswith("role assignment")]
