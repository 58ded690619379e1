"""Identity-based storage, as production runs it (a managed identity's token, no account key), against Azurite with
``--oauth basic`` over HTTPS: a path with ``..`` never reaches another container, and the job ledger works."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from azure.data.tables import TableServiceClient

from shared.ledger import Job as LedgerJob
from shared.ledger import JobKind, Ledger
from shared.names import UnsafeName
from shared.storage import ArchiveKind, BlobRef, Storage

from .conftest import IdentityAzurite

BACKUP = "devhub/20261201T020000Z/devices.txt"
TRAVERSAL = f"../backups/{BACKUP}"


@pytest.fixture
def store(identity_azurite: IdentityAzurite, monkeypatch: pytest.MonkeyPatch) -> Storage:
    store = Storage.from_settings(identity_azurite.settings(monkeypatch))
    for container in ("uploads", "backups", "archive"):
        store.ensure_container(container)
    return store


def test_a_dot_dot_upload_name_never_reads_archives_or_deletes_a_backup(
    store: Storage, identity_azurite: IdentityAzurite
) -> None:
    etag = store.upload_bytes("backups", BACKUP, b'{"id":"kept"}\n')
    # Why the check matters: with a token, nothing signs the path, and the HTTP layer resolves the dot segments, so
    # the plain SDK call for "uploads/../backups/..." answers with the backup itself.
    raw = store.service.get_blob_client("uploads", TRAVERSAL).get_blob_properties()
    assert raw.etag == etag

    ref = BlobRef("uploads", TRAVERSAL, etag)
    with pytest.raises(UnsafeName, match=r"'\.\.' folder"):
        store.properties(ref)
    with pytest.raises(UnsafeName):
        store.pin(ref)
    with pytest.raises(UnsafeName):
        store.archive(ref, ArchiveKind.PROCESSED, archive_container="archive", job_id="8234567890123-0a1b2c")
    with pytest.raises(UnsafeName):
        store.delete_version(ref)
    with pytest.raises(UnsafeName):
        b"".join(store.open_read(BlobRef("uploads", "./../backups/" + BACKUP)))

    kept = store.properties(BlobRef("backups", BACKUP))
    assert kept is not None and kept.etag == etag
    assert b"".join(store.open_read(BlobRef("backups", BACKUP))) == b'{"id":"kept"}\n'
    assert store.list_names("archive", "") == []


def test_the_ledger_and_read_links_work_on_identity_based_storage(
    store: Storage, identity_azurite: IdentityAzurite, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = identity_azurite.settings(monkeypatch)
    assert settings.table_uri is not None
    table = TableServiceClient(settings.table_uri, credential=settings.credential()).create_table_if_not_exists(
        "identityjobs"
    )
    ledger = Ledger(table)
    job, created = ledger.create(LedgerJob.new("devhub", JobKind.EXPORT, datetime.now(UTC)))
    assert created and ledger.get("devhub", job.job_id).job_id == job.job_id
    store.upload_bytes("backups", "devhub/x/manifest.json", b"{}")
    link = store.sas.read_link("backups", "devhub/x/manifest.json")
    assert "skoid=" in link  # a user delegation SAS: signed by the identity, not by an account key
    assert identity_azurite.endpoint.requests > 0  # the token came from the managed identity endpoint
