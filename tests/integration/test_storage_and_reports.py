"""shared.storage on Azurite (staging, SAS, archiving) and shared.reports."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import uuid

import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobClient, ContainerClient

from emulators.azurite import Azurite
from shared.reports import error_summary, harvest_import_errors, summary_document
from shared.storage import (
    ArchiveKind,
    BlobRef,
    Removal,
    Storage,
    StorageError,
    StorageSettings,
    UploadChanged,
    fitted_name,
    within_limits,
)

from .conftest import IdentityAzurite
from .helpers import Storage as Containers


@pytest.fixture(params=["shared-key", "identity"])
def store(request: pytest.FixtureRequest, azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> Storage:
    """The app's storage as it builds it: from a connection string (shared key), or identity-based as production
    runs it (a token from the managed identity endpoint; no key anywhere, SAS signed with a user delegation key)."""
    if request.param == "identity":
        identity: IdentityAzurite = request.getfixturevalue("identity_azurite")
        settings = identity.settings(monkeypatch)
        assert settings.connection_string is None
        return Storage.from_settings(settings)
    return Storage.from_settings(StorageSettings.from_env({"AzureWebJobsStorage": azurite.connection_string}))


@pytest.fixture
def storage(store: Storage) -> Containers:
    """Containers with a fresh prefix, on the account ``store`` reaches."""
    return Containers(store.service, prefix=f"t{uuid.uuid4().hex[:10]}")


def test_settings_from_both_forms() -> None:
    conn = StorageSettings.from_env({"Store": "UseDevelopmentStorage=true"}, "Store")
    assert conn.connection_string and "UseDevelopment" not in repr(conn)
    ident = StorageSettings.from_env(
        {
            "Store__blobServiceUri": "https://acct.blob.core.windows.net",
            "Store__tableServiceUri": "https://acct.table.core.windows.net",
            "Store__clientId": "c1",
        },
        "Store",
    )
    assert (ident.blob_uri, ident.table_uri, ident.client_id) == (
        "https://acct.blob.core.windows.net",
        "https://acct.table.core.windows.net",
        "c1",
    )
    named = StorageSettings.from_env({"Store__accountName": "acct"}, "Store")
    assert named.queue_uri == "https://acct.queue.core.windows.net"
    with pytest.raises(ValueError, match="Store__blobServiceUri"):
        StorageSettings.from_env({}, "Store")


def test_staged_blob_is_invisible_until_committed(store: Storage, storage: Containers) -> None:
    container = storage.container("stage")
    staged = store.stage(container, "devices.txt")
    payload = b"x" * (9 * 1024 * 1024 + 5)  # three blocks
    for i in range(0, len(payload), 1_000_000):
        staged.write(payload[i : i + 1_000_000])
    assert store.properties(BlobRef(container, "devices.txt")) is None
    staged.commit()
    assert staged.sha256 == hashlib.sha256(payload).hexdigest()
    assert b"".join(store.open_read(BlobRef(container, "devices.txt"))) == payload
    discarded = store.stage(container, "never.txt")
    discarded.write(b"abc" * 2_000_000)
    assert store.properties(BlobRef(container, "never.txt")) is None


def test_container_sas_is_least_privilege(store: Storage, storage: Containers) -> None:
    container = storage.container("sas")
    store.upload_bytes(container, "devices.txt", b"{}\n")
    read_only = ContainerClient.from_container_url(store.sas.container_sas_url(container, "r"))
    assert read_only.get_blob_client("devices.txt").download_blob().readall() == b"{}\n"
    with pytest.raises(HttpResponseError) as denied:
        read_only.get_blob_client("other.txt").upload_blob(b"x")
    assert denied.value.status_code == 403
    writer = ContainerClient.from_container_url(store.sas.container_sas_url(container, "rwd"))
    writer.get_blob_client("importErrors.log").upload_blob(b"", overwrite=True)
    link = store.sas.read_link(container, "devices.txt")
    assert BlobClient.from_blob_url(link).download_blob().readall() == b"{}\n"
    assert "sig=" in link and "sp=r" in link


def test_archive_moves_an_upload_and_never_loses_a_newer_version(store: Storage, storage: Containers) -> None:
    uploads, archive = storage.container("uploads"), f"{storage.prefix}-archive"
    etag = store.upload_bytes(uploads, "a.txt", b"v1")
    moved = store.archive(
        BlobRef(uploads, "a.txt", etag), ArchiveKind.PROCESSED, archive_container=archive, job_id="j1"
    )
    assert moved is not None and moved.path == f"{archive}/processed/j1/a.txt"
    assert b"".join(store.open_read(moved)) == b"v1"
    assert store.delete_version(BlobRef(uploads, "a.txt", etag)) is Removal.DELETED
    assert store.properties(BlobRef(uploads, "a.txt")) is None
    # a repeated call after a crash completes without error
    store.archive(BlobRef(uploads, "a.txt", etag), ArchiveKind.PROCESSED, archive_container=archive, job_id="j1")

    # Pinned (as every job pins its upload): replaced after our read, the archive still holds what we read.
    old = store.upload_bytes(uploads, "b.txt", b"old")
    pinned = store.pin(BlobRef(uploads, "b.txt", old))
    store.upload_bytes(uploads, "b.txt", b"new")
    moved = store.archive(pinned, ArchiveKind.FAILED, archive_container=archive, job_id="j2")
    assert moved is not None and b"".join(store.open_read(moved)) == b"old"
    assert store.delete_version(BlobRef(uploads, "b.txt", old)) is Removal.REPLACED
    assert b"".join(store.open_read(BlobRef(uploads, "b.txt"))) == b"new"
    with pytest.raises(StorageError):
        b"".join(store.open_read(BlobRef(uploads, "b.txt", old)))  # that version is gone from uploads
    # our snapshot went with the archive; the new version has none left over
    listed = store.service.get_container_client(uploads).list_blobs(name_starts_with="b.txt", include=["snapshots"])
    assert [(b.name, b.snapshot) for b in listed] == [("b.txt", None)]

    # Not pinned and replaced: that version exists nowhere, and the new one is never taken for it.
    old = store.upload_bytes(uploads, "c.txt", b"old")
    store.upload_bytes(uploads, "c.txt", b"new")
    assert (
        store.archive(BlobRef(uploads, "c.txt", old), ArchiveKind.FAILED, archive_container=archive, job_id="j3")
        is None
    )
    assert b"".join(store.open_read(BlobRef(uploads, "c.txt"))) == b"new"
    assert store.properties(BlobRef(archive, "failed/j3/c.txt")) is None


def test_pin_refuses_a_version_that_is_gone(store: Storage, storage: Containers) -> None:
    uploads = storage.container("uploads")
    old = store.upload_bytes(uploads, "p.txt", b"v1")
    store.upload_bytes(uploads, "p.txt", b"v2")
    with pytest.raises(UploadChanged):
        store.pin(BlobRef(uploads, "p.txt", old))


def test_archive_names_stay_within_azure_limits(store: Storage, storage: Containers) -> None:
    uploads, archive = storage.container("uploads"), f"{storage.prefix}-archive"
    long_name = "hub/" + "x" * 990 + ".jsonl"  # 1,000 characters: allowed for an upload
    deep_name = "/".join(["d"] * 253) + "/f.jsonl"  # 254 segments: the most Azure allows
    for i, name in enumerate((long_name, deep_name)):
        assert within_limits(name)
        etag = store.upload_bytes(uploads, name, b"data")
        moved = store.archive(
            BlobRef(uploads, name, etag), ArchiveKind.PROCESSED, archive_container=archive, job_id=f"0000000000000-j{i}"
        )
        assert moved is not None and within_limits(moved.name), (len(moved.name), moved.name.count("/"))
        assert moved.name.startswith(f"processed/0000000000000-j{i}/") and moved.name.endswith("f.jsonl"[-6:])
        assert b"".join(store.open_read(moved)) == b"data"
    short = fitted_name("processed/j", "a/b.jsonl")
    assert short == "processed/j/a/b.jsonl"  # names that fit keep their path
    assert fitted_name("p/j", long_name) != fitted_name("p/j", long_name.replace("x", "y", 1))  # distinct per name


class _Sink:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, b: bytes) -> None:
        self.data += b


def test_harvest_import_errors() -> None:
    log = (
        b'{"deviceId":"a","errorCode":404001,"errorStatus":"Device a not found."}\n'
        b'{"errorCode":400012,"errorStatus":"Invalid device format in line: {...}"}\n'
        b"garbage\n"
        b'{"deviceId":"b","moduleId":"m","errorCode":409001,"errorStatus":"exists, \\"quoted\\""}\n'
        b'{"deviceId":"c","errorCode":404001,"errorStatus":"Device c not found."}'
    )
    jsonl, csv_out = _Sink(), _Sink()
    summary = harvest_import_errors(iter([log[:50], log[50:]]), jsonl, csv_out)
    assert summary.failed == 4 and summary.unreadable_lines == 1
    assert summary.by_code == {"DeviceNotFound": 2, "DeserializationError": 1, "DeviceAlreadyExists": 1}
    rows = [json.loads(x) for x in jsonl.data.decode().splitlines()]
    assert rows[2] == {
        "deviceId": "b",
        "moduleId": "m",
        "errorCode": 409001,
        "errorName": "DeviceAlreadyExists",
        "message": 'exists, "quoted"',
    }
    table = list(csv.DictReader(io.StringIO(csv_out.data.decode())))
    assert [r["errorName"] for r in table] == [
        "DeviceNotFound",
        "DeserializationError",
        "DeviceAlreadyExists",
        "DeviceNotFound",
    ]
    assert table[1]["deviceId"] == ""
    doc = summary_document({"jobId": "j"}, error_summary(summary))
    assert "createOrUpdate" in doc["advice"]["DeviceNotFound"]
