"""What a kind of job says about itself, and what the engine lends it.

The engine (``_engine``) owns the lifecycle every kind shares; a kind is a small object that answers four
questions, each at one point of that lifecycle:

- ``prepare``: is this job's input good? (check, stage; a ``rejected`` job with its report, or a ``queued`` one)
- ``submit``: start it (a hub job to follow, or, for a kind that runs in the app, how it ended)
- ``end``: how did its finished hub job end (counts, reports)?
- ``adopt``: after a crash mid-submission, which started job is its own (None: it never started)?
- ``closed``: the end is decided; what can go now (a source that holds keys)?

Submitting meets faults the engine must tell apart; a kind raises one of:
``Busy`` (the executor is busy with work of others: wait, no back-off), ``Throttled`` (a passing refusal: wait,
longer each time), ``Unanswered`` (it may or may not have started: reconcile later), ``Refused`` (definitive: the
job fails).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Protocol

from ..config import Containers
from ..iothub import IoTHubClient
from ..iothub import Job as HubJob
from ..ledger import Job, JobKind, JobState, Ledger
from ..storage import JSON_TYPE, BlobRef, Storage


class SubmitFault(Exception):
    """Base of what ``Kind.submit`` raises; the message says why, safe to show."""


class Busy(SubmitFault):
    """The executor runs work the app did not start: the job waits its turn."""


class Throttled(SubmitFault):
    """A passing refusal (throttling): the job waits, longer after each try, and never less than the executor
    asked (``retry_after`` seconds, its Retry-After)."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unanswered(SubmitFault):
    """No answer (5xx, a timeout): the job may have started; ``adopt`` decides after the grace period."""


class Refused(SubmitFault):
    """A definitive refusal (bad request, unauthorized): the job fails."""


@dataclass(frozen=True, slots=True)
class Ending:
    """How a job ended, as its kind reads it: ``job`` with the kind's own fields set (counts, reports)."""

    job: Job
    state: JobState
    reason: str | None = None
    summary: Mapping[str, object] = field(default_factory=dict)  # added to the job's summary.json


@dataclass(frozen=True)
class Context:
    """What the engine lends its kinds: storage, the job store, the hubs and the clock."""

    storage: Storage
    ledger: Ledger
    containers: Containers
    hubs: Mapping[str, IoTHubClient]
    clock: Callable[[], datetime]
    identity_based: bool = False  # hubs reach storage with their own identity, not SAS
    max_errors: int = 100

    def source(self, job: Job) -> BlobRef:
        """The blob the job reads, pinned as the engine pinned it (snapshot) or by its ETag."""
        assert job.source is not None
        return replace(BlobRef.parse(job.source, job.source_etag), snapshot=job.source_snapshot)

    def write_report(self, job: Job, name: str, doc: Mapping[str, object]) -> str:
        """Write ``reports/<job>/<name>`` (JSON); returns its container/name path."""
        self.storage.ensure_container(self.containers.reports)
        path = f"{job.job_id}/{name}"
        self.storage.upload_bytes(
            self.containers.reports, path, json.dumps(doc, indent=2).encode(), content_type=JSON_TYPE
        )
        return f"{self.containers.reports}/{path}"

    def save_progress(self, job: Job) -> Job:
        """Record a running job's progress (it also tells other instances the job is alive)."""
        return self.ledger.save(replace(job, updated=self.clock()))


class Kind(Protocol):
    """One kind of job. Registered with the engine under ``name``; the engine never branches on kinds."""

    name: JobKind
    partitioned_by_hub: bool  # True: its jobs take a hub's slot; False: its own partition (``central``)

    def prepare(self, job: Job, ctx: Context) -> Job:
        """Check the job's input (and stage what its executor reads). Returns it ``queued``, or ``rejected`` with
        ``failure_reason`` and a report; nothing is sent anywhere before this returns."""
        ...

    def submit(self, job: Job, ctx: Context) -> HubJob | Ending:
        """Start the job. Raises a ``SubmitFault`` when it could not."""
        ...

    def follow(self, job: Job, ctx: Context) -> HubJob:
        """The job's hub job as it stands now."""
        ...

    def end(self, job: Job, hub_job: HubJob, ctx: Context) -> Ending:
        """Read the outcome of the job's hub job, which has ended (completed, failed or cancelled)."""
        ...

    def adopt(self, job: Job, ctx: Context) -> HubJob | None:
        """The hub job a job left ``submitting`` started, if any (None: submit it again)."""
        ...

    def cancel(self, job: Job, ctx: Context) -> None:
        """Ask the executor to cancel the running job (the monitor records the end)."""
        ...

    def closed(self, job: Job, ctx: Context) -> None:
        """The job's end is decided (whatever it is, a cancel while queued too) and about to be recorded: drop what
        it no longer needs, such as a source that holds keys. A crash before the end is recorded runs ``end`` and
        this again: idempotent, and never removing what ``end`` reads a second time."""
        ...
