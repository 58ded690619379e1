"""`iotjobs template csv` and `iotjobs export --csv` against Azurite: a backup folder read from storage and written
as a sheet (keys only when asked), which the app's reader takes back as the same devices."""

from __future__ import annotations

import argparse
import base64
import io
import json
import uuid
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient

from emulators.azurite import Azurite
from iotjobs import cli
from iotjobs.client import Api
from iotjobs.config import Config, ConfigError
from shared.devices import validate_csv_stream

KEY = base64.b64encode(b"k" * 32).decode()
LINES = [
    {
        "id": "d1",
        "eTag": "AAAA",
        "status": "enabled",
        "authentication": {"type": "sas", "symmetricKey": {"primaryKey": KEY, "secondaryKey": KEY}},
        "capabilities": {"iotEdge": False},
        "tags": {"site": "a", "floor": 2},
        "properties": {"desired": {"interval": 30, "$metadata": {}, "$version": 1}},
    },
    {"id": "d2", "status": "disabled", "authentication": {"type": "sas"}, "tags": {"site": "b"}},
]


def backup(azurite: Azurite, hub: str, stamp: str, *, keys: bool, manifest: bool = True) -> None:
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    container = service.get_container_client("backups")
    if not container.exists():
        container.create_container()
    body = "".join(json.dumps(line) + "\n" for line in LINES).encode()
    container.upload_blob(f"{hub}/{stamp}/devices.txt", body, overwrite=True)
    if manifest:
        doc = {"hub": hub, "devices": len(LINES), "includesKeys": keys}
        container.upload_blob(f"{hub}/{stamp}/manifest.json", json.dumps(doc).encode(), overwrite=True)


def export(azurite: Azurite, target: Path, **kw: object) -> int:
    args = argparse.Namespace(csv=target, hub=None, stamp="latest", keys=False, json=False, **{"include_keys": False})
    for name, value in kw.items():
        setattr(args, name, value)
    api = Api(Config(url="http://127.0.0.1:1", storage=azurite.connection_string))  # the app is not asked
    return cli.cmd_export(api, args)


def test_export_csv_writes_the_latest_complete_backup_without_keys_unless_asked(
    azurite: Azurite, tmp_path: Path
) -> None:
    hub = f"hub{uuid.uuid4().hex[:8]}"
    backup(azurite, hub, "20261201T020000Z", keys=True)
    backup(azurite, hub, "20261202T020000Z", keys=True)
    backup(azurite, hub, "20261203T020000Z", keys=True, manifest=False)  # incomplete: never picked
    target = tmp_path / "out.csv"
    assert export(azurite, target, hub=hub) == cli.OK
    data = target.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf") and KEY.encode() not in data
    header = data.decode("utf-8-sig").splitlines()[0].split(",")
    assert "primaryKey" not in header and {"tags.site", "tags.floor", "desired.interval"} <= set(header)
    out: list[bytes] = []
    report = validate_csv_stream(io.BytesIO(data), sink=out.append)
    assert report.valid and report.lines == 2, report.errors
    back = [json.loads(line) for line in b"".join(out).splitlines() if line.strip()]
    assert back[0]["tags"] == {"site": "a", "floor": 2} and back[0]["properties"] == {"desired": {"interval": 30}}
    assert back[1] == {
        "id": "d2",
        "status": "disabled",
        "authentication": {"type": "sas"},
        "tags": {"site": "b"},
        "capabilities": {"iotEdge": False},  # what the hub has for a device without capabilities
    }

    assert export(azurite, target, hub=hub, keys=True, stamp="20261201T020000Z") == cli.OK
    assert KEY.encode() in target.read_bytes()


def test_export_csv_on_storage_that_never_held_a_backup_says_so(own_azurite: Azurite, tmp_path: Path) -> None:
    """No backups container at all (an account where no backup was ever taken): the same clear error, not the
    storage SDK's 404 traceback."""
    with pytest.raises(ConfigError, match="has no complete backup"):
        export(own_azurite, tmp_path / "x.csv", hub="devhub")
    with pytest.raises(ConfigError, match="no backups found"):
        export(own_azurite, tmp_path / "x.csv")


def test_export_csv_says_what_is_missing(azurite: Azurite, tmp_path: Path) -> None:
    hub = f"hub{uuid.uuid4().hex[:8]}"
    with pytest.raises(ConfigError, match="has no complete backup"):
        export(azurite, tmp_path / "x.csv", hub=hub)
    backup(azurite, hub, "20261201T020000Z", keys=False)
    with pytest.raises(ConfigError, match=r"no complete backup .*20261130T020000Z.*the newest are: 20261201T020000Z"):
        export(azurite, tmp_path / "x.csv", hub=hub, stamp="20261130T020000Z")
    # keys asked of a backup taken without them: a sheet without keys, not an error
    assert export(azurite, tmp_path / "x.csv", hub=hub, keys=True) == cli.OK
    assert "primaryKey" not in (tmp_path / "x.csv").read_text(encoding="utf-8-sig").splitlines()[0]


def test_template_csv_prints_a_sheet_the_app_accepts(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["template", "csv"]) == cli.OK
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].startswith("id,moduleId,importMode,status,")
    report = validate_csv_stream(io.BytesIO(printed.encode()))
    assert report.valid and report.lines == 2


def test_export_csv_options_parse() -> None:
    args = cli.parser().parse_args(["export", "--csv", "out.csv", "--hub", "h", "--stamp", "20261201T020000Z"])
    assert (args.csv, args.hub, args.stamp, args.keys, args.run) == (
        Path("out.csv"),
        "h",
        "20261201T020000Z",
        False,
        cli.cmd_export,
    )
    assert cli.parser().parse_args(["export", "--csv", "o.csv", "--keys"]).keys is True
    assert cli.parser().parse_args(["export"]).csv is None  # a backup now, as before
