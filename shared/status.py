"""What the status page shows (``GET /api/status.json``): every hub with its running job and queue, recent jobs
(failures first) with links to their reports, backups against retention, and IoT Central's applies and backups.

Read from the ledger one partition at a time (a partition reads newest first, so a page of it costs one short
query), and from the newest few backup manifests; nothing here writes. Report links are the API's 15-minute
read-only links; no key, SAS of a container or connection string is ever part of the document.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from .backups import BackupEntry, recent_backups
from .central import PARTITION as CENTRAL
from .ledger import Job, JobKind, JobState, Ledger
from .storage import BlobRef, Storage
from .views import job_view

RECENT = 20  # finished jobs listed, over every partition
BACKUPS_SHOWN = 5  # per hub: only these manifests are read on each refresh
REFRESH_SECONDS = 2  # how often the page asks again
# Outcomes people must look at, in the order they are listed: a failed job before one with a few refused devices.
_ATTENTION = {
    JobState.FAILED: 0,
    JobState.REJECTED: 1,
    JobState.COMPLETED_WITH_ERRORS: 2,
    JobState.CANCELLED: 3,
    JobState.COMPLETED: 4,
}
_ACTIVE = (JobState.SUBMITTING, JobState.RUNNING)

Linker = Callable[[str, str], str]  # (container, name) -> a short-lived read link


def timing(job: Job, now: datetime) -> dict[str, Any]:
    """Elapsed seconds since the job's latest submission began (since it was queued, for a queued job), its
    duration once ended, and for a running job an ETA from the pace so far (None until it has moved)."""
    start = job.started or job.created
    end = job.updated if job.state.is_terminal else now
    elapsed = max((end - start).total_seconds(), 0.0)
    eta = None
    if job.state is JobState.RUNNING and 0 < job.progress < 100:
        eta = elapsed * (100 - job.progress) / job.progress
    return {"elapsedSeconds": round(elapsed, 1), "etaSeconds": None if eta is None else round(eta, 1)}


def devices_done(job: Job) -> int | None:
    """Devices handled so far: the lines of an import times its progress, the devices of a finished export
    (None where the job does not tell: a running export does not know the registry's size)."""
    if job.kind in (JobKind.IMPORT, JobKind.RESTORE, JobKind.MIGRATION_IMPORT) and job.lines:
        return job.lines if job.progress >= 100 else job.lines * job.progress // 100
    if job.kind in (JobKind.EXPORT, JobKind.MIGRATION) and job.state.is_terminal:
        return job.devices
    return None


def job_entry(job: Job, now: datetime, link: Linker | None = None) -> dict[str, Any]:
    """A job as the page lists it: its public view, timing and devices done, and (when ``link`` is given) a read
    link for each of its reports."""
    entry = job_view(job)
    entry.update(timing(job, now))
    entry["devicesDone"] = devices_done(job)
    entry["links"] = {}
    if link is not None:
        for name, path in job.reports.items():
            ref = BlobRef.parse(path)
            entry["links"][name] = link(ref.container, ref.name)
    return entry


def _backup_entry(entry: BackupEntry, now: datetime, retention: timedelta, *, newest: bool) -> dict[str, Any]:
    age = now - entry.taken
    m = entry.manifest
    return {
        "folder": entry.folder,
        "taken": entry.taken.isoformat(),
        "ageSeconds": round(age.total_seconds()),
        # Retention removes a folder once it is this old, except the newest complete one, which is always kept.
        "expiresInSeconds": None if newest else round((retention - age).total_seconds()),
        "pastRetention": age > retention,
        "devices": m.get("devices"),
        "includesKeys": m.get("includesKeys"),
        "destinations": m.get("destinations"),
        "exports": m.get("exports"),
    }


def backups_status(
    storage: Storage, container: str, partition: str, now: datetime, retention_days: int
) -> dict[str, Any]:
    entries, total = recent_backups(storage, container, partition, limit=BACKUPS_SHOWN)
    retention = timedelta(days=retention_days)
    shown = [_backup_entry(e, now, retention, newest=i == 0) for i, e in enumerate(entries)]
    return {"count": total, "shown": shown, "newest": shown[0] if shown else None}


def _attention_order(jobs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Failures first, then the rest; newest first within each outcome (ids sort newest first)."""
    return sorted(jobs, key=lambda j: (_ATTENTION.get(JobState(j["state"]), 5), j["jobId"]))


def partition_status(ledger: Ledger, partition: str, now: datetime) -> dict[str, Any]:
    """A partition's running job (the one holding its slot) and its queue, oldest first."""
    active = list(ledger.iter_active(partition))  # oldest first
    running = [j for j in active if j.state in _ACTIVE]
    queued = [j for j in active if j.state is JobState.QUEUED]
    return {
        "running": job_entry(running[0], now) if running else None,
        "queue": [job_entry(j, now) for j in queued],
    }


def status_document(
    *,
    ledger: Ledger,
    storage: Storage,
    hubs: Iterable[str],
    backups_container: str,
    retention_days: int,
    central_configured: bool,
    now: datetime,
    link: Linker,
    recent: int = RECENT,
) -> dict[str, Any]:
    """Everything the status page shows, as one JSON-ready document."""
    hub_names = list(hubs)
    finished: list[Job] = []
    hub_docs = []
    for hub in hub_names:
        doc = {"name": hub, **partition_status(ledger, hub, now)}
        doc["backups"] = backups_status(storage, backups_container, hub, now, retention_days)
        hub_docs.append(doc)
        finished.extend(_recent_finished(ledger, hub, recent))
    central_jobs = _recent_finished(ledger, CENTRAL, recent)
    finished.extend(central_jobs)
    newest = sorted(finished, key=lambda j: j.job_id)[:recent]
    recent_docs = _attention_order(job_entry(j, now, link) for j in newest)
    central: dict[str, Any] = {"configured": central_configured, **partition_status(ledger, CENTRAL, now)}
    central["applies"] = [job_entry(j, now, link) for j in central_jobs[:BACKUPS_SHOWN]]
    central["backups"] = backups_status(storage, backups_container, CENTRAL, now, retention_days)
    return {
        "generatedAt": now.isoformat(),
        "refreshSeconds": REFRESH_SECONDS,
        "retentionDays": retention_days,
        "hubs": hub_docs,
        "recent": recent_docs,
        "attention": sum(1 for j in recent_docs if JobState(j["state"]) in _NEEDS_LOOK),
        "central": central,
    }


_NEEDS_LOOK = frozenset({JobState.FAILED, JobState.REJECTED, JobState.COMPLETED_WITH_ERRORS})


def _recent_finished(ledger: Ledger, partition: str, limit: int) -> list[Job]:
    """The newest ``limit`` jobs of a partition that have ended (one page of it: a partition reads newest first)."""
    states = {s for s in JobState if s.is_terminal}
    page, _ = ledger.list_jobs(partition, states=states, limit=limit)
    return page
