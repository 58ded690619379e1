"""Imports of a devices file into a hub: an upload (``ImportKind``) and a backup folder read in place
(``RestoreKind``).

Preparing reads the source once: it hashes the bytes as they are, validates every line (a file with any error is
``rejected`` with line-numbered findings and nothing reaches the hub) and stages the normalized lines in the job's
work container, which the hub job reads. Its end is read from the hub's ``importErrors.log`` (also for a cancelled
or failed hub job: the devices it refused before it stopped), turned into per-device reports.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from datetime import timedelta

import orjson

from ..backups import CONFIGURATIONS_BLOB, DEVICES_BLOB, MANIFEST_BLOB
from ..config import Snapshots
from ..devices import DEFAULT_MODE, ValidationReport, is_csv_name, validate_csv_stream, validate_stream
from ..engine import Busy, Context, Ending, Refused, checkpoint
from ..iothub import IoTHubClient
from ..iothub import Job as HubJob
from ..iothub import JobStatus as HubStatus
from ..ledger import Job, JobKind, JobState, advance
from ..reports import BULK_SKIPS, error_summary, harvest_import_errors, rejection_document
from ..storage import CSV_TYPE, NDJSON_TYPE, BlobRef, StorageError
from ._hub import CONFIG_ERRORS_BLOB, ERRORS_BLOB, WORK_DEVICES_BLOB, HubJobKind

SKIPPED_REPORT = "skipped.jsonl"  # a bulk's run: the devices not acted on, each with the reason
CREATE_MODE = "create"  # the one import mode that cannot change an existing device: the hub refuses it (409001)

logger = logging.getLogger(__name__)

# An exported line carries the ETags of the moment it was exported. The hub checks a supplied twinETag even in
# createOrUpdate mode (import/export docs: "twinETag ... processed independently"), so a restore sends neither:
# it puts the backup's state back whatever happened since.
EXPORT_ETAGS = ("eTag", "twinETag")


class ImportKind(HubJobKind):
    """A devices file from ``uploads/`` (or any blob named by a call, read in place) imported as it is."""

    name = JobKind.IMPORT

    def __init__(self, snapshots: Snapshots = Snapshots.CHANGES, approval: Mapping[str, int] | None = None) -> None:
        self.snapshots = snapshots
        self.approval = dict(approval or {})  # hub -> update lines an import may make unreviewed (REQUIRE_PLAN)

    def prepare(self, job: Job, ctx: Context) -> Job:
        return self._gate(self._validate_and_stage(job, ctx, ctx.source(job)))

    def submit(self, job: Job, ctx: Context) -> HubJob | Ending:
        if self._needs_snapshot(job):
            self._snapshot_taken(job, ctx)
        return super().submit(job, ctx)

    # --- approval and snapshots -----------------------------------------------------------------------

    def _gate(self, job: Job) -> Job:
        """A risky import on a hub that requires a plan waits ``awaiting_approval``: any delete line, or more
        update lines than the hub's limit (counted from the file's import modes: a createOrUpdate line counts as an
        update, so the count is an upper bound; the plan queued beside it says exactly). A rollback is an
        operator's explicit request and is not held."""
        limit = self.approval.get(job.hub)
        if limit is None or job.failure_reason or job.rollback_of:
            return job
        deletes = sum(n for mode, n in job.modes.items() if mode.startswith("delete"))
        updates = sum(n for mode, n in job.modes.items() if mode.startswith(("update", "createOrUpdate")))
        if not deletes and updates <= limit:
            return job
        why = (
            f"approval: {deletes} delete and {updates} update line(s) (this hub lets {limit} update(s) through "
            f"unreviewed); read the plan, then POST /api/jobs/{job.hub}/{job.job_id}/approve (or cancel it)"
        )
        return advance(replace(job, waiting_for=why), JobState.AWAITING_APPROVAL, now=job.updated)

    def _needs_snapshot(self, job: Job) -> bool:
        """``changes`` (the default): any line that can change an existing device, i.e. a mode other than
        ``create`` (the hub refuses a create of a device that exists). ``explicit``: a mode other than
        createOrUpdate."""
        if self.snapshots is Snapshots.OFF:
            return False
        if self.snapshots is Snapshots.ALWAYS:
            return True
        plain = CREATE_MODE if self.snapshots is Snapshots.CHANGES else DEFAULT_MODE
        return any(mode != plain for mode in job.modes)

    def _snapshot_taken(self, job: Job, ctx: Context) -> None:
        """Return once the snapshot of what the import touches is saved; until then, queue the plan job that takes
        it (ahead of the import: its id is older) and wait.

        Raises:
            Busy: the snapshot is being taken; the import waits its turn behind it.
            Refused: the snapshot could not be taken; nothing is imported.
        """
        if ctx.storage.properties(BlobRef(ctx.containers.snapshots, f"{job.job_id}/{MANIFEST_BLOB}")) is not None:
            return
        key = f"snapshot-{job.job_id}"
        plan = ctx.ledger.find_by_key(job.hub, key)
        if plan is None:
            now = ctx.clock()
            # One millisecond older than the import: the slot takes the oldest queued job first, so it runs next.
            draft = Job.new(job.hub, JobKind.PLAN, job.created - timedelta(milliseconds=1))
            draft = replace(
                draft,
                created=now,
                updated=now,
                plan_for=job.job_id,
                idempotency_key=key,
            )
            plan, _ = ctx.ledger.create(draft)
        if not plan.state.is_terminal:
            raise Busy(f"first saving a snapshot of the devices it touches (plan job {plan.job_id})")
        raise Refused(
            f"the snapshot before it could not be saved (plan job {plan.job_id} {plan.state}: "
            f"{plan.failure_reason or 'no reason given'}); nothing was imported, upload the file again"
        )

    def create(self, job: Job, client: IoTHubClient, container_url: tuple[str, str], ctx: Context) -> HubJob:
        return client.create_import_job(*container_url, identity_based=ctx.identity_based)

    def closed(self, job: Job, ctx: Context) -> None:
        """An import of a generated file that holds keys (``bulk/<id>/devices.txt`` of regenerateKeys, metadata
        ``holdskeys=true``) deletes it, with its snapshot pins, once the job has ended: the hub has read it."""
        if job.source is None:
            return
        ref = ctx.source(job)
        if ref.container != ctx.containers.bulk:
            return
        plain = BlobRef(ref.container, ref.name)
        props = ctx.storage.properties(plain)
        if props is not None and props.metadata.get("holdskeys") == "true":
            ctx.storage.delete_version(plain, with_snapshots=True)
            logger.info("job %s ended: deleted %s (it held keys)", job.job_id, plain.path)

    def end(self, job: Job, hub_job: HubJob, ctx: Context) -> Ending:
        job, summary = _harvest(job, ctx)
        if hub_job.status in (HubStatus.CANCELLED, HubStatus.FAILED):
            progress = max(hub_job.progress, job.progress)
            why = "cancelled on the hub" if hub_job.status is HubStatus.CANCELLED else "the hub job failed"
            if hub_job.status is HubStatus.FAILED:
                why += f": {hub_job.failure_reason or 'no reason given'}"
            if progress:
                how_far = (
                    f"after it had gone through about {progress}% of the file: the lines before that point may have "
                    "been applied and the rest were not"
                )
            else:  # a hub may report 0 until a job ends (recorded service behaviour): nothing tells how far it got
                how_far = "before it reported any progress: any part of the file may have been applied"
            reason = (
                f"{why} {how_far}; check the registry, re-run the file (createOrUpdate lines are safe to repeat) or "
                "restore a backup"
            )
            state = JobState.CANCELLED if hub_job.status is HubStatus.CANCELLED else JobState.FAILED
            return Ending(replace(job, progress=progress), state, reason, summary)
        state = JobState.COMPLETED_WITH_ERRORS if job.failed_devices else JobState.COMPLETED
        # What the import applied: its lines (a device or a module each) less those the hub refused.
        applied = max(job.lines - job.failed_devices, 0)
        return Ending(replace(job, progress=100, devices=applied), state, None, summary)

    # --- preparing ------------------------------------------------------------------------------------

    def _validate_and_stage(
        self,
        job: Job,
        ctx: Context,
        ref: BlobRef,
        *,
        expected_sha256: str | None = None,
        rewrite: Callable[[Callable[[bytes], None]], Callable[[bytes], None]] | None = None,
        keep: Callable[[Iterable[bytes]], Iterator[bytes]] | None = None,
    ) -> Job:
        """Read the source once: hash it as it is, (``keep``: blank out the lines not to import), validate it, and
        stage the normalized lines the hub will read (``rewrite``: changed on their way)."""
        ctx.storage.ensure_container(job.work_container)
        staged = ctx.storage.stage(job.work_container, WORK_DEVICES_BLOB)
        sha = hashlib.sha256()
        sink = rewrite(staged.write) if rewrite else staged.write
        chunks = _hashed(ctx.storage.open_read(ref), sha)
        # A sheet (name ending .csv) is read as CSV; what is staged for the hub is JSON lines either way.
        validate = validate_csv_stream if keep is None and is_csv_name(ref.name) else validate_stream
        report = validate(keep(chunks) if keep else chunks, sink=sink, max_errors=ctx.max_errors)
        job = replace(job, source_sha256=sha.hexdigest(), lines=report.lines)
        if expected_sha256 and expected_sha256 != job.source_sha256:
            doc = {
                "source": ref.path,
                "verdict": "rejected: the backup's devices file does not match its manifest (sha256); it was "
                "changed or damaged after it was taken. Nothing was imported; restore another backup.",
                "expectedSha256": expected_sha256,
                "actualSha256": job.source_sha256,
            }
            reason = "the backup does not match its manifest (sha256); nothing was imported"
            return _rejected(job, ctx, doc, reason, problems=1)
        if not report.valid:
            n = report.error_count
            reason = f"{n:,} problem{'' if n == 1 else 's'} in the file; nothing was imported"
            return _rejected(job, ctx, rejection_document(ref.path, report), reason, problems=report.error_count)
        staged.commit()
        checkpoint("validated")
        job = replace(job, modes=dict(report.modes), staged_sha256=staged.sha256)
        return _with_warnings(job, ctx, ref, report)


class RestoreKind(ImportKind):
    """A backup folder's ``devices.txt`` (and ``configurations.txt`` when the backup holds configurations), checked
    against its manifest and imported without its exported ETags; the backup is read in place (never pinned, moved
    or changed)."""

    name = JobKind.RESTORE

    def __init__(self) -> None:
        super().__init__(Snapshots.OFF)  # a restore puts a backup back: the backup before it is its undo

    def prepare(self, job: Job, ctx: Context) -> Job:
        ref = ctx.source(job)
        folder = ref.name.removesuffix(f"/{DEVICES_BLOB}")
        manifest = json.loads(b"".join(ctx.storage.open_read(BlobRef(ref.container, f"{folder}/{MANIFEST_BLOB}"))))
        left_out = LeftOut()
        job = self._validate_and_stage(
            job,
            ctx,
            ref,
            expected_sha256=str(manifest.get("sha256") or "") or None,
            rewrite=self._rewrite(job),
            keep=left_out.restorable,
        )
        job = replace(job, notes=(*job.notes, *left_out.notes()))
        if job.failure_reason is None and manifest.get("configurationsBlob"):
            job = _stage_configurations(job, ctx, BlobRef(ref.container, f"{folder}/{CONFIGURATIONS_BLOB}"), manifest)
        if job.failure_reason is None and not manifest.get("includesKeys"):
            job = replace(job, notes=(*job.notes, self._keyless_note(job)))
        return job

    def _rewrite(self, job: Job) -> Callable[[Callable[[bytes], None]], Callable[[bytes], None]]:
        """How the export's lines change on their way to the hub: without their ETags."""
        return without_etags

    def _keyless_note(self, job: Job) -> str:
        return (
            "this backup holds no keys: devices it re-creates get new keys from the hub (devices that still "
            "exist keep theirs); take backups with BACKUP_INCLUDE_KEYS=true to restore keys too"
        )

    def create(self, job: Job, client: IoTHubClient, container_url: tuple[str, str], ctx: Context) -> HubJob:
        # Configurations go with the devices when prepare staged them (the backup holds some).
        staged = ctx.storage.properties(BlobRef(job.work_container, CONFIGURATIONS_BLOB)) is not None
        return client.create_import_job(
            *container_url, identity_based=ctx.identity_based, include_configurations=staged
        )

    def end(self, job: Job, hub_job: HubJob, ctx: Context) -> Ending:
        ending = super().end(job, hub_job, ctx)
        staged = _lines_of(ctx, BlobRef(job.work_container, CONFIGURATIONS_BLOB))
        if staged is None:
            return ending
        refused = _lines_of(ctx, BlobRef(job.work_container, CONFIG_ERRORS_BLOB)) or []
        done, state, reports = ending.job, ending.state, dict(ending.job.reports)
        summary = {**ending.summary, "configurations": {"staged": len(staged), "refused": len(refused)}}
        if refused:
            path = f"{job.job_id}/configErrors.jsonl"
            ctx.storage.upload_bytes(
                ctx.containers.reports, path, b"\n".join(refused) + b"\n", content_type=NDJSON_TYPE
            )
            reports["configErrors"] = f"{ctx.containers.reports}/{path}"
            note = f"the hub refused {len(refused)} of {len(staged)} configuration(s) (see configErrors.jsonl)"
            done = replace(done, notes=(*done.notes, note))
            if state is JobState.COMPLETED:
                state = JobState.COMPLETED_WITH_ERRORS
        return Ending(replace(done, reports=reports), state, ending.reason, summary)


def _lines_of(ctx: Context, ref: BlobRef) -> list[bytes] | None:
    """The non-blank lines of a small blob (None: there is none)."""
    try:
        data = b"".join(ctx.storage.open_read(ref))
    except StorageError:
        return None
    return [line for line in data.splitlines() if line.strip()]


def _stage_configurations(job: Job, ctx: Context, ref: BlobRef, manifest: Mapping[str, object]) -> Job:
    """Check the backup's configurations against its manifest and stage them without their ETags (as devices: a
    restore puts the backup's state back whatever happened since); a damaged or missing file rejects the job."""
    try:
        data = b"".join(ctx.storage.open_read(ref))
    except StorageError:
        data = None
    expected = manifest.get("configurationsSha256")
    problem = None
    if data is None:
        problem = f"the backup's manifest lists {CONFIGURATIONS_BLOB} but the folder has none"
    elif expected and hashlib.sha256(data).hexdigest() != expected:
        problem = f"the backup's {CONFIGURATIONS_BLOB} does not match its manifest (sha256)"
    lines: list[bytes] = []
    for number, line in enumerate((data or b"").splitlines(), 1):
        if problem:
            break
        if not line.strip():
            continue
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError:
            doc = None
        if not isinstance(doc, dict) or not isinstance(doc.get("id"), str):
            problem = f"line {number} of the backup's {CONFIGURATIONS_BLOB} is not a configuration"
            break
        for name in ("etag", "eTag"):
            doc.pop(name, None)
        lines.append(orjson.dumps(doc))
    if problem:
        doc = {"source": ref.path, "verdict": f"rejected: {problem}. Nothing was imported; restore another backup."}
        return _rejected(job, ctx, doc, f"{problem}; nothing was imported", problems=1)
    ctx.storage.upload_bytes(job.work_container, CONFIGURATIONS_BLOB, b"".join(x + b"\n" for x in lines))
    return replace(job, notes=(*job.notes, f"{len(lines)} configuration(s) are restored too"))


# Modules the IoT Edge runtime owns: the hub creates them with their Edge device and refuses them in an import
# (Azure/azure-iot-sdk-csharp#1146), yet every export lists them.
EDGE_SYSTEM_MODULES = (b"$edgeAgent", b"$edgeHub")


class LeftOut:
    """Lines of an export a restore must not send, blanked (so line numbers stay true) and counted: the Edge system
    modules, and a first line that is not JSON (the C# SDK's E2E tests skip one: "may be a comment to the user")."""

    def __init__(self) -> None:
        self.system_modules = 0
        self.preamble = False

    def restorable(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        carry = b""
        first = True
        for chunk in chunks:
            *whole, carry = (carry + chunk).split(b"\n")
            if whole:
                yield b"\n".join(self._keep(line, first and i == 0) for i, line in enumerate(whole)) + b"\n"
                first = False
        if carry:
            yield self._keep(carry, first)

    def _keep(self, line: bytes, first: bool) -> bytes:
        if first and line.strip() and not line.lstrip(b"\xef\xbb\xbf \t").startswith(b"{"):
            self.preamble = True
            return b""
        if b'"moduleId"' in line and any(m in line for m in EDGE_SYSTEM_MODULES):
            try:
                module = orjson.loads(line).get("moduleId")
            except orjson.JSONDecodeError:
                return line  # not JSON: the validator says where and why
            if isinstance(module, str) and module.encode() in EDGE_SYSTEM_MODULES:
                self.system_modules += 1
                return b""
        return line

    def notes(self) -> list[str]:
        said = []
        if self.system_modules:
            said.append(
                f"{self.system_modules} IoT Edge system module line(s) ($edgeAgent, $edgeHub) were left out: the hub "
                "creates them with their Edge device and refuses them in an import"
            )
        if self.preamble:
            said.append("the backup's first line is not a device (a note from the service) and was left out")
        return said


def _rejected(job: Job, ctx: Context, doc: Mapping[str, object], reason: str, *, problems: int) -> Job:
    report = ctx.write_report(job, "rejection.json", doc)
    return replace(job, failure_reason=reason, validation_errors=problems, reports={"rejection": report})


def _with_warnings(job: Job, ctx: Context, ref: BlobRef, report: ValidationReport) -> Job:
    """An accepted file's warnings (fields the hub ignores) go to ``warnings.json``, and a note says so."""
    if not report.warning_count:
        return job
    doc = {
        "source": ref.path,
        "verdict": "accepted: these lines have fields the hub ignores; check that none is a mistake",
        "warningCount": report.warning_count,
        "linesWithWarnings": report.lines_with_warnings,
        "warnings": [f.as_dict() for f in report.warnings],
    }
    path = ctx.write_report(job, "warnings.json", doc)
    note = f"{report.lines_with_warnings} line(s) have fields the hub ignores (see warnings.json)"
    return replace(job, notes=(*job.notes, note), reports={**job.reports, "warnings": path})


def _harvest(job: Job, ctx: Context) -> tuple[Job, dict[str, object]]:
    """The hub's error log of the job -> errors.jsonl and errors.csv (when any device failed), and counts."""
    container = ctx.containers.reports
    ctx.storage.ensure_container(container)
    jsonl = ctx.storage.stage(container, f"{job.job_id}/errors.jsonl")
    csv_out = ctx.storage.stage(container, f"{job.job_id}/errors.csv")
    # A bulk's run: a line refused for its ETag condition is a device skipped (changed since the plan), not an error.
    bulk = job.source is not None and BlobRef.parse(job.source).container == ctx.containers.bulk
    skipped_out = ctx.storage.stage(container, f"{job.job_id}/{SKIPPED_REPORT}") if bulk else None
    try:
        errors = harvest_import_errors(
            ctx.storage.open_read(BlobRef(job.work_container, ERRORS_BLOB)),
            jsonl,
            csv_out,
            skips=BULK_SKIPS if bulk else None,
            skipped_out=skipped_out,
        )
    except StorageError:
        return job, {}
    reports = dict(job.reports)
    notes = list(job.notes)
    summary = error_summary(errors)
    if errors.failed:
        jsonl.commit(content_type=NDJSON_TYPE)
        csv_out.commit(content_type=CSV_TYPE)
        reports["errors"] = f"{container}/{job.job_id}/errors.jsonl"
        reports["errorsCsv"] = f"{container}/{job.job_id}/errors.csv"
    if skipped_out is not None and errors.skipped:
        skipped_out.commit(content_type=NDJSON_TYPE)
        reports["skipped"] = f"{container}/{job.job_id}/{SKIPPED_REPORT}"
        summary["skipped"] = dict(errors.skipped)
        for reason, count in errors.skipped.items():
            note = f"skipped {count} device(s): {reason}"
            if note not in notes:  # ``end`` may run twice after a crash
                notes.append(note)
    return replace(job, failed_devices=errors.failed, reports=reports, notes=tuple(notes)), summary


def without_etags(sink: Callable[[bytes], None]) -> Callable[[bytes], None]:
    def write(batch: bytes) -> None:
        lines = batch.split(b"\n")
        for i, line in enumerate(lines):
            if b'Tag"' in line:  # cheap test first: most lines of an export have both
                doc = orjson.loads(line)
                for name in EXPORT_ETAGS:
                    doc.pop(name, None)
                lines[i] = orjson.dumps(doc)
        sink(b"\n".join(lines))

    return write


def _hashed(chunks: Iterable[bytes], sha: hashlib._Hash) -> Iterator[bytes]:
    for chunk in chunks:
        sha.update(chunk)
        yield chunk
