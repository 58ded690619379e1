"""The Event Grid path (Flex Consumption) end to end: the blob extension's webhook, its key and handshake, deliveries
twice and out of order, uploads Event Grid never announced, and a nightly backup the host missed while down."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import requests

from emulators.azurite import Azurite
from emulators.eventgrid import EventGridPublisher, Subscription
from emulators.functions_host import FUNCTION_KEY
from emulators.iothub import IoTHubEmulator
from tests.integration.helpers import device_line as dev
from tests.integration.helpers import wait_until

from .app import App, Stack, ensure, settings, webhook
from .test_imports import hub_jobs

VALIDATION = {
    "id": "v1",
    "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
    "subject": "",
    "eventTime": "2026-12-01T00:00:00Z",
    "data": {"validationCode": "code-123"},
    "dataVersion": "2",
}


def event_grid_app(tmp_path: Path, azurite: Azurite, hub: IoTHubEmulator, **extra: str) -> App:
    return App(tmp_path, settings(azurite, hub, UPLOADS_TRIGGER_SOURCE="EventGrid", **extra))


def test_the_webhook_wants_the_system_key_and_answers_the_handshake(
    tmp_path: Path, azurite: Azurite, hub: IoTHubEmulator
) -> None:
    app = event_grid_app(tmp_path, azurite, hub).start()
    try:
        url = webhook(app)
        missing = requests.post(url.split("&code=")[0], json=[VALIDATION], timeout=10)
        wrong = requests.post(webhook(app, key="not-the-key"), json=[VALIDATION], timeout=10)
        assert (missing.status_code, missing.json()["error"]["code"]) == (401, "MissingSystemKey")
        assert (wrong.status_code, wrong.json()["error"]["code"]) == (401, "InvalidSystemKey")
        r = requests.post(url, json=[VALIDATION], timeout=10)
        assert r.status_code == 200 and r.json() == {"validationResponse": "code-123"}
        other = url.replace("import_on_upload", "nightly_backup")
        assert requests.post(other, json=[VALIDATION], timeout=10).status_code == 404
        assert requests.post(url, data=b"{not json", timeout=10).status_code == 400
        # A function key is not the system key.
        assert requests.post(webhook(app, key=FUNCTION_KEY), json=[VALIDATION], timeout=10).status_code == 401
        assert "polling" not in "\n".join(app.log().splitlines()[:20])  # the trigger waits for events, no scan
    finally:
        app.stop()


def test_every_event_twice_and_out_of_order_still_one_job_per_upload(
    tmp_path: Path, azurite: Azurite, hub: IoTHubEmulator
) -> None:
    app = event_grid_app(tmp_path, azurite, hub, UPLOAD_SWEEP_MINUTES="600").start()
    publisher = EventGridPublisher(
        azurite.connection_string,
        "uploads",
        Subscription(webhook(app), duplicate_rate=1.0, shuffle=True, seed=3, backoff=0.2),
        interval=0.2,
    ).start()
    stack = Stack(azurite, hub, app, eventgrid=publisher)
    try:
        for i in range(5):
            stack.drop(f"eg-{i}.jsonl", [dev(f"eg-{i}-{n}") for n in range(20)])
        jobs = app.wait_jobs(5)
        wait_until(lambda: len(publisher.delivered) >= 10)
        assert len(jobs) == 5 and {j["state"] for j in jobs} == {"completed"}
        assert len(hub_jobs(stack)) == 5  # each upload imported once, though every event came twice
        assert stack.names("uploads") == []
    finally:
        publisher.stop()
        app.stop()


def test_uploads_event_grid_never_announced_are_found_by_the_monitor(
    tmp_path: Path, azurite: Azurite, hub: IoTHubEmulator
) -> None:
    app = event_grid_app(tmp_path, azurite, hub, UPLOAD_SWEEP_MINUTES="0.02")
    stack = Stack(azurite, hub, app)
    # Dropped before the subscription existed: Event Grid never delivers these.
    stack.drop("before-1.jsonl", [dev("b-1")])
    stack.drop("before-2.jsonl", [dev("b-2")])
    app.start()
    publisher = EventGridPublisher(
        azurite.connection_string, "uploads", Subscription(webhook(app), backoff=0.2), interval=0.2
    ).start()
    try:
        jobs = app.wait_jobs(2)
        assert sorted(j["source"] for j in jobs) == ["uploads/before-1.jsonl", "uploads/before-2.jsonl"]
        assert {j["state"] for j in jobs} == {"completed"}
        assert publisher.delivered == []
        assert "had no job long after it arrived" in app.log()
    finally:
        publisher.stop()
        app.stop()


def test_a_nightly_backup_missed_while_down_runs_once_past_due(
    tmp_path: Path, azurite: Azurite, hub: IoTHubEmulator
) -> None:
    # The schedule status says the 02:00 run was due yesterday: the host was down then.
    blobs = Stack(azurite, hub, App(tmp_path, {})).blobs
    ensure(blobs, "azure-webjobs-hosts")
    status = {
        "Last": (datetime.now(UTC) - timedelta(days=2)).isoformat(),
        "Next": (datetime.now(UTC) - timedelta(days=1)).isoformat(),
        "LastUpdated": (datetime.now(UTC) - timedelta(days=2)).isoformat(),
    }
    blob = blobs.get_blob_client("azure-webjobs-hosts", "timers/localhost/nightly_backup/status")
    blob.upload_blob(json.dumps(status).encode(), overwrite=True)
    app = App(tmp_path / str(uuid.uuid4())[:8], settings(azurite, hub)).start()
    try:
        (job,) = app.wait_jobs(1)
        assert job["kind"] == "export" and job["state"] == "completed"
        assert app.log().count("past due: True") == 1
        recorded = json.loads(blob.download_blob().readall())
        assert datetime.fromisoformat(recorded["Next"]) > datetime.now(UTC)  # the status moved on: no second run
    finally:
        app.stop()
    app.start()  # a restart now owes nothing
    try:
        wait_until(lambda: app.log().count("timer nightly_backup scheduled") == 2)  # its schedule was read again
        assert app.log().count("past due: True") == 1 and len(app.jobs()) == 1
    finally:
        app.stop()
