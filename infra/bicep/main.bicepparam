// What `azd up` uses (azure.yaml: module main): the region comes from AZURE_LOCATION (uksouth or
// westeurope); the per-region files beside it are for `az deployment sub create` and the pipeline.
using './main.bicep'

param environmentName = readEnvironmentVariable('AZURE_ENV_NAME', 'custos-uksouth')
param location = readEnvironmentVariable('AZURE_LOCATION', 'uksouth')
param alertEmail = readEnvironmentVariable('CUSTOS_ALERT_EMAIL', 'ops@custos.invalid')
param publicAppUrl = readEnvironmentVariable('CUSTOS_PUBLIC_APP_URL', 'https://app.custos.invalid')
param webauthnRpId = readEnvironmentVariable('CUSTOS_WEBAUTHN_RP_ID', 'custos.invalid')
param webauthnOrigins = readEnvironmentVariable('CUSTOS_WEBAUTHN_ORIGINS', 'https://app.custos.invalid')
param corsAllowedOrigins = readEnvironmentVariable('CUSTOS_CORS_ALLOWED_ORIGINS', 'https://app.custos.invalid')
param securityContact = 'mailto:security@custos.invalid'
param securityPolicyUrl = 'https://custos.invalid/security/policy'
param securityTxtExpires = '2027-11-01T00:00:00Z'
param postgresZoneRedundantHa = true
// The Entra group that owns the database (docs/deploy.md, prerequisites).
param databaseOwnerObjectId = readEnvironmentVariable('CUSTOS_DB_OWNER_OBJECT_ID', '')
param databaseOwnerName = readEnvironmentVariable('CUSTOS_DB_OWNER_NAME', 'custos-db-owners')
param databaseOwnerType = 'Group'
