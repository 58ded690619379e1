"""The jobs of the ledger table: insert with an idempotency key, read, update under ETag, list."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from itertools import islice
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.data.tables import TableClient, TableEntity, TableServiceClient, TableTransactionError, UpdateMode

from ..storage import reachable
from ._entity import from_entity, to_entity
from ._guard import guarded
from ._model import Job, JobNotFound, JobState, LedgerConflict, LedgerError, advance

KEY_PREFIX = "~key-"


def _job(row: TableEntity) -> Job:
    return from_entity(row, row.metadata.get("etag"))


class Ledger:
    """The job store: one row per job, and one ``~key-<sha256>`` row per idempotency key naming its job."""

    def __init__(self, table: TableClient) -> None:
        self.table = guarded(table)

    @classmethod
    def from_service(cls, service: TableServiceClient, table_name: str = "jobledger") -> Ledger:
        with reachable("the job ledger (creating its table)"):
            return cls(service.create_table_if_not_exists(table_name))

    def create(self, job: Job) -> tuple[Job, bool]:
        """Insert ``job`` (and its idempotency key, atomically). Returns (job, True), or the existing job for the
        same key and False: a repeated delivery of one upload version never makes a second job."""
        ops: list[tuple[str, Any]] = [("create", to_entity(job))]
        if job.idempotency_key:
            key_row = {"PartitionKey": job.hub, "RowKey": KEY_PREFIX + job.idempotency_key, "Type": "key"}
            ops.append(("create", {**key_row, "JobId": job.job_id}))
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
        return self.get(hub, str(row["JobId"]))

    def find_key_anywhere(self, key: str) -> Job | None:
        """The job of an upload version, whatever partition (hub) it went to."""
        rows = list(islice(self.table.query_entities("RowKey eq @k", parameters={"k": KEY_PREFIX + key}), 1))
        return self.get(str(rows[0]["PartitionKey"]), str(rows[0]["JobId"])) if rows else None

    def snapshot_in_use(self, source: str, snapshot: str) -> bool:
        """True if a job read ``source`` from this snapshot and has not archived it yet (it still needs it)."""
        rows = self.table.query_entities(
            "Type eq 'job' and Source eq @src and SourceSnapshot eq @snap", parameters={"src": source, "snap": snapshot}
        )
        return any(not (j := _job(r)).state.is_terminal or not j.archived for r in rows)

    def get(self, hub: str, job_id: str) -> Job:
        try:
            return _job(self.table.get_entity(hub, job_id))
        except ResourceNotFoundError:
            raise JobNotFound(f"no job {job_id} for hub {hub}") from None

    def find(self, job_id: str) -> Job | None:
        """A job by id alone, whatever its hub (for housekeeping, which starts from a container name)."""
        rows = list(islice(self.table.query_entities("RowKey eq @id", parameters={"id": job_id}), 1))
        return _job(rows[0]) if rows else None

    def save(self, job: Job) -> Job:
        """Write ``job`` if its row has not changed since it was read.

        Raises:
            LedgerConflict: someone else changed the row; re-read and decide again.
        """
        try:
            meta = self.table.update_entity(
                to_entity(job), mode=UpdateMode.REPLACE, etag=job.etag, match_condition=MatchConditions.IfNotModified
            )
        except HttpResponseError as exc:
            if exc.status_code == 412:
                raise LedgerConflict(f"job {job.job_id} changed meanwhile") from exc
            raise
        return replace(job, etag=meta.get("etag"))

    def move(self, job: Job, to: JobState, *, now: datetime) -> Job:
        """``advance`` and ``save`` in one (set other fields with ``dataclasses.replace`` first)."""
        return self.save(advance(job, to, now=now))

    def list_jobs(
        self,
        hub: str | None = None,
        *,
        states: set[JobState] | None = None,
        limit: int = 50,
        after: str | None = None,
        source: str | None = None,
    ) -> tuple[list[Job], str | None]:
        """Newest first, at most ``limit``; ``after`` is the last job id of the previous page; ``source``: only the
        jobs that read that container/name."""
        parts = ["Type eq 'job'"]
        params: dict[str, Any] = {}
        if hub:
            parts.append("PartitionKey eq @hub")
            params["hub"] = hub
        if source:
            parts.append("Source eq @src")
            params["src"] = source
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
            jobs = [_job(e) for e in islice(rows, limit + 1)]
        else:
            jobs = sorted((_job(e) for e in rows), key=lambda j: j.job_id)[: limit + 1]
        page = jobs[:limit]
        return page, (page[-1].job_id if len(jobs) > limit else None)

    def iter_active(self, hub: str) -> Iterator[Job]:
        """Queued, submitting and running jobs of a hub, oldest first."""
        rows = self.table.query_entities(
            "PartitionKey eq @hub and Type eq 'job' and "
            "(State eq 'queued' or State eq 'submitting' or State eq 'running')",
            parameters={"hub": hub},
        )
        yield from sorted((_job(e) for e in rows), key=lambda j: j.job_id, reverse=True)
