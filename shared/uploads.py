"""Moving an upload out of ``uploads/`` once its job has ended, without ever losing a version another job needs.

Each job pins the version it reads with a snapshot. When it ends, its snapshot is copied to the archive and
dropped, then the upload is deleted if it is still that version and no other job's snapshot hangs on it. Two
versions of one name can be in flight at once (an upload overwritten while its first job waits): whichever job ends
last removes the upload; snapshots that no job refers to (a crash between pinning and recording) are removed with it.
"""

from __future__ import annotations

import logging

from .ledger import Ledger, idempotency_key
from .storage import ArchiveKind, BlobRef, Removal, Storage

logger = logging.getLogger(__name__)


def move_to_archive(
    storage: Storage, ledger: Ledger, ref: BlobRef, kind: ArchiveKind, *, archive_container: str, job_id: str
) -> str | None:
    """Archive the version ``ref`` names (from its snapshot) and remove the upload when nothing else needs it.
    Idempotent. Returns the archive path, or None when an unpinned version was gone before it could be copied."""
    target = storage.archive(ref, kind, archive_container=archive_container, job_id=job_id)
    _remove(storage, ledger, BlobRef(ref.container, ref.name, ref.etag), depth=0)
    return target.path if target else None


def _remove(storage: Storage, ledger: Ledger, ref: BlobRef, *, depth: int) -> None:
    outcome = storage.delete_version(ref)
    if outcome is Removal.SNAPSHOTS_LEFT:
        if any(ledger.snapshot_in_use(ref.path, snap) for snap in storage.snapshots(ref.container, ref.name)):
            logger.info("upload %s stays until the other job reading it has ended", ref.path)
            return
        storage.delete_version(ref, with_snapshots=True)  # only orphans were left
    elif outcome is Removal.REPLACED and depth == 0:
        # A newer version is there. If its job has already ended, its own removal was held up by our snapshot
        # (now gone): finish it.
        current = storage.properties(BlobRef(ref.container, ref.name))
        if current is None:
            return
        newer = ledger.find_key_anywhere(idempotency_key(ref.container, ref.name, current.etag))
        if newer is not None and newer.state.is_terminal and newer.archived:
            _remove(storage, ledger, BlobRef(ref.container, ref.name, current.etag), depth=1)
