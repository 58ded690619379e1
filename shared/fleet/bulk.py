"""Act on a query: the import file that applies one action to every device a hub query selects.

``POST /api/bulk`` records the request (``new_request``: ``bulk/<id>/request.json``) and queues the bulk's plan
job, which reads ``SELECT * FROM devices [WHERE ...]`` page by page (``continue_bulk``), in time slices: each part
of up to ``PART_PAGES`` pages is written as a blob (``parts/<n>.txt``, one import line per device, as the twins
arrive: never held whole) and then the next page's continuation token is saved (``cursor.json``), so a read stopped
by its time slice or a killed host goes on from there, and a part written again replaces itself. The parts are then
joined into ``bulk/<id>/devices.txt`` (streamed) with ``bulk.json`` beside it. The lines, per action:

Every line is conditional on the device as the query saw it, so a device changed between the query and the run is
refused by the hub (412001 PreconditionFailed in ``importErrors.log``) instead of being overwritten; the run's
report counts it as skipped ("changed since the plan"), not as a device error. Identity lines carry the twin's
``deviceEtag`` as ``eTag`` with ``updateIfMatchETag`` / ``deleteIfMatchETag``, and update lines its ``etag`` as
``twinETag`` as well: a tag change (what moves a device out of ``WHERE tags.site = 'oslo'``) moves the twin's ETag,
not the identity's. Twin lines carry the ``etag`` as ``twinETag`` with ``updateTwinIfMatchETag`` (the Twin of the
service's query answer has both, and the emulator returns both). A twin without the ETag a line needs gets the
unconditional mode (``update``, ``delete``, ``updateTwin``): an ``*IfMatchETag`` line without an ETag is refused
by our validator and applied unconditionally by the hub anyway.

A delete line is conditional on the identity only: the hub documents the twin ETag check for create and update
lines, not for deletes, so a delete bulk cannot see a change of tags alone between its plan and its run
(docs/operations.md says so: make the bulk again right before running it).

- ``delete``: ``{"id", "importMode": "deleteIfMatchETag", "eTag"}``.
- ``disable`` / ``enable``: ``importMode: updateIfMatchETag`` with the new ``status`` and the device's own Edge
  capability, scopes and, for X.509 devices, thumbprints as the query returned them. A query result (a twin)
  carries no symmetric keys, so a SAS device's line has no ``authentication``: the hub then keeps the keys it has
  (as the emulator does; an ``update`` line that named keys would have to repeat them, and they are not in the
  query). Twin tags and properties are not in the line, so they stay as they are.
- ``setTags``: ``importMode: updateTwinIfMatchETag`` with the twin's tags as the query returned them, ``args.tags``
  set over them (a tag set to null is removed): an import replaces a twin's tags, so the line carries the others
  over.
- ``regenerateKeys``: ``importMode: updateIfMatchETag`` as for disable/enable (status kept) with a new primary and
  secondary key, each ``secrets.token_bytes(32)`` in base64, minted here. Only SAS devices get a line; the others
  are counted as skipped. The file is written with the metadata ``holdskeys=true``: the engine deletes it (and its
  snapshots) when the import job of it ends. No key is ever returned, logged or reported: ``BulkResult`` counts
  devices.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from ..iothub import IoTHubClient
from ..storage import JSON_TYPE, NDJSON_TYPE, BlobRef, Storage

ACTIONS = ("delete", "disable", "enable", "setTags", "regenerateKeys")
HOLDS_KEYS = "holdskeys"  # blob metadata (lowercase: Azure returns metadata names as they were set)
_SELECT_DEVICES = re.compile(r"^\s*SELECT\s+\*\s+FROM\s+devices(\s+WHERE\s+\S.*)?\s*$", re.IGNORECASE | re.DOTALL)


class InvalidBulk(ValueError):
    """A query or arguments this app refuses before asking the hub; the message says what to change."""


@dataclass(frozen=True, slots=True)
class BulkResult:
    devices: int  # lines written
    skipped: int  # devices the action does not apply to (regenerateKeys: not SAS; modules)


def check(query: str, action: str, args: Mapping[str, Any]) -> None:
    """Raises ``InvalidBulk`` for a query that is not ``SELECT * FROM devices [WHERE ...]`` or wrong ``args``."""
    if not _SELECT_DEVICES.match(query):
        raise InvalidBulk(
            "the query must select whole device twins: 'SELECT * FROM devices [WHERE ...]' (no COUNT(), "
            "projections or devices.modules)"
        )
    if action not in ACTIONS:
        raise InvalidBulk(f"unknown action '{action}': one of {', '.join(ACTIONS)}")
    if action == "setTags":
        tags = args.get("tags")
        if not isinstance(tags, dict) or not tags or set(args) != {"tags"}:
            raise InvalidBulk('setTags takes args {"tags": {...}} with at least one tag')
    elif args:
        raise InvalidBulk(f"{action} takes no args")


def new_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def line_for(action: str, twin: Mapping[str, Any], args: Mapping[str, Any]) -> dict[str, Any] | None:
    """The import line for one device's twin (None: the action does not apply to it)."""
    device_id = twin.get("deviceId")
    if not isinstance(device_id, str) or twin.get("moduleId") is not None:
        return None
    device_etag = _etag(twin.get("deviceEtag"))
    if action == "delete":
        return _if_match({"id": device_id, "importMode": "delete"}, "eTag", device_etag)
    if action == "setTags":
        given = twin.get("tags")
        tags: dict[str, Any] = given if isinstance(given, dict) else {}
        merged = {**tags, **args["tags"]}  # the import replaces the twin's tags: the others are carried over
        line: dict[str, Any] = {"id": device_id, "importMode": "updateTwin"}
        line["tags"] = {k: v for k, v in merged.items() if v is not None}
        return _if_match(line, "twinETag", _etag(twin.get("etag")))
    auth_type = str(twin.get("authenticationType") or "sas")
    if action == "regenerateKeys" and auth_type.lower() != "sas":
        return None
    status = {"disable": "disabled", "enable": "enabled"}.get(action, str(twin.get("status") or "enabled"))
    line = _if_match({"id": device_id, "importMode": "update"}, "eTag", device_etag)
    twin_etag = _etag(twin.get("etag"))
    if twin_etag is not None:
        # The identity ETag does not move when the twin changes (tags, desired): a device moved out of the query by
        # a tag change since would still match it. A twin ETag on an update line is checked by the hub too ("the
        # twin's etag, if specified, is processed independently from the device's etag"; a mismatch is an error in
        # the log: DOC-BULK), so the line applies only to the device as the query saw it, identity and twin.
        line["twinETag"] = twin_etag
    line["status"] = status
    if twin.get("statusReason"):
        line["statusReason"] = twin["statusReason"]
    caps = twin.get("capabilities")
    if isinstance(caps, dict):
        line["capabilities"] = {"iotEdge": bool(caps.get("iotEdge", False))}
    if twin.get("deviceScope"):
        line["deviceScope"] = twin["deviceScope"]
    if twin.get("parentScopes"):
        line["parentScopes"] = list(twin["parentScopes"])
    if action == "regenerateKeys":
        line["authentication"] = {"type": "sas", "symmetricKey": {"primaryKey": new_key(), "secondaryKey": new_key()}}
    elif auth_type.lower() != "sas":
        auth: dict[str, Any] = {"type": auth_type}
        thumbs = twin.get("x509Thumbprint")
        if auth_type.lower() == "selfsigned" and isinstance(thumbs, dict):
            auth["x509Thumbprint"] = {k: v for k, v in thumbs.items() if v}
        line["authentication"] = auth
    return line


def _etag(value: Any) -> str | None:
    """An ETag of a query result as an import line carries it (a string, or None when there is none)."""
    return value if isinstance(value, str) and value.strip('"') else None


def _if_match(line: dict[str, Any], field: str, etag: str | None) -> dict[str, Any]:
    """``line`` made conditional on ``etag`` (its mode's ``IfMatchETag`` form and the ETag in ``field``)."""
    if etag is not None:
        line["importMode"] += "IfMatchETag"
        line[field] = etag
    return line


def generate(
    twins: Iterable[Mapping[str, Any]], action: str, args: Mapping[str, Any], write: Callable[[bytes], None]
) -> BulkResult:
    """Write one line per twin the action applies to, as the twins arrive."""
    written = skipped = 0
    for twin in twins:
        line = line_for(action, twin, args)
        if line is None:
            skipped += 1
            continue
        write(json.dumps(line, separators=(",", ":")).encode() + b"\n")
        written += 1
    return BulkResult(written, skipped)


# The biggest page the query API takes: every page is one call against the hub's query quota (20 a minute per
# S1/S2 unit, shared with everything else on the hub), so 1,000 devices a page reads 20,000 devices a minute there.
QUERY_PAGE_SIZE = 1000
# How long one page waits out throttling (429) and other passing faults before the read stops for now (the job then
# waits its turn again, with a back-off of at least the hub's Retry-After, and goes on from the same page).
QUERY_PATIENCE = 120.0
# How long one submission of a bulk's plan job reads the query before it saves where it is and gives the monitor
# back: the monitor runs in a function invocation (host.json functionTimeout: 10 minutes), and a query paced under
# one S1 unit's quota (20 pages a minute) reads 20,000 devices a minute, so a 200,000-device hub takes 10 minutes.
QUERY_SLICE = 240.0
PART_PAGES = 10  # pages per part blob (10,000 devices at most): what a crash can make the read do again

MANIFEST = "bulk.json"
DEVICES = "devices.txt"
REQUEST = "request.json"  # what POST /api/bulk asked: hub, query, action, args (written before the job is queued)
CURSOR = "cursor.json"  # how far the read got: the next page's continuation token, the parts written, counts
PARTS = "parts"  # parts/<n>.txt: the lines of the pages read so far, joined into devices.txt at the end
BULK_ID = r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}$"


@dataclass(frozen=True, slots=True)
class Bulk:
    """A generated file: ``bulk/<id>/devices.txt`` (``ref``) and what made it (``bulk/<id>/bulk.json``)."""

    bulk_id: str
    hub: str
    query: str
    action: str
    result: BulkResult
    ref: BlobRef  # devices.txt, pinned by its ETag

    def public(self) -> dict[str, Any]:
        return {
            "id": self.bulk_id,
            "hub": self.hub,
            "query": self.query,
            "action": self.action,
            "devices": self.result.devices,
            "skipped": self.result.skipped,
            "file": self.ref.path,
        }


def new_request(
    storage: Storage,
    container: str,
    hub: str,
    *,
    query: str,
    action: str,
    args: Mapping[str, Any],
    now: datetime | None = None,
) -> tuple[str, BlobRef]:
    """Check the query and args and record the request (``<id>/request.json``): the bulk's id and the file its
    plan job writes (``<id>/devices.txt``, not there yet).

    Raises:
        InvalidBulk: the query or the args are refused before asking the hub.
    """
    check(query, action, args)
    bulk_id = f"{(now or datetime.now(UTC)):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
    storage.ensure_container(container)
    doc = {"id": bulk_id, "hub": hub, "query": query, "action": action, "args": dict(args)}
    storage.upload_bytes(container, f"{bulk_id}/{REQUEST}", json.dumps(doc, indent=2).encode(), content_type=JSON_TYPE)
    return bulk_id, BlobRef(container, f"{bulk_id}/{DEVICES}")


def read_request(storage: Storage, container: str, bulk_id: str) -> dict[str, Any] | None:
    """``request.json`` of a bulk (None: no such bulk id, or one made before requests were recorded)."""
    return _read_json(storage, BlobRef(container, f"{bulk_id}/{REQUEST}"))


@dataclass(frozen=True, slots=True)
class Cursor:
    """How far a bulk's read of its query got: saved after each part, so a read stopped (its time slice used, the
    host killed) goes on from the page after the last part saved; a part written but not yet counted here is
    written again under the same name, so no line is ever there twice."""

    token: str | None = None  # the next page's continuation token (None and ``pages`` > 0: the read is done)
    parts: int = 0
    pages: int = 0
    devices: int = 0
    skipped: int = 0

    @property
    def done(self) -> bool:
        return self.pages > 0 and self.token is None


def continue_bulk(
    storage: Storage,
    container: str,
    client: IoTHubClient,
    bulk_id: str,
    *,
    page_size: int = QUERY_PAGE_SIZE,
    patience: float = QUERY_PATIENCE,
    budget: float = QUERY_SLICE,
    clock: Callable[[], float] = time.monotonic,
    saved: Callable[[Cursor], None] | None = None,
) -> Bulk | Cursor:
    """Read the bulk's query on from where it got (``cursor.json``), a part of up to ``PART_PAGES`` pages at a
    time, for about ``budget`` seconds; when the last page is read, join the parts into ``devices.txt`` (streamed)
    and write ``bulk.json``. Returns the ``Bulk`` when it is written, else the ``Cursor`` saved (call again).
    ``saved`` is told each cursor as it is saved.

    Raises:
        IoTHubHTTPError: the hub refused the query (400), or a page stayed throttled past ``patience`` (``passing``).
        IoTHubUnavailable: no answer to a page, ``patience`` included.
    """
    request = read_request(storage, container, bulk_id)
    if request is None:
        raise InvalidBulk(f"no bulk '{bulk_id}'")
    done = _written(storage, container, bulk_id, request)
    if done is not None:
        return done
    doc = _read_json(storage, BlobRef(container, f"{bulk_id}/{CURSOR}"))
    cursor = Cursor(**doc) if doc else Cursor()
    holds_keys = {HOLDS_KEYS: "true"} if request["action"] == "regenerateKeys" else {}
    started = clock()
    while not cursor.done:
        staged = storage.stage(container, f"{bulk_id}/{PARTS}/{cursor.parts:05d}.txt")
        token, pages, written, skipped = cursor.token, 0, 0, 0
        while pages < PART_PAGES and (pages == 0 or token is not None) and (pages == 0 or clock() - started < budget):
            twins, token = client.query_page(request["query"], token, page_size=page_size, patience=patience)
            result = generate(twins, request["action"], request["args"], staged.write)
            pages, written, skipped = pages + 1, written + result.devices, skipped + result.skipped
        staged.commit(metadata=holds_keys, content_type=NDJSON_TYPE)
        cursor = Cursor(
            token, cursor.parts + 1, cursor.pages + pages, cursor.devices + written, cursor.skipped + skipped
        )
        storage.upload_bytes(container, f"{bulk_id}/{CURSOR}", json.dumps(asdict(cursor)).encode())
        if saved is not None:
            saved(cursor)
        if not cursor.done and clock() - started >= budget:
            return cursor
    staged = storage.stage(container, f"{bulk_id}/{DEVICES}")
    for part in range(cursor.parts):
        for chunk in storage.open_read(BlobRef(container, f"{bulk_id}/{PARTS}/{part:05d}.txt")):
            staged.write(chunk)
    etag = staged.commit(metadata=holds_keys, content_type=NDJSON_TYPE)
    ref = BlobRef(container, f"{bulk_id}/{DEVICES}", etag)
    bulk = Bulk(
        bulk_id, request["hub"], request["query"], request["action"], BulkResult(cursor.devices, cursor.skipped), ref
    )
    storage.upload_bytes(container, f"{bulk_id}/{MANIFEST}", json.dumps(bulk.public(), indent=2).encode())
    _drop_parts(storage, container, bulk_id)
    return bulk


def _written(storage: Storage, container: str, bulk_id: str, request: Mapping[str, Any]) -> Bulk | None:
    """The bulk, when its file and manifest are written (the parts left by a crash after that are dropped)."""
    manifest = read_manifest(storage, container, bulk_id)
    props = storage.properties(BlobRef(container, f"{bulk_id}/{DEVICES}")) if manifest is not None else None
    if manifest is None or props is None:
        return None
    _drop_parts(storage, container, bulk_id)
    result = BulkResult(int(manifest["devices"]), int(manifest["skipped"]))
    ref = BlobRef(container, f"{bulk_id}/{DEVICES}", props.etag)
    return Bulk(bulk_id, request["hub"], request["query"], request["action"], result, ref)


def _drop_parts(storage: Storage, container: str, bulk_id: str) -> None:
    """The parts (they hold the keys regenerateKeys mints) and the cursor, once devices.txt holds their lines."""
    for name in storage.list_names(container, f"{bulk_id}/{PARTS}/"):
        storage.delete_blob(BlobRef(container, name))
    storage.delete_blob(BlobRef(container, f"{bulk_id}/{CURSOR}"))


def _read_json(storage: Storage, ref: BlobRef) -> dict[str, Any] | None:
    if storage.properties(ref) is None:
        return None
    doc: dict[str, Any] = json.loads(b"".join(storage.open_read(ref)))
    return doc


def read_manifest(storage: Storage, container: str, bulk_id: str) -> dict[str, Any] | None:
    """``bulk.json`` of a generated file (None: no such bulk id)."""
    if storage.properties(BlobRef(container, f"{bulk_id}/{MANIFEST}")) is None:
        return None
    doc: dict[str, Any] = json.loads(b"".join(storage.open_read(BlobRef(container, f"{bulk_id}/{MANIFEST}"))))
    return doc


def drop_if_secret(storage: Storage, ref: BlobRef) -> bool:
    """Delete a generated file that holds keys (and the engine's snapshot pins of it); True when it did."""
    plain = BlobRef(ref.container, ref.name)
    props = storage.properties(plain)
    if props is None or props.metadata.get(HOLDS_KEYS) != "true":
        return False
    storage.delete_version(plain, with_snapshots=True)
    return True
