"""Storage that refuses the hub (a role assignment not yet in effect after a deployment) is a passing fault: the job
is submitted again, longer apart each time, the reason on its row, for a bounded time; then it fails saying what to
check. The hub emulator's ``storageDeniedJobs`` fault fails jobs as the service does ("Unable to access blob ...
IH400007")."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from azure.storage.blob import AccountSasPermissions, BlobServiceClient, ResourceTypes, generate_account_sas

from emulators.azurite import Azurite
from emulators.iothub import IoTHubEmulator
from shared.ledger import JobState
from shared.storage import Storage as LiveStorage

from .helpers import Clock, Jobs, control, devices, hub_count, run_to_end, upload


def test_an_import_refused_storage_by_the_hub_is_retried_and_completes_once_access_is_granted(
    jobs: Jobs, iothub: IoTHubEmulator, clock: Clock
) -> None:
    control(iothub, "faults", {"storageDeniedJobs": 2})
    job = jobs.accept_upload(upload(jobs, "early.jsonl", devices(5)), "devhub")
    seen: list[tuple[JobState, str | None]] = []
    for _ in range(200):
        jobs.monitor_pass("devhub")
        job = jobs.ledger.get("devhub", job.job_id)
        seen.append((job.state, job.waiting_for))
        if job.state is JobState.QUEUED and job.denied_since is not None and job.attempts == 2:
            break
        clock.advance(0.5)
    # After each refusal the job is queued again with the hub's reason and how long it waits, never failed.
    assert job.state is JobState.QUEUED and job.failure_reason is None
    assert job.waiting_for is not None and "IH400007" in job.waiting_for and "role assignment" in job.waiting_for
    assert job.retry_at is not None and job.retry_at > clock()
    assert all(state is not JobState.FAILED for state, _ in seen)
    done = run_to_end(jobs, job, clock)
    assert done.state is JobState.COMPLETED, done.failure_reason
    assert done.attempts == 3 and hub_count(jobs) == 5
    assert [j.status for j in jobs.hubs["devhub"].list_jobs()].count("failed") == 2


def test_an_export_still_refused_after_the_bound_fails_saying_what_to_check(
    jobs: Jobs, iothub: IoTHubEmulator, clock: Clock
) -> None:
    jobs.engine.denied_for = timedelta(minutes=3)
    control(iothub, "faults", {"storageDeniedJobs": 1000})
    job = jobs.queue_export("devhub")
    done = run_to_end(jobs, job, clock)
    assert done.state is JobState.FAILED and done.attempts >= 2
    reason = done.failure_reason or ""
    assert "IH400007" in reason and "still refused after" in reason
    assert "Storage Blob Data Contributor" in reason and "role assignments" in reason
    assert done.waiting_for is None and jobs.slots.holder("devhub") is None
    assert clock() - (done.denied_since or clock()) >= timedelta(minutes=3)


def read_only(jobs: Jobs, azurite: Azurite) -> LiveStorage:
    """The app's storage as a caller whose role lets it read and list only: Azurite answers its writes 403
    AuthorizationPermissionMismatch, as storage does before the app's role assignment is in effect."""
    account = jobs.storage.service.account_name
    sas = generate_account_sas(
        account,
        jobs.storage.service.credential.account_key,
        ResourceTypes(service=True, container=True, object=True),
        AccountSasPermissions(read=True, list=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    conn = f"BlobEndpoint={jobs.storage.service.url};SharedAccessSignature={sas}"
    return LiveStorage(BlobServiceClient.from_connection_string(conn))


def test_storage_refusing_the_app_while_it_submits_is_waited_for_then_the_job_runs(
    jobs: Jobs, azurite: Azurite, clock: Clock
) -> None:
    live = jobs.engine.ctx
    jobs.engine.ctx = replace(live, storage=read_only(jobs, azurite))
    job = jobs.queue_export("devhub")
    refused = jobs.start_next("devhub")
    assert refused is not None and refused.state is JobState.QUEUED and refused.denied_since == clock()
    assert "AuthorizationPermissionMismatch" in (refused.waiting_for or "")
    assert "role assignment" in (refused.waiting_for or "") and jobs.slots.holder("devhub") is None
    jobs.engine.ctx = live  # the role assignment took effect
    done = run_to_end(jobs, job, clock)
    assert done.state is JobState.COMPLETED and done.attempts == 2
