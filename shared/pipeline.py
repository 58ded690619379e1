"""The steps of an import, called by the triggers: accept an upload, start the next job, follow it, finish it.

Every step is idempotent and leaves the ledger consistent if the process dies right after it:

- ``accept_upload``: validate while staging the hub's copy; record the job (``queued`` or ``rejected``) keyed by
  the upload version; archive a rejected upload. A repeated delivery finds the row and only completes what is
  missing.
- ``start_next``: claim the hub's slot (If-Match), mark the job ``submitting``, create the hub job, record it
  ``running``. A busy hub (403003, a job someone else started) puts the job back to ``queued``.
- ``reconcile``: a job found ``submitting`` (the process died mid-submission) is matched against the hub's
  ``GET /jobs`` by its work container: found -> ``running``; absent -> ``queued`` again. No job runs twice.
- ``poll``: follow running jobs; on completion harvest ``importErrors.log`` into reports (or, for an export, copy
  the hub's output into ``backups/`` with a manifest), archive the upload, release the slot, delete the job's work
  container and start the next job.

``CHECKPOINTS`` lets the local runner stop the process between two steps to prove the above; production never
registers one.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from .backups import apply_retention, backup_folder, save_backup
from .config import Containers
from .devices import validate_stream
from .iothub import IoTHubClient, IoTHubError, IoTHubNotFound, IoTHubServerError, IoTHubUnavailable, JobQuotaExceeded
from .iothub import Job as HubJob
from .iothub import JobStatus as HubStatus
from .ledger import Job, JobKind, JobState, Ledger, LedgerConflict, idempotency_key
from .reports import harvest_import_errors, rejection_document, summary_document
from .storage import ArchiveKind, BlobRef, Storage, StorageError

logger = logging.getLogger(__name__)

INPUT_BLOB = "devices.txt"
ERRORS_BLOB = "importErrors.log"
SUBMIT_GRACE = timedelta(minutes=2)  # a submission younger than this may still be in flight in another instance

# Observers called with the name of each step just completed ("validated", "accepted", "claimed", "submitted",
# "running", "harvested"): the local runner uses one to kill the process between steps in crash tests.
CHECKPOINTS: list[Callable[[str], None]] = []


def checkpoint(step: str) -> None:
    for observer in CHECKPOINTS:
        observer(step)


class CannotCancel(Exception):
    """The job is in a state that cannot be cancelled now; the message says why."""


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Pipeline:
    ledger: Ledger
    storage: Storage
    hubs: Mapping[str, IoTHubClient]
    containers: Containers = field(default_factory=Containers)
    identity_based: bool = False
    max_errors: int = 100
    clock: Callable[[], datetime] = utcnow
    submit_grace: timedelta = SUBMIT_GRACE
    backup_retention_days: int | None = None  # None: keep every backup

    # --- accept ---------------------------------------------------------------------------------------

    def accept_upload(self, ref: BlobRef, hub: str) -> Job:
        """Validate an upload while staging it, and record the job. Safe to call twice for one blob version."""
        self._check_hub(hub)
        if not ref.etag:
            raise ValueError("an upload must be identified by its ETag")
        key = idempotency_key(ref.container, ref.name, ref.etag)
        existing = self.ledger.find_by_key(hub, key)
        if existing is not None:
            self._finish_accept(existing, ref)
            return existing
        job = Job.new(hub, JobKind.IMPORT, self.clock(), source=ref.path, source_etag=ref.etag, idempotency_key=key)
        self.storage.ensure_container(job.work_container)
        staged = self.storage.stage(job.work_container, INPUT_BLOB)
        report = validate_stream(self.storage.open_read(ref), sink=staged.write, max_errors=self.max_errors)
        if report.valid:
            staged.commit()
            job = replace(job, lines=report.lines, modes=dict(report.modes), params={"sha256": staged.sha256})
            checkpoint("validated")
        else:
            path = f"{job.job_id}/rejection.json"
            self.storage.upload_bytes(
                self._reports(), path, json.dumps(rejection_document(ref.path, report), indent=2).encode()
            )
            job = replace(
                job,
                state=JobState.REJECTED,
                lines=report.lines,
                validation_errors=report.error_count,
                failure_reason=f"{report.error_count} problem(s) in the file; nothing was imported",
                reports={"rejection": f"{self.containers.reports}/{path}"},
            )
        mine = job.work_container
        job, created = self.ledger.create(job)
        if not created:
            logger.info("upload %s was accepted concurrently as job %s", ref.path, job.job_id)
        if not created or job.state is JobState.REJECTED:
            self.storage.delete_container(mine)  # nothing in it will ever be read: never leave it behind
        checkpoint("accepted")
        self._finish_accept(job, ref)
        return job

    def queue_export(self, hub: str, *, include_keys: bool, source: str, key: str | None = None) -> tuple[Job, bool]:
        """Queue a registry export of ``hub`` into a new backup folder. ``key`` makes a repeated request (a timer
        fired twice) find the job already queued. Returns (job, created)."""
        self._check_hub(hub)
        job = Job.new(hub, JobKind.EXPORT, self.clock(), source=source, idempotency_key=key)
        job = replace(job, params={"includeKeys": include_keys, "backup": backup_folder(hub, job.created)})
        return self.ledger.create(job)

    def _check_hub(self, hub: str) -> None:
        if hub not in self.hubs:
            raise ValueError(f"unknown hub '{hub}': configured hubs are {', '.join(sorted(self.hubs))}")

    def cancel(self, job: Job) -> Job:
        """Cancel a queued job at once, or ask the hub to cancel a running one (the monitor records the end).

        Raises:
            CannotCancel: the job has ended, or is being submitted right now.
        """
        if job.state.is_terminal:
            raise CannotCancel(f"job {job.job_id} has already ended ({job.state})")
        if job.state is JobState.QUEUED:
            return self._close(job, JobState.CANCELLED, "cancelled by request")
        if job.state is JobState.SUBMITTING or not job.hub_job_id:
            raise CannotCancel(f"job {job.job_id} is being submitted to the hub; try again in a minute")
        with contextlib.suppress(IoTHubNotFound):  # the hub forgot it; the monitor will close the job
            self.hubs[job.hub].cancel_job(job.hub_job_id)
        return self.ledger.save(replace(job, failure_reason="cancellation requested", updated=self.clock()))

    def _finish_accept(self, job: Job, ref: BlobRef) -> None:
        if job.state is JobState.REJECTED:
            self.storage.archive(ref, ArchiveKind.FAILED, archive_container=self.containers.archive, job_id=job.job_id)

    def _reports(self) -> str:
        self.storage.ensure_container(self.containers.reports)
        return self.containers.reports

    # --- start ----------------------------------------------------------------------------------------

    def start_next(self, hub: str) -> Job | None:
        """Submit the oldest queued job of ``hub`` if its slot is free. Returns the job it moved, if any."""
        active = list(self.ledger.iter_active(hub))
        if any(j.state in (JobState.SUBMITTING, JobState.RUNNING) for j in active):
            return None
        queued = [j for j in active if j.state is JobState.QUEUED]
        if not queued:
            return None
        job = queued[0]
        now = self.clock()
        holder = self.ledger.slot_holder(hub)
        if holder not in (None, job.job_id) or not self.ledger.claim_slot(hub, job.job_id, now=now):
            return None
        checkpoint("claimed")
        try:
            job = self.ledger.move(job, JobState.SUBMITTING, now=now, attempts=job.attempts + 1)
        except LedgerConflict:
            self.ledger.release_slot(hub, job.job_id, now=now)
            return None
        return self._submit(job)

    def _urls(self, job: Job) -> tuple[str, str]:
        if self.identity_based:
            url = self.storage.container_url(job.work_container)
            return url, url
        return (
            self.storage.container_sas_url(job.work_container, "rl"),
            self.storage.container_sas_url(job.work_container, "rwdl"),
        )

    def _submit(self, job: Job) -> Job:
        client = self.hubs[job.hub]
        self.storage.ensure_container(job.work_container)  # an export's is made here; an import's exists already
        input_url, output_url = self._urls(job)
        try:
            if job.kind is JobKind.IMPORT:
                hub_job = client.create_import_job(input_url, output_url, identity_based=self.identity_based)
            else:
                hub_job = client.create_export_job(
                    output_url,
                    exclude_keys=not job.params.get("includeKeys", False),
                    identity_based=self.identity_based,
                )
        except JobQuotaExceeded:
            logger.info("hub %s is busy with a job we did not start; job %s stays queued", job.hub, job.job_id)
            job = self.ledger.move(
                job,
                JobState.QUEUED,
                now=self.clock(),
                failure_reason="hub busy with another import/export job; waiting",
            )
            self.ledger.release_slot(job.hub, job.job_id, now=self.clock())
            return job
        except (IoTHubUnavailable, IoTHubServerError) as exc:
            # The hub may or may not have created the job: leave it `submitting` for reconcile to decide.
            logger.warning("submitting job %s to hub %s: %s; will reconcile", job.job_id, job.hub, exc)
            return job
        except IoTHubError as exc:
            return self._close(job, JobState.FAILED, f"the hub refused the job: {exc}")
        checkpoint("submitted")
        return self.ledger.move(
            job,
            JobState.RUNNING,
            now=self.clock(),
            hub_job_id=hub_job.job_id,
            progress=hub_job.progress,
            failure_reason=None,
        )

    # --- reconcile and poll ---------------------------------------------------------------------------

    def reconcile(self, job: Job) -> Job:
        """Settle a job left ``submitting``: adopt the hub job made for it, or queue it again."""
        match = [h for h in self.hubs[job.hub].list_jobs() if _belongs(h, job)]
        now = self.clock()
        if match:
            hub_job = match[-1]
            logger.info("reconciled job %s with hub job %s", job.job_id, hub_job.job_id)
            self.ledger.claim_slot(job.hub, job.job_id, now=now)
            return self.ledger.move(job, JobState.RUNNING, now=now, hub_job_id=hub_job.job_id)
        job = self.ledger.move(job, JobState.QUEUED, now=now)
        self.ledger.release_slot(job.hub, job.job_id, now=now)
        return job

    def poll(self, hub: str) -> list[Job]:
        """One monitor pass over ``hub``: reconcile, follow, finish; then start the next job."""
        changed: list[Job] = []
        now = self.clock()
        for job in self.ledger.iter_active(hub):
            try:
                if job.state is JobState.SUBMITTING and now - job.updated >= self.submit_grace:
                    changed.append(self.reconcile(job))
                elif job.state is JobState.RUNNING and job.hub_job_id:
                    changed.append(self._follow(job))
            except LedgerConflict:
                logger.info("job %s changed under us; next pass will see it", job.job_id)
        started = self.start_next(hub)
        if started is not None:
            changed.append(started)
        return changed

    def sweep_work_containers(self, older_than: timedelta) -> list[str]:
        """Delete work containers no live job owns: left by a crash between staging and recording the job (the
        redelivery made a new one), or by a crash after a job ended. Young ones may belong to an upload being
        accepted right now, so only those older than ``older_than`` go. Returns the names deleted."""
        cutoff = self.clock() - older_than
        deleted = []
        for name, modified in self.storage.containers("job-"):
            if modified > cutoff:
                continue
            job = self.ledger.find(name.removeprefix("job-"))
            if job is None or job.state.is_terminal:
                self.storage.delete_container(name)
                deleted.append(name)
                logger.info("deleted work container %s (%s)", name, "no job" if job is None else job.state)
        return deleted

    def _follow(self, job: Job) -> Job:
        assert job.hub_job_id is not None
        try:
            hub_job = self.hubs[job.hub].get_job(job.hub_job_id)
        except IoTHubNotFound:
            return self._close(job, JobState.FAILED, "the hub no longer knows this job (history is kept 30 days)")
        if not hub_job.status.is_terminal:
            if hub_job.progress != job.progress:
                job = self.ledger.save(replace(job, progress=hub_job.progress, updated=self.clock()))
            checkpoint("running")
            return job
        return self._finish(job, hub_job)

    def _finish(self, job: Job, hub_job: HubJob) -> Job:
        if hub_job.status is HubStatus.CANCELLED:
            return self._close(job, JobState.CANCELLED, "cancelled on the hub")
        if hub_job.status is HubStatus.FAILED:
            return self._close(job, JobState.FAILED, f"the hub job failed: {hub_job.failure_reason}")
        reports = dict(job.reports)
        failed = 0
        changes: dict[str, object] = {}
        if job.kind is JobKind.IMPORT:
            failed, reports = self._harvest(job, reports)
        else:
            folder = job.params["backup"]
            manifest = save_backup(
                self.storage,
                source=BlobRef(job.work_container, INPUT_BLOB),
                container=self.containers.backups,
                folder=folder,
                hub=job.hub,
                job_id=job.job_id,
                hub_job_id=job.hub_job_id,
                includes_keys=bool(job.params.get("includeKeys")),
                now=self.clock(),
            )
            reports["backup"] = f"{self.containers.backups}/{folder}/devices.txt"
            reports["manifest"] = f"{self.containers.backups}/{folder}/manifest.json"
            changes["lines"] = manifest.devices
            changes["params"] = {**job.params, "sha256": manifest.sha256}
            if self.backup_retention_days is not None:
                # A new good backup has landed: older ones past the retention period can go now.
                apply_retention(
                    self.storage, self.containers.backups, job.hub, days=self.backup_retention_days, now=self.clock()
                )
        checkpoint("harvested")
        state = JobState.COMPLETED_WITH_ERRORS if failed else JobState.COMPLETED
        return self._close(job, state, None, failed_devices=failed, reports=reports, progress=100, **changes)

    def _harvest(self, job: Job, reports: dict[str, str]) -> tuple[int, dict[str, str]]:
        container = self._reports()
        jsonl = self.storage.stage(container, f"{job.job_id}/errors.jsonl")
        csv_out = self.storage.stage(container, f"{job.job_id}/errors.csv")
        try:
            summary = harvest_import_errors(
                self.storage.open_read(BlobRef(job.work_container, ERRORS_BLOB)), jsonl, csv_out
            )
        except StorageError:
            summary = None
        if summary is not None and summary.failed:
            jsonl.commit()
            csv_out.commit()
            reports["errors"] = f"{container}/{job.job_id}/errors.jsonl"
            reports["errorsCsv"] = f"{container}/{job.job_id}/errors.csv"
        doc = summary_document(job.public(), summary)
        self.storage.upload_bytes(container, f"{job.job_id}/summary.json", json.dumps(doc, indent=2).encode())
        reports["summary"] = f"{container}/{job.job_id}/summary.json"
        return (summary.failed if summary else 0), reports

    def _close(self, job: Job, state: JobState, reason: str | None, **changes: object) -> Job:
        """End a job: archive its upload, record the end, free the hub, drop the work container.

        The upload is archived before the ledger records the end, so a crash in between leaves the job open and
        the next pass repeats the (idempotent) archive; a crash after it leaves at most an unused container.
        """
        if job.kind is JobKind.IMPORT and job.source and job.source_etag and "/" in job.source:
            container, name = job.source.split("/", 1)
            kind = (
                ArchiveKind.PROCESSED
                if state in (JobState.COMPLETED, JobState.COMPLETED_WITH_ERRORS)
                else ArchiveKind.FAILED
            )
            try:
                self.storage.archive(
                    BlobRef(container, name, job.source_etag),
                    kind,
                    archive_container=self.containers.archive,
                    job_id=job.job_id,
                )
            except StorageError as exc:
                logger.warning("archiving the upload of job %s failed: %s; it stays in %s", job.job_id, exc, container)
        now = self.clock()
        job = self.ledger.move(job, state, now=now, failure_reason=reason, **changes)
        self.ledger.release_slot(job.hub, job.job_id, now=now)
        try:
            self.storage.delete_container(job.work_container)
        except StorageError as exc:
            logger.warning("could not delete the work container of job %s: %s", job.job_id, exc)
        return job


def _belongs(hub_job: HubJob, job: Job) -> bool:
    suffix = f"/{job.work_container}"
    return any(
        c is not None and c.rstrip("/").endswith(suffix) for c in (hub_job.input_container, hub_job.output_container)
    )
