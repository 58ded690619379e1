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
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import orjson

from .backups import DEVICES_BLOB, MANIFEST_BLOB, apply_retention, backup_folder, latest_backup, save_backup
from .config import Containers
from .devices import validate_stream
from .iothub import (
    IoTHubClient,
    IoTHubError,
    IoTHubNotFound,
    IoTHubServerError,
    IoTHubThrottled,
    IoTHubUnavailable,
    JobQuotaExceeded,
)
from .iothub import Job as HubJob
from .iothub import JobStatus as HubStatus
from .ledger import Job, JobKind, JobState, Ledger, LedgerConflict, advance, idempotency_key
from .reports import ErrorSummary, harvest_import_errors, rejection_document, summary_document
from .storage import ArchiveKind, BlobRef, Storage, StorageError, fitted_name
from .uploads import move_to_archive

logger = logging.getLogger(__name__)

INPUT_BLOB = "devices.txt"
ERRORS_BLOB = "importErrors.log"
SUBMIT_GRACE = timedelta(minutes=2)  # a submission younger than this may still be in flight in another instance
RETRY_BASE = timedelta(seconds=30)  # first wait after a passing fault; doubles per attempt
RETRY_CAP = timedelta(minutes=15)
# Faults that pass: the hub or storage will answer again. They never fail a job; the job waits and is retried.
TRANSIENT: tuple[type[Exception], ...] = (IoTHubThrottled, IoTHubServerError, IoTHubUnavailable, StorageError)

# Observers called with the name of each step just completed ("validated", "accepted", "claimed", "submitted",
# "running", "harvested"): the local runner uses one to kill the process between steps in crash tests.
CHECKPOINTS: list[Callable[[str], None]] = []


def checkpoint(step: str) -> None:
    for observer in CHECKPOINTS:
        observer(step)


class CannotCancel(Exception):
    """The job is in a state that cannot be cancelled now; the message says why."""


class NotABackup(ValueError):
    """The folder named for a restore is not a complete backup; the message says what is there and what to give."""


# An exported line carries the ETags of the moment it was exported. The hub checks a supplied twinETag even in
# createOrUpdate mode (import/export docs: "twinETag ... processed independently"), so a restore sends neither:
# it puts the backup's state back whatever happened since.
_EXPORT_ETAGS = ("eTag", "twinETag")


def _without_etags(sink: Callable[[bytes], None]) -> Callable[[bytes], None]:
    def write(batch: bytes) -> None:
        lines = batch.split(b"\n")
        for i, line in enumerate(lines):
            if b'Tag"' in line:  # cheap test first: most lines of a keyless export still have both
                doc = orjson.loads(line)
                for name in _EXPORT_ETAGS:
                    doc.pop(name, None)
                lines[i] = orjson.dumps(doc)
        sink(b"\n".join(lines))

    return write


def _hashed(chunks: Iterable[bytes], sha: hashlib._Hash) -> Iterator[bytes]:
    for chunk in chunks:
        sha.update(chunk)
        yield chunk


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
    retry_base: timedelta = RETRY_BASE
    # Error counts harvested for a job that is being closed in this call; never read across calls.
    _error_summaries: dict[str, ErrorSummary] = field(default_factory=dict, repr=False)

    # --- accept ---------------------------------------------------------------------------------------

    def accept_upload(self, ref: BlobRef, hub: str, *, kind: JobKind = JobKind.IMPORT) -> Job:
        """Validate a devices file while staging it, and record the job. Safe to call twice for one blob version.

        A file in the uploads container is pinned first (a snapshot of exactly that version): the job validates,
        sends and finally archives those bytes whatever happens to the upload meanwhile. A file anywhere else (a
        backup being restored, say) is read in place, pinned by its ETag, and never moved, changed or deleted.

        Raises:
            UploadChanged: the upload was replaced before it could be pinned (the new version gets its own job).
        """
        self._check_hub(hub)
        if not ref.etag:
            raise ValueError("an upload must be identified by its ETag")
        key = idempotency_key(ref.container, ref.name, ref.etag)
        existing = self.ledger.find_by_key(hub, key)
        if existing is not None:
            self._finish_accept(existing)
            return existing
        if self._is_upload(ref):
            ref = self.storage.pin(ref)
        job = Job.new(
            hub,
            kind,
            self.clock(),
            source=ref.path,
            source_etag=ref.etag,
            source_snapshot=ref.snapshot,
            idempotency_key=key,
        )
        job = self._validate_and_stage(job, ref)
        mine = job.work_container
        job, created = self.ledger.create(job)
        if not created:
            logger.info("upload %s was accepted concurrently as job %s", ref.path, job.job_id)
        if not created or job.state is JobState.REJECTED:
            self.storage.delete_container(mine)  # nothing in it will ever be read: never leave it behind
        checkpoint("accepted")
        self._finish_accept(job)
        return job

    def accept_restore(self, hub: str, backup: str) -> Job:
        """Queue a restore of a backup folder of ``hub`` (``<stamp>``, ``<hub>/<stamp>`` or ``latest``): its
        ``devices.txt`` is checked against the manifest's sha256, validated and imported (``createOrUpdate`` per
        line, as exported). The backup is read in place and never moved, changed or deleted.

        Raises:
            NotABackup: no complete backup (manifest and devices) under that name.
        """
        self._check_hub(hub)
        folder = self._backup_folder(hub, backup)
        manifest_ref = BlobRef(self.containers.backups, f"{folder}/{MANIFEST_BLOB}")
        devices = self.storage.properties(BlobRef(self.containers.backups, f"{folder}/{DEVICES_BLOB}"))
        if self.storage.properties(manifest_ref) is None or devices is None:
            raise NotABackup(
                f"'{folder}' is not a complete backup (it needs {DEVICES_BLOB} and {MANIFEST_BLOB}): "
                f"give a folder under {self.containers.backups}/{hub}/, or 'latest'"
            )
        manifest = json.loads(b"".join(self.storage.open_read(manifest_ref)))
        ref = BlobRef(self.containers.backups, f"{folder}/{DEVICES_BLOB}", devices["etag"])
        for active in self.ledger.iter_active(hub):
            if active.kind is JobKind.RESTORE and active.source == ref.path:
                return active  # the same restore asked twice (a double click): one job
        job = Job.new(hub, JobKind.RESTORE, self.clock(), source=ref.path, source_etag=ref.etag)
        job = self._validate_and_stage(job, ref, expected_sha256=str(manifest.get("sha256") or "") or None)
        if job.state is not JobState.REJECTED and not manifest.get("includesKeys"):
            note = (
                "this backup holds no keys: devices it re-creates get new keys from the hub (devices that still "
                "exist keep theirs); take backups with BACKUP_INCLUDE_KEYS=true to restore keys too"
            )
            job = replace(job, params={**job.params, "notes": [note]})
        job, _ = self.ledger.create(job)
        if job.state is JobState.REJECTED:
            self.storage.delete_container(job.work_container)
        return job

    def _backup_folder(self, hub: str, backup: str) -> str:
        name = backup.strip().strip("/").removeprefix(f"{self.containers.backups}/").removesuffix(f"/{DEVICES_BLOB}")
        if name == "latest":
            latest = latest_backup(self.storage, self.containers.backups, hub)
            if latest is None:
                raise NotABackup(f"hub '{hub}' has no complete backup yet: take one with POST /api/exports")
            return latest
        if "/" not in name:
            name = f"{hub}/{name}"
        if name.split("/", 1)[0] != hub or name.count("/") != 1:
            raise NotABackup(f"'{backup}' is not a backup of hub '{hub}': give '<stamp>' or '{hub}/<stamp>'")
        return name

    def _validate_and_stage(self, job: Job, ref: BlobRef, *, expected_sha256: str | None = None) -> Job:
        """Read the source once: hash it as it is, validate it, and stage the normalized lines the hub will read."""
        self.storage.ensure_container(job.work_container)
        staged = self.storage.stage(job.work_container, INPUT_BLOB)
        sha = hashlib.sha256()
        sink = _without_etags(staged.write) if job.kind is JobKind.RESTORE else staged.write
        report = validate_stream(_hashed(self.storage.open_read(ref), sha), sink=sink, max_errors=self.max_errors)
        job = replace(job, source_sha256=sha.hexdigest(), lines=report.lines)
        if expected_sha256 and expected_sha256 != job.source_sha256:
            return self._reject(
                job,
                ref,
                {
                    "source": ref.path,
                    "verdict": "rejected: the backup's devices file does not match its manifest (sha256); it was "
                    "changed or damaged after it was taken. Nothing was imported; restore another backup.",
                    "expectedSha256": expected_sha256,
                    "actualSha256": job.source_sha256,
                },
                "the backup does not match its manifest (sha256); nothing was imported",
                problems=1,
            )
        if not report.valid:
            return self._reject(
                job,
                ref,
                rejection_document(ref.path, report),
                f"{report.error_count} problem(s) in the file; nothing was imported",
                problems=report.error_count,
            )
        staged.commit()
        checkpoint("validated")
        return replace(job, modes=dict(report.modes), params={**job.params, "sha256": staged.sha256})

    def _reject(self, job: Job, ref: BlobRef, doc: dict[str, object], reason: str, *, problems: int) -> Job:
        path = f"{job.job_id}/rejection.json"
        self.storage.upload_bytes(self._reports(), path, json.dumps(doc, indent=2).encode())
        return replace(
            job,
            state=JobState.REJECTED,
            validation_errors=problems,
            failure_reason=reason,
            reports={"rejection": f"{self.containers.reports}/{path}"},
            archived=self._archive_path(job, ref, ArchiveKind.FAILED),
        )

    def _is_upload(self, ref: BlobRef) -> bool:
        return ref.container == self.containers.uploads

    def _archive_path(self, job: Job, ref: BlobRef, kind: ArchiveKind) -> str | None:
        """Where the upload goes when the job ends (None: not an upload, it stays where it is)."""
        if not self._is_upload(ref):
            return None
        return f"{self.containers.archive}/{fitted_name(f'{kind}/{job.job_id}', ref.name)}"

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

    def _finish_accept(self, job: Job) -> None:
        if job.state is JobState.REJECTED:
            self._archive_upload(job, ArchiveKind.FAILED)

    def _archive_upload(self, job: Job, kind: ArchiveKind) -> str | None:
        """Move the job's upload (the version it read) to the archive; anything not an upload is left alone."""
        if not job.source or not job.source_etag or job.source == "http":
            return None
        ref = replace(BlobRef.parse(job.source, job.source_etag), snapshot=job.source_snapshot)
        if not self._is_upload(ref):
            return None
        return move_to_archive(
            self.storage, self.ledger, ref, kind, archive_container=self.containers.archive, job_id=job.job_id
        )

    def _reports(self) -> str:
        self.storage.ensure_container(self.containers.reports)
        return self.containers.reports

    # --- start ----------------------------------------------------------------------------------------

    def start_next(self, hub: str) -> Job | None:
        """Submit the oldest queued job of ``hub`` if its slot is free and its back-off (after a passing fault) has
        run out. Returns the job it moved, if any."""
        active = list(self.ledger.iter_active(hub))
        if any(j.state in (JobState.SUBMITTING, JobState.RUNNING) for j in active):
            return None
        queued = [j for j in active if j.state is JobState.QUEUED]
        if not queued:
            return None
        job = queued[0]  # strictly in order: the hub throttles every caller alike, so nothing jumps the queue
        now = self.clock()
        if job.retry_at is not None and now < job.retry_at:
            return None
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

    def _back_off(self, job: Job, why: str) -> Job:
        """Put a job whose submission met a passing fault back in the queue, to be tried again later."""
        now = self.clock()
        wait = min(self.retry_base * 2 ** max(job.attempts - 1, 0), RETRY_CAP)
        job = self.ledger.move(
            job,
            JobState.QUEUED,
            now=now,
            retry_at=now + wait,
            failure_reason=f"{why}; waiting {int(wait.total_seconds())} s before try {job.attempts + 1}",
        )
        self.ledger.release_slot(job.hub, job.job_id, now=now)
        return job

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
            if job.kind.imports:
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
        except IoTHubThrottled as exc:
            # A 429 means the hub did not take the request: nothing to reconcile, just wait longer each time.
            logger.warning("hub %s throttled the submission of job %s; it stays queued", job.hub, job.job_id)
            return self._back_off(job, f"the hub throttled the submission ({exc.code_name or exc.status})")
        except (IoTHubUnavailable, IoTHubServerError) as exc:
            # The hub may or may not have created the job: leave it `submitting` for reconcile to decide.
            logger.warning("submitting job %s to hub %s: %s; will reconcile", job.job_id, job.hub, exc)
            return self.ledger.save(
                replace(job, failure_reason=f"the hub did not answer the submission ({exc}); checking with it")
            )
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
            retry_at=None,
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
        """One monitor pass over ``hub``: reconcile, follow, finish; then start the next job.

        A passing fault (throttling, 5xx, a timeout, storage not answering) on one job is logged as one warning and
        left for the next pass; it never fails the job."""
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
            except TRANSIENT as exc:
                logger.warning("job %s on hub %s: %s; the next pass tries again", job.job_id, hub, exc)
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
        reports = dict(job.reports)
        failed = 0
        changes: dict[str, object] = {}
        if job.kind.imports:
            # Also for a cancelled or failed hub job: the devices it refused so far are in its error log.
            failed, reports = self._harvest(job, reports)
        if hub_job.status in (HubStatus.CANCELLED, HubStatus.FAILED):
            progress = max(hub_job.progress, job.progress)
            if hub_job.status is HubStatus.CANCELLED:
                reason = "cancelled on the hub"
            else:
                reason = f"the hub job failed: {hub_job.failure_reason or 'no reason given'}"
            if job.kind.imports:
                reason += (
                    f" after it had gone through about {progress}% of the file: the lines before that point may "
                    "have been applied and the rest were not; check the registry, re-run the file (createOrUpdate "
                    "lines are safe to repeat) or restore a backup"
                )
            return self._close(
                job,
                JobState.CANCELLED if hub_job.status is HubStatus.CANCELLED else JobState.FAILED,
                reason,
                failed_devices=failed,
                reports=reports,
                progress=progress,
            )
        if job.kind is JobKind.EXPORT:
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
        if summary is not None:
            self._error_summaries[job.job_id] = summary
        return (summary.failed if summary else 0), reports

    def _close(self, job: Job, state: JobState, reason: str | None, **changes: object) -> Job:
        """End a job: archive its upload, write its final summary, record the end, free the hub, drop the work
        container.

        The upload is archived and the summary written before the ledger records the end, so a crash in between
        leaves the job open and the next pass repeats those (idempotent) steps; a crash after it leaves at most an
        unused container.
        """
        kind = (
            ArchiveKind.PROCESSED
            if state in (JobState.COMPLETED, JobState.COMPLETED_WITH_ERRORS)
            else ArchiveKind.FAILED
        )
        try:
            archived = self._archive_upload(job, kind)
        except StorageError as exc:
            logger.warning("archiving the upload of job %s failed: %s; it stays where it is", job.job_id, exc)
            archived = None
        now = self.clock()
        final = advance(job, state, now=now, failure_reason=reason, archived=archived, **changes)
        if final.kind.imports or final.kind is JobKind.EXPORT:
            final = self._write_summary(final)
        job = self.ledger.save(final)
        self.ledger.release_slot(job.hub, job.job_id, now=now)
        try:
            self.storage.delete_container(job.work_container)
        except StorageError as exc:
            logger.warning("could not delete the work container of job %s: %s", job.job_id, exc)
        return job

    def _write_summary(self, job: Job) -> Job:
        """``reports/<job>/summary.json``: the job as it ends (state, counts, times) and its per-code counts."""
        container = self._reports()
        path = f"{job.job_id}/summary.json"
        doc = summary_document(job.public(), self._error_summaries.pop(job.job_id, None))
        self.storage.upload_bytes(container, path, json.dumps(doc, indent=2).encode())
        return replace(job, reports={**job.reports, "summary": f"{container}/{path}"})


def _belongs(hub_job: HubJob, job: Job) -> bool:
    suffix = f"/{job.work_container}"
    return any(
        c is not None and c.rstrip("/").endswith(suffix) for c in (hub_job.input_container, hub_job.output_container)
    )
