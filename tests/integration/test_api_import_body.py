"""``POST /api/imports`` with the devices file as its body: any body the API takes is answered at once, a huge one
of other objects too (a job rejected with its findings; a body over the cap is 413, see test_api_schemas)."""

from __future__ import annotations

import hashlib
import json

from emulators.azurite import Azurite
from emulators.iothub import IoTHubEmulator
from shared import api
from shared.api_schemas import Request
from shared.devices.stream import GIVE_UP_AFTER
from shared.storage import BlobRef

from .helpers import services_on


def body_request(body: bytes) -> Request:
    return Request(body=body, content_type="application/x-ndjson", query={"hub": "devhub"})


def test_a_body_of_many_objects_that_are_no_devices_is_a_job_rejected_with_one_whole_file_finding(
    own_azurite: Azurite, iothub: IoTHubEmulator
) -> None:
    svc = services_on(own_azurite, iothub)
    svc.storage.ensure_container(svc.settings.containers.uploads)
    lines = 3 * GIVE_UP_AFTER  # past the point where the validator gives up on a file with no device line
    body = "".join(json.dumps({"name": f"s-{i}", "temperature": 21.5, "site": "oslo"}) + "\n" for i in range(lines))
    reply = api.start_import(svc, body_request(body.encode()))
    assert reply.status in (200, 202), reply.body
    job = reply.body
    assert job["state"] == "rejected" and job["sourceSha256"] == hashlib.sha256(body.encode()).hexdigest()
    container, path = job["reports"]["rejection"].split("/", 1)
    report = json.loads(b"".join(svc.storage.open_read(BlobRef(container, path))))
    assert report["errors"][0]["code"] == "NO_DEVICE_LINES"
    assert "is this the devices file you meant?" in report["errors"][0]["message"]
    assert len(report["errors"]) <= svc.settings.max_errors
    assert svc.engine.ctx.hubs["devhub"].list_jobs() == []  # nothing reached the hub


def test_a_sheet_sent_as_text_csv_is_read_as_csv(own_azurite: Azurite, iothub: IoTHubEmulator) -> None:
    svc = services_on(own_azurite, iothub)
    svc.storage.ensure_container(svc.settings.containers.uploads)
    sheet = b"id;status;tags.site\r\nsheet-1;enabled;oslo\r\nsheet-2;enabld;lyon\r\n"
    reply = api.start_import(svc, Request(body=sheet, content_type="text/csv; charset=utf-8", query={"hub": "devhub"}))
    assert reply.status in (200, 202), reply.body
    job = reply.body
    assert job["source"].endswith(".csv") and job["state"] == "rejected"
    container, path = job["reports"]["rejection"].split("/", 1)
    report = json.loads(b"".join(svc.storage.open_read(BlobRef(container, path))))
    assert [(e["line"], e["code"], e["field"]) for e in report["errors"]] == [(3, "INVALID_STATUS", "status")]
    assert report["errors"][0]["message"].startswith("B3 (line 3, column status): ")
