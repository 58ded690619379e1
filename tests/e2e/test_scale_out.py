"""Scaled out, as Azure runs the app: two host instances on one storage account and one hub, sharing the blob
receipts (one host id, as all instances of one app have), one of them killed mid-way. Every upload is still one
ledger job and one hub job, the hub never runs two at once, and nothing is lost."""

from __future__ import annotations

import hashlib
import re
import threading
from pathlib import Path
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableServiceClient

from emulators.azurite import Azurite
from emulators.iothub import IoTHubEmulator
from shared.iothub import IoTHubClient
from shared.ledger import Job, JobState, Ledger
from shared.views import job_view
from tests.integration.helpers import device_line as dev
from tests.integration.helpers import wait_until

from .app import App, Stack, settings

FILES, DEVICES = 10, 300
HUB_TERMINAL = {"completed", "failed", "cancelled"}


class Sampler(threading.Thread):
    """Samples, until stopped, how many jobs are active on the hub (its own job list) and how many of ours hold it
    (submitting or running in the ledger): both must never exceed one."""

    def __init__(self, azurite: Azurite, hub: IoTHubEmulator) -> None:
        super().__init__(daemon=True)
        self.hub = hub
        self.ledger = Ledger(
            TableServiceClient.from_connection_string(azurite.connection_string).get_table_client("jobledger")
        )
        self.stopping = threading.Event()
        self.samples: list[tuple[list[str], list[str]]] = []  # (active hub job ids, our active job ids)
        self.errors: list[BaseException] = []

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                on_hub = [j["jobId"] for j in self.hub.jobs.list_jobs() if j["status"] not in HUB_TERMINAL]
                try:
                    ours = [j.job_id for j in self.ledger.iter_active("devhub") if j.state is not JobState.QUEUED]
                except ResourceNotFoundError:
                    ours = []  # no job recorded yet
                self.samples.append((on_hub, ours))
            except Exception as exc:  # reported by the test, never swallowed
                self.errors.append(exc)
            self.stopping.wait(0.05)


def all_jobs(azurite: Azurite) -> list[Job]:
    ledger = Ledger(TableServiceClient.from_connection_string(azurite.connection_string).get_table_client("jobledger"))
    try:
        return ledger.list_jobs(limit=1000)[0]
    except ResourceNotFoundError:
        return []


def midway(jobs: list[Job]) -> bool:
    in_flight = any(j.state in (JobState.SUBMITTING, JobState.RUNNING) for j in jobs)
    return in_flight and sum(j.state.is_terminal for j in jobs) >= 3


def test_two_instances_one_killed_every_upload_is_one_job_and_nothing_is_lost(
    tmp_path: Path, azurite: Azurite, hub: IoTHubEmulator
) -> None:
    values = settings(azurite, hub)
    a, b = App(tmp_path / "a", values), App(tmp_path / "b", values)  # same settings, so the same host id
    stack = Stack(azurite, hub, a)
    sampler = Sampler(azurite, hub)
    dropped: dict[str, bytes] = {}
    try:
        a.start()
        b.start()
        sampler.start()
        for f in range(FILES):
            name = f"batch-{f:02d}.jsonl"
            stack.drop(name, [dev(f"f{f:02d}-d{i:04d}") for i in range(DEVICES)])
            dropped[name] = stack.read("uploads", name)
        # Mid-way: some jobs done, one on the hub (maybe A's), others still to go. Then A dies without tidying up.
        wait_until(lambda: midway(all_jobs(azurite)), deadline=180)
        a.kill()
        assert a.proc is not None and a.proc.returncode == -9
        b.wait_jobs(FILES, timeout=300)
    finally:
        sampler.stopping.set()
        sampler.join()
        a.stop()
        b.stop()

    # One ledger job per file, every one completed.
    jobs = all_jobs(azurite)
    assert sorted(j.source for j in jobs) == sorted(f"uploads/{n}" for n in dropped), [job_view(j) for j in jobs]
    assert {j.state for j in jobs} == {JobState.COMPLETED}, [job_view(j) for j in jobs]
    # One hub job per file: the hub ran exactly the jobs the ledger names, none twice, none orphaned.
    hub_jobs: list[dict[str, Any]] = [j for j in hub.jobs.list_jobs() if j["type"] == "import"]
    assert sorted(j["jobId"] for j in hub_jobs) == sorted(str(j.hub_job_id) for j in jobs)
    assert {j["status"] for j in hub_jobs} == {"completed"}
    # Never two at once: not on the hub, not in our ledger.
    assert not sampler.errors, sampler.errors
    assert len(sampler.samples) >= 20 and any(on_hub for on_hub, _ in sampler.samples), "the sampler saw the work"
    assert max(len(on_hub) for on_hub, _ in sampler.samples) == 1
    assert max(len(ours) for _, ours in sampler.samples) == 1
    # Nothing lost: uploads empty, every file archived exactly as dropped, every device on the hub.
    assert stack.names("uploads") == []
    for job in jobs:
        assert job.archived is not None and job.source is not None
        name = job.source.removeprefix("uploads/")
        assert job.archived == f"archive/processed/{job.job_id}/{name}"
        archived = stack.read("archive", job.archived.removeprefix("archive/"))
        assert hashlib.sha256(archived).hexdigest() == hashlib.sha256(dropped[name]).hexdigest()
    total = IoTHubClient.from_connection_string(hub.connection_string()).get_registry_statistics().total
    assert total == FILES * DEVICES
    # Both instances took part: each picked up uploads before A died.
    assert all(re.search(r"uploads/\S+ is job ", h.log()) for h in (a, b))
