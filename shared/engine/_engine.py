"""The lifecycle every job shares, whatever its kind: accept, queue, claim the slot, submit, follow, finish (report,
archive, release), and reconcile after a crash.

Every step is idempotent and leaves the ledger consistent if the process dies right after it:

- ``accept``: a job is keyed by what it reads (an upload version); a repeated delivery finds its row. An upload is
  pinned (snapshot) before its kind prepares it; a ``rejected`` job's upload is archived at once.
- ``start_next``: claim the partition's slot (If-Match), mark the oldest queued job ``submitting``, let its kind
  submit it, record it ``running`` (or ended, for a kind that runs in the app). A busy or throttled executor puts
  the job back to ``queued`` (throttling with a growing back-off); a definitive refusal fails it.
- ``reconcile``: a job found ``submitting`` past the grace period (the process died mid-submission) is matched by
  its kind against what it started: found -> ``running``; absent -> ``queued`` again. No job runs twice.
- ``poll``: one monitor pass over a partition: reconcile, follow running jobs and end those whose hub job ended,
  then start the next. A passing fault is a warning for the next pass, never a failed job.

``CHECKPOINTS`` lets the local runner stop the process between two steps to prove the above; production never
registers one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from ..iothub import IoTHubError, IoTHubNotFound, IoTHubServerError, IoTHubThrottled, IoTHubUnavailable
from ..ledger import HubSlot, Job, JobKind, JobNotFound, JobState, Ledger, LedgerConflict, advance, idempotency_key
from ..reports import summary_document
from ..storage import ArchiveKind, BlobRef, StorageDenied, StorageError, StorageUnavailable, fitted_name
from ..uploads import move_to_archive
from ..views import job_view
from ._kind import Busy, Context, Ending, Kind, Refused, Throttled, Unanswered

logger = logging.getLogger(__name__)

SUBMIT_GRACE = timedelta(minutes=2)  # a submission younger than this may still be in flight in another instance
RETRY_BASE = timedelta(seconds=30)  # first wait after a passing fault; doubles per attempt
RETRY_CAP = timedelta(minutes=15)
# How long a job waits for storage that refuses the hub or the app (a role assignment takes minutes to take effect
# after a deployment) before it fails; STORAGE_DENIED_RETRY_MINUTES.
DENIED_FOR = timedelta(minutes=30)
# Faults that pass: the hub or storage will answer again. They never fail a job; the job waits and is retried.
TRANSIENT: tuple[type[Exception], ...] = (IoTHubThrottled, IoTHubServerError, IoTHubUnavailable, StorageError)

# Observers called with the name of each step just completed ("validated", "accepted", "claimed", "submitted",
# "running", "harvested", "ended", "central_step"): the local runner uses one to kill the process between steps.
CHECKPOINTS: list[Callable[[str], None]] = []


def checkpoint(step: str) -> None:
    for observer in CHECKPOINTS:
        observer(step)


# What to check when storage keeps refusing (docs/deploy.md; the roles infra/ assigns).
_HUB_ROLES = (
    "the role assignments on the storage account: the hub's identity needs Storage Blob Data Contributor "
    "(IOTHUB_STORAGE_AUTH=identityBased; behind a firewall, 'Allow trusted Microsoft services' too), and with "
    "SAS (keyBased) the account must allow shared key access"
)
_APP_ROLES = (
    "the role assignments of the app's identity on the storage account of DEVICE_STORAGE: Storage Blob Data Owner, "
    "Storage Queue Data Contributor and Storage Table Data Contributor"
)


def _unavailable_document(job: Job, reason: str) -> dict[str, object]:
    """The rejection report of a job whose kind this app has turned off: one finding for the whole file, shaped as
    a file's findings are (code, message, fix), so every reader of a rejection shows it."""
    what, _, fix = reason.partition(": ")
    finding = {
        "line": None,
        "code": "KIND_NOT_CONFIGURED",
        "message": f"{what}: this app does not run {job.kind} jobs, so nothing in the file was applied",
        "fix": fix or reason,
    }
    return {
        "source": job.source,
        "verdict": f"rejected: {reason}",
        "valid": False,
        "errorCount": 1,
        "errors": [finding],
        "errorsShown": 1,
    }


def utcnow() -> datetime:
    return datetime.now(UTC)


class CannotCancel(Exception):
    """The job is in a state that cannot be cancelled now; the message says why."""


@dataclass
class JobEngine:
    """Runs jobs of every registered kind through their shared lifecycle, one at a time per partition."""

    ctx: Context
    slots: HubSlot
    kinds: Mapping[JobKind, Kind]
    unavailable: Mapping[JobKind, str]  # kinds this app has turned off -> why (their jobs are rejected with it)
    submit_grace: timedelta = SUBMIT_GRACE
    retry_base: timedelta = RETRY_BASE
    denied_for: timedelta = DENIED_FOR

    @property
    def ledger(self) -> Ledger:
        return self.ctx.ledger

    # --- accept ---------------------------------------------------------------------------------------

    def draft(
        self,
        kind: JobKind,
        partition: str,
        *,
        source: BlobRef | None = None,
        key: str | None = None,
        keyed_by_source: bool = True,
    ) -> Job:
        """A new job of ``kind`` that reads ``source``, keyed by ``key`` or else (``keyed_by_source``) by the
        source's version: a repeated delivery of one upload version is one job."""
        job = Job.new(partition, kind, self.ctx.clock())
        if source is not None:
            if key is None and keyed_by_source and source.etag:
                key = idempotency_key(source.container, source.name, source.etag)
            job = replace(job, source=source.path, source_etag=source.etag)
        return replace(job, idempotency_key=key)

    def accept(self, draft: Job, *, once_while_active: bool = False) -> Job:
        """Record a job (prepared by its kind: checked and staged, or rejected). Safe to call twice: a draft with
        the key of a recorded job returns that job. ``once_while_active``: an active job of the same kind reading
        the same source is returned instead of a second one (a request sent twice).

        Raises:
            UploadChanged: the upload was replaced before it could be pinned (the new version gets its own job).
        """
        if draft.idempotency_key:
            existing = self.ledger.find_by_key(draft.hub, draft.idempotency_key)
            if existing is not None:
                if existing.state.is_terminal:
                    self._archive(existing)  # a crash may have come between recording and archiving
                return existing
        if once_while_active:
            for active in self.ledger.iter_active(draft.hub):
                if active.kind is draft.kind and active.source == draft.source:
                    return active
        job = draft
        if job.source is not None and self._is_upload(self.ctx.source(job)):
            pinned = self.ctx.storage.pin(self.ctx.source(job))
            job = replace(job, source_snapshot=pinned.snapshot)
        job = self._prepare(job)
        staged = job.work_container
        job, created = self.ledger.create(job)
        if not created:
            logger.info("%s was accepted concurrently as job %s", job.source, job.job_id)
        if not created or job.state is JobState.REJECTED:
            self.ctx.storage.delete_container(staged)  # nothing in it will ever be read: never leave it behind
        checkpoint("accepted")
        if job.state is JobState.REJECTED:
            self._archive(job)
        return job

    def _prepare(self, job: Job) -> Job:
        kind = self.kinds.get(job.kind)
        if kind is None:
            reason = self.unavailable.get(job.kind, f"jobs of kind {job.kind} are not handled by this app")
            report = self.ctx.write_report(job, "rejection.json", _unavailable_document(job, reason))
            job = replace(job, failure_reason=reason, validation_errors=1, reports={"rejection": report})
        else:
            job = kind.prepare(job, self.ctx)
        if job.state is JobState.REJECTED or job.failure_reason:
            job = advance(job, JobState.REJECTED, now=job.updated)
            return replace(job, archived=self._archive_path(job, ArchiveKind.FAILED))
        return job

    # --- start ----------------------------------------------------------------------------------------

    def start_next(self, partition: str) -> Job | None:
        """Submit the oldest queued job of ``partition`` if its slot is free and its back-off (after a passing
        fault) has run out. Returns the job it moved, if any."""
        active = list(self.ledger.iter_active(partition))
        if any(j.state in (JobState.SUBMITTING, JobState.RUNNING) for j in active):
            return None
        queued = [j for j in active if j.state is JobState.QUEUED]
        if not queued:
            return None
        job = queued[0]  # strictly in order: a hub throttles every caller alike, so nothing jumps the queue
        now = self.ctx.clock()
        if job.retry_at is not None and now < job.retry_at:
            return None
        holder = self.slots.holder(partition)
        if holder not in (None, job.job_id) and self._has_ended(partition, holder):
            # Its process died between recording the end and freeing the slot: free it for it.
            logger.warning("job %s ended without freeing the slot of %s: freed now", holder, partition)
            self.slots.release(partition, holder, now=now)
            holder = None
        if holder not in (None, job.job_id) or not self.slots.claim(partition, job.job_id, now=now):
            return None
        checkpoint("claimed")
        try:
            job = self.ledger.move(replace(job, attempts=job.attempts + 1, started=now), JobState.SUBMITTING, now=now)
        except LedgerConflict:
            self.slots.release(partition, job.job_id, now=now)
            return None
        return self._submit(job)

    def _has_ended(self, partition: str, job_id: str) -> bool:
        try:
            return self.ledger.get(partition, job_id).state.is_terminal
        except JobNotFound:
            return True  # no such job: nothing can be running under it

    def _submit(self, job: Job) -> Job:
        kind = self.kinds.get(job.kind)
        if kind is None:  # turned off since it was queued
            return self._close(job, Ending(job, JobState.FAILED, self.unavailable.get(job.kind, "kind unavailable")))
        try:
            started = kind.submit(job, self.ctx)
        except StorageDenied as exc:
            return self._denied(job, f"storage refused the app: {exc}", resubmit=True)
        except Busy as exc:
            logger.info("job %s waits: %s", job.job_id, exc)
            return self._requeue(job, str(exc), retry_at=None)
        except Throttled as exc:
            logger.warning("job %s stays queued: %s", job.job_id, exc)
            wait = min(self.retry_base * 2 ** max(job.attempts - 1, 0), RETRY_CAP)
            wait = max(wait, timedelta(seconds=exc.retry_after or 0))  # never back sooner than the hub asked
            why = f"{exc}; waiting {int(wait.total_seconds())} s before try {job.attempts + 1}"
            return self._requeue(job, why, retry_at=self.ctx.clock() + wait)
        except Unanswered as exc:
            # It may or may not have started: leave it `submitting` for reconcile to decide.
            logger.warning("submitting job %s: %s; will reconcile", job.job_id, exc)
            return self.ledger.save(replace(job, waiting_for=f"{exc}; checking whether it started"))
        except Refused as exc:
            return self._close(job, Ending(job, JobState.FAILED, str(exc)))
        if isinstance(started, Ending):
            return self._close(job, started)
        checkpoint("submitted")
        job = replace(
            job,
            hub_job_id=started.job_id,
            progress=started.progress,
            waiting_for=None,
            retry_at=None,
            failure_reason=None,
        )
        return self.ledger.move(job, JobState.RUNNING, now=self.ctx.clock())

    def _denied(self, job: Job, why: str, *, resubmit: bool, by_hub: bool = False) -> Job:
        """Storage refused the hub (its job failed) or the app: a passing fault for ``denied_for`` after the first
        refusal, since a role assignment takes minutes to take effect after a deployment. Until then the job waits,
        longer each time, and is submitted again (its hub job ended) or its step is tried again by the next pass;
        then it fails with what to check."""
        now = self.ctx.clock()
        since = job.denied_since or now
        if now - since >= self.denied_for:
            minutes = max(round((now - since).total_seconds() / 60), 1)
            check = _HUB_ROLES if by_hub else _APP_ROLES
            reason = f"{why}; still refused after {minutes} min. Check {check}; then run the job again"
            job = replace(job, denied_since=since)
            return self._close(job, Ending(job, JobState.FAILED, reason), tolerant=True)
        wait = min(self.retry_base * 2 ** max(job.attempts - 1, 0), RETRY_CAP)
        until = since + self.denied_for
        why = (
            f"{why}; a role assignment can take minutes to take effect after a deployment: waiting "
            f"{int(wait.total_seconds())} s, trying until {until:%H:%M} UTC"
        )
        job = replace(job, denied_since=since)
        if resubmit:  # its hub job ended refused, or it never started: submitted again after the wait
            return self._requeue(replace(job, hub_job_id=None, progress=0), why, retry_at=now + wait)
        return self.ledger.save(replace(job, waiting_for=why, updated=now))

    def _requeue(self, job: Job, why: str, *, retry_at: datetime | None) -> Job:
        now = self.ctx.clock()
        job = self.ledger.move(replace(job, waiting_for=why, retry_at=retry_at), JobState.QUEUED, now=now)
        self.slots.release(job.hub, job.job_id, now=now)
        return job

    # --- reconcile, follow, end -----------------------------------------------------------------------

    def reconcile(self, job: Job) -> Job:
        """Settle a job left ``submitting``: adopt what its kind started for it, or queue it again."""
        kind = self.kinds.get(job.kind)
        started = kind.adopt(job, self.ctx) if kind is not None else None
        now = self.ctx.clock()
        if started is not None:
            logger.info("reconciled job %s with hub job %s", job.job_id, started.job_id)
            self.slots.claim(job.hub, job.job_id, now=now)
            job = replace(job, hub_job_id=started.job_id, waiting_for=None)
            return self.ledger.move(job, JobState.RUNNING, now=now)
        job = self.ledger.move(
            replace(job, waiting_for="its submission was interrupted; queued again"), JobState.QUEUED, now=now
        )
        self.slots.release(job.hub, job.job_id, now=now)
        return job

    def monitor_pass(self, partition: str) -> list[Job]:
        """One monitor pass over ``partition``: reconcile, follow, end; then start the next job.

        A passing fault (throttling, 5xx, a timeout, storage not answering) on one job is logged as one warning and
        left for the next pass; it never fails the job."""
        changed: list[Job] = []
        now = self.ctx.clock()
        for job in self.ledger.iter_active(partition):
            try:
                if job.state is JobState.SUBMITTING and now - job.updated >= self.submit_grace:
                    changed.append(self.reconcile(job))
                elif job.state is JobState.RUNNING and job.hub_job_id:
                    changed.append(self._follow(job))
            except LedgerConflict:
                logger.info("job %s changed under us; next pass will see it", job.job_id)
            except StorageUnavailable:
                raise  # storage does not answer: nothing else in this pass can go on either (one warning upstream)
            except StorageDenied as exc:
                logger.warning("job %s on %s: %s; the next pass tries again", job.job_id, partition, exc)
                changed.append(self._denied(job, f"storage refused the app: {exc}", resubmit=False))
            except TRANSIENT as exc:
                logger.warning("job %s on %s: %s; the next pass tries again", job.job_id, partition, exc)
        started = self.start_next(partition)
        if started is not None:
            changed.append(started)
        return changed

    def _follow(self, job: Job) -> Job:
        kind = self.kinds[job.kind]
        try:
            hub_job = kind.follow(job, self.ctx)
        except IoTHubNotFound:
            reason = "the hub no longer knows this job (history is kept 30 days)"
            return self._close(job, Ending(job, JobState.FAILED, reason))
        if hub_job.storage_denied and not job.cancel_pending:
            why = f"the hub could not reach the job's storage ({hub_job.failure_reason})"
            return self._denied(job, why, resubmit=True, by_hub=True)
        if not hub_job.status.is_terminal:
            if job.cancel_pending:
                job = self._send_cancel(job, raising=False)
            if hub_job.progress != job.progress:
                job = self.ledger.save(replace(job, progress=hub_job.progress, updated=self.ctx.clock()))
            checkpoint("running")
            return job
        ending = kind.end(job, hub_job, self.ctx)
        checkpoint("harvested")
        return self._close(job, ending)

    # --- cancel and close -----------------------------------------------------------------------------

    def cancel(self, job: Job) -> Job:
        """Cancel a queued job at once, or ask the executor to cancel a running one (the monitor records the end).

        Raises:
            CannotCancel: the job has ended, is being submitted right now, or its kind cannot be cancelled.
        """
        if job.state.is_terminal:
            raise CannotCancel(f"job {job.job_id} has already ended ({job.state})")
        if job.state in (JobState.QUEUED, JobState.AWAITING_APPROVAL):
            return self._close(job, Ending(job, JobState.CANCELLED, "cancelled by request"))
        if job.state is JobState.SUBMITTING or not job.hub_job_id:
            raise CannotCancel(f"job {job.job_id} is being submitted; try again in a minute")
        # Remembered first: a cancel the hub does not take now (throttling, no answer) is sent again by the monitor.
        job = self.ledger.save(
            replace(job, cancel_pending=True, waiting_for="cancellation requested", updated=self.ctx.clock())
        )
        return self._send_cancel(job)

    def _send_cancel(self, job: Job, *, raising: bool = True) -> Job:
        """Ask the executor to cancel ``job``; a passing fault leaves the request pending for the next pass. A
        definitive refusal ends the request: raised to the caller (``raising``), or logged by a monitor pass."""
        try:
            self.kinds[job.kind].cancel(job, self.ctx)
        except TRANSIENT as exc:
            logger.warning("cancelling job %s: %s; the monitor sends it again", job.job_id, exc)
            why = f"cancellation requested; the hub did not take it yet ({exc}): the monitor sends it again"
            return self.ledger.save(replace(job, waiting_for=why, updated=self.ctx.clock()))
        except (CannotCancel, IoTHubError) as exc:
            why = f"the cancellation was refused: {exc}"
            job = self.ledger.save(replace(job, cancel_pending=False, waiting_for=why, updated=self.ctx.clock()))
            if raising:
                raise
            logger.warning("cancelling job %s: %s", job.job_id, why)
            return job
        return self.ledger.save(
            replace(job, cancel_pending=False, waiting_for="cancellation requested", updated=self.ctx.clock())
        )

    def _close(self, job: Job, ending: Ending, *, tolerant: bool = False) -> Job:
        """End a job: archive its upload, write its summary, let its kind drop what it no longer needs (``closed``),
        record the end, free the slot, drop the work container.

        Everything before the ledger records the end is idempotent: a crash in between leaves the job open and the
        next pass repeats those steps (a file that held keys is never left behind by a crash); a crash after it
        leaves at most an unused container.
        """
        succeeded = ending.state in (JobState.COMPLETED, JobState.COMPLETED_WITH_ERRORS)
        now = self.ctx.clock()
        final = replace(ending.job, failure_reason=ending.reason, waiting_for=None, retry_at=None, cancel_pending=False)
        try:
            final = replace(
                final, archived=self._archive(final, ArchiveKind.PROCESSED if succeeded else ArchiveKind.FAILED)
            )
        except StorageError as exc:
            logger.warning("archiving the upload of job %s failed: %s; it stays where it is", job.job_id, exc)
        final = advance(final, ending.state, now=now)
        doc = summary_document(job_view(final), dict(ending.summary))
        try:
            final = replace(
                final, reports={**final.reports, "summary": self.ctx.write_report(final, "summary.json", doc)}
            )
        except StorageDenied as exc:
            if not tolerant:
                raise
            # Failing because storage refuses the app: the summary cannot be written, the ledger still says why.
            logger.warning("job %s fails without its summary: %s", job.job_id, exc)
        kind = self.kinds.get(final.kind)
        if kind is not None:
            try:
                kind.closed(final, self.ctx)
            except StorageError as exc:
                logger.warning("job %s is ending; cleaning up after it failed: %s", job.job_id, exc)
        job = self.ledger.save(final)
        checkpoint("ended")
        self.slots.release(job.hub, job.job_id, now=now)
        try:
            self.ctx.storage.delete_container(job.work_container)
        except StorageError as exc:
            logger.warning("could not delete the work container of job %s: %s", job.job_id, exc)
        return job

    # --- uploads --------------------------------------------------------------------------------------

    def _is_upload(self, ref: BlobRef) -> bool:
        return ref.container == self.ctx.containers.uploads

    def _archive_path(self, job: Job, kind: ArchiveKind) -> str | None:
        """Where the job's upload goes when it ends (None: not an upload; it stays where it is)."""
        if job.source is None or not self._is_upload(self.ctx.source(job)):
            return None
        name = self.ctx.source(job).name
        return f"{self.ctx.containers.archive}/{fitted_name(f'{kind}/{job.job_id}', name)}"

    def _archive(self, job: Job, kind: ArchiveKind | None = None) -> str | None:
        """Move the job's upload (the version it read) to the archive; anything not an upload is left alone."""
        if job.source is None or not job.source_etag:
            return None
        ref = self.ctx.source(job)
        if not self._is_upload(ref):
            return None
        if kind is None:
            kind = (
                ArchiveKind.PROCESSED
                if job.state in (JobState.COMPLETED, JobState.COMPLETED_WITH_ERRORS)
                else ArchiveKind.FAILED
            )
        return move_to_archive(
            self.ctx.storage, self.ledger, ref, kind, archive_container=self.ctx.containers.archive, job_id=job.job_id
        )

    # --- housekeeping ---------------------------------------------------------------------------------

    def sweep_work_containers(self, older_than: timedelta) -> list[str]:
        """Delete work containers no live job owns: left by a crash between staging and recording the job (the
        redelivery made a new one), or by a crash after a job ended. Young ones may belong to a job being
        accepted right now, so only those older than ``older_than`` go. Returns the names deleted."""
        cutoff = self.ctx.clock() - older_than
        deleted = []
        for name, modified in self.ctx.storage.containers("job-"):
            if modified > cutoff:
                continue
            job = self.ledger.find(name.removeprefix("job-"))
            if job is None or job.state.is_terminal:
                self.ctx.storage.delete_container(name)
                deleted.append(name)
                logger.info("deleted work container %s (%s)", name, "no job" if job is None else job.state)
        return deleted
