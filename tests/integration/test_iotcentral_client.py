"""The IoT Central client against the emulator: every operation and destination type, checked against the
published spec's schemas and examples, typed errors, paging, retries and auth."""

from __future__ import annotations

import base64
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AccessToken

from emulators.iotcentral import IoTCentralEmulator
from shared.iotcentral import (
    DESTINATIONS,
    EXPORTS,
    IoTCentralAuthError,
    IoTCentralClient,
    IoTCentralNotFound,
    IoTCentralRejected,
    IoTCentralServerError,
)
from shared.retry import RetryPolicy

from .helpers import control, request_log
from .iotcentral_spec import EXAMPLES, concrete_type, validate, writable_properties

EVENTHUB = (
    "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=c2VjcmV0MQ==;EntityPath=e1"
)
BLOB = "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c2VjcmV0Mg==;EndpointSuffix=core.windows.net"
SECRETS = ("c2VjcmV0MQ==", "c2VjcmV0Mg==", "client-secret-3", "Bearer header-secret-4", "query-secret-5")

# One body per destination type and authorization type, each with every secret the type can hold.
DESTINATION_BODIES: dict[str, dict[str, Any]] = {
    "blob-cs": {
        "type": "blobstorage@v1",
        "authorization": {"type": "connectionString", "connectionString": BLOB, "containerName": "c"},
    },
    "blob-mi": {
        "type": "blobstorage@v1",
        "authorization": {
            "type": "systemAssignedManagedIdentity",
            "endpointUri": "https://acct.blob.core.windows.net/",
            "containerName": "c",
        },
    },
    "adx-sp": {
        "type": "dataexplorer@v1",
        "clusterUrl": "https://c.westus2.kusto.windows.net",
        "database": "db",
        "table": "t",
        "authorization": {
            "type": "servicePrincipal",
            "clientId": "id",
            "tenantId": "t",
            "clientSecret": "client-secret-3",
        },
    },
    "adx-mi": {
        "type": "dataexplorer@v1",
        "clusterUrl": "https://c.westus2.kusto.windows.net",
        "database": "db",
        "table": "t",
        "authorization": {"type": "systemAssignedManagedIdentity"},
    },
    "eh-cs": {"type": "eventhubs@v1", "authorization": {"type": "connectionString", "connectionString": EVENTHUB}},
    "eh-mi": {
        "type": "eventhubs@v1",
        "authorization": {
            "type": "systemAssignedManagedIdentity",
            "hostName": "ns.servicebus.windows.net",
            "eventHubName": "e",
        },
    },
    "sbq-cs": {
        "type": "servicebusqueue@v1",
        "authorization": {"type": "connectionString", "connectionString": EVENTHUB},
    },
    "sbq-mi": {
        "type": "servicebusqueue@v1",
        "authorization": {
            "type": "systemAssignedManagedIdentity",
            "hostName": "ns.servicebus.windows.net",
            "queueName": "q",
        },
    },
    "sbt-cs": {
        "type": "servicebustopic@v1",
        "authorization": {"type": "connectionString", "connectionString": EVENTHUB},
    },
    "sbt-mi": {
        "type": "servicebustopic@v1",
        "authorization": {
            "type": "systemAssignedManagedIdentity",
            "hostName": "ns.servicebus.windows.net",
            "topicName": "t",
        },
    },
    "wh-none": {"type": "webhook@v1", "url": "https://example.com/hook"},
    "wh-header": {
        "type": "webhook@v1",
        "url": "https://example.com/hook",
        "authorization": {"type": "header", "value": "Bearer header-secret-4"},
        "queryCustomizations": {"code": {"value": "query-secret-5", "secret": True}},
        "headerCustomizations": {"x-region": {"value": "westeurope", "secret": False}},
    },
    "wh-oauth": {
        "type": "webhook@v1",
        "url": "https://example.com/hook",
        "authorization": {
            "type": "oauth",
            "tokenUrl": "https://login.example.com/token",
            "clientId": "app",
            "clientSecret": "client-secret-3",
            "scope": "api://x/.default",
            "requestType": "urlencoded",
        },
    },
}


def test_every_destination_type_round_trips_with_secrets_masked(
    central: IoTCentralClient, iotcentral: IoTCentralEmulator
) -> None:
    for item_id, body in DESTINATION_BODIES.items():
        created = central.put(DESTINATIONS, item_id, {"displayName": item_id, **body})
        assert created["id"] == item_id and created["type"] == body["type"] and created["status"] == "waiting"
        central.patch(DESTINATIONS, item_id, {"displayName": f"{item_id} renamed"})
    listed = {d["id"]: d for d in central.list(DESTINATIONS)}
    assert list(listed) == list(DESTINATION_BODIES)
    assert all(d["displayName"].endswith("renamed") for d in listed.values())
    assert listed["eh-cs"]["authorization"]["connectionString"].endswith("SharedAccessKey=*****;EntityPath=e1")
    assert listed["wh-header"]["queryCustomizations"]["code"] == {"value": "*****", "secret": True}
    assert listed["wh-header"]["headerCustomizations"]["x-region"]["value"] == "westeurope"
    assert listed["wh-oauth"]["authorization"]["clientSecret"] == "*****"
    for item_id in DESTINATION_BODIES:
        assert central.delete(DESTINATIONS, item_id) is True
    assert list(central.list(DESTINATIONS)) == []
    # Every request and every response the emulator saw matches the published schemas; no secret came back.
    for entry in request_log(iotcentral):
        _check_against_spec(entry)
        assert not any(s in json.dumps(entry["response"]) for s in SECRETS), entry["path"]


def _check_against_spec(entry: dict[str, Any]) -> None:
    kind = entry["path"].split("/")[3]
    one = "Destination" if kind == "destinations" else "Export"
    response = entry["response"]
    if entry["status"] >= 400:
        validate(response, "Error")
        return
    if entry["method"] == "PUT":
        validate(entry["body"], one)
        declared = writable_properties(concrete_type(entry["body"], one))
        assert set(entry["body"]) <= declared, f"unknown property sent: {entry['body']}"
    segments = entry["path"].split("/")
    if entry["method"] == "GET" and len(segments) in (4, 6):  # a list, or the related list of one item
        validate(response, "DestinationCollection" if segments[-1] == "destinations" else "ExportCollection")
    elif entry["method"] in ("GET", "PUT", "PATCH"):
        validate(response, one)


def test_exports_with_every_source_enrichments_and_transforms(
    central: IoTCentralClient, iotcentral: IoTCentralEmulator
) -> None:
    central.put(DESTINATIONS, "d1", {"displayName": "d1", "type": "webhook@v1", "url": "https://example.com/a"})
    central.put(DESTINATIONS, "d2", {"displayName": "d2", **DESTINATION_BODIES["blob-mi"]})
    sources = ["telemetry", "properties", "deviceLifecycle", "deviceTemplateLifecycle", "deviceConnectivity", "audit"]
    for source in sources:
        body = {
            "displayName": source,
            "enabled": source != "audit",
            "source": source,
            "filter": "SELECT * FROM devices WHERE $simulated = true",
            "enrichments": {
                "constant": {"value": "fleet-a"},
                "template": {"path": "$templateDisplayName"},
                "model": {"target": "dtmi:azure:DeviceManagement:DeviceInformation;1", "path": "model"},
            },
            "destinations": [{"id": "d1", "transform": "{ id: .device.id }"}, {"id": "d2"}],
        }
        got = central.put(EXPORTS, source, body)
        assert got == {"id": source, **body, "status": "healthy" if source != "audit" else "notStarted"}
    assert [e["id"] for e in central.list(EXPORTS)] == sources
    assert [e["id"] for e in central.list_related(DESTINATIONS, "d1")] == sources
    assert [d["id"] for d in central.list_related(EXPORTS, "telemetry")] == ["d1", "d2"]
    patched = central.patch(EXPORTS, "telemetry", {"filter": None, "enabled": False, "enrichments": {"model": None}})
    assert (
        "filter" not in patched
        and patched["enabled"] is False
        and set(patched["enrichments"]) == {"constant", "template"}
    )
    assert central.get(DESTINATIONS, "d1")["status"] == "healthy"  # used by an enabled export
    for entry in request_log(iotcentral):
        _check_against_spec(entry)


def test_audit_source_needs_2022_10_31_preview(iotcentral: IoTCentralEmulator, central: IoTCentralClient) -> None:
    central.put(DESTINATIONS, "d", {"displayName": "d", "type": "webhook@v1", "url": "https://example.com/a"})
    old = IoTCentralClient.from_api_token(iotcentral.url, iotcentral.api_token(), api_version="2022-06-30-preview")
    body = {"displayName": "a", "enabled": True, "source": "audit", "destinations": [{"id": "d"}]}
    with pytest.raises(IoTCentralRejected, match="source"):
        old.put(EXPORTS, "a", body)
    assert central.put(EXPORTS, "a", body)["source"] == "audit"
    ga = IoTCentralClient.from_api_token(iotcentral.url, iotcentral.api_token(), api_version="2022-07-31")
    with pytest.raises(IoTCentralNotFound, match="not available in api-version 2022-07-31"):
        ga.get(EXPORTS, "a")


@pytest.mark.parametrize(
    "example",
    [e for e in EXAMPLES if "create" in e.name or "update" in e.name],
    ids=lambda p: f"{p.parent.name[-18:]}/{p.name}",
)
def test_published_examples_give_the_published_responses(example: Path, iotcentral: IoTCentralEmulator) -> None:
    doc = json.loads(example.read_text())
    params = doc["parameters"]
    client = IoTCentralClient.from_api_token(iotcentral.url, iotcentral.api_token(), api_version=params["api-version"])
    expected = doc["responses"]["200"]["body"]
    if "exportId" in params:
        for ref in params["body"]["destinations"]:
            client.put(
                DESTINATIONS, ref["id"], {"displayName": "x", "type": "webhook@v1", "url": "https://example.com/x"}
            )
        got = client.put(EXPORTS, params["exportId"], params["body"])
    elif "update" in example.name:
        create = json.loads(
            (
                example.parent.parent
                / "iotcentral-examples-2022-06-30-preview"
                / "dataexports_destinations_create_webhook.json"
            ).read_text()
        )
        client.put(DESTINATIONS, params["destinationId"], create["parameters"]["body"])
        got = client.patch(DESTINATIONS, params["destinationId"], params["body"])
    else:
        got = client.put(DESTINATIONS, params["destinationId"], params["body"])
    # The published queue example misspells its own namespace in the request ("[namespance]"), not the response.
    assert json.loads(json.dumps(got).replace("[namespance]", "[namespace]")) == expected


def test_errors_are_typed_with_the_service_shape(
    central: IoTCentralClient, iotcentral: IoTCentralEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="shared.iotcentral")
    with pytest.raises(IoTCentralNotFound) as missing:
        central.get(DESTINATIONS, "nope")
    assert missing.value.code == "NotFound" and missing.value.request_id
    assert central.find(EXPORTS, "nope") is None and central.delete(EXPORTS, "nope") is False
    # a get of something missing is a failure, logged; for find and delete a 404 is the answer asked for
    assert [(r.levelno, r.getMessage().split(" failed")[0]) for r in caplog.records if "404" in r.getMessage()] == [
        (logging.WARNING, "IoT Central GET /api/dataExport/destinations/nope")
    ]
    central.put(DESTINATIONS, "d", {"displayName": "d", "type": "webhook@v1", "url": "https://example.com/a"})
    with pytest.raises(IoTCentralRejected) as no_dest:
        central.put(
            EXPORTS,
            "e",
            {"displayName": "e", "enabled": True, "source": "telemetry", "destinations": [{"id": "ghost"}]},
        )
    assert no_dest.value.code == "DestinationNotFound" and "ghost" in str(no_dest.value)
    central.put(
        EXPORTS, "e", {"displayName": "e", "enabled": True, "source": "telemetry", "destinations": [{"id": "d"}]}
    )
    with pytest.raises(IoTCentralRejected) as in_use:
        central.delete(DESTINATIONS, "d")
    assert (in_use.value.status, in_use.value.code) == (409, "DestinationInUse")
    assert any(r.levelno == logging.WARNING and "409 DestinationInUse" in r.getMessage() for r in caplog.records)
    with pytest.raises(IoTCentralRejected, match="'type' cannot change"):
        central.put(DESTINATIONS, "d", {"displayName": "d", **DESTINATION_BODIES["blob-mi"]})
    with pytest.raises(IoTCentralRejected, match="'source' cannot change"):
        central.patch(EXPORTS, "e", {"source": "properties"})
    with pytest.raises(IoTCentralRejected, match="Unknown property 'colour'"):
        central.patch(DESTINATIONS, "d", {"colour": "red"})
    with pytest.raises(IoTCentralRejected, match="EntityPath"):
        central.put(
            DESTINATIONS,
            "x",
            {
                "displayName": "x",
                "type": "eventhubs@v1",
                "authorization": {
                    "type": "connectionString",
                    "connectionString": "Endpoint=sb://a/;SharedAccessKeyName=k;SharedAccessKey=a2V5",
                },
            },
        )
    # read-only fields in a body are ignored, as the spec marks them
    got = central.put(
        DESTINATIONS,
        "d",
        {"id": "other", "status": "broken", "displayName": "d2", "type": "webhook@v1", "url": "https://example.com/a"},
    )
    assert got["id"] == "d" and got["status"] == "healthy"
    for entry in request_log(iotcentral):
        if entry["status"] >= 400:
            validate(entry["response"], "Error")


def test_paging_follows_next_link(central: IoTCentralClient, iotcentral: IoTCentralEmulator) -> None:
    control(iotcentral, "pageSize", {"pageSize": 2})
    ids = [f"d{i}" for i in range(5)]
    for i in ids:
        central.put(DESTINATIONS, i, {"displayName": i, "type": "webhook@v1", "url": "https://example.com/a"})
    assert [d["id"] for d in central.list(DESTINATIONS)] == ids
    pages = [e for e in request_log(iotcentral) if e["method"] == "GET"]
    assert [e["query"].get("$skiptoken") for e in pages] == [None, "2", "4"]
    assert all(e["query"]["api-version"] == "2022-10-31-preview" for e in pages)


def test_retries_through_injected_faults(central: IoTCentralClient, iotcentral: IoTCentralEmulator) -> None:
    control(iotcentral, "faults", {"rate": 0.3, "statuses": [429, 500, 503], "seed": 7, "retryAfter": 0})
    for i in range(10):
        central.put(DESTINATIONS, f"d{i}", {"displayName": "d", "type": "webhook@v1", "url": "https://example.com/a"})
    assert len(list(central.list(DESTINATIONS))) == 10
    statuses = [e["status"] for e in request_log(iotcentral)]
    assert {429, 500, 503} & set(statuses), "the faults should have been met and retried"
    control(iotcentral, "faults", {"rate": 1.0, "statuses": [503]})
    stubborn = IoTCentralClient.from_api_token(
        iotcentral.url, iotcentral.api_token(), retry=RetryPolicy(max_retries=1, backoff_factor=0.01)
    )
    with pytest.raises(IoTCentralServerError, match="503 ServiceUnavailable"):
        stubborn.get(DESTINATIONS, "d0")


def _jwt(claims: dict[str, Any]) -> str:
    def enc(part: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(part).encode()).decode().rstrip("=")

    return f"{enc({'alg': 'none'})}.{enc(claims)}.c2ln"


class _FakeIdentity:
    """Stands in for an azure-identity credential: records the scope it was asked for."""

    def __init__(self, audience: str) -> None:
        self.audience = audience
        self.scopes: list[str] = []

    def get_token(self, *scopes: str, **_: Any) -> AccessToken:
        self.scopes.extend(scopes)
        return AccessToken(_jwt({"aud": self.audience, "exp": time.time() + 3600}), int(time.time()) + 3600)


def test_auth_api_tokens_roles_and_entra(iotcentral: IoTCentralEmulator) -> None:
    viewer = IoTCentralClient.from_api_token(iotcentral.url, iotcentral.api_token("viewer-token"))
    with pytest.raises(IoTCentralAuthError) as forbidden:
        list(viewer.list(DESTINATIONS))
    assert forbidden.value.status == 403
    forged = iotcentral.api_token().replace("sig=", "sig=AAAA")
    with pytest.raises(IoTCentralAuthError) as bad:
        IoTCentralClient.from_api_token(iotcentral.url, forged).get(DESTINATIONS, "x")
    assert bad.value.status == 401
    with pytest.raises(ValueError, match="SharedAccessSignature"):
        IoTCentralClient.from_api_token(iotcentral.url, "Bearer abc")
    identity = _FakeIdentity("https://apps.azureiotcentral.com")
    assert list(IoTCentralClient.from_token_credential(iotcentral.url, identity).list(EXPORTS)) == []
    assert identity.scopes == ["https://apps.azureiotcentral.com/.default"]
    with pytest.raises(IoTCentralAuthError):
        list(
            IoTCentralClient.from_token_credential(iotcentral.url, _FakeIdentity("https://iothubs.azure.net")).list(
                EXPORTS
            )
        )


def test_state_survives_a_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    emu = IoTCentralEmulator(tmp_path, port=0)
    emu.start()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(emu.ca_path))
    IoTCentralClient.from_api_token(emu.url, emu.api_token()).put(
        DESTINATIONS, "kept", {"displayName": "k", **DESTINATION_BODIES["blob-cs"]}
    )
    emu.stop()
    again = IoTCentralEmulator(tmp_path, port=0)
    again.start()
    try:
        got = IoTCentralClient.from_api_token(again.url, again.api_token()).get(DESTINATIONS, "kept")
        assert got["authorization"]["containerName"] == "c"
    finally:
        again.stop()
