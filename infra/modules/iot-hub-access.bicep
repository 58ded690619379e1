// One existing IoT hub, in its own resource group: the app identity may run registry jobs on it, and the hub's
// system-assigned identity (needed for identityBased import/export) is handed back for its storage role.
targetScope = 'resourceGroup'

@description('Name of the existing IoT hub.')
param hubName string

@description('Principal (object) id of the app identity.')
param appPrincipalId string

@description('Resource id of the app identity (seeds the role assignment name).')
param appIdentityId string

// IoT Hub Data Contributor: the app creates, follows and cancels import/export jobs (jobs/*), reads registry
// statistics and updates devices in bulk (devices/*). IoT Hub Registry Contributor grants devices/* only.
var iotHubDataContributor = '4fc6c259-987e-4a07-842e-c321cc9d413f'

resource hub 'Microsoft.Devices/IotHubs@2023-06-30' existing = {
  name: hubName
}

resource appOnHub 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(hub.id, appIdentityId, iotHubDataContributor)
  scope: hub
  properties: {
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', iotHubDataContributor)
  }
}

// A hub without a system-assigned identity fails the deployment here, in the deployment named after the hub
// (docs/deploy.md: az iot hub identity assign --system-assigned).
output hubPrincipalId string = hub.identity.principalId
output hostName string = hub.properties.hostName
