// Custos on Azure: one resource group holding the Function App (Flex Consumption), its
// identities, Storage, Key Vault, PostgreSQL Flexible Server, the network that keeps the
// data stores private, and monitoring with alerts. `azd up` or
// `az deployment sub create -l uksouth -f infra/bicep/main.bicep -p infra/bicep/main.uksouth.bicepparam`.

targetScope = 'subscription'

@description('Required. Environment name (azd AZURE_ENV_NAME): lowercase letters, digits and hyphens; part of every resource name.')
@minLength(2)
@maxLength(16)
param environmentName string

@description('Required. Azure region. The regions Custos promises its customers (UK South, West Europe).')
@allowed(['uksouth', 'westeurope'])
param location string

@description('Optional. Name of the resource group to create.')
@minLength(1)
@maxLength(90)
param resourceGroupName string = 'rg-custos-${environmentName}'

@description('Required. Address that receives the alerts (heartbeat, audit verify, stale checkpoint).')
@minLength(3)
param alertEmail string

@description('Required. Public URL of the client app, used in mail links.')
@minLength(9)
param publicAppUrl string

@description('Optional. Issuer (iss) of access tokens; empty: the Function App URL.')
param jwtIssuer string = ''

@description('Required. WebAuthn relying-party id: the domain passkeys are bound to.')
@minLength(1)
@maxLength(253)
param webauthnRpId string

@description('Required. Comma-separated https origins where passkey ceremonies run.')
@minLength(9)
param webauthnOrigins string

@description('Optional. Comma-separated exact origins allowed for CORS; empty allows none.')
param corsAllowedOrigins string = ''

@description('Optional. SMTP relay host; empty leaves mail in the outbox.')
param smtpHost string = ''

@description('Required. security.txt Contact (mailto: or https: URL).')
@minLength(7)
param securityContact string

@description('Required. security.txt Policy URL.')
@minLength(9)
param securityPolicyUrl string

@description('Required. security.txt Expires, ISO 8601, less than a year ahead.')
@minLength(20)
@maxLength(25)
param securityTxtExpires string

@description('Optional. Zone-redundant high availability for PostgreSQL.')
param postgresZoneRedundantHa bool = true

@description('Optional. PostgreSQL compute size.')
@allowed(['Standard_D2ds_v5', 'Standard_D4ds_v5', 'Standard_D8ds_v5', 'Standard_E2ds_v5', 'Standard_E4ds_v5'])
param postgresSkuName string = 'Standard_D2ds_v5'

@description('Optional. Days after creation that export archives are deleted.')
@minValue(1)
@maxValue(30)
param exportRetentionDays int = 3

@description('Optional. Days each audit checkpoint and deletion attestation stays write-once (WORM).')
@minValue(1)
@maxValue(146000)
param wormRetentionDays int = 2557

@description('Optional. Days an attachment blob snapshot is kept; a deleted snapshot then stays soft-deleted for the storage soft-delete days (docs/dr.md).')
@minValue(7)
@maxValue(365)
param blobSnapshotRetentionDays int = 35

@description('Optional. Most Function App instances (times DB_POOL_MAX must stay under the server\'s connection limit).')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Required. Object id of the database owner: an Entra group (e.g. custos-db-owners) whose members (people, the deploy identity) run migrations. It becomes the PostgreSQL Entra admin.')
@minLength(36)
@maxLength(36)
param databaseOwnerObjectId string

@description('Required. Display name of the database owner (its PostgreSQL role name, AZURE_POSTGRES_OWNER of the hook).')
@minLength(1)
@maxLength(128)
param databaseOwnerName string

@description('Optional. Kind of the database owner principal.')
@allowed(['Group', 'User', 'ServicePrincipal'])
param databaseOwnerType string = 'Group'

@description('Optional. Tags applied to every resource.')
param tags object = {}

var token = toLower(uniqueString(subscription().id, environmentName, location))
var allTags = union(tags, { 'azd-env-name': environmentName, application: 'custos' })
var appName = 'func-custos-${environmentName}-${token}'
var postgresServerName = 'psql-custos-${environmentName}-${token}'

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: resourceGroupName
  location: location
  tags: allTags
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    location: location
    workspaceName: 'log-custos-${environmentName}-${token}'
    appInsightsName: 'appi-custos-${environmentName}-${token}'
    tags: allTags
  }
}

module identity 'modules/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    location: location
    appIdentityName: 'id-custos-app-${environmentName}'
    tags: allTags
  }
}

module network 'modules/network.bicep' = {
  name: 'network'
  scope: rg
  params: {
    location: location
    vnetName: 'vnet-custos-${environmentName}'
    postgresServerName: postgresServerName
    workspaceId: monitoring.outputs.workspaceId
    tags: allTags
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    location: location
    accountName: take('stcustos${toLower(replace(environmentName, '-', ''))}${token}', 24)
    exportRetentionDays: exportRetentionDays
    wormRetentionDays: wormRetentionDays
    appPrincipalId: identity.outputs.appPrincipalId
    privateEndpointSubnetId: network.outputs.privateEndpointSubnetId
    privateDnsZoneIds: network.outputs.privateDnsZoneIds
    workspaceId: monitoring.outputs.workspaceId
    tags: allTags
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    location: location
    vaultName: take('kv-custos-${token}', 24)
    appPrincipalId: identity.outputs.appPrincipalId
    privateEndpointSubnetId: network.outputs.privateEndpointSubnetId
    privateDnsZoneId: network.outputs.privateDnsZoneIds.vault
    workspaceId: monitoring.outputs.workspaceId
    tags: allTags
  }
}

module postgres 'modules/postgres.bicep' = {
  name: 'postgres'
  scope: rg
  params: {
    location: location
    serverName: postgresServerName
    skuName: postgresSkuName
    skuTier: startsWith(postgresSkuName, 'Standard_E') ? 'MemoryOptimized' : 'GeneralPurpose'
    zoneRedundantHa: postgresZoneRedundantHa
    ownerObjectId: databaseOwnerObjectId
    ownerName: databaseOwnerName
    ownerType: databaseOwnerType
    delegatedSubnetId: network.outputs.postgresSubnetId
    privateDnsZoneId: network.outputs.privateDnsZoneIds.postgres
    workspaceId: monitoring.outputs.workspaceId
    tags: allTags
  }
}

module telemetryRole 'modules/telemetry-role.bicep' = {
  name: 'telemetry-role'
  scope: rg
  params: {
    appInsightsName: monitoring.outputs.appInsightsName
    appPrincipalId: identity.outputs.appPrincipalId
  }
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp'
  scope: rg
  params: {
    location: location
    appName: appName
    planName: 'plan-custos-${environmentName}'
    identityId: identity.outputs.appIdentityId
    identityClientId: identity.outputs.appClientId
    identityName: identity.outputs.appIdentityName
    storageAccountName: storage.outputs.accountName
    packageContainerUrl: storage.outputs.packageContainerUrl
    vaultUri: keyVault.outputs.vaultUri
    postgresFqdn: postgres.outputs.fqdn
    databaseName: postgres.outputs.databaseName
    appInsightsConnectionString: monitoring.outputs.appInsightsConnectionString
    subnetId: network.outputs.appSubnetId
    workspaceId: monitoring.outputs.workspaceId
    maximumInstanceCount: maximumInstanceCount
    publicAppUrl: publicAppUrl
    jwtIssuer: empty(jwtIssuer) ? 'https://${appName}.azurewebsites.net' : jwtIssuer
    webauthnRpId: webauthnRpId
    webauthnOrigins: webauthnOrigins
    corsAllowedOrigins: corsAllowedOrigins
    smtpHost: smtpHost
    securityContact: securityContact
    securityPolicyUrl: securityPolicyUrl
    securityTxtExpires: securityTxtExpires
    securityCanonicalUrl: 'https://${appName}.azurewebsites.net/.well-known/security.txt'
    blobSnapshotRetentionDays: blobSnapshotRetentionDays
    tags: allTags
  }
}

// The owner-jobs app (docs/purge.md): the same package with CUSTOS_FUNCTION_GROUPS=owner, its
// own identity (mapped to the schema owner's role by postprovision), no HTTP route, no ingress.
var ownerAppName = 'func-custos-owner-${environmentName}-${token}'

module ownerIdentity 'modules/identity.bicep' = {
  name: 'owner-identity'
  scope: rg
  params: {
    location: location
    appIdentityName: 'id-custos-owner-${environmentName}'
    tags: allTags
  }
}

module ownerAccess 'modules/owner-access.bicep' = {
  name: 'owner-access'
  scope: rg
  params: {
    storageAccountName: storage.outputs.accountName
    appInsightsName: monitoring.outputs.appInsightsName
    ownerPrincipalId: ownerIdentity.outputs.appPrincipalId
  }
}

module ownerApp 'modules/functionapp.bicep' = {
  name: 'owner-functionapp'
  scope: rg
  params: {
    location: location
    appName: ownerAppName
    planName: 'plan-custos-owner-${environmentName}'
    functionGroup: 'owner'
    appRoleName: identity.outputs.appIdentityName
    identityId: ownerIdentity.outputs.appIdentityId
    identityClientId: ownerIdentity.outputs.appClientId
    identityName: ownerIdentity.outputs.appIdentityName
    storageAccountName: storage.outputs.accountName
    packageContainerUrl: ownerAccess.outputs.packageContainerUrl
    vaultUri: keyVault.outputs.vaultUri
    postgresFqdn: postgres.outputs.fqdn
    databaseName: postgres.outputs.databaseName
    appInsightsConnectionString: monitoring.outputs.appInsightsConnectionString
    subnetId: network.outputs.appSubnetId
    workspaceId: monitoring.outputs.workspaceId
    // One instance: the purge and the retention lock per tenant, and each holds one owner connection.
    maximumInstanceCount: 1
    alwaysReadyHttpInstances: 0
    publicAppUrl: publicAppUrl
    jwtIssuer: empty(jwtIssuer) ? 'https://${appName}.azurewebsites.net' : jwtIssuer
    webauthnRpId: webauthnRpId
    webauthnOrigins: webauthnOrigins
    securityContact: securityContact
    securityPolicyUrl: securityPolicyUrl
    securityTxtExpires: securityTxtExpires
    securityCanonicalUrl: 'https://${appName}.azurewebsites.net/.well-known/security.txt'
    blobSnapshotRetentionDays: blobSnapshotRetentionDays
    tags: allTags
  }
}

module alerts 'modules/alerts.bicep' = {
  name: 'alerts'
  scope: rg
  params: {
    location: location
    namePrefix: 'custos-${environmentName}'
    workspaceId: monitoring.outputs.workspaceId
    alertEmail: alertEmail
    ownerAppName: ownerApp.outputs.appName
    tags: allTags
  }
}

// Output names are the inputs of infra/scripts/postprovision.sh and docs/deploy.md.
@description('Name of the resource group.')
output AZURE_RESOURCE_GROUP string = rg.name

@description('Name of the Function App (azd deploys the api service to it).')
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.appName

@description('Base URL of the API.')
output AZURE_API_URL string = 'https://${functionApp.outputs.defaultHostName}'

@description('Name of the Key Vault that holds the secret settings.')
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.vaultName

@description('Name of the storage account.')
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.accountName

@description('FQDN of the PostgreSQL server (private address inside the network).')
output AZURE_POSTGRES_HOST string = postgres.outputs.fqdn

@description('Name of the app database.')
output AZURE_POSTGRES_DATABASE string = postgres.outputs.databaseName

@description('PostgreSQL role name of the database owner (the Entra admin the hook signs in as).')
output AZURE_POSTGRES_OWNER string = databaseOwnerName

@description('Name of the app identity: the app\'s PostgreSQL role name.')
output AZURE_APP_IDENTITY_NAME string = identity.outputs.appIdentityName

@description('Object (principal) id of the app identity, mapped to its PostgreSQL role.')
output AZURE_APP_IDENTITY_PRINCIPAL_ID string = identity.outputs.appPrincipalId

@description('Client id of the app identity.')
output AZURE_APP_IDENTITY_CLIENT_ID string = identity.outputs.appClientId

@description('Name of the owner-jobs Function App (azd deploys the owner-jobs service to it).')
output AZURE_OWNER_APP_NAME string = ownerApp.outputs.appName

@description('Name of the owner-jobs identity: its PostgreSQL role name, a member of the schema owner role.')
output AZURE_OWNER_IDENTITY_NAME string = ownerIdentity.outputs.appIdentityName

@description('Object (principal) id of the owner-jobs identity, mapped to its PostgreSQL role.')
output AZURE_OWNER_IDENTITY_PRINCIPAL_ID string = ownerIdentity.outputs.appPrincipalId

@description('Name of the Key Vault secret the owner-jobs identity may read (the audit signing key).')
output AZURE_OWNER_SECRET string = 'audit-signing-key'
