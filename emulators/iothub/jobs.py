"""Import and export jobs: created by the API, run one at a time by a background ``JobRunner``.

States: ``enqueued -> running -> completed | failed | cancelled``. Only one import/export job may be active
(enqueued or running) at a time, as on every real hub tier; ``create_job`` answers 403003 otherwise.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from azure.core.exceptions import AzureError

from .blobs import BlockWriter, StorageAccess, StorageAccessError, explain
from .errors import ApiError
from .faults import Faults
from .model import LineError, Record, export_line, parse_line
from .registry import Registry
from .store import Store

logger = logging.getLogger(__name__)

BATCH = 1000
HISTORY_DAYS = 30
ERROR_LOG = "importErrors.log"
_BOM = b"\xef\xbb\xbf"
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f0Z")


class _Cancelled(Exception):
    pass


def validate_job_request(body: Any) -> dict[str, Any]:
    """Check a ``POST /jobs/create`` body and return the job to store.

    Raises:
        ApiError: 400004/400005 for a missing or invalid field.
    """
    if not isinstance(body, dict):
        raise ApiError(400006, "The request body must be a JobProperties JSON object.")
    kind = body.get("type")
    if kind not in ("import", "export"):
        raise ApiError(400004, f"Job type must be 'import' or 'export', not {json.dumps(kind)}.")
    auth = body.get("storageAuthenticationType") or "keyBased"
    if auth not in ("keyBased", "identityBased"):
        raise ApiError(400004, "storageAuthenticationType must be 'keyBased' or 'identityBased'.")
    needed = ["inputBlobContainerUri", "outputBlobContainerUri"] if kind == "import" else ["outputBlobContainerUri"]
    for name in needed:
        value = body.get(name)
        if not value:
            raise ApiError(400005, f"{name} is required for an {kind} job.")
        parts = urlsplit(str(value))
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ApiError(400004, f"{name} must be an absolute https URL of a blob container.")
    job: dict[str, Any] = {
        "jobId": str(uuid.uuid4()),
        "type": kind,
        "status": "enqueued",
        "progress": 0,
        "storageAuthenticationType": auth,
        "outputBlobContainerUri": body["outputBlobContainerUri"],
    }
    if kind == "import":
        job["inputBlobContainerUri"] = body["inputBlobContainerUri"]
        job["inputBlobName"] = body.get("inputBlobName") or "devices.txt"
    else:
        job["outputBlobName"] = body.get("outputBlobName") or "devices.txt"
        job["excludeKeysInExport"] = bool(body.get("excludeKeysInExport", False))
    if body.get("identity") is not None:
        job["identity"] = body["identity"]
    return job


class JobRunner:
    """Runs enqueued jobs one after another in a background thread."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        storage: StorageAccess,
        faults: Faults,
        clock: Callable[[], datetime],
    ) -> None:
        self.store = store
        self.registry = registry
        self.storage = storage
        self.faults = faults
        self.clock = clock
        self.paused = False
        self._lock = threading.Lock()  # serializes create_job's quota check with the insert
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- API-facing ---------------------------------------------------------------------------------

    def create_job(self, body: Any) -> dict[str, Any]:
        job = validate_job_request(body)
        with self._lock:
            active = self.store.active_jobs()
            if active:
                raise ApiError(
                    403003,
                    f"Job quota has been exceeded: only one import/export job can be active at a time, and job "
                    f"{active[0]['jobId']} is {active[0]['status']}. Retry when it has finished.",
                )
            now = self.clock()
            job["startTimeUtc"] = iso(now)
            self.store.insert_job(job, created=iso(now))
        self._wake.set()
        return job

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        job = self.get_job(job_id)
        if job["status"] in ("enqueued", "running"):
            job.update(status="cancelled", endTimeUtc=iso(self.clock()))
            if not self.store.update_job(job):
                job = self.get_job(job_id)  # it finished meanwhile: answer with its final state
        return job

    def get_job(self, job_id: str) -> dict[str, Any]:
        job = self.store.get_job(job_id)
        if job is None:
            raise ApiError(404002, f"Job {job_id} not found.")
        return job

    def list_jobs(self) -> list[dict[str, Any]]:
        cutoff = self.clock() - timedelta(days=HISTORY_DAYS)
        self.store.delete_jobs_ended_before(iso(cutoff))
        return self.store.list_jobs()

    # --- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        for job in self.store.active_jobs():
            if job["status"] == "running":
                job.update(
                    status="failed",
                    endTimeUtc=iso(self.clock()),
                    failureReason="The hub was restarted while this job was running; part of its changes may "
                    "have been applied. Run the job again.",
                )
                self.store.update_job(job)
        self._thread = threading.Thread(target=self._loop, name="iothub-jobs", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.2)
            self._wake.clear()
            if self.paused or self._stop.is_set():
                continue
            enqueued = [j for j in self.store.active_jobs() if j["status"] == "enqueued"]
            if not enqueued:
                continue
            job = enqueued[0]
            delay = self.faults.config.job_start_delay
            started = datetime.strptime(job["startTimeUtc"][:26], "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC)
            if delay and (self.clock() - started).total_seconds() < delay:
                continue
            self._run(job)

    def _run(self, job: dict[str, Any]) -> None:
        job["status"] = "running"
        if not self.store.update_job(job):
            return  # cancelled before it started
        try:
            if job["type"] == "import":
                self._import(job)
            else:
                self._export(job)
        except _Cancelled:
            return
        except StorageAccessError as exc:
            job.update(status="failed", failureReason=str(exc), endTimeUtc=iso(self.clock()))
        except Exception:
            logger.exception("job %s failed inside the emulator", job["jobId"])
            job.update(status="failed", failureReason="Internal error in the emulator.", endTimeUtc=iso(self.clock()))
        else:
            job.update(status="completed", progress=100, endTimeUtc=iso(self.clock()))
        self.store.update_job(job)

    def _step(self, job: dict[str, Any], progress: int) -> None:
        """Between batches: record progress, honour cancellation and the injected slowdown."""
        delay = self.faults.config.job_step_delay
        if delay:
            self._stop.wait(delay)
        if self._stop.is_set():
            raise _Cancelled
        job["progress"] = progress
        if not self.store.update_job(job):  # cancelled (or reset) meanwhile
            raise _Cancelled

    # --- import -------------------------------------------------------------------------------------

    def _import(self, job: dict[str, Any]) -> None:
        identity = job["storageAuthenticationType"] == "identityBased"
        source = self.storage.container(job["inputBlobContainerUri"], identity_based=identity, what="input container")
        target = self.storage.container(job["outputBlobContainerUri"], identity_based=identity, what="output container")
        name = job["inputBlobName"]
        what = f"input blob '{name}'"
        try:
            download = source.get_blob_client(name).download_blob()
        except AzureError as exc:
            raise explain(exc, what=what, needs="Read") from exc
        if download.size == 0:
            raise StorageAccessError(f"BlobContainerValidationError: the {what} is empty; it holds no devices.")
        log_blob, log_what = target.get_blob_client(ERROR_LOG), f"output container ({ERROR_LOG})"
        # Prove the output container is writable before changing the registry: never half-import.
        BlockWriter(log_blob, what=log_what).commit()
        errors = BlockWriter(log_blob, what=log_what)
        batch: list[Record | LineError] = []
        try:
            for raw, consumed in _lines(download.chunks()):
                if not raw.strip(b" \t\r"):
                    continue  # blank lines carry no device
                batch.append(_decode(raw))
                if len(batch) >= BATCH:
                    self._apply(batch, errors)
                    batch = []
                    errors.checkpoint()
                    self._step(job, min(99, consumed * 100 // download.size))
        except AzureError as exc:
            raise explain(exc, what=what, needs="Read") from exc
        except _Cancelled:
            # The lines applied before the cancellation stay applied, and their refusals stay in the log.
            errors.commit()
            raise
        if batch:
            self._apply(batch, errors)
        errors.commit()

    def _apply(self, batch: list[Record | LineError], errors: BlockWriter) -> None:
        for f in self.registry.apply_batch(batch):
            entry: dict[str, Any] = {}
            if f.device_id is not None:
                entry["deviceId"] = f.device_id
            if f.module_id is not None:
                entry["moduleId"] = f.module_id
            entry["errorCode"] = f.error.code
            entry["errorStatus"] = f.error.message
            errors.write(_dumps(entry).encode() + b"\n")

    # --- export -------------------------------------------------------------------------------------

    def _export(self, job: dict[str, Any]) -> None:
        identity = job["storageAuthenticationType"] == "identityBased"
        target = self.storage.container(job["outputBlobContainerUri"], identity_based=identity, what="output container")
        writer = BlockWriter(target.get_blob_client(job["outputBlobName"]), what="output container")
        exclude = job.get("excludeKeysInExport", False)
        total = max(1, self.store.count_registry())
        for n, record in enumerate(self.store.iter_registry(), 1):
            writer.write(_dumps(export_line(record, exclude_keys=exclude)).encode() + b"\n")
            if n % BATCH == 0:
                self._step(job, min(99, n * 100 // total))
        writer.commit()


def _lines(chunks: Iterator[bytes]) -> Iterator[tuple[bytes, int]]:
    """Split a byte stream into lines without ever holding more than one chunk; yields (line, bytes read)."""
    carry = b""
    read = 0
    first = True
    for chunk in chunks:
        read += len(chunk)
        data = chunk.removeprefix(_BOM) if first else chunk
        first = False
        parts = (carry + data).split(b"\n")
        carry = parts.pop()
        for p in parts:
            yield p, read
    if carry:
        yield carry, read


def _decode(raw: bytes) -> Record | LineError:
    text = raw.rstrip(b"\r")
    try:
        return parse_line(text.decode("utf-8"))
    except UnicodeDecodeError:
        return LineError(400012, "Invalid device format in line: the line is not valid UTF-8.")
    except LineError as exc:
        return exc
