"""What ``IoTHubClient`` returns: jobs and registry statistics, never HTTP responses."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit


class JobStatus(StrEnum):
    UNKNOWN = "unknown"
    ENQUEUED = "enqueued"
    QUEUED = "queued"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


class JobType(StrEnum):
    IMPORT = "import"
    EXPORT = "export"
    OTHER = "unknown"


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value or value.startswith("0001-"):
        return None
    text = value.rstrip("Z")
    head, _, frac = text.partition(".")
    try:
        return datetime.fromisoformat(f"{head}.{frac[:6]}+00:00" if frac else f"{head}+00:00")
    except ValueError:
        return None


def strip_query(uri: str | None) -> str | None:
    """A URI without its query string: where a SAS token would be. Safe to log and store."""
    if not uri:
        return uri
    p = urlsplit(uri)
    return f"{p.scheme}://{p.netloc}{p.path}"


@dataclass(frozen=True, slots=True)
class Job:
    """An import or export job as the hub reports it. Container URIs are kept without their SAS."""

    job_id: str
    type: JobType
    status: JobStatus
    progress: int
    start_time: datetime | None
    end_time: datetime | None
    failure_reason: str | None
    input_container: str | None
    output_container: str | None
    input_blob_name: str | None
    output_blob_name: str | None
    exclude_keys: bool | None

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Job:
        try:
            status = JobStatus(str(body.get("status", "unknown")))
        except ValueError:
            status = JobStatus.UNKNOWN
        try:
            kind = JobType(str(body.get("type")))
        except ValueError:
            kind = JobType.OTHER
        return cls(
            job_id=str(body["jobId"]),
            type=kind,
            status=status,
            progress=int(body.get("progress") or 0),
            start_time=_parse_time(body.get("startTimeUtc")),
            end_time=_parse_time(body.get("endTimeUtc")),
            failure_reason=body.get("failureReason") or None,
            input_container=strip_query(body.get("inputBlobContainerUri")),
            output_container=strip_query(body.get("outputBlobContainerUri")),
            input_blob_name=body.get("inputBlobName"),
            output_blob_name=body.get("outputBlobName"),
            exclude_keys=body.get("excludeKeysInExport"),
        )

    @property
    def storage_denied(self) -> bool:
        """The job failed because the hub could not read or write its storage: a passing fault right after a
        deployment, while the role assignment of the hub's identity (or a new SAS) takes effect."""
        return self.status is JobStatus.FAILED and bool(
            self.failure_reason and _STORAGE_DENIED.search(self.failure_reason)
        )


# How a failed job says its storage refused the hub. The service's text, as observed (Azure/azure-iot-cli-extension
# #93): "Unable to access blob. ... errorcode: IH400007"; storage's own 403 codes (AuthorizationFailure,
# AuthorizationPermissionMismatch) where a failure reason quotes them, as the emulator's do.
_STORAGE_DENIED = re.compile(
    r"IH400007|Unable to access blob|AuthorizationPermissionMismatch|AuthorizationFailure|Storage refused access|"
    r"identity has no role on the storage account"
)


@dataclass(frozen=True, slots=True)
class RegistryStatistics:
    total: int
    enabled: int
    disabled: int
