"""End-to-end: the app under the local runner, a fresh Azurite per test, the IoT Hub emulator reset per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from emulators.azurite import Azurite
from emulators.iothub import IoTHubEmulator

from .app import App, Stack, settings


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def hub_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IoTHubEmulator]:
    emu = IoTHubEmulator(tmp_path_factory.mktemp("iothub-e2e"), port=0, control_plane=True)
    emu.start()
    if not emu.ready.wait(5):
        pytest.fail("the IoT Hub emulator did not start")
    yield emu
    emu.stop()


@pytest.fixture
def hub(hub_server: IoTHubEmulator, monkeypatch: pytest.MonkeyPatch) -> IoTHubEmulator:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(hub_server.ca_path))
    requests.post(f"{hub_server.url}/_emulator/reset", verify=str(hub_server.ca_path), timeout=10).raise_for_status()
    return hub_server


@pytest.fixture
def azurite(tmp_path: Path) -> Iterator[Azurite]:
    server = Azurite(tmp_path / "azurite").start()
    yield server
    server.stop()


@pytest.fixture
def stack(tmp_path: Path, azurite: Azurite, hub: IoTHubEmulator) -> Iterator[Stack]:
    app = App(tmp_path, settings(azurite, hub))
    yield Stack(azurite, hub, app)
    app.stop()
