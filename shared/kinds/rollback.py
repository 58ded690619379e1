"""Undo an import (``RollbackKind``): its snapshot joined with a fresh export gives the inverse file, which is
queued as a normal import job with ``rollback_of`` set (validated, reported, snapshotted, undoable in turn).

Refused, with nothing changed, when a device the import touched has changed since (neither as the import left it
nor as it was before), unless the rollback is forced. Which jobs can be rolled back is decided in one place,
``rollback_refusal``, used by the HTTP call (a 409 with the reason) and by ``prepare``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace

import orjson

from ..backups import MANIFEST_BLOB
from ..engine import Context, Ending
from ..fleet import Inverse, Join
from ..iothub import IoTHubClient
from ..iothub import Job as HubJob
from ..ledger import Job, JobKind, JobState, advance
from ..storage import BlobRef
from ._hub import REGISTRY_BLOB, HubJobKind, export_registry, export_unfinished
from .imports import CREATE_MODE, ImportKind
from .plan import SNAPSHOT_BLOB, snapshot_folder

ROLLBACK_REPORT = "rollback.json"
_UNDOABLE = (JobState.COMPLETED, JobState.COMPLETED_WITH_ERRORS, JobState.FAILED, JobState.CANCELLED)


def rollback_refusal(ctx: Context, target: Job) -> str | None:
    """Why ``target`` cannot be rolled back (None: it can)."""
    if target.kind is not JobKind.IMPORT:
        return f"job {target.job_id} is a {target.kind} job: only imports can be rolled back"
    if target.state is JobState.REJECTED:
        return f"job {target.job_id} was rejected: nothing was imported, so there is nothing to undo"
    if target.state not in _UNDOABLE:
        return f"job {target.job_id} is {target.state}: wait until it ends (or cancel it), then roll it back"
    manifest = BlobRef(ctx.containers.snapshots, f"{snapshot_folder(target.job_id)}/{MANIFEST_BLOB}")
    if ctx.storage.properties(manifest) is None:
        return (
            f"job {target.job_id} has no snapshot, so it cannot be undone: {_why_no_snapshot(target)}; "
            "restore a backup instead"
        )
    return None


def _why_no_snapshot(target: Job) -> str:
    """Why an import ran without a snapshot, as far as its lines tell (the setting in force is not recorded)."""
    if target.modes and set(target.modes) <= {CREATE_MODE}:
        return "its lines only created devices (a create line changes no existing device, so none is snapshotted)"
    return (
        "imports that change existing devices are snapshotted before they run unless IMPORT_SNAPSHOTS is 'off' "
        "(or 'explicit', which skips files of createOrUpdate lines), and it was when this one ran"
    )


class RollbackKind(HubJobKind):
    name = JobKind.ROLLBACK

    def __init__(self, importer: ImportKind) -> None:
        self.importer = importer  # prepares the import of the inverse file, as any import is prepared

    def prepare(self, job: Job, ctx: Context) -> Job:
        assert job.rollback_of is not None
        why = rollback_refusal(ctx, ctx.ledger.get(job.hub, job.rollback_of))
        if why is not None:
            report = ctx.write_report(job, "rejection.json", {"rollbackOf": job.rollback_of, "verdict": why})
            return replace(job, failure_reason=why, validation_errors=1, reports={"rejection": report})
        return job

    def create(self, job: Job, client: IoTHubClient, container_url: tuple[str, str], ctx: Context) -> HubJob:
        return export_registry(job, client, container_url, ctx)

    def end(self, job: Job, hub_job: HubJob, ctx: Context) -> Ending:
        if (ended := export_unfinished(job, hub_job, "nothing was rolled back")) is not None:
            return ended
        target = job.rollback_of
        if target is None:
            return Ending(job, JobState.FAILED, "a rollback job must name the import it undoes")
        job = replace(job, registry_from=f"a fresh export of {job.hub} (hub job {hub_job.job_id})")
        queued = ctx.ledger.find_by_key(job.hub, _undo_key(job))
        if queued is not None:
            # Ended once already (the process died before recording it): the inverse import it queued reads the
            # inverse file by its ETag, so the file is not written again.
            reports = {**job.reports, "rollback": f"{ctx.containers.reports}/{job.job_id}/{ROLLBACK_REPORT}"}
            note = f"the inverse file runs as import job {queued.job_id} ({queued.state})"
            done = replace(job, reports=reports, notes=(*job.notes, note), progress=100, follow_up=queued.job_id)
            return Ending(done, JobState.COMPLETED)
        snapshots = ctx.containers.snapshots
        folder = snapshot_folder(target)
        inverse_name = f"{folder}/rollback-{job.job_id}.txt"
        staged = ctx.storage.stage(snapshots, inverse_name)
        inverse = Inverse()
        with Join() as join:
            join.add_records(
                (str(orjson.loads(raw)["id"]), b"0 " + raw)
                for raw in _lines(ctx.storage.open_read(BlobRef(snapshots, f"{folder}/{SNAPSHOT_BLOB}")))
            )
            join.add_registry(ctx.storage.open_read(BlobRef(job.work_container, REGISTRY_BLOB)))
            for device in join.devices():
                inverse.add(device, staged.write)
        doc: dict[str, object] = {
            "rollbackJobId": job.job_id,
            "rollbackOf": job.rollback_of,
            "hub": job.hub,
            "registry": job.registry_from,
            "devicesInSnapshot": inverse.devices,
            "inverseLines": inverse.lines,
            "inverseModes": inverse.modes,
            "changedSince": inverse.moved_count,
            "changedSinceShown": inverse.moved,
            "forced": job.force,
        }
        reports = {**job.reports}
        if inverse.moved_count and not job.force:
            reports["rollback"] = ctx.write_report(job, ROLLBACK_REPORT, {**doc, "importJobId": None})
            shown = ", ".join(inverse.moved[:5])
            reason = (
                f"{inverse.moved_count} device(s) changed since import {job.rollback_of} (first: {shown}); nothing "
                'was rolled back. Check them, then roll back with {"force": true} to put back the snapshot anyway'
            )
            return Ending(replace(job, reports=reports), JobState.FAILED, reason)
        if not inverse.lines:
            reports["rollback"] = ctx.write_report(job, ROLLBACK_REPORT, {**doc, "importJobId": None})
            note = "the registry is already as it was before the import: nothing to undo"
            return Ending(replace(job, reports=reports, notes=(*job.notes, note), progress=100), JobState.COMPLETED)
        etag = staged.commit()
        undo = self._queue_import(job, BlobRef(snapshots, inverse_name, etag), ctx)
        reports["rollback"] = ctx.write_report(job, ROLLBACK_REPORT, {**doc, "importJobId": undo.job_id})
        note = f"the inverse file ({inverse.lines} line(s)) runs as import job {undo.job_id} ({undo.state})"
        done = replace(
            job, reports=reports, notes=(*job.notes, note), lines=inverse.lines, progress=100, follow_up=undo.job_id
        )
        return Ending(done, JobState.COMPLETED, None, {"importJobId": undo.job_id, "inverseModes": inverse.modes})

    def _queue_import(self, job: Job, ref: BlobRef, ctx: Context) -> Job:
        """The import of the inverse file, recorded once (keyed by this rollback: a repeated end finds it)."""
        key = _undo_key(job)
        existing = ctx.ledger.find_by_key(job.hub, key)
        if existing is not None:
            return existing
        draft = Job.new(job.hub, JobKind.IMPORT, ctx.clock())
        draft = replace(draft, source=ref.path, source_etag=ref.etag, rollback_of=job.rollback_of, idempotency_key=key)
        prepared = self.importer.prepare(draft, ctx)
        if prepared.failure_reason:  # never expected: the inverse is made of export lines; kept visible if it is
            prepared = advance(prepared, JobState.REJECTED, now=prepared.updated)
        created, _ = ctx.ledger.create(prepared)
        return created


def _undo_key(job: Job) -> str:
    return f"rollback-{job.job_id}"


def _lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    carry = b""
    for chunk in chunks:
        *whole, carry = (carry + chunk).split(b"\n")
        yield from (line for line in whole if line.strip())
    if carry.strip():
        yield carry
