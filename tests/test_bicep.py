"""The Bicep under infra/bicep: it parses, checkov finds nothing, and the security settings
of issue 13 (item 2) hold on the parsed templates.

No Bicep compiler runs here, so the templates are read with pycep-parser (the parser
checkov itself uses; a file it cannot parse is silently left out of checkov's scan, hence
the parse test) and checked by the functions below. checkov has no policies for
PostgreSQL flexibleServers, so those settings are asserted here. Each check is also run
against a copy of the templates with one setting weakened, so a check that could never
fail would show up as a failing test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from pycep import BicepParser

from shared.audit import checkpoints
from shared.core import storage
from shared.core.settings import Settings
from tests.conftest import ROOT

BICEP = ROOT / "infra" / "bicep"
Templates = dict[str, dict[str, Any]]

#: Settings that have no app setting in Azure, and why.
NOT_IN_AZURE = {
    "custos_local_dir": "dev keys are generated only when CUSTOS_ENV is local or test",
    "storage_connection_string": "a connection string carries a shared key; in Azure the app uses STORAGE_ACCOUNT_NAME and its identity",
}
#: Settings whose name looks secret but whose value is public, and why.
PUBLIC_KEYS = {
    "jwt_verify_keys": "public keys of retired token signing keys",
    "audit_verify_keys": "public keys of retired checkpoint signing keys",
}
SECRET_NAME = re.compile(r"(_key|_keys|password|secret|token|credential|username)$")
KEY_VAULT_REFERENCE = re.compile(r"^@Microsoft\.KeyVault\(SecretUri=\$\{vaultUri\}secrets/\$\{item\.value\}/\)$")
#: Resource types that support diagnostic settings: each must have one.
DIAGNOSABLE = {
    "Microsoft.OperationalInsights/workspaces", "Microsoft.Insights/components", "Microsoft.Storage/storageAccounts",
    "Microsoft.Storage/storageAccounts/blobServices", "Microsoft.Storage/storageAccounts/tableServices",
    "Microsoft.Storage/storageAccounts/queueServices", "Microsoft.Storage/storageAccounts/fileServices",
    "Microsoft.KeyVault/vaults", "Microsoft.DBforPostgreSQL/flexibleServers", "Microsoft.Web/sites",
    "Microsoft.Web/serverfarms", "Microsoft.Network/virtualNetworks", "Microsoft.Network/networkSecurityGroups",
}
DATA_STORES = {"Microsoft.Storage/storageAccounts", "Microsoft.KeyVault/vaults", "Microsoft.DBforPostgreSQL/flexibleServers",
               "Microsoft.OperationalInsights/workspaces"}
#: The only roles granted, by definition id: data-plane roles on one resource each.
ALLOWED_ROLES = {
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",
    "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": "Storage Table Data Contributor",
    "974c5e8b-45b9-4653-ba55-5f855dd0fb88": "Storage Queue Data Contributor",
    "4633458b-17de-408a-b874-0445c86b69e6": "Key Vault Secrets User",
    "3913510d-42f4-4e42-8a64-420c390055eb": "Monitoring Metrics Publisher",
}


def bicep_files(root: Path = BICEP) -> list[Path]:
    return sorted(root.rglob("*.bicep"))


def parse_dir(root: Path) -> Templates:
    """Every .bicep under root, parsed, by path relative to root."""
    return {p.relative_to(root).as_posix(): BicepParser().parse(file_path=p) for p in bicep_files(root)}


@cache
def _templates() -> Templates:
    return parse_dir(BICEP)


def body(resource: dict[str, Any]) -> dict[str, Any]:
    """A resource's declaration, inside its loop or condition if it has one."""
    config: dict[str, Any] = resource["config"]
    return config["config"] if "loop_type" in config or "condition" in config else config


def resources(templates: Templates, type_: str | None = None) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(file, symbolic name, declaration) of every resource declared (not `existing`)."""
    for file, tree in templates.items():
        for name, res in (tree.get("resources") or {}).items():
            if not res["existing"] and (type_ is None or res["type"] == type_):
                yield file, name, body(res)


def one(templates: Templates, type_: str) -> tuple[str, dict[str, Any]]:
    found = [(file, decl) for file, _, decl in resources(templates, type_)]
    assert len(found) == 1, f"expected one {type_}, found {len(found)}"
    return found[0]


def mentions(value: Any, name: str) -> bool:
    """Whether an expression refers to the symbol `name` (as itself or inside an accessor)."""
    if isinstance(value, str):
        return value == name
    if isinstance(value, dict):
        return any(mentions(v, name) for v in value.values())
    if isinstance(value, list):
        return any(mentions(v, name) for v in value)
    return False


def dig(value: Any, *path: str) -> Any:
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


# ------------------------------------------------------------------ the checks

def storage_problems(t: Templates) -> list[str]:
    problems = []
    _, account = one(t, "Microsoft.Storage/storageAccounts")
    props = account["properties"]
    for key, want in {"allowSharedKeyAccess": False, "allowBlobPublicAccess": False, "minimumTlsVersion": "TLS1_2",
                      "publicNetworkAccess": "Disabled", "supportsHttpsTrafficOnly": True}.items():
        if props.get(key) != want:
            problems.append(f"storage account {key} is {props.get(key)!r}, want {want!r}")
    _, blob = one(t, "Microsoft.Storage/storageAccounts/blobServices")
    bp = blob.get("properties", {})
    if bp.get("isVersioningEnabled") is not True:
        problems.append("blob versioning is off")
    for policy in ("deleteRetentionPolicy", "containerDeleteRetentionPolicy"):
        if dig(bp, policy, "enabled") is not True:
            problems.append(f"blob {policy} is off")
    groups = set()
    for _, _, pe in resources(t, "Microsoft.Network/privateEndpoints"):
        for conn in dig(pe, "properties", "privateLinkServiceConnections") or []:
            if mentions(dig(conn, "properties", "privateLinkServiceId"), _symbol(t, "Microsoft.Storage/storageAccounts")):
                groups.update(_private_endpoint_groups(t, pe, conn))
    if not {"blob", "table", "queue"} <= groups:
        problems.append(f"storage private endpoints cover {sorted(groups)}, want blob, table, queue")
    return problems


def _symbol(t: Templates, type_: str) -> str:
    names = [name for _, name, _ in resources(t, type_)]
    assert len(names) == 1, f"expected one {type_}"
    return names[0]


def _private_endpoint_groups(t: Templates, pe: dict[str, Any], conn: dict[str, Any]) -> set[str]:
    """The groupIds of a private endpoint, with a loop variable replaced by its values."""
    ids = set(dig(conn, "properties", "groupIds") or [])
    for _, _, res in ((f, n, r) for f, tree in t.items() for n, r in (tree.get("resources") or {}).items()):
        loop = dig(res, "config", "loop_type", "detail")
        if loop and res["config"]["config"] is pe and isinstance(loop.get("array_name"), list):
            ids = (ids - {loop["item_name"]}) | set(loop["array_name"])
    return ids


def worm_problems(t: Templates) -> list[str]:
    """The audit checkpoint and deletion attestation containers are write-once."""
    problems = []
    file, _ = one(t, "Microsoft.Storage/storageAccounts")
    tree = t[file]
    containers = set(dig(tree, "variables", "containers", "value") or [])
    missing = set(storage.CONTAINERS) - containers
    if missing:
        problems.append(f"containers the app uses are not deployed: {sorted(missing)}")
    worm_var = set(dig(tree, "variables", "wormContainers", "value") or [])
    for container in (checkpoints.CONTAINER, "attestations"):
        policies = [decl for _, _, decl in resources(t, "Microsoft.Storage/storageAccounts/blobServices/containers/immutabilityPolicies")
                    if f"/{container}/" in str(decl.get("name"))]
        if not policies:
            problems.append(f"{container}: no immutability (WORM) policy")
            continue
        props = policies[0].get("properties", {})
        days = props.get("immutabilityPeriodSinceCreationInDays")
        param = dig(tree, "parameters", str(days)) if isinstance(days, str) else None
        floor = days if isinstance(days, int) else next(
            (d["argument"] for d in (param or {}).get("decorators", []) if d["type"] == "min_value"), 0)
        if not floor or floor < 1:
            problems.append(f"{container}: retention period {days!r} may be zero")
        if props.get("allowProtectedAppendWrites") is not False:
            problems.append(f"{container}: protected append writes allowed")
        if container not in worm_var:
            problems.append(f"{container}: not created with version-level immutability")
    return problems


def lifecycle_problems(t: Templates) -> list[str]:
    """A lifecycle rule deletes export archives (and their versions) within a few days."""
    file, policy = one(t, "Microsoft.Storage/storageAccounts/managementPolicies")
    for rule in dig(policy, "properties", "policy", "rules") or []:
        definition = rule.get("definition", {})
        if "exports/" not in (dig(definition, "filters", "prefixMatch") or []) or rule.get("enabled") is not True:
            continue
        actions = definition.get("actions", {})
        days = [dig(actions, kind, "delete", "daysAfterCreationGreaterThan") for kind in ("baseBlob", "version")]
        limits = []
        for d in days:
            param = dig(t[file], "parameters", d) if isinstance(d, str) else None
            limits.append(d if isinstance(d, int) else next(
                (x["argument"] for x in (param or {}).get("decorators", []) if x["type"] == "max_value"), None))
        if all(isinstance(limit, int) and limit <= 30 for limit in limits):
            return []
        return [f"export rule deletes after {days} days (at most {limits}), want at most 30"]
    return ["no enabled lifecycle rule deletes blobs under exports/"]


def postgres_problems(t: Templates) -> list[str]:
    problems = []
    file, server = one(t, "Microsoft.DBforPostgreSQL/flexibleServers")
    props = server["properties"]
    for path, want in {("authConfig", "passwordAuth"): "Disabled", ("authConfig", "activeDirectoryAuth"): "Enabled",
                       ("backup", "backupRetentionDays"): 35, ("backup", "geoRedundantBackup"): "Enabled",
                       ("network", "publicNetworkAccess"): "Disabled"}.items():
        if dig(props, *path) != want:
            problems.append(f"postgres {'.'.join(path)} is {dig(props, *path)!r}, want {want!r}")
    for key in ("delegatedSubnetResourceId", "privateDnsZoneArmResourceId"):
        if not dig(props, "network", key):
            problems.append(f"postgres network.{key} is not set (private access)")
    ha = dig(props, "highAvailability", "mode")
    if dig(ha, "operator", "operands", "true_value") != "ZoneRedundant":
        problems.append(f"postgres high availability {ha!r} cannot be zone-redundant")
    admins = [decl for _, _, decl in resources(t, "Microsoft.DBforPostgreSQL/flexibleServers/administrators")]
    if not admins:
        problems.append("postgres has no Entra admin (the database owner)")
    if any(mentions(a, "appPrincipalId") or mentions(a, "identityName") for a in admins):
        problems.append("the app identity is a postgres Entra admin: it would bypass the app role's limits")
    params = {p["name"]: p["value"] for p in dig(t[file], "variables", "serverParameters", "value") or []}
    if params.get("require_secure_transport") != "on":
        problems.append("postgres require_secure_transport is not on")
    if "pgaudit" not in str(params.get("shared_preload_libraries", "")).split(","):
        problems.append("postgres does not load pgaudit")
    if not params.get("pgaudit.log"):
        problems.append("postgres pgaudit.log is not set")
    return problems


def keyvault_problems(t: Templates) -> list[str]:
    problems = []
    _, vault = one(t, "Microsoft.KeyVault/vaults")
    for key, want in {"enableRbacAuthorization": True, "enablePurgeProtection": True, "enableSoftDelete": True,
                      "publicNetworkAccess": "Disabled"}.items():
        if vault["properties"].get(key) != want:
            problems.append(f"key vault {key} is {vault['properties'].get(key)!r}, want {want!r}")
    symbol = _symbol(t, "Microsoft.KeyVault/vaults")
    if not any(mentions(dig(c, "properties", "privateLinkServiceId"), symbol) and dig(c, "properties", "groupIds") == ["vault"]
               for _, _, pe in resources(t, "Microsoft.Network/privateEndpoints")
               for c in dig(pe, "properties", "privateLinkServiceConnections") or []):
        problems.append("key vault has no private endpoint")
    return problems


def as_group(value: Any, owner: bool) -> Any:
    """`value` as the app of one function group sees it: `isOwner ? a : b` resolved."""
    if isinstance(value, dict):
        if dig(value, "operator", "type") == "conditional" and dig(value, "operator", "operands", "condition") == "isOwner":
            return as_group(value["operator"]["operands"]["true_value" if owner else "false_value"], owner)
        return {k: as_group(v, owner) for k, v in value.items()}
    if isinstance(value, list):
        return [as_group(v, owner) for v in value]
    return value


def owner_app_problems(t: Templates) -> list[str]:
    """The owner-jobs app (functionGroup 'owner'): deployed, no HTTP route, its front door denies all."""
    problems = []
    file, site = one(t, "Microsoft.Web/sites")
    props = as_group(site["properties"], owner=True)
    if dig(props, "siteConfig", "ipSecurityRestrictionsDefaultAction") != "Deny":
        problems.append("owner app: access restrictions do not deny by default")
    if dig(props, "siteConfig", "healthCheckPath") is not None:
        problems.append("owner app: a health check path, but it has no HTTP route")
    if dig(props, "functionAppConfig", "scaleAndConcurrency", "alwaysReady") != []:
        problems.append("owner app: always-ready HTTP instances")
    plain = {s["name"]: as_group(s["value"], owner=True) for s in t[file]["variables"]["plainSettings"]["value"]}
    if plain.get("CUSTOS_FUNCTION_GROUPS") != "functionGroup" or plain.get("DATABASE_OWNER_URL") != "databaseUrl":
        problems.append("owner app: CUSTOS_FUNCTION_GROUPS or DATABASE_OWNER_URL not set from the group")
    apps = [m for m in (t["main.bicep"].get("modules") or {}).values()
            if dig(m, "detail", "path") == "modules/functionapp.bicep"]
    groups = sorted(str(dig(m, "config", "params", "functionGroup")) for m in apps)
    if groups != ["None", "owner"]:
        problems.append(f"main.bicep deploys function apps of groups {groups}, want the api app and one owner app")
    return problems


def functionapp_problems(t: Templates) -> list[str]:
    problems = []
    _, site = one(t, "Microsoft.Web/sites")
    props = as_group(site["properties"], owner=False)
    for path, want in {("httpsOnly",): True, ("siteConfig", "minTlsVersion"): "1.2", ("siteConfig", "scmMinTlsVersion"): "1.2",
                       ("siteConfig", "ftpsState"): "Disabled", ("siteConfig", "healthCheckPath"): "/api/health"}.items():
        if dig(props, *path) != want:
            problems.append(f"function app {'.'.join(path)} is {dig(props, *path)!r}, want {want!r}")
    if dig(site, "identity", "type") != "UserAssigned":
        problems.append("function app has no user-assigned identity")
    for key in ("virtualNetworkSubnetId", "keyVaultReferenceIdentity"):
        if not props.get(key):
            problems.append(f"function app {key} is not set")
    if dig(props, "functionAppConfig", "deployment", "storage", "authentication", "type") != "UserAssignedIdentity":
        problems.append("function app package is not read with the identity")
    policies = {decl["name"]: dig(decl, "properties", "allow")
                for _, _, decl in resources(t, "Microsoft.Web/sites/basicPublishingCredentialsPolicies")}
    if policies != {"ftp": False, "scm": False}:
        problems.append(f"basic publishing credentials {policies}, want ftp and scm off")
    return problems


def monitoring_problems(t: Templates) -> list[str]:
    problems = []
    _, appi = one(t, "Microsoft.Insights/components")
    if dig(appi, "properties", "DisableLocalAuth") is not True:
        problems.append("application insights local auth is on")
    if not dig(appi, "properties", "WorkspaceResourceId"):
        problems.append("application insights is not workspace-based")
    _, workspace = one(t, "Microsoft.OperationalInsights/workspaces")
    if dig(workspace, "properties", "features", "disableLocalAuth") is not True:
        problems.append("log analytics local auth is on")
    return problems


def diagnostics_problems(t: Templates) -> list[str]:
    problems = []
    for file, tree in t.items():
        scopes = [body(r).get("scope") for r in (tree.get("resources") or {}).values()
                  if r["type"] == "Microsoft.Insights/diagnosticSettings"]
        for name, res in (tree.get("resources") or {}).items():
            if res["type"] in DIAGNOSABLE and not res["existing"] and not any(mentions(s, name) for s in scopes):
                problems.append(f"{file}: {res['type']} {name} has no diagnostic settings")
    return problems


def lock_problems(t: Templates) -> list[str]:
    problems = []
    for file, tree in t.items():
        locked = [body(r).get("scope") for r in (tree.get("resources") or {}).values()
                  if r["type"] == "Microsoft.Authorization/locks" and dig(body(r), "properties", "level") == "CanNotDelete"]
        for name, res in (tree.get("resources") or {}).items():
            if res["type"] in DATA_STORES and not res["existing"] and not any(mentions(s, name) for s in locked):
                problems.append(f"{file}: {res['type']} {name} has no CanNotDelete lock")
    return problems


def role_problems(t: Templates) -> list[str]:
    """Each role assignment: an allowed data role, scoped to one resource, named
    guid(that resource's id, principal, role)."""
    problems = []
    for file, name, decl in resources(t, "Microsoft.Authorization/roleAssignments"):
        tree = t[file]
        scope = decl.get("scope")
        if not isinstance(scope, str):
            problems.append(f"{file}: {name} is not scoped to one resource")
            continue
        guid = dig(decl, "name", "function")
        base = dig(guid, "parameters", "base_string", "operator", "operands")
        if not guid or guid.get("type") != "guid" or base != {"operand_1": scope, "operand_2": "id"}:
            problems.append(f"{file}: {name} is not named guid({scope}.id, principal, role)")
        role = dig(decl, "properties", "roleDefinitionId", "function", "parameters", "resource_name_1")
        ref = role if isinstance(role, str) else dig(role, "operator", "operands", "operand_2")
        value = dig(tree, "variables", ref, "value") if isinstance(role, str) else \
            dig(tree, "variables", dig(role, "operator", "operands", "operand_1"), "value", ref)
        if value not in ALLOWED_ROLES:
            problems.append(f"{file}: {name} grants role {value!r}, not one of {sorted(ALLOWED_ROLES.values())}")
        if dig(guid, "parameters", "extra_string_2") != role:
            problems.append(f"{file}: {name} is not named after its role")
    return problems


def app_settings(t: Templates) -> tuple[dict[str, Any], dict[str, str], str]:
    """(plain settings by name, Key Vault secret name by setting, the reference template)."""
    file, site = one(t, "Microsoft.Web/sites")
    variables = t[file]["variables"]
    joined = dig(site, "properties", "siteConfig", "appSettings", "function")
    assert joined and joined["type"] == "concat", "appSettings must be concat(plainSettings, keyVaultSettings)"
    assert list(joined["parameters"].values()) == ["plainSettings", "keyVaultSettings"]
    plain = {s["name"]: s["value"] for s in variables["plainSettings"]["value"]}
    loop = variables["keyVaultSettings"]["value"]
    assert dig(loop, "loop_type", "detail", "object_name") == "secretSettings"
    value = dig(loop, "config", "value")
    # The owner app leaves the secrets it may not read empty: the reference is the true branch.
    reference = dig(value, "operator", "operands", "true_value") if isinstance(value, dict) else value
    return plain, dict(variables["secretSettings"]["value"]), str(reference)


def is_secret(name: str, description: str) -> bool:
    """A setting is secret by its name or by its description ("Key Vault in Azure")."""
    return name not in PUBLIC_KEYS and (bool(SECRET_NAME.search(name)) or "Key Vault" in description)


def settings_fields() -> dict[str, str]:
    return {name: field.description or "" for name, field in Settings.model_fields.items()}


def settings_problems(t: Templates, fields: dict[str, str] | None = None) -> list[str]:
    """Every setting of the Settings class is an app setting; a secret one is a Key Vault reference."""
    plain, secret, reference = app_settings(t)
    fields = settings_fields() if fields is None else fields
    problems = []
    if not KEY_VAULT_REFERENCE.match(reference):
        problems.append(f"secret settings are not Key Vault references: {reference!r}")
    for name, description in fields.items():
        env = name.upper()
        if name in NOT_IN_AZURE:
            if env in plain or env in secret:
                problems.append(f"{env} is set in Azure but listed as not set there")
        elif is_secret(name, description):
            if env not in secret:
                problems.append(f"{env} is secret but not a Key Vault reference")
            if env in plain:
                problems.append(f"{env} is secret but also a plain app setting")
        elif env not in plain and env not in secret:
            problems.append(f"{env} has no app setting")
    for env, value in plain.items():
        if "__" in env:  # an identity-based connection (<name>__accountName, __credential, __clientId): no secret
            continue
        if "-----BEGIN" in str(value) or SECRET_NAME.search(env.lower()) and env.lower() not in PUBLIC_KEYS:
            problems.append(f"{env} looks like a secret in a plain app setting")
    return problems


CHECKS: dict[str, Callable[[Templates], list[str]]] = {
    "storage": storage_problems, "worm": worm_problems, "lifecycle": lifecycle_problems,
    "postgres": postgres_problems, "keyvault": keyvault_problems, "functionapp": functionapp_problems,
    "monitoring": monitoring_problems, "diagnostics": diagnostics_problems, "locks": lock_problems,
    "roles": role_problems, "settings": settings_problems, "ownerapp": owner_app_problems,
}


# ------------------------------------------------------------------ tests

def test_every_bicep_file_parses() -> None:
    files = bicep_files()
    assert BICEP / "main.bicep" in files and len(files) > 5
    for path in files:
        BicepParser().parse(file_path=path)  # raises on a syntax error


def test_parameter_files_exist_for_both_regions_and_use_main() -> None:
    for region in ("uksouth", "westeurope"):
        text = (BICEP / f"main.{region}.bicepparam").read_text(encoding="utf-8")
        assert "using './main.bicep'" in text
        assert f"param location = '{region}'" in text


def test_every_parameter_and_output_is_described_and_numbers_are_bounded() -> None:
    missing = []
    for file, tree in _templates().items():
        for kind in ("parameters", "outputs"):
            for name, item in (tree.get(kind) or {}).items():
                kinds = {d["type"] for d in item.get("decorators", [])}
                if "description" not in kinds:
                    missing.append(f"{file}: {kind[:-1]} {name} has no @description")
                if kind == "parameters" and item.get("type") == "int" and not ({"min_value", "max_value"} <= kinds or "allowed" in kinds):
                    missing.append(f"{file}: int parameter {name} is not bounded")
    assert missing == []


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_security_settings_hold(check: str) -> None:
    assert CHECKS[check](_templates()) == []


def _weakened(file: str, old: str, new: str) -> Templates:
    """The parsed templates with one change in one file (only that file is parsed again)."""
    text = (BICEP / file).read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {file}: the mutation would test nothing"
    return {**_templates(), file: BicepParser().parse(text=text.replace(old, new, 1))}


WEAKENINGS = [
    ("storage", "modules/storage.bicep", "allowSharedKeyAccess: false", "allowSharedKeyAccess: true"),
    ("storage", "modules/storage.bicep", "allowBlobPublicAccess: false", "allowBlobPublicAccess: true"),
    ("storage", "modules/storage.bicep", "minimumTlsVersion: 'TLS1_2'", "minimumTlsVersion: 'TLS1_0'"),
    ("storage", "modules/storage.bicep", "isVersioningEnabled: true", "isVersioningEnabled: false"),
    ("storage", "modules/storage.bicep", "['blob', 'table', 'queue']: {\n  name: 'pe", "['blob', 'table']: {\n  name: 'pe"),
    ("worm", "modules/storage.bicep", "/default/attestations/default", "/default/snapshots/default"),
    ("worm", "modules/storage.bicep", "var wormContainers = ['audit-checkpoints', 'attestations']", "var wormContainers = ['attestations']"),
    ("worm", "modules/storage.bicep", "'attestations', 'app-package']", "'app-package']"),
    ("lifecycle", "modules/storage.bicep", "prefixMatch: [ 'exports/' ]", "prefixMatch: [ 'snapshots/' ]"),
    ("lifecycle", "modules/storage.bicep", "@maxValue(30)\nparam exportRetentionDays", "@maxValue(3650)\nparam exportRetentionDays"),
    ("postgres", "modules/postgres.bicep", "passwordAuth: 'Disabled'", "passwordAuth: 'Enabled'"),
    ("postgres", "modules/postgres.bicep", "backupRetentionDays: 35", "backupRetentionDays: 7"),
    ("postgres", "modules/postgres.bicep", "geoRedundantBackup: 'Enabled'", "geoRedundantBackup: 'Disabled'"),
    ("postgres", "modules/postgres.bicep", "{ name: 'require_secure_transport', value: 'on' }", "{ name: 'require_secure_transport', value: 'off' }"),
    ("postgres", "modules/postgres.bicep", "value: 'pgaudit,pg_stat_statements' }", "value: 'pg_stat_statements' }"),
    ("postgres", "modules/postgres.bicep", "publicNetworkAccess: 'Disabled'", "publicNetworkAccess: 'Enabled'"),
    ("postgres", "modules/postgres.bicep", "name: ownerObjectId", "name: appPrincipalId"),
    ("keyvault", "modules/keyvault.bicep", "enablePurgeProtection: true", "enablePurgeProtection: false"),
    ("keyvault", "modules/keyvault.bicep", "enableRbacAuthorization: true", "enableRbacAuthorization: false"),
    ("functionapp", "modules/functionapp.bicep", "minTlsVersion: '1.2'", "minTlsVersion: '1.0'"),
    ("functionapp", "modules/functionapp.bicep", "httpsOnly: true", "httpsOnly: false"),
    ("functionapp", "modules/functionapp.bicep", "name: 'scm'\n  properties: { allow: false }", "name: 'scm'\n  properties: { allow: true }"),
    ("monitoring", "modules/monitoring.bicep", "DisableLocalAuth: true", "DisableLocalAuth: false"),
    ("diagnostics", "modules/keyvault.bicep", "  scope: vault\n  properties: {\n    workspaceId", "  scope: privateEndpoint\n  properties: {\n    workspaceId"),
    ("locks", "modules/postgres.bicep", "level: 'CanNotDelete'", "level: 'ReadOnly'"),
    ("roles", "modules/keyvault.bicep", "4633458b-17de-408a-b874-0445c86b69e6", "00482a5a-887f-4fb3-b363-3b7fe8e74483"),
    ("roles", "modules/keyvault.bicep", "guid(vault.id, appPrincipalId", "guid(resourceGroup().id, appPrincipalId"),
    ("settings", "modules/functionapp.bicep", "  SMTP_PASSWORD: 'smtp-password'\n", ""),
    ("settings", "modules/functionapp.bicep", "  { name: 'JWT_ISSUER', value: jwtIssuer }\n", ""),
    ("settings", "modules/functionapp.bicep", "{ name: 'DB_POOL_MAX', value: '10' }", "{ name: 'DB_POOL_MAX', value: '10' }\n  { name: 'SMTP_PASSWORD', value: 'hunter2' }"),
    ("settings", "modules/functionapp.bicep", "secrets/${item.value}/)", "secrets/${item.value})x"),
    ("ownerapp", "modules/functionapp.bicep", "isOwner ? 'Deny' : 'Allow'", "'Allow'"),
    ("ownerapp", "modules/functionapp.bicep", "alwaysReady: isOwner ? [] : [", "alwaysReady: ["),
    ("ownerapp", "modules/functionapp.bicep", "value: isOwner ? databaseUrl : ''", "value: ''"),
    ("ownerapp", "main.bicep", "    functionGroup: 'owner'\n", ""),
    ("functionapp", "modules/functionapp.bicep", "isOwner ? null : '/api/health'", "isOwner ? null : '/'"),
]


@pytest.mark.parametrize(("check", "file", "old", "new"), WEAKENINGS, ids=[f"{w[0]}-{i}" for i, w in enumerate(WEAKENINGS)])
def test_a_weakened_template_is_caught(check: str, file: str, old: str, new: str) -> None:
    assert CHECKS[check](_weakened(file, old, new)) != []


def test_a_setting_added_later_must_be_in_the_bicep() -> None:
    fields = settings_fields()
    assert settings_problems(_templates(), {**fields, "webhook_secret": "Signs webhooks."}) == [
        "WEBHOOK_SECRET is secret but not a Key Vault reference"]
    assert settings_problems(_templates(), {**fields, "sso_client_id": "Client id (Key Vault in Azure)."}) == [
        "SSO_CLIENT_ID is secret but not a Key Vault reference"]
    assert settings_problems(_templates(), {**fields, "export_ttl_s": "Export lifetime."}) == [
        "EXPORT_TTL_S has no app setting"]


def checkov() -> str:
    """The checkov executable: $CHECKOV, else the .venv-infra one `make infra-venv` installs."""
    found = os.environ.get("CHECKOV") or str(ROOT / ".venv-infra" / "bin" / "checkov")
    if not Path(found).is_file():
        pytest.fail(f"checkov not found at {found}: run `make infra-venv` (requirements-infra.txt)")
    return found


def run_checkov(root: Path) -> dict[str, Any]:
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
    out = subprocess.run(
        [checkov(), "--framework", "bicep", "-d", str(root), "--skip-download", "-o", "json"],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )
    start = out.stdout.find("{")
    assert start >= 0, f"checkov printed no report: {out.stdout[-2000:]} {out.stderr[-2000:]}"
    report: dict[str, Any] = json.loads(out.stdout[start:])
    return report


def test_checkov_reports_no_failed_check_and_every_skip_has_a_reason(tmp_path: Path) -> None:
    report = run_checkov(BICEP)
    summary = report["summary"]
    failed = [(c["check_id"], c["resource"], c["file_path"]) for c in report["results"]["failed_checks"]]
    assert failed == []
    assert summary["parsing_errors"] == 0
    assert summary["passed"] > 20
    for skipped in report["results"].get("skipped_checks", []):
        reason = (skipped.get("check_result") or {}).get("suppress_comment") or ""
        assert len(reason) > 20, f"{skipped['check_id']} on {skipped['resource']} is skipped without a reason"


def test_checkov_fails_a_storage_account_with_public_network_access(tmp_path: Path) -> None:
    root = tmp_path / "bicep"
    shutil.copytree(BICEP, root)
    path = root / "modules" / "storage.bicep"
    path.write_text(path.read_text(encoding="utf-8").replace("publicNetworkAccess: 'Disabled'", "publicNetworkAccess: 'Enabled'"),
                    encoding="utf-8")
    failed = {c["check_id"] for c in run_checkov(root)["results"]["failed_checks"]}
    assert "CKV_AZURE_59" in failed
