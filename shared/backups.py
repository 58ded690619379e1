"""Registry backups: ``backups/<hub>/<UTC timestamp>/devices.txt`` beside a ``manifest.json`` (and, when the app
backs them up, the hub's automatic device management configurations in ``configurations.txt``), and retention.

A backup folder without a manifest is incomplete (the export failed or the copy was interrupted) and is never
counted as a good backup. Retention removes folders older than N days but always keeps the newest complete one,
so a hub that has failed to export for a month still has its last good backup.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from .names import problem as name_problem
from .storage import JSON_TYPE, NDJSON_TYPE, BlobRef, Storage, StorageError

logger = logging.getLogger(__name__)

DEVICES_BLOB = "devices.txt"
MANIFEST_BLOB = "manifest.json"
CONFIGURATIONS_BLOB = "configurations.txt"  # one configuration per line, as the hub's export job writes them
STAMP = "%Y%m%dT%H%M%SZ"


class NotABackup(ValueError):
    """The folder named for a restore is not a complete backup; the message says what to give instead."""


def backup_folder(hub: str, when: datetime) -> str:
    return f"{hub}/{when.astimezone(UTC).strftime(STAMP)}"


def locate_backup(storage: Storage, container: str, hub: str, backup: str) -> BlobRef:
    """The ``devices.txt`` (with its ETag) of a complete backup of ``hub``: ``<stamp>``, ``<hub>/<stamp>`` or
    ``latest``.

    Raises:
        NotABackup: no complete backup (manifest and devices) under that name.
    """
    name = backup.strip().strip("/").removeprefix(f"{container}/").removesuffix(f"/{DEVICES_BLOB}")
    why = name_problem(name)
    if why is not None:  # "..", "devhub/..": a folder that is not under the hub's, whatever the check below sees
        raise NotABackup(f"'{backup}' is not a backup folder ({why}): give '<stamp>', '{hub}/<stamp>' or 'latest'")
    if name == "latest":
        latest = latest_backup(storage, container, hub)
        if latest is None:
            raise NotABackup(f"hub '{hub}' has no complete backup yet: take one with POST /api/exports")
        name = latest
    elif "/" not in name:
        name = f"{hub}/{name}"
    if name.split("/", 1)[0] != hub or name.count("/") != 1:
        raise NotABackup(f"'{backup}' is not a backup of hub '{hub}': give '<stamp>' or '{hub}/<stamp>'")
    devices = storage.properties(BlobRef(container, f"{name}/{DEVICES_BLOB}"))
    if devices is None or storage.properties(BlobRef(container, f"{name}/{MANIFEST_BLOB}")) is None:
        raise NotABackup(
            f"'{name}' is not a complete backup (it needs {DEVICES_BLOB} and {MANIFEST_BLOB}): "
            f"give a folder under {container}/{hub}/, or 'latest'"
        )
    return BlobRef(container, f"{name}/{DEVICES_BLOB}", devices.etag)


@dataclass(frozen=True, slots=True)
class Manifest:
    hub: str
    job_id: str
    hub_job_id: str | None
    devices: int
    sha256: str
    bytes: int
    includes_keys: bool
    created: str
    modules: int = 0  # module identity lines (an export has one per module, after its device's line)
    configurations: int | None = None  # None: the backup holds no configurations (not asked for)
    configurations_sha256: str | None = None

    def document(self) -> dict[str, Any]:
        configurations: dict[str, Any] = {}
        if self.configurations is not None:
            configurations = {
                "configurations": self.configurations,
                "configurationsBlob": CONFIGURATIONS_BLOB,
                "configurationsSha256": self.configurations_sha256,
            }
        return {
            "hub": self.hub,
            "jobId": self.job_id,
            "hubJobId": self.hub_job_id,
            "devices": self.devices,
            "modules": self.modules,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "includesKeys": self.includes_keys,
            "created": self.created,
            "devicesBlob": DEVICES_BLOB,
            **configurations,
        }


class LineCount:
    """Counts an export's device lines and module lines as its chunks stream past (a module line has a top-level
    ``moduleId``; only lines that mention one are parsed)."""

    def __init__(self) -> None:
        self.devices = 0
        self.modules = 0

    def lines(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """Pass ``chunks`` through unchanged, counting their lines."""
        carry = b""
        for chunk in chunks:
            if not chunk:
                continue
            yield chunk
            *whole, carry = (carry + chunk).split(b"\n")
            for line in whole:
                self._count(line)
        self._count(carry)  # a last line without a newline still counts

    def _count(self, line: bytes) -> None:
        if not line.strip():
            return
        if b'"moduleId"' in line:
            try:
                if isinstance(orjson.loads(line).get("moduleId"), str):
                    self.modules += 1
                    return
            except (orjson.JSONDecodeError, AttributeError):
                pass
        self.devices += 1


def save_backup(
    storage: Storage,
    *,
    source: BlobRef,
    container: str,
    folder: str,
    hub: str,
    job_id: str,
    hub_job_id: str | None,
    includes_keys: bool,
    now: datetime,
    configurations: BlobRef | None = None,
) -> Manifest:
    """Stream the hub's export into the backup folder, counting devices and hashing (and ``configurations``, the
    export's configurations blob, beside it, counted and hashed); then write the manifest, last.

    Idempotent: a folder that already has its manifest is left as it is.
    """
    storage.ensure_container(container)
    existing = storage.properties(BlobRef(container, f"{folder}/{MANIFEST_BLOB}"))
    if existing is not None:
        doc = json.loads(b"".join(storage.open_read(BlobRef(container, f"{folder}/{MANIFEST_BLOB}"))))
        return Manifest(
            hub,
            job_id,
            hub_job_id,
            doc["devices"],
            doc["sha256"],
            doc["bytes"],
            doc["includesKeys"],
            doc["created"],
            int(doc.get("modules", 0)),
            doc.get("configurations"),
            doc.get("configurationsSha256"),
        )
    config_count: int | None = None
    config_sha: str | None = None
    if configurations is not None:
        config_count, config_sha = _copy_configurations(storage, configurations, container, folder)
    staged = storage.stage(container, f"{folder}/{DEVICES_BLOB}")
    count = LineCount()
    for chunk in count.lines(storage.open_read(source)):
        staged.write(chunk)
    staged.commit(metadata={"hub": hub, "jobid": job_id})
    manifest = Manifest(
        hub,
        job_id,
        hub_job_id,
        count.devices,
        staged.sha256,
        staged.size,
        includes_keys,
        now.isoformat(),
        count.modules,
        config_count,
        config_sha,
    )
    storage.upload_bytes(
        container,
        f"{folder}/{MANIFEST_BLOB}",
        json.dumps(manifest.document(), indent=2).encode(),
        content_type=JSON_TYPE,
    )
    return manifest


def _copy_configurations(storage: Storage, source: BlobRef, container: str, folder: str) -> tuple[int, str]:
    """Copy the export's configurations blob into the folder; (configurations, sha256). A hub holds at most 100
    configurations, so one read is small."""
    data = b"".join(storage.open_read(source))
    storage.upload_bytes(container, f"{folder}/{CONFIGURATIONS_BLOB}", data, content_type=NDJSON_TYPE)
    return sum(1 for line in data.splitlines() if line.strip()), hashlib.sha256(data).hexdigest()


def _folders(storage: Storage, container: str, hub: str) -> dict[str, list[str]]:
    """Backup folders of ``hub``: stamp -> the blob names in it."""
    folders: dict[str, list[str]] = {}
    for name in storage.list_names(container, f"{hub}/"):
        parts = name.split("/")
        if len(parts) == 3:
            folders.setdefault(parts[1], []).append(name)
    return folders


def _complete(hub: str, folders: dict[str, list[str]]) -> list[str]:
    """The stamps of our folders (named by their UTC stamp) that have their manifest (written last), oldest first.
    A folder named otherwise is someone else's, whatever it holds."""
    return sorted(
        stamp for stamp, names in folders.items() if f"{hub}/{stamp}/{MANIFEST_BLOB}" in names and _taken(stamp)
    )


def _taken(stamp: str) -> datetime | None:
    """When a folder named ``stamp`` was taken (None: not a name we give)."""
    try:
        return datetime.strptime(stamp, STAMP).replace(tzinfo=UTC)
    except ValueError:
        return None


def latest_backup(storage: Storage, container: str, hub: str) -> str | None:
    """``<hub>/<stamp>`` of the newest complete backup of ``hub``, if any."""
    complete = _complete(hub, _folders(storage, container, hub))
    return f"{hub}/{complete[-1]}" if complete else None


def apply_retention(storage: Storage, container: str, hub: str, *, days: int, now: datetime) -> list[str]:
    """Delete backup folders of ``hub`` older than ``days``, never the newest complete one. Returns the folders."""
    folders = _folders(storage, container, hub)
    complete = _complete(hub, folders)
    keep = complete[-1] if complete else None
    cutoff = now - timedelta(days=days)
    removed = []
    for stamp, names in sorted(folders.items()):
        taken = _taken(stamp)
        if taken is None:
            continue  # not ours: never delete what we did not write
        if stamp == keep or taken >= cutoff:
            continue
        # The manifest goes first: a folder interrupted mid-deletion then reads as incomplete, never as good.
        for name in sorted(names, key=lambda n: not n.endswith(MANIFEST_BLOB)):
            storage.delete_blob(BlobRef(container, name))
        removed.append(f"{hub}/{stamp}")
        logger.info("retention removed backup %s/%s", hub, stamp)
    return removed


@dataclass(frozen=True, slots=True)
class BackupEntry:
    """One complete backup folder as the status page lists it: when it was taken and its manifest."""

    folder: str  # <hub>/<stamp>
    taken: datetime
    manifest: dict[str, Any]


def recent_backups(storage: Storage, container: str, hub: str, *, limit: int = 5) -> tuple[list[BackupEntry], int]:
    """The newest ``limit`` complete backups of ``hub`` (newest first, each with its manifest), and how many
    complete backups there are in all. Only these manifests are read: a status page polls this."""
    complete = _complete(hub, _folders(storage, container, hub))
    entries = []
    for stamp in reversed(complete[-limit:]):
        taken = _taken(stamp)
        assert taken is not None  # _complete keeps only stamps we give
        ref = BlobRef(container, f"{hub}/{stamp}/{MANIFEST_BLOB}")
        try:
            manifest = json.loads(b"".join(storage.open_read(ref)))
        except StorageError:  # removed by retention since the listing: it is no longer a backup
            continue
        except ValueError:  # a manifest that is not JSON: listed, with nothing read from it
            manifest = {}
        entries.append(BackupEntry(f"{hub}/{stamp}", taken, manifest if isinstance(manifest, dict) else {}))
    return entries, len(complete)


def all_backups(storage: Storage, container: str, hub: str, *, limit: int) -> tuple[list[BackupEntry], list[str]]:
    """The newest ``limit`` complete backups of ``hub`` (newest first, with their manifests), and the stamps of its
    incomplete folders (no manifest: an export that failed or a copy interrupted; never restorable). One listing
    of the hub's folder, then one read per manifest shown: retention keeps their number small."""
    folders = _folders(storage, container, hub)
    incomplete = sorted((s for s in folders if _taken(s) and s not in set(_complete(hub, folders))), reverse=True)
    entries, _ = recent_backups(storage, container, hub, limit=limit)
    return entries, incomplete


def backup_blobs(storage: Storage, container: str, hub: str, stamp: str) -> list[tuple[str, int]]:
    """The blobs of one backup folder with their sizes (name within the folder, bytes); empty when it is absent."""
    names = storage.list_names(container, f"{hub}/{stamp}/")
    found = []
    for name in names:
        info = storage.properties(BlobRef(container, name))
        if info is not None:
            found.append((name.rsplit("/", 1)[1], info.size))
    return found
