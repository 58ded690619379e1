"""Timer triggers on their NCRONTAB (six-field) schedules, as the real host runs them.

A timer with ``useMonitor`` keeps its schedule status in ``azure-webjobs-hosts/timers/{hostId}/{function}/status``
(``{"Last", "Next", "LastUpdated"}``): when the host starts after a ``Next`` that has passed (it was down, or
stopped), the function fires once, at once, with ``IsPastDue``; a run that overruns its period is followed by one
immediate catch-up, never one per missed occurrence. A timer never overlaps itself (the real host holds a singleton
lock across instances).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.functions.timer import TimerRequest
from azure.storage.blob import BlobClient, BlobServiceClient
from croniter import croniter

from .blobs import HOSTS_CONTAINER, Binding

logger = logging.getLogger("functions_host")


def _next(schedule: str, after: datetime) -> datetime:
    nxt: datetime = croniter(schedule, after, second_at_beginning=True).get_next(datetime)
    return nxt


@dataclass
class Timer:
    binding: Binding
    schedule: str
    host_id: str = "localhost"
    lock: threading.Lock = field(default_factory=threading.Lock)
    last: datetime | None = None

    @property
    def use_monitor(self) -> bool:
        return bool(self.binding.trigger.get("useMonitor", True))

    def fire(self, *, past_due: bool, scheduled: datetime | None = None) -> None:
        """Invoke the function now with the schedule status the host would pass (and record it)."""
        with self.lock:
            now = datetime.now(UTC)
            nxt = _next(self.schedule, now)
            request = TimerRequest(
                past_due=past_due,
                schedule_status={
                    "Last": (self.last or now).isoformat(),
                    "Next": nxt.isoformat(),
                    "LastUpdated": now.isoformat(),
                },
                schedule={"AdjustForDST": True},
            )
            try:
                self.binding.call(**{self.binding.trigger["name"]: request})
            except Exception:
                logger.exception("Executed 'Functions.%s' (Failed)", self.binding.function)
                raise
            finally:
                self.last = scheduled or now
                if self.use_monitor:
                    self._write_status(self.last, _next(self.schedule, datetime.now(UTC)))

    def run_forever(self, stop: threading.Event) -> None:
        if self.use_monitor:
            status = self._read_status()
            if status is not None and status["Next"] < datetime.now(UTC):
                logger.info(
                    "timer %s missed %s while the host was down: firing once", self.binding.function, status["Next"]
                )
                self.run_once(past_due=True)
        due = _next(self.schedule, datetime.now(UTC))
        logger.info("timer %s scheduled: next run at %s", self.binding.function, due.isoformat())
        while not stop.wait(max(0.0, (due - datetime.now(UTC)).total_seconds())):
            self.run_once(past_due=False, scheduled=due)
            following = _next(self.schedule, due)
            if following < datetime.now(UTC):  # the run overran its period: catch up once, not once per miss
                self.run_once(past_due=True)
            due = _next(self.schedule, datetime.now(UTC))

    def run_once(self, *, past_due: bool, scheduled: datetime | None = None) -> None:
        """Fire, logging a failure instead of raising (the next occurrence runs anyway)."""
        with contextlib.suppress(Exception):  # logged in fire; the next occurrence runs anyway
            self.fire(past_due=past_due, scheduled=scheduled)

    # --- schedule status ------------------------------------------------------------------------------

    def _status_blob(self) -> BlobClient:
        hosts = os.environ["AzureWebJobsStorage"]  # noqa: SIM112 - the host's own setting name
        container = BlobServiceClient.from_connection_string(hosts).get_container_client(HOSTS_CONTAINER)
        with contextlib.suppress(ResourceExistsError):
            container.create_container()
        return container.get_blob_client(f"timers/{self.host_id}/{self.binding.function}/status")

    def _read_status(self) -> dict[str, datetime] | None:
        try:
            doc: dict[str, Any] = json.loads(self._status_blob().download_blob().readall())
            return {k: datetime.fromisoformat(v) for k, v in doc.items() if k in ("Last", "Next", "LastUpdated")}
        except (ResourceNotFoundError, ValueError, KeyError):
            return None

    def _write_status(self, last: datetime, nxt: datetime) -> None:
        doc = {"Last": last.isoformat(), "Next": nxt.isoformat(), "LastUpdated": datetime.now(UTC).isoformat()}
        try:
            self._status_blob().upload_blob(json.dumps(doc).encode(), overwrite=True)
        except Exception:
            logger.warning("could not record the schedule status of %s", self.binding.function, exc_info=True)
