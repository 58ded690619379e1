"""A backup: an export job of a hub's registry (and, with ``BACKUP_INCLUDE_CONFIGURATIONS``, its automatic device
management configurations), copied into ``backups/<hub>/<stamp>/`` with its manifest; older backups past the
retention period go once a new one has landed."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from ..backups import (
    CONFIGURATIONS_BLOB,
    DEVICES_BLOB,
    MANIFEST_BLOB,
    Manifest,
    apply_retention,
    backup_folder,
    save_backup,
)
from ..engine import Context, Ending
from ..iothub import IoTHubClient
from ..iothub import Job as HubJob
from ..iothub import JobStatus as HubStatus
from ..ledger import Job, JobKind, JobState
from ..storage import BlobRef
from ._hub import WORK_DEVICES_BLOB, HubJobKind, export_devices


class ExportKind(HubJobKind):
    name = JobKind.EXPORT

    def __init__(self, retention_days: int | None = None, *, include_configurations: bool = False) -> None:
        self.retention_days = retention_days  # None: keep every backup
        self.include_configurations = include_configurations  # BACKUP_INCLUDE_CONFIGURATIONS

    def prepare(self, job: Job, ctx: Context) -> Job:
        return replace(job, backup_folder=backup_folder(job.hub, job.created))

    def create(self, job: Job, client: IoTHubClient, container_url: tuple[str, str], ctx: Context) -> HubJob:
        return export_devices(job, client, container_url, ctx, configurations=self.include_configurations)

    def end(self, job: Job, hub_job: HubJob, ctx: Context) -> Ending:
        if hub_job.status is HubStatus.CANCELLED:
            return Ending(job, JobState.CANCELLED, "cancelled on the hub; no backup was written")
        if hub_job.status is HubStatus.FAILED:
            reason = f"the hub job failed: {hub_job.failure_reason or 'no reason given'}; no backup was written"
            return Ending(job, JobState.FAILED, reason)
        assert job.backup_folder is not None
        container, folder = ctx.containers.backups, job.backup_folder
        manifest = keep_export(job, ctx, container, folder, job.hub_job_id)
        reports = {
            **job.reports,
            "backup": f"{container}/{folder}/{DEVICES_BLOB}",
            "manifest": f"{container}/{folder}/{MANIFEST_BLOB}",
        }
        if self.retention_days is not None:
            # A new good backup has landed: older ones past the retention period can go now.
            apply_retention(ctx.storage, container, job.hub, days=self.retention_days, now=ctx.clock())
        if manifest.configurations is not None:
            reports["configurations"] = f"{container}/{folder}/{CONFIGURATIONS_BLOB}"
        done = replace(job, devices=manifest.devices, reports=reports, progress=100)
        summary = {"configurations": manifest.configurations} if manifest.configurations is not None else {}
        return Ending(done, JobState.COMPLETED, summary=summary)


def keep_export(job: Job, ctx: Context, container: str, folder: str, hub_job_id: str | None) -> Manifest:
    """Copy what the job's export wrote (devices, and configurations when there are) to ``container/folder`` with
    its manifest, written last. Idempotent: a folder that has its manifest is left as it is."""
    # What the hub wrote decides, not today's setting: it may have changed since the job was submitted.
    configurations = BlobRef(job.work_container, CONFIGURATIONS_BLOB)
    wrote_configurations = ctx.storage.properties(configurations) is not None
    return save_backup(
        ctx.storage,
        source=BlobRef(job.work_container, WORK_DEVICES_BLOB),
        container=container,
        folder=folder,
        hub=job.hub,
        job_id=job.job_id,
        hub_job_id=hub_job_id,
        includes_keys=job.include_keys,
        now=ctx.clock(),
        configurations=configurations if wrote_configurations else None,
    )


def nightly_key(hub: str, now: datetime) -> str:
    """One nightly backup per hub and hour slot: a timer fired twice finds the job it queued."""
    return f"nightly-{hub}-{now:%Y%m%d%H}"
