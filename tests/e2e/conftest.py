"""End-to-end: the app under the local runner, a fresh Azurite per test, the IoT Hub emulator reset per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from emulators.azurite import Azurite
from emulators.eventgrid import EventGridPublisher, Subscription
from emulators.iotcentral import IoTCentralEmulator
from emulators.iothub import IoTHubEmulator
from emulators.iothub.quotas import Profile
from tests.integration.helpers import control, emptied, running_central, running_emulator

from .app import App, Stack, settings, webhook


@pytest.fixture(scope="session")
def hub_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IoTHubEmulator]:
    with running_emulator(tmp_path_factory.mktemp("iothub-e2e")) as emu:
        yield emu


@pytest.fixture
def hub(hub_server: IoTHubEmulator, monkeypatch: pytest.MonkeyPatch) -> IoTHubEmulator:
    return emptied(hub_server, monkeypatch)


@pytest.fixture
def azurite(tmp_path: Path) -> Iterator[Azurite]:
    server = Azurite(tmp_path / "azurite").start()
    yield server
    server.stop()


@pytest.fixture
def stack(request: pytest.FixtureRequest, tmp_path: Path, azurite: Azurite, hub: IoTHubEmulator) -> Iterator[Stack]:
    """The app on a fresh Azurite; parametrized indirectly with a trigger source, ``EventGrid`` runs the blob
    trigger from Event Grid deliveries (an Event Grid emulator subscribed to ``uploads``, delivering some events
    twice and out of order) instead of polling."""
    source = getattr(request, "param", "LogsAndContainerScan")
    values = settings(azurite, hub, UPLOADS_TRIGGER_SOURCE=source)
    if source == "EventGrid":
        # No sweep during the test: every upload must come through the Event Grid path itself.
        values["UPLOAD_SWEEP_MINUTES"] = "600"
    app = App(tmp_path, values)
    publisher = None
    if source == "EventGrid":
        sub = Subscription(webhook(app), duplicate_rate=0.3, shuffle=True, seed=7, backoff=0.2)
        publisher = EventGridPublisher(azurite.connection_string, "uploads", sub, interval=0.2).start()
    yield Stack(azurite, hub, app, eventgrid=publisher)
    if publisher is not None:
        publisher.stop()
    app.stop()


# An S1 hub with one unit, every delay at 1/20 (as the integration tests' realistic hub).
REALISTIC = Profile("S1", 1, time_scale=0.05)


@pytest.fixture(scope="session")
def realistic_hub_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IoTHubEmulator]:
    """The IoT Hub emulator in realistic mode (``REALISTIC``: S1, one unit, every delay at 1/20)."""
    with running_emulator(tmp_path_factory.mktemp("iothub-e2e-realistic"), profile=REALISTIC) as emu:
        yield emu


@pytest.fixture
def realistic_stack(
    tmp_path: Path, azurite: Azurite, realistic_hub_server: IoTHubEmulator, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Stack]:
    """The app on a fresh Azurite and the realistic hub (emptied, throttles full), backing up configurations."""
    realistic_hub_server.set_profile(REALISTIC)
    hub = emptied(realistic_hub_server, monkeypatch)
    app = App(tmp_path, settings(azurite, hub, BACKUP_INCLUDE_CONFIGURATIONS="true"))
    yield Stack(azurite, hub, app)
    app.stop()


BOTH_SOURCES = pytest.mark.parametrize("stack", ["LogsAndContainerScan", "EventGrid"], indirect=True)


@pytest.fixture(scope="session")
def central_server(
    tmp_path_factory: pytest.TempPathFactory, hub_server: IoTHubEmulator
) -> Iterator[IoTCentralEmulator]:
    # The hub's CA and certificate, so that the app's one REQUESTS_CA_BUNDLE trusts both emulators.
    with running_central(tmp_path_factory.mktemp("iotcentral-e2e"), tls_dir=hub_server.data_dir / "tls") as emu:
        yield emu


@pytest.fixture
def central_stack(
    tmp_path: Path, azurite: Azurite, hub: IoTHubEmulator, central_server: IoTCentralEmulator
) -> Iterator[Stack]:
    """The stack with IoT Central configured (IOTCENTRAL_APP_URL, an API token, the sample's secret settings)."""
    control(central_server, "reset", {})
    app = App(tmp_path, settings(azurite, hub, central_server))
    yield Stack(azurite, hub, app, central_server)
    app.stop()
