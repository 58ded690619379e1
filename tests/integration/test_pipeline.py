"""The job engine against Azurite and the IoT Hub emulator: the import flow, step by step."""

from __future__ import annotations

import json
import uuid

from azure.storage.blob import BlobServiceClient

from emulators.azurite import Azurite
from emulators.iothub import IoTHubEmulator
from shared.kinds._hub import _urls
from shared.ledger import Job, JobKind, JobState
from shared.storage import BlobRef
from shared.views import job_view

from .helpers import KEY, Clock, Jobs, control, devices, hub_count, run_to_end, upload, wait_until


def test_good_upload_is_imported_and_archived(jobs: Jobs, clock: Clock) -> None:
    ref = upload(jobs, "fleet.jsonl", devices(10))
    job = jobs.accept_upload(ref, "devhub")
    assert (job.state, job.lines, job.modes) == (JobState.QUEUED, 10, {"createOrUpdate": 10})
    started = jobs.start_next("devhub")
    assert started is not None and started.state is JobState.RUNNING and started.hub_job_id
    assert jobs.slots.holder("devhub") == job.job_id
    done = run_to_end(jobs, job, clock)
    assert done.state is JobState.COMPLETED and done.progress == 100 and done.failed_devices == 0
    assert hub_count(jobs) == 10
    assert jobs.storage.properties(BlobRef(ref.container, ref.name)) is None
    archived = BlobRef(jobs.containers.archive, f"processed/{job.job_id}/fleet.jsonl")
    assert jobs.storage.properties(archived) is not None
    assert jobs.slots.holder("devhub") is None
    assert "summary" in done.reports


def test_bad_upload_is_rejected_with_a_report_and_the_hub_untouched(jobs: Jobs) -> None:
    ref = upload(jobs, "bad.jsonl", [*devices(3), {"id": "x y", "status": "enabled"}, '{"id":'])
    job = jobs.accept_upload(ref, "devhub")
    assert job.state is JobState.REJECTED and job.validation_errors == 2
    container, path = job.reports["rejection"].split("/", 1)
    report = json.loads(b"".join(jobs.storage.open_read(BlobRef(container, path))))
    assert [(e["line"], e["code"]) for e in report["errors"]] == [(4, "INVALID_DEVICE_ID"), (5, "INVALID_JSON")]
    assert jobs.start_next("devhub") is None
    assert hub_count(jobs) == 0 and jobs.hubs["devhub"].list_jobs() == []
    assert jobs.storage.properties(BlobRef(jobs.containers.archive, f"failed/{job.job_id}/bad.jsonl"))
    assert jobs.storage.properties(BlobRef(ref.container, ref.name)) is None
    assert not jobs.storage.service.get_container_client(job.work_container).exists()


def test_duplicate_delivery_gives_one_job(jobs: Jobs, clock: Clock) -> None:
    ref = upload(jobs, "twice.jsonl", devices(2))
    first = jobs.accept_upload(ref, "devhub")
    second = jobs.accept_upload(ref, "devhub")
    assert first.job_id == second.job_id
    assert len(jobs.ledger.list_jobs("devhub")[0]) == 1
    run_to_end(jobs, first, clock)
    assert jobs.accept_upload(ref, "devhub").state is JobState.COMPLETED  # a late redelivery does nothing
    assert len(jobs.hubs["devhub"].list_jobs()) == 1


def test_per_device_hub_errors_end_completed_with_errors(jobs: Jobs, clock: Clock) -> None:
    jobs.hubs["devhub"].bulk_update([{"id": "taken", "status": "enabled", "importMode": "create"}])
    ref = upload(
        jobs,
        "mixed.jsonl",
        [
            *devices(3),
            {"id": "taken", "status": "enabled", "importMode": "create"},
            {"id": "ghost", "status": "enabled", "importMode": "update"},
        ],
    )
    job = run_to_end(jobs, jobs.accept_upload(ref, "devhub"), clock)
    assert job.state is JobState.COMPLETED_WITH_ERRORS and job.failed_devices == 2
    container, path = job.reports["errorsCsv"].split("/", 1)
    csv_text = b"".join(jobs.storage.open_read(BlobRef(container, path))).decode()
    assert "taken,,409001,DeviceAlreadyExists" in csv_text and "ghost,,404001,DeviceNotFound" in csv_text


def test_busy_hub_keeps_the_job_queued(jobs: Jobs, iothub: IoTHubEmulator, clock: Clock) -> None:
    control(iothub, "jobs", {"paused": True})
    work = jobs.storage.ensure_container(f"foreign-{uuid.uuid4().hex[:8]}").container_name
    foreign = jobs.hubs["devhub"].create_export_job(jobs.storage.sas.container_sas_url(work, "rwdl"))
    job = jobs.accept_upload(upload(jobs, "wait.jsonl", devices(2)), "devhub")
    waiting = jobs.start_next("devhub")
    assert waiting is not None and waiting.state is JobState.QUEUED and "busy" in (waiting.waiting_for or "")
    assert jobs.slots.holder("devhub") is None
    jobs.hubs["devhub"].cancel_job(foreign.job_id)
    control(iothub, "jobs", {"paused": False})
    assert run_to_end(jobs, job, clock).state is JobState.COMPLETED


def test_crash_before_the_hub_job_was_created_requeues(jobs: Jobs, clock: Clock) -> None:
    job = jobs.accept_upload(upload(jobs, "c1.jsonl", devices(2)), "devhub")
    assert jobs.slots.claim("devhub", job.job_id, now=clock())
    jobs.ledger.move(job, JobState.SUBMITTING, now=clock())  # ... and the process died here
    assert jobs.monitor_pass("devhub") == []  # still within the grace period: another instance may be submitting
    clock.advance(5)
    done = run_to_end(jobs, job, clock)
    assert done.state is JobState.COMPLETED and done.attempts == 1
    assert len(jobs.hubs["devhub"].list_jobs()) == 1


def test_crash_after_the_hub_job_was_created_adopts_it(jobs: Jobs, clock: Clock) -> None:
    job = jobs.accept_upload(upload(jobs, "c2.jsonl", devices(2)), "devhub")
    jobs.slots.claim("devhub", job.job_id, now=clock())
    job = jobs.ledger.move(job, JobState.SUBMITTING, now=clock())
    inp, out = _urls(job, jobs.engine.ctx)
    created = jobs.hubs["devhub"].create_import_job(inp, out)  # the hub took it; we died before recording
    clock.advance(5)
    done = run_to_end(jobs, job, clock)
    assert done.state is JobState.COMPLETED and done.hub_job_id == created.job_id
    assert [j.job_id for j in jobs.hubs["devhub"].list_jobs()] == [created.job_id]  # never submitted twice


def test_the_flow_rides_out_injected_faults(jobs: Jobs, iothub: IoTHubEmulator, clock: Clock) -> None:
    job = jobs.accept_upload(upload(jobs, "faults.jsonl", devices(20)), "devhub")
    control(iothub, "faults", {"rate": 0.3, "statuses": [429, 500, 503], "retryAfter": 0, "seed": 5})
    clock_step = 3  # minutes per pass: lets a submission hit by a 500 be reconciled

    def step() -> Job:
        current = jobs.ledger.get("devhub", job.job_id)
        if not current.state.is_terminal:
            try:
                jobs.monitor_pass("devhub")
            except Exception as exc:  # a monitor pass may fail; the next one carries on (as the timer would)
                assert "IoT Hub" in str(exc)
            clock.advance(clock_step)
        return current

    job = wait_until(step, lambda j: j.state.is_terminal, deadline=90, interval=0, what="the job under faults")
    control(iothub, "faults", {"rate": 0})
    assert job.state is JobState.COMPLETED
    assert hub_count(jobs) == 20
    assert len(jobs.hubs["devhub"].list_jobs()) == 1


def test_no_secrets_in_ledger_or_reports(jobs: Jobs, azurite: Azurite, clock: Clock) -> None:
    lines = [
        {
            "id": f"k-{i}",
            "status": "enabled",
            "importMode": "create",
            "authentication": {"symmetricKey": {"primaryKey": KEY, "secondaryKey": KEY}},
        }
        for i in range(3)
    ]
    jobs.hubs["devhub"].bulk_update([{"id": "k-0", "status": "enabled"}])
    job = run_to_end(jobs, jobs.accept_upload(upload(jobs, "keys.jsonl", lines), "devhub"), clock)
    assert job.state is JobState.COMPLETED_WITH_ERRORS
    texts = [json.dumps(dict(e), default=str) for e in jobs.ledger.table.list_entities()]
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    reports = service.get_container_client(jobs.containers.reports)
    texts += [reports.download_blob(b.name).readall().decode() for b in reports.list_blobs()]
    assert len(texts) > 3
    for text in texts:
        assert KEY not in text and "sig=" not in text and "SharedAccessKey" not in text and "AccountKey" not in text


def test_a_data_export_file_while_central_is_off_is_rejected_with_a_finding_that_says_what_to_set(jobs: Jobs) -> None:
    etag = jobs.storage.upload_bytes(jobs.containers.uploads, "central/exports.json", b'{"exports": {}}')
    ref = BlobRef(jobs.containers.uploads, "central/exports.json", etag)
    job = jobs.engine.accept(jobs.engine.draft(JobKind.CENTRAL_APPLY, "central", source=ref))
    assert job.state is JobState.REJECTED and job.validation_errors == 1
    container, path = job.reports["rejection"].split("/", 1)
    report = json.loads(b"".join(jobs.storage.open_read(BlobRef(container, path))))
    (finding,) = report["errors"]
    assert finding["code"] == "KIND_NOT_CONFIGURED" and report["errorCount"] == 1
    assert "IoT Central is not configured" in finding["message"]
    assert "IOTCENTRAL_APP_URL" in finding["fix"]


def test_summary_shows_the_devices_an_import_applied_and_no_count_where_it_means_nothing(
    jobs: Jobs, clock: Clock
) -> None:
    ref = upload(jobs, "mixed.jsonl", [*devices(4), {"id": "gone", "importMode": "delete"}])
    done = run_to_end(jobs, jobs.accept_upload(ref, "devhub"), clock)
    assert done.state is JobState.COMPLETED_WITH_ERRORS and done.failed_devices == 1  # 'gone' does not exist
    container, path = done.reports["summary"].split("/", 1)
    summary = json.loads(b"".join(jobs.storage.open_read(BlobRef(container, path))))
    assert summary["job"]["devices"] == 4 and summary["job"]["lines"] == 5
    bad = jobs.accept_upload(upload(jobs, "bad.jsonl", ['{"id":']), "devhub")
    assert bad.state is JobState.REJECTED
    assert "devices" not in job_view(bad)
