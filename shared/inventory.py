"""What an operator asks about a hub at hand, read only: its devices (a page of a query, one device in full, a
count) and its backups (each complete one with its manifest and its age against retention, one folder's files).

Keys: an identity read from the hub carries its symmetric keys; every document here has them replaced by null
(``redact``) unless the caller asks for them by name (``keys=True``, one device at a time). A twin never has
keys, but is redacted too, so that a change upstream cannot leak one.

"The last jobs that touched a device": the ledger indexes jobs by hub, not by device, and finding a device in a
job's files means reading them. So a device's document lists, honestly named ``recentHubJobs``, the newest
``RECENT_JOBS`` jobs of its hub that write to the registry (imports, restores, migration imports), read from one
page of the ledger (``JOBS_SCANNED`` jobs): each could have touched it; none is claimed to have.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from .backups import MANIFEST_BLOB, STAMP, NotABackup, all_backups, backup_blobs
from .iothub import IoTHubClient
from .ledger import JobKind, Ledger
from .storage import BlobRef, Storage
from .views import job_view

DEFAULT_QUERY = "SELECT * FROM devices"
MAX_TOP = 1000  # the most twins one query page may hold (x-ms-max-item-count)
RECENT_JOBS = 10
JOBS_SCANNED = 50
BACKUPS_LISTED = 100
_WRITES = frozenset({JobKind.IMPORT, JobKind.RESTORE, JobKind.MIGRATION_IMPORT})
_KEY_FIELDS = ("primaryKey", "secondaryKey")
RECENT_JOBS_NOTE = (
    f"the ledger does not index jobs by device: these are the newest {RECENT_JOBS} jobs of the hub that write to "
    f"its registry (among its last {JOBS_SCANNED}); each could have touched this device, none is known to have"
)


def redact(value: Any) -> Any:
    """``value`` with every ``symmetricKey``'s keys set to null, however deep (a copy; the input is untouched)."""
    if isinstance(value, list):
        return [redact(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {k: redact(v) for k, v in value.items()}
    sym = out.get("symmetricKey")
    if isinstance(sym, dict):
        out["symmetricKey"] = {**sym, **{k: None for k in _KEY_FIELDS if k in sym}}
    return out


def device_page(client: IoTHubClient, query: str | None, *, top: int, continuation: str | None) -> dict[str, Any]:
    """One page of the twins a query selects (one call against the hub's query quota), keys redacted; ``next``
    is the token of the following page (None: the last)."""
    twins, token = client.query_page(query or DEFAULT_QUERY, continuation, page_size=top)
    return {"query": query or DEFAULT_QUERY, "devices": redact(twins), "count": len(twins), "next": token}


def count_query(query: str | None) -> str:
    """``SELECT COUNT() AS numberOfDevices FROM devices [WHERE ...]`` from a query's WHERE clause, if any."""
    text = (query or DEFAULT_QUERY).strip()
    found = re.search(r"\sWHERE\s", text, re.IGNORECASE)
    where = f" {text[found.start() :].strip()}" if found else ""
    # The WHERE is the caller's own query, read-only on the hub (as it would send it): nothing to inject into.
    return f"SELECT COUNT() AS numberOfDevices FROM devices{where}"  # noqa: S608


def device_count(client: IoTHubClient, query: str | None) -> dict[str, Any]:
    """How many devices a query (its WHERE clause) selects: the hub counts them in one query call."""
    counted = count_query(query)
    rows, _ = client.query_page(counted, None, page_size=1)
    number = rows[0].get("numberOfDevices", 0) if rows else 0
    return {"query": counted, "count": int(number)}


def device_document(
    client: IoTHubClient, ledger: Ledger, hub: str, device_id: str, *, keys: bool = False
) -> dict[str, Any]:
    """One device: its identity, its twin's tags and properties, its modules, and the hub's recent jobs that could
    have touched it (see the module's note). Keys only when ``keys``.

    Raises:
        IoTHubNotFound: the hub has no such device.
    """
    identity = client.get_device(device_id)
    twin = client.get_twin(device_id)
    modules = client.list_modules(device_id)
    props = twin.get("properties") or {}
    shown = identity if keys else redact(identity)
    listed, _ = ledger.list_jobs(hub, limit=JOBS_SCANNED)
    recent = [job_view(j) for j in listed if j.kind in _WRITES][:RECENT_JOBS]
    return {
        "hub": hub,
        "deviceId": device_id,
        "identity": shown,
        "twin": {
            "tags": twin.get("tags") or {},
            "desired": _no_metadata(props.get("desired") or {}),
            "reported": _no_metadata(props.get("reported") or {}),
            "version": twin.get("version"),
            "capabilities": twin.get("capabilities"),
            "deviceScope": twin.get("deviceScope"),
        },
        "modules": modules if keys else redact(modules),
        "recentHubJobs": recent,
        "recentHubJobsNote": RECENT_JOBS_NOTE,
        "keysShown": keys,
    }


def _no_metadata(section: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in section.items() if k != "$metadata"}


def backup_entry(
    folder: str, taken: datetime, manifest: Mapping[str, Any], now: datetime, retention: timedelta, *, newest: bool
) -> dict[str, Any]:
    """A complete backup as listed: its stamp, counts, whether it holds keys, and its age against retention
    (retention removes a folder once it is older than that, except the newest complete one, kept always)."""
    age = now - taken
    return {
        "folder": folder,
        "stamp": folder.rsplit("/", 1)[1],
        "taken": taken.isoformat(),
        "ageSeconds": round(age.total_seconds()),
        "expiresInSeconds": None if newest else max(0, round((retention - age).total_seconds())),
        "keptAsNewest": newest,
        "pastRetention": age > retention,
        "devices": manifest.get("devices"),
        "modules": manifest.get("modules"),
        "configurations": manifest.get("configurations"),
        "includesKeys": manifest.get("includesKeys"),
        "bytes": manifest.get("bytes"),
        "jobId": manifest.get("jobId"),
    }


def backups_document(
    storage: Storage, container: str, hubs: list[str], *, now: datetime, retention_days: int, limit: int
) -> dict[str, Any]:
    """Every hub's complete backups (newest first, at most ``limit`` each) and its incomplete folders."""
    retention = timedelta(days=retention_days)
    docs = []
    for hub in hubs:
        entries, incomplete = all_backups(storage, container, hub, limit=limit)
        listed = [
            backup_entry(e.folder, e.taken, e.manifest, now, retention, newest=i == 0) for i, e in enumerate(entries)
        ]
        docs.append({"hub": hub, "backups": listed, "incomplete": incomplete})
    return {"retentionDays": retention_days, "hubs": docs}


def backup_document(
    storage: Storage, container: str, hub: str, stamp: str, *, now: datetime, retention_days: int
) -> dict[str, Any]:
    """One backup folder: its manifest, its files with their sizes, its age against retention.

    Raises:
        NotABackup: no complete backup of the hub under that stamp.
    """
    try:
        taken = datetime.strptime(stamp, STAMP)
    except ValueError:
        raise NotABackup(f"'{stamp}' is not a backup stamp: give one such as 20261201T020000Z") from None
    files = backup_blobs(storage, container, hub, stamp)
    if MANIFEST_BLOB not in {name for name, _ in files}:
        raise NotABackup(
            f"'{hub}/{stamp}' is not a complete backup (no {MANIFEST_BLOB}): GET /api/backups?hub={hub} lists them"
        )
    manifest = json.loads(b"".join(storage.open_read(BlobRef(container, f"{hub}/{stamp}/{MANIFEST_BLOB}"))))
    entries, _ = all_backups(storage, container, hub, limit=1)
    newest = bool(entries) and entries[0].folder == f"{hub}/{stamp}"
    retention = timedelta(days=retention_days)
    entry = backup_entry(f"{hub}/{stamp}", taken.replace(tzinfo=now.tzinfo), manifest, now, retention, newest=newest)
    return {
        **entry,
        "hub": hub,
        "manifest": manifest,
        "files": [{"name": name, "bytes": size} for name, size in files],
        "restore": f'POST /api/restores {{"hub": "{hub}", "backup": "{stamp}"}}',
    }
