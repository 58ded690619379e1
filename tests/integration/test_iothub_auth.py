"""Authentication and authorization of the IoT Hub emulator, with raw HTTP so every header is ours."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
import requests
from azure.iot.hub import IoTHubRegistryManager
from msrest.exceptions import HttpOperationError

from emulators.iothub import POLICIES, IoTHubEmulator
from emulators.iothub.auth import sign

from .helpers import hub_call, hub_token


def assert_unauthorized(r: requests.Response, name: str = "IotHubUnauthorizedAccess", text: str = "") -> None:
    assert r.status_code == 401
    assert r.headers["iothub-errorcode"] == name
    inner = json.loads(r.json()["Message"])
    assert inner["errorCode"] in (401002, 401003)
    assert text in inner["message"]


def test_valid_token_reads(iothub: IoTHubEmulator) -> None:
    r = hub_call(iothub, "GET", "/statistics/devices", hub_token(iothub))
    assert r.status_code == 200
    assert r.json() == {"totalDeviceCount": 0, "enabledDeviceCount": 0, "disabledDeviceCount": 0}


def test_missing_header(iothub: IoTHubEmulator) -> None:
    assert_unauthorized(hub_call(iothub, "GET", "/statistics/devices", None), text="no Authorization")


def test_bad_signature(iothub: IoTHubEmulator) -> None:
    forged = hub_token(iothub, key=base64.b64encode(b"k" * 32).decode())
    assert_unauthorized(hub_call(iothub, "GET", "/statistics/devices", forged), text="signature is invalid")


def test_expired_hub_token(iothub: IoTHubEmulator) -> None:
    assert_unauthorized(hub_call(iothub, "GET", "/statistics/devices", hub_token(iothub, ttl=-5)), text="expired")


def test_wrong_audience(iothub: IoTHubEmulator) -> None:
    other = sign("otherhub.azure-devices.net", POLICIES["iothubowner"].key, int(time.time()) + 600, "iothubowner")
    assert_unauthorized(hub_call(iothub, "GET", "/statistics/devices", other), text="audience")


def test_read_only_policy_cannot_write(iothub: IoTHubEmulator) -> None:
    read_only = hub_token(iothub, "registryRead")
    assert hub_call(iothub, "GET", "/devices", read_only).status_code == 200
    r = hub_call(iothub, "PUT", "/devices/d1", read_only, {"deviceId": "d1", "status": "enabled"})
    assert_unauthorized(r, "IotHubUnauthorized", "does not grant RegistryWrite")
    r = hub_call(iothub, "POST", "/jobs/create", read_only, {"type": "export", "outputBlobContainerUri": "https://x/y"})
    assert_unauthorized(r, "IotHubUnauthorized")
    assert hub_call(iothub, "PUT", "/devices/d1", hub_token(iothub, "registryReadWrite"), {"status": "enabled"}).ok


def test_service_policy_cannot_read_registry(iothub: IoTHubEmulator) -> None:
    assert_unauthorized(hub_call(iothub, "GET", "/devices", hub_token(iothub, "service")), "IotHubUnauthorized")


def test_sdk_with_read_only_connection_string(iothub: IoTHubEmulator) -> None:
    rm = IoTHubRegistryManager.from_connection_string(iothub.connection_string("registryRead"))
    assert rm.get_device_registry_statistics().total_device_count == 0
    with pytest.raises(HttpOperationError) as denied:
        rm.create_device_with_sas("d1", None, None, "enabled")
    assert denied.value.response.status_code == 401


def _jwt(claims: dict[str, Any]) -> str:
    def enc(d: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")

    return f"Bearer {enc({'alg': 'none'})}.{enc(claims)}.c2ln"


def test_bearer_token_with_iothub_audience(iothub: IoTHubEmulator) -> None:
    good = _jwt({"aud": "https://iothubs.azure.net", "exp": time.time() + 600})
    assert hub_call(iothub, "GET", "/devices", good).status_code == 200
    wrong = _jwt({"aud": "https://storage.azure.com", "exp": time.time() + 600})
    assert_unauthorized(hub_call(iothub, "GET", "/devices", wrong), text="audience")
    expired = _jwt({"aud": "https://iothubs.azure.net", "exp": time.time() - 1})
    assert_unauthorized(hub_call(iothub, "GET", "/devices", expired), text="expired")


def test_missing_api_version(iothub: IoTHubEmulator) -> None:
    r = requests.get(
        f"{iothub.url}/devices", headers={"Authorization": hub_token(iothub)}, verify=str(iothub.ca_path), timeout=10
    )
    assert r.status_code == 400
    assert "api-version" in json.loads(r.json()["Message"])["message"]
