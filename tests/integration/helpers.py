"""Helpers shared by the integration tests: containers with SAS URIs, device lines, waiting for a job."""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
from azure.iot.hub.models import JobProperties
from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

from emulators.azurite import Azurite
from emulators.iotcentral import IoTCentralEmulator
from emulators.iothub import POLICIES, IoTHubEmulator
from emulators.iothub.auth import sign
from shared.backups import locate_backup
from shared.config import Containers, Settings
from shared.engine import JobEngine
from shared.iothub import IoTHubClient
from shared.ledger import HubSlot, Job, JobKind, Ledger
from shared.retry import RetryPolicy
from shared.services import Services
from shared.storage import BlobRef
from shared.storage import Storage as LiveStorage
from tests.waiting import wait_until

TERMINAL = ("completed", "failed", "cancelled")


@dataclass
class Storage:
    service: BlobServiceClient
    prefix: str

    def container(self, name: str) -> str:
        full = f"{self.prefix}-{name}"
        self.service.create_container(full)
        return full

    def sas_url(self, container: str, permission: str = "rl", *, hours: float = 1) -> str:
        token = generate_container_sas(
            self.service.account_name,
            container,
            account_key=self.service.credential.account_key,
            permission=ContainerSasPermissions.from_string(permission),
            expiry=datetime.now(UTC) + timedelta(hours=hours),
        )
        return f"{self.service.url.rstrip('/')}/{container}?{token}"

    def plain_url(self, container: str) -> str:
        return f"{self.service.url.rstrip('/')}/{container}"

    def upload_lines(self, container: str, lines: Iterable[dict[str, Any] | str], name: str = "devices.txt") -> None:
        text = "".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines)
        self.service.get_blob_client(container, name).upload_blob(text.encode(), overwrite=True)

    def read_lines(self, container: str, name: str) -> list[dict[str, Any]]:
        data = self.service.get_blob_client(container, name).download_blob().readall()
        return [json.loads(x) for x in data.decode().splitlines() if x.strip()]


def sas_import(storage: Storage, src: str, out: str, **props: Any) -> JobProperties:
    """Import job properties reading ``src`` (SAS: read) and writing to ``out`` (SAS: read, write, delete)."""
    return JobProperties(
        type="import",
        input_blob_container_uri=storage.sas_url(src, "rl"),
        output_blob_container_uri=storage.sas_url(out, "rwd"),
        **props,
    )


def wait_for(get_status: Callable[[], Any], *, deadline: float = 120) -> Any:
    """Poll until the hub job reaches a terminal state. The deadline only stops a hung test; it asserts nothing."""

    def ended(job: Any) -> bool:
        return (job["status"] if isinstance(job, dict) else job.status) in TERMINAL

    return wait_until(get_status, ended, deadline=deadline, what="the hub job to end")


def hub_token(emu: IoTHubEmulator, policy: str = "iothubowner", *, ttl: int = 600, key: str | None = None) -> str:
    return sign(emu.host_name, key or POLICIES[policy].key, int(time.time()) + ttl, policy)


def hub_call(
    emu: IoTHubEmulator,
    method: str,
    path: str,
    token: str | None = "owner",
    body: Any = None,
    *,
    extra: dict[str, str] | None = None,
) -> requests.Response:
    """One raw request to the emulator (``token="owner"`` signs one with iothubowner, None sends none; ``extra``:
    more headers, such as If-Match)."""
    headers = {"Authorization": hub_token(emu) if token == "owner" else token} if token else {}
    headers.update(extra or {})
    return requests.request(
        method,
        f"{emu.url}{path}?api-version=2021-04-12",
        headers=headers,
        json=body,
        verify=str(emu.ca_path),
        timeout=10,
    )


@contextlib.contextmanager
def running_emulator(data_dir: Path, **options: Any) -> Iterator[IoTHubEmulator]:
    """The IoT Hub emulator on a free port (``options`` as for ``IoTHubEmulator``), stopped afterwards."""
    emu = IoTHubEmulator(data_dir, port=0, control_plane=True, **options)
    emu.start()
    if not emu.ready.wait(5):
        raise RuntimeError("the IoT Hub emulator did not start")
    try:
        yield emu
    finally:
        emu.stop()


@contextlib.contextmanager
def running_central(data_dir: Path, **options: Any) -> Iterator[IoTCentralEmulator]:
    """The IoT Central emulator on a free port (``options`` as for ``IoTCentralEmulator``), stopped afterwards."""
    emu = IoTCentralEmulator(data_dir, port=0, control_plane=True, **options)
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


Emulator = TypeVar("Emulator", IoTHubEmulator, IoTCentralEmulator)


def emptied(emu: Emulator, monkeypatch: pytest.MonkeyPatch) -> Emulator:
    """The emulator reset through its control plane, with its CA trusted by requests-based clients."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(emu.ca_path))
    control(emu, "reset", {})
    return emu


class Clock:
    """A settable clock for the code under test (``clock=``), starting at a fixed instant."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, minutes: float) -> None:
        self.now += timedelta(minutes=minutes)


def control(emu: IoTHubEmulator | IoTCentralEmulator, path: str, body: dict[str, Any]) -> None:
    """Drive an emulator's control plane: ``reset``, ``faults``; the hub's also ``jobs`` (pause), ``clock``."""
    r = requests.post(f"{emu.url}/_emulator/{path}", json=body, verify=str(emu.ca_path), timeout=10)
    r.raise_for_status()


def device_line(device_id: str, mode: str | None = None, **extra: Any) -> dict[str, Any]:
    line: dict[str, Any] = {"id": device_id, "status": "enabled"}
    if mode:
        line["importMode"] = mode
    line.update(extra)
    return line


def request_log(emu: IoTCentralEmulator) -> list[dict[str, Any]]:
    """Every data-export request the IoT Central emulator served since its reset: method, path, body, status,
    response."""
    r = requests.get(f"{emu.url}/_emulator/requests", verify=str(emu.ca_path), timeout=10)
    r.raise_for_status()
    log: list[dict[str, Any]] = r.json()
    return log


def writes(log: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(method, path) of the requests that change something."""
    return [(e["method"], e["path"]) for e in log if e["method"] != "GET"]


# --- the job engine under test -------------------------------------------------------------------------

FAST = RetryPolicy(max_retries=6, backoff_factor=0.01, backoff_max=0.05, total_timeout=30)
KEY = base64.b64encode(b"secret-device-key-0123456789abcd").decode()


@dataclass
class Jobs:
    """The job engine with the entry points the app's services give it, minus starting: a test starts, polls and
    cancels itself, with its own clock."""

    engine: JobEngine

    @property
    def storage(self) -> LiveStorage:
        return self.engine.ctx.storage

    @property
    def containers(self) -> Containers:
        return self.engine.ctx.containers

    @property
    def hubs(self) -> dict[str, IoTHubClient]:
        return dict(self.engine.ctx.hubs)

    @property
    def ledger(self) -> Ledger:
        return self.engine.ledger

    @property
    def slots(self) -> HubSlot:
        return self.engine.slots

    def accept_upload(self, ref: BlobRef, hub: str) -> Job:
        return self.engine.accept(self.engine.draft(JobKind.IMPORT, hub, source=ref))

    def queue_export(self, hub: str, *, include_keys: bool = False) -> Job:
        return self.engine.accept(replace(self.engine.draft(JobKind.EXPORT, hub), include_keys=include_keys))

    def accept_restore(self, hub: str, backup: str) -> Job:
        ref = locate_backup(self.storage, self.containers.backups, hub, backup)
        draft = self.engine.draft(JobKind.RESTORE, hub, source=ref, keyed_by_source=False)
        return self.engine.accept(draft, once_while_active=True)

    def start_next(self, hub: str) -> Job | None:
        return self.engine.start_next(hub)

    def monitor_pass(self, hub: str) -> list[Job]:
        return self.engine.monitor_pass(hub)

    def cancel(self, job: Job) -> Job:
        return self.engine.cancel(job)


def upload(p: Jobs, name: str, lines: list[dict[str, Any] | str]) -> BlobRef:
    data = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines).encode()
    etag = p.storage.upload_bytes(p.containers.uploads, name, data)
    return BlobRef(p.containers.uploads, name, etag)


def devices(n: int, prefix: str = "d", **extra: Any) -> list[dict[str, Any] | str]:
    return [{"id": f"{prefix}-{i}", "status": "enabled", **extra} for i in range(n)]


def run_to_end(p: Jobs, job: Job, clock: Clock, deadline: float = 60) -> Job:
    """Monitor passes (the clock advancing 30 s each) until ``job`` ends; the deadline only stops a hung test."""
    return monitor_until(p, job, clock, lambda j: j.state.is_terminal, deadline=deadline)


def monitor_until(p: Jobs, job: Job, clock: Clock, done: Callable[[Job], bool], *, deadline: float = 60) -> Job:
    """Monitor passes, the clock advancing 30 s between two, until ``done`` holds for ``job`` as the ledger has
    it; the deadline only stops a hung test."""
    passes = 0

    def step() -> Job:
        nonlocal passes
        if passes:
            clock.advance(0.5)
        passes += 1
        p.monitor_pass(job.hub)
        return p.ledger.get(job.hub, job.job_id)

    return wait_until(step, done, deadline=deadline, what=f"job {job.job_id} (monitor passes)")


def hub_count(p: Jobs) -> int:
    return p.hubs["devhub"].get_registry_statistics().total


def services_on(azurite: Azurite, hub: IoTHubEmulator, **settings: str) -> Services:
    """The app's services as the Functions host builds them, on ``azurite`` and ``hub`` (as ``devhub``)."""
    env = {
        "IOTHUB_HUBS": "devhub",
        "IOTHUB_DEVHUB_CONNECTION_STRING": hub.connection_string(),
        "DEVICE_STORAGE": azurite.connection_string,
        # As the integration engine: these tests follow an import alone, not its snapshot's plan job first.
        "IMPORT_SNAPSHOTS": "explicit",
        **settings,
    }
    return Services.build(Settings.from_env(env), env)
