"""Backup folders and retention (shared.backups) on Azurite: the newest complete backup is kept however old, folders
not named like ours are never touched, a folder without its manifest is never a good backup, the manifest goes
first; save_backup counts devices, hashes what it wrote and leaves a finished folder as it is."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest
from azure.storage.blob import BlobServiceClient

from emulators.azurite import Azurite
from shared.backups import DEVICES_BLOB, MANIFEST_BLOB, Manifest, apply_retention, latest_backup, save_backup
from shared.storage import BlobRef, Storage, StorageSettings

from .helpers import Storage as Containers

NOW = datetime(2026, 11, 21, 2, 0, tzinfo=UTC)


class RecordingStorage(Storage):
    """The app's Storage, recording each deletion; ``fail_after`` deletions it fails as an interrupted run would."""

    def __init__(self, service: BlobServiceClient) -> None:
        super().__init__(service)
        self.deleted: list[str] = []
        self.fail_after: int | None = None

    def delete_blob(self, ref: BlobRef) -> None:
        if self.fail_after is not None and len(self.deleted) >= self.fail_after:
            raise ConnectionError("the process died here")
        super().delete_blob(ref)
        self.deleted.append(ref.name)


@pytest.fixture
def live(azurite: Azurite, storage: Containers) -> tuple[RecordingStorage, str]:
    """The app's Storage on Azurite and a fresh backups container."""
    live = RecordingStorage(StorageSettings(connection_string=azurite.connection_string).blob_service())
    return live, storage.container("backups")


def folder(live: Storage, container: str, path: str, *, complete: bool = True) -> None:
    """A backup folder as save_backup leaves it (devices, then the manifest), or without its manifest."""
    live.upload_bytes(container, f"{path}/{DEVICES_BLOB}", b'{"id": "d1"}\n')
    if complete:
        live.upload_bytes(container, f"{path}/{MANIFEST_BLOB}", b'{"devices": 1}')


def etags(live: Storage, container: str, prefix: str) -> dict[str, str]:
    return {
        n: (info.etag if (info := live.properties(BlobRef(container, n))) else "")
        for n in live.list_names(container, prefix)
    }


def folders(live: Storage, container: str, prefix: str = "") -> set[str]:
    return {n.rsplit("/", 1)[0] for n in live.list_names(container, prefix)}


def test_the_newest_complete_backup_is_kept_however_old(live: tuple[RecordingStorage, str]) -> None:
    s, c = live
    folder(s, c, "devhub/20260101T020000Z")
    folder(s, c, "devhub/20260201T020000Z")  # the newest complete one: ten months old
    folder(s, c, "devhub/20260301T020000Z", complete=False)  # newer, but its export never finished
    removed = apply_retention(s, c, "devhub", days=7, now=NOW)
    assert removed == ["devhub/20260101T020000Z", "devhub/20260301T020000Z"]
    assert folders(s, c) == {"devhub/20260201T020000Z"}
    assert latest_backup(s, c, "devhub") == "devhub/20260201T020000Z"


def test_recent_backups_stay_and_an_incomplete_one_is_never_the_good_one(live: tuple[RecordingStorage, str]) -> None:
    s, c = live
    folder(s, c, "devhub/20261001T020000Z")
    folder(s, c, "devhub/20261118T020000Z")  # within 7 days: kept
    folder(s, c, "devhub/20261120T020000Z", complete=False)  # within 7 days: kept, but not a good backup
    assert latest_backup(s, c, "devhub") == "devhub/20261118T020000Z"
    assert apply_retention(s, c, "devhub", days=7, now=NOW) == ["devhub/20261001T020000Z"]
    assert folders(s, c) == {"devhub/20261118T020000Z", "devhub/20261120T020000Z"}
    # Only incomplete folders, all old: none is kept for being "the newest", all go.
    s.delete_blob(BlobRef(c, f"devhub/20261118T020000Z/{MANIFEST_BLOB}"))
    assert latest_backup(s, c, "devhub") is None
    later = NOW + timedelta(days=30)
    assert apply_retention(s, c, "devhub", days=7, now=later) == ["devhub/20261118T020000Z", "devhub/20261120T020000Z"]
    assert folders(s, c) == set()


def test_folders_not_named_like_ours_and_other_hubs_are_never_deleted(live: tuple[RecordingStorage, str]) -> None:
    s, c = live
    ours = {"devhub/20250101T020000Z", "devhub/20250102T020000Z"}
    theirs = {
        "devhub/manual-copy",  # someone's own folder
        "devhub/2025-01-01",  # a date, but not our stamp
        "devhub/20250101T020000",  # our stamp without its Z
        "devhub/old/20250101T020000Z",  # deeper than a backup folder
        "devhubs/20250101T020000Z",  # another hub whose name starts like ours
        "otherhub/20250101T020000Z",
    }
    for path in ours:
        folder(s, c, path)
    for path in theirs:
        folder(s, c, path, complete=path.startswith(("devhubs/", "otherhub/")))
    s.upload_bytes(c, "devhub/notes.txt", b"a blob beside the folders")
    removed = apply_retention(s, c, "devhub", days=7, now=NOW)
    assert removed == ["devhub/20250101T020000Z"]  # the other one is the newest complete: kept
    assert folders(s, c) == theirs | {"devhub/20250102T020000Z", "devhub"}
    assert all(name.startswith("devhub/20250101T020000Z/") for name in s.deleted)


# A copy someone made of a backup, manifest included, under a name of their own: "manual-copy" sorts after any
# stamp, so counting every folder with a manifest took it for the newest backup (retention then deleted the real
# newest one, and restore "latest" named the copy).
def test_a_foreign_folder_with_a_manifest_is_not_the_newest_backup(live: tuple[RecordingStorage, str]) -> None:
    s, c = live
    folder(s, c, "devhub/20250101T020000Z")
    folder(s, c, "devhub/manual-copy")
    assert latest_backup(s, c, "devhub") == "devhub/20250101T020000Z"
    assert apply_retention(s, c, "devhub", days=7, now=NOW) == []


def test_the_manifest_goes_first_so_an_interrupted_removal_reads_as_incomplete(
    live: tuple[RecordingStorage, str],
) -> None:
    s, c = live
    folder(s, c, "devhub/20250101T020000Z")
    folder(s, c, "devhub/20250102T020000Z")
    s.upload_bytes(c, f"devhub/20250101T020000Z/{DEVICES_BLOB}.log", b"an extra file in the folder")
    assert apply_retention(s, c, "devhub", days=7, now=NOW) == ["devhub/20250101T020000Z"]
    assert s.deleted[0] == f"devhub/20250101T020000Z/{MANIFEST_BLOB}" and len(s.deleted) == 3
    # Interrupted right after its first deletion: what is left of the folder is not a good backup.
    folder(s, c, "prodhub/20251102T020000Z")
    folder(s, c, "prodhub/20251101T020000Z")
    folder(s, c, "prodhub/20261121T010000Z", complete=False)  # today's export, still running
    s.deleted, s.fail_after = [], 1
    with pytest.raises(ConnectionError):
        apply_retention(s, c, "prodhub", days=7, now=NOW)
    assert s.deleted == [f"prodhub/20251101T020000Z/{MANIFEST_BLOB}"]
    assert latest_backup(s, c, "prodhub") == "prodhub/20251102T020000Z"
    s.fail_after = None
    assert apply_retention(s, c, "prodhub", days=7, now=NOW) == ["prodhub/20251101T020000Z"]
    assert folders(s, c, "prodhub/") == {"prodhub/20251102T020000Z", "prodhub/20261121T010000Z"}


@pytest.mark.parametrize(
    ("data", "devices"),
    [
        (b'{"id": "a"}\n{"id": "b"}\n{"id": "c"}\n', 3),
        (b'{"id": "a"}\n{"id": "b"}\n{"id": "c"}', 3),  # the last line without its newline is still a device
        (b'{"id": "a"}', 1),
        (b"", 0),
    ],
    ids=["newline-at-end", "no-newline-at-end", "one-line-no-newline", "empty"],
)
def test_save_backup_counts_devices_and_hashes_what_it_wrote(
    live: tuple[RecordingStorage, str], data: bytes, devices: int
) -> None:
    s, c = live
    s.upload_bytes(c, "hubjob/devices.txt", data)
    manifest = save_backup(
        s,
        source=BlobRef(c, "hubjob/devices.txt"),
        container=c,
        folder="devhub/20261121T020000Z",
        hub="devhub",
        job_id="job-1",
        hub_job_id="hub-job-1",
        includes_keys=False,
        now=NOW,
    )
    assert (manifest.devices, manifest.bytes) == (devices, len(data))
    assert manifest.sha256 == hashlib.sha256(data).hexdigest()
    written = b"".join(s.open_read(BlobRef(c, f"devhub/20261121T020000Z/{DEVICES_BLOB}")))
    assert written == data
    doc = json.loads(b"".join(s.open_read(BlobRef(c, f"devhub/20261121T020000Z/{MANIFEST_BLOB}"))))
    assert doc == manifest.document()
    assert (doc["devices"], doc["hubJobId"], doc["includesKeys"]) == (devices, "hub-job-1", False)


def test_save_backup_counts_across_read_chunks(live: tuple[RecordingStorage, str]) -> None:
    s, c = live
    # Over one 4 MiB read: lines cross chunk boundaries, and the file ends without a newline.
    line = b'{"id": "device-%07d", "status": "enabled", "tags": {"pad": "' + b"x" * 100 + b'"}}'
    data = b"\n".join(line % i for i in range(60_000))
    assert len(data) > 2 * 4 * 1024 * 1024
    s.upload_bytes(c, "big/devices.txt", data)
    manifest = save_backup(
        s, source=BlobRef(c, "big/devices.txt"), container=c, folder="devhub/20261121T020000Z", hub="devhub",
        job_id="job-1", hub_job_id=None, includes_keys=True, now=NOW,
    )  # fmt: skip
    assert (manifest.devices, manifest.sha256) == (60_000, hashlib.sha256(data).hexdigest())


def test_save_backup_leaves_a_folder_that_has_its_manifest_as_it_is(live: tuple[RecordingStorage, str]) -> None:
    s, c = live
    s.upload_bytes(c, "first/devices.txt", b'{"id": "a"}\n{"id": "b"}\n')
    s.upload_bytes(c, "second/devices.txt", b'{"id": "z"}\n')
    where = "devhub/20261121T020000Z"

    def save(source: str, job: str) -> Manifest:
        return save_backup(
            s, source=BlobRef(c, source), container=c, folder=where, hub="devhub", job_id=job, hub_job_id=None,
            includes_keys=False, now=NOW,
        )  # fmt: skip

    first = save("first/devices.txt", "job-1")
    before = etags(s, c, where)
    again = save("second/devices.txt", "job-2")  # a repeated timer run, with another hub export
    assert again.devices == first.devices == 2 and again.sha256 == first.sha256
    assert etags(s, c, where) == before, "neither the devices nor the manifest were written again"
