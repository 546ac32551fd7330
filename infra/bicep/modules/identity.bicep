// The app's user-assigned identity: storage data roles, Key Vault secrets, telemetry, and
// PostgreSQL as the app role (made by the migration step, never an Entra admin, so the
// running app never holds the rights that migrations need).

@description('Required. Azure region of the identities.')
@allowed(['uksouth', 'westeurope'])
param location string

@description('Required. Name of the app identity (also its PostgreSQL role name).')
@minLength(3)
@maxLength(128)
param appIdentityName string

@description('Optional. Tags applied to every resource.')
param tags object = {}

resource appIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: appIdentityName
  location: location
  tags: tags
}

@description('Resource id of the app identity.')
output appIdentityId string = appIdentity.id

@description('Name of the app identity.')
output appIdentityName string = appIdentity.name

@description('Client id of the app identity (AZURE_CLIENT_ID of the app).')
output appClientId string = appIdentity.properties.clientId

@description('Object (principal) id of the app identity, for role assignments.')
output appPrincipalId string = appIdentity.properties.principalId
