"""Storage access of import/export jobs: SAS container URIs (keyBased) or the hub's own identity.

``identityBased`` jobs pass plain container URLs; a real hub then authenticates as its managed identity. The
emulator stands that identity in with a storage connection string it is configured with (``--storage-identity``):
jobs may reach only that account. Every storage failure becomes a ``StorageAccessError`` whose message is fit for
``failureReason``: it says what was refused and what to change, and never contains the SAS token.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from urllib.parse import urlsplit

from azure.core.exceptions import AzureError, HttpResponseError, ServiceRequestError
from azure.storage.blob import BlobBlock, BlobClient, ContainerClient

_BLOCK = 4 * 1024 * 1024
_CONNECTION_TIMEOUT, _READ_TIMEOUT = 10, 120


class StorageAccessError(Exception):
    """A job could not read or write its blobs; the message says why, without secrets."""


def redact(uri: str) -> str:
    """A URI without its query string (where a SAS token lives)."""
    parts = urlsplit(uri)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _account_of(uri: str) -> str:
    parts = urlsplit(uri)
    host = parts.hostname or ""
    if host.endswith(".blob.core.windows.net") or ".blob." in host:
        return host.split(".")[0]
    return parts.path.lstrip("/").split("/")[0]  # IP-style (Azurite): /<account>/<container>


@dataclass(frozen=True, slots=True)
class StorageAccess:
    """How jobs reach storage. ``identity`` is the connection string standing in for the hub's identity."""

    identity: str | None = None

    def container(self, uri: str, *, identity_based: bool, what: str) -> ContainerClient:
        if not identity_based:
            if "sig=" not in (urlsplit(uri).query or ""):
                raise StorageAccessError(
                    f"The {what} URI {redact(uri)} has no SAS token. Give a container SAS URI, or set "
                    "storageAuthenticationType to identityBased."
                )
            return _client(uri)
        if not self.identity:
            raise StorageAccessError(
                "identityBased storage access needs the hub's managed identity, and this hub has none "
                "(start the emulator with --storage-identity). Use keyBased SAS URIs instead."
            )
        settings = dict(part.split("=", 1) for part in self.identity.split(";") if "=" in part)
        account = settings.get("AccountName", "")
        if _account_of(uri) != account:
            raise StorageAccessError(
                f"The hub's identity has no role on the storage account of {redact(uri)}; grant it Storage Blob "
                "Data Contributor there, or use keyBased SAS URIs."
            )
        credential = {"account_name": account, "account_key": settings.get("AccountKey", "")}
        return _client(redact(uri), credential)


def _client(url: str, credential: dict[str, str] | None = None) -> ContainerClient:
    # Download in 4 MiB ranges: the SDK's default first GET of 32 MiB would make memory grow with the file.
    return ContainerClient.from_container_url(
        url,
        credential=credential,
        connection_timeout=_CONNECTION_TIMEOUT,
        read_timeout=_READ_TIMEOUT,
        max_single_get_size=_BLOCK,
        max_chunk_get_size=_BLOCK,
    )


def explain(exc: AzureError, *, what: str, needs: str) -> StorageAccessError:
    """Turn a storage SDK error into an actionable ``StorageAccessError``."""
    if isinstance(exc, HttpResponseError):
        code = getattr(exc, "error_code", None)
        status = exc.status_code
        if status == 403:
            return StorageAccessError(
                f"Storage refused access to the {what} (403 {code}). Check that the SAS token has not expired "
                f"and grants {needs} on the container (or, identity-based, that the hub's identity has Storage "
                "Blob Data Contributor)."
            )
        if status == 404 and code == "ContainerNotFound":
            return StorageAccessError(f"The {what} does not exist (404 ContainerNotFound).")
        if status == 404:
            return StorageAccessError(f"The {what} was not found (404 {code}).")
        return StorageAccessError(f"Storage failed on the {what} ({status} {code}).")
    if isinstance(exc, ServiceRequestError):
        return StorageAccessError(f"Could not connect to storage for the {what}: the account is unreachable.")
    return StorageAccessError(f"Storage failed on the {what}: {type(exc).__name__}.")


class BlockWriter:
    """Streams bytes into a block blob, 4 MiB blocks at a time; nothing is visible until ``commit``."""

    def __init__(self, blob: BlobClient, *, what: str) -> None:
        self.blob = blob
        self.what = what
        self._buf = bytearray()
        self._blocks: list[str] = []
        self.size = 0

    def write(self, data: bytes) -> None:
        self._buf += data
        self.size += len(data)
        if len(self._buf) >= _BLOCK:
            self._flush()

    def _flush(self) -> None:
        block_id = base64.b64encode(f"{len(self._blocks):08d}".encode()).decode()
        try:
            self.blob.stage_block(block_id, bytes(self._buf))
        except AzureError as exc:
            raise explain(exc, what=self.what, needs="Write") from exc
        self._blocks.append(block_id)
        self._buf.clear()

    def checkpoint(self) -> None:
        """Make what was written so far visible (and keep writing): as the service's error log grows while an
        import runs (inferred: a cancelled job's log holds the refusals up to the cancellation)."""
        if not self._buf:
            return
        self._flush()
        try:
            self.blob.commit_block_list([BlobBlock(block_id=b) for b in self._blocks])
        except AzureError as exc:
            raise explain(exc, what=self.what, needs="Write") from exc

    def commit(self) -> None:
        try:
            if not self._blocks:
                self.blob.upload_blob(bytes(self._buf), overwrite=True)
            else:
                if self._buf:
                    self._flush()
                self.blob.commit_block_list([BlobBlock(block_id=b) for b in self._blocks])
        except AzureError as exc:
            raise explain(exc, what=self.what, needs="Write") from exc
