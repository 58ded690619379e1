"""IoT Central applies on the job engine, against Azurite and the IoT Central emulator: an apply interrupted mid-way
is left alone while fresh, and is run again (from a new plan, so no step is repeated) by the monitor once stale; an
error that quotes a secret leaves it nowhere."""

from __future__ import annotations

import json
import logging
import threading
import uuid
from pathlib import Path

import pytest
from azure.data.tables import TableServiceClient

from emulators.azurite import Azurite
from emulators.iotcentral import IoTCentralEmulator
from shared import engine
from shared.central import Central
from shared.config import Containers
from shared.engine import Context, JobEngine
from shared.iotcentral import IoTCentralClient
from shared.kinds import registry
from shared.ledger import HubSlot, Job, JobKind, JobState, Ledger, to_entity
from shared.storage import BlobRef, Storage, StorageSettings

from .helpers import Clock, request_log, wait_until, writes
from .test_dataexport_apply import ENV

SAMPLE = (Path(__file__).resolve().parents[2] / "samples/central/dataexport.json").read_bytes()


class Crash(Exception):
    """Stands for the process dying right after a checkpoint."""


@pytest.fixture
def central_jobs(azurite: Azurite, central: IoTCentralClient, clock: Clock) -> JobEngine:
    return central_engine(azurite, central, clock, ENV)


def central_engine(azurite: Azurite, central: IoTCentralClient, clock: Clock, env: dict[str, str]) -> JobEngine:
    """The engine with the IoT Central apply kind, on its own containers and table; ``env``: the app settings."""
    prefix = f"c{uuid.uuid4().hex[:8]}"
    tables = TableServiceClient.from_connection_string(azurite.connection_string)
    storage = Storage.from_settings(StorageSettings(connection_string=azurite.connection_string))
    containers = Containers(f"{prefix}-uploads", f"{prefix}-reports", f"{prefix}-archive", f"{prefix}-backups")
    storage.ensure_container(containers.uploads)
    table = tables.create_table_if_not_exists(f"{prefix}jobs")
    kinds, off = registry(retention_days=None, central=Central(storage, central, env, containers, clock=clock))
    return JobEngine(Context(storage, Ledger(table), containers, {}, clock), HubSlot(table), kinds, off)


def wait(e: JobEngine, job: Job, seconds: float) -> Job:
    """The job once it has ended, or as it stands after ``seconds``."""
    if job.state.is_terminal:
        return job
    try:
        return wait_until(lambda: e.ledger.get(job.hub, job.job_id), lambda j: j.state.is_terminal, deadline=seconds)
    except TimeoutError:
        return e.ledger.get(job.hub, job.job_id)


def test_the_monitor_runs_again_an_apply_a_crash_interrupted(
    central_jobs: JobEngine, iotcentral: IoTCentralEmulator, clock: Clock
) -> None:
    e = central_jobs
    storage, containers = e.ctx.storage, e.ctx.containers
    etag = storage.upload_bytes(containers.uploads, "central/dataexport.json", SAMPLE)
    ref = BlobRef(containers.uploads, "central/dataexport.json", etag)
    job = e.accept(e.draft(JobKind.CENTRAL_APPLY, "central", source=ref))
    assert job.state is JobState.QUEUED and sum(job.steps.values()) == 7
    crash = _Once()
    engine.CHECKPOINTS.append(crash)
    try:
        with pytest.raises(Crash):
            e.start_next("central")
    finally:
        engine.CHECKPOINTS.remove(crash)
    (job,) = list(e.ledger.iter_active("central"))
    assert job.state is JobState.SUBMITTING and job.progress == 14  # 1 of 7 steps
    assert e.monitor_pass("central") == [], "a fresh job may belong to a live instance: left alone"
    assert wait(e, job, 0.3).state is JobState.SUBMITTING  # nobody finishes it: as it stands
    clock.advance(minutes=3)
    # The monitor runs it again in another thread while an HTTP apply of the same upload waits for the end.
    resumed: list[Job] = []
    monitor = threading.Thread(target=lambda: resumed.extend(e.monitor_pass("central")))
    monitor.start()
    waited = wait(e, job, 60)
    monitor.join()
    assert [j.state for j in resumed] == [JobState.QUEUED, JobState.COMPLETED]  # queued again, then run
    done = resumed[-1]
    assert done.attempts == 2 and done.job_id == job.job_id
    assert waited.state is JobState.COMPLETED
    assert list(e.ledger.iter_active("central")) == []
    assert storage.list_names(containers.archive, "") == [f"processed/{job.job_id}/central/dataexport.json"]
    log = request_log(iotcentral)
    assert len([w for w in writes(log) if w[0] == "PUT"]) == 7, "the step done before the crash is not repeated"


class _Once:
    """A checkpoint observer that crashes after the first apply step, once."""

    def __init__(self) -> None:
        self.fired = False

    def __call__(self, step: str) -> None:
        if step == "central_step" and not self.fired:
            self.fired = True
            raise Crash


ECHOED_KEY = "ZWNob2VkLWFjY291bnQta2V5LW5ldmVyLXNob3duIQ=="
# No AccountName: the app cannot tell (it checks only the Name=value shape), the service refuses it and quotes it.
UNUSABLE_STORAGE = f"DefaultEndpointsProtocol=https;AccountKey={ECHOED_KEY};EndpointSuffix=core.windows.net"


def test_an_error_quoting_a_secret_leaves_it_out_of_report_ledger_and_log(
    azurite: Azurite,
    central: IoTCentralClient,
    clock: Clock,
    iotcentral: IoTCentralEmulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    e = central_engine(azurite, central, clock, {**ENV, "CENTRAL_ARCHIVE_STORAGE": UNUSABLE_STORAGE})
    storage, containers = e.ctx.storage, e.ctx.containers
    caplog.set_level(logging.DEBUG)
    etag = storage.upload_bytes(containers.uploads, "central/dataexport.json", SAMPLE)
    queued = e.accept(
        e.draft(JobKind.CENTRAL_APPLY, "central", source=BlobRef(containers.uploads, "central/dataexport.json", etag))
    )
    e.start_next("central")
    job = e.ledger.get("central", queued.job_id)
    # The premise: the apply failed on that value and the service's answer quoted it, key and all.
    assert job.state is JobState.FAILED and job.failure_reason and "archive-blob" in job.failure_reason
    refused = [e for e in request_log(iotcentral) if e["status"] == 400]
    assert refused and ECHOED_KEY in json.dumps(refused[0]["response"])
    assert "not valid" in job.failure_reason, "the service's reason still reaches the job, scrubbed"
    report = b"".join(storage.open_read(BlobRef.parse(job.reports["result"]))).decode()
    row = json.dumps(to_entity(e.ledger.get(job.hub, job.job_id)), default=str)
    places = {"report": report, "ledger": row, "log": caplog.text}
    secrets = {
        "connection string": UNUSABLE_STORAGE,
        "its key": ECHOED_KEY,
        "alerts key": ENV["CENTRAL_ALERTS_API_KEY"],
    }
    leaks = [(where, name) for where, text in places.items() for name, value in secrets.items() if value in text]
    assert leaks == [], "secrets reached these places"
    assert "*****" in report, "the quoted value is masked, not dropped with the rest of the message"


def test_a_manual_backup_reads_the_app_anew_in_the_same_hour_and_the_nightly_one_once_an_hour(
    azurite: Azurite, central: IoTCentralClient, clock: Clock
) -> None:
    prefix = f"b{uuid.uuid4().hex[:8]}"
    storage = Storage.from_settings(StorageSettings(connection_string=azurite.connection_string))
    containers = Containers(f"{prefix}-uploads", f"{prefix}-reports", f"{prefix}-archive", f"{prefix}-backups")
    app = Central(storage, central, ENV, containers, clock=clock)
    webhook = {"displayName": "Hook", "type": "webhook@v1", "url": "https://hooks.example.com/a"}
    central.put("destinations", "hook-1", webhook)
    first = app.backup(manual=True)
    assert first["destinations"] == 1
    clock.advance(5)  # the same UTC hour
    central.put("destinations", "hook-2", {**webhook, "url": "https://hooks.example.com/b"})
    second = app.backup(manual=True)
    assert second["destinations"] == 2 and second["folder"] != first["folder"]  # never the stale one
    written = json.loads(b"".join(storage.open_read(BlobRef.parse(f"{second['folder']}/dataexport.json"))))
    assert set(written["destinations"]) == {"hook-1", "hook-2"}

    clock.advance(60)  # the next hour
    nightly = app.backup()
    clock.advance(1)
    central.put("destinations", "hook-3", {**webhook, "url": "https://hooks.example.com/c"})
    again = app.backup()  # a timer fired twice in one hour writes once
    assert again["folder"] == nightly["folder"] and again["destinations"] == nightly["destinations"] == 2
    assert app.backup(manual=True)["destinations"] == 3
