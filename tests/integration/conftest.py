"""Azurite and the IoT Hub emulator, started once per session on free loopback ports; state reset per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from azure.storage.blob import BlobServiceClient

from emulators.azurite import Azurite
from emulators.iothub import IoTHubEmulator

from .helpers import Storage


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
    emu = IoTHubEmulator(
        tmp_path_factory.mktemp("iothub"),
        port=0,
        storage_identity=azurite.connection_string,
        control_plane=True,
        oauth=True,
    )
    emu.start()
    if not emu.ready.wait(5):
        pytest.fail("the IoT Hub emulator did not start")
    yield emu
    emu.stop()


@pytest.fixture
def iothub(iothub_server: IoTHubEmulator, monkeypatch: pytest.MonkeyPatch) -> IoTHubEmulator:
    """The emulator, emptied through its control plane, with its CA trusted by requests-based clients."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(iothub_server.ca_path))
    r = requests.post(f"{iothub_server.url}/_emulator/reset", verify=str(iothub_server.ca_path), timeout=10)
    r.raise_for_status()
    return iothub_server


@pytest.fixture
def storage(azurite: Azurite) -> Storage:
    """Azurite, with a fresh container prefix per test."""
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    return Storage(service, prefix=f"t{uuid.uuid4().hex[:10]}")
