"""The app's key flows (imports, per-device errors, a busy hub, crash recovery, throttling, cancel, backups with
configurations and restore) against the IoT Hub emulator in realistic mode: an S1 hub with one unit at a small
--time-scale, so its throttles, job times, progress (0 until a job ends) and query lag all apply.

Counts read through the statistics lag behind writes, as on the service: they are read with a bounded wait
(``settled``), never right after a job. No assertion is on a duration."""

from __future__ import annotations

import contextlib
import json
import uuid
from datetime import timedelta
from typing import Any

import pytest
import requests

from emulators.azurite import Azurite
from emulators.iothub import IoTHubEmulator
from emulators.iothub.quotas import Profile
from shared.kinds._hub import _urls
from shared.ledger import JobState
from shared.retry import RetryPolicy
from shared.storage import BlobRef

from .conftest import REALISTIC, engine_on
from .helpers import FAST, Clock, Jobs, control, devices, hub_call, hub_count, run_to_end, upload, wait_until
from .test_safety import backup, keyed, read, registry

pytestmark = pytest.mark.realistic


def settled(p: Jobs, expected: int) -> int:
    """The hub's device count once the statistics have caught up with ``expected`` (they lag writes, as the
    service's do); the deadline only stops a hung test, and the last count read is returned either way."""
    seen: list[int] = []
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: seen.append(hub_count(p)) or seen[-1] == expected, deadline=30)
    return seen[-1]


def usage(emu: IoTHubEmulator) -> dict[str, Any]:
    r = requests.get(f"{emu.url}/_emulator/usage", verify=str(emu.ca_path), timeout=10)
    r.raise_for_status()
    body: dict[str, Any] = r.json()
    return body


def config_call(
    emu: IoTHubEmulator, method: str, path: str, body: Any = None, if_match: str | None = None
) -> requests.Response:
    return hub_call(emu, method, path, body=body, extra={"If-Match": if_match} if if_match else None)


def configuration(config_id: str, site: str, priority: int) -> dict[str, Any]:
    return {
        "id": config_id,
        "labels": {"team": "ops"},
        "content": {"deviceContent": {"properties.desired.fw": {"version": "1.0"}}},  # never changes once created
        "targetCondition": f"tags.site='{site}'",
        "priority": priority,
        "metrics": {"queries": {"current": "SELECT deviceId FROM devices WHERE properties.reported.fw.version='1'"}},
    }


# What the hub generates on every write of a configuration: never part of what a restore compares.
CONFIG_GENERATED = {"etag", "createdTimeUtc", "lastUpdatedTimeUtc", "systemMetrics"}


def configurations(emu: IoTHubEmulator) -> dict[str, dict[str, Any]]:
    r = config_call(emu, "GET", "/configurations")
    assert r.status_code == 200, r.text
    return {c["id"]: {k: v for k, v in c.items() if k not in CONFIG_GENERATED} for c in r.json()}


# --- imports ----------------------------------------------------------------------------------------------


def test_an_upload_is_imported_and_its_devices_show_after_the_lag(realistic_jobs: Jobs, clock: Clock) -> None:
    ref = upload(realistic_jobs, "fleet.jsonl", devices(10))
    job = realistic_jobs.accept_upload(ref, "devhub")
    started = realistic_jobs.start_next("devhub")
    assert started is not None and started.state is JobState.RUNNING and started.progress == 0
    done = run_to_end(realistic_jobs, job, clock)
    assert done.state is JobState.COMPLETED and done.progress == 100 and done.failed_devices == 0
    assert settled(realistic_jobs, 10) == 10
    assert done.archived == f"{realistic_jobs.containers.archive}/processed/{job.job_id}/fleet.jsonl"
    assert realistic_jobs.storage.properties(BlobRef.parse(done.archived)) is not None
    assert realistic_jobs.slots.holder("devhub") is None


def test_per_device_errors_end_completed_with_errors(realistic_jobs: Jobs, clock: Clock) -> None:
    realistic_jobs.hubs["devhub"].bulk_update([{"id": "taken", "status": "enabled", "importMode": "create"}])
    lines: list[dict[str, Any] | str] = [
        *devices(3),
        {"id": "taken", "status": "enabled", "importMode": "create"},
        {"id": "ghost", "status": "enabled", "importMode": "update"},
    ]
    job = run_to_end(
        realistic_jobs, realistic_jobs.accept_upload(upload(realistic_jobs, "m.jsonl", lines), "devhub"), clock
    )
    assert job.state is JobState.COMPLETED_WITH_ERRORS and job.failed_devices == 2
    assert settled(realistic_jobs, 4) == 4


def test_a_busy_hub_keeps_the_job_queued(realistic_jobs: Jobs, realistic_hub: IoTHubEmulator, clock: Clock) -> None:
    control(realistic_hub, "jobs", {"paused": True})
    work = realistic_jobs.storage.ensure_container(f"foreign-{uuid.uuid4().hex[:8]}").container_name
    foreign = realistic_jobs.hubs["devhub"].create_export_job(
        realistic_jobs.storage.sas.container_sas_url(work, "rwdl")
    )
    job = realistic_jobs.accept_upload(upload(realistic_jobs, "wait.jsonl", devices(2)), "devhub")
    waiting = realistic_jobs.start_next("devhub")
    assert waiting is not None and waiting.state is JobState.QUEUED and "busy" in (waiting.waiting_for or "")
    realistic_jobs.hubs["devhub"].cancel_job(foreign.job_id)
    control(realistic_hub, "jobs", {"paused": False})
    assert run_to_end(realistic_jobs, job, clock).state is JobState.COMPLETED


# --- crash recovery ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("hub_took_it", [False, True])
def test_a_submission_cut_short_by_a_crash_runs_once(realistic_jobs: Jobs, clock: Clock, hub_took_it: bool) -> None:
    job = realistic_jobs.accept_upload(upload(realistic_jobs, "c.jsonl", devices(2)), "devhub")
    realistic_jobs.slots.claim("devhub", job.job_id, now=clock())
    job = realistic_jobs.ledger.move(job, JobState.SUBMITTING, now=clock())
    created = None
    if hub_took_it:  # the hub took the job, and the process died before recording it
        created = realistic_jobs.hubs["devhub"].create_import_job(*_urls(job, realistic_jobs.engine.ctx))
    clock.advance(5)
    done = run_to_end(realistic_jobs, job, clock)
    # Adopted, the job was never submitted by the engine; queued again, it was submitted once.
    assert done.state is JobState.COMPLETED and done.attempts == (0 if hub_took_it else 1)
    hub_jobs = [j.job_id for j in realistic_jobs.hubs["devhub"].list_jobs()]
    assert len(hub_jobs) == 1 and (created is None or hub_jobs == [created.job_id] == [done.hub_job_id])
    assert settled(realistic_jobs, 2) == 2


# --- throttling -------------------------------------------------------------------------------------------


def test_the_client_waits_out_a_real_throttle_by_its_retry_after(realistic_hub: IoTHubEmulator) -> None:
    # 100 jobs operations in 5 minutes (the service's per-minute pace, slowed so that the client's call comes
    # within the 3 s a token takes even when parallel test workers slow it), nothing held: the bucket is emptied,
    # then the client asks.
    realistic_hub.set_profile(Profile("S1", 1, time_scale=5, shaping_seconds=0))
    for _ in range(300):
        if config_call(realistic_hub, "GET", "/jobs").status_code == 429:
            break
    assert usage(realistic_hub)["throttled"] == {"jobs": 1}
    from shared.iothub import IoTHubClient

    client = IoTHubClient.from_connection_string(realistic_hub.connection_string(), retry=FAST)
    assert client.list_jobs() == []
    # Refused once more, then served after the Retry-After: a client that retried at its own (50 ms) pace would
    # have been refused again and again while the bucket refilled.
    assert usage(realistic_hub)["throttled"] == {"jobs": 2}


def test_a_throttled_submission_waits_at_least_the_hubs_retry_after(
    azurite: Azurite, realistic_hub: IoTHubEmulator, clock: Clock
) -> None:
    # A client that leaves long waits to the engine, and an engine whose own first back-off is shorter than the
    # hub's Retry-After: the job must still not come back before the hub said.
    patient = RetryPolicy(max_retries=6, backoff_factor=0.01, backoff_max=0.05, total_timeout=30, max_retry_after=1)
    p = engine_on(azurite, realistic_hub, clock, retry=patient, retry_base=timedelta(seconds=0.1))
    job = p.accept_upload(upload(p, "t.jsonl", devices(3)), "devhub")
    control(realistic_hub, "faults", {"rate": 1.0, "statuses": [429], "retryAfter": 5})
    waiting = p.start_next("devhub")
    control(realistic_hub, "faults", {"rate": 0})
    assert waiting is not None and waiting.state is JobState.QUEUED and "throttled" in (waiting.waiting_for or "")
    assert waiting.retry_at is not None and waiting.retry_at - clock() >= timedelta(seconds=5)
    assert p.hubs["devhub"].list_jobs() == [] and p.slots.holder("devhub") is None
    clock.advance(1 / 60)  # a second later: still waiting
    assert p.start_next("devhub") is None
    done = run_to_end(p, job, clock)
    assert done.state is JobState.COMPLETED and done.attempts == 2 and done.failure_reason is None
    assert settled(p, 3) == 3


# --- cancel -----------------------------------------------------------------------------------------------


def test_a_cancelled_import_says_any_part_may_have_been_applied(
    realistic_jobs: Jobs, realistic_hub: IoTHubEmulator, clock: Clock
) -> None:
    realistic_hub.set_profile(Profile("S1", 1, time_scale=0.5))  # an import runs at least 6 s: time to cancel
    job = realistic_jobs.accept_upload(upload(realistic_jobs, "big.jsonl", devices(500)), "devhub")
    started = realistic_jobs.start_next("devhub")
    assert started is not None and started.hub_job_id
    cancelling = realistic_jobs.cancel(realistic_jobs.ledger.get("devhub", job.job_id))
    assert cancelling.state is JobState.RUNNING and cancelling.waiting_for == "cancellation requested"
    done = run_to_end(realistic_jobs, job, clock)
    assert done.state is JobState.CANCELLED
    # The hub reported no progress (0 until a job ends, as recorded): nothing tells how far it got.
    assert "any part of the file may have been applied" in (done.failure_reason or "")
    summary = json.loads(read(realistic_jobs, done.reports["summary"]))
    assert summary["job"]["state"] == "cancelled"


# --- backups and restore ----------------------------------------------------------------------------------


def test_a_backup_holds_the_configurations_and_a_restore_brings_everything_back(
    realistic_jobs: Jobs, realistic_hub: IoTHubEmulator, clock: Clock
) -> None:
    p = realistic_jobs
    run_to_end(p, p.accept_upload(upload(p, "seed.jsonl", keyed(12)), "devhub"), clock)
    for config_id, site, priority in (("fw-oslo", "oslo", 10), ("fw-lyon", "lyon", 20)):
        r = config_call(realistic_hub, "PUT", f"/configurations/{config_id}", configuration(config_id, site, priority))
        assert r.status_code == 200, r.text
    taken = backup(p, clock)
    folder = taken.backup_folder
    manifest = json.loads(read(p, taken.reports["manifest"]))
    assert (manifest["devices"], manifest["configurations"]) == (12, 2)
    assert manifest["configurationsBlob"] == "configurations.txt"
    saved = read(p, f"{p.containers.backups}/{folder}/configurations.txt")
    assert sorted(json.loads(x)["id"] for x in saved.splitlines()) == ["fw-lyon", "fw-oslo"]
    devices_before, configs_before = registry(p, clock), configurations(realistic_hub)

    # Drift: devices deleted, a configuration retargeted, another deleted.
    drift = [{"id": f"r-{i}", "importMode": "delete"} for i in range(6)]
    run_to_end(p, p.accept_upload(upload(p, "drift.jsonl", drift), "devhub"), clock)
    changed = {**configuration("fw-oslo", "bergen", 99)}
    assert config_call(realistic_hub, "PUT", "/configurations/fw-oslo", changed, if_match="*").status_code == 200
    assert config_call(realistic_hub, "DELETE", "/configurations/fw-lyon", if_match="*").status_code == 204
    assert settled(p, 6) == 6 and configurations(realistic_hub) != configs_before

    job = p.accept_restore("devhub", folder or "")
    assert job.state is JobState.QUEUED and any("2 configuration(s)" in n for n in job.notes)
    done = run_to_end(p, job, clock)
    assert done.state is JobState.COMPLETED, (done.failure_reason, done.reports)
    assert configurations(realistic_hub) == configs_before
    assert registry(p, clock) == devices_before
    assert settled(p, 12) == 12
    summary = json.loads(read(p, done.reports["summary"]))
    assert summary["configurations"] == {"staged": 2, "refused": 0}
    # Read in place: the backup's configurations are as they were.
    assert read(p, f"{p.containers.backups}/{folder}/configurations.txt") == saved


def test_a_configuration_the_hub_refuses_is_reported_and_the_restore_ends_with_errors(
    realistic_jobs: Jobs, realistic_hub: IoTHubEmulator, clock: Clock
) -> None:
    p = realistic_jobs
    run_to_end(p, p.accept_upload(upload(p, "seed.jsonl", devices(2)), "devhub"), clock)
    assert config_call(realistic_hub, "PUT", "/configurations/fw", configuration("fw", "oslo", 1)).status_code == 200
    folder = backup(p, clock).backup_folder
    # Content never changes once created: a configuration recreated with other content cannot be restored over.
    assert config_call(realistic_hub, "DELETE", "/configurations/fw", if_match="*").status_code == 204
    other = {**configuration("fw", "oslo", 1), "content": {"deviceContent": {"properties.desired.fw": {"v": 2}}}}
    assert config_call(realistic_hub, "PUT", "/configurations/fw", other).status_code == 200
    done = run_to_end(p, p.accept_restore("devhub", folder or ""), clock)
    assert done.state is JobState.COMPLETED_WITH_ERRORS and done.failed_devices == 0
    assert "configErrors" in done.reports and any("refused 1 of 1 configuration" in n for n in done.notes)
    refused = [json.loads(x) for x in read(p, done.reports["configErrors"]).splitlines()]
    assert [r.get("configurationId") for r in refused] == ["fw"]


def test_a_backup_without_configurations_when_the_setting_is_off(
    azurite: Azurite, realistic_hub: IoTHubEmulator, clock: Clock
) -> None:
    assert config_call(realistic_hub, "PUT", "/configurations/fw", configuration("fw", "oslo", 1)).status_code == 200
    jobs = engine_on(azurite, realistic_hub, clock)  # BACKUP_INCLUDE_CONFIGURATIONS unset
    taken = backup(jobs, clock)
    manifest = json.loads(read(jobs, taken.reports["manifest"]))
    assert "configurations" not in manifest and "configurations" not in taken.reports
    names = jobs.storage.list_names(jobs.containers.backups, taken.backup_folder or "")
    assert sorted(n.rsplit("/", 1)[1] for n in names) == ["devices.txt", "manifest.json"]


def test_a_damaged_configurations_file_rejects_the_restore(realistic_jobs: Jobs, clock: Clock) -> None:
    run_to_end(
        realistic_jobs, realistic_jobs.accept_upload(upload(realistic_jobs, "s.jsonl", devices(2)), "devhub"), clock
    )
    folder = backup(realistic_jobs, clock).backup_folder
    name = f"{folder}/configurations.txt"
    realistic_jobs.storage.upload_bytes(realistic_jobs.containers.backups, name, b'{"id":"intruder"}\n')
    job = realistic_jobs.accept_restore("devhub", folder or "")
    assert job.state is JobState.REJECTED and "configurations.txt" in (job.failure_reason or "")
    assert realistic_jobs.start_next("devhub") is None


def test_the_profile_is_realistic(realistic_hub: IoTHubEmulator) -> None:
    # The selection above means nothing against a fast hub: it runs under S1's rules.
    profile = usage(realistic_hub)["profile"]
    assert (profile["sku"], profile["units"], profile["timeScale"]) == ("S1", 1, REALISTIC.time_scale)
    assert profile["queryLagSeconds"] > 0
