"""An Event Grid system topic on a storage account, for the local stack: it watches an Azurite container and posts
``Microsoft.Storage.BlobCreated`` events (Event Grid schema) to a webhook, as the real subscription would.

Faithful to what Event Grid promises and does not (Event Grid docs: delivery and retry; Azure Blob Storage as an
Event Grid source), because the app must cope with it:

- the subscription is validated first: a ``Microsoft.EventGrid.SubscriptionValidationEvent`` whose
  ``validationCode`` the endpoint must echo as ``validationResponse``; no event is delivered before that;
- only blobs written after the subscription exists are delivered (what is already in the container is not);
- delivery is at least once: with ``duplicate_rate`` an event is delivered twice, and with ``shuffle`` a batch's
  events arrive out of order;
- a delivery that fails (no answer, or a status other than 200-204) is retried with exponential back-off, and after
  ``max_attempts`` the event is dropped (Event Grid dead-letters it, or drops it without a dead-letter destination).

The watcher lists the container every ``interval`` seconds (Azurite has no change feed); each new ETag of a name is
one event, as each Put Blob / Put Block List is in Azure.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import requests
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobServiceClient

logger = logging.getLogger("eventgrid")


@dataclass
class Subscription:
    """Where events go and how faithfully badly: ``duplicate_rate`` (0-1), ``shuffle``, retry ``backoff`` (s)."""

    endpoint: str
    duplicate_rate: float = 0.0
    shuffle: bool = False
    max_attempts: int = 30
    backoff: float = 0.5
    backoff_cap: float = 10.0
    seed: int | None = None


@dataclass
class EventGridPublisher:
    """Watches ``container`` on the storage account of ``connection_string`` and delivers to one subscription."""

    connection_string: str
    container: str
    subscription: Subscription
    interval: float = 0.5
    topic: str = (
        "/subscriptions/local/resourceGroups/local/providers/Microsoft.Storage/storageAccounts/devstoreaccount1"
    )
    delivered: list[dict[str, object]] = field(default_factory=list)  # every event that got a 2xx (tests read it)
    dropped: list[dict[str, object]] = field(default_factory=list)  # events given up on after max_attempts

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen: set[tuple[str, str]] = set()
        self._random = random.Random(self.subscription.seed)
        self._session = requests.Session()
        self.validated = threading.Event()

    def start(self) -> EventGridPublisher:
        """Subscribe now: what the container already holds is never delivered. Validation and delivery run in
        the background (the endpoint may not be up yet: it is retried)."""
        self._seen = set(self._listing())
        self._thread = threading.Thread(target=self._run, name="eventgrid", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    # --- watching -------------------------------------------------------------------------------------

    def _listing(self) -> list[tuple[str, str]]:
        service = BlobServiceClient.from_connection_string(self.connection_string)
        try:
            return [(b.name, str(b.etag)) for b in service.get_container_client(self.container).list_blobs()]
        except ResourceNotFoundError:
            return []

    def _run(self) -> None:
        if not self._validate():
            return
        while not self._stop.wait(self.interval):
            try:
                current = self._listing()
            except Exception:
                logger.warning("listing %s failed; retrying", self.container, exc_info=True)
                continue
            new = [(name, etag) for name, etag in current if (name, etag) not in self._seen]
            self._seen.update(new)
            if new:
                self._publish([self._event(name, etag) for name, etag in new])

    def _event(self, name: str, etag: str) -> dict[str, object]:
        service = BlobServiceClient.from_connection_string(self.connection_string)
        blob = service.get_blob_client(self.container, name)
        try:
            size = blob.get_blob_properties().size
        except ResourceNotFoundError:
            size = 0
        return {
            "id": str(uuid.uuid4()),
            "topic": self.topic,
            "subject": f"/blobServices/default/containers/{self.container}/blobs/{name}",
            "eventType": "Microsoft.Storage.BlobCreated",
            "eventTime": datetime.now(UTC).isoformat(),
            "dataVersion": "",
            "metadataVersion": "1",
            "data": {
                "api": "PutBlockList",
                "eTag": etag,
                "contentType": "application/octet-stream",
                "contentLength": size,
                "blobType": "BlockBlob",
                "url": blob.url,
                "sequencer": f"{time.time_ns():032x}",
            },
        }

    # --- delivering -----------------------------------------------------------------------------------

    def _validate(self) -> bool:
        code = str(uuid.uuid4())
        event = {
            "id": str(uuid.uuid4()),
            "topic": self.topic,
            "subject": "",
            "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
            "eventTime": datetime.now(UTC).isoformat(),
            "data": {"validationCode": code, "validationUrl": ""},
            "dataVersion": "2",
            "metadataVersion": "1",
        }
        delay = self.subscription.backoff
        while not self._stop.is_set():
            try:
                r = self._session.post(
                    self.subscription.endpoint,
                    json=[event],
                    headers={"aeg-event-type": "SubscriptionValidation"},
                    timeout=10,
                )
                if r.status_code == 200 and r.json().get("validationResponse") == code:
                    self.validated.set()
                    logger.info("subscription validated")
                    return True
                logger.warning("subscription validation answered %s; retrying", r.status_code)
            except (requests.RequestException, ValueError):
                pass  # the endpoint is not up yet
            if self._stop.wait(delay):
                break
            delay = min(delay * 2, self.subscription.backoff_cap)
        return False

    def _publish(self, events: list[dict[str, object]]) -> None:
        batch = list(events)
        for event in events:
            if self._random.random() < self.subscription.duplicate_rate:
                batch.append(event)  # at least once: this one arrives twice
        if self.subscription.shuffle:
            self._random.shuffle(batch)
        for event in batch:  # one event per delivery, as a webhook subscription with batch size 1 sends them
            threading.Thread(target=self._deliver, args=(event,), name="eventgrid-delivery", daemon=True).start()

    def _deliver(self, event: dict[str, object]) -> None:
        delay = self.subscription.backoff
        for attempt in range(1, self.subscription.max_attempts + 1):
            try:
                r = self._session.post(
                    self.subscription.endpoint,
                    data=json.dumps([event]),
                    headers={"Content-Type": "application/json", "aeg-event-type": "Notification"},
                    timeout=30,
                )
                if 200 <= r.status_code <= 204:
                    self.delivered.append(event)
                    return
                logger.info("delivery of %s got %s (attempt %d)", event["subject"], r.status_code, attempt)
            except requests.RequestException as exc:
                logger.info("delivery of %s failed: %s (attempt %d)", event["subject"], type(exc).__name__, attempt)
            if self._stop.wait(delay * (0.5 + self._random.random())):
                return
            delay = min(delay * 2, self.subscription.backoff_cap)
        logger.warning("gave up on %s after %d attempts", event["subject"], self.subscription.max_attempts)
        self.dropped.append(event)
