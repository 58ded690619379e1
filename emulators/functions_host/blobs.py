"""The blob trigger, from either source the real host offers (the binding's ``source``):

- ``LogsAndContainerScan`` (polling): the container is scanned; a receipt per blob version (ETag) in
  ``azure-webjobs-hosts/blobreceipts/{hostId}/{function}/{etag}/{container}/{blob}`` marks it done, as the real host's
  receipts do; a failing blob is retried on later scans.
- ``EventGrid``: nothing is scanned; the blob extension's webhook (``/runtime/webhooks/blobs``, see ``host``) takes
  Event Grid ``Microsoft.Storage.BlobCreated`` events and runs the function for each, with no ETag re-check and no
  receipt (Event Grid delivers at least once, sometimes twice or out of order: the app's idempotency must hold).

Either way a blob whose function fails ``MAX_TRIES`` times goes to the ``webjobs-blobtrigger-poison`` queue, which
lives on the trigger connection's storage account (``DEVICE_STORAGE``), as in Azure, not on AzureWebJobsStorage.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any
from urllib.parse import unquote, urlsplit

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient, ContainerClient
from azure.storage.queue import QueueClient

logger = logging.getLogger("functions_host")

HOSTS_CONTAINER = "azure-webjobs-hosts"
POISON_QUEUE = "webjobs-blobtrigger-poison"
MAX_TRIES = 5  # host.json extensions.blobs.poisonBlobThreshold
EVENT_GRID = "EventGrid"
RETRY_SECONDS = 1.0  # between tries of an Event Grid delivery whose function failed


@dataclass
class Binding:
    function: str
    trigger: dict[str, Any]
    call: Callable[..., Any]


class BlobTrigger:
    """One blob-triggered function: runs it per blob version, and after ``MAX_TRIES`` failures poisons the blob."""

    def __init__(self, binding: Binding, *, host_id: str, pool: ThreadPoolExecutor, stop: threading.Event) -> None:
        self.binding = binding
        self.container, _, pattern = binding.trigger["path"].partition("/")
        self.prefix = pattern.split("{", 1)[0]
        self.connection: str = binding.trigger["connection"]
        self.source: str = binding.trigger.get("source") or "LogsAndContainerScan"
        self.host_id = host_id
        self.pool = pool
        self.stop = stop
        self._in_flight: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    @property
    def event_grid(self) -> bool:
        return self.source == EVENT_GRID

    def prepare(self) -> None:
        """Make the poison queue at start, as the blob extension does, so it can be watched before anything fails."""
        self._poison_queue()

    def _poison_queue(self) -> QueueClient:
        queue = _queue(self.connection, POISON_QUEUE)
        with contextlib.suppress(ResourceExistsError):
            queue.create_queue()
        return queue

    def _receipts(self) -> ContainerClient:
        hosts = os.environ["AzureWebJobsStorage"]  # noqa: SIM112 - the host's own setting name
        receipts = BlobServiceClient.from_connection_string(hosts).get_container_client(HOSTS_CONTAINER)
        with contextlib.suppress(ResourceExistsError):
            receipts.create_container()
        return receipts

    # --- polling source -------------------------------------------------------------------------------

    def scan_forever(self, interval: float) -> None:
        receipts = self._receipts()
        source = _blob_service(self.connection)
        while not self.stop.is_set():
            try:
                for blob in source.get_container_client(self.container).list_blobs(
                    name_starts_with=self.prefix or None
                ):
                    self._consider(receipts, blob.name, str(blob.etag))
            except ResourceNotFoundError:
                pass  # the container does not exist yet
            except Exception:
                logger.warning("blob scan of %s failed; retrying", self.container, exc_info=True)
            self.stop.wait(interval)

    def _consider(self, receipts: ContainerClient, name: str, etag: str) -> None:
        receipt = receipts.get_blob_client(
            f"blobreceipts/{self.host_id}/{self.binding.function}/{etag.strip(chr(34))}/{self.container}/{name}"
        )
        try:
            meta = receipt.get_blob_properties().metadata or {}
        except ResourceNotFoundError:
            meta = {}
        if meta.get("done") == "true":
            return
        if not self._claim(name, etag):
            return
        tries = int(meta.get("tries", "0")) + 1
        future = self.pool.submit(self._run_scanned, receipt, name, etag, tries)
        future.add_done_callback(lambda _f: self._release(name, etag))

    def _run_scanned(self, receipt: Any, name: str, etag: str, tries: int) -> None:
        ok = self._run(name, tries)
        if not ok and tries < MAX_TRIES:
            receipt.upload_blob(b"", overwrite=True, metadata={"tries": str(tries), "done": "false"})
            return
        if not ok:
            self._poison(name, etag, tries)
        receipt.upload_blob(b"", overwrite=True, metadata={"tries": str(tries), "done": "true", "poison": str(not ok)})

    # --- Event Grid source ----------------------------------------------------------------------------

    def accepts(self, url: str) -> str | None:
        """The blob name of a BlobCreated event's ``data.url`` when it is in this trigger's path, else None."""
        parts = unquote(urlsplit(url).path).lstrip("/").split("/")
        # https://<account>.blob.core.windows.net/<container>/<name>, or Azurite's /<account>/<container>/<name>
        for skip in (0, 1):
            if len(parts) > skip + 1 and parts[skip] == self.container:
                name = "/".join(parts[skip + 1 :])
                return name if name.startswith(self.prefix) else None
        return None

    def deliver(self, name: str, etag: str) -> None:
        """Run the function for one delivered event (tries and poison as for a scanned blob), in the background:
        the webhook answers at once, as the blob extension does."""
        self.pool.submit(self._run_delivered, name, etag)

    def _run_delivered(self, name: str, etag: str) -> None:
        for tries in range(1, MAX_TRIES + 1):
            if self._run(name, tries):
                return
            if self.stop.wait(RETRY_SECONDS):
                return
        self._poison(name, etag, MAX_TRIES)

    # --- both -----------------------------------------------------------------------------------------

    def _claim(self, name: str, etag: str) -> bool:
        with self._lock:
            if (name, etag) in self._in_flight:
                return False
            self._in_flight.add((name, etag))
            return True

    def _release(self, name: str, etag: str) -> None:
        with self._lock:
            self._in_flight.discard((name, etag))

    def _run(self, name: str, tries: int) -> bool:
        fn = self.binding.function
        try:
            self.binding.call(**{self.binding.trigger["name"]: _blob_client(self.connection, self.container, name)})
        except Exception as exc:
            logger.error("Executed 'Functions.%s' (Failed, try %d of %d): %s", fn, tries, MAX_TRIES, exc)
            return False
        logger.info("Executed 'Functions.%s' (Succeeded, blob %s/%s, %s)", fn, self.container, name, self.source)
        return True

    def _poison(self, name: str, etag: str, tries: int) -> None:
        message = {
            "Type": "BlobTrigger",
            "FunctionId": f"Host.Functions.{self.binding.function}",
            "BlobType": "BlockBlob",
            "ContainerName": self.container,
            "BlobName": name,
            "ETag": etag,
        }
        self._poison_queue().send_message(base64.b64encode(json.dumps(message).encode()).decode())
        logger.error("blob %s/%s moved to the %s queue after %d tries", self.container, name, POISON_QUEUE, tries)


def _credential(connection: str) -> Any:
    from azure.identity import ManagedIdentityCredential

    client_id = os.environ.get(f"{connection}__clientId")
    return ManagedIdentityCredential(client_id=client_id) if client_id else ManagedIdentityCredential()


# A trigger connection is a connection string, or identity-based as the real host reads it ("Common properties for
# identity-based connections", learn.microsoft.com: <CONNECTION>__blobServiceUri, __queueServiceUri, __clientId)
# with the app's managed identity (the extension's own converter reads the same settings for the BlobClient).
def _blob_service(connection: str) -> BlobServiceClient:
    if connection in os.environ:
        return BlobServiceClient.from_connection_string(os.environ[connection])
    return BlobServiceClient(os.environ[f"{connection}__blobServiceUri"], credential=_credential(connection))


def _queue(connection: str, name: str) -> QueueClient:
    if connection in os.environ:
        return QueueClient.from_connection_string(os.environ[connection], name)
    return QueueClient(os.environ[f"{connection}__queueServiceUri"], name, credential=_credential(connection))


def _blob_client(connection: str, container: str, name: str) -> Any:
    """The ``BlobClient`` the SDK-type binding gives the function, built by the extension's own converter."""
    from azurefunctions.extensions.base import Datum
    from azurefunctions.extensions.bindings.blob import BlobClient
    from azurefunctions.extensions.bindings.blob.blobClientConverter import BlobClientConverter

    content = json.dumps({"Connection": connection, "ContainerName": container, "BlobName": name})
    data = SimpleNamespace(version="1.0", source="AzureStorageBlobs", content_type="application/json", content=content)
    return BlobClientConverter.decode(Datum(data, "model_binding_data"), trigger_metadata={}, pytype=BlobClient)
