"""No secret value in the repr or str of a settings object, credential or client: these end up in logs, tracebacks
(pytest and the Functions host print locals) and debugger sessions."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from azure.data.tables import TableClient

from shared.central import Central
from shared.config import CentralSettings, Containers, HubSettings, Settings
from shared.dataexport.plan import Action, Outcome, Step, StepResult
from shared.engine import Context, JobEngine, utcnow
from shared.iotcentral import ApiTokenCredential, IoTCentralClient
from shared.iothub import EntraCredential, IoTHubClient, SasCredential
from shared.kinds import registry
from shared.ledger import HubSlot, Ledger
from shared.retry import RetryPolicy, Transport
from shared.services import Services
from shared.storage import Storage, StorageSettings

ACCOUNT_KEY = base64.b64encode(b"storage-account-key-do-not-show!").decode()
STORAGE = (
    f"DefaultEndpointsProtocol=https;AccountName=fleetstore;AccountKey={ACCOUNT_KEY};EndpointSuffix=core.windows.net"
)
HUB_KEY = base64.b64encode(b"hub-policy-key-do-not-show-it!!!").decode()
HUB_CONN = f"HostName=devhub.azure-devices.net;SharedAccessKeyName=iothubowner;SharedAccessKey={HUB_KEY}"
TOKEN_SIG = "T0tFTi1TSUctZG8tbm90LXNob3ctaXQ%3D"
CENTRAL_TOKEN = f"SharedAccessSignature sr=5b1c5e2a-app&sig={TOKEN_SIG}&skn=operator&se=4102444800000"
ENTRA_TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOi.entra-access-token-do-not-show"
EXPORT_KEY = base64.b64encode(b"export-destination-key-no-show!!").decode()
ENV = {
    "DEVICE_STORAGE": STORAGE,
    "IOTHUB_HUBS": "devhub,prodhub",
    "IOTHUB_DEVHUB_CONNECTION_STRING": HUB_CONN,
    "IOTHUB_PRODHUB_HOSTNAME": "prodhub.azure-devices.net",
    "IOTCENTRAL_APP_URL": "https://fleet.azureiotcentral.com",
    "IOTCENTRAL_API_TOKEN": CENTRAL_TOKEN,
    "CENTRAL_ARCHIVE_STORAGE": f"AccountName=exports;AccountKey={EXPORT_KEY}",
}
# Each secret whole and its distinctive part alone (a repr may show a part: a quoted key, a URL-decoded signature).
SECRETS = (STORAGE, ACCOUNT_KEY, HUB_CONN, HUB_KEY, CENTRAL_TOKEN, TOKEN_SIG, ENTRA_TOKEN, EXPORT_KEY)


class _Token:
    token, expires_on = ENTRA_TOKEN, 4102444800


class _IdentityCredential:
    """Stands for azure-identity's ManagedIdentityCredential; its own repr is azure-identity's concern."""

    def get_token(self, *scopes: str) -> _Token:
        return _Token()


def _sas() -> SasCredential:
    credential = SasCredential("devhub.azure-devices.net", "iothubowner", HUB_KEY)
    credential.authorization()  # a signed token is cached now
    return credential


def _entra() -> EntraCredential:
    credential = EntraCredential(_IdentityCredential())
    assert credential.authorization() == f"Bearer {ENTRA_TOKEN}"  # the token is cached now
    return credential


def _central_client() -> IoTCentralClient:
    return IoTCentralClient.from_api_token(ENV["IOTCENTRAL_APP_URL"], CENTRAL_TOKEN)


def _central() -> Central:
    settings = Settings.from_env(ENV)
    return Central(Storage.from_settings(settings.storage), _central_client(), ENV, Containers())


def _services() -> Services:
    settings = Settings.from_env(ENV)
    central = _central()
    table = TableClient.from_connection_string(STORAGE, "jobledger")
    hubs = {"devhub": IoTHubClient.from_connection_string(HUB_CONN)}
    kinds, off = registry(retention_days=None, central=central)
    ctx = Context(central.storage, Ledger(table), Containers(), hubs, utcnow)
    return Services(settings, central.storage, ctx.ledger, JobEngine(ctx, HubSlot(table), kinds, off), central)


# name -> (a builder of the object, a non-secret part its repr should show: proof the repr is a real one)
OBJECTS: dict[str, tuple[Callable[[], Any], str | None]] = {
    "Settings": (lambda: Settings.from_env(ENV), "prodhub.azure-devices.net"),
    "StorageSettings (connection string)": (lambda: StorageSettings.from_env(ENV, "DEVICE_STORAGE"), "StorageSettings"),
    "StorageSettings (identity)": (
        lambda: StorageSettings(blob_uri="https://fleetstore.blob.core.windows.net", client_id="c1"),
        "fleetstore",
    ),
    "HubSettings": (lambda: Settings.from_env(ENV).hubs["devhub"], "devhub"),
    "HubSettings (direct)": (lambda: HubSettings("devhub", HUB_CONN), "devhub"),
    "CentralSettings": (lambda: Settings.from_env(ENV).central, "fleet.azureiotcentral.com"),
    "CentralSettings (direct)": (lambda: CentralSettings("https://fleet.azureiotcentral.com", CENTRAL_TOKEN), "fleet"),
    "ApiTokenCredential": (lambda: ApiTokenCredential(CENTRAL_TOKEN), "ApiTokenCredential"),
    "SasCredential": (_sas, "iothubowner"),
    "EntraCredential": (_entra, "iothubs.azure.net"),
    "Transport": (lambda: Transport(_sas(), retry=RetryPolicy()), "iothubowner"),
    "IoTHubClient": (lambda: IoTHubClient.from_connection_string(HUB_CONN), None),
    "IoTCentralClient": (_central_client, None),
    "Storage": (lambda: Storage.from_settings(StorageSettings(connection_string=STORAGE)), None),
    "plan Step (body holds the resolved secret)": (
        lambda: Step(
            Action.CREATE,
            "destinations",
            "archive",
            ("authorization.connectionString (secret)",),
            body={"authorization": {"connectionString": ENV["CENTRAL_ARCHIVE_STORAGE"]}},
        ),
        "archive",
    ),
    "plan StepResult": (
        lambda: StepResult(
            Step(Action.UPDATE, "destinations", "archive", body={"connectionString": STORAGE}), Outcome.DONE
        ),
        "archive",
    ),
}


@pytest.mark.parametrize("name", list(OBJECTS))
@pytest.mark.parametrize("show", [repr, str], ids=["repr", "str"])
def test_no_secret_in_repr_or_str(name: str, show: Callable[[object], str]) -> None:
    build, visible = OBJECTS[name]
    text = show(build())
    leaked = [s for s in SECRETS if s in text]
    assert not leaked, f"{name}: {show.__name__} shows {leaked}: {text}"
    if visible is not None:
        assert visible in text, text


def test_the_settings_repr_still_says_which_hubs_use_a_connection_string() -> None:
    # Hiding the value must not hide the fact: the repr says which hub is configured how.
    text = repr(Settings.from_env({**ENV, "SAS_LIFETIME_HOURS": "2"}))
    assert "devhub" in text and "prodhub" in text and repr(timedelta(hours=2)) in text


# Central keeps the app settings it resolves {"appSetting": NAME} references from (os.environ in the app): its repr,
# and Services' which holds it, must not print them.
@pytest.mark.parametrize("build", [_central, _services], ids=["Central", "Services"])
@pytest.mark.parametrize("show", [repr, str], ids=["repr", "str"])
def test_no_secret_in_the_repr_of_central_or_services(
    build: Callable[[], object], show: Callable[[object], str]
) -> None:
    text = show(build())
    assert not [s for s in SECRETS if s in text]
