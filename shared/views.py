"""A job as people see it: the HTTP API's job object, also the ``job`` of a report's summary."""

from __future__ import annotations

from typing import Any

from .ledger import Job


def job_view(job: Job) -> dict[str, Any]:
    """The job's public fields (camelCase, JSON-ready); never a key, SAS or connection string (the ledger holds
    none)."""
    return {
        "hub": job.hub,
        "jobId": job.job_id,
        "kind": str(job.kind),
        "state": str(job.state),
        "created": job.created.isoformat(),
        "updated": job.updated.isoformat(),
        "source": job.source,
        "sourceEtag": job.source_etag,  # the upload version it read: how a client finds the job of its upload
        "sourceSha256": job.source_sha256,
        "archived": job.archived,
        "hubJobId": job.hub_job_id,
        "progress": job.progress,
        "lines": job.lines,
        "modes": job.modes,
        "devices": job.devices,
        "steps": job.steps,
        "validationErrors": job.validation_errors,
        "failedDevices": job.failed_devices,
        "failureReason": job.failure_reason,
        "waitingFor": job.waiting_for,
        "retryAt": job.retry_at.isoformat() if job.retry_at else None,
        "includeKeys": job.include_keys,
        "notes": list(job.notes),
        "attempts": job.attempts,
        "started": job.started.isoformat() if job.started else None,
        "rollbackOf": job.rollback_of,
        "force": job.force,
        "planFor": job.plan_for,
        "registryFrom": job.registry_from,
    }
