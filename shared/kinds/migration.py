"""Migrating a hub's registry to another hub, as three jobs, each on the slot of the hub it runs on:

1. ``MigrationKind`` (partition: the source hub): the source exports its registry (keys, configurations when
   asked) into the job's work container; its end copies the export to ``migrations/<migration id>/`` with a
   manifest (counts, sha256), as a backup is saved, and queues
2. ``MigrationImportKind`` (partition: the target): the export, checked against its manifest, validated and
   imported as a restore is (without the source's ETags, Edge system modules left out), every line in the
   migration's mode (``create``: a device the target has already is refused and reported, never overwritten;
   ``createOrUpdate``: it is replaced); its end queues
3. ``MigrationVerifyKind`` (partition: the target): the target exports its registry; its end joins that export with
   the source's by device id and compares every device and module (``fleet.compare``), writing ``migration.json``.

Each step is queued by the one before under a key derived from the migration id, and only then does the step before
record its own end: a process that dies between the two finds the queued step by its key and never queues a second
one. So a migration resumes after a crash wherever it stopped, and the hubs' slots keep one job per hub at a time on
both ends.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime

import orjson

from ..backups import CONFIGURATIONS_BLOB, DEVICES_BLOB, MANIFEST_BLOB
from ..engine import Context, Ending
from ..fleet import Join
from ..fleet.compare import MAX_SHOWN, Census, Verification, source_records
from ..iothub import IoTHubClient
from ..iothub import Job as HubJob
from ..iothub import JobStatus as HubStatus
from ..ledger import Job, JobKind, JobState, advance
from ..storage import JSON_TYPE, BlobRef, StorageError
from ._hub import REGISTRY_BLOB, HubJobKind, export_devices, export_registry, export_unfinished
from .export import keep_export
from .imports import EXPORT_ETAGS, RestoreKind, without_etags

logger = logging.getLogger(__name__)

MODES = ("create", "createOrUpdate")
MIGRATION_REPORT = "migration.json"


def import_key(migration_id: str) -> str:
    return f"migration-import-{migration_id}"


def verify_key(migration_id: str) -> str:
    return f"migration-verify-{migration_id}"


def export_folder(migration_id: str) -> str:
    """Where a migration's export is kept in the migrations container."""
    return migration_id


class MigrationVerifyKind(HubJobKind):
    """The target's export compared with the source's, device by device."""

    name = JobKind.MIGRATION_VERIFY

    def prepare(self, job: Job, ctx: Context) -> Job:
        return job  # reads the migration's export, checked when the import was prepared

    def create(self, job: Job, client: IoTHubClient, container_url: tuple[str, str], ctx: Context) -> HubJob:
        # Keys are compared only when they were copied.
        keys, configurations = job.include_keys, job.include_configurations
        return export_registry(job, client, container_url, ctx, keys=keys, configurations=configurations)

    def end(self, job: Job, hub_job: HubJob, ctx: Context) -> Ending:
        if (ended := export_unfinished(job, hub_job, "the migration was not verified")) is not None:
            return ended
        report_ref = BlobRef(ctx.containers.reports, f"{job.job_id}/{MIGRATION_REPORT}")
        try:  # ended once already (the process died before recording it): the report says how
            doc = json.loads(b"".join(ctx.storage.open_read(report_ref)))
        except StorageError:
            doc = self._verify(job, hub_job, ctx)
            ctx.storage.upload_bytes(
                report_ref.container, report_ref.name, json.dumps(doc, indent=2).encode(), content_type=JSON_TYPE
            )
        job = replace(job, reports={**job.reports, "migration": report_ref.path}, progress=100)
        job = replace(job, devices=int(doc["compared"]), failed_devices=int(doc["missing"]) + int(doc["different"]))
        job = replace(job, notes=(*job.notes, str(doc["verdict"])))
        summary = {k: doc[k] for k in ("counts", "compared", "equal", "missing", "different", "explained")}
        clean = job.failed_devices == 0 and not doc.get("missingConfigurations")
        state = JobState.COMPLETED if clean else JobState.COMPLETED_WITH_ERRORS
        return Ending(job, state, None, summary)

    def closed(self, job: Job, ctx: Context) -> None:
        _drop_keyed_export(job, ctx)  # the last step, however it ended

    def _verify(self, job: Job, hub_job: HubJob, ctx: Context) -> dict[str, object]:
        source_hub, target = job.peer_hub or "?", job.hub
        migration_id = job.migration_of or "?"
        folder = export_folder(migration_id)
        source_counts, target_counts = Census(), Census()
        verification = Verification(target, source_counts, target_counts)
        with Join() as join:
            join.add_records(source_records(ctx.storage.open_read(ctx.source(job)), source_counts))
            join.add_registry(ctx.storage.open_read(BlobRef(job.work_container, REGISTRY_BLOB)), target_counts.see)
            for device in join.devices():
                verification.add(device)
        only_in_target = verification.only_in_target(target_counts.devices)
        counts: dict[str, object] = {"source": source_counts.public(), "target": target_counts.public()}
        missing_configurations: list[str] = []
        if job.include_configurations:
            source_configurations = BlobRef(ctx.containers.migrations, f"{folder}/{CONFIGURATIONS_BLOB}")
            counts["configurations"], missing_configurations = _configurations(ctx, source_configurations, job)
        if verification.clean:
            verdict = (
                f"verified: all {verification.devices} device(s) of {source_hub} are in {target} alike (status, "
                "authentication, tags, desired properties, Edge flag and parent, modules)"
            )
        else:
            verdict = (
                f"{verification.missing} device(s) of {source_hub} are not in {target} and "
                f"{verification.different} differ: see differences (the first {MAX_SHOWN} of each are listed)"
            )
        if missing_configurations:
            shown = ", ".join(missing_configurations[:5])
            verdict += f"; {len(missing_configurations)} configuration(s) are not in {target} (first: {shown})"
        if only_in_target:
            verdict += f"; {target} also holds {only_in_target} device(s) {source_hub} does not have"
        return {
            "migrationId": migration_id,
            "from": source_hub,
            "to": target,
            "verifyJobId": job.job_id,
            "targetExportHubJobId": hub_job.job_id,
            "keysCompared": job.include_keys,
            "counts": counts,
            "compared": verification.devices,
            "equal": verification.equal,
            "missing": verification.missing,
            "different": verification.different,
            "explained": verification.explained,
            "missingConfigurations": len(missing_configurations),
            "onlyInTarget": only_in_target,
            "verdict": verdict,
            "ignored": "ETags, generation ids, times, connection state and device scopes: each hub makes its own",
            "differences": [d.public() for d in verification.shown],
            "explainedDifferences": [d.public() for d in verification.explained_shown],
        }


class MigrationImportKind(RestoreKind):
    """The source's export imported into the target, every line in the migration's mode; its end queues the
    verification."""

    name = JobKind.MIGRATION_IMPORT

    def __init__(self, verifier: MigrationVerifyKind) -> None:
        super().__init__()
        self.verifier = verifier

    def _rewrite(self, job: Job) -> Callable[[Callable[[bytes], None]], Callable[[bytes], None]]:
        if job.import_mode != "create":
            return without_etags  # an export line has no importMode: createOrUpdate, the default

        def rewrite(sink: Callable[[bytes], None]) -> Callable[[bytes], None]:
            def write(batch: bytes) -> None:
                out = []
                for line in batch.split(b"\n"):
                    if line.strip():
                        doc = orjson.loads(line)
                        for name in EXPORT_ETAGS:  # as a restore drops them
                            doc.pop(name, None)
                        doc["importMode"] = "create"
                        line = orjson.dumps(doc)  # noqa: PLW2901 - the line as the hub gets it
                    out.append(line)
                sink(b"\n".join(out))

            return write

        return rewrite

    def _keyless_note(self, job: Job) -> str:
        return (
            f"the export of {job.peer_hub} holds no keys (includeKeys was false): every device created in {job.hub} "
            "gets new keys from the hub, and its devices must be given them before they can connect"
        )

    def end(self, job: Job, hub_job: HubJob, ctx: Context) -> Ending:
        ending = super().end(job, hub_job, ctx)
        if hub_job.status is HubStatus.CANCELLED:
            return ending  # cancelled by someone: the migration stops here
        verify = self._queue_verify(job, ctx)
        # No state in the note: it would stay "(queued)" long after the verification ran.
        notes = [*ending.job.notes, f"the migration is verified by job {verify.job_id}"]
        if ending.job.failed_devices:
            notes.append(refusal_note(ending.job, ending.summary))
        return replace(ending, job=replace(ending.job, notes=tuple(notes)))

    def closed(self, job: Job, ctx: Context) -> None:
        """The migration stops here when no verification was queued (cancelled, failed before its end): its keyed
        export goes now."""
        if job.migration_of and ctx.ledger.find_by_key(job.hub, verify_key(job.migration_of)) is None:
            _drop_keyed_export(job, ctx)

    def _queue_verify(self, job: Job, ctx: Context) -> Job:
        assert job.migration_of is not None
        key = verify_key(job.migration_of)
        existing = ctx.ledger.find_by_key(job.hub, key)
        if existing is not None:
            return existing
        assert job.source is not None
        source = BlobRef.parse(job.source, job.source_etag)
        draft = next_step(job, JobKind.MIGRATION_VERIFY, job.hub, source, key=key, now=ctx.clock())
        draft = replace(draft, peer_hub=job.peer_hub, migration_of=job.migration_of)
        created, _ = ctx.ledger.create(self.verifier.prepare(draft, ctx))
        return created


class MigrationKind(HubJobKind):
    """The source hub's export; its end keeps it under ``migrations/<id>/`` and queues its import into the target."""

    name = JobKind.MIGRATION

    def __init__(self, importer: MigrationImportKind) -> None:
        self.importer = importer

    def prepare(self, job: Job, ctx: Context) -> Job:
        why = migration_refusal(ctx, job.hub, job.peer_hub, job.import_mode)
        if why is not None:
            report = ctx.write_report(job, "rejection.json", {"from": job.hub, "to": job.peer_hub, "verdict": why})
            return replace(job, failure_reason=why, validation_errors=1, reports={"rejection": report})
        return job

    def create(self, job: Job, client: IoTHubClient, container_url: tuple[str, str], ctx: Context) -> HubJob:
        return export_devices(job, client, container_url, ctx, configurations=job.include_configurations)

    def end(self, job: Job, hub_job: HubJob, ctx: Context) -> Ending:
        if (ended := export_unfinished(job, hub_job, f"nothing was imported into {job.peer_hub}")) is not None:
            return ended
        container, folder = ctx.containers.migrations, export_folder(job.job_id)
        manifest = keep_export(job, ctx, container, folder, hub_job.job_id)  # idempotent, as a backup is saved
        imported = self._queue_import(job, BlobRef(container, f"{folder}/{DEVICES_BLOB}"), ctx)
        # The export itself is no report: it may hold keys (no link is ever made to it), and it goes once verified.
        reports = {**job.reports, "manifest": f"{container}/{folder}/{MANIFEST_BLOB}"}
        note = (
            f"{manifest.devices} device(s) exported to {container}/{folder}/{DEVICES_BLOB}; imported into "
            f"{job.peer_hub} by job {imported.job_id}"
        )
        done = replace(job, devices=manifest.devices, reports=reports, notes=(*job.notes, note), progress=100)
        summary = {"modules": manifest.modules, "importJobId": imported.job_id}
        if manifest.configurations is not None:
            summary["configurations"] = manifest.configurations
        return Ending(done, JobState.COMPLETED, None, summary)

    def _queue_import(self, job: Job, ref: BlobRef, ctx: Context) -> Job:
        assert job.peer_hub is not None
        key = import_key(job.job_id)
        existing = ctx.ledger.find_by_key(job.peer_hub, key)
        if existing is not None:
            return existing
        props = ctx.storage.properties(ref)
        ref = replace(ref, etag=props.etag if props is not None else None)
        draft = next_step(job, JobKind.MIGRATION_IMPORT, job.peer_hub, ref, key=key, now=ctx.clock())
        draft = replace(draft, peer_hub=job.hub, migration_of=job.job_id)
        prepared = self.importer.prepare(draft, ctx)
        if prepared.failure_reason:  # a damaged export: recorded as rejected, with its report; the migration ends
            prepared = advance(prepared, JobState.REJECTED, now=prepared.updated)
            _drop_keyed_export(prepared, ctx)
        created, _ = ctx.ledger.create(prepared)
        return created


def refusal_note(job: Job, summary: Mapping[str, object]) -> str:
    """Why a migration's import refused lines, from its error counts: in create mode, mostly devices the target
    has already (DeviceAlreadyExists), which are never overwritten."""
    errors = summary.get("errors")
    by_code: Mapping[str, int] = errors.get("byCode", {}) if isinstance(errors, Mapping) else {}
    codes = ", ".join(f"{n:,} {code}" for code, n in sorted(by_code.items(), key=lambda kv: -kv[1]))
    note = f"{job.hub} refused {job.failed_devices:,} line(s)" + (f" ({codes})" if codes else "")
    if job.import_mode == "create" and "DeviceAlreadyExists" in by_code:
        note += (
            f": in create mode a device {job.hub} already has is refused, never overwritten; migrate again in "
            "createOrUpdate mode to replace them"
        )
    return note + "; errors.csv lists them"


def next_step(job: Job, kind: JobKind, hub: str, source: BlobRef, *, key: str, now: datetime) -> Job:
    """A draft of a migration's next step on ``hub``: it reads ``source`` (the migration's export), is keyed by
    ``key``, and has the migration's settings; the caller names the migration and the peer hub."""
    draft = Job.new(hub, kind, now)
    return replace(
        draft,
        source=source.path,
        source_etag=source.etag,
        idempotency_key=key,
        import_mode=job.import_mode,
        include_keys=job.include_keys,
        include_configurations=job.include_configurations,
    )


def migration_refusal(ctx: Context, source: str, target: str | None, mode: str | None) -> str | None:
    """Why a migration from ``source`` to ``target`` cannot run (None: it can)."""
    if target is None or target not in ctx.hubs:
        return f"hub '{target}' is not configured: configured hubs are {', '.join(ctx.hubs)}"
    if target == source:
        return f"a migration needs two hubs: '{source}' is both its source and its target"
    if mode not in MODES:
        return f"mode '{mode}' is not one of {', '.join(MODES)}"
    return None


def _configurations(ctx: Context, source: BlobRef, job: Job) -> tuple[dict[str, object], list[str]]:
    """The configurations of both sides counted, and the ids of the source's the target lacks (a hub holds at most a
    few hundred: read whole)."""

    def ids(ref: BlobRef) -> set[str]:
        try:
            data = b"".join(ctx.storage.open_read(ref))
        except StorageError:
            return set()
        found = set()
        for line in data.splitlines():
            if line.strip().startswith(b"{"):
                found.add(str(orjson.loads(line).get("id")))
        return found

    src, dst = ids(source), ids(BlobRef(job.work_container, CONFIGURATIONS_BLOB))
    missing = sorted(src - dst)
    return {"source": len(src), "target": len(dst), "missingInTarget": missing[:MAX_SHOWN]}, missing


def _drop_keyed_export(job: Job, ctx: Context) -> None:
    """The source's export (``job``'s source), when it holds keys, goes once the migration has ended (verified,
    stopped, or refused as damaged); its manifest and the reports stay. Idempotent: an end repeated after a crash
    finds it gone."""
    if not job.include_keys or job.source is None:
        return
    ref = ctx.source(job)
    ctx.storage.delete_version(BlobRef(ref.container, ref.name), with_snapshots=True)
    logger.info("migration %s ended: deleted its export %s (it held keys)", job.migration_of, ref.path)


__all__ = [
    "MODES",
    "MigrationImportKind",
    "MigrationKind",
    "MigrationVerifyKind",
    "import_key",
    "migration_refusal",
    "verify_key",
]
