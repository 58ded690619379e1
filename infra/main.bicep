// azd entry point (`azd up`): creates the resource group and deploys resources.bicep into it.
// Without azd, deploy resources.bicep into a resource group of your own (docs/deploy.md).
targetScope = 'subscription'

@description('Name of the azd environment; it names the resource group and seeds the unique resource names.')
@minLength(1)
@maxLength(64)
param environmentName string

@description('Region of every resource.')
@minLength(1)
param location string

@description('Resource group to create (default rg-<environment name>).')
param resourceGroupName string = ''

@description('Comma-separated names of the existing IoT hubs the app runs jobs on (azd env set IOT_HUB_NAMES hub1,hub2).')
@minLength(1)
param iotHubNames string

@description('Resource group of those hubs (azd env set IOT_HUB_RESOURCE_GROUP rg-iot).')
@minLength(1)
param iotHubResourceGroup string

@description('Optional: URL of the IoT Central app whose data export is managed (azd env set IOTCENTRAL_APP_URL ...).')
param iotCentralAppUrl string = ''

@description('Optional: object id of the user who may upload device files (azd passes the signed-in user).')
param principalId string = ''

@description('Optional app settings the template leaves at their defaults, as a JSON object of names and values (azd env set APP_SETTINGS \'{"BACKUP_RETENTION_DAYS": "90"}\'). Kept in the azd environment, so every azd provision sets them again; one set by hand in the portal or with az is deleted by the next provision. Never a secret: use a Key Vault reference.')
param appSettings string = ''

var hubNames = split(replace(iotHubNames, ' ', ''), ',')
// App settings on a site are replaced as a whole by each deployment: what the template does not name is deleted.
var extraAppSettings = [for setting in items(empty(appSettings) ? {} : json(appSettings)): {
  name: setting.key
  value: string(setting.value)
}]
var iotHubs = [
  for name in hubNames: {
    name: name
    resourceGroup: iotHubResourceGroup
  }
]

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: empty(resourceGroupName) ? 'rg-${environmentName}' : resourceGroupName
  location: location
  tags: {
    'azd-env-name': environmentName
  }
}

module resources 'resources.bicep' = {
  name: 'iot-registry-jobs'
  scope: rg
  params: {
    environmentName: environmentName
    location: location
    iotHubs: iotHubs
    iotCentralAppUrl: iotCentralAppUrl
    operatorPrincipalId: principalId
    extraAppSettings: extraAppSettings
  }
}

// Read by the postdeploy hook (scripts/postdeploy.*) through azd's environment. Names only, never a secret.
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = resources.outputs.AZURE_FUNCTION_APP_NAME
output FUNCTION_APP_HOSTNAME string = resources.outputs.FUNCTION_APP_HOSTNAME
output AZURE_CLIENT_ID string = resources.outputs.AZURE_CLIENT_ID
output DATA_STORAGE_ACCOUNT string = resources.outputs.DATA_STORAGE_ACCOUNT
output HOST_STORAGE_ACCOUNT string = resources.outputs.HOST_STORAGE_ACCOUNT
output UPLOADS_CONTAINER string = resources.outputs.UPLOADS_CONTAINER
output UPLOADS_FUNCTION string = resources.outputs.UPLOADS_FUNCTION
output EVENTGRID_SYSTEM_TOPIC string = resources.outputs.EVENTGRID_SYSTEM_TOPIC
output EVENTGRID_SUBSCRIPTION string = resources.outputs.EVENTGRID_SUBSCRIPTION
