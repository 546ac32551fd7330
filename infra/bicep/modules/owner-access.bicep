// What the owner-jobs app's identity may reach besides PostgreSQL (where postprovision maps it
// to the schema owner's role): the storage account (the Functions host's AzureWebJobsStorage,
// the purge's blobs, table entities and queue messages, the retention archives), its own
// package container, and telemetry. Key Vault: only the audit signing key, granted on that one
// secret by infra/scripts/postprovision.sh once the secret exists (a Bicep role assignment on a
// secret that is made after provisioning would fail the first deployment).

@description('Required. Name of the storage account.')
param storageAccountName string

@description('Required. Name of the Application Insights component.')
param appInsightsName string

@description('Required. Object (principal) id of the owner-jobs identity.')
param ownerPrincipalId string

var roles = {
  // The host's own containers and the purge's deletes in every app container need the owner role of blob data.
  blobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  tableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  queueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
}
var monitoringMetricsPublisher = '3913510d-42f4-4e42-8a64-420c390055eb'

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: account
  name: 'default'
}

// Its own package container: two Flex Consumption apps must not share one.
resource packageContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: 'owner-package'
  properties: { publicAccess: 'None' }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource blobDataOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account.id, ownerPrincipalId, roles.blobDataOwner)
  scope: account
  properties: {
    principalId: ownerPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.blobDataOwner)
  }
}

resource tableDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account.id, ownerPrincipalId, roles.tableDataContributor)
  scope: account
  properties: {
    principalId: ownerPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.tableDataContributor)
  }
}

resource queueDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account.id, ownerPrincipalId, roles.queueDataContributor)
  scope: account
  properties: {
    principalId: ownerPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.queueDataContributor)
  }
}

resource publisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, ownerPrincipalId, monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    principalId: ownerPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisher)
  }
}

@description('URL of the container the owner-jobs app package is deployed to.')
output packageContainerUrl string = '${account.properties.primaryEndpoints.blob}owner-package'
