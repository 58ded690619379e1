"""Through the app as users drive it: every upload becomes a job, restores leave backups in place, names fit Azure."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from shared.ledger import TERMINAL_STATES
from tests.integration.helpers import device_line as dev
from tests.integration.helpers import wait_until

from .app import Stack
from .test_imports import registry


def test_a_data_export_file_while_central_is_off_becomes_a_rejected_job(stack: Stack) -> None:
    stack.app.start()
    stack.drop("central/exports.json", ['{"destinations": {}, "exports": {}}'])
    (job,) = stack.app.wait_jobs(1)
    assert (job["hub"], job["kind"], job["state"]) == ("central", "central_apply", "rejected")
    assert "IoT Central is not configured" in job["failureReason"]
    assert stack.names("uploads") == []
    assert stack.names("archive") == [f"failed/{job['jobId']}/central/exports.json"]
    assert job["archived"] == f"archive/failed/{job['jobId']}/central/exports.json"
    assert "poison" not in stack.app.log() and "Failed, try" not in stack.app.log()


def ended(stack: Stack, hub: str, job_id: str, timeout: float = 120) -> dict[str, Any]:
    """The job once it has ended; the timeout only stops a hung test."""
    return wait_until(
        lambda: stack.app.job(hub, job_id),
        lambda job: job["state"] in TERMINAL_STATES,
        deadline=timeout,
        interval=0.2,
        what=f"job {hub}/{job_id} to end",
    )


def test_restore_over_http_brings_the_registry_back_and_keeps_the_backup(stack: Stack) -> None:
    stack.app.start()
    stack.drop("seed.jsonl", [dev(f"s-{i}", tags={"n": i}) for i in range(20)])
    stack.app.wait_jobs(1)
    r = stack.app.call("POST", "exports", json={"hub": "devhub", "includeKeys": True})
    assert r.status_code == 202, r.text
    export = ended(stack, "devhub", r.json()["jobs"][0]["jobId"])
    path = export["reports"]["backup"].removeprefix("backups/")
    saved = stack.read("backups", path)
    before = {k: (d["status"], d.get("tags")) for k, d in registry(stack).items()}

    stack.drop("drift.jsonl", [{"id": f"s-{i}", "importMode": "delete"} for i in range(5)])
    wait_until(lambda: len(registry(stack)) == 15)

    stamp = path.split("/")[1]
    r = stack.app.call("POST", "restores", json={"hub": "devhub", "backup": stamp})
    assert r.status_code == 202, r.text
    assert r.json()["kind"] == "restore"
    restore = ended(stack, "devhub", r.json()["jobId"])
    assert restore["state"] == "completed", restore["failureReason"]
    assert {k: (d["status"], d.get("tags")) for k, d in registry(stack).items()} == before
    assert stack.read("backups", path) == saved  # read in place: the same bytes, still there
    manifest = json.loads(stack.read("backups", path.replace("devices.txt", "manifest.json")))
    assert hashlib.sha256(saved).hexdigest() == manifest["sha256"] == restore["sourceSha256"]
    assert restore["archived"] is None and not [n for n in stack.names("archive") if restore["jobId"] in n]

    for body, code in (
        ({"hub": "devhub", "backup": "19990101T000000Z"}, "NotABackup"),
        ({"hub": "nohub", "backup": "latest"}, "UnknownHub"),
        ({"hub": "devhub"}, "MissingField"),
        ({"hub": "devhub", "backup": "latest", "bakup": 1}, "UnknownField"),
    ):
        r = stack.app.call("POST", "restores", json=body)
        assert r.status_code in (400, 404) and r.json()["error"]["code"] == code, r.text


def test_importing_a_backup_by_name_never_moves_it(stack: Stack) -> None:
    stack.app.start()
    stack.drop("seed.jsonl", [dev(f"b-{i}") for i in range(5)])
    stack.app.wait_jobs(1)
    r = stack.app.call("POST", "exports", json={"hub": "devhub"})
    export = ended(stack, "devhub", r.json()["jobs"][0]["jobId"])
    path = export["reports"]["backup"]
    saved = stack.read("backups", path.removeprefix("backups/"))
    r = stack.app.call("POST", "imports", json={"blob": path})
    assert r.status_code in (200, 202), r.text
    jobs = stack.app.wait_jobs(3)
    assert all(j["state"] == "completed" for j in jobs), jobs
    assert stack.read("backups", path.removeprefix("backups/")) == saved
    assert all(export["jobId"] not in n for n in stack.names("archive"))


def test_an_upload_name_of_a_thousand_characters_is_archived_under_a_name_azure_takes(stack: Stack) -> None:
    stack.app.start()
    name = "devhub/" + "x" * 985 + ".jsonl"
    stack.drop(name, [dev("long-1")])
    (job,) = stack.app.wait_jobs(1)
    assert job["state"] == "completed" and job["source"] == f"uploads/{name}"
    archived = job["archived"].removeprefix("archive/")
    assert len(archived) <= 1024 and stack.names("archive") == [archived]
    assert stack.names("uploads") == []


def test_re_importing_an_archived_upload_leaves_the_earlier_jobs_archive_where_it_was(stack: Stack) -> None:
    stack.app.start()
    stack.drop("march.jsonl", [dev(f"m-{i}") for i in range(4)])
    (first,) = stack.app.wait_jobs(1)
    archived = first["archived"]
    assert archived == f"archive/processed/{first['jobId']}/march.jsonl"
    saved = stack.read("archive", archived.removeprefix("archive/"))
    before = sorted(stack.names("archive"))

    # By name, over HTTP: the archived copy is read in place.
    r = stack.app.call("POST", "imports", json={"blob": archived})
    assert r.status_code in (200, 202), r.text
    # And as a new upload of the same bytes under the same name: a job of its own, archived under its own id.
    stack.blobs.get_blob_client("uploads", "march.jsonl").upload_blob(saved, overwrite=True)
    jobs = stack.app.wait_jobs(3)
    assert [j["state"] for j in jobs] == ["completed"] * 3, jobs
    by_source = {j["jobId"]: j for j in jobs}
    reimport = next(j for j in jobs if j["source"] == archived)
    assert reimport["archived"] is None  # not an upload: never moved
    again = next(j for j in jobs if j["source"] == "uploads/march.jsonl" and j["jobId"] != first["jobId"])
    assert again["archived"] == f"archive/processed/{again['jobId']}/march.jsonl" and len(by_source) == 3
    # The earlier job's archive is where it was, with the same bytes; the only new archive blob is the new upload's.
    assert stack.read("archive", archived.removeprefix("archive/")) == saved
    assert sorted(stack.names("archive")) == sorted([*before, again["archived"].removeprefix("archive/")])
    assert stack.names("uploads") == []
