// The Function App on Flex Consumption, running as its user-assigned identity.
//
// Why Flex Consumption and not Elastic Premium: it has VNet integration, always-ready
// instances and per-instance memory sizes like Premium, but scales to zero and per
// execution, and it deploys from a blob container with the managed identity (no
// WEBSITE_CONTENTAZUREFILECONNECTIONSTRING, which needs a shared key: Premium's content
// share cannot run with allowSharedKeyAccess false). See infra/README.md.
//
// Every setting of shared/core/settings.py is an app setting here; secret ones are
// Key Vault references resolved by the identity (tests/test_bicep.py checks both).

@description('Required. Azure region of the app.')
@allowed(['uksouth', 'westeurope'])
param location string

@description('Required. Name of the Function App (its default host name is <name>.azurewebsites.net).')
@minLength(2)
@maxLength(60)
param appName string

@description('Required. Name of the Flex Consumption plan.')
@minLength(1)
@maxLength(60)
param planName string

@description('Required. Resource id of the app identity.')
param identityId string

@description('Required. Client id of the app identity (AZURE_CLIENT_ID, AzureWebJobsStorage__clientId).')
param identityClientId string

@description('Required. Name of the app identity: its PostgreSQL role name.')
param identityName string

@description('Required. Name of the storage account.')
param storageAccountName string

@description('Required. URL of the blob container the app package is deployed to.')
param packageContainerUrl string

@description('Required. URI of the Key Vault (ends in a slash).')
param vaultUri string

@description('Required. FQDN of the PostgreSQL server.')
param postgresFqdn string

@description('Required. Name of the app database.')
param databaseName string

@description('Required. Application Insights connection string.')
param appInsightsConnectionString string

@description('Required. Resource id of the subnet the app integrates with (outbound through the VNet).')
param subnetId string

@description('Required. Resource id of the Log Analytics workspace for diagnostic settings.')
param workspaceId string

@description('Optional. Most instances the app scales out to (each holds DB_POOL_MAX connections).')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Optional. HTTP instances kept warm (no cold start; two survive the loss of one instance or zone).')
@minValue(0)
@maxValue(20)
param alwaysReadyHttpInstances int = 2

@description('Optional. Memory of each instance in MB (Argon2id takes 64 MiB per concurrent hash).')
@allowed([512, 2048, 4096])
param instanceMemoryMB int = 2048

@description('Required. Public URL of the client app, used in mail links (https).')
@minLength(9)
param publicAppUrl string

@description('Required. Issuer (iss) of access tokens, normally the public URL of the API.')
@minLength(9)
param jwtIssuer string

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

@description('Optional. From address of Custos mail.')
param smtpFrom string = 'Custos <no-reply@custos.invalid>'

@description('Required. security.txt Contact (mailto: or https: URL).')
param securityContact string

@description('Required. security.txt Policy URL.')
param securityPolicyUrl string

@description('Required. security.txt Expires, ISO 8601, less than a year ahead.')
param securityTxtExpires string

@description('Required. security.txt Canonical URL.')
param securityCanonicalUrl string

@description('Optional. Version written into audit events and logs.')
param appVersion string = '0.1.0'

@description('Optional. Have I Been Pwned range API base URL; empty uses the shipped offline list only.')
param hibpApiUrl string = 'https://api.pwnedpasswords.com'

@description('Optional. Days an attachment blob snapshot is kept (BLOB_SNAPSHOT_RETENTION_DAYS; at least the blob soft-delete days).')
@minValue(7)
@maxValue(365)
param blobSnapshotRetentionDays int = 35

@description('Optional. Security contact named in incident notices to tenant admins (INCIDENT_CONTACT): an address or phone line customers can reach.')
@minLength(3)
@maxLength(200)
param incidentContact string = 'security@custos.example'

@description('Optional. Tags applied to every resource (azd-service-name is added).')
param tags object = {}

@description('Optional. Functions this app runs (CUSTOS_FUNCTION_GROUPS): api (HTTP and timers) or owner (the purge and audit retention as the schema owner; no HTTP route, no public ingress).')
@allowed(['api', 'owner'])
param functionGroup string = 'api'

@description('Optional. PostgreSQL role of the HTTP app (DATABASE_APP_ROLE); empty: identityName.')
param appRoleName string = ''

var isOwner = functionGroup == 'owner'
var databaseUrl = 'postgresql://${identityName}@${postgresFqdn}:5432/${databaseName}?sslmode=verify-full&sslrootcert=system'
// The owner-jobs identity may read only the key its attestations and retention checkpoints are
// signed with (infra/scripts/postprovision.sh grants it on that one secret): the API's secrets stay empty there.
var ownerSecrets = ['AUDIT_SIGNING_KEY']

// Key Vault secret name of each secret setting; the reference has no version, so a
// rotated secret is picked up without a deployment.
var secretSettings = {
  JWT_SIGNING_KEY: 'jwt-signing-key'
  AUDIT_SIGNING_KEY: 'audit-signing-key'
  MFA_ENCRYPTION_KEY: 'mfa-encryption-key'
  MFA_DECRYPTION_KEYS: 'mfa-decryption-keys'
  RATE_LIMIT_KEY: 'rate-limit-key'
  RATE_LIMIT_PREVIOUS_KEYS: 'rate-limit-previous-keys'
  SMTP_USERNAME: 'smtp-username'
  SMTP_PASSWORD: 'smtp-password'
  SAML_SP_PRIVATE_KEY: 'saml-sp-private-key'
  SAML_SP_CERTIFICATE: 'saml-sp-certificate'
}

var plainSettings = [
  // Functions host: storage and telemetry through the identity, never a key.
  { name: 'AzureWebJobsStorage__accountName', value: storageAccountName }
  { name: 'AzureWebJobsStorage__credential', value: 'managedidentity' }
  { name: 'AzureWebJobsStorage__clientId', value: identityClientId }
  { name: 'AzureWebJobsFeatureFlags', value: 'EnableWorkerIndexing' }
  { name: 'AZURE_CLIENT_ID', value: identityClientId }
  { name: 'APPLICATIONINSIGHTS_CONNECTION_STRING', value: appInsightsConnectionString }
  { name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING', value: 'ClientId=${identityClientId};Authorization=AAD' }
  // shared/core/settings.py
  { name: 'CUSTOS_ENV', value: 'production' }
  { name: 'APP_VERSION', value: appVersion }
  // No password: the app signs in with an Entra token of its identity as the password.
  // verify-full against the system trust store: Flexible Server presents a publicly trusted chain.
  // In the owner app the identity is mapped to the schema owner's role: both URLs sign in as it.
  { name: 'DATABASE_URL', value: databaseUrl }
  { name: 'DATABASE_OWNER_URL', value: isOwner ? databaseUrl : '' }
  { name: 'CUSTOS_FUNCTION_GROUPS', value: functionGroup }
  { name: 'DATABASE_AUTH', value: 'entra' }
  { name: 'DATABASE_APP_ROLE', value: empty(appRoleName) ? identityName : appRoleName }
  { name: 'DB_POOL_MIN', value: '1' }
  { name: 'DB_POOL_MAX', value: '10' }
  { name: 'DB_CONNECT_TIMEOUT_S', value: '5' }
  { name: 'DB_STATEMENT_TIMEOUT_S', value: '60' }
  { name: 'STORAGE_ACCOUNT_NAME', value: storageAccountName }
  { name: 'STORAGE_CONNECT_TIMEOUT_S', value: '2' }
  { name: 'STORAGE_READ_TIMEOUT_S', value: '20' }
  { name: 'STORAGE_RETRIES', value: '2' }
  { name: 'HEALTH_TIMEOUT_S', value: '4' }
  { name: 'MAX_BODY_BYTES', value: '1048576' }
  { name: 'CORS_ALLOWED_ORIGINS', value: corsAllowedOrigins }
  { name: 'CORS_MAX_AGE_S', value: '600' }
  { name: 'JWT_ISSUER', value: jwtIssuer }
  { name: 'JWT_AUDIENCE', value: 'custos-api' }
  { name: 'JWT_ACCESS_TTL_S', value: '900' }
  { name: 'JWT_LEEWAY_S', value: '30' }
  // Public keys of retired signing keys: not secret, rotated by a deployment.
  { name: 'JWT_VERIFY_KEYS', value: '' }
  { name: 'AUDIT_VERIFY_KEYS', value: '' }
  { name: 'AUDIT_EXPORT_MAX_EVENTS', value: '1000000' }
  { name: 'AUDIT_RETENTION_MIN_DAYS', value: '2555' }
  { name: 'ATTACHMENT_MAX_BYTES', value: '26214400' }
  { name: 'ATTACHMENT_CONTENT_TYPES', value: 'application/pdf,image/png,image/jpeg,text/plain,text/csv,application/json,application/xml' }
  { name: 'HEARTBEAT_SCHEDULE', value: '0 */5 * * * *' }
  { name: 'AUDIT_CHECKPOINT_SCHEDULE', value: '0 */5 * * * *' }
  { name: 'AUDIT_VERIFY_SCHEDULE', value: '0 30 2 * * *' }
  { name: 'BLOB_SNAPSHOT_SCHEDULE', value: '0 15 1 * * *' }
  { name: 'BLOB_SNAPSHOT_RETENTION_DAYS', value: string(blobSnapshotRetentionDays) }
  { name: 'AUDIT_RETENTION_SCHEDULE', value: '0 15 3 * * *' }
  { name: 'PASSWORD_HASH_CONCURRENCY', value: '2' }
  { name: 'HIBP_API_URL', value: hibpApiUrl }
  { name: 'HIBP_TIMEOUT_S', value: '2' }
  { name: 'HIBP_FAIL_OPEN', value: 'true' }
  { name: 'REFRESH_TTL_DAYS', value: '7' }
  { name: 'REFRESH_REMEMBER_TTL_DAYS', value: '30' }
  { name: 'REFRESH_GRACE_S', value: '5' }
  { name: 'OPERATOR_SESSION_MAX_IDLE_MINUTES', value: '30' }
  { name: 'LOGIN_THRESHOLD_EMAIL_IP', value: '5' }
  { name: 'LOGIN_THRESHOLD_IP', value: '30' }
  { name: 'LOGIN_THRESHOLD_EMAIL', value: '50' }
  { name: 'LOGIN_WINDOW_S', value: '900' }
  { name: 'LOGIN_DELAY_BASE_S', value: '2' }
  { name: 'LOGIN_DELAY_MAX_S', value: '900' }
  { name: 'API_RATE_PER_MINUTE', value: '600' }
  { name: 'SMTP_HOST', value: smtpHost }
  { name: 'SMTP_PORT', value: '587' }
  { name: 'SMTP_STARTTLS', value: 'true' }
  { name: 'SMTP_FROM', value: smtpFrom }
  { name: 'MAIL_DELIVERY_SCHEDULE', value: '0 * * * * *' }
  { name: 'PUBLIC_APP_URL', value: publicAppUrl }
  { name: 'SECURITY_CONTACT', value: securityContact }
  { name: 'SECURITY_POLICY_URL', value: securityPolicyUrl }
  { name: 'SECURITY_TXT_EXPIRES', value: securityTxtExpires }
  { name: 'SECURITY_PREFERRED_LANGUAGES', value: 'en' }
  { name: 'SECURITY_CANONICAL_URL', value: securityCanonicalUrl }
  { name: 'MFA_TOTP_ISSUER', value: 'Custos' }
  { name: 'MFA_TICKET_TTL_S', value: '300' }
  { name: 'MFA_RECENT_AUTH_S', value: '900' }
  { name: 'WEBAUTHN_RP_ID', value: webauthnRpId }
  { name: 'WEBAUTHN_RP_NAME', value: 'Custos' }
  { name: 'WEBAUTHN_ORIGINS', value: webauthnOrigins }
  { name: 'WEBAUTHN_CHALLENGE_TTL_S', value: '300' }
  { name: 'TENANT_PURGE_AFTER_DAYS', value: '30' }
  { name: 'TENANT_PURGE_SCHEDULE', value: '0 30 3 * * *' }
  { name: 'TENANT_PURGE_BATCH_ROWS', value: '1000' }
  // Jobs on queues (functions/jobs.py): the trigger's connection JobsStorage is identity-based, no key.
  { name: 'JobsStorage__queueServiceUri', value: 'https://${storageAccountName}.queue.${environment().suffixes.storage}' }
  { name: 'JobsStorage__credential', value: 'managedidentity' }
  { name: 'JobsStorage__clientId', value: identityClientId }
  { name: 'JOBS_QUEUE', value: 'custos-jobs' }
  // The owner jobs (audit retention) go to their own queue, read only by the owner-jobs app (docs/purge.md).
  { name: 'OWNER_JOBS_QUEUE', value: 'custos-owner-jobs' }
  { name: 'JOB_LEASE_S', value: '900' }
  { name: 'EXPORT_LINK_TTL_S', value: '300' }
  { name: 'HOUSEKEEPING_SCHEDULE', value: '0 */15 * * * *' }
  { name: 'OUTBOX_SENT_RETENTION_DAYS', value: '30' }
  // docs/sso.md: IdPs post to this app's own host; the console it hands sign-ins to is served by it.
  { name: 'SSO_PUBLIC_URL', value: 'https://${appName}.azurewebsites.net' }
  { name: 'SSO_CONSOLE_URL', value: 'https://${appName}.azurewebsites.net/console/' }
  { name: 'SSO_CLOCK_SKEW_S', value: '120' }
  { name: 'SSO_REQUEST_TTL_S', value: '600' }
  { name: 'SSO_HANDOFF_TTL_S', value: '60' }
  { name: 'SSO_METADATA_MAX_BYTES', value: '1048576' }
  { name: 'SSO_METADATA_TIMEOUT_S', value: '10' }
  { name: 'SSO_METADATA_ALLOW_LOOPBACK', value: 'false' }
  { name: 'SSO_PURGE_SCHEDULE', value: '0 */30 * * * *' }
  // docs/incidents.md: signals swept into incidents every 5 minutes; the contact goes into every notice.
  { name: 'INCIDENT_SCHEDULE', value: '0 */5 * * * *' }
  { name: 'INCIDENT_CONTACT', value: incidentContact }
  { name: 'INCIDENT_WINDOW_S', value: '600' }
  { name: 'INCIDENT_REUSE_BURST', value: '3' }
  { name: 'INCIDENT_THROTTLE_SPIKE', value: '10' }
  { name: 'INCIDENT_FIRST_SWEEP_LOOKBACK_S', value: '604800' }
]

var keyVaultSettings = [for item in items(secretSettings): {
  name: item.key
  value: (!isOwner || contains(ownerSecrets, item.key)) ? '@Microsoft.KeyVault(SecretUri=${vaultUri}secrets/${item.value}/)' : ''
}]

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true
    // Both regions have availability zones; instances spread across them at no extra cost.
    zoneRedundant: true
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  //checkov:skip=CKV_AZURE_222:Custos is a public HTTPS API for client apps, so the app itself must be reachable; its data stores (Storage, Key Vault, PostgreSQL) are private. A Front Door with WAF in front is a deployment choice (docs/security.md, Azure deployment).
  //checkov:skip=CKV_AZURE_17:Custos clients authenticate with bearer tokens over TLS 1.2+, not client certificates (browsers of tenant users cannot present them).
  //checkov:skip=CKV_AZURE_212:Flex Consumption has no numberOfWorkers; its floor is alwaysReady (alwaysReadyHttpInstances, 2 by default, across zones).
  name: appName
  location: location
  tags: union(tags, { 'azd-service-name': isOwner ? 'owner-jobs' : 'api' })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${identityId}': {} }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    publicNetworkAccess: 'Enabled'
    virtualNetworkSubnetId: subnetId
    keyVaultReferenceIdentity: identityId
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: packageContainerUrl
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
        alwaysReady: isOwner ? [] : [
          {
            name: 'http'
            instanceCount: alwaysReadyHttpInstances
          }
        ]
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      healthCheckPath: isOwner ? null : '/api/health'
      // The owner app has no HTTP route: its front door refuses everyone. The scm site stays
      // reachable for azd's deployment, which signs in with Entra (basic credentials are off).
      ipSecurityRestrictionsDefaultAction: isOwner ? 'Deny' : 'Allow'
      scmIpSecurityRestrictionsUseMain: false
      remoteDebuggingEnabled: false
      cors: { allowedOrigins: [] }
      appSettings: concat(plainSettings, keyVaultSettings)
    }
  }
}

resource ftpCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'ftp'
  properties: { allow: false }
}

resource scmCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'scm'
  properties: { allow: false }
}

resource siteDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: site
  properties: {
    workspaceId: workspaceId
    logs: [ { categoryGroup: 'allLogs', enabled: true } ]
    metrics: [ { category: 'AllMetrics', enabled: true } ]
  }
}

resource planDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: plan
  properties: {
    workspaceId: workspaceId
    metrics: [ { category: 'AllMetrics', enabled: true } ]
  }
}

@description('Resource id of the Function App.')
output appId string = site.id

@description('Name of the Function App.')
output appName string = site.name

@description('Default host name of the Function App.')
output defaultHostName string = site.properties.defaultHostName
