"""Settings from the environment: defaults, every malformed value named with its fix, no secret in a repr."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shared.config import ConfigError, Settings, Snapshots, StorageAuth

CONN = "HostName=h.azure-devices.net;SharedAccessKeyName=p;SharedAccessKey=c2VjcmV0c2VjcmV0c2VjcmV0"
BASE = {
    "DEVICE_STORAGE": "UseDevelopmentStorage=true",
    "IOTHUB_HUBS": "prod-hub, test",
    "IOTHUB_PROD_HUB_CONNECTION_STRING": CONN,
    "IOTHUB_TEST_HOSTNAME": "t.azure-devices.net",
}


def test_defaults_and_hubs_in_order() -> None:
    s = Settings.from_env(BASE)
    assert list(s.hubs) == ["prod-hub", "test"] and s.default_hub == "prod-hub"
    assert s.hubs["test"].host_name == "t.azure-devices.net" and s.hubs["test"].connection_string is None
    assert s.storage_auth is StorageAuth.KEY_BASED and s.sas_lifetime == timedelta(hours=24)
    assert s.backup_retention_days == 30 and s.backup_include_keys is False and s.max_errors == 100
    assert s.backup_include_configurations is False
    assert s.import_snapshots is Snapshots.CHANGES  # every import that can change a device is undoable (issue 20 4b)
    assert "c2VjcmV0" not in repr(s) and "UseDevelopmentStorage" not in repr(s)


def test_values_are_read() -> None:
    s = Settings.from_env(
        {**BASE, "IOTHUB_STORAGE_AUTH": "identityBased", "SAS_LIFETIME_HOURS": "48", "BACKUP_INCLUDE_KEYS": "true",
         "BACKUP_RETENTION_DAYS": "7", "SUBMIT_GRACE_SECONDS": "5", "BACKUP_INCLUDE_CONFIGURATIONS": "true"}
    )  # fmt: skip
    assert s.storage_auth is StorageAuth.IDENTITY_BASED and s.sas_lifetime == timedelta(hours=48)
    assert s.backup_include_configurations
    assert s.backup_include_keys and s.backup_retention_days == 7 and s.submit_grace == timedelta(seconds=5)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"IOTHUB_HUBS": ""}, "IOTHUB_HUBS is empty"),
        ({"IOTHUB_HUBS": "Prod Hub"}, "is not a hub name"),
        ({"IOTHUB_HUBS": "other"}, "IOTHUB_OTHER_CONNECTION_STRING"),
        ({"IOTHUB_STORAGE_AUTH": "sas"}, "use keyBased or identityBased"),
        ({"SAS_LIFETIME_HOURS": "long"}, "SAS_LIFETIME_HOURS is 'long'"),
        ({"SAS_LIFETIME_HOURS": "0"}, "from 1 to 168"),
        ({"BACKUP_INCLUDE_KEYS": "maybe"}, "use true or false"),
        ({"BACKUP_INCLUDE_CONFIGURATIONS": "sometimes"}, "BACKUP_INCLUDE_CONFIGURATIONS is 'sometimes'"),
        ({"DEVICE_STORAGE": ""}, "DEVICE_STORAGE__blobServiceUri"),
    ],
)
def test_bad_settings_are_named_with_the_fix(change: dict[str, str], named: str) -> None:
    with pytest.raises(ValueError, match=named) as err:
        Settings.from_env({**BASE, **change})
    assert isinstance(err.value, ConfigError) or "storage setting" in str(err.value)


TOKEN = "SharedAccessSignature sr=app&sig=abc%3D&skn=operator&se=4102444800000"


def test_iot_central_is_optional_and_its_token_stays_out_of_reprs() -> None:
    assert Settings.from_env(BASE).central is None
    s = Settings.from_env(
        {**BASE, "IOTCENTRAL_APP_URL": "https://fleet.azureiotcentral.com/", "IOTCENTRAL_API_TOKEN": TOKEN}
    )
    assert s.central is not None and s.central.app_url == "https://fleet.azureiotcentral.com"
    assert s.central.api_token == TOKEN and s.central.backup is True and "abc%3D" not in repr(s)
    identity = Settings.from_env(
        {**BASE, "IOTCENTRAL_APP_URL": "https://a.azureiotcentral.com", "IOTCENTRAL_BACKUP": "no"}
    )
    assert identity.central is not None and identity.central.api_token is None and identity.central.backup is False


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"IOTCENTRAL_APP_URL": "fleet.azureiotcentral.com"}, "IOTCENTRAL_APP_URL is 'fleet.azureiotcentral.com'"),
        ({"IOTCENTRAL_APP_URL": "https://a.azureiotcentral.com/api/x"}, "give the app's URL"),
        ({"IOTCENTRAL_APP_URL": "https://a.b", "IOTCENTRAL_API_TOKEN": "Bearer x"}, "IOTCENTRAL_API_TOKEN: an IoT"),
        (
            {
                "IOTCENTRAL_APP_URL": "https://a.b",
                "IOTCENTRAL_API_TOKEN": TOKEN.replace("4102444800000", "1600000000000"),
            },
            "IOTCENTRAL_API_TOKEN has expired",
        ),
        ({"IOTHUB_HUBS": "central", "IOTHUB_CENTRAL_HOSTNAME": "c.azure-devices.net"}, "'central' is reserved"),
    ],
)
def test_iot_central_settings_errors_say_what_to_change(change: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**BASE, **change})
    assert message in str(caught.value)
    assert "sig=" not in str(caught.value)


def test_import_snapshots_is_read_and_a_wrong_value_names_the_choices() -> None:
    assert Settings.from_env({**BASE, "IMPORT_SNAPSHOTS": "off"}).import_snapshots is Snapshots.OFF
    with pytest.raises(ConfigError, match="use changes \\(the default\\), explicit, always or off"):
        Settings.from_env({**BASE, "IMPORT_SNAPSHOTS": "sometimes"})
