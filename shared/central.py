"""IoT Central data export in the app: apply jobs in the ledger, plans on request, and backups.

An apply is a ledger job of kind ``central_apply`` in the ``central`` partition, keyed like an import by the
upload's version (``uploads/central/<name>.json``), so a trigger fired twice applies once. The file is read, checked
and planned before the job is recorded: a bad file becomes a ``rejected`` job with a report and nothing is sent.
A job then runs its steps and records progress; if the process dies mid-apply the job stays ``running`` and is
picked up again once it has been quiet for ``stale_after`` (by a redelivery or the monitor). Running it again is
safe: the plan starts from what the app holds now. The upload is archived before the end is recorded.

Backups: ``backups/central/<UTC hour>/dataexport.json`` (every destination and export as read, so secrets come
back masked) and ``manifest.json``, written last. One folder per hour, so a timer fired twice writes once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from .backups import MANIFEST_BLOB, apply_retention, backup_folder
from .config import Containers
from .dataexport import (
    Document,
    DocumentError,
    Outcome,
    Plan,
    StepResult,
    apply,
    make_plan,
    parse,
    read_app,
    resolve,
)
from .dataexport.document import MAX_BYTES
from .iotcentral import IoTCentralClient
from .ledger import Job, JobKind, JobState, Ledger, idempotency_key
from .pipeline import checkpoint, utcnow
from .storage import ArchiveKind, BlobRef, Storage, fitted_name
from .uploads import move_to_archive

logger = logging.getLogger(__name__)

PARTITION = "central"  # the ledger partition of apply jobs (hub names may not take it)
UPLOAD_PREFIX = "central/"
DOCUMENT_BLOB = "dataexport.json"


NOT_CONFIGURED = (
    "IoT Central is not configured: set IOTCENTRAL_APP_URL (and IOTCENTRAL_API_TOKEN, or give the app's identity "
    "a role in the IoT Central app), then upload the file again"
)


def is_central_upload(name: str) -> bool:
    """Everything under ``uploads/central/`` is a data-export file (one that is not JSON is rejected as such, never
    taken for a devices file); everything else is a devices file."""
    return name.startswith(UPLOAD_PREFIX)


def _source(job: Job) -> BlobRef:
    """The upload version (and its snapshot) a job read."""
    assert job.source is not None
    return replace(BlobRef.parse(job.source, job.source_etag), snapshot=job.source_snapshot)


def _write_report(storage: Storage, containers: Containers, path: str, doc: dict[str, Any]) -> str:
    storage.ensure_container(containers.reports)
    storage.upload_bytes(containers.reports, path, json.dumps(doc, indent=2).encode())
    return f"{containers.reports}/{path}"


def _archive(storage: Storage, ledger: Ledger, containers: Containers, job: Job, *, failed: bool) -> str | None:
    kind = ArchiveKind.FAILED if failed else ArchiveKind.PROCESSED
    return move_to_archive(storage, ledger, _source(job), kind, archive_container=containers.archive, job_id=job.job_id)


def _archive_path(containers: Containers, job: Job, *, failed: bool) -> str:
    kind = ArchiveKind.FAILED if failed else ArchiveKind.PROCESSED
    assert job.source is not None
    return f"{containers.archive}/{fitted_name(f'{kind}/{job.job_id}', job.source.split('/', 1)[1])}"


def reject_unconfigured(ledger: Ledger, storage: Storage, containers: Containers, ref: BlobRef, now: datetime) -> Job:
    """An upload under ``uploads/central/`` while IoT Central is off: a ``rejected`` job that says so, with the file
    archived, instead of a trigger failing until its poison queue. Idempotent per upload version."""
    assert ref.etag is not None
    key = idempotency_key(ref.container, ref.name, ref.etag)
    job = ledger.find_by_key(PARTITION, key)
    if job is None:
        ref = storage.pin(ref)
        job = Job.new(
            PARTITION,
            JobKind.CENTRAL_APPLY,
            now,
            state=JobState.REJECTED,
            source=ref.path,
            source_etag=ref.etag,
            source_snapshot=ref.snapshot,
            idempotency_key=key,
            validation_errors=1,
            failure_reason=NOT_CONFIGURED,
        )
        report = _write_report(
            storage,
            containers,
            f"{job.job_id}/central-rejection.json",
            {"file": ref.path, "problems": [{"message": NOT_CONFIGURED}], "applied": "nothing"},
        )
        job = replace(job, reports={"rejection": report}, archived=_archive_path(containers, job, failed=True))
        job, _ = ledger.create(job)
    _archive(storage, ledger, containers, job, failed=True)
    return job


@dataclass
class Central:
    ledger: Ledger
    storage: Storage
    client: IoTCentralClient
    env: Mapping[str, str]  # where {"appSetting": NAME} references are looked up (the app settings)
    containers: Containers
    clock: Callable[[], datetime] = utcnow
    stale_after: timedelta = timedelta(minutes=2)

    # --- plan -----------------------------------------------------------------------------------------

    def plan(self, raw: bytes) -> tuple[Document, dict[str, dict[str, Any]], Plan]:
        """Check the file, resolve its secrets and plan against the app; changes nothing.

        Raises:
            DocumentError: the file cannot be applied (every problem listed).
        """
        doc = parse(raw)
        resolved = resolve(doc, self.env)
        destinations, exports = read_app(self.client)
        return doc, resolved, make_plan(doc, resolved, destinations, exports)

    # --- apply ----------------------------------------------------------------------------------------

    def accept(self, ref: BlobRef) -> Job:
        """Apply one version of an uploaded file, once. Safe to call again for the same version."""
        if not ref.etag:
            raise ValueError("an upload must be identified by its ETag")
        key = idempotency_key(ref.container, ref.name, ref.etag)
        existing = self.ledger.find_by_key(PARTITION, key)
        if existing is not None:
            return self._resume(existing)
        ref = self.storage.pin(ref)  # the bytes applied and archived are this version's, whatever comes after
        raw = self._read(ref)
        job = Job.new(
            PARTITION,
            JobKind.CENTRAL_APPLY,
            self.clock(),
            state=JobState.RUNNING,
            source=ref.path,
            source_etag=ref.etag,
            source_snapshot=ref.snapshot,
            source_sha256=hashlib.sha256(raw).hexdigest(),
            idempotency_key=key,
        )
        try:
            doc, resolved, plan = self.plan(raw)
        except DocumentError as exc:
            return self._reject(job, ref, exc)
        job, created = self.ledger.create(replace(job, lines=len(plan.steps), modes=plan.summary()))
        if not created:
            return self._resume(job)
        return self._run(job, ref, doc, resolved, plan)

    def resume_stale(self) -> list[Job]:
        """The monitor's part: run again the applies left ``running`` by a process that died."""
        done = []
        for job in self.ledger.iter_active(PARTITION):
            if job.source and job.source_etag and self.clock() - job.updated >= self.stale_after:
                done.append(self._resume(job))
        return done

    def wait(self, job: Job, timeout: timedelta, *, poll: float = 0.2) -> Job:
        """``job`` once it has ended, or as it stands after ``timeout`` (when another instance is applying it)."""
        deadline = time.monotonic() + timeout.total_seconds()
        while not job.state.is_terminal and time.monotonic() < deadline:
            time.sleep(poll)
            job = self.ledger.get(job.hub, job.job_id)
        return job

    def _resume(self, job: Job) -> Job:
        ref = _source(job)
        if job.state.is_terminal:
            # a crash may have come between the end and the archive: idempotent
            _archive(self.storage, self.ledger, self.containers, job, failed=job.state is not JobState.COMPLETED)
            return job
        if self.clock() - job.updated < self.stale_after:
            return job  # another instance is applying it right now
        logger.info("apply job %s was interrupted; planning again from what the app holds now", job.job_id)
        try:
            doc, resolved, plan = self.plan(self._read(ref))
        except DocumentError as exc:  # e.g. an app setting removed meanwhile
            return self._finish(job, ref, JobState.FAILED, str(exc), {"problems": [p.public() for p in exc.problems]})
        job = self.ledger.save(replace(job, updated=self.clock(), attempts=job.attempts + 1))
        return self._run(job, ref, doc, resolved, plan)

    def _run(self, job: Job, ref: BlobRef, doc: Document, resolved: dict[str, dict[str, Any]], plan: Plan) -> Job:
        secrets = [self.env.get(name, "") for name in doc.settings()]

        def progress(i: int, result: StepResult) -> None:
            nonlocal job
            # Each step refreshes the row, so a live apply never looks stale to another instance.
            pct = int(100 * (i + 1) / max(len(plan.steps), 1))
            job = self.ledger.save(replace(job, progress=pct, updated=self.clock()))
            checkpoint("central_step")

        results = apply(plan, self.client, secrets=secrets, after_step=progress)
        failed = [r for r in results if r.outcome is Outcome.FAILED]
        report = {"plan": plan.public(), "results": [r.public() for r in results]}
        if failed:
            done = sum(r.outcome is Outcome.DONE for r in results)
            reason = (
                f"{done} of {len(results)} step(s) applied; {failed[0].step} failed: {failed[0].error}. "
                "Fix the cause and apply the file again: the new plan starts from what the app holds."
            )
            return self._finish(job, ref, JobState.FAILED, reason, report)
        return self._finish(job, ref, JobState.COMPLETED, None, report)

    def _reject(self, job: Job, ref: BlobRef, exc: DocumentError) -> Job:
        doc = {"file": ref.path, "problems": [p.public() for p in exc.problems], "applied": "nothing"}
        report = _write_report(self.storage, self.containers, f"{job.job_id}/central-rejection.json", doc)
        job = replace(
            job,
            state=JobState.REJECTED,
            validation_errors=len(exc.problems),
            failure_reason=f"{len(exc.problems)} problem(s) in the file; nothing was changed",
            reports={"rejection": report},
            archived=_archive_path(self.containers, job, failed=True),
        )
        job, _ = self.ledger.create(job)
        _archive(self.storage, self.ledger, self.containers, job, failed=True)
        return job

    def _finish(self, job: Job, ref: BlobRef, state: JobState, reason: str | None, report: dict[str, Any]) -> Job:
        doc = {"file": ref.path, "state": str(state), "reason": reason, **report}
        path = _write_report(self.storage, self.containers, f"{job.job_id}/central-apply.json", doc)
        job = replace(job, reports={"result": path})
        archived = _archive(self.storage, self.ledger, self.containers, job, failed=state is not JobState.COMPLETED)
        return self.ledger.move(job, state, now=self.clock(), failure_reason=reason, progress=100, archived=archived)

    def _read(self, ref: BlobRef) -> bytes:
        chunks, size = [], 0
        for chunk in self.storage.open_read(ref):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_BYTES:
                break  # parse() says the file is too big; no need to read the rest
        return b"".join(chunks)

    # --- backup ---------------------------------------------------------------------------------------

    def backup(self, *, retention_days: int | None = None) -> dict[str, Any]:
        """Write the app's data-export configuration to ``backups/central/<hour>/``; returns the manifest."""
        now = self.clock()
        folder = backup_folder(PARTITION, now.replace(minute=0, second=0, microsecond=0))
        container = self.containers.backups
        self.storage.ensure_container(container)
        manifest_ref = BlobRef(container, f"{folder}/{MANIFEST_BLOB}")
        if self.storage.properties(manifest_ref) is not None:
            manifest: dict[str, Any] = json.loads(b"".join(self.storage.open_read(manifest_ref)))
            return manifest
        destinations, exports = read_app(self.client)
        doc = {
            "app": self.client.app_url,
            "apiVersion": self.client.api_version,
            "takenAt": now.isoformat(),
            "destinations": {k: {f: v for f, v in d.items() if f != "id"} for k, d in destinations.items()},
            "exports": {k: {f: v for f, v in e.items() if f != "id"} for k, e in exports.items()},
        }
        data = json.dumps(doc, indent=2).encode()
        self.storage.upload_bytes(container, f"{folder}/{DOCUMENT_BLOB}", data)
        manifest = {
            "app": self.client.app_url,
            "apiVersion": self.client.api_version,
            "destinations": len(destinations),
            "exports": len(exports),
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "created": now.isoformat(),
            "documentBlob": DOCUMENT_BLOB,
        }
        self.storage.upload_bytes(container, manifest_ref.name, json.dumps(manifest, indent=2).encode())
        logger.info("IoT Central backup %s: %d destinations, %d exports", folder, len(destinations), len(exports))
        if retention_days is not None:
            apply_retention(self.storage, container, PARTITION, days=retention_days, now=now)
        return manifest
