"""Nothing lost, nothing failed by a passing fault: restores read backups in place, archives hold exactly what a job
read, names fit Azure, cancelled jobs say how far they got, throttling only ever delays a job."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import re
from typing import Any

import pytest

from emulators.iothub import IoTHubEmulator
from shared.backups import NotABackup
from shared.config import Snapshots
from shared.engine import Context
from shared.iothub import IoTHubAuthError, IoTHubClient
from shared.kinds.imports import ImportKind
from shared.ledger import Job, JobKind, JobState
from shared.storage import ArchiveKind, BlobRef, within_limits

from .helpers import FAST, KEY, Clock, Jobs, control, devices, hub_count, run_to_end, upload, wait_until

# What the service generates on every write: never part of what a backup restores.
GENERATED = {
    "eTag",
    "twinETag",
    "etag",
    "version",
    "generationId",
    "lastActivityTime",
    "statusUpdatedTime",
    "connectionStateUpdatedTime",
    "cloudToDeviceMessageCount",
    "connectionState",
    "$metadata",
    "$version",
    "lastUpdated",
    "lastUpdatedVersion",
}


def _stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in GENERATED}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def read(p: Jobs, path: str) -> bytes:
    container, _, name = path.partition("/")
    return b"".join(p.storage.open_read(BlobRef(container, name)))


def registry(p: Jobs, clock: Clock) -> dict[str, Any]:
    """The registry as a fresh export with keys shows it, without service-generated fields."""
    job = p.queue_export("devhub", include_keys=True)
    done = run_to_end(p, job, clock)
    assert done.state is JobState.COMPLETED, done.failure_reason
    lines = [json.loads(x) for x in read(p, done.reports["backup"]).splitlines() if x.strip()]
    return {(d["id"], d.get("moduleId")): _stable(d) for d in lines}


def backup(p: Jobs, clock: Clock) -> Job:
    job = p.queue_export("devhub", include_keys=True)
    done = run_to_end(p, job, clock)
    assert done.state is JobState.COMPLETED
    return done


def keyed(n: int) -> list[dict[str, Any] | str]:
    auth = {"symmetricKey": {"primaryKey": KEY, "secondaryKey": KEY}}
    return [{"id": f"r-{i}", "status": "enabled", "authentication": auth, "tags": {"n": i}} for i in range(n)]


# --- restore ----------------------------------------------------------------------------------------------


def test_restoring_a_backup_brings_the_registry_back_and_leaves_the_backup_where_it_was(
    jobs: Jobs, clock: Clock
) -> None:
    run_to_end(jobs, jobs.accept_upload(upload(jobs, "seed.jsonl", keyed(30)), "devhub"), clock)
    taken = backup(jobs, clock)
    before = registry(jobs, clock)
    folder = taken.backup_folder
    saved = {
        n: read(jobs, f"{jobs.containers.backups}/{n}")
        for n in jobs.storage.list_names(jobs.containers.backups, folder)
    }
    assert set(saved) == {f"{folder}/devices.txt", f"{folder}/manifest.json"}

    # The registry drifts: devices deleted, disabled, retagged.
    changes = [
        *({"id": f"r-{i}", "importMode": "delete"} for i in range(5)),
        *({"id": f"r-{i}", "status": "disabled", "importMode": "update"} for i in range(5, 10)),
        *({"id": f"r-{i}", "importMode": "updateTwin", "tags": {"n": -1}} for i in range(10, 15)),
    ]
    run_to_end(jobs, jobs.accept_upload(upload(jobs, "drift.jsonl", changes), "devhub"), clock)
    assert registry(jobs, clock) != before

    job = jobs.accept_restore("devhub", folder.split("/", 1)[1])
    assert (job.kind, job.state, job.lines) == (JobKind.RESTORE, JobState.QUEUED, 30)
    done = run_to_end(jobs, job, clock)
    assert done.state is JobState.COMPLETED, done.failure_reason
    assert registry(jobs, clock) == before

    # The backup is read in place: same blobs, same bytes, nothing archived, nothing recorded as moved.
    after = {
        n: read(jobs, f"{jobs.containers.backups}/{n}")
        for n in jobs.storage.list_names(jobs.containers.backups, folder)
    }
    assert after == saved
    assert done.archived is None and done.source == f"{jobs.containers.backups}/{folder}/devices.txt"
    assert not [n for n in jobs.storage.list_names(jobs.containers.archive, "") if done.job_id in n]
    manifest = json.loads(saved[f"{folder}/manifest.json"])
    assert done.source_sha256 == manifest["sha256"]
    summary = json.loads(read(jobs, done.reports["summary"]))
    assert summary["job"]["state"] == "completed" and summary["job"]["kind"] == "restore"


def test_restore_of_latest_and_of_what_is_not_a_backup(jobs: Jobs, clock: Clock) -> None:
    with pytest.raises(NotABackup, match="no complete backup"):
        jobs.accept_restore("devhub", "latest")
    run_to_end(jobs, jobs.accept_upload(upload(jobs, "seed.jsonl", devices(3)), "devhub"), clock)
    first = backup(jobs, clock)
    clock.advance(60)
    second = backup(jobs, clock)
    job = jobs.accept_restore("devhub", "latest")
    assert job.source == f"{jobs.containers.backups}/{second.backup_folder}/devices.txt"
    assert jobs.accept_restore("devhub", "latest").job_id == job.job_id  # asked twice: one job
    assert first.backup_folder != second.backup_folder
    # keyless backups say what a restore does to keys
    assert job.notes == () and second.include_keys
    for bad in ("nothere", "otherhub/20260101T000000Z", "devhub/x/y"):
        with pytest.raises(NotABackup):
            jobs.accept_restore("devhub", bad)


def test_a_damaged_backup_is_refused_and_left_alone(jobs: Jobs, clock: Clock) -> None:
    run_to_end(jobs, jobs.accept_upload(upload(jobs, "seed.jsonl", devices(3)), "devhub"), clock)
    folder = backup(jobs, clock).backup_folder
    damaged = b'{"id":"intruder","status":"enabled"}\n'
    jobs.storage.upload_bytes(jobs.containers.backups, f"{folder}/devices.txt", damaged)
    job = jobs.accept_restore("devhub", folder)
    assert job.state is JobState.REJECTED and "manifest" in (job.failure_reason or "")
    assert read(jobs, f"{jobs.containers.backups}/{folder}/devices.txt") == damaged
    assert jobs.start_next("devhub") is None


def test_importing_a_blob_outside_uploads_never_moves_it(jobs: Jobs, clock: Clock) -> None:
    other = f"{jobs.containers.reports}"
    jobs.storage.ensure_container(other)
    data = b"".join(json.dumps(d).encode() + b"\n" for d in devices(4))
    etag = jobs.storage.upload_bytes(other, "kept/devices.jsonl", data)
    done = run_to_end(jobs, jobs.accept_upload(BlobRef(other, "kept/devices.jsonl", etag), "devhub"), clock)
    assert done.state is JobState.COMPLETED and hub_count(jobs) == 4
    assert read(jobs, f"{other}/kept/devices.jsonl") == data
    props = jobs.storage.properties(BlobRef(other, "kept/devices.jsonl"))
    assert props is not None and props.etag == etag  # not even a metadata change
    assert done.archived is None
    # and a rejected one stays too
    etag = jobs.storage.upload_bytes(other, "kept/bad.jsonl", b'{"id": 1}\n')
    rejected = jobs.accept_upload(BlobRef(other, "kept/bad.jsonl", etag), "devhub")
    assert rejected.state is JobState.REJECTED and rejected.archived is None
    assert read(jobs, f"{other}/kept/bad.jsonl") == b'{"id": 1}\n'


# --- archives ---------------------------------------------------------------------------------------------


def test_an_upload_overwritten_while_its_job_runs_archives_the_bytes_that_job_read(jobs: Jobs, clock: Clock) -> None:
    first = upload(jobs, "fleet.jsonl", devices(5, prefix="old"))
    job1 = jobs.accept_upload(first, "devhub")
    second = upload(jobs, "fleet.jsonl", devices(7, prefix="new"))  # replaced while job 1 waits and runs
    job2 = jobs.accept_upload(second, "devhub")
    assert job1.job_id != job2.job_id
    done1 = run_to_end(jobs, job1, clock)
    done2 = run_to_end(jobs, job2, clock)
    assert (done1.state, done2.state) == (JobState.COMPLETED, JobState.COMPLETED)
    assert hub_count(jobs) == 12 and len(jobs.hubs["devhub"].list_jobs()) == 2
    for done, prefix in ((done1, "old"), (done2, "new")):
        assert done.archived is not None
        archived = read(jobs, done.archived)
        assert hashlib.sha256(archived).hexdigest() == done.source_sha256
        assert {json.loads(x)["id"].split("-")[0] for x in archived.splitlines()} == {prefix}
    assert jobs.storage.list_names(jobs.containers.uploads, "") == []


@pytest.mark.parametrize("newer_ends_first", [True, False])
def test_two_versions_in_flight_end_in_either_order_and_both_are_archived(jobs: Jobs, newer_ends_first: bool) -> None:
    job1 = jobs.accept_upload(upload(jobs, "twice.jsonl", devices(2, prefix="one")), "devhub")
    job2 = jobs.accept_upload(upload(jobs, "twice.jsonl", devices(3, prefix="two")), "devhub")
    order = [job2, job1] if newer_ends_first else [job1, job2]
    ended = {j.job_id: jobs.cancel(j) for j in order}  # a queued job ends (and is archived) at once
    uploads = jobs.containers.uploads
    assert jobs.storage.list_names(uploads, "") == []  # whichever ended last removed the upload
    assert jobs.storage.snapshots(uploads, "twice.jsonl") == []
    for job, prefix in ((job1, "one"), (job2, "two")):
        archived = ended[job.job_id].archived
        assert archived is not None
        data = read(jobs, archived)
        assert hashlib.sha256(data).hexdigest() == job.source_sha256 and data.startswith(f'{{"id": "{prefix}'.encode())


def test_snapshots_left_by_a_crash_do_not_keep_an_upload(jobs: Jobs, clock: Clock) -> None:
    ref = upload(jobs, "o.jsonl", devices(2))
    jobs.storage.pin(ref)  # pinned, then the process died before recording a job
    done = run_to_end(jobs, jobs.accept_upload(ref, "devhub"), clock)  # the redelivery
    assert done.state is JobState.COMPLETED
    assert jobs.storage.list_names(jobs.containers.uploads, "") == []
    assert jobs.storage.snapshots(jobs.containers.uploads, "o.jsonl") == []


def test_a_rejected_upload_overwritten_before_it_is_archived_keeps_both_versions(jobs: Jobs, clock: Clock) -> None:
    bad = upload(jobs, "x.jsonl", ['{"id": "a b"}'])
    good = b'{"id":"fine","status":"enabled"}\n'
    pinned = jobs.storage.pin(bad)
    jobs.storage.upload_bytes(jobs.containers.uploads, "x.jsonl", good)  # the user fixes it meanwhile
    target = jobs.storage.archive(pinned, ArchiveKind.FAILED, archive_container=jobs.containers.archive, job_id="j")
    assert target is not None and read(jobs, target.path) == b'{"id": "a b"}\n'
    assert read(jobs, f"{jobs.containers.uploads}/x.jsonl") == good


def test_a_name_azure_cannot_take_whole_is_archived_under_a_fitted_name(jobs: Jobs, clock: Clock) -> None:
    name = "devhub/" + "n" * 990 + ".jsonl"
    done = run_to_end(jobs, jobs.accept_upload(upload(jobs, name, devices(2)), "devhub"), clock)
    assert done.state is JobState.COMPLETED and done.archived is not None
    container, _, archived = done.archived.partition("/")
    assert within_limits(archived) and len(archived) <= 1024
    assert done.source == f"{jobs.containers.uploads}/{name}"  # the ledger maps the archive back to the upload
    assert jobs.storage.properties(BlobRef(container, archived)) is not None
    assert jobs.storage.properties(BlobRef(jobs.containers.uploads, name)) is None
    for path in done.reports.values():
        assert within_limits(path.partition("/")[2])


# --- endings ----------------------------------------------------------------------------------------------


def test_a_cancelled_import_says_how_far_the_hub_got_and_reports_its_refusals(
    jobs: Jobs, iothub: IoTHubEmulator, clock: Clock
) -> None:
    lines = [{"id": "ghost", "status": "enabled", "importMode": "update"}, *devices(6000)]
    # An update line would have a snapshot taken first (test_fleet_rollback); here the import itself is the subject.
    jobs.engine.kinds[JobKind.IMPORT].snapshots = Snapshots.OFF  # type: ignore[attr-defined]
    control(iothub, "faults", {"jobStepDelay": 0.3})
    job = jobs.accept_upload(upload(jobs, "big.jsonl", lines), "devhub")
    started = jobs.start_next("devhub")
    assert started is not None and started.hub_job_id
    hub = jobs.hubs["devhub"]
    wait_until(lambda: hub.get_job(started.hub_job_id or "").progress, what="the hub job to make progress")
    jobs.cancel(jobs.ledger.get("devhub", job.job_id))
    control(iothub, "faults", {"jobStepDelay": 0})
    done = run_to_end(jobs, job, clock)
    assert done.state is JobState.CANCELLED
    applied = hub_count(jobs)
    assert 0 < applied < 6000
    assert 0 < done.progress < 100
    assert "may have been applied" in (done.failure_reason or "") and f"{done.progress}%" in (done.failure_reason or "")
    assert done.failed_devices == 1 and "errors" in done.reports
    assert b"ghost" in read(jobs, done.reports["errors"])
    summary = json.loads(read(jobs, done.reports["summary"]))
    assert summary["job"]["state"] == "cancelled" and summary["job"]["progress"] == done.progress
    assert summary["errors"]["failedDevices"] == 1
    assert done.archived is not None and done.archived.split("/")[1] == "failed"


def test_the_summary_shows_the_final_state_counts_and_times(jobs: Jobs, clock: Clock) -> None:
    jobs.hubs["devhub"].bulk_update([{"id": "taken", "status": "enabled", "importMode": "create"}])
    lines = [*devices(3), {"id": "taken", "status": "enabled", "importMode": "create"}]
    done = run_to_end(jobs, jobs.accept_upload(upload(jobs, "s.jsonl", lines), "devhub"), clock)
    summary = json.loads(read(jobs, done.reports["summary"]))
    assert summary["job"]["state"] == "completed_with_errors" == done.state
    assert summary["job"]["progress"] == 100 and summary["job"]["failedDevices"] == 1
    assert summary["job"]["updated"] == done.updated.isoformat() and summary["job"]["lines"] == 4
    assert summary["job"]["archived"] == done.archived
    assert summary["errors"]["byCode"] == {"DeviceAlreadyExists": 1}


# --- passing faults -------------------------------------------------------------------------------------


def test_throttling_longer_than_the_client_retries_only_delays_the_jobs(
    jobs: Jobs, iothub: IoTHubEmulator, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    control(iothub, "faults", {"rate": 1.0, "statuses": [429], "retryAfter": 0})
    queued = [jobs.accept_upload(upload(jobs, f"t{i}.jsonl", devices(3, prefix=f"t{i}")), "devhub") for i in range(3)]
    waits = []
    with caplog.at_level(logging.WARNING):
        for _ in range(6):  # many monitor passes, each one throttled through all of the client's retries
            jobs.monitor_pass("devhub")
            now = [jobs.ledger.get("devhub", j.job_id) for j in queued]
            assert all(j.state is JobState.QUEUED for j in now)
            # the oldest (ids made in one instant tie on time) is tried, and waits longer after each 429
            tried = [j for j in now if "throttled" in (j.waiting_for or "")]
            assert len(tried) == 1 and tried[0].retry_at is not None
            waits.append(tried[0].retry_at - clock())
            clock.advance(20)
    assert all(j.state is JobState.QUEUED for j in (jobs.ledger.get("devhub", j.job_id) for j in queued))
    assert waits[-1] > waits[0]  # the back-off grows
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    control(iothub, "faults", {"rate": 0})
    ended = [run_to_end(jobs, j, clock) for j in queued]
    assert [j.state for j in ended] == [JobState.COMPLETED] * 3
    assert hub_count(jobs) == 9 and len(jobs.hubs["devhub"].list_jobs()) == 3
    assert all(j.failure_reason is None and j.waiting_for is None and j.retry_at is None for j in ended)


def test_a_passing_fault_while_following_a_job_is_one_warning(
    jobs: Jobs, iothub: IoTHubEmulator, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    job = jobs.accept_upload(upload(jobs, "f.jsonl", devices(3)), "devhub")
    control(iothub, "jobs", {"paused": True})
    assert jobs.start_next("devhub") is not None
    control(iothub, "faults", {"rate": 1.0, "statuses": [503], "retryAfter": 0})
    with caplog.at_level(logging.WARNING):
        jobs.monitor_pass("devhub")
    assert jobs.ledger.get("devhub", job.job_id).state is JobState.RUNNING
    warnings = [r for r in caplog.records if r.name.startswith("shared.engine")]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING and not warnings[0].exc_info
    control(iothub, "faults", {"rate": 0})
    control(iothub, "jobs", {"paused": False})
    assert run_to_end(jobs, job, clock).state is JobState.COMPLETED


def test_a_definitive_refusal_still_fails_the_job(jobs: Jobs, iothub: IoTHubEmulator) -> None:
    wrong = base64.b64encode(b"not-the-policy-key-0123456789abc").decode()
    conn = re.sub(r"SharedAccessKey=[^;]+", f"SharedAccessKey={wrong}", iothub.connection_string())
    ctx = dataclasses.replace(jobs.engine.ctx, hubs={"devhub": IoTHubClient.from_connection_string(conn, retry=FAST)})
    refused = Jobs(dataclasses.replace(jobs.engine, ctx=ctx))
    job = refused.accept_upload(upload(refused, "r.jsonl", devices(2)), "devhub")
    done = refused.start_next("devhub")
    assert done is not None and done.job_id == job.job_id and done.state is JobState.FAILED
    assert "refused" in (done.failure_reason or "") and refused.slots.holder("devhub") is None


# --- restoring what a hub really exports ------------------------------------------------------------------

X509 = "9F3B2A1C4D5E6F708192A3B4C5D6E7F8091A2B3C"


def fleet() -> list[dict[str, Any] | str]:
    """A mixed registry: keyed and x509 devices, an IoT Edge gateway (the hub adds $edgeAgent and $edgeHub), a leaf
    device under it, a module of our own with keys, twins with tags and desired properties."""
    keys = {"symmetricKey": {"primaryKey": KEY, "secondaryKey": KEY}}
    return [
        {"id": "sas-1", "status": "enabled", "authentication": keys, "tags": {"site": "a"}},
        {
            "id": "x509-1",
            "status": "disabled",
            "statusReason": "spare",
            "authentication": {"type": "selfSigned", "x509Thumbprint": {"primaryThumbprint": X509}},
        },
        {
            "id": "gw-1",
            "status": "enabled",
            "capabilities": {"iotEdge": True},
            "authentication": keys,
            "properties": {"desired": {"interval": 30}},
        },
        {"id": "gw-1", "moduleId": "collector", "authentication": keys, "tags": {"role": "collector"}},
    ]


@pytest.mark.parametrize("include_keys", [True, False])
def test_a_backup_as_the_hub_exports_it_restores(jobs: Jobs, clock: Clock, include_keys: bool) -> None:
    run_to_end(jobs, jobs.accept_upload(upload(jobs, "fleet.jsonl", fleet()), "devhub"), clock)
    taken = run_to_end(jobs, jobs.queue_export("devhub", include_keys=include_keys), clock)
    exported = read(jobs, taken.reports["backup"]).decode().splitlines()
    assert any('"$edgeAgent"' in line for line in exported)  # the hub's own modules are in the export
    manifest = json.loads(read(jobs, taken.reports["manifest"]))
    assert (manifest["devices"], manifest["modules"]) == (3, 3)
    before = registry(jobs, clock)
    # Everything but the gateway goes; the gateway's own module goes too.
    drift = [{"id": "sas-1", "importMode": "delete"}, {"id": "x509-1", "importMode": "delete"},
             {"id": "gw-1", "moduleId": "collector", "importMode": "delete"}]  # fmt: skip
    run_to_end(jobs, jobs.accept_upload(upload(jobs, "drift.jsonl", drift), "devhub"), clock)
    restore = jobs.accept_restore("devhub", taken.backup_folder or "")
    assert restore.state is JobState.QUEUED, restore.failure_reason
    assert any("$edgeAgent" in n for n in restore.notes)  # said, not silently dropped
    done = run_to_end(jobs, restore, clock)
    assert done.state is JobState.COMPLETED, (done.failure_reason, done.reports)
    after = registry(jobs, clock)
    if include_keys:
        assert after == before
    else:
        # A keyless backup brings back everything but keys: devices re-created get new SAS keys (x509 too: the
        # service exports "authentication": null, thumbprints included), the gateway that survived keeps its own.
        strip = {k: {f: v for f, v in d.items() if f != "authentication"} for k, d in after.items()}
        assert strip == {k: {f: v for f, v in d.items() if f != "authentication"} for k, d in before.items()}
        assert after[("gw-1", None)]["authentication"] == before[("gw-1", None)]["authentication"]
        assert any("no keys" in n for n in done.notes)


def test_a_slot_left_held_by_a_job_that_ended_is_freed_for_the_next(jobs: Jobs, clock: Clock) -> None:
    """A process that dies after recording a job's end but before freeing the hub's slot must not block the hub."""
    first = run_to_end(jobs, jobs.accept_upload(upload(jobs, "one.jsonl", devices(3)), "devhub"), clock)
    assert first.state is JobState.COMPLETED
    assert jobs.slots.claim("devhub", first.job_id, now=clock())  # as the dead process left it
    nxt = jobs.accept_upload(upload(jobs, "two.jsonl", devices(3, prefix="e")), "devhub")

    started = jobs.start_next("devhub")

    assert started is not None and started.job_id == nxt.job_id
    assert jobs.slots.holder("devhub") == nxt.job_id
    assert run_to_end(jobs, nxt, clock).state is JobState.COMPLETED


class _RefusedCancel(ImportKind):
    """An import whose cancel the hub refuses for good (as a 403 would), to see what the engine does with it."""

    def cancel(self, job: Job, ctx: Context) -> None:
        raise IoTHubAuthError(
            "forbidden", status=403, code=403001, code_name="IotHubUnauthorizedAccess", request_id=None
        )


def test_a_cancel_refused_for_good_ends_the_request_and_never_stops_a_monitor_pass(
    jobs: Jobs, iothub: IoTHubEmulator, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    engine = dataclasses.replace(
        jobs.engine, kinds={**jobs.engine.kinds, JobKind.IMPORT: _RefusedCancel(Snapshots.OFF)}
    )  # the cancel is the subject
    p = Jobs(engine)
    job = p.accept_upload(upload(p, "r.jsonl", devices(3)), "devhub")
    control(iothub, "jobs", {"paused": True})
    running = p.start_next("devhub")
    assert running is not None and running.state is JobState.RUNNING

    with pytest.raises(IoTHubAuthError):  # the caller (the HTTP call) hears why
        engine.cancel(running)
    refused = p.ledger.get("devhub", job.job_id)
    assert not refused.cancel_pending and "refused" in (refused.waiting_for or "")

    # A request left pending by an earlier throttled attempt meets the refusal in a monitor pass: one warning, the
    # pass goes on, the request ends.
    p.ledger.save(dataclasses.replace(refused, cancel_pending=True))
    with caplog.at_level(logging.WARNING):
        p.monitor_pass("devhub")
    after = p.ledger.get("devhub", job.job_id)
    assert after.state is JobState.RUNNING and not after.cancel_pending
    assert any("refused" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    control(iothub, "jobs", {"paused": False})
    assert run_to_end(p, job, clock).state is JobState.COMPLETED
