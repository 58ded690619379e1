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
from ..engine import Busy, Context, Ending, Throttled, checkpoint
from ..fleet import Join, Plan, snapshot_record
from ..fleet.bulk import (
    DEVICES,
    QUERY_PAGE_SIZE,
    QUERY_SLICE,
    Cursor,
    InvalidBulk,
    check,
    continue_bulk,
    read_manifest,
    read_request,
)
from ..iothub import IoTHubClient, IoTHubHTTPError, IoTHubUnavailable
from ..iothub import Job as HubJob
from ..ledger import Job, JobKind, JobState
from ..storage import NDJSON_TYPE, BlobRef, UploadChanged
from ._hub import REGISTRY_BLOB, WORK_DEVICES_BLOB, export_registry, export_unfinished
from .imports import ImportKind

SNAPSHOT_BLOB = "devices.jsonl"
PLAN_REPORT = "plan.json"


def snapshot_folder(import_job_id: str) -> str:
    return import_job_id


def _bulk_id(job: Job, ctx: Context) -> str | None:
    """The bulk whose file this plan job plans (``bulk/<id>/devices.txt``), if it is a bulk's."""
    if job.plan_for or job.source is None:
        return None
    ref = BlobRef.parse(job.source)
    bulk_id, _, name = ref.name.partition("/")
    return bulk_id if ref.container == ctx.containers.bulk and name == DEVICES else None


class PlanKind(ImportKind):
    name = JobKind.PLAN

    def __init__(self, backup_max_age: timedelta = timedelta(0)) -> None:
        super().__init__(Snapshots.OFF)
        self.backup_max_age = backup_max_age
        # A bulk's plan: the query's page size, and how long one submission reads it before it saves its cursor.
        self.bulk_page_size = QUERY_PAGE_SIZE
        self.bulk_slice = QUERY_SLICE

    def closed(self, job: Job, ctx: Context) -> None:
        """A plan only reads its file: a generated one (a bulk's) stays for its run."""

    def prepare(self, job: Job, ctx: Context) -> Job:
        if job.plan_for:
            return job  # the import's own file, validated when it was accepted: read at the end, in place
        bulk_id = _bulk_id(job, ctx)
        if bulk_id is not None and read_manifest(ctx.storage, ctx.containers.bulk, bulk_id) is None:
            # A bulk's plan: its file is written by ``submit``, from the hub's query, paced under the query quota.
            request = read_request(ctx.storage, ctx.containers.bulk, bulk_id)
            try:
                if request is None:
                    raise InvalidBulk(f"no bulk '{bulk_id}': POST /api/bulk makes one")
                check(request["query"], request["action"], request["args"])
            except InvalidBulk as exc:
                report = ctx.write_report(job, "rejection.json", {"source": job.source, "verdict": str(exc)})
                return replace(job, failure_reason=str(exc), validation_errors=1, reports={"rejection": report})
            return job
        return self._validate_and_stage(job, ctx, ctx.source(job))

    def submit(self, job: Job, ctx: Context) -> HubJob | Ending:
        bulk_id = _bulk_id(job, ctx)
        if bulk_id is not None and job.staged_sha256 is None:
            job, ended = self._bulk_file(job, ctx, bulk_id)
            if ended is not None:
                return ended
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

    def _bulk_file(self, job: Job, ctx: Context, bulk_id: str) -> tuple[Job, Ending | None]:
        """Read the bulk's query on (for one time slice) and, once its file is written, validate and stage it as
        any planned file: the job as saved (its progress, then its file's counts), and how it ended if it did.

        Raises:
            Busy: the time slice is used up; the read goes on from its cursor at the next pass.
            Throttled: the hub throttled a page past its patience, or did not answer.
        """

        def saved(cursor: Cursor) -> None:
            nonlocal job
            note = f"reading the query: {cursor.devices:,} device(s) in {cursor.pages:,} page(s) so far"
            job = ctx.save_progress(replace(job, waiting_for=note))
            checkpoint("bulk_part")

        try:
            made = continue_bulk(
                ctx.storage,
                ctx.containers.bulk,
                ctx.hubs[job.hub],
                bulk_id,
                page_size=self.bulk_page_size,
                budget=self.bulk_slice,
                saved=saved,
            )
        except IoTHubHTTPError as exc:
            if exc.passing:
                raise Throttled(f"the hub throttles the bulk's query: {exc}", retry_after=exc.retry_after) from None
            return job, Ending(job, JobState.FAILED, f"the hub refused the query: {exc}; nothing was planned")
        except IoTHubUnavailable as exc:
            raise Throttled(f"the hub did not answer the bulk's query: {exc}") from None
        if isinstance(made, Cursor):
            raise Busy(f"reading the query: {made.devices:,} device(s) in {made.pages:,} page(s) so far")
        job = replace(job, source_etag=made.ref.etag)
        if made.result.devices == 0:
            why = "the query selects no device the action applies to: there is nothing to plan or run"
            doc = {"planJobId": job.job_id, "hub": job.hub, "source": job.source, "bulk": made.public(), "totals": {}}
            reports = {**job.reports, "plan": ctx.write_report(job, PLAN_REPORT, {**doc, "message": why})}
            done = replace(job, reports=reports, notes=(*job.notes, why), progress=100)
            return job, Ending(done, JobState.COMPLETED, None, {"bulk": made.public()})
        job = self._validate_and_stage(job, ctx, made.ref)
        if job.failure_reason:  # a file this app generated, refused by its own validator: a bug, said as it is
            return job, Ending(job, JobState.FAILED, f"the bulk's file did not pass validation: {job.failure_reason}")
        return ctx.save_progress(job), None

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
        bulk_id = _bulk_id(job, ctx)
        if bulk_id is not None:  # what the bulk's query selected, for the person who reads its plan
            doc["bulk"] = read_manifest(ctx.storage, ctx.containers.bulk, bulk_id)
        reports["plan"] = ctx.write_report(job, PLAN_REPORT, doc)
        done = replace(job, lines=plan.lines, devices=plan.devices, reports=reports, notes=tuple(notes), progress=100)
        summary = {"plan": {"totals": plan.document()["totals"], "registry": job.registry_from}}
        return Ending(done, JobState.COMPLETED, None, summary)
