"""IoT Central data export in the app: plans on request, and backups. Applies are jobs of the engine
(``kinds.central_apply``), in the ``central`` partition.

Backups: ``backups/central/<UTC stamp>/dataexport.json`` (every destination and export as read, so secrets come
back masked) and ``manifest.json``, written last. The nightly one goes to the folder of its hour, so a timer fired
twice writes once; a manual one (``POST /api/central/backups``) is always taken anew, in a folder of its second.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .backups import MANIFEST_BLOB, apply_retention, backup_folder
from .config import Containers
from .dataexport import Document, Plan, make_plan, parse, read_app, resolve
from .engine import utcnow
from .iotcentral import IoTCentralClient
from .storage import JSON_TYPE, BlobRef, Storage

logger = logging.getLogger(__name__)

PARTITION = "central"  # the ledger partition of apply jobs (hub names may not take it)
UPLOAD_PREFIX = "central/"
DOCUMENT_BLOB = "dataexport.json"


NOT_CONFIGURED = (
    "IoT Central is not configured: set IOTCENTRAL_APP_URL (and IOTCENTRAL_API_TOKEN, or give the app's identity "
    "a role in the IoT Central app), then upload the file again"
)


def is_central_upload(name: str) -> bool:
    """Everything under ``uploads/central/`` is a data-export file (one that is not JSON is rejected as such, never
    taken for a devices file); everything else is a devices file."""
    return name.startswith(UPLOAD_PREFIX)


@dataclass
class Central:
    """The app's IoT Central: plans of a data-export file against it, and backups of its data export. Applies are
    jobs (``kinds.central_apply``)."""

    storage: Storage
    client: IoTCentralClient
    env: Mapping[str, str] = field(repr=False)  # where {"appSetting": NAME} references are looked up (app settings)
    containers: Containers
    clock: Callable[[], datetime] = utcnow

    def plan(self, raw: bytes) -> tuple[Document, dict[str, dict[str, Any]], Plan]:
        """Check the file, resolve its secrets and plan against the app; changes nothing.

        Raises:
            DocumentError: the file cannot be applied (every problem listed).
        """
        doc = parse(raw)
        resolved = resolve(doc, self.env)
        destinations, exports = read_app(self.client)
        return doc, resolved, make_plan(doc, resolved, destinations, exports)

    # --- backup ---------------------------------------------------------------------------------------

    def backup(self, *, retention_days: int | None = None, manual: bool = False) -> dict[str, Any]:
        """Write the app's data-export configuration to a backup folder; returns the manifest and its ``folder``.

        The nightly backup (``manual`` False) is one per hour: a repeat in the same hour returns that hour's. A manual
        one reads the app now, whenever the last was taken: a backup must show what the app holds at the time asked
        (a second one in the same second refreshes that second's folder)."""
        now = self.clock()
        folder = backup_folder(PARTITION, now if manual else now.replace(minute=0, second=0, microsecond=0))
        container = self.containers.backups
        self.storage.ensure_container(container)
        manifest_ref = BlobRef(container, f"{folder}/{MANIFEST_BLOB}")
        if not manual and self.storage.properties(manifest_ref) is not None:
            manifest: dict[str, Any] = json.loads(b"".join(self.storage.open_read(manifest_ref)))
            return {**manifest, "folder": f"{container}/{folder}"}
        destinations, exports = read_app(self.client)
        doc = {
            "app": self.client.app_url,
            "apiVersion": self.client.api_version,
            "takenAt": now.isoformat(),
            "destinations": {k: {f: v for f, v in d.items() if f != "id"} for k, d in destinations.items()},
            "exports": {k: {f: v for f, v in e.items() if f != "id"} for k, e in exports.items()},
        }
        data = json.dumps(doc, indent=2).encode()
        self.storage.upload_bytes(container, f"{folder}/{DOCUMENT_BLOB}", data, content_type=JSON_TYPE)
        manifest = {
            "app": self.client.app_url,
            "apiVersion": self.client.api_version,
            "destinations": len(destinations),
            "exports": len(exports),
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "created": now.isoformat(),
            "documentBlob": DOCUMENT_BLOB,
        }
        self.storage.upload_bytes(
            container, manifest_ref.name, json.dumps(manifest, indent=2).encode(), content_type=JSON_TYPE
        )
        logger.info("IoT Central backup %s: %d destinations, %d exports", folder, len(destinations), len(exports))
        if retention_days is not None:
            apply_retention(self.storage, container, PARTITION, days=retention_days, now=now)
        return {**manifest, "folder": f"{container}/{folder}"}
