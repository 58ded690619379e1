"""Drop-a-file imports through the runner: completed, rejected, duplicates, queues, per-device errors."""

from __future__ import annotations

import json
from typing import Any

import requests

from emulators.azurite import REPO
from tests.integration.helpers import control, wait_until
from tests.integration.helpers import device_line as dev

from .app import Stack, webhook
from .conftest import BOTH_SOURCES

# Every import test runs twice: with the polling blob trigger, and with Event Grid deliveries (Flex Consumption).
pytestmark = BOTH_SOURCES


def registry(stack: Stack) -> dict[str, dict[str, Any]]:
    """The hub's registry, read back through an export run by the app itself."""
    r = stack.app.call("POST", "exports", json={"hub": "devhub"})
    assert r.status_code == 202, r.text
    job_id = r.json()["jobs"][0]["jobId"]
    jobs = stack.app.wait_jobs(len(stack.app.jobs()))
    job = next(j for j in jobs if j["jobId"] == job_id)
    full = stack.app.job("devhub", job_id)
    assert job["state"] == "completed", full["failureReason"]
    container, _, name = full["reports"]["backup"].partition("/")
    lines = stack.read(container, name).decode().splitlines()
    return {d["id"]: d for d in map(json.loads, lines)}


def test_good_file_is_imported_and_archived(stack: Stack) -> None:
    stack.app.start()
    stack.drop("good.jsonl", [dev(f"d-{i}") for i in range(50)])
    (job,) = stack.app.wait_jobs(1)
    assert job["state"] == "completed", job
    assert job["lines"] == 50
    assert stack.names("uploads") == []
    assert stack.names("archive") == [f"processed/{job['jobId']}/good.jsonl"]
    assert sorted(registry(stack)) == sorted(f"d-{i}" for i in range(50))


def hub_jobs(stack: Stack, kind: str = "import") -> list[dict[str, Any]]:
    """The jobs the hub itself ran (its GET /jobs), not what our ledger says."""
    from shared.iothub import IoTHubClient

    client = IoTHubClient.from_connection_string(stack.hub.connection_string("iothubowner"))
    return [{"id": j.job_id, "status": str(j.status)} for j in client.list_jobs() if str(j.type) == kind]


def test_ten_thousand_devices_create_update_delete(stack: Stack) -> None:
    stack.app.start()
    stack.drop("seed.jsonl", [dev(f"dev-{i:05d}") for i in range(6000)])
    stack.app.wait_jobs(1)
    lines = [
        *({"id": f"dev-{i:05d}", "importMode": "delete"} for i in range(3000)),
        *(dev(f"dev-{i:05d}", status="disabled", tags={"batch": "b2"}) for i in range(3000, 6000)),
        *(dev(f"dev-{i:05d}", "create") for i in range(6000, 10_000)),
    ]
    stack.drop("devhub/changes.jsonl", lines)
    jobs = stack.app.wait_jobs(2)
    assert [j["state"] for j in jobs] == ["completed", "completed"], jobs
    assert jobs[0]["lines"] == 10_000
    assert jobs[0]["modes"] == {"delete": 3000, "createOrUpdate": 3000, "create": 4000}
    devices = registry(stack)
    assert sorted(devices) == [f"dev-{i:05d}" for i in range(3000, 10_000)]
    assert {devices[f"dev-{i:05d}"]["status"] for i in range(3000, 6000)} == {"disabled"}
    assert {devices[f"dev-{i:05d}"]["status"] for i in range(6000, 10_000)} == {"enabled"}
    assert devices["dev-03000"]["tags"] == {"batch": "b2"}


def test_file_with_mistakes_is_rejected_and_hub_untouched(stack: Stack) -> None:
    stack.app.start()
    sample = (REPO / "samples" / "devices-with-mistakes.jsonl").read_bytes()
    stack.drop("mistakes.jsonl", sample.decode().splitlines())
    (job,) = stack.app.wait_jobs(1)
    assert job["state"] == "rejected"
    assert job["validationErrors"] >= 5
    full = stack.app.job("devhub", job["jobId"])
    report = json.loads(requests.get(full["links"]["rejection"], timeout=10).content)
    assert report["errors"] and all(e["line"] >= 1 and e["message"] for e in report["errors"])
    assert {e["code"] for e in report["errors"]} >= {"INVALID_IMPORT_MODE"}
    assert hub_jobs(stack) == []  # the hub never saw the file
    # The rejection is recorded first (with where the upload goes), then the upload is moved: wait for the move.
    wait_until(lambda: stack.names("uploads") == [])
    assert (
        stack.names("archive")
        == [f"failed/{job['jobId']}/mistakes.jsonl"]
        == [job["archived"].removeprefix("archive/")]
    )
    assert not [c for c in stack.blobs.list_containers() if c.name.startswith("job-")]


def test_same_blob_delivered_twice_and_retried_makes_one_job(stack: Stack) -> None:
    control(stack.hub, "jobs", {"paused": True})  # keep the job running while it is delivered again
    stack.app.start()
    stack.drop("twice.jsonl", [dev(f"t-{i}") for i in range(20)])
    (job,) = stack.app.wait_jobs(1, states={"running"})
    if stack.eventgrid is None:
        # The host forgets its receipts (a redelivery), and a client asks for the same blob version over HTTP.
        hosts = stack.blobs.get_container_client("azure-webjobs-hosts")
        for receipt in list(hosts.list_blobs(name_starts_with="blobreceipts/")):
            hosts.delete_blob(receipt.name)
        wait_until(lambda: any(True for _ in hosts.list_blobs(name_starts_with="blobreceipts/")))
    else:
        # Event Grid delivers the event again (at least once), and a client asks for the same version over HTTP.
        wait_until(lambda: any(e["subject"].endswith("/twice.jsonl") for e in stack.eventgrid.delivered))
        event = next(e for e in stack.eventgrid.delivered if e["subject"].endswith("/twice.jsonl"))
        assert requests.post(webhook(stack.app), json=[event], timeout=10).status_code == 202
    r = stack.app.call("POST", "imports", json={"blob": "uploads/twice.jsonl"})
    assert r.status_code == 202, r.text
    assert r.json()["jobId"] == job["jobId"]
    control(stack.hub, "jobs", {"paused": False})
    (done,) = stack.app.wait_jobs(1)
    assert done["jobId"] == job["jobId"] and done["state"] == "completed"
    assert len(hub_jobs(stack)) == 1


def test_ten_files_at_once_run_one_after_another(stack: Stack) -> None:
    stack.app.start()
    for f in range(10):
        stack.drop(f"batch-{f}.jsonl", [dev(f"b{f}-{i}") for i in range(200)])
    jobs = stack.app.wait_jobs(10)
    assert [j["state"] for j in jobs] == ["completed"] * 10, jobs
    assert all(j["attempts"] >= 1 for j in jobs)
    ran = hub_jobs(stack)
    assert len(ran) == 10 and {j["status"] for j in ran} == {"completed"}
    assert len(registry(stack)) == 2000


def test_per_device_hub_errors_end_completed_with_errors(stack: Stack) -> None:
    stack.app.start()
    stack.drop("first.jsonl", [dev("exists-1"), dev("exists-2")])
    stack.app.wait_jobs(1)
    stack.drop("second.jsonl", [dev("exists-1", "create"), dev("new-1", "create"), dev("exists-2", "create")])
    jobs = stack.app.wait_jobs(2)
    assert jobs[0]["state"] == "completed_with_errors", jobs[0]
    assert jobs[0]["failedDevices"] == 2
    full = stack.app.job("devhub", jobs[0]["jobId"])
    rows = [json.loads(x) for x in requests.get(full["links"]["errors"], timeout=10).text.splitlines()]
    assert sorted(r["deviceId"] for r in rows) == ["exists-1", "exists-2"]
    assert {r["errorName"] for r in rows} == {"DeviceAlreadyExists"}
    assert "exists-1" in requests.get(full["links"]["errorsCsv"], timeout=10).text
    assert stack.names("archive") == sorted(
        [f"processed/{jobs[0]['jobId']}/second.jsonl", f"processed/{jobs[1]['jobId']}/first.jsonl"]
    )


def test_injected_429_500_503_do_not_stop_the_pipeline(stack: Stack) -> None:
    stack.app.start()
    control(stack.hub, "faults", {"rate": 0.3, "statuses": [429, 500, 503], "retryAfter": 0, "seed": 11})
    for f in range(3):
        stack.drop(f"f-{f}.jsonl", [dev(f"f{f}-{i}") for i in range(100)])
    jobs = stack.app.wait_jobs(3)
    control(stack.hub, "faults", {"rate": 0})
    assert [j["state"] for j in jobs] == ["completed"] * 3, jobs
    assert len(hub_jobs(stack)) == 3  # nothing submitted twice despite the failures
