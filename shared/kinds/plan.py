"""Previews and snapshots (``PlanKind``): what an import would do, read from a fresh export of the hub joined with
the file; and, for an import about to run (``plan_for``), the snapshot of every device it touches.

A plan job takes the hub's slot like any job (the export is a hub job). Its file is validated and staged like an
import's, so a file the import would reject is rejected here with the same findings. A preview may read the latest
backup instead of exporting, when one is younger than ``PLAN_BACKUP_MAX_AGE_MINUTES``; the report says which.
Snapshots always come from a fresh export with keys: they are what a rollback puts back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime, timedelta

from ..backups import DEVICES_BLOB, MANIFEST_BLOB, latest_backup
from ..config import Snapshots
from ..engine import Context, Ending
from ..fleet import Join, Plan, snapshot_record
from ..iothub import IoTHubClient
from ..iothub import Job as HubJob
from ..ledger import Job, JobKind, JobState
from ..storage import NDJSON_TYPE, BlobRef, UploadChanged
from ._hub import REGISTRY_BLOB, WORK_DEVICES_BLOB, export_registry, export_unfinished
from .imports import ImportKind

SNAPSHOT_BLOB = "devices.jsonl"
PLAN_REPORT = "plan.json"


def snapshot_folder(import_job_id: str) -> str:
    return import_job_id


class PlanKind(ImportKind):
    name = JobKind.PLAN

    def __init__(self, backup_max_age: timedelta = timedelta(0)) -> None:
        super().__init__(Snapshots.OFF)
        self.backup_max_age = backup_max_age

    def closed(self, job: Job, ctx: Context) -> None:
        """A plan only reads its file: a generated one (a bulk's) stays for its run."""

    def prepare(self, job: Job, ctx: Context) -> Job:
        if job.plan_for:
            return job  # the import's own file, validated when it was accepted: read at the end, in place
        return self._validate_and_stage(job, ctx, ctx.source(job))

    def submit(self, job: Job, ctx: Context) -> HubJob | Ending:
        if not job.plan_for and self.backup_max_age > timedelta(0):
            folder = latest_backup(ctx.storage, ctx.containers.backups, job.hub)
            if folder is not None:
                taken = datetime.strptime(folder.split("/", 1)[1], "%Y%m%dT%H%M%SZ").replace(tzinfo=ctx.clock().tzinfo)
                if ctx.clock() - taken <= self.backup_max_age:
                    ref = BlobRef(ctx.containers.backups, f"{folder}/{DEVICES_BLOB}")
                    source = f"backup {ctx.containers.backups}/{folder} (taken {taken.isoformat()})"
                    manifest = json.loads(
                        b"".join(ctx.storage.open_read(BlobRef(ctx.containers.backups, f"{folder}/{MANIFEST_BLOB}")))
                    )
                    if not manifest.get("includesKeys"):
                        note = "the backup holds no keys: authentication types and keys were not compared"
                        job = replace(job, notes=(*job.notes, note))
                    return self._planned(replace(job, registry_from=source), ctx, ctx.storage.open_read(ref))
        return super().submit(job, ctx)

    def create(self, job: Job, client: IoTHubClient, container_url: tuple[str, str], ctx: Context) -> HubJob:
        return export_registry(job, client, container_url, ctx)  # with keys: a snapshot must restore them

    def end(self, job: Job, hub_job: HubJob, ctx: Context) -> Ending:
        if (ended := export_unfinished(job, hub_job, "nothing was planned")) is not None:
            return ended
        job = replace(job, registry_from=f"a fresh export of {job.hub} (hub job {hub_job.job_id})")
        return self._planned(job, ctx, ctx.storage.open_read(BlobRef(job.work_container, REGISTRY_BLOB)))

    @staticmethod
    def _file(job: Job, ctx: Context) -> BlobRef:
        """The file planned: the job's own source, or the source of the import it snapshots (read in place, by the
        import's pinned version: a plan job never names an upload as its own source, which would archive it)."""
        if job.source is None and job.plan_for:
            return ctx.source(ctx.ledger.get(job.hub, job.plan_for))
        if job.source is not None and job.source.startswith("job-"):
            # another job's staged copy (a held import's), gone when that job ends: read the copy staged here
            return BlobRef(job.work_container, WORK_DEVICES_BLOB)
        return ctx.source(job)

    def _planned(self, job: Job, ctx: Context, registry: Iterable[bytes]) -> Ending:
        """Join the file with the registry: the plan report, and the snapshot when the plan is an import's."""
        try:
            return self._join(job, ctx, registry)
        except UploadChanged:
            reason = "the file changed after it was checked; nothing was planned: plan it again"
            return Ending(job, JobState.FAILED, reason)

    def _join(self, job: Job, ctx: Context, registry: Iterable[bytes]) -> Ending:
        started = time.monotonic()
        plan = Plan(max_shown=ctx.max_errors)
        snapshot = None
        if job.plan_for:
            ctx.storage.ensure_container(ctx.containers.snapshots)
            snapshot = ctx.storage.stage(ctx.containers.snapshots, f"{snapshot_folder(job.plan_for)}/{SNAPSHOT_BLOB}")
        with Join() as join:
            join.add_file(ctx.storage.open_read(self._file(job, ctx)))
            registry_lines = join.add_registry(registry)
            for device in join.devices():
                plan.add(device)
                if snapshot is not None:
                    snapshot.write(snapshot_record(device) + b"\n")
        reports = dict(job.reports)
        notes = list(job.notes)
        if snapshot is not None and job.plan_for:
            snapshot.commit(content_type=NDJSON_TYPE)
            folder = snapshot_folder(job.plan_for)
            manifest = {
                "importJobId": job.plan_for,
                "planJobId": job.job_id,
                "hub": job.hub,
                "devices": plan.devices,
                "lines": plan.lines,
                "sha256": snapshot.sha256,
                "bytes": snapshot.size,
                "includesKeys": True,
                "registry": job.registry_from,
                "created": ctx.clock().isoformat(),
            }
            # Written last: a snapshot without its manifest is incomplete and never used.
            ctx.storage.upload_bytes(
                ctx.containers.snapshots, f"{folder}/{MANIFEST_BLOB}", json.dumps(manifest, indent=2).encode()
            )
            reports["snapshot"] = f"{ctx.containers.snapshots}/{folder}/{MANIFEST_BLOB}"
            notes.append(f"saved the snapshot of import {job.plan_for}: {plan.devices} device(s) it touches")
        doc = {
            "planJobId": job.job_id,
            "hub": job.hub,
            "source": job.source,
            "importJobId": job.plan_for,
            "registry": {"from": job.registry_from, "lines": registry_lines},
            "planSeconds": round(time.monotonic() - started, 3),
            **plan.document(),
        }
        if job.notes:
            doc["notes"] = list(job.notes)
        reports["plan"] = ctx.write_report(job, PLAN_REPORT, doc)
        done = replace(job, lines=plan.lines, devices=plan.devices, reports=reports, notes=tuple(notes), progress=100)
        summary = {"plan": {"totals": plan.document()["totals"], "registry": job.registry_from}}
        return Ending(done, JobState.COMPLETED, None, summary)
