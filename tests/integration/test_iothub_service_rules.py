"""Service behaviours the emulator keeps in every mode, checked over raw HTTP: api-versions, methods, If-Match,
bulk bodies, twin rules, modules and configurations."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests

from emulators.iothub import IoTHubEmulator

from .helpers import hub_call, hub_token


def raw(emu: IoTHubEmulator, method: str, path: str, *, query: str = "", **kw: Any) -> requests.Response:
    return requests.request(
        method,
        f"{emu.url}{path}{query}",
        headers={"Authorization": hub_token(emu), **kw.pop("headers", {})},
        verify=str(emu.ca_path),
        timeout=10,
        **kw,
    )


def inner(r: requests.Response) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(r.json()["Message"])
    return body


@pytest.mark.parametrize("query", ["", "?api-version=", "?api-version=2099-01-01", "?api-version=latest"])
def test_missing_or_unknown_api_version_is_invalid_protocol_version(iothub: IoTHubEmulator, query: str) -> None:
    r = raw(iothub, "GET", "/statistics/devices", query=query)
    assert r.status_code == 400
    assert r.headers["iothub-errorcode"] == "InvalidProtocolVersion"
    assert inner(r)["errorCode"] == 400001
    assert "api-version=2021-04-12" in inner(r)["message"]


def test_recorded_api_version_is_served(iothub: IoTHubEmulator) -> None:
    # The live recordings in azure-sdk-for-net used 2020-03-13.
    assert raw(iothub, "GET", "/statistics/devices", query="?api-version=2020-03-13").status_code == 200


@pytest.mark.parametrize("method", ["TRACE", "OPTIONS", "CONNECT"])
def test_unknown_methods_get_the_json_error(iothub: IoTHubEmulator, method: str) -> None:
    r = raw(iothub, method, "/devices", query="?api-version=2021-04-12")
    assert r.status_code == 405
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.headers["iothub-errorcode"] == "MethodNotAllowed"
    assert inner(r)["errorCode"] == 405001


def test_head_gets_status_without_a_body(iothub: IoTHubEmulator) -> None:
    r = raw(iothub, "HEAD", "/devices", query="?api-version=2021-04-12")
    assert r.status_code == 405 and r.content == b""
    assert hub_call(iothub, "GET", "/devices").status_code == 200  # the connection stayed usable


def test_put_with_empty_if_match_creates(iothub: IoTHubEmulator) -> None:
    # The .NET SDK's recorded creates send If-Match: "" (azure-sdk-for-net SessionRecords).
    r = raw(iothub, "PUT", "/devices/made", query="?api-version=2021-04-12", json={}, headers={"If-Match": '""'})
    assert r.status_code == 200 and r.json()["deviceId"] == "made"
    again = raw(iothub, "PUT", "/devices/made", query="?api-version=2021-04-12", json={}, headers={"If-Match": '""'})
    assert (again.status_code, again.headers["iothub-errorcode"]) == (409, "DeviceAlreadyExists")
    module = raw(
        iothub, "PUT", "/devices/made/modules/m1", query="?api-version=2021-04-12", json={}, headers={"If-Match": '""'}
    )
    assert module.status_code == 200 and module.json()["moduleId"] == "m1"


def test_bulk_if_match_modes_without_an_etag(iothub: IoTHubEmulator) -> None:
    created = [{"id": f"b{i}", "importMode": "create", "status": "enabled"} for i in range(3)]
    assert hub_call(iothub, "POST", "/devices", body=created).json()["isSuccessful"] is True
    # Recorded: deleteIfMatchETag items without an eTag were deleted (Jobs_Export_Import_Lifecycle).
    deletes = [{"id": f"b{i}", "importMode": "deleteIfMatchETag"} for i in range(3)]
    r = hub_call(iothub, "POST", "/devices", body=deletes)
    assert r.status_code == 200 and r.json() == {"isSuccessful": True, "errors": [], "warnings": []}
    assert hub_call(iothub, "GET", "/devices/b0").status_code == 404


@pytest.mark.parametrize(
    "item",
    [{"id": ["a"], "status": "enabled"}, {"id": {"x": 1}}, {"id": 7}, {"id": "d", "moduleId": ["m"]}],
)
def test_bulk_item_with_a_non_string_id_is_a_400(iothub: IoTHubEmulator, item: dict[str, Any]) -> None:
    r = hub_call(iothub, "POST", "/devices", body=[{"id": "fine", "status": "enabled"}, item])
    assert r.status_code == 400
    assert r.headers["iothub-errorcode"] == "DeserializationError"
    assert "must be a string" in inner(r)["message"]
    assert hub_call(iothub, "GET", "/devices/fine").status_code == 404  # nothing of the call was applied


@pytest.mark.parametrize(
    ("patch", "where"),
    [
        ({"tags": {"a.b": 1}}, "tags.a.b"),
        ({"tags": {"$x": 1}}, "tags.$x"),
        ({"properties": {"desired": {"has space": 1}}}, "has space"),
        ({"properties": {"desired": {"nested": {"tab\there": 1}}}}, "nested"),
        ({"properties": {"desired": {"big": "x" * 4097}}}, "exceeds 4 KB"),
    ],
)
def test_twin_rules(iothub: IoTHubEmulator, patch: dict[str, Any], where: str) -> None:
    hub_call(iothub, "PUT", "/devices/tw", body={"status": "enabled"})
    r = hub_call(iothub, "PATCH", "/twins/tw", body=patch)
    assert r.status_code == 400 and r.headers["iothub-errorcode"] == "ArgumentInvalid"
    assert where in inner(r)["message"]
    line = {"id": "tw-bulk", "status": "enabled", **patch}
    refused = hub_call(iothub, "POST", "/devices", body=[line]).json()
    assert refused["errors"][0]["errorCode"] == "ArgumentInvalid"


def test_twin_value_of_4_kb_fits(iothub: IoTHubEmulator) -> None:
    hub_call(iothub, "PUT", "/devices/tw", body={"status": "enabled"})
    r = hub_call(iothub, "PATCH", "/twins/tw", body={"properties": {"desired": {"big": "x" * 4000}}})
    assert r.status_code == 200 and r.json()["properties"]["desired"]["big"] == "x" * 4000


def test_edge_system_modules_cannot_be_changed(iothub: IoTHubEmulator) -> None:
    edge = {"status": "enabled", "capabilities": {"iotEdge": True}}
    assert hub_call(iothub, "PUT", "/devices/gw", body=edge).status_code == 200
    agent = hub_call(iothub, "GET", "/devices/gw/modules/%24edgeAgent")
    assert agent.status_code == 200 and agent.json()["moduleId"] == "$edgeAgent"
    refused = hub_call(iothub, "DELETE", "/devices/gw/modules/%24edgeAgent")
    assert refused.status_code == 400
    assert hub_call(iothub, "GET", "/devices/gw/modules/%24edgeAgent").status_code == 200


def test_configuration_ids_are_lower_case_and_capped(iothub: IoTHubEmulator) -> None:
    r = hub_call(iothub, "PUT", "/configurations/Upper", body={"content": {"deviceContent": {}}})
    assert r.status_code == 400 and "lower-case" in inner(r)["message"]
    for i in range(100):
        assert hub_call(iothub, "PUT", f"/configurations/c{i}", body={"priority": i}).status_code == 200
    over = hub_call(iothub, "PUT", "/configurations/c100", body={})
    assert (over.status_code, over.headers["iothub-errorcode"]) == (403, "ConfigurationCountLimitExceeded")
    listed = hub_call(iothub, "GET", "/configurations")
    assert len(listed.json()) == 100
