"""The hub emulator's query API over HTTPS: the IoT Hub query language, pages through continuation tokens (each
device once, in order), projections, GROUP BY, module twins, refusals in the service's error shape, and the
read-after-write lag of filtered queries."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import requests

from emulators.iothub import IoTHubEmulator
from emulators.iothub.quotas import Profile

from .helpers import hub_call, wait_until

COUNT = 2500


def spec(i: int) -> dict[str, Any]:
    return {
        "id": f"p-{i:04d}",
        "status": "disabled" if i % 7 == 0 else "enabled",
        "importMode": "create",
        "tags": {"group": "abc"[i % 3], "n": i % 10},
        "properties": {"desired": {"interval": 60 if i % 4 == 0 else 30}},
    }


def fill(emu: IoTHubEmulator, count: int = COUNT) -> None:
    for start in range(0, count, 100):
        r = hub_call(emu, "POST", "/devices", body=[spec(i) for i in range(start, min(start + 100, count))])
        assert r.status_code == 200, r.text


def page(emu: IoTHubEmulator, text: str, size: int | None = None, token: str | None = None) -> requests.Response:
    extra = {}
    if size is not None:
        extra["x-ms-max-item-count"] = str(size)
    if token is not None:
        extra["x-ms-continuation"] = token
    return hub_call(emu, "POST", "/devices/query", body={"query": text}, extra=extra)


def every_page(emu: IoTHubEmulator, text: str, size: int) -> list[list[dict[str, Any]]]:
    pages, token = [], None
    while True:
        r = page(emu, text, size, token)
        assert r.status_code == 200, r.text
        pages.append(r.json())
        token = r.headers.get("x-ms-continuation")
        if not token:
            return pages


@pytest.fixture
def hub(iothub: IoTHubEmulator) -> IoTHubEmulator:
    fill(iothub)
    return iothub


def test_every_device_once_in_order_through_continuation_tokens(hub: IoTHubEmulator) -> None:
    pages = every_page(hub, "SELECT * FROM devices", 100)
    assert len(pages) == 25 and all(len(p) == 100 for p in pages)
    assert [t["deviceId"] for p in pages for t in p] == [f"p-{i:04d}" for i in range(COUNT)]


@pytest.mark.parametrize(
    ("where", "selects"),
    [
        ("status = 'disabled'", lambda i: i % 7 == 0),
        ("tags.group = 'b' OR tags.n IN [0, 9]", lambda i: i % 3 == 1 or i % 10 in (0, 9)),
        ("NOT (tags.group = 'a') AND properties.desired.interval >= 60", lambda i: i % 3 != 0 and i % 4 == 0),
        ("STARTSWITH(deviceId, 'p-01') AND tags.n != 3", lambda i: 100 <= i < 200 and i % 10 != 3),
        ("tags.group NIN ['a', 'b'] AND (tags.n < 2 OR tags.n > 8)", lambda i: i % 3 == 2 and i % 10 in (0, 1, 9)),
        ("IS_DEFINED(tags.missing) OR ENDSWITH(deviceId, '77')", lambda i: i % 100 == 77),
        ("connectionState = 'Disconnected' AND lastActivityTime < '2000-01-01'", lambda i: True),
    ],
)
def test_filtered_pages_return_every_match_once_in_order(hub: IoTHubEmulator, where: str, selects: Any) -> None:
    pages = every_page(hub, f"SELECT * FROM devices WHERE {where}", 100)  # noqa: S608 (IoT Hub query text)
    expected = [f"p-{i:04d}" for i in range(COUNT) if selects(i)]
    assert [t["deviceId"] for p in pages for t in p] == expected
    assert all(len(p) == 100 for p in pages[:-1])


def test_projections_are_json_rows(hub: IoTHubEmulator) -> None:
    r = page(hub, "SELECT deviceId, tags.group, properties.desired.interval AS every FROM devices", 2)
    assert r.headers["x-ms-item-type"] == "JSON"
    assert r.json() == [
        {"deviceId": "p-0000", "group": "a", "every": 60},
        {"deviceId": "p-0001", "group": "b", "every": 30},
    ]
    assert r.headers.get("x-ms-continuation")


def test_top_limits_the_whole_answer_across_pages(hub: IoTHubEmulator) -> None:
    pages = every_page(hub, "SELECT TOP 250 * FROM devices WHERE tags.group = 'c'", 100)
    assert [len(p) for p in pages] == [100, 100, 50]
    assert [t["deviceId"] for p in pages for t in p] == [f"p-{i:04d}" for i in range(2, COUNT, 3)][:250]


def test_group_by_counts_as_the_docs_show(hub: IoTHubEmulator) -> None:
    r = page(hub, "SELECT tags.group AS group, COUNT() AS numberOfDevices FROM devices GROUP BY tags.group")
    assert r.status_code == 200, r.text
    assert r.headers["x-ms-item-type"] == "JSON" and "x-ms-continuation" not in r.headers
    assert r.json() == [
        {"group": "a", "numberOfDevices": 834},
        {"group": "b", "numberOfDevices": 833},
        {"group": "c", "numberOfDevices": 833},
    ]
    counted = page(hub, "SELECT COUNT() AS n FROM devices WHERE status = 'disabled' OR tags.n = 1").json()
    assert counted == [{"n": sum(1 for i in range(COUNT) if i % 7 == 0 or i % 10 == 1)}]
    assert page(hub, "SELECT COUNT() AS n FROM devices").json() == [{"n": COUNT}]


def test_module_twins_from_devices_modules(iothub: IoTHubEmulator) -> None:
    fill(iothub, 3)
    for did, mid in [("p-0002", "b"), ("p-0000", "z"), ("p-0000", "a")]:
        r = hub_call(iothub, "PUT", f"/devices/{did}/modules/{mid}", body={"deviceId": did, "moduleId": mid})
        assert r.status_code == 200, r.text
    pages = every_page(iothub, "SELECT * FROM devices.modules", 2)
    assert [(t["deviceId"], t["moduleId"]) for p in pages for t in p] == [
        ("p-0000", "a"),
        ("p-0000", "z"),
        ("p-0002", "b"),
    ]
    only = page(iothub, "SELECT * FROM devices.modules WHERE moduleId = 'z' AND deviceId IN ['p-0000']").json()
    assert [(t["deviceId"], t["moduleId"]) for t in only] == [("p-0000", "z")]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("SELECT * FROM devices WHERE tags.group = ", "ends too early"),
        ("SELECT * FROM devices WHERE CONTAINS(deviceId, 'x')", "not supported"),
        ("SELECT * FROM devices.jobs", "devices.jobs"),
        ("DELETE FROM devices", "Syntax error"),
    ],
)
def test_refusals_have_the_services_error_shape(iothub: IoTHubEmulator, text: str, says: str) -> None:
    r = page(iothub, text)
    assert r.status_code == 400
    assert r.headers["iothub-errorcode"] == "ArgumentInvalid"
    inner = json.loads(r.json()["Message"])
    assert inner["errorCode"] == 400004 and says in inner["message"]


def test_a_continuation_token_the_hub_did_not_send_is_refused(iothub: IoTHubEmulator) -> None:
    for token in ["not base64 !", base64.urlsafe_b64encode(b'{"k": 5}').decode()]:
        r = page(iothub, "SELECT * FROM devices", 10, token)
        assert r.status_code == 400 and r.headers["iothub-errorcode"] == "ArgumentInvalid"


def test_filtered_queries_see_a_changed_twin_as_it_was_until_the_lag_passes(realistic_hub: IoTHubEmulator) -> None:
    realistic_hub.set_profile(Profile("S1", 1, time_scale=0.05, query_lag=0))
    fill(realistic_hub, 3)
    realistic_hub.set_profile(Profile("S1", 1, time_scale=0.05, query_lag=40))  # a 2 s lag

    def ids(where: str) -> list[str]:
        r = page(realistic_hub, f"SELECT * FROM devices WHERE {where}")  # noqa: S608 (IoT Hub query text)
        assert r.status_code == 200, r.text
        return [t["deviceId"] for t in r.json()]

    assert ids("tags.group = 'a'") == ["p-0000"]
    patched = hub_call(realistic_hub, "PATCH", "/twins/p-0000", body={"tags": {"group": "z"}}, extra={"If-Match": "*"})
    assert patched.status_code == 200, patched.text
    # As recorded for the service: right after a write, queries still answer from the twin as it was.
    assert ids("tags.group = 'a'") == ["p-0000"]
    assert ids("tags.group = 'z'") == []
    wait_until(lambda: ids("tags.group = 'z'") == ["p-0000"])
    assert ids("tags.group = 'a'") == []
