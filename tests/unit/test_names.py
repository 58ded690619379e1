"""Names that would reach another blob (dot segments), or that look like other names (empty folders, backslashes,
control characters), are refused at every entry point: the HTTP schemas answer 400 naming the field before any
service is built, backups refuse them, and the archive never takes such a name over."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared import api, names
from shared import api_schemas as schemas
from shared.api_schemas import Request
from shared.backups import NotABackup, locate_backup
from shared.storage import Storage, fitted_name


def no_services() -> Any:
    raise AssertionError("a refused request must not reach the services")


def answer(route: str, doc: dict[str, Any]) -> api.Reply:
    endpoint = {"imports": api.start_import, "restores": api.start_restore, "plan": api.plan_import}
    return endpoint[route](no_services, Request(body=json.dumps(doc).encode(), content_type="application/json"))


BAD_BLOBS = [
    ("uploads/../backups/devhub/20261201T020000Z/devices.txt", "'..' folder"),
    ("uploads/./../reports/devhub/x/summary.json", "'.' folder"),
    ("uploads/devhub/./march.jsonl", "'.' folder"),
    ("uploads/devhub/..", "'..' folder"),
    ("uploads/devhub\\..\\march.jsonl", "backslash"),
    ("uploads/march\x7f.jsonl", "control character"),
    ("uploads/march\u0085x.jsonl", None),  # NEL is not a C0 control: allowed (Azure stores it)
    ("uploads/devhub//march.jsonl", "empty folder"),
    ("uploads//march.jsonl", "empty folder"),
]


@pytest.mark.parametrize(("blob", "says"), BAD_BLOBS)
@pytest.mark.parametrize("route", ["imports", "plan"])
def test_an_import_of_a_path_that_leaves_its_folder_is_400_naming_blob(route: str, blob: str, says: str | None) -> None:
    if says is None:
        assert names.problem(blob) is None
        return
    reply = answer(route, {"blob": blob})
    error = reply.body["error"]
    assert (reply.status, error["code"], error["field"]) == (400, "InvalidField", "blob"), error
    assert error["message"].startswith('"blob" in the body is refused') and says in error["message"]


def test_control_characters_below_space_are_refused_too() -> None:
    reply = answer("imports", {"blob": "uploads/a\x01b.jsonl"})
    assert (reply.status, reply.body["error"]["field"]) == (400, "blob")


def test_a_jobs_listing_by_a_traversing_source_is_400() -> None:
    reply = api.list_jobs(no_services, Request(query={"source": "uploads/../backups/x"}))
    assert (reply.status, reply.body["error"]["field"]) == (400, "source")


@pytest.mark.parametrize("backup", ["..", "devhub/..", ".", "devhub/./20261201T020000Z", "devhub//x", "a\\b"])
def test_a_restore_of_a_folder_outside_the_hubs_is_400_naming_backup(backup: str) -> None:
    reply = answer("restores", {"backup": backup})
    assert (reply.status, reply.body["error"]["code"], reply.body["error"]["field"]) == (400, "InvalidField", "backup")


def test_a_restore_still_takes_a_stamp_a_hub_stamp_a_trailing_slash_and_latest() -> None:
    for backup in ("20261201T020000Z", "devhub/20261201T020000Z", "devhub/20261201T020000Z/", "latest"):
        assert schemas.check(schemas.RESTORES, Request(body=json.dumps({"backup": backup}).encode())).body


@pytest.mark.parametrize("backup", ["..", "devhub/..", "backups/devhub/..", "devhub/./x"])
def test_locate_backup_refuses_dot_folders_before_touching_storage(backup: str) -> None:
    with pytest.raises(NotABackup, match="not a backup folder"):
        locate_backup(Storage.__new__(Storage), "backups", "devhub", backup)  # no service: none is called


def test_storage_never_addresses_a_name_with_a_dot_segment() -> None:
    store = Storage.__new__(Storage)  # no service: the refusal comes before any request
    for name in ("../backups/devhub/S/devices.txt", "./x", "a/.."):
        with pytest.raises(names.UnsafeName):
            store._blob("uploads", name)


def test_the_archive_name_of_a_refused_upload_is_itself_safe() -> None:
    for name in ("a\\b.jsonl", "x//y.jsonl", "t\x07.jsonl", "dir/"):
        archived = fitted_name("failed/8234567890123-0a1b2c", name)
        assert names.problem(archived) is None, archived
        assert archived != fitted_name("failed/8234567890123-0a1b2c", name + "x")
    assert fitted_name("failed/j", "devhub/march.jsonl") == "failed/j/devhub/march.jsonl"


def test_the_blob_trigger_leaves_a_dot_dot_upload_in_place_without_a_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from azure.storage.blob import BlobClient

    from . import registered

    trigger = registered.functions()["import_on_upload"].get_user_function()
    # A closed port: any request the trigger made (its first is get_blob_properties) would fail the test.
    client = BlobClient("http://127.0.0.1:9/devstoreaccount1", "uploads", "x/../../backups/devhub/S/devices.txt")
    with caplog.at_level("WARNING", logger="function_app"):
        trigger(client)
    assert "left in place" in caplog.text and "x/../../backups" in caplog.text


@pytest.mark.parametrize(
    "path", ["jobs/devhub/../../imports", "jobs/devhub/./x", "jobs//x", "bulk/a\\b/run", "jobs/devhub/x\x00/cancel"]
)
def test_the_command_line_never_sends_a_path_that_would_reach_another_route(path: str) -> None:
    from iotjobs.client import Api
    from iotjobs.config import Config, ConfigError

    api = Api(Config(url="http://127.0.0.1:9", key=None, storage=None))  # a closed port: nothing may be sent
    with pytest.raises(ConfigError, match="is not a hub, job id or bulk id"):
        api.call("POST", path)
