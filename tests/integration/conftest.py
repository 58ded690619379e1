"""Azurite and the IoT Hub emulator, started once per session on free loopback ports; state reset per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient

from emulators.azurite import Azurite
from emulators.iothub import IoTHubEmulator

from .helpers import Storage, control, running_emulator


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


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
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(iothub_server.ca_path))
    control(iothub_server, "reset", {})
    return iothub_server


@pytest.fixture
def storage(azurite: Azurite) -> Storage:
    """Azurite, with a fresh container prefix per test."""
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    return Storage(service, prefix=f"t{uuid.uuid4().hex[:10]}")
