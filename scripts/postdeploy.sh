#!/bin/sh
# Subscribes the blob extension's webhook to BlobCreated events of uploads/ (azd postdeploy hook; safe to re-run).
#
# The webhook URL carries the blobs_extension system key, which exists only once the deployed code is running, so
# this runs after `azd deploy`, not in Bicep. An up-to-date subscription is left as it is; one with another URL
# (a rotated key, a new host name) or another filter is deleted and created again, since Event Grid does not let
# a subscription's endpoint change. The key is never printed.
#
# azd passes its environment (the outputs of infra/main.bicep, and AZURE_SUBSCRIPTION_ID, which azd sets itself) as
# variables. Without azd, export them yourself:
#   AZURE_SUBSCRIPTION_ID=$(az account show --query id -o tsv) AZURE_RESOURCE_GROUP=rg-x \
#   AZURE_FUNCTION_APP_NAME=func-x EVENTGRID_SYSTEM_TOPIC=evgt-x ./scripts/postdeploy.sh
set -eu

# Every az call names azd's subscription: az's own default subscription may be another one
# (https://learn.microsoft.com/azure/developer/azure-developer-cli/manage-environment-variables).
SUB=${AZURE_SUBSCRIPTION_ID:?set AZURE_SUBSCRIPTION_ID (azd sets it)}
RG=${AZURE_RESOURCE_GROUP:?set AZURE_RESOURCE_GROUP (azd sets it)}
APP=${AZURE_FUNCTION_APP_NAME:?set AZURE_FUNCTION_APP_NAME (azd sets it)}
TOPIC=${EVENTGRID_SYSTEM_TOPIC:?set EVENTGRID_SYSTEM_TOPIC (azd sets it)}
FUNCTION=${UPLOADS_FUNCTION:-import_on_upload}
CONTAINER=${UPLOADS_CONTAINER:-uploads}
# Event Grid subscription names take 3-64 letters, digits and hyphens: the function's name, hyphenated
# (https://learn.microsoft.com/azure/event-grid/subscription-creation-schema).
SUBSCRIPTION=${EVENTGRID_SUBSCRIPTION:-uploads-to-$(printf '%s' "$FUNCTION" | tr '_' '-')}
WAIT_SECONDS=${POSTDEPLOY_WAIT_SECONDS:-600}
EVENT_TYPE=Microsoft.Storage.BlobCreated
SUBJECT=/blobServices/default/containers/$CONTAINER/

if ! printf '%s' "$SUBSCRIPTION" | grep -Eq '^[A-Za-z0-9-]{3,64}$'; then
    echo "postdeploy: '$SUBSCRIPTION' is not a valid Event Grid subscription name (3-64 letters, digits, hyphens)." >&2
    exit 1
fi
if ! command -v az >/dev/null 2>&1; then
    echo "postdeploy: the Azure CLI (az) is needed: https://learn.microsoft.com/cli/azure/install-azure-cli" >&2
    exit 1
fi

host=$(az functionapp show --subscription "$SUB" -g "$RG" -n "$APP" --query defaultHostName -o tsv)
deadline=$(($(date +%s) + WAIT_SECONDS))

# The host creates the blobs_extension key when it starts with an Event Grid blob trigger: wake it and wait.
key=""
while :; do
    key=$(az functionapp keys list --subscription "$SUB" -g "$RG" -n "$APP" --query systemKeys.blobs_extension -o tsv 2>/dev/null || true)
    [ -n "$key" ] && break
    if [ "$(date +%s)" -ge "$deadline" ]; then
        echo "postdeploy: no blobs_extension key on $APP after ${WAIT_SECONDS}s. Is $FUNCTION indexed with" >&2
        echo "  source EventGrid (app setting UPLOADS_TRIGGER_SOURCE=EventGrid)? See docs/deploy.md, Troubleshooting." >&2
        exit 1
    fi
    echo "postdeploy: waiting for the app to start and create its blobs_extension key..."
    if command -v curl >/dev/null 2>&1; then
        curl -s -o /dev/null --max-time 30 "https://$host/api/health" || true
    fi
    sleep 15
done

url="https://$host/runtime/webhooks/blobs?functionName=Host.Functions.$FUNCTION&code=$key"
wanted="$url|$SUBJECT|$EVENT_TYPE|EventGridSchema"

exists=$(az eventgrid system-topic event-subscription list --subscription "$SUB" -g "$RG" --system-topic-name "$TOPIC" \
    --query "[?name=='$SUBSCRIPTION'].name" -o tsv)
if [ -n "$exists" ]; then
    current=$(az eventgrid system-topic event-subscription show --subscription "$SUB" -g "$RG" --system-topic-name "$TOPIC" \
        -n "$SUBSCRIPTION" --include-full-endpoint-url true \
        --query "join('|', [destination.endpointUrl, filter.subjectBeginsWith, join(',', filter.includedEventTypes), eventDeliverySchema])" \
        -o tsv 2>/dev/null || true)
    if [ "$current" = "$wanted" ]; then
        echo "postdeploy: Event Grid subscription $SUBSCRIPTION is up to date; left as it is."
        exit 0
    fi
    echo "postdeploy: $SUBSCRIPTION has another endpoint or filter: deleting it to create it again."
    az eventgrid system-topic event-subscription delete --subscription "$SUB" -g "$RG" --system-topic-name "$TOPIC" -n "$SUBSCRIPTION" \
        --yes >/dev/null
fi

# Event Grid validates the webhook while creating: a host still starting fails that handshake ("Webhook validation
# handshake failed", "The attempt to validate the provided endpoint ... failed", https://aka.ms/esvalidation), which
# heals once the host answers, so that error alone is retried. Any other error (a name, a role, a quota) will not heal:
# it is shown at once.
# (https://learn.microsoft.com/azure/event-grid/end-point-validation-event-grid-events-schema).
errors=$(mktemp)
trap 'rm -f "$errors"' EXIT
while :; do
    if az eventgrid system-topic event-subscription create --subscription "$SUB" -g "$RG" --system-topic-name "$TOPIC" \
        -n "$SUBSCRIPTION" --endpoint-type webhook --endpoint "$url" \
        --included-event-types "$EVENT_TYPE" --subject-begins-with "$SUBJECT" \
        --event-delivery-schema eventgridschema --max-delivery-attempts 30 --event-ttl 1440 \
        --query provisioningState -o tsv >/dev/null 2>"$errors"; then
        break
    fi
    if ! grep -Eqi 'validation handshake|attempt to validate|esvalidation' "$errors"; then
        echo "postdeploy: could not create $SUBSCRIPTION (key masked):" >&2
        sed 's/code=[^&" ]*/code=***/g' "$errors" >&2
        exit 1
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
        echo "postdeploy: the webhook still fails Event Grid's validation after ${WAIT_SECONDS}s. The last error (key masked):" >&2
        sed 's/code=[^&" ]*/code=***/g' "$errors" >&2
        exit 1
    fi
    echo "postdeploy: the webhook did not answer Event Grid's validation yet; retrying..."
    sleep "${POSTDEPLOY_RETRY_SECONDS:-20}"
done
echo "postdeploy: created $SUBSCRIPTION: $EVENT_TYPE under $SUBJECT -> https://$host/runtime/webhooks/blobs (code=***)."
