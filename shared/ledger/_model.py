"""A job as the ledger records it: its kind, its state and the only moves between states.

Errors: ``LedgerError`` > ``InvalidTransition`` (a move the state machine forbids), ``LedgerConflict`` (the row
changed since it was read: re-read and decide again), ``JobNotFound``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class JobState(StrEnum):
    QUEUED = "queued"
    SUBMITTING = "submitting"
    RUNNING = "running"
    COMPLETED = "completed"
    COMPLETED_WITH_ERRORS = "completed_with_errors"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    AWAITING_APPROVAL = "awaiting_approval"  # a risky import on a hub that requires a plan: waits for approve

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES


class JobKind(StrEnum):
    IMPORT = "import"
    EXPORT = "export"
    RESTORE = "restore"  # an import of a backup folder, read in place (never moved)
    CENTRAL_APPLY = "central_apply"
    PLAN = "plan"  # what an import would do (a fresh export joined with the file); also takes an import's snapshot
    ROLLBACK = "rollback"  # an import's snapshot joined with a fresh export: the inverse file, queued as an import
    # A hub migrated to another: an export of the source (partition: the source hub), which queues the import of it
    # into the target (partition: the target), which queues the verification (a target export compared with it).
    MIGRATION = "migration"
    MIGRATION_IMPORT = "migration_import"
    MIGRATION_VERIFY = "migration_verify"


# The states a job never leaves; clients (tests, bench) import this set rather than spell it again.
TERMINAL_STATES = frozenset(
    {JobState.COMPLETED, JobState.COMPLETED_WITH_ERRORS, JobState.FAILED, JobState.CANCELLED, JobState.REJECTED}
)
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    # REJECTED: before it is recorded, a job whose input failed its checks (nothing was sent anywhere)
    JobState.QUEUED: frozenset(
        {JobState.SUBMITTING, JobState.CANCELLED, JobState.FAILED, JobState.REJECTED, JobState.AWAITING_APPROVAL}
    ),
    # a risky import (any delete, or more updates than the hub allows unreviewed) waits for POST .../approve
    JobState.AWAITING_APPROVAL: frozenset({JobState.QUEUED, JobState.CANCELLED}),
    # back to QUEUED when the hub turned out busy, or a crashed submission left no hub job behind
    JobState.SUBMITTING: frozenset(
        {
            JobState.RUNNING,
            JobState.QUEUED,
            JobState.COMPLETED,  # a kind that runs in the app (an IoT Central apply) ends without a hub job
            JobState.COMPLETED_WITH_ERRORS,
            JobState.FAILED,
            JobState.CANCELLED,
        }
    ),
    # back to QUEUED when its hub job failed because storage refused the hub (a role not yet in effect): resubmitted
    JobState.RUNNING: frozenset(
        {JobState.COMPLETED, JobState.COMPLETED_WITH_ERRORS, JobState.FAILED, JobState.CANCELLED, JobState.QUEUED}
    ),
}


class LedgerError(Exception):
    """Base for ledger errors."""


class InvalidTransition(LedgerError):
    def __init__(self, job_id: str, frm: JobState, to: JobState) -> None:
        super().__init__(f"job {job_id} cannot go from {frm} to {to}")
        self.frm, self.to = frm, to


class LedgerConflict(LedgerError):
    """The row changed since it was read (ETag mismatch)."""


class JobNotFound(LedgerError):
    pass


def new_job_id(now: datetime) -> str:
    """Sortable newest-first id: inverted milliseconds since the epoch, then randomness."""
    ms = int(now.timestamp() * 1000)
    return f"{10**13 - ms:013d}-{secrets.token_hex(3)}"


def idempotency_key(container: str, name: str, etag: str) -> str:
    """The identity of one version of one upload: a repeated delivery of it maps to the same job."""
    return hashlib.sha256(f"{container}/{name}@{etag.strip(chr(34))}".encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Job:
    """One job. Fields a kind does not use keep their defaults; each says which kinds fill it."""

    hub: str  # the ledger partition: a hub's name, or "central" for IoT Central applies
    job_id: str
    kind: JobKind
    state: JobState
    created: datetime
    updated: datetime
    source: str | None = None  # container/name of what the job reads: an upload, a backup, a blob named by a call
    source_etag: str | None = None
    source_snapshot: str | None = None  # the snapshot of the upload version the job read (uploads only)
    source_sha256: str | None = None  # of the bytes read from the source, exactly as they were
    archived: str | None = None  # container/name the upload was moved to (may be a fitted name: see storage)
    idempotency_key: str | None = None
    hub_job_id: str | None = None
    progress: int = 0  # percent
    lines: int = 0  # import, restore: lines in the devices file
    modes: dict[str, int] = field(default_factory=dict)  # import, restore: lines per import mode
    # export, migration: devices written; plan, migration_verify: devices compared; an import that completed: the
    # lines it applied (a device or module each, those the hub refused left out). Shown only where it says something.
    devices: int = 0
    steps: dict[str, int] = field(default_factory=dict)  # IoT Central apply: planned steps per action
    validation_errors: int = 0
    failed_devices: int = 0
    failure_reason: str | None = None  # why a job failed, was rejected or cancelled; None while it may still succeed
    waiting_for: str | None = None  # why a queued or submitting job is waiting (busy hub, throttling, no answer)
    retry_at: datetime | None = None  # a queued job waits until then after a passing fault
    denied_since: datetime | None = None  # storage has refused the hub or the app since then (waited for, bounded)
    reports: dict[str, str] = field(default_factory=dict)  # name -> container/blob path
    include_keys: bool = False  # export: the backup holds the devices' keys
    backup_folder: str | None = None  # export: <hub>/<stamp> under the backups container
    staged_sha256: str | None = None  # import, restore: of the staged copy the hub reads
    notes: tuple[str, ...] = ()  # what a user should know about a job that is not a failure
    attempts: int = 0
    started: datetime | None = None  # when its latest submission began (elapsed time and ETA count from here)
    rollback_of: str | None = None  # rollback, and the import it queues: the import being undone
    force: bool = False  # rollback: undo even devices changed since the import
    follow_up: str | None = None  # rollback: the import job (same hub) its work goes on in, once it has queued it
    plan_for: str | None = None  # plan: the import whose snapshot it saves (None: a preview only)
    registry_from: str | None = None  # plan, rollback: where the registry side came from (a hub export, a backup)
    peer_hub: str | None = None  # migration: the hub it migrates to; its import and verify: the hub migrated from
    migration_of: str | None = None  # migration import and verify: the migration job (in ``peer_hub``'s partition)
    import_mode: str | None = None  # migration: create | createOrUpdate, the mode of every line it imports
    include_configurations: bool = False  # migration: the hub's configurations go too
    cancel_pending: bool = False  # a cancel the executor has not taken yet (it was throttling): sent again each pass
    etag: str | None = field(default=None, compare=False)  # the table row's ETag, never persisted

    @classmethod
    def new(cls, hub: str, kind: JobKind, now: datetime) -> Job:
        """A ``queued`` job not yet recorded, with a fresh newest-first id (further fields: ``dataclasses.replace``;
        another state: ``advance``)."""
        return cls(hub, new_job_id(now), kind, JobState.QUEUED, now, now)

    @property
    def work_container(self) -> str:
        """The per-job container the hub reads from and writes to (SAS-scoped to this job only)."""
        return f"job-{self.job_id}"


def advance(job: Job, to: JobState, *, now: datetime) -> Job:
    """The only way a job changes state: ``job`` moved to ``to`` (other fields are set with ``dataclasses.replace``
    before; a test holds the code to never set ``state`` any other way).

    Raises:
        InvalidTransition: ``to`` is not allowed from the job's state.
    """
    if to != job.state and to not in TRANSITIONS.get(job.state, frozenset()):
        raise InvalidTransition(job.job_id, job.state, to)
    return dataclasses.replace(job, state=to, updated=now)
