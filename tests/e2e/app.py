"""The function app run by the local Functions runner in a child process, as a user runs it."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient

from emulators.azurite import Azurite
from emulators.eventgrid import EventGridPublisher
from emulators.functions_host import BLOBS_EXTENSION_KEY
from emulators.functions_host.process import HostProcess, stack_settings
from emulators.iotcentral import IoTCentralEmulator
from emulators.iothub import IoTHubEmulator
from shared.ledger import TERMINAL_STATES
from tests.waiting import wait_until


def settings(
    azurite: Azurite, hub: IoTHubEmulator, central: IoTCentralEmulator | None = None, **overrides: str
) -> dict[str, str]:
    # The monitor every second and a short submission grace: tests wait on outcomes, never on fixed sleeps.
    return stack_settings(
        azurite,
        hub,
        central,
        MONITOR_SCHEDULE="* * * * * *",
        SUBMIT_GRACE_SECONDS="1",
        RETRY_BACKOFF_SECONDS="0.5",
        ORPHAN_CONTAINER_MINUTES="0.05",
        **overrides,
    )


class App(HostProcess):
    """The app under the local host, with helpers to call its API and fire its timers."""

    def jobs(self, **query: str) -> list[dict[str, Any]]:
        r = self.call("GET", "jobs", params={"limit": "200", **query})
        assert r.status_code == 200, r.text
        jobs: list[dict[str, Any]] = r.json()["jobs"]
        return jobs

    def job(self, hub: str, job_id: str) -> dict[str, Any]:
        r = self.call("GET", f"jobs/{hub}/{job_id}")
        assert r.status_code == 200, r.text
        doc: dict[str, Any] = r.json()
        return doc

    def wait_jobs(
        self, count: int, *, states: Iterable[str] = TERMINAL_STATES, timeout: float = 300
    ) -> list[dict[str, Any]]:
        """Wait until ``count`` jobs exist and all are in ``states``; the timeout only stops a hung test."""
        wanted = set(states)
        return wait_until(
            self.jobs,
            lambda jobs: len(jobs) >= count and all(j["state"] in wanted for j in jobs),
            deadline=timeout,
            interval=0.2,
            what=lambda: f"{count} jobs in {sorted(wanted)}\n{self.log()[-4000:]}",
        )


def webhook(app: HostProcess, key: str = BLOBS_EXTENSION_KEY) -> str:
    """The blob extension's webhook of the upload trigger, as the Event Grid subscription names it in Azure."""
    return f"{app.url}/runtime/webhooks/blobs?functionName=Host.Functions.import_on_upload&code={key}"


@dataclass
class Stack:
    azurite: Azurite
    hub: IoTHubEmulator
    app: App
    central: IoTCentralEmulator | None = None
    eventgrid: EventGridPublisher | None = None

    @property
    def blobs(self) -> BlobServiceClient:
        return BlobServiceClient.from_connection_string(self.azurite.connection_string)

    @property
    def tables(self) -> TableServiceClient:
        return TableServiceClient.from_connection_string(self.azurite.connection_string)

    def drop(self, name: str, lines: Iterable[dict[str, Any] | str]) -> str:
        data = "".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines).encode()
        blobs = self.blobs
        ensure(blobs, "uploads")
        return str(blobs.get_blob_client("uploads", name).upload_blob(data, overwrite=True)["etag"])

    def names(self, container: str, prefix: str = "") -> list[str]:
        """The blob names in ``container``; a container that does not exist holds none. Any other error raises: an
        empty list must mean "nothing there" (e.g. "the upload was moved"), never "the listing failed"."""
        try:
            return [b.name for b in self.blobs.get_container_client(container).list_blobs(name_starts_with=prefix)]
        except ResourceNotFoundError:
            return []

    def read(self, container: str, name: str) -> bytes:
        return bytes(self.blobs.get_blob_client(container, name).download_blob().readall())


def ensure(blobs: BlobServiceClient, container: str) -> None:
    with contextlib.suppress(ResourceExistsError):
        blobs.create_container(container)
