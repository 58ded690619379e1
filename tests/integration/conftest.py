"""Azurite and the IoT Hub emulator, started once per session on free loopback ports; state reset per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient

from emulators.azurite import Azurite
from emulators.iotcentral import IoTCentralEmulator
from emulators.iothub import IoTHubEmulator
from emulators.iothub.quotas import Profile
from shared.config import Containers
from shared.engine import RETRY_BASE, Context, JobEngine
from shared.iotcentral import IoTCentralClient
from shared.iothub import IoTHubClient
from shared.kinds import registry
from shared.ledger import HubSlot, Ledger
from shared.retry import RetryPolicy
from shared.storage import Storage as LiveStorage
from shared.storage import StorageSettings

from .helpers import FAST, Clock, Jobs, Storage, emptied, running_central, running_emulator


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    server = Azurite(tmp_path_factory.mktemp("azurite")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def iothub_server(tmp_path_factory: pytest.TempPathFactory, azurite: Azurite) -> Iterator[IoTHubEmulator]:
    with running_emulator(
        tmp_path_factory.mktemp("iothub"), storage_identity=azurite.connection_string, oauth=True
    ) as emu:
        yield emu


@pytest.fixture
def iothub(iothub_server: IoTHubEmulator, monkeypatch: pytest.MonkeyPatch) -> IoTHubEmulator:
    """The emulator, emptied through its control plane, with its CA trusted by requests-based clients."""
    return emptied(iothub_server, monkeypatch)


# Realistic mode for tests: an S1 hub with one unit, every delay at 1/20 (a throttle minute lasts 3 s, a 5-device
# import about 0.8 s, the query lag 0.3 s).
REALISTIC = Profile("S1", 1, time_scale=0.05)


@pytest.fixture(scope="session")
def iothub_realistic_server(tmp_path_factory: pytest.TempPathFactory, azurite: Azurite) -> Iterator[IoTHubEmulator]:
    with running_emulator(
        tmp_path_factory.mktemp("iothub-realistic"), storage_identity=azurite.connection_string, profile=REALISTIC
    ) as emu:
        yield emu


@pytest.fixture
def realistic_hub(iothub_realistic_server: IoTHubEmulator, monkeypatch: pytest.MonkeyPatch) -> IoTHubEmulator:
    """The realistic emulator (``REALISTIC``), emptied, throttles full; a test may ``set_profile`` another."""
    iothub_realistic_server.set_profile(REALISTIC)
    return emptied(iothub_realistic_server, monkeypatch)


@pytest.fixture
def own_azurite(tmp_path: Path) -> Iterator[Azurite]:
    """An Azurite of this test alone, for the app's own services (default container and table names), or to stop
    without taking the session's from the other tests."""
    server = Azurite(tmp_path / "azurite").start()
    yield server
    server.stop()


@pytest.fixture
def storage(azurite: Azurite) -> Storage:
    """Azurite, with a fresh container prefix per test."""
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    return Storage(service, prefix=f"t{uuid.uuid4().hex[:10]}")


@pytest.fixture(scope="session")
def iotcentral_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IoTCentralEmulator]:
    with running_central(tmp_path_factory.mktemp("iotcentral"), oauth=True) as emu:
        yield emu


@pytest.fixture
def iotcentral(iotcentral_server: IoTCentralEmulator, monkeypatch: pytest.MonkeyPatch) -> IoTCentralEmulator:
    """The IoT Central emulator, emptied (faults off, default page size, request log cleared), its CA trusted."""
    return emptied(iotcentral_server, monkeypatch)


@pytest.fixture
def central(iotcentral: IoTCentralEmulator) -> IoTCentralClient:
    """A client with the emulator's operator token and quick retries."""
    return IoTCentralClient.from_api_token(
        iotcentral.url, iotcentral.api_token(), retry=RetryPolicy(max_retries=6, backoff_factor=0.01, backoff_max=0.05)
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def jobs(azurite: Azurite, iothub: IoTHubEmulator, clock: Clock) -> Jobs:
    """The job engine on its own containers and ledger table, with one hub (``devhub``) and quick retries."""
    return engine_on(azurite, iothub, clock)


@pytest.fixture
def realistic_jobs(azurite: Azurite, realistic_hub: IoTHubEmulator, clock: Clock) -> Jobs:
    """``jobs`` on the realistic emulator (``REALISTIC``), with backups that include configurations."""
    return engine_on(azurite, realistic_hub, clock, include_configurations=True)


def engine_on(
    azurite: Azurite,
    iothub: IoTHubEmulator,
    clock: Clock,
    *,
    include_configurations: bool = False,
    retry: RetryPolicy = FAST,
    retry_base: timedelta = RETRY_BASE,
    more_hubs: dict[str, IoTHubEmulator] | None = None,
) -> Jobs:
    """The job engine on fresh containers and ledger table, with ``iothub`` as its hub ``devhub`` (and
    ``more_hubs`` by name)."""
    prefix = f"p{uuid.uuid4().hex[:8]}"
    tables = TableServiceClient.from_connection_string(azurite.connection_string)
    storage = LiveStorage.from_settings(StorageSettings(connection_string=azurite.connection_string))
    emulators = {"devhub": iothub, **(more_hubs or {})}
    hubs = {n: IoTHubClient.from_connection_string(e.connection_string(), retry=retry) for n, e in emulators.items()}
    containers = Containers(
        uploads=f"{prefix}-uploads",
        reports=f"{prefix}-reports",
        archive=f"{prefix}-archive",
        backups=f"{prefix}-backups",
        migrations=f"{prefix}-migrations",
    )
    storage.ensure_container(containers.uploads)
    table = tables.create_table_if_not_exists(f"{prefix}jobs")
    kinds, off = registry(retention_days=None, central=None, include_configurations=include_configurations)
    ctx = Context(storage, Ledger(table), containers, hubs, clock)
    return Jobs(JobEngine(ctx, HubSlot(table), kinds, off, retry_base=retry_base))
