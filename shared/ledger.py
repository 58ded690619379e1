"""The job ledger in Azure Table Storage: one row per job, the single source of truth.

Layout (one table): PartitionKey = hub name. RowKey = job id, which sorts newest first (inverted time). Two
kinds of helper rows share the partition: ``~key-<sha256>`` maps an upload version to its job (idempotency) and
``~slot`` names the job that holds the hub's single import/export slot.

Every update uses the row's ETag (If-Match), so two function instances can never both move one job, and the
slot is claimed with If-Match so only one instance ever submits to a hub at a time. States and their
transitions are checked in one place, ``advance``. Rows never hold secrets: URLs are stored without queries.

Errors: ``LedgerError`` > ``InvalidTransition`` (a move the state machine forbids), ``LedgerConflict`` (the row
changed since it was read: re-read and decide again), ``JobNotFound``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from itertools import islice
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableClient, TableServiceClient, TableTransactionError, UpdateMode

SLOT_ROW = "~slot"
KEY_PREFIX = "~key-"


class JobState(StrEnum):
    QUEUED = "queued"
    SUBMITTING = "submitting"
    RUNNING = "running"
    COMPLETED = "completed"
    COMPLETED_WITH_ERRORS = "completed_with_errors"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REJECTED = "rejected"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL


class JobKind(StrEnum):
    IMPORT = "import"
    EXPORT = "export"
    RESTORE = "restore"  # an import of a backup folder, read in place (never moved)
    CENTRAL_APPLY = "central_apply"

    @property
    def imports(self) -> bool:
        """The hub job this kind submits is an import (it reads a staged devices file)."""
        return self in (JobKind.IMPORT, JobKind.RESTORE)


_TERMINAL = frozenset(
    {JobState.COMPLETED, JobState.COMPLETED_WITH_ERRORS, JobState.FAILED, JobState.CANCELLED, JobState.REJECTED}
)
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.SUBMITTING, JobState.CANCELLED, JobState.FAILED}),
    # back to QUEUED when the hub turned out busy, or a crashed submission left no hub job behind
    JobState.SUBMITTING: frozenset({JobState.RUNNING, JobState.QUEUED, JobState.FAILED, JobState.CANCELLED}),
    JobState.RUNNING: frozenset(
        {JobState.COMPLETED, JobState.COMPLETED_WITH_ERRORS, JobState.FAILED, JobState.CANCELLED}
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
    hub: str
    job_id: str
    kind: JobKind
    state: JobState
    created: datetime
    updated: datetime
    source: str | None = None  # container/name of the upload, or "http" for a request body
    source_etag: str | None = None
    source_snapshot: str | None = None  # the snapshot of the upload version the job read (uploads only)
    source_sha256: str | None = None  # of the bytes read from the source, exactly as they were
    archived: str | None = None  # container/name the upload was moved to (may be a fitted name: see storage)
    retry_at: datetime | None = None  # a queued job waits until then after a passing fault (throttling, 5xx)
    idempotency_key: str | None = None
    hub_job_id: str | None = None
    progress: int = 0
    lines: int = 0
    modes: dict[str, int] = field(default_factory=dict)
    validation_errors: int = 0
    failed_devices: int = 0
    failure_reason: str | None = None
    reports: dict[str, str] = field(default_factory=dict)  # name -> container/blob path
    params: dict[str, Any] = field(default_factory=dict)  # kind-specific: staged blob, output path, keys...
    attempts: int = 0
    etag: str | None = field(default=None, compare=False)  # the table row's ETag, never persisted

    @classmethod
    def new(cls, hub: str, kind: JobKind, now: datetime, *, state: JobState = JobState.QUEUED, **fields: Any) -> Job:
        """A job not yet recorded, with a fresh newest-first id."""
        return cls(hub, new_job_id(now), kind, state, now, now, **fields)

    @property
    def work_container(self) -> str:
        """The per-job container the hub reads from and writes to (SAS-scoped to this job only)."""
        return f"job-{self.job_id}"

    def to_entity(self) -> dict[str, Any]:
        return {
            "PartitionKey": self.hub,
            "RowKey": self.job_id,
            "Type": "job",
            "Kind": str(self.kind),
            "State": str(self.state),
            "Created": self.created,
            "Updated": self.updated,
            "Source": self.source,
            "SourceEtag": self.source_etag,
            "SourceSnapshot": self.source_snapshot,
            "SourceSha256": self.source_sha256,
            "Archived": self.archived,
            "RetryAt": self.retry_at,
            "IdempotencyKey": self.idempotency_key,
            "HubJobId": self.hub_job_id,
            "Progress": self.progress,
            "Lines": self.lines,
            "Modes": json.dumps(self.modes),
            "ValidationErrors": self.validation_errors,
            "FailedDevices": self.failed_devices,
            "FailureReason": self.failure_reason,
            "Reports": json.dumps(self.reports),
            "Params": json.dumps(self.params),
            "Attempts": self.attempts,
        }

    @classmethod
    def from_entity(cls, e: Any) -> Job:
        return cls(
            hub=e["PartitionKey"],
            job_id=e["RowKey"],
            kind=JobKind(e["Kind"]),
            state=JobState(e["State"]),
            created=_utc(e["Created"]),
            updated=_utc(e["Updated"]),
            source=e.get("Source"),
            source_etag=e.get("SourceEtag"),
            source_snapshot=e.get("SourceSnapshot"),
            source_sha256=e.get("SourceSha256"),
            archived=e.get("Archived"),
            retry_at=_utc(e["RetryAt"]) if e.get("RetryAt") else None,
            idempotency_key=e.get("IdempotencyKey"),
            hub_job_id=e.get("HubJobId"),
            progress=int(e.get("Progress") or 0),
            lines=int(e.get("Lines") or 0),
            modes=json.loads(e.get("Modes") or "{}"),
            validation_errors=int(e.get("ValidationErrors") or 0),
            failed_devices=int(e.get("FailedDevices") or 0),
            failure_reason=e.get("FailureReason"),
            reports=json.loads(e.get("Reports") or "{}"),
            params=json.loads(e.get("Params") or "{}"),
            attempts=int(e.get("Attempts") or 0),
            etag=e.metadata.get("etag") if hasattr(e, "metadata") else None,
        )

    def public(self) -> dict[str, Any]:
        """The job as the HTTP API shows it."""
        return {
            "hub": self.hub,
            "jobId": self.job_id,
            "kind": str(self.kind),
            "state": str(self.state),
            "created": self.created.isoformat(),
            "updated": self.updated.isoformat(),
            "source": self.source,
            "sourceSha256": self.source_sha256,
            "archived": self.archived,
            "retryAt": self.retry_at.isoformat() if self.retry_at else None,
            "hubJobId": self.hub_job_id,
            "progress": self.progress,
            "lines": self.lines,
            "modes": self.modes,
            "validationErrors": self.validation_errors,
            "failedDevices": self.failed_devices,
            "failureReason": self.failure_reason,
            "attempts": self.attempts,
            "notes": list(self.params.get("notes", [])),
        }


def _utc(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value))


def advance(job: Job, to: JobState, *, now: datetime, **changes: Any) -> Job:
    """The only way a job changes state.

    Raises:
        InvalidTransition: ``to`` is not allowed from the job's state.
    """
    if to != job.state and to not in TRANSITIONS.get(job.state, frozenset()):
        raise InvalidTransition(job.job_id, job.state, to)
    return dataclasses.replace(job, state=to, updated=now, **changes)


class Ledger:
    """Jobs, their idempotency keys and each hub's slot, in one table."""

    def __init__(self, table: TableClient) -> None:
        self.table = table

    @classmethod
    def from_service(cls, service: TableServiceClient, table_name: str = "jobledger") -> Ledger:
        return cls(service.create_table_if_not_exists(table_name))

    # --- jobs ---------------------------------------------------------------------------------------

    def create(self, job: Job) -> tuple[Job, bool]:
        """Insert ``job`` (and its idempotency key, atomically). Returns (job, True), or the existing job for the
        same key and False: a repeated delivery of one upload version never makes a second job."""
        ops: list[tuple[str, dict[str, Any]]] = [("create", job.to_entity())]
        if job.idempotency_key:
            ops.append(
                (
                    "create",
                    {
                        "PartitionKey": job.hub,
                        "RowKey": KEY_PREFIX + job.idempotency_key,
                        "Type": "key",
                        "JobId": job.job_id,
                    },
                )
            )
        try:
            self.table.submit_transaction(ops)
        except TableTransactionError as exc:
            if job.idempotency_key and exc.status_code == 409:
                existing = self.find_by_key(job.hub, job.idempotency_key)
                if existing is not None:
                    return existing, False
            raise LedgerError(f"could not record job {job.job_id}: {exc.status_code}") from exc
        return self.get(job.hub, job.job_id), True

    def find_by_key(self, hub: str, key: str) -> Job | None:
        try:
            row = self.table.get_entity(hub, KEY_PREFIX + key)
        except ResourceNotFoundError:
            return None
        return self.get(hub, row["JobId"])

    def get(self, hub: str, job_id: str) -> Job:
        try:
            return Job.from_entity(self.table.get_entity(hub, job_id))
        except ResourceNotFoundError:
            raise JobNotFound(f"no job {job_id} for hub {hub}") from None

    def find_key_anywhere(self, key: str) -> Job | None:
        """The job of an upload version, whatever partition (hub) it went to."""
        rows = list(islice(self.table.query_entities("RowKey eq @k", parameters={"k": KEY_PREFIX + key}), 1))
        return self.get(rows[0]["PartitionKey"], rows[0]["JobId"]) if rows else None

    def snapshot_in_use(self, source: str, snapshot: str) -> bool:
        """True if a job read ``source`` from this snapshot and has not archived it yet (it still needs it)."""
        rows = self.table.query_entities(
            "Type eq 'job' and Source eq @src and SourceSnapshot eq @snap", parameters={"src": source, "snap": snapshot}
        )
        return any(not (j := Job.from_entity(r)).state.is_terminal or not j.archived for r in rows)

    def find(self, job_id: str) -> Job | None:
        """A job by id alone, whatever its hub (for housekeeping, which starts from a container name)."""
        rows = list(islice(self.table.query_entities("RowKey eq @id", parameters={"id": job_id}), 1))
        return Job.from_entity(rows[0]) if rows else None

    def save(self, job: Job) -> Job:
        """Write ``job`` if its row has not changed since it was read.

        Raises:
            LedgerConflict: someone else changed the row; re-read and decide again.
        """
        try:
            meta = self.table.update_entity(
                job.to_entity(), mode=UpdateMode.REPLACE, etag=job.etag, match_condition=MatchConditions.IfNotModified
            )
        except HttpResponseError as exc:
            if exc.status_code == 412:
                raise LedgerConflict(f"job {job.job_id} changed meanwhile") from exc
            raise
        return dataclasses.replace(job, etag=meta.get("etag"))

    def move(self, job: Job, to: JobState, *, now: datetime, **changes: Any) -> Job:
        return self.save(advance(job, to, now=now, **changes))

    def list_jobs(
        self,
        hub: str | None = None,
        *,
        states: set[JobState] | None = None,
        limit: int = 50,
        after: str | None = None,
    ) -> tuple[list[Job], str | None]:
        """Newest first, at most ``limit``; ``after`` is the last job id of the previous page."""
        parts = ["Type eq 'job'"]
        params: dict[str, Any] = {}
        if hub:
            parts.append("PartitionKey eq @hub")
            params["hub"] = hub
        if after:
            parts.append("RowKey gt @after")
            params["after"] = after
        if states:
            names = sorted(str(s) for s in states)
            # the SDK reads a parameter name up to the next space, so none may touch the closing parenthesis
            parts.append("(" + " or ".join(f"State eq @s{i}" for i in range(len(names))) + " )")
            params.update({f"s{i}": n for i, n in enumerate(names)})
        rows = self.table.query_entities(" and ".join(parts), parameters=params)
        if hub:
            # One partition comes back in RowKey order, which is newest first: read one row past the page only.
            jobs = [Job.from_entity(e) for e in islice(rows, limit + 1)]
        else:
            jobs = sorted((Job.from_entity(e) for e in rows), key=lambda j: j.job_id)[: limit + 1]
        page = jobs[:limit]
        return page, (page[-1].job_id if len(jobs) > limit else None)

    def iter_active(self, hub: str) -> Iterator[Job]:
        """Queued, submitting and running jobs of a hub, oldest first."""
        rows = self.table.query_entities(
            "PartitionKey eq @hub and Type eq 'job' and "
            "(State eq 'queued' or State eq 'submitting' or State eq 'running')",
            parameters={"hub": hub},
        )
        yield from sorted((Job.from_entity(e) for e in rows), key=lambda j: j.job_id, reverse=True)

    # --- the hub slot -------------------------------------------------------------------------------

    def slot_holder(self, hub: str) -> str | None:
        try:
            return self.table.get_entity(hub, SLOT_ROW).get("Holder") or None
        except ResourceNotFoundError:
            return None

    def claim_slot(self, hub: str, job_id: str, *, now: datetime) -> bool:
        """Take the hub's single job slot for ``job_id``. True if it holds it now (also if it already did)."""
        try:
            row = self.table.get_entity(hub, SLOT_ROW)
        except ResourceNotFoundError:
            try:
                self.table.create_entity(_slot(hub, job_id, now))
                return True
            except ResourceExistsError:
                row = self.table.get_entity(hub, SLOT_ROW)
        holder = row.get("Holder") or None
        if holder == job_id:
            return True
        if holder is not None:
            return False
        return self._swap_slot(hub, row.metadata["etag"], job_id, now)

    def release_slot(self, hub: str, job_id: str, *, now: datetime) -> bool:
        """Free the slot if ``job_id`` holds it. True if released (or already free of this job)."""
        try:
            row = self.table.get_entity(hub, SLOT_ROW)
        except ResourceNotFoundError:
            return True
        if (row.get("Holder") or None) != job_id:
            return True
        return self._swap_slot(hub, row.metadata["etag"], "", now)

    def _swap_slot(self, hub: str, etag: str | None, holder: str, now: datetime) -> bool:
        """Set the slot's holder if the row is still as read (If-Match); False if another instance got there first."""
        try:
            self.table.update_entity(
                _slot(hub, holder, now),
                mode=UpdateMode.REPLACE,
                etag=etag,
                match_condition=MatchConditions.IfNotModified,
            )
        except HttpResponseError as exc:
            if exc.status_code == 412:
                return False
            raise
        return True


def _slot(hub: str, holder: str, now: datetime) -> dict[str, Any]:
    return {"PartitionKey": hub, "RowKey": SLOT_ROW, "Type": "slot", "Holder": holder, "Since": now}
