"""shared.central against Azurite and the IoT Central emulator: an apply interrupted mid-way is left running, is not
touched while fresh, and is finished by the monitor's pass once stale; an error that quotes a secret leaves it
nowhere."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from azure.data.tables import TableServiceClient

from emulators.azurite import Azurite
from emulators.iotcentral import IoTCentralEmulator
from shared import pipeline
from shared.central import Central
from shared.config import Containers
from shared.iotcentral import IoTCentralClient
from shared.ledger import Job, JobState, Ledger
from shared.storage import BlobRef, Storage, StorageSettings

from .helpers import Clock, request_log, writes
from .test_dataexport_apply import ENV

SAMPLE = (Path(__file__).resolve().parents[2] / "samples/central/dataexport.json").read_bytes()


class Crash(Exception):
    """Stands for the process dying right after a checkpoint."""


@pytest.fixture
def central_jobs(azurite: Azurite, central: IoTCentralClient, clock: Clock) -> Central:
    prefix = f"c{uuid.uuid4().hex[:8]}"
    tables = TableServiceClient.from_connection_string(azurite.connection_string)
    storage = Storage.from_settings(StorageSettings(connection_string=azurite.connection_string))
    containers = Containers(f"{prefix}-uploads", f"{prefix}-reports", f"{prefix}-archive", f"{prefix}-backups")
    storage.ensure_container(containers.uploads)
    return Central(Ledger.from_service(tables, f"{prefix}jobs"), storage, central, ENV, containers, clock=clock)


def test_the_monitor_finishes_an_apply_a_crash_left_running(
    central_jobs: Central, iotcentral: IoTCentralEmulator, clock: Clock
) -> None:
    c = central_jobs
    etag = c.storage.upload_bytes(c.containers.uploads, "central/dataexport.json", SAMPLE)
    ref = BlobRef(c.containers.uploads, "central/dataexport.json", etag)
    crash = _Once()
    pipeline.CHECKPOINTS.append(crash)
    try:
        with pytest.raises(Crash):
            c.accept(ref)
    finally:
        pipeline.CHECKPOINTS.remove(crash)
    (job,) = list(c.ledger.iter_active("central"))
    assert job.state is JobState.RUNNING and job.progress == 14  # 1 of 7 steps
    assert c.resume_stale() == [], "a fresh job may belong to a live instance: left alone"
    assert c.wait(job, timedelta(seconds=0.3)).state is JobState.RUNNING  # nobody finishes it: as it stands
    clock.advance(minutes=3)
    # The monitor finishes it in another thread while an HTTP apply of the same upload waits for the end.
    resumed: list[Job] = []
    monitor = threading.Thread(target=lambda: resumed.extend(c.resume_stale()))
    monitor.start()
    waited = c.wait(job, timedelta(seconds=60))
    monitor.join()
    (done,) = resumed
    assert done.state is JobState.COMPLETED and done.attempts == 1 and done.job_id == job.job_id
    assert waited.state is JobState.COMPLETED
    assert list(c.ledger.iter_active("central")) == []
    assert c.storage.list_names(c.containers.archive, "") == [f"processed/{job.job_id}/central/dataexport.json"]
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
    central_jobs: Central, iotcentral: IoTCentralEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    c = dataclasses.replace(central_jobs, env={**ENV, "CENTRAL_ARCHIVE_STORAGE": UNUSABLE_STORAGE})
    caplog.set_level(logging.DEBUG)
    etag = c.storage.upload_bytes(c.containers.uploads, "central/dataexport.json", SAMPLE)
    job = c.accept(BlobRef(c.containers.uploads, "central/dataexport.json", etag))
    # The premise: the apply failed on that value and the service's answer quoted it, key and all.
    assert job.state is JobState.FAILED and job.failure_reason and "archive-blob" in job.failure_reason
    refused = [e for e in request_log(iotcentral) if e["status"] == 400]
    assert refused and ECHOED_KEY in json.dumps(refused[0]["response"])
    assert "not valid" in job.failure_reason, "the service's reason still reaches the job, scrubbed"
    report = b"".join(c.storage.open_read(BlobRef(*job.reports["result"].split("/", 1)))).decode()
    row = json.dumps(c.ledger.get(job.hub, job.job_id).to_entity(), default=str)
    places = {"report": report, "ledger": row, "log": caplog.text}
    secrets = {
        "connection string": UNUSABLE_STORAGE,
        "its key": ECHOED_KEY,
        "alerts key": ENV["CENTRAL_ALERTS_API_KEY"],
    }
    leaks = [(where, name) for where, text in places.items() for name, value in secrets.items() if value in text]
    assert leaks == [], "secrets reached these places"
    assert "*****" in report, "the quoted value is masked, not dropped with the rest of the message"
