// The two user-assigned identities: the app's (runtime: storage data, Key Vault secrets,
// PostgreSQL as the app role) and the owner's (PostgreSQL Entra admin, used only by the
// migration step), so the running app never holds the rights that migrations need.

@description('Required. Azure region of the identities.')
@allowed(['uksouth', 'westeurope'])
param location string

@description('Required. Name of the app identity (also its PostgreSQL role name).')
@minLength(3)
@maxLength(128)
param appIdentityName string

@description('Required. Name of the owner identity that runs migrations (PostgreSQL Entra admin).')
@minLength(3)
@maxLength(128)
param ownerIdentityName string

@description('Optional. GitHub OIDC subject (e.g. repo:org/custos:environment:production) allowed to act as the owner identity to run migrations; empty: none.')
@maxLength(400)
param ownerFederatedSubject string = ''

@description('Optional. Tags applied to every resource.')
param tags object = {}

resource appIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: appIdentityName
  location: location
  tags: tags
}

resource ownerIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: ownerIdentityName
  location: location
  tags: tags
}

resource ownerFederation 'Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials@2023-01-31' = if (!empty(ownerFederatedSubject)) {
  parent: ownerIdentity
  name: 'github-migrate'
  properties: {
    issuer: 'https://token.actions.githubusercontent.com'
    subject: ownerFederatedSubject
    audiences: [ 'api://AzureADTokenExchange' ]
  }
}

@description('Resource id of the app identity.')
output appIdentityId string = appIdentity.id

@description('Name of the app identity.')
output appIdentityName string = appIdentity.name

@description('Client id of the app identity (AZURE_CLIENT_ID of the app).')
output appClientId string = appIdentity.properties.clientId

@description('Object (principal) id of the app identity, for role assignments.')
output appPrincipalId string = appIdentity.properties.principalId

@description('Name of the owner identity.')
output ownerIdentityName string = ownerIdentity.name

@description('Client id of the owner identity (the migration step signs in with it).')
output ownerClientId string = ownerIdentity.properties.clientId

@description('Object (principal) id of the owner identity.')
output ownerPrincipalId string = ownerIdentity.properties.principalId
