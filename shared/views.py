"""A job as people see it: the HTTP API's job object, also the ``job`` of a report's summary."""

from __future__ import annotations

from typing import Any

from .ledger import Job, JobKind, JobState


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
        **_devices(job),
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
        # The job the work goes on in (a rollback's inverse import): a client following this one follows that next.
        "followUp": job.follow_up,
        "planFor": job.plan_for,
        "registryFrom": job.registry_from,
        "peerHub": job.peer_hub,
        "migrationOf": job.migration_of,
        "importMode": job.import_mode,
        "includeConfigurations": job.include_configurations,
        "cancelPending": job.cancel_pending,
    }


# Kinds whose ``devices`` is a count whatever it is (0 devices exported is news); other kinds show it once set.
_COUNT_DEVICES = frozenset({JobKind.EXPORT, JobKind.PLAN, JobKind.MIGRATION, JobKind.MIGRATION_VERIFY})


def _devices(job: Job) -> dict[str, int]:
    """``devices`` where it means something: an export's or a plan's count, an import's applied lines once it
    completed; nothing for a queued, rejected or failed import, whose 0 said nothing."""
    return {"devices": job.devices} if job.kind in _COUNT_DEVICES or job.devices else {}


_STAGES = ("export", "import", "verify")


def _why_errors(imported: Job | None, verified: Job | None) -> str:
    """Why a migration completed with errors: the lines its import refused, and what its verification found."""
    parts = []
    if imported is not None and imported.failed_devices:
        part = f"{imported.hub} refused {imported.failed_devices:,} line(s) of the import (its errors.csv lists them)"
        if imported.import_mode == "create":
            part += (
                f"; in create mode a device {imported.hub} already has is refused (DeviceAlreadyExists), never "
                "overwritten"
            )
        parts.append(part)
    if verified is not None and verified.failed_devices:
        parts.append(
            f"{verified.failed_devices:,} device(s) are missing in {verified.hub} or differ (see migration.json)"
        )
    return "; ".join(parts) or "see the steps' reports"


def migration_view(exported: Job, imported: Job | None, verified: Job | None) -> dict[str, Any]:
    """A migration as one thing: its stage (the step under way, or the one it stopped at), its state, an overall
    progress (each of the three steps a third), and its three jobs."""
    steps = [exported, imported, verified]
    stage = next((i for i, job in enumerate(steps) if job is None or not job.state.is_terminal), len(steps))
    failed = next(
        (
            job
            for job in steps
            if job is not None and job.state in (JobState.FAILED, JobState.CANCELLED, JobState.REJECTED)
        ),
        None,
    )
    if failed is not None:
        state, stage = failed.state, steps.index(failed)
    elif stage < len(steps):
        current = steps[stage]
        state = JobState.QUEUED if current is None else current.state
        if stage > 0 and state is JobState.QUEUED:
            state = JobState.RUNNING  # the migration is under way; its next step waits for the hub's slot
    else:
        errors = any(job is not None and job.state is JobState.COMPLETED_WITH_ERRORS for job in steps)
        state = JobState.COMPLETED_WITH_ERRORS if errors else JobState.COMPLETED
    done = sum(100 for job in steps if job is not None and job.state.is_terminal)
    current_job = steps[stage] if stage < len(steps) and failed is None else None
    if current_job is not None:
        done += current_job.progress
    return {
        "migrationId": exported.job_id,
        "from": exported.hub,
        "to": exported.peer_hub,
        "mode": exported.import_mode,
        "includeKeys": exported.include_keys,
        "configurations": exported.include_configurations,
        "created": exported.created.isoformat(),
        "stage": _STAGES[min(stage, len(_STAGES) - 1)] if failed is not None or stage < len(steps) else "done",
        "state": str(state),
        "progress": min(done // len(steps), 100),
        "failureReason": failed.failure_reason if failed is not None else None,
        "why": _why_errors(imported, verified) if state is JobState.COMPLETED_WITH_ERRORS else None,
        "jobs": {name: (job_view(job) if job is not None else None) for name, job in zip(_STAGES, steps, strict=True)},
    }
