// Key Vault for the app's secret settings. RBAC authorisation (no access policies),
// purge protection, no public network access: the app reads secrets through the private
// endpoint as its managed identity, via Key Vault references in its app settings.
// Secret values never pass through a deployment: ops set them (docs/deploy.md).

@description('Required. Azure region of the vault.')
@allowed(['uksouth', 'westeurope'])
param location string

@description('Required. Key Vault name (3-24 letters, digits and hyphens).')
@minLength(3)
@maxLength(24)
param vaultName string

@description('Optional. Days a deleted vault or secret can be recovered (purge protection holds it that long).')
@minValue(7)
@maxValue(90)
param softDeleteRetentionInDays int = 90

@description('Required. Principal id of the app identity (Key Vault Secrets User on this vault).')
param appPrincipalId string

@description('Required. Resource id of the subnet for private endpoints.')
param privateEndpointSubnetId string

@description('Required. Resource id of the privatelink.vaultcore.azure.net private DNS zone.')
param privateDnsZoneId string

@description('Required. Resource id of the Log Analytics workspace for diagnostic settings.')
param workspaceId string

@description('Optional. Tags applied to every resource.')
param tags object = {}

var keyVaultSecretsUser = '4633458b-17de-408a-b874-0445c86b69e6'

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: vaultName
  location: location
  tags: tags
  properties: {
    tenantId: tenant().tenantId
    sku: { family: 'A', name: 'standard' }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: softDeleteRetentionInDays
    enablePurgeProtection: true
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    publicNetworkAccess: 'Disabled'
    networkAcls: {
      defaultAction: 'Deny'
      bypass: 'None'
    }
  }
}

resource privateEndpoint 'Microsoft.Network/privateEndpoints@2024-05-01' = {
  name: 'pe-${vaultName}'
  location: location
  tags: tags
  properties: {
    subnet: { id: privateEndpointSubnetId }
    privateLinkServiceConnections: [
      {
        name: vaultName
        properties: {
          privateLinkServiceId: vault.id
          groupIds: [ 'vault' ]
        }
      }
    ]
  }
}

resource privateDnsGroup 'Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2024-05-01' = {
  parent: privateEndpoint
  name: 'default'
  properties: {
    privateDnsZoneConfigs: [
      {
        name: 'vault'
        properties: { privateDnsZoneId: privateDnsZoneId }
      }
    ]
  }
}

// Secrets User (read secret values) on this vault only: not Administrator, not the group.
resource secretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, appPrincipalId, keyVaultSecretsUser)
  scope: vault
  properties: {
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUser)
  }
}

resource diagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: vault
  properties: {
    workspaceId: workspaceId
    logs: [ { categoryGroup: 'allLogs', enabled: true } ]
    metrics: [ { category: 'AllMetrics', enabled: true } ]
  }
}

resource lock 'Microsoft.Authorization/locks@2020-05-01' = {
  name: 'do-not-delete'
  scope: vault
  properties: {
    level: 'CanNotDelete'
    notes: 'Holds the signing and encryption keys of a regulated system.'
  }
}

@description('Resource id of the vault.')
output vaultId string = vault.id

@description('Name of the vault.')
output vaultName string = vault.name

@description('URI of the vault, ending in a slash (base of the Key Vault references).')
output vaultUri string = vault.properties.vaultUri
