// Storage account for blobs (attachments, exports, snapshots, audit checkpoints,
// deletion attestations, the app package), tables (throttles, WebAuthn challenges, SAML
// replay cache) and queues (jobs). No shared keys, no public access, private endpoints only.

@description('Required. Azure region of the account.')
@allowed(['uksouth', 'westeurope'])
param location string

@description('Required. Storage account name (3-24 lowercase letters and digits).')
@minLength(3)
@maxLength(24)
param accountName string

@description('Optional. Days a deleted or overwritten blob and a deleted container can be restored.')
@minValue(7)
@maxValue(365)
param softDeleteRetentionDays int = 7

@description('Optional. Days after creation that export archives are deleted (exports are copies of tenant data).')
@minValue(1)
@maxValue(30)
param exportRetentionDays int = 3

@description('Optional. Days each audit checkpoint and deletion attestation stays write-once (WORM). 2557 days is 7 years.')
@minValue(1)
@maxValue(146000)
param wormRetentionDays int = 2557

@description('Required. Principal id of the app identity (Blob, Table and Queue data roles on this account).')
param appPrincipalId string

@description('Required. Resource id of the subnet for private endpoints.')
param privateEndpointSubnetId string

@description('Required. Resource ids of the private DNS zones (keys blob, table, queue).')
param privateDnsZoneIds object

@description('Required. Resource id of the Log Analytics workspace for diagnostic settings.')
param workspaceId string

@description('Optional. Tags applied to every resource.')
param tags object = {}

// Container names the app uses (shared/core/storage.py CONTAINERS) plus the Flex
// Consumption deployment package container.
var containers = ['attachments', 'exports', 'snapshots', 'audit-checkpoints', 'attestations', 'app-package']
// Evidence that must outlive any operator's wish to change it.
var wormContainers = ['audit-checkpoints', 'attestations']

var roles = {
  // The Functions host takes blob leases for timer singletons and writes its own
  // containers (AzureWebJobsStorage): the documented minimum is Blob Data Owner.
  blobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  tableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  queueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
}

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  //checkov:skip=CKV_AZURE_43:The name is a parameter computed in main.bicep from lowercase letters and digits, 3 to 24 characters by its decorators. checkov cannot evaluate it.
  name: accountName
  location: location
  tags: tags
  kind: 'StorageV2'
  // Geo-zone-redundant: three zones here and a copy in the paired region, so neither a
  // zone nor a region loss takes the audit checkpoints with it.
  sku: { name: 'Standard_GZRS' }
  properties: {
    accessTier: 'Hot'
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    publicNetworkAccess: 'Disabled'
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    networkAcls: {
      defaultAction: 'Deny'
      bypass: 'AzureServices'
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      requireInfrastructureEncryption: true
      services: {
        blob: { enabled: true, keyType: 'Account' }
        file: { enabled: true, keyType: 'Account' }
        table: { enabled: true, keyType: 'Account' }
        queue: { enabled: true, keyType: 'Account' }
      }
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
  properties: {
    isVersioningEnabled: true
    changeFeed: { enabled: true }
    deleteRetentionPolicy: { enabled: true, days: softDeleteRetentionDays }
    containerDeleteRetentionPolicy: { enabled: true, days: softDeleteRetentionDays }
  }
}

resource blobContainers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = [for name in containers: {
  parent: blobService
  name: name
  properties: {
    publicAccess: 'None'
    // Version-level WORM can only be switched on when the container is created.
    immutableStorageWithVersioning: { enabled: contains(wormContainers, name) }
  }
}]

// A time-based retention policy on each WORM container. It is deployed unlocked (ARM
// cannot lock it); ops lock it once after the first deployment (infra/README.md), after
// which nobody, including a subscription owner, can shorten it or delete a blob in it.
resource auditCheckpointsWorm 'Microsoft.Storage/storageAccounts/blobServices/containers/immutabilityPolicies@2023-05-01' = {
  name: '${account.name}/default/audit-checkpoints/default'
  properties: {
    immutabilityPeriodSinceCreationInDays: wormRetentionDays
    allowProtectedAppendWrites: false
  }
  dependsOn: [ blobContainers ]
}

resource attestationsWorm 'Microsoft.Storage/storageAccounts/blobServices/containers/immutabilityPolicies@2023-05-01' = {
  name: '${account.name}/default/attestations/default'
  properties: {
    immutabilityPeriodSinceCreationInDays: wormRetentionDays
    allowProtectedAppendWrites: false
  }
  dependsOn: [ blobContainers ]
}

resource lifecycle 'Microsoft.Storage/storageAccounts/managementPolicies@2023-05-01' = {
  parent: account
  name: 'default'
  properties: {
    policy: {
      rules: [
        {
          name: 'delete-export-archives'
          enabled: true
          type: 'Lifecycle'
          definition: {
            filters: {
              blobTypes: [ 'blockBlob' ]
              prefixMatch: [ 'exports/' ]
            }
            actions: {
              baseBlob: { delete: { daysAfterCreationGreaterThan: exportRetentionDays } }
              snapshot: { delete: { daysAfterCreationGreaterThan: exportRetentionDays } }
              version: { delete: { daysAfterCreationGreaterThan: exportRetentionDays } }
            }
          }
        }
      ]
    }
  }
  dependsOn: [ blobContainers ]
}

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: account
  name: 'default'
}

// Jobs (functions/jobs.py, JOBS_QUEUE) and the poison queue the Functions host moves a
// message to after host.json maxDequeueCount failed tries. Created here so the identity needs
// no right to create queues at run time.
resource jobQueues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = [for name in ['custos-jobs', 'custos-jobs-poison']: {
  parent: queueService
  name: name
}]

// The owner jobs (functions/owner.py, OWNER_JOBS_QUEUE): read only by the owner-jobs app, whose
// role may cut audit events; the API app sends nothing there (docs/purge.md, "The owner-jobs app").
resource ownerJobQueues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = [for name in ['custos-owner-jobs', 'custos-owner-jobs-poison']: {
  parent: queueService
  name: name
}]

resource fileService 'Microsoft.Storage/storageAccounts/fileServices@2023-05-01' = {
  parent: account
  name: 'default'
  properties: {
    shareDeleteRetentionPolicy: { enabled: true, days: softDeleteRetentionDays }
  }
}

resource privateEndpoints 'Microsoft.Network/privateEndpoints@2024-05-01' = [for service in ['blob', 'table', 'queue']: {
  name: 'pe-${accountName}-${service}'
  location: location
  tags: tags
  properties: {
    subnet: { id: privateEndpointSubnetId }
    privateLinkServiceConnections: [
      {
        name: '${accountName}-${service}'
        properties: {
          privateLinkServiceId: account.id
          groupIds: [ service ]
        }
      }
    ]
  }
}]

resource privateDnsGroups 'Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2024-05-01' = [for (service, i) in ['blob', 'table', 'queue']: {
  parent: privateEndpoints[i]
  name: 'default'
  properties: {
    privateDnsZoneConfigs: [
      {
        name: service
        properties: { privateDnsZoneId: privateDnsZoneIds[service] }
      }
    ]
  }
}]

resource blobDataOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account.id, appPrincipalId, roles.blobDataOwner)
  scope: account
  properties: {
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.blobDataOwner)
  }
}

resource tableDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account.id, appPrincipalId, roles.tableDataContributor)
  scope: account
  properties: {
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.tableDataContributor)
  }
}

resource queueDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account.id, appPrincipalId, roles.queueDataContributor)
  scope: account
  properties: {
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.queueDataContributor)
  }
}

resource accountDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: account
  properties: {
    workspaceId: workspaceId
    metrics: [ { category: 'Transaction', enabled: true } ]
  }
}

resource blobDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: blobService
  properties: {
    workspaceId: workspaceId
    logs: [ { categoryGroup: 'allLogs', enabled: true } ]
    metrics: [ { category: 'Transaction', enabled: true } ]
  }
}

resource tableDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: tableService
  properties: {
    workspaceId: workspaceId
    logs: [ { categoryGroup: 'allLogs', enabled: true } ]
    metrics: [ { category: 'Transaction', enabled: true } ]
  }
}

resource queueDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: queueService
  properties: {
    workspaceId: workspaceId
    logs: [ { categoryGroup: 'allLogs', enabled: true } ]
    metrics: [ { category: 'Transaction', enabled: true } ]
  }
}

resource fileDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: fileService
  properties: {
    workspaceId: workspaceId
    logs: [ { categoryGroup: 'allLogs', enabled: true } ]
    metrics: [ { category: 'Transaction', enabled: true } ]
  }
}

resource lock 'Microsoft.Authorization/locks@2020-05-01' = {
  name: 'do-not-delete'
  scope: account
  properties: {
    level: 'CanNotDelete'
    notes: 'Holds attachments, audit checkpoints and deletion attestations of a regulated system.'
  }
}

@description('Resource id of the storage account.')
output accountId string = account.id

@description('Name of the storage account (STORAGE_ACCOUNT_NAME of the app).')
output accountName string = account.name

@description('Blob endpoint of the account.')
output blobEndpoint string = account.properties.primaryEndpoints.blob

@description('URL of the container the Flex Consumption app package is deployed to.')
output packageContainerUrl string = '${account.properties.primaryEndpoints.blob}app-package'
