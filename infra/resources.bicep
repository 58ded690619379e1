// Everything the app runs on, in one resource group: `azd up` deploys it through main.bicep, and without azd
// `az deployment group create --template-file infra/resources.bicep` deploys it alone (docs/deploy.md).
// No secret goes in or out: every connection is the app's user-assigned managed identity.
targetScope = 'resourceGroup'

@description('A short name for this deployment (azd environment name); it seeds the unique resource names.')
@minLength(1)
@maxLength(64)
param environmentName string

@description('Region of every resource (Flex Consumption must be available there).')
param location string = resourceGroup().location

@description('The IoT hubs the app runs jobs on (existing, not created): [{"name": "contoso-prod", "resourceGroup": "rg-iot"}]; optional "subscriptionId" and "hostName" (default <name>.azure-devices.net). The first is the default hub for uploads.')
@minLength(1)
param iotHubs array

@description('Optional: the IoT Central app whose data export is backed up and applied (https://<app>.azureiotcentral.com); empty turns the feature off. Add the app identity as a user of that app yourself (docs/deploy.md).')
param iotCentralAppUrl string = ''

@description('NCRONTAB schedule of the nightly backup (UTC).')
param backupSchedule string = '0 0 2 * * *'

@description('NCRONTAB schedule of the job monitor.')
param monitorSchedule string = '*/30 * * * * *'

@description('More app settings, [{"name": ..., "value": ...}], for the optional ones the template leaves at their defaults (docs/deploy.md lists them). Never a secret: use a Key Vault reference.')
param extraAppSettings array = []

@description('Optional: object id of a user or group who may upload device files (Blob Data Contributor on uploads/) and read everything else (Blob Data Reader). azd passes the signed-in user.')
param operatorPrincipalId string = ''

@description('Replication of the data account (uploads, reports, archive, backups, the ledger).')
@allowed(['Standard_LRS', 'Standard_ZRS', 'Standard_GRS', 'Standard_RAGRS', 'Standard_GZRS', 'Standard_RAGZRS'])
param dataStorageSku string = 'Standard_GRS'

@description('Most instances the app scales out to.')
param maximumInstanceCount int = 40

@description('Memory of one instance (MB): 2048 or 4096 (large uploads are streamed; 2048 is enough).')
@allowed([512, 2048, 4096])
param instanceMemoryMB int = 2048

param tags object = {}

var token = toLower(uniqueString(subscription().id, resourceGroup().id, environmentName))
var allTags = union(tags, { 'azd-env-name': environmentName })
var appName = 'func-${token}'
var deploymentContainer = 'deployment-package'
// The containers and the ledger table the code uses (shared/config.py Containers, Settings.ledger_table).
var dataContainers = ['uploads', 'archive', 'reports', 'backups']
var ledgerTable = 'jobledger'
// The blob trigger's poison queue lives on the trigger's own account (DEVICE_STORAGE).
var poisonQueue = 'webjobs-blobtrigger-poison'
var uploadsFunction = 'import_on_upload'
// Event Grid event subscription names take 3-64 letters, digits and hyphens, no underscore
// (https://learn.microsoft.com/azure/event-grid/subscription-creation-schema): the function's name, hyphenated.
var uploadsSubscription = 'uploads-to-${replace(uploadsFunction, '_', '-')}'

// Built-in role definition ids: https://learn.microsoft.com/azure/role-based-access-control/built-in-roles
var roles = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageBlobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
  storageBlobDataReader: '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  storageAccountContributor: '17d1049b-9a84-46fb-8f53-869881c3d3ab'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
}

// ---------------------------------------------------------------------------------------------------------------
// The one identity of the app: every connection (host storage, data storage, IoT Hub, IoT Central, telemetry).
resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-${token}'
  location: location
  tags: allTags
}

// ---------------------------------------------------------------------------------------------------------------
// Host storage: AzureWebJobsStorage (keys, timers, blob receipts, locks) and the deployment package. No device data.
resource hostStorage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: 'sthost${token}'
  location: location
  tags: allTags
  kind: 'StorageV2'
  // checkov:skip=CKV_AZURE_43: 'sthost' + uniqueString (13 lowercase alphanumerics) is a valid 19-character name
  sku: {
    name: 'Standard_LRS'
  }
  // checkov:skip=CKV_AZURE_206: host state (keys, receipts, timer status, the package) is rebuilt by a deploy
  // checkov:skip=CKV_AZURE_35: Flex Consumption without VNet integration reaches storage on its public endpoint
  // checkov:skip=CKV_AZURE_59: as above; shared keys are off, so the endpoint takes Entra ID tokens only
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    isLocalUserEnabled: false
    isSftpEnabled: false
    minimumTlsVersion: 'TLS1_2'
    publicNetworkAccess: 'Enabled'
    supportsHttpsTrafficOnly: true
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource hostBlobs 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: hostStorage
  name: 'default'
}

resource packageContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: hostBlobs
  name: deploymentContainer
  properties: {
    publicAccess: 'None'
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Data storage: DEVICE_STORAGE (uploads, archive, reports, backups, the ledger, the trigger's queues).
resource dataStorage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: 'stdata${token}'
  location: location
  tags: allTags
  kind: 'StorageV2'
  // checkov:skip=CKV_AZURE_43: 'stdata' + uniqueString (13 lowercase alphanumerics) is a valid 19-character name
  sku: {
    name: dataStorageSku
  }
  // checkov:skip=CKV_AZURE_35: the app (no VNet) and IoT Hub jobs reach it on its public endpoint, Entra ID only
  // checkov:skip=CKV_AZURE_59: as above; shared keys are off, so no key or account SAS can open it
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    isLocalUserEnabled: false
    isSftpEnabled: false
    minimumTlsVersion: 'TLS1_2'
    publicNetworkAccess: 'Enabled'
    supportsHttpsTrafficOnly: true
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource dataBlobs 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: dataStorage
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource containers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = [
  for name in dataContainers: {
    parent: dataBlobs
    name: name
    properties: {
      publicAccess: 'None'
    }
  }
]

resource dataTables 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: dataStorage
  name: 'default'
}

resource ledger 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = {
  parent: dataTables
  name: ledgerTable
}

resource dataQueues 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: dataStorage
  name: 'default'
}

resource poison 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: dataQueues
  name: poisonQueue
}

// ---------------------------------------------------------------------------------------------------------------
// Telemetry: Application Insights that takes Entra ID tokens only (no instrumentation-key ingestion).
resource logs 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: 'log-${token}'
  location: location
  tags: allTags
  properties: {
    retentionInDays: 30
    sku: {
      name: 'PerGB2018'
    }
  }
}

resource insights 'Microsoft.Insights/components@2020-02-02' = {
  name: 'appi-${token}'
  location: location
  tags: allTags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    DisableLocalAuth: true
    WorkspaceResourceId: logs.id
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The app: Flex Consumption, Python 3.11, code from the package container, read with the identity.
resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: 'plan-${token}'
  location: location
  tags: allTags
  kind: 'functionapp'
  // checkov:skip=CKV_AZURE_225: Flex zone redundancy exists in some regions only and needs ZRS host storage
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

var hubKeys = [for hub in iotHubs: toLower(hub.name)]
var hubSettings = [
  for hub in iotHubs: {
    name: 'IOTHUB_${toUpper(replace(hub.name, '-', '_'))}_HOSTNAME'
    value: contains(hub, 'hostName') ? hub.hostName : '${toLower(hub.name)}.azure-devices.net'
  }
]
var centralSettings = empty(iotCentralAppUrl) ? [] : [
  {
    name: 'IOTCENTRAL_APP_URL'
    value: iotCentralAppUrl
  }
]
var baseSettings = [
  // Host storage with the identity: __credential and __clientId together (the runtime ignores __clientId alone)
  { name: 'AzureWebJobsStorage__credential', value: 'managedidentity' }
  { name: 'AzureWebJobsStorage__clientId', value: identity.properties.clientId }
  { name: 'AzureWebJobsStorage__blobServiceUri', value: hostStorage.properties.primaryEndpoints.blob }
  { name: 'AzureWebJobsStorage__queueServiceUri', value: hostStorage.properties.primaryEndpoints.queue }
  { name: 'AzureWebJobsStorage__tableServiceUri', value: hostStorage.properties.primaryEndpoints.table }
  // The trigger's connection: a blob trigger needs the queue endpoint beside the blob one; tables hold the ledger
  { name: 'DEVICE_STORAGE__credential', value: 'managedidentity' }
  { name: 'DEVICE_STORAGE__clientId', value: identity.properties.clientId }
  { name: 'DEVICE_STORAGE__blobServiceUri', value: dataStorage.properties.primaryEndpoints.blob }
  { name: 'DEVICE_STORAGE__queueServiceUri', value: dataStorage.properties.primaryEndpoints.queue }
  { name: 'DEVICE_STORAGE__tableServiceUri', value: dataStorage.properties.primaryEndpoints.table }
  // DefaultAzureCredential (IoT Hub, IoT Central) picks the user-assigned identity by this client id
  { name: 'AZURE_CLIENT_ID', value: identity.properties.clientId }
  { name: 'APPLICATIONINSIGHTS_CONNECTION_STRING', value: insights.properties.ConnectionString }
  { name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING', value: 'ClientId=${identity.properties.clientId};Authorization=AAD' }
  { name: 'UPLOADS_TRIGGER_SOURCE', value: 'EventGrid' }
  { name: 'BACKUP_SCHEDULE', value: backupSchedule }
  { name: 'MONITOR_SCHEDULE', value: monitorSchedule }
  { name: 'IOTHUB_HUBS', value: join(hubKeys, ',') }
  { name: 'IOTHUB_STORAGE_AUTH', value: 'identityBased' }
]

resource app 'Microsoft.Web/sites@2024-04-01' = {
  name: appName
  location: location
  tags: union(allTags, { 'azd-service-name': 'app' })
  kind: 'functionapp,linux'
  // checkov:skip=CKV_AZURE_222: Event Grid and the HTTP API's callers reach the app on its public endpoint
  // checkov:skip=CKV_AZURE_17: client certificates would refuse Event Grid; callers present function keys
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
    }
  }
  // checkov:skip=CKV_AZURE_212: serverless by design: scales from zero, Event Grid and timers wake it
  // checkov:skip=CKV_AZURE_213: App Service health check exists on Dedicated and Premium plans, not Flex
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    publicNetworkAccess: 'Enabled'
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      appSettings: concat(baseSettings, hubSettings, centralSettings, extraAppSettings)
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${hostStorage.properties.primaryEndpoints.blob}${deploymentContainer}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identity.id
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
  dependsOn: [
    hostBlobRole
    hostQueueRole
    hostTableRole
    hostAccountRole
    dataBlobRole
    dataQueueRole
    dataTableRole
    insightsRole
  ]
}

// Deploys go through Entra ID (azd, az functionapp deployment); no FTP or basic-auth SCM publishing.
resource ftp 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: app
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scm 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: app
  name: 'scm'
  properties: {
    allow: false
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Event Grid: the system topic of the data account. The subscription to the blob extension's webhook is created
// after the code is deployed, when its blobs_extension key exists (scripts/postdeploy.sh, azure.yaml).
resource uploadsTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' = {
  name: 'evgt-${token}'
  location: location
  tags: allTags
  properties: {
    source: dataStorage.id
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Roles of the app identity, exactly what Microsoft's docs list (docs/deploy.md explains each).
// AzureWebJobsStorage with a blob trigger: Blob Data Owner, Queue Data Contributor, Storage Account Contributor;
// tables for the host's diagnostic events.
resource hostBlobRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(hostStorage.id, identity.id, roles.storageBlobDataOwner)
  scope: hostStorage
  properties: {
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataOwner)
  }
}

resource hostQueueRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(hostStorage.id, identity.id, roles.storageQueueDataContributor)
  scope: hostStorage
  properties: {
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataContributor)
  }
}

resource hostTableRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(hostStorage.id, identity.id, roles.storageTableDataContributor)
  scope: hostStorage
  properties: {
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageTableDataContributor)
  }
}

resource hostAccountRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(hostStorage.id, identity.id, roles.storageAccountContributor)
  scope: hostStorage
  properties: {
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageAccountContributor)
  }
}

// DEVICE_STORAGE, the trigger's connection: Blob Data Owner and Queue Data Contributor; Table Data Contributor
// for the ledger. Blob Data Owner also lets the app sign user delegation SAS (read links in the HTTP API).
resource dataBlobRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(dataStorage.id, identity.id, roles.storageBlobDataOwner)
  scope: dataStorage
  properties: {
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataOwner)
  }
}

resource dataQueueRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(dataStorage.id, identity.id, roles.storageQueueDataContributor)
  scope: dataStorage
  properties: {
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataContributor)
  }
}

resource dataTableRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(dataStorage.id, identity.id, roles.storageTableDataContributor)
  scope: dataStorage
  properties: {
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageTableDataContributor)
  }
}

// Telemetry with Entra ID: the identity publishes to Application Insights.
resource insightsRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(insights.id, identity.id, roles.monitoringMetricsPublisher)
  scope: insights
  properties: {
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Each hub: the app identity gets IoT Hub Data Contributor on it (module, in the hub's resource group), and the
// hub's own system-assigned identity gets Blob Data Contributor on the data account for identityBased jobs,
// limited by a condition to the per-job work containers (job-<id>) the app hands the hub.
module hubAccess 'modules/iot-hub-access.bicep' = [
  for hub in iotHubs: {
    name: 'hub-access-${toLower(hub.name)}'
    scope: resourceGroup(contains(hub, 'subscriptionId') ? hub.subscriptionId : subscription().subscriptionId, hub.resourceGroup)
    params: {
      hubName: hub.name
      appPrincipalId: identity.properties.principalId
      appIdentityId: identity.id
    }
  }
]

var workContainerCondition = '((!(ActionMatches{\'Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read\'}) AND !(ActionMatches{\'Microsoft.Storage/storageAccounts/blobServices/containers/blobs/write\'}) AND !(ActionMatches{\'Microsoft.Storage/storageAccounts/blobServices/containers/blobs/delete\'}) AND !(ActionMatches{\'Microsoft.Storage/storageAccounts/blobServices/containers/blobs/add/action\'}) AND !(ActionMatches{\'Microsoft.Storage/storageAccounts/blobServices/containers/blobs/move/action\'})) OR (@Resource[Microsoft.Storage/storageAccounts/blobServices/containers:name] StringStartsWith \'job-\'))'

resource hubDataRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for (hub, i) in iotHubs: {
    name: guid(dataStorage.id, toLower(hub.name), hub.resourceGroup, roles.storageBlobDataContributor)
    scope: dataStorage
    properties: {
      principalId: hubAccess[i].outputs.hubPrincipalId
      principalType: 'ServicePrincipal'
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
      condition: workContainerCondition
      conditionVersion: '2.0'
    }
  }
]

// ---------------------------------------------------------------------------------------------------------------
// An operator (optional): uploads device files, reads reports, archive and backups; nothing else.
resource operatorUploads 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(operatorPrincipalId)) {
  name: guid(dataStorage.id, operatorPrincipalId, 'uploads', roles.storageBlobDataContributor)
  scope: containers[0]
  properties: {
    principalId: operatorPrincipalId
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
  }
}

resource operatorRead 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(operatorPrincipalId)) {
  name: guid(dataStorage.id, operatorPrincipalId, roles.storageBlobDataReader)
  scope: dataStorage
  properties: {
    principalId: operatorPrincipalId
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataReader)
  }
}

// Names only: no key, connection string or token is ever an output.
output AZURE_FUNCTION_APP_NAME string = app.name
output FUNCTION_APP_HOSTNAME string = app.properties.defaultHostName
output AZURE_CLIENT_ID string = identity.properties.clientId
output DATA_STORAGE_ACCOUNT string = dataStorage.name
output HOST_STORAGE_ACCOUNT string = hostStorage.name
output UPLOADS_CONTAINER string = dataContainers[0]
output UPLOADS_FUNCTION string = uploadsFunction
output EVENTGRID_SYSTEM_TOPIC string = uploadsTopic.name
output EVENTGRID_SUBSCRIPTION string = uploadsSubscription
output APPLICATIONINSIGHTS_NAME string = insights.name
