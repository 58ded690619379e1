"""Import and export jobs: created by the API, run one at a time by a background ``JobRunner``.

States: ``enqueued -> running -> completed | failed | cancelled``. Only one import/export job may be active
(enqueued or running) at a time, as on every real hub tier; ``create_job`` answers 403003 otherwise.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from azure.core.exceptions import AzureError
from azure.storage.blob import ContainerClient

from .blobs import BlockWriter, StorageAccess, StorageAccessError, explain
from .errors import ApiError
from .faults import Faults
from .model import LineError, Record, export_line, import_configuration, parse_line
from .quotas import Profile, job_times
from .registry import Registry
from .store import Store

logger = logging.getLogger(__name__)

BATCH = 1000
HISTORY_DAYS = 30
ERROR_LOG = "importErrors.log"
CONFIG_ERROR_LOG = "importConfigErrors.log"  # the name the C# SDK's import/export sample reads
CONFIGURATIONS_BLOB = "configurations.txt"
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
    include = body.get("includeConfigurations", False)
    if not isinstance(include, bool):
        raise ApiError(400004, "includeConfigurations must be true or false.")
    if include:
        job["includeConfigurations"] = True
        job["configurationsBlobName"] = body.get("configurationsBlobName") or CONFIGURATIONS_BLOB
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
        *,
        profile: Callable[[], Profile] = Profile,
    ) -> None:
        self.store = store
        self.registry = registry
        self.storage = storage
        self.faults = faults
        self.clock = clock
        self.profile = profile
        self._started = 0.0  # monotonic time the running job started (realistic pacing)
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
            times = job_times(self.profile(), job["type"])
            delay = max(self.faults.config.job_start_delay, times[0] if times else 0.0)
            started = datetime.strptime(job["startTimeUtc"][:26], "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC)
            if delay and (self.clock() - started).total_seconds() < delay:
                continue
            self._run(job)

    def _run(self, job: dict[str, Any]) -> None:
        job["status"] = "running"
        if not self.store.update_job(job):
            return  # cancelled before it started
        self._started = time.monotonic()
        try:
            if (denied := self.faults.storage_denial()) is not None:
                raise StorageAccessError(denied)
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

    def _step(self, job: dict[str, Any], progress: int, done: int) -> None:
        """Between batches (``done`` lines or records so far): record progress, honour cancellation, the injected
        slowdown and, in realistic mode, the service's pace."""
        delay = self.faults.config.job_step_delay
        if delay:
            self._stop.wait(delay)
        self._pace(job, done)
        if self._stop.is_set():
            raise _Cancelled
        # The recorded service reports 0 while a job runs and 100 when it completes; fast mode reports real progress.
        job["progress"] = 0 if self.profile().realistic else progress
        if not self.store.update_job(job):  # cancelled (or reset) meanwhile
            raise _Cancelled

    def _pace(self, job: dict[str, Any], done: int) -> None:
        """Realistic mode: wait until the service would have got this far (see quotas.JOB_TIMES), watching for a
        cancellation meanwhile."""
        times = job_times(self.profile(), job["type"])
        if times is None:
            return
        _, running, rate = times
        due = self._started + running + done / rate
        while (left := due - time.monotonic()) > 0:
            if self._stop.wait(min(left, 0.25)):
                raise _Cancelled
            stored = self.store.get_job(job["jobId"])
            if stored is None or stored["status"] != "running":
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
        lines = 0
        try:
            for raw, consumed in _lines(download.chunks()):
                if not raw.strip(b" \t\r"):
                    continue  # blank lines carry no device
                batch.append(_decode(raw))
                lines += 1
                if len(batch) >= BATCH:
                    self._apply(batch, errors)
                    batch = []
                    errors.checkpoint()
                    self._step(job, min(99, consumed * 100 // download.size), lines)
            if batch:
                self._apply(batch, errors)
            if job.get("includeConfigurations"):
                self._import_configurations(job, source, target)
            self._pace(job, lines)
        except AzureError as exc:
            raise explain(exc, what=what, needs="Read") from exc
        except _Cancelled:
            # The lines applied before the cancellation stay applied, and their refusals stay in the log.
            errors.commit()
            raise
        errors.commit()

    def _import_configurations(self, job: dict[str, Any], source: ContainerClient, target: ContainerClient) -> None:
        """``configurationsBlobName`` (ImportConfiguration lines) applied after the devices; refusals go to
        ``importConfigErrors.log`` in the same shape as ``importErrors.log`` (inferred: the log's name is the C#
        SDK sample's, its content is not documented)."""
        name = job["configurationsBlobName"]
        what = f"configurations blob '{name}'"
        try:
            data = source.get_blob_client(name).download_blob().readall()
        except AzureError as exc:
            raise explain(exc, what=what, needs="Read") from exc
        log = BlockWriter(target.get_blob_client(CONFIG_ERROR_LOG), what=f"output container ({CONFIG_ERROR_LOG})")
        now = iso(self.clock())
        for raw, _ in _lines(iter([data])):
            if not raw.strip(b" \t\r"):
                continue
            decoded = _decode(raw)
            config_id = decoded.get("id") if isinstance(decoded, dict) else None
            try:
                if isinstance(decoded, LineError):
                    raise decoded
                with self.store.write_lock:
                    current = self.store.get_configuration(config_id) if isinstance(config_id, str) else None
                    self.store.put_configuration(import_configuration(decoded, current, now=now))
            except LineError as exc:
                entry: dict[str, Any] = {} if not isinstance(config_id, str) else {"configurationId": config_id}
                entry.update(errorCode=exc.code, errorStatus=exc.message)
                log.write(_dumps(entry).encode() + b"\n")
        log.commit()

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
        n = 0
        for n, record in enumerate(self.store.iter_registry(), 1):
            writer.write(_dumps(export_line(record, exclude_keys=exclude)).encode() + b"\n")
            if n % BATCH == 0:
                self._step(job, min(99, n * 100 // total), n)
        self._pace(job, n)
        if job.get("includeConfigurations"):
            configs = BlockWriter(target.get_blob_client(job["configurationsBlobName"]), what="output container")
            for config in self.store.list_configurations():
                configs.write(_dumps(config).encode() + b"\n")  # one Configuration per line, as GET returns it
            configs.commit()
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
