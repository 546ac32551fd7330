// Virtual network with three subnets (Function App outbound integration, private
// endpoints, PostgreSQL), a network security group on each, and the private DNS zones
// through which the app reaches Storage, Key Vault and PostgreSQL on private addresses.

@description('Required. Azure region of the network.')
@allowed(['uksouth', 'westeurope'])
param location string

@description('Required. Name of the virtual network.')
@minLength(2)
@maxLength(64)
param vnetName string

@description('Required. Name of the PostgreSQL server (its private DNS zone is named after it).')
@minLength(3)
@maxLength(63)
param postgresServerName string

@description('Optional. Address space of the virtual network.')
@minLength(9)
@maxLength(18)
param addressPrefix string = '10.40.0.0/16'

@description('Optional. Prefix of the Function App integration subnet (a /27 or larger, inside addressPrefix).')
@minLength(9)
@maxLength(18)
param appSubnetPrefix string = '10.40.1.0/24'

@description('Optional. Prefix of the private endpoint subnet (inside addressPrefix).')
@minLength(9)
@maxLength(18)
param privateEndpointSubnetPrefix string = '10.40.2.0/24'

@description('Optional. Prefix of the PostgreSQL delegated subnet (inside addressPrefix).')
@minLength(9)
@maxLength(18)
param postgresSubnetPrefix string = '10.40.3.0/24'

@description('Required. Resource id of the Log Analytics workspace for diagnostic settings.')
param workspaceId string

@description('Optional. Tags applied to every resource.')
param tags object = {}

var subnets = [
  {
    name: 'snet-app'
    prefix: appSubnetPrefix
    // Flex Consumption integrates through a subnet delegated to Microsoft.App/environments.
    delegation: 'Microsoft.App/environments'
  }
  {
    name: 'snet-private-endpoints'
    prefix: privateEndpointSubnetPrefix
    delegation: ''
  }
  {
    name: 'snet-postgres'
    prefix: postgresSubnetPrefix
    delegation: 'Microsoft.DBforPostgreSQL/flexibleServers'
  }
]

var privateDnsZoneNames = [
  'privatelink.blob.${environment().suffixes.storage}'
  'privatelink.table.${environment().suffixes.storage}'
  'privatelink.queue.${environment().suffixes.storage}'
  'privatelink.vaultcore.azure.net'
  '${postgresServerName}.private.postgres.database.azure.com'
]

resource nsgs 'Microsoft.Network/networkSecurityGroups@2024-05-01' = [for subnet in subnets: {
  name: 'nsg-${vnetName}-${subnet.name}'
  location: location
  tags: tags
  properties: {
    securityRules: [
      {
        name: 'deny-internet-inbound'
        properties: {
          priority: 4096
          direction: 'Inbound'
          access: 'Deny'
          protocol: '*'
          sourceAddressPrefix: 'Internet'
          sourcePortRange: '*'
          destinationAddressPrefix: '*'
          destinationPortRange: '*'
        }
      }
    ]
  }
}]

resource vnet 'Microsoft.Network/virtualNetworks@2024-05-01' = {
  name: vnetName
  location: location
  tags: tags
  properties: {
    addressSpace: { addressPrefixes: [ addressPrefix ] }
    subnets: [for (subnet, i) in subnets: {
      name: subnet.name
      properties: {
        addressPrefix: subnet.prefix
        networkSecurityGroup: { id: nsgs[i].id }
        privateEndpointNetworkPolicies: 'Enabled'
        delegations: empty(subnet.delegation) ? [] : [
          {
            name: 'delegation'
            properties: { serviceName: subnet.delegation }
          }
        ]
      }
    }]
  }
}

resource zones 'Microsoft.Network/privateDnsZones@2024-06-01' = [for zoneName in privateDnsZoneNames: {
  name: zoneName
  location: 'global'
  tags: tags
}]

resource zoneLinks 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2024-06-01' = [for (zoneName, i) in privateDnsZoneNames: {
  parent: zones[i]
  name: 'link-${vnetName}'
  location: 'global'
  tags: tags
  properties: {
    registrationEnabled: false
    virtualNetwork: { id: vnet.id }
  }
}]

resource vnetDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: vnet
  properties: {
    workspaceId: workspaceId
    logs: [ { categoryGroup: 'allLogs', enabled: true } ]
    metrics: [ { category: 'AllMetrics', enabled: true } ]
  }
}

resource nsgDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = [for (subnet, i) in subnets: {
  name: 'to-log-analytics'
  scope: nsgs[i]
  properties: {
    workspaceId: workspaceId
    logs: [ { categoryGroup: 'allLogs', enabled: true } ]
  }
}]

@description('Resource id of the virtual network.')
output vnetId string = vnet.id

@description('Resource id of the subnet the Function App integrates with.')
output appSubnetId string = vnet.properties.subnets[0].id

@description('Resource id of the subnet that holds the private endpoints.')
output privateEndpointSubnetId string = vnet.properties.subnets[1].id

@description('Resource id of the subnet delegated to PostgreSQL Flexible Server.')
output postgresSubnetId string = vnet.properties.subnets[2].id

@description('Resource ids of the private DNS zones: blob, table, queue, vault, postgres.')
output privateDnsZoneIds object = {
  blob: zones[0].id
  table: zones[1].id
  queue: zones[2].id
  vault: zones[3].id
  postgres: zones[4].id
}
