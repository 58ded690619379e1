"""The mapping between a ``Job`` and its Table Storage row: the only place that knows the column names."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TypedDict

from ._model import Job, JobKind, JobState


class JobEntity(TypedDict):
    """A job's row. Dict and tuple fields are JSON text (Table Storage has no nested types)."""

    PartitionKey: str
    RowKey: str
    Type: str
    Kind: str
    State: str
    Created: datetime
    Updated: datetime
    Source: str | None
    SourceEtag: str | None
    SourceSnapshot: str | None
    SourceSha256: str | None
    Archived: str | None
    IdempotencyKey: str | None
    HubJobId: str | None
    Progress: int
    Lines: int
    Modes: str
    Devices: int
    Steps: str
    ValidationErrors: int
    FailedDevices: int
    FailureReason: str | None
    WaitingFor: str | None
    RetryAt: datetime | None
    DeniedSince: datetime | None
    Reports: str
    IncludeKeys: bool
    BackupFolder: str | None
    StagedSha256: str | None
    Notes: str
    Attempts: int
    Started: datetime | None
    RollbackOf: str | None
    Force: bool
    FollowUp: str | None
    PlanFor: str | None
    RegistryFrom: str | None
    PeerHub: str | None
    MigrationOf: str | None
    ImportMode: str | None
    IncludeConfigurations: bool
    CancelPending: bool


def to_entity(job: Job) -> JobEntity:
    return {
        "PartitionKey": job.hub,
        "RowKey": job.job_id,
        "Type": "job",
        "Kind": str(job.kind),
        "State": str(job.state),
        "Created": job.created,
        "Updated": job.updated,
        "Source": job.source,
        "SourceEtag": job.source_etag,
        "SourceSnapshot": job.source_snapshot,
        "SourceSha256": job.source_sha256,
        "Archived": job.archived,
        "IdempotencyKey": job.idempotency_key,
        "HubJobId": job.hub_job_id,
        "Progress": job.progress,
        "Lines": job.lines,
        "Modes": json.dumps(job.modes),
        "Devices": job.devices,
        "Steps": json.dumps(job.steps),
        "ValidationErrors": job.validation_errors,
        "FailedDevices": job.failed_devices,
        "FailureReason": job.failure_reason,
        "WaitingFor": job.waiting_for,
        "RetryAt": job.retry_at,
        "DeniedSince": job.denied_since,
        "Reports": json.dumps(job.reports),
        "IncludeKeys": job.include_keys,
        "BackupFolder": job.backup_folder,
        "StagedSha256": job.staged_sha256,
        "Notes": json.dumps(list(job.notes)),
        "Attempts": job.attempts,
        "Started": job.started,
        "RollbackOf": job.rollback_of,
        "Force": job.force,
        "FollowUp": job.follow_up,
        "PlanFor": job.plan_for,
        "RegistryFrom": job.registry_from,
        "PeerHub": job.peer_hub,
        "MigrationOf": job.migration_of,
        "ImportMode": job.import_mode,
        "IncludeConfigurations": job.include_configurations,
        "CancelPending": job.cancel_pending,
    }


def from_entity(row: Mapping[str, object], etag: str | None = None) -> Job:
    """A job from its row as the Tables SDK returns it (``TableEntity`` is a dict; ``etag`` from its metadata)."""

    def text(name: str) -> str | None:
        value = row.get(name)
        return None if value is None else str(value)

    def number(name: str) -> int:
        value = row.get(name)
        return int(value) if isinstance(value, int | float | str) and str(value) else 0

    def counts(name: str) -> dict[str, int]:
        return {str(k): int(v) for k, v in json.loads(text(name) or "{}").items()}

    return Job(
        hub=str(row["PartitionKey"]),
        job_id=str(row["RowKey"]),
        kind=JobKind(str(row["Kind"])),
        state=JobState(str(row["State"])),
        created=_utc(row["Created"]),
        updated=_utc(row["Updated"]),
        source=text("Source"),
        source_etag=text("SourceEtag"),
        source_snapshot=text("SourceSnapshot"),
        source_sha256=text("SourceSha256"),
        archived=text("Archived"),
        idempotency_key=text("IdempotencyKey"),
        hub_job_id=text("HubJobId"),
        progress=number("Progress"),
        lines=number("Lines"),
        modes=counts("Modes"),
        devices=number("Devices"),
        steps=counts("Steps"),
        validation_errors=number("ValidationErrors"),
        failed_devices=number("FailedDevices"),
        failure_reason=text("FailureReason"),
        waiting_for=text("WaitingFor"),
        retry_at=_utc(row["RetryAt"]) if row.get("RetryAt") else None,
        denied_since=_utc(row["DeniedSince"]) if row.get("DeniedSince") else None,
        reports={str(k): str(v) for k, v in json.loads(text("Reports") or "{}").items()},
        include_keys=bool(row.get("IncludeKeys")),
        backup_folder=text("BackupFolder"),
        staged_sha256=text("StagedSha256"),
        notes=tuple(str(n) for n in json.loads(text("Notes") or "[]")),
        attempts=number("Attempts"),
        started=_utc(row["Started"]) if row.get("Started") else None,
        rollback_of=text("RollbackOf"),
        force=bool(row.get("Force")),
        follow_up=text("FollowUp"),
        plan_for=text("PlanFor"),
        registry_from=text("RegistryFrom"),
        peer_hub=text("PeerHub"),
        migration_of=text("MigrationOf"),
        import_mode=text("ImportMode"),
        include_configurations=bool(row.get("IncludeConfigurations")),
        cancel_pending=bool(row.get("CancelPending")),
        etag=etag,
    )


def _utc(value: object) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value))
