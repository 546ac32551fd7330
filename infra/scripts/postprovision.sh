#!/usr/bin/env bash
# azd postprovision hook (azure.yaml), also run by the deploy job of .github/workflows/ci.yml:
# makes the app's database role and applies the migrations, as the PostgreSQL Entra owner.
#
#   1. python -m shared.cli create-app-role --entra-object-id <managed identity object id>
#      the login role the Function App connects as, mapped to its user-assigned managed identity
#      (pgaadauth_create_principal_with_oid), member of custos_app_rw once that exists;
#   2. python -m shared.cli migrate --skip-storage
#      the numbered migrations, under the runner's advisory lock; grants custos_app_rw to the role.
#   Both are idempotent: a second run applies nothing and changes nothing (docs/deploy.md).
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
