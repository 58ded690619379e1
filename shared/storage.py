"""Blob storage for the jobs: streaming reads and writes, the staged copy the hub reads, pinning and archiving.

Connections come from an app setting *prefix*, as the Functions host resolves them: ``<PREFIX>`` holding a
connection string (Azurite locally), or identity-based ``<PREFIX>__blobServiceUri`` / ``__tableServiceUri`` /
``__queueServiceUri`` (or ``__serviceUri``, ``__accountName``) with ``__credential=managedidentity`` and
``__clientId`` for a user-assigned identity.

SAS are minted by ``sas.SasMinter`` (``Storage.sas``).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import logging
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import (
    BlobBlock,
    BlobClient,
    BlobServiceClient,
    ContainerClient,
    ContentSettings,
)

from .sas import SasMinter

logger = logging.getLogger(__name__)

BLOCK = 4 * 1024 * 1024
# Content types of what the app writes, so that a report's read link opens in a browser (JSON) or a spreadsheet (CSV).
JSON_TYPE = "application/json"
NDJSON_TYPE = "application/x-ndjson"
CSV_TYPE = "text/csv; charset=utf-8"


class StorageError(Exception):
    """A storage operation failed; the message is safe to show (no keys, no SAS)."""


class StorageDenied(StorageError):
    """Storage refused the app (403 AuthorizationPermissionMismatch, AuthorizationFailure): a role assignment not
    yet in effect right after a deployment heals by itself in minutes, so jobs wait for it a bounded time."""


class StorageUnavailable(StorageError):
    """Storage did not answer at all (connection refused or reset, a timeout), after the SDK's own retries: a
    passing fault. The HTTP API answers 503 with a Retry-After; a monitor pass stops at it (one warning line)."""

    retry_after = 30  # seconds a client is told to wait: about one monitor period


# Connection failures, as azure-core raises them once its retries are spent: ServiceRequestError (the request never
# reached storage: refused, DNS, connect timeout) and ServiceResponseError (no full answer: reset, read timeout).
UNREACHABLE: tuple[type[AzureError], ...] = (ServiceRequestError, ServiceResponseError)


@contextlib.contextmanager
def reachable(what: str) -> Iterator[None]:
    """The one place where storage not answering becomes ``StorageUnavailable`` (the blob calls' ``_explain`` and
    the ledger's table client both go through it)."""
    try:
        yield
    except UNREACHABLE as exc:
        raise unreachable(exc, what) from exc


def unreachable(exc: AzureError, what: str) -> StorageUnavailable:
    return StorageUnavailable(f"storage is not answering ({what}: {type(exc).__name__})")


# Retries of the storage SDKs before a connection failure is handed back. Their defaults wait long (blob: 15, 18
# and 24 s; tables: up to ten tries, two minutes apart at most), so an HTTP call waited minutes for a 500 while
# storage was down; a job's step that meets the failure is tried again by the next monitor pass anyway.
BLOB_RETRY: dict[str, Any] = {"retry_total": 3, "initial_backoff": 1, "increment_base": 2}
TABLE_RETRY: dict[str, Any] = {"retry_total": 3, "retry_backoff_factor": 0.5, "retry_backoff_max": 4}


# Storage's error codes for a caller without the permission (Blob service error codes); AuthenticationFailed
# (a bad key or SAS signature) is not among them: waiting never heals it.
DENIED_CODES = frozenset({"AuthorizationPermissionMismatch", "AuthorizationFailure"})


class ArchiveKind(StrEnum):
    PROCESSED = "processed"
    FAILED = "failed"


class Removal(StrEnum):
    """What ``Storage.delete_version`` did."""

    DELETED = "deleted"
    GONE = "gone"  # nothing there (an earlier attempt deleted it)
    REPLACED = "replaced"  # a newer version is there now: kept
    SNAPSHOTS_LEFT = "snapshots_left"  # other snapshots (pins of other jobs, or a crash's orphans) keep it there


@dataclass(frozen=True, slots=True)
class StorageSettings:
    """Where storage is and how to reach it, read from one connection prefix."""

    connection_string: str | None = field(default=None, repr=False)
    blob_uri: str | None = None
    table_uri: str | None = None
    queue_uri: str | None = None
    client_id: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str], prefix: str = "AzureWebJobsStorage") -> StorageSettings:
        """Read ``prefix`` (a connection string) or its identity-based ``prefix__*`` settings.

        Raises:
            ValueError: neither form is present (the message names the settings to add).
        """
        conn = env.get(prefix) or env.get(f"AzureWebJobs{prefix}")
        if conn:
            return cls(connection_string=conn)
        account = env.get(f"{prefix}__accountName")
        blob = env.get(f"{prefix}__blobServiceUri") or env.get(f"{prefix}__serviceUri")
        if not blob and account:
            blob = f"https://{account}.blob.core.windows.net"
        if not blob:
            raise ValueError(
                f"storage setting '{prefix}' is missing: give a connection string, or {prefix}__blobServiceUri "
                f"(+ __queueServiceUri, __tableServiceUri) for identity-based access"
            )
        table = env.get(f"{prefix}__tableServiceUri") or (
            f"https://{account}.table.core.windows.net" if account else None
        )
        queue = env.get(f"{prefix}__queueServiceUri") or (
            f"https://{account}.queue.core.windows.net" if account else None
        )
        return cls(blob_uri=blob, table_uri=table, queue_uri=queue, client_id=env.get(f"{prefix}__clientId"))

    def credential(self) -> Any:
        from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

        if self.client_id:
            return ManagedIdentityCredential(client_id=self.client_id)
        return DefaultAzureCredential()

    def blob_service(self) -> BlobServiceClient:
        # 4 MiB ranges: the SDK's default 32 MiB first GET would make memory grow with the file.
        opts: dict[str, Any] = {
            "max_single_get_size": BLOCK,
            "max_chunk_get_size": BLOCK,
            "connection_timeout": 10,
            **BLOB_RETRY,
        }
        if self.connection_string:
            return BlobServiceClient.from_connection_string(self.connection_string, **opts)
        assert self.blob_uri is not None
        return BlobServiceClient(self.blob_uri, credential=self.credential(), **opts)


def _explain(exc: AzureError, what: str) -> StorageError:
    if isinstance(exc, UNREACHABLE):
        return unreachable(exc, what)
    code = getattr(exc, "error_code", None) or type(exc).__name__
    status = getattr(exc, "status_code", None)
    message = f"storage failed on {what}: {status or ''} {code}".replace("  ", " ")
    if status == 403 and code in DENIED_CODES:
        return StorageDenied(f"{message} (the app lacks a role on the storage account, or it is not in effect yet)")
    return StorageError(message)


class StagedBlob:
    """A block blob written in 4 MiB blocks as data streams in; invisible until ``commit`` (never, if discarded).

    Also hashes what it writes, so the manifest of a backup or the ledger can record the sha256.
    """

    def __init__(self, blob: BlobClient) -> None:
        self.blob = blob
        self._buf = bytearray()
        self._blocks: list[BlobBlock] = []
        self._sha = hashlib.sha256()
        self.size = 0
        self.prefix = uuid.uuid4().hex[:8]

    def write(self, data: bytes) -> None:
        self._buf += data
        self._sha.update(data)
        self.size += len(data)
        if len(self._buf) >= BLOCK:
            self._flush()

    def _flush(self) -> None:
        block_id = base64.b64encode(f"{self.prefix}-{len(self._blocks):08d}".encode()).decode()
        try:
            self.blob.stage_block(block_id, bytes(self._buf))
        except AzureError as exc:
            raise _explain(exc, f"staging {self.blob.blob_name}") from exc
        self._blocks.append(BlobBlock(block_id=block_id))
        self._buf.clear()

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    def commit(self, *, metadata: dict[str, str] | None = None, content_type: str | None = None) -> str:
        """Make the blob visible; returns its ETag."""
        try:
            if self._buf or not self._blocks:
                self._flush()
            settings = ContentSettings(content_type=content_type) if content_type else None
            result = self.blob.commit_block_list(self._blocks, metadata=metadata, content_settings=settings)
        except AzureError as exc:
            raise _explain(exc, f"committing {self.blob.blob_name}") from exc
        return str(result.get("etag", ""))


@dataclass(frozen=True, slots=True)
class Listed:
    name: str
    etag: str
    last_modified: datetime


@dataclass(frozen=True, slots=True)
class BlobInfo:
    etag: str
    size: int
    metadata: dict[str, str]


# Azure's blob naming rules (Naming and Referencing Containers, Blobs, and Metadata): a name is 1-1,024
# characters and has at most 254 path segments. Azurite does not enforce either, so the app checks its own names.
MAX_BLOB_NAME = 1024
MAX_SEGMENTS = 254


class UploadChanged(StorageError):
    """The upload was replaced (or deleted) since its ETag was read: that version is gone; a newer one gets its
    own delivery."""


@dataclass(frozen=True, slots=True)
class BlobRef:
    container: str
    name: str
    etag: str | None = None
    snapshot: str | None = None  # a read-only point-in-time copy of this version (see ``Storage.pin``)

    @property
    def path(self) -> str:
        return f"{self.container}/{self.name}"

    @classmethod
    def parse(cls, path: str, etag: str | None = None) -> BlobRef:
        """``"container/name"`` -> BlobRef.

        Raises:
            ValueError: the path has no container or no name.
        """
        container, _, name = path.partition("/")
        if not container or not name:
            raise ValueError(f"'{path}' is not <container>/<blob name>")
        return cls(container, name, etag)


def within_limits(name: str) -> bool:
    """True if Azure can store a blob of this name (length and number of path segments)."""
    return 0 < len(name) <= MAX_BLOB_NAME and name.count("/") < MAX_SEGMENTS


def fitted_name(prefix: str, name: str) -> str:
    """``prefix/name`` when Azure can store it, else ``prefix/<hash>-<tail of the last segment>``: always within
    Azure's limits, distinct per name, and still recognisable. The caller records the mapping (the ledger does)."""
    full = f"{prefix}/{name}"
    if within_limits(full):
        return full
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    tail = name.rsplit("/", 1)[-1][-(MAX_BLOB_NAME - len(prefix) - len(digest) - 2) :]
    return f"{prefix}/{digest}-{tail}"


class Storage:
    """The app's blob operations, on one ``BlobServiceClient``."""

    def __init__(self, service: BlobServiceClient, *, sas_lifetime: timedelta = timedelta(hours=24)) -> None:
        self.service = service
        self.sas = SasMinter(service, lifetime=sas_lifetime)

    @classmethod
    def from_settings(cls, settings: StorageSettings, **kw: Any) -> Storage:
        return cls(settings.blob_service(), **kw)

    # --- containers and streaming -------------------------------------------------------------------

    def ensure_container(self, name: str) -> ContainerClient:
        container = self.service.get_container_client(name)
        try:
            container.create_container()
        except ResourceExistsError:
            pass
        except AzureError as exc:
            raise _explain(exc, f"container {name}") from exc
        return container

    def containers(self, prefix: str) -> list[tuple[str, datetime]]:
        """(name, last modified) of the containers whose name starts with ``prefix``."""
        try:
            return [(c.name, c.last_modified) for c in self.service.list_containers(name_starts_with=prefix)]
        except AzureError as exc:
            raise _explain(exc, f"listing containers {prefix}*") from exc

    def delete_container(self, name: str) -> None:
        """Delete a container if it exists (uncommitted blocks in it go with it)."""
        try:
            self.service.delete_container(name)
        except ResourceNotFoundError:
            pass
        except AzureError as exc:
            raise _explain(exc, f"deleting container {name}") from exc

    def open_read(self, ref: BlobRef) -> Iterator[bytes]:
        """Stream a blob in chunks: its snapshot when ``ref.snapshot`` is set (immune to a newer upload), else with
        ``ref.etag`` only that version (a newer upload fails the read with ``UploadChanged``)."""
        blob = self.service.get_blob_client(ref.container, ref.name, snapshot=ref.snapshot)
        try:
            kwargs: dict[str, Any] = {}
            if ref.etag and not ref.snapshot:
                kwargs = {"etag": ref.etag, "match_condition": MatchConditions.IfNotModified}
            yield from blob.download_blob(**kwargs).chunks()
        except ResourceModifiedError as exc:
            raise UploadChanged(f"{ref.path} changed while it was read") from exc
        except AzureError as exc:
            raise _explain(exc, f"reading {ref.path}") from exc

    def pin(self, ref: BlobRef) -> BlobRef:
        """Take a snapshot of exactly the version ``ref.etag`` names, so the bytes a job validates, sends and
        archives stay the same even if the upload is overwritten meanwhile. Returns ``ref`` with the snapshot.

        Raises:
            UploadChanged: the blob is no longer that version.
        """
        if not ref.etag:
            raise ValueError("only a known version (ETag) can be pinned")
        blob = self.service.get_blob_client(ref.container, ref.name)
        try:
            snap = blob.create_snapshot(etag=ref.etag, match_condition=MatchConditions.IfNotModified)
        except (ResourceModifiedError, ResourceNotFoundError) as exc:
            raise UploadChanged(f"{ref.path} was replaced or removed before it could be read") from exc
        except AzureError as exc:
            raise _explain(exc, f"pinning {ref.path}") from exc
        return dataclasses.replace(ref, snapshot=str(snap["snapshot"]))

    def stage(self, container: str, name: str) -> StagedBlob:
        return StagedBlob(self.service.get_blob_client(container, name))

    def upload_bytes(
        self, container: str, name: str, data: bytes, *, overwrite: bool = True, content_type: str | None = None
    ) -> str:
        """Write a small blob; ``content_type`` lets a browser open it from a read link (not download it)."""
        kw: dict[str, Any] = {"content_settings": ContentSettings(content_type=content_type)} if content_type else {}
        try:
            result = self.service.get_blob_client(container, name).upload_blob(data, overwrite=overwrite, **kw)
        except AzureError as exc:
            raise _explain(exc, f"writing {container}/{name}") from exc
        return str(result.get("etag", ""))

    def properties(self, ref: BlobRef) -> BlobInfo | None:
        """What a blob is now (None: there is none)."""
        try:
            props = self.service.get_blob_client(ref.container, ref.name).get_blob_properties()
        except ResourceNotFoundError:
            return None
        return BlobInfo(str(props.etag), int(props.size), dict(props.metadata or {}))

    def blobs(self, container: str, prefix: str = "") -> Iterator[Listed]:
        """The blobs of a container (name, ETag, last modified), paged as they are listed; none if it is absent."""
        try:
            for b in self.service.get_container_client(container).list_blobs(name_starts_with=prefix or None):
                yield Listed(str(b.name), str(b.etag), b.last_modified)
        except ResourceNotFoundError:
            return
        except AzureError as exc:
            raise _explain(exc, f"listing {container}/{prefix}") from exc

    def list_names(self, container: str, prefix: str) -> list[str]:
        """Blob names under ``prefix`` (no contents); an absent container has none."""
        try:
            return [b.name for b in self.service.get_container_client(container).list_blobs(name_starts_with=prefix)]
        except ResourceNotFoundError:
            return []
        except AzureError as exc:
            raise _explain(exc, f"listing {container}/{prefix}") from exc

    def delete_blob(self, ref: BlobRef) -> None:
        try:
            self.service.get_blob_client(ref.container, ref.name, snapshot=ref.snapshot).delete_blob()
        except ResourceNotFoundError:
            pass
        except AzureError as exc:
            raise _explain(exc, f"deleting {ref.path}") from exc

    # --- archiving ----------------------------------------------------------------------------------

    def archive(self, ref: BlobRef, kind: ArchiveKind, *, archive_container: str, job_id: str) -> BlobRef | None:
        """Copy one version of an upload to ``<archive>/<kind>/<job>/<name>`` (a fitted name when that would be too
        long for Azure), from its snapshot when the job pinned one, then drop that snapshot. The upload itself is
        removed by ``delete_version``, once no other job still needs it (see ``shared.uploads``).

        A repeated call (after a crash) finds the copy in place and completes. Returns where it went (None: an
        unpinned version that was replaced before it could be copied; that version no longer exists anywhere).
        """
        self.ensure_container(archive_container)
        target = BlobRef(archive_container, fitted_name(f"{kind}/{job_id}", ref.name))
        dst = self.service.get_blob_client(target.container, target.name)
        try:
            if self.properties(target) is None:
                origin = self.service.get_blob_client(ref.container, ref.name, snapshot=ref.snapshot)
                kw: dict[str, Any] = {}
                if ref.etag and not ref.snapshot:
                    kw = {"source_etag": ref.etag, "source_match_condition": MatchConditions.IfNotModified}
                copy = dst.start_copy_from_url(self.sas.blob_read_url(origin), requires_sync=True, **kw)
                if copy.get("copy_status") not in ("success", None):
                    raise StorageError(f"archiving {ref.path} did not complete ({copy.get('copy_status')})")
        except ResourceNotFoundError:
            logger.info("upload %s is gone and was not archived again (an earlier attempt moved it)", ref.path)
            return target
        except ResourceModifiedError:
            logger.warning("upload %s was replaced before it was archived; the new version is kept", ref.path)
            return None
        except AzureError as exc:
            raise _explain(exc, f"archiving {ref.path}") from exc
        if ref.snapshot:
            self.delete_blob(ref)  # our snapshot only: the upload itself goes by delete_version
        return target

    def delete_version(self, ref: BlobRef, *, with_snapshots: bool = False) -> Removal:
        """Delete the blob if it is still the version ``ref.etag`` names. Snapshots (other jobs' pins) are kept
        unless ``with_snapshots``: while one exists, the blob stays (``SNAPSHOTS_LEFT``)."""
        blob = self.service.get_blob_client(ref.container, ref.name)
        kw: dict[str, Any] = {"delete_snapshots": "include"} if with_snapshots else {}
        if ref.etag:
            kw.update(etag=ref.etag, match_condition=MatchConditions.IfNotModified)
        try:
            blob.delete_blob(**kw)
        except ResourceNotFoundError:
            return Removal.GONE
        except ResourceModifiedError:
            return Removal.REPLACED
        except HttpResponseError as exc:
            if exc.status_code == 409 and "snapshot" in str(getattr(exc, "error_code", "") or "").lower():
                return Removal.SNAPSHOTS_LEFT
            raise _explain(exc, f"deleting {ref.path}") from exc
        except AzureError as exc:
            raise _explain(exc, f"deleting {ref.path}") from exc
        return Removal.DELETED

    def snapshots(self, container: str, name: str) -> list[str]:
        """The snapshot ids of one blob."""
        try:
            listed = self.service.get_container_client(container).list_blobs(
                name_starts_with=name, include=["snapshots"]
            )
            return [str(b.snapshot) for b in listed if b.name == name and b.snapshot]
        except AzureError as exc:
            raise _explain(exc, f"listing the snapshots of {container}/{name}") from exc
