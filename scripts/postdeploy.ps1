# Subscribes the blob extension's webhook to BlobCreated events of uploads/ (azd postdeploy hook; safe to re-run).
#
# The same steps as postdeploy.sh: wait for the blobs_extension system key (it exists once the deployed code runs),
# leave an up-to-date subscription as it is, delete and create again one with another URL or filter (Event Grid
# does not let a subscription's endpoint change), retry while the webhook handshake fails (and only then: any other
# error is shown at once). The key is never printed. azd passes its environment (the outputs of infra/main.bicep,
# and AZURE_SUBSCRIPTION_ID, which azd sets itself) as variables; without azd, set them yourself. Every az call
# names that subscription: az's own default may be another one.
$ErrorActionPreference = 'Stop'

function Require([string]$Name) {
    $value = [Environment]::GetEnvironmentVariable($Name)
    if ([string]::IsNullOrEmpty($value)) { throw "postdeploy: set $Name (azd sets it)" }
    return $value
}
function OrDefault([string]$Name, [string]$Default) {
    $value = [Environment]::GetEnvironmentVariable($Name)
    if ([string]::IsNullOrEmpty($value)) { return $Default } else { return $value }
}

if (-not (Get-Command az -ErrorAction SilentlyContinue)) {
    throw 'postdeploy: the Azure CLI (az) is needed: https://learn.microsoft.com/cli/azure/install-azure-cli'
}

$sub = Require 'AZURE_SUBSCRIPTION_ID'
$rg = Require 'AZURE_RESOURCE_GROUP'
$app = Require 'AZURE_FUNCTION_APP_NAME'
$topic = Require 'EVENTGRID_SYSTEM_TOPIC'
$function = OrDefault 'UPLOADS_FUNCTION' 'import_on_upload'
$container = OrDefault 'UPLOADS_CONTAINER' 'uploads'
# Event Grid subscription names take 3-64 letters, digits and hyphens: the function's name, hyphenated
# (https://learn.microsoft.com/azure/event-grid/subscription-creation-schema).
$subscription = OrDefault 'EVENTGRID_SUBSCRIPTION' ("uploads-to-" + ($function -replace '_', '-'))
$waitSeconds = [int](OrDefault 'POSTDEPLOY_WAIT_SECONDS' '600')
$retrySeconds = [int](OrDefault 'POSTDEPLOY_RETRY_SECONDS' '20')
$eventType = 'Microsoft.Storage.BlobCreated'
$subject = "/blobServices/default/containers/$container/"

if ($subscription -cnotmatch '^[A-Za-z0-9-]{3,64}$') {
    throw "postdeploy: '$subscription' is not a valid Event Grid subscription name (3-64 letters, digits, hyphens)."
}

$hostName = az functionapp show --subscription $sub -g $rg -n $app --query defaultHostName -o tsv
if ($LASTEXITCODE -ne 0) { throw "postdeploy: cannot read the function app $app in $rg" }
$deadline = (Get-Date).AddSeconds($waitSeconds)

# The host creates the blobs_extension key when it starts with an Event Grid blob trigger: wake it and wait.
$key = ''
while ($true) {
    $key = az functionapp keys list --subscription $sub -g $rg -n $app --query systemKeys.blobs_extension -o tsv 2>$null
    if (-not [string]::IsNullOrEmpty($key)) { break }
    if ((Get-Date) -ge $deadline) {
        throw ("postdeploy: no blobs_extension key on $app after ${waitSeconds}s. Is $function indexed with source " +
            'EventGrid (app setting UPLOADS_TRIGGER_SOURCE=EventGrid)? See docs/deploy.md, Troubleshooting.')
    }
    Write-Host 'postdeploy: waiting for the app to start and create its blobs_extension key...'
    try { Invoke-WebRequest -Uri "https://$hostName/api/health" -TimeoutSec 30 -UseBasicParsing | Out-Null } catch { }
    Start-Sleep -Seconds 15
}

$url = "https://$hostName/runtime/webhooks/blobs?functionName=Host.Functions.$function&code=$key"
$wanted = "$url|$subject|$eventType|EventGridSchema"

$exists = az eventgrid system-topic event-subscription list --subscription $sub -g $rg --system-topic-name $topic `
    --query "[?name=='$subscription'].name" -o tsv
if (-not [string]::IsNullOrEmpty($exists)) {
    $current = az eventgrid system-topic event-subscription show --subscription $sub -g $rg --system-topic-name $topic `
        -n $subscription --include-full-endpoint-url true `
        --query "join('|', [destination.endpointUrl, filter.subjectBeginsWith, join(',', filter.includedEventTypes), eventDeliverySchema])" `
        -o tsv 2>$null
    if ($current -eq $wanted) {
        Write-Host "postdeploy: Event Grid subscription $subscription is up to date; left as it is."
        exit 0
    }
    Write-Host "postdeploy: $subscription has another endpoint or filter: deleting it to create it again."
    az eventgrid system-topic event-subscription delete --subscription $sub -g $rg --system-topic-name $topic -n $subscription --yes | Out-Null
    if ($LASTEXITCODE -ne 0) { throw "postdeploy: could not delete $subscription" }
}

# Event Grid validates the webhook while creating: a host still starting fails that handshake ("Webhook validation
# handshake failed", "The attempt to validate the provided endpoint ... failed", https://aka.ms/esvalidation), which
# heals once the host answers, so that error alone is retried; any other error will not heal and is shown at once
# (https://learn.microsoft.com/azure/event-grid/end-point-validation-event-grid-events-schema).
# The URL goes through a file (@file): PowerShell would otherwise mangle the '&' when it calls az.
$endpointFile = New-TemporaryFile
try {
    Set-Content -Path $endpointFile -Value $url -NoNewline
    while ($true) {
        $errors = az eventgrid system-topic event-subscription create --subscription $sub -g $rg `
            --system-topic-name $topic -n $subscription `
            --endpoint-type webhook --endpoint "@$endpointFile" `
            --included-event-types $eventType --subject-begins-with $subject `
            --event-delivery-schema eventgridschema --max-delivery-attempts 30 --event-ttl 1440 `
            --query provisioningState -o tsv 2>&1
        if ($LASTEXITCODE -eq 0) { break }
        $masked = ($errors | Out-String) -replace 'code=[^&" ]*', 'code=***'
        if ($masked -notmatch 'validation handshake|attempt to validate|esvalidation') {
            throw "postdeploy: could not create $subscription (key masked): $masked"
        }
        if ((Get-Date) -ge $deadline) {
            throw "postdeploy: the webhook still fails Event Grid's validation after ${waitSeconds}s. The last error (key masked): $masked"
        }
        Write-Host "postdeploy: the webhook did not answer Event Grid's validation yet; retrying..."
        Start-Sleep -Seconds $retrySeconds
    }
}
finally {
    Remove-Item -Path $endpointFile -ErrorAction SilentlyContinue
}
Write-Host "postdeploy: created ${subscription}: $eventType under $subject -> https://$hostName/runtime/webhooks/blobs (code=***)."
