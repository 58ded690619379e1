"""The import line acting on a query writes for one queried twin: conditional on the ETags the twin carries."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.devices import validate_stream
from shared.fleet.bulk import line_for

TWIN: dict[str, Any] = {
    "deviceId": "d-1",
    "etag": "AAAAAAAAAAI=",  # the twin's
    "deviceEtag": "NTQ3MjE=",  # the device's
    "status": "enabled",
    "authenticationType": "sas",
    "tags": {"site": "a"},
    "capabilities": {"iotEdge": False},
}


@pytest.mark.parametrize(
    ("action", "args", "mode", "etags"),
    [
        # the hub documents no twin ETag check on a delete line: identity only
        ("delete", {}, "deleteIfMatchETag", {"eTag": "NTQ3MjE="}),
        # an update line is conditional on the twin as well: a tag change (the query no longer selects the device)
        # moves the twin's ETag only
        ("disable", {}, "updateIfMatchETag", {"eTag": "NTQ3MjE=", "twinETag": "AAAAAAAAAAI="}),
        ("enable", {}, "updateIfMatchETag", {"eTag": "NTQ3MjE=", "twinETag": "AAAAAAAAAAI="}),
        ("regenerateKeys", {}, "updateIfMatchETag", {"eTag": "NTQ3MjE=", "twinETag": "AAAAAAAAAAI="}),
        ("setTags", {"tags": {"owner": "ops"}}, "updateTwinIfMatchETag", {"twinETag": "AAAAAAAAAAI="}),
    ],
)
def test_each_line_is_conditional_on_the_device_as_the_query_saw_it(
    action: str, args: dict[str, Any], mode: str, etags: dict[str, str]
) -> None:
    line = line_for(action, TWIN, args)
    assert line is not None and line["importMode"] == mode
    assert {k: line[k] for k in ("eTag", "twinETag") if k in line} == etags
    report = validate_stream([json.dumps(line).encode() + b"\n"])
    assert report.valid, report  # our own validator takes it


@pytest.mark.parametrize(("action", "mode"), [("delete", "delete"), ("disable", "update"), ("setTags", "updateTwin")])
def test_a_twin_without_its_etag_gets_the_unconditional_mode(action: str, mode: str) -> None:
    # An IfMatchETag line without an ETag is refused by the validator, and applied unconditionally by the hub.
    twin = {k: v for k, v in TWIN.items() if k not in ("etag", "deviceEtag")}
    line = line_for(action, twin, {"tags": {"x": 1}} if action == "setTags" else {})
    assert line is not None and line["importMode"] == mode
    assert "eTag" not in line and "twinETag" not in line
