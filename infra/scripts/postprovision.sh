#!/usr/bin/env bash
# azd postprovision hook (azure.yaml), also run by the deploy job of .github/workflows/ci.yml:
# makes the app's database role and applies the migrations, as the PostgreSQL Entra owner.
#
#   1. python -m shared.cli create-app-role --entra-object-id <managed identity object id>
#      the login role the Function App connects as, mapped to its user-assigned managed identity
#      (pgaadauth_create_principal_with_oid), member of custos_app_rw once that exists;
#   2. python -m shared.cli migrate --skip-storage
#      the numbered migrations, under the runner's advisory lock; grants custos_app_rw to the role.
#   3. python -m shared.cli create-owner-role --principal-name <owner identity> --principal-id <its object id>
#      the owner-jobs app's login role, mapped to its own managed identity, granted the schema owner
#      role (the purge and the audit retention run as it; docs/purge.md, "The owner-jobs app").
#   Before those (Azure control plane only, so it needs no route to the database):
#   0. az role assignment create: Key Vault Secrets User for the owner identity on the one secret it
#      reads, audit-signing-key, once that secret exists (it is stored after the first provision,
#      docs/deploy.md step 3: until then the hook says so and the next run grants it).
#   All are idempotent: a second run applies nothing and changes nothing (docs/deploy.md).
#
# Who: the signed-in az principal (a person or the pipeline's federated identity), which must be
# a PostgreSQL Microsoft Entra administrator of the server, directly or through the owner group
# (Bicep parameter). Its password is an Entra access token for Azure Database for PostgreSQL
# (about an hour; plenty for this step), taken from `az` and handed to libpq as PGPASSWORD, so it
# is never written to disk, a URL, the command line or this script's output.
#
# Where: the server has private access only, so this must run from a network that reaches it
# (the VNet, a peered network, a self-hosted runner or a jump host in it): a probe says so.
#
# Inputs (azd sets Bicep outputs as environment variables of the hook):
#   AZURE_POSTGRES_HOST               server FQDN                                      (required)
#   AZURE_APP_IDENTITY_NAME           managed identity name = the app's database role  (required)
#   AZURE_APP_IDENTITY_PRINCIPAL_ID   managed identity object (principal) id           (required)
#   AZURE_OWNER_IDENTITY_NAME         owner-jobs identity name = its database role     (required)
#   AZURE_OWNER_IDENTITY_PRINCIPAL_ID owner-jobs identity object (principal) id        (required)
#   AZURE_KEY_VAULT_NAME              the vault holding audit-signing-key              (required)
#   AZURE_OWNER_SECRET                the one secret the owner identity reads (default: audit-signing-key)
#   AZURE_POSTGRES_DATABASE           database name                        (default: custos)
#   AZURE_POSTGRES_PORT               server port                          (default: 5432)
#   AZURE_POSTGRES_OWNER              Entra admin role name to sign in as  (default: the signed-in
#                                     user's UPN; a service principal or group: its display name)
#   CUSTOS_PYTHON                     python with requirements.txt installed (default: .venv/bin/python,
#                                     else python3)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

need() {
    if [ -z "${!1:-}" ]; then
        echo "postprovision: $1 is not set (a Bicep output azd passes to this hook; see docs/deploy.md)" >&2
        exit 2
    fi
}
need AZURE_POSTGRES_HOST
need AZURE_APP_IDENTITY_NAME
need AZURE_APP_IDENTITY_PRINCIPAL_ID
need AZURE_OWNER_IDENTITY_NAME
need AZURE_OWNER_IDENTITY_PRINCIPAL_ID
need AZURE_KEY_VAULT_NAME
database="${AZURE_POSTGRES_DATABASE:-custos}"
port="${AZURE_POSTGRES_PORT:-5432}"
owner="${AZURE_POSTGRES_OWNER:-}"
if [ -z "$owner" ]; then
    owner="$(az ad signed-in-user show --query userPrincipalName -o tsv)"
fi

py="${CUSTOS_PYTHON:-}"
if [ -z "$py" ]; then
    if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi

# The owner identity reads one secret, never the vault: a role assignment scoped to that secret.
# ARM refuses a scope that does not exist, and the secret is stored after the first provision.
secret="${AZURE_OWNER_SECRET:-audit-signing-key}"
vault_id="$(az keyvault show --name "$AZURE_KEY_VAULT_NAME" --query id -o tsv)"
if az resource show --ids "${vault_id}/secrets/${secret}" --query id -o tsv >/dev/null 2>&1; then
    echo "postprovision: Key Vault Secrets User for ${AZURE_OWNER_IDENTITY_NAME} on ${secret}"
    az role assignment create --assignee-object-id "$AZURE_OWNER_IDENTITY_PRINCIPAL_ID" \
        --assignee-principal-type ServicePrincipal --role "Key Vault Secrets User" \
        --scope "${vault_id}/secrets/${secret}" --only-show-errors >/dev/null
else
    echo "postprovision: secret ${secret} is not in ${AZURE_KEY_VAULT_NAME} yet: store it (docs/deploy.md, step 3), then run \`azd hooks run postprovision\` again so the owner-jobs app can read it" >&2
fi

if ! "$py" - "$AZURE_POSTGRES_HOST" "$port" <<'PY'
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10).close()
except (OSError, ValueError) as exc:
    sys.exit(f"postprovision: cannot reach {sys.argv[1]}:{sys.argv[2]} ({exc}). The server has private access "
             "only: run this from the VNet (a self-hosted runner or jump host), then `azd hooks run postprovision`.")
PY
then
    exit 2
fi

PGPASSWORD="$(az account get-access-token --resource-type oss-rdbms --query accessToken -o tsv)"
export PGPASSWORD
# The user name may be an e-mail address or contain spaces (a group's display name): percent-encode it.
user="$("$py" -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$owner")"
# verify-full against the system trust store: Flexible Server presents a publicly trusted chain.
export DATABASE_OWNER_URL="postgresql://${user}@${AZURE_POSTGRES_HOST}:${port}/${database}?sslmode=verify-full&sslrootcert=system"
export DATABASE_APP_ROLE="$AZURE_APP_IDENTITY_NAME"

echo "postprovision: app role ${DATABASE_APP_ROLE} (Entra object ${AZURE_APP_IDENTITY_PRINCIPAL_ID}) on ${AZURE_POSTGRES_HOST}/${database} as ${owner}"
"$py" -m shared.cli create-app-role --entra-object-id "$AZURE_APP_IDENTITY_PRINCIPAL_ID"
echo "postprovision: migrations"
"$py" -m shared.cli migrate --skip-storage
echo "postprovision: owner role ${AZURE_OWNER_IDENTITY_NAME} (Entra object ${AZURE_OWNER_IDENTITY_PRINCIPAL_ID})"
"$py" -m shared.cli create-owner-role --principal-name "$AZURE_OWNER_IDENTITY_NAME" --principal-id "$AZURE_OWNER_IDENTITY_PRINCIPAL_ID"
