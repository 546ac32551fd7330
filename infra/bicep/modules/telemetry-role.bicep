// Monitoring Metrics Publisher on the Application Insights component only: with local
// auth off, the app's telemetry is accepted only with an Entra token of this identity.

@description('Required. Name of the Application Insights component.')
@minLength(1)
@maxLength(260)
param appInsightsName string

@description('Required. Principal id of the app identity.')
param appPrincipalId string

var monitoringMetricsPublisher = '3913510d-42f4-4e42-8a64-420c390055eb'

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource publisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, appPrincipalId, monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisher)
  }
}

@description('Resource id of the role assignment.')
output roleAssignmentId string = publisher.id
