// PostgreSQL Flexible Server: Entra ID authentication only, private access through a
// delegated subnet and private DNS, 35 days of geo-redundant backups (point-in-time
// restore), optional zone-redundant HA, TLS required, pgaudit. checkov has no policies
// for flexibleServers: tests/test_bicep.py asserts these settings.

@description('Required. Azure region of the server.')
@allowed(['uksouth', 'westeurope'])
param location string

@description('Required. Server name (3-63 lowercase letters, digits and hyphens).')
@minLength(3)
@maxLength(63)
param serverName string

@description('Optional. Database the app uses.')
@minLength(1)
@maxLength(63)
param databaseName string = 'custos'

@description('Optional. PostgreSQL major version.')
@allowed(['15', '16'])
param version string = '16'

@description('Optional. Compute size (General Purpose or Memory Optimized; Burstable has no HA).')
@allowed(['Standard_D2ds_v5', 'Standard_D4ds_v5', 'Standard_D8ds_v5', 'Standard_E2ds_v5', 'Standard_E4ds_v5'])
param skuName string = 'Standard_D2ds_v5'

@description('Optional. Compute tier matching skuName.')
@allowed(['GeneralPurpose', 'MemoryOptimized'])
param skuTier string = 'GeneralPurpose'

@description('Optional. Storage size in GiB (grows automatically).')
@minValue(32)
@maxValue(16384)
param storageSizeGB int = 128

@description('Optional. Zone-redundant high availability (a standby in another zone, automatic failover).')
param zoneRedundantHa bool = true

@description('Optional. pgaudit classes logged (the app already records every data change in its audit chain).')
@allowed(['ddl,role', 'ddl,role,misc_set', 'ddl,role,write', 'all'])
param pgauditLog string = 'ddl,role'

@description('Required. Object id of the database owner: the Entra group (or user, or service principal) that is the server\'s Entra admin and runs migrations.')
@minLength(36)
@maxLength(36)
param ownerObjectId string

@description('Required. Display name of the database owner (its PostgreSQL role name).')
@minLength(1)
@maxLength(128)
param ownerName string

@description('Optional. Kind of the database owner principal.')
@allowed(['Group', 'User', 'ServicePrincipal'])
param ownerType string = 'Group'

@description('Required. Resource id of the subnet delegated to Microsoft.DBforPostgreSQL/flexibleServers.')
param delegatedSubnetId string

@description('Required. Resource id of the <server>.private.postgres.database.azure.com private DNS zone.')
param privateDnsZoneId string

@description('Required. Resource id of the Log Analytics workspace for diagnostic settings.')
param workspaceId string

@description('Optional. Tags applied to every resource.')
param tags object = {}

resource server 'Microsoft.DBforPostgreSQL/flexibleServers@2024-08-01' = {
  name: serverName
  location: location
  tags: tags
  sku: { name: skuName, tier: skuTier }
  properties: {
    version: version
    authConfig: {
      activeDirectoryAuth: 'Enabled'
      passwordAuth: 'Disabled'
      tenantId: tenant().tenantId
    }
    storage: {
      storageSizeGB: storageSizeGB
      autoGrow: 'Enabled'
    }
    backup: {
      backupRetentionDays: 35
      geoRedundantBackup: 'Enabled'
    }
    highAvailability: {
      mode: zoneRedundantHa ? 'ZoneRedundant' : 'Disabled'
    }
    network: {
      delegatedSubnetResourceId: delegatedSubnetId
      privateDnsZoneArmResourceId: privateDnsZoneId
      publicNetworkAccess: 'Disabled'
    }
  }
}

// The owner (a group the deploy identity and the people who may migrate belong to) is the
// Entra admin; the migration step makes the app identity's role (create-app-role) as a
// plain NOSUPERUSER NOBYPASSRLS login. The app identity is never an admin.
resource admin 'Microsoft.DBforPostgreSQL/flexibleServers/administrators@2024-08-01' = {
  parent: server
  name: ownerObjectId
  properties: {
    principalType: ownerType
    principalName: ownerName
    tenantId: tenant().tenantId
  }
}

var serverParameters = [
  { name: 'require_secure_transport', value: 'on' }
  { name: 'ssl_min_protocol_version', value: 'TLSv1.2' }
  { name: 'shared_preload_libraries', value: 'pgaudit,pg_stat_statements' }
  { name: 'azure.extensions', value: 'PGAUDIT,PG_STAT_STATEMENTS' }
  { name: 'pgaudit.log', value: pgauditLog }
  { name: 'pgaudit.log_relation', value: 'on' }
  { name: 'log_connections', value: 'on' }
  { name: 'log_disconnections', value: 'on' }
]

// One at a time: the server refuses concurrent configuration updates.
@batchSize(1)
resource configurations 'Microsoft.DBforPostgreSQL/flexibleServers/configurations@2024-08-01' = [for p in serverParameters: {
  parent: server
  name: p.name
  properties: {
    value: p.value
    source: 'user-override'
  }
  dependsOn: [ admin ]
}]

resource database 'Microsoft.DBforPostgreSQL/flexibleServers/databases@2024-08-01' = {
  parent: server
  name: databaseName
  properties: {
    charset: 'UTF8'
    collation: 'en_US.utf8'
  }
  dependsOn: [ configurations ]
}

resource diagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: server
  properties: {
    workspaceId: workspaceId
    logs: [ { categoryGroup: 'allLogs', enabled: true } ]
    metrics: [ { category: 'AllMetrics', enabled: true } ]
  }
}

resource lock 'Microsoft.Authorization/locks@2020-05-01' = {
  name: 'do-not-delete'
  scope: server
  properties: {
    level: 'CanNotDelete'
    notes: 'Holds the records and audit trail of a regulated system.'
  }
}

@description('Resource id of the server.')
output serverId string = server.id

@description('Fully qualified domain name of the server (resolves to its private address inside the network).')
output fqdn string = server.properties.fullyQualifiedDomainName

@description('Name of the app database.')
output databaseName string = database.name
