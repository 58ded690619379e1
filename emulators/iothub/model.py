"""The registry's rules: how one ExportImportDevice line (or a REST device body) changes a device record.

Records are plain dicts persisted as JSON by ``store.py``: an import job applies up to a million of them, and a
dict is the cheapest shape to load, change and dump. Nothing here does I/O; callers pass the current record in
and get the new one back (or ``DELETE``), or a ``LineError`` with the IoT Hub error code that the service would
write to ``importErrors.log`` for that line.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
import struct
from typing import Any, Final

Record = dict[str, Any]


class _Delete:
    def __repr__(self) -> str:
        return "DELETE"


DELETE: Final = _Delete()

# Kept apart from shared.devices for the same reason as errors.CODE_NAMES: the emulator is the service.
IMPORT_MODES = (
    "createOrUpdate",
    "create",
    "update",
    "updateIfMatchETag",
    "createOrUpdateIfMatchETag",
    "delete",
    "deleteIfMatchETag",
    "updateTwin",
    "updateTwinIfMatchETag",
)
AUTH_TYPES = ("sas", "selfSigned", "certificateAuthority", "none")
STATUSES = ("enabled", "disabled")
# The service deserializes with Newtonsoft's StringEnumConverter, which matches enum names case-insensitively,
# so `CreateOrUpdate` is accepted while `SELF_SIGNED` is not (see README "Choices").
_MODE_BY_LOWER = {m.lower(): m for m in IMPORT_MODES}
_AUTH_BY_LOWER = {a.lower(): a for a in AUTH_TYPES}
_STATUS_BY_LOWER = {s: s for s in STATUSES}

DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9\-.%_*?!(),:=@$']{1,128}$")
MODULE_ID_RE = re.compile(r"^[A-Za-z0-9\-.+%_#*?!(),:=@$']{1,128}$")
THUMBPRINT_RE = re.compile(r"^([0-9A-Fa-f]{40}|[0-9A-Fa-f]{64})$")
EDGE_SYSTEM_MODULES = ("$edgeAgent", "$edgeHub")
MIN_KEY_BYTES, MAX_KEY_BYTES = 16, 64
TAGS_MAX_BYTES = 8 * 1024
PROPERTIES_MAX_BYTES = 32 * 1024
MAX_TWIN_DEPTH = 10
STATUS_REASON_MAX = 128
# Twin keys and values (device twin docs; quotas docs "each individual property ... 4 KB"): keys up to 1 KB without
# '.', '$', spaces or control characters (C0 and C1); string values (and any other leaf value) up to 4 KB.
TWIN_KEY_MAX_BYTES = 1024
TWIN_VALUE_MAX_BYTES = 4 * 1024
_TWIN_KEY_BAD = re.compile(r"[.$ \x00-\x1f\x7f-\x9f]")
EDGE_SCOPE_PREFIX = "ms-azure-iot-edge://"


class LineError(Exception):
    """One line (or one device of a bulk call) could not be applied; ``code`` is the IoT Hub error code."""

    def __init__(self, code: int, message: str, *, device_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.device_id = device_id


def _copy(record: Record) -> Record:
    """A deep copy; a JSON round trip is faster than copy.deepcopy for these plain records."""
    copied: Record = json.loads(json.dumps(record))
    return copied


def new_etag() -> str:
    return base64.b64encode(str(secrets.randbelow(10**10)).encode()).decode()


def twin_etag(version: int) -> str:
    return base64.b64encode(struct.pack(">q", version)).decode()


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def strip_etag(value: str | None) -> str | None:
    """ETags arrive quoted, weak (W/"...") or bare; compare their inner value."""
    if value is None:
        return None
    v = value.strip()
    v = v.removeprefix("W/")
    if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
        v = v[1:-1]
    return v


def _enum(value: Any, table: dict[str, str], field: str, line_id: str | None) -> str:
    if not isinstance(value, str) or value.lower() not in table:
        raise LineError(
            400012,
            f"Error converting value {json.dumps(value)} to type '{field}'. Path '{field}'.",
            device_id=line_id,
        )
    return table[value.lower()]


def _depth(obj: Any, level: int = 0) -> int:
    if isinstance(obj, dict):
        return max((_depth(v, level + 1) for v in obj.values()), default=level + 1)
    return level


def _size(obj: Any) -> int:
    return len(json.dumps(obj, separators=(",", ":")).encode())


def _check_key(value: Any, name: str, device_id: str) -> str:
    if not isinstance(value, str):
        raise LineError(400004, f"{name} must be a base64 string.", device_id=device_id)
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise LineError(400004, f"{name} is not valid base64.", device_id=device_id) from None
    if not MIN_KEY_BYTES <= len(raw) <= MAX_KEY_BYTES:
        raise LineError(
            400004,
            f"The primary and secondary keys must be between {MIN_KEY_BYTES} and {MAX_KEY_BYTES} bytes in length.",
            device_id=device_id,
        )
    return value


def parse_authentication(auth: Any, device_id: str, existing: Record | None) -> Record:
    """Validate an AuthenticationMechanism and fill in what the service generates (keys)."""
    if auth is None:
        if existing is not None:
            return dict(existing)
        auth = {}
    if not isinstance(auth, dict):
        raise LineError(400012, "'authentication' must be an object.", device_id=device_id)
    sym = auth.get("symmetricKey") or {}
    x509 = auth.get("x509Thumbprint") or {}
    if not isinstance(sym, dict) or not isinstance(x509, dict):
        raise LineError(400012, "'symmetricKey' and 'x509Thumbprint' must be objects.", device_id=device_id)
    primary, secondary = sym.get("primaryKey"), sym.get("secondaryKey")
    p_thumb, s_thumb = x509.get("primaryThumbprint"), x509.get("secondaryThumbprint")
    has_keys = primary is not None or secondary is not None
    has_thumbs = p_thumb is not None or s_thumb is not None
    if has_keys and has_thumbs:
        raise LineError(
            400004,
            f"Device {device_id} cannot specify both symmetric keys and thumbprints.",
            device_id=device_id,
        )
    if "type" in auth and auth["type"] is not None:
        kind = _enum(auth["type"], _AUTH_BY_LOWER, "authentication.type", device_id)
    else:
        kind = "selfSigned" if has_thumbs else "sas"
    if kind == "sas":
        if has_thumbs:
            raise LineError(400004, "A 'sas' device cannot have thumbprints.", device_id=device_id)
        if (primary is None) != (secondary is None):
            raise LineError(
                400004,
                "Give both primaryKey and secondaryKey, or neither to have them generated.",
                device_id=device_id,
            )
        if primary is None:
            old = (existing or {}).get("symmetricKey") or {}
            if (existing or {}).get("type") == "sas" and old.get("primaryKey"):
                primary, secondary = old["primaryKey"], old["secondaryKey"]
            else:
                primary, secondary = new_key(), new_key()
        else:
            _check_key(primary, "primaryKey", device_id)
            _check_key(secondary, "secondaryKey", device_id)
        return {
            "symmetricKey": {"primaryKey": primary, "secondaryKey": secondary},
            "x509Thumbprint": {"primaryThumbprint": None, "secondaryThumbprint": None},
            "type": "sas",
        }
    if has_keys:
        raise LineError(400004, f"A '{kind}' device cannot have symmetric keys.", device_id=device_id)
    if kind == "selfSigned":
        if p_thumb is None:
            raise LineError(
                400004, "A 'selfSigned' device needs x509Thumbprint.primaryThumbprint.", device_id=device_id
            )
        for name, t in (("primaryThumbprint", p_thumb), ("secondaryThumbprint", s_thumb)):
            if t is not None and (not isinstance(t, str) or not THUMBPRINT_RE.match(t)):
                raise LineError(
                    400004, f"{name} must be 40 (SHA-1) or 64 (SHA-256) hex characters.", device_id=device_id
                )
    elif has_thumbs:
        raise LineError(400004, f"A '{kind}' device cannot have thumbprints.", device_id=device_id)
    return {
        "symmetricKey": {"primaryKey": None, "secondaryKey": None},
        "x509Thumbprint": {"primaryThumbprint": p_thumb, "secondaryThumbprint": s_thumb},
        "type": kind,
    }


def check_twin_section(section: dict[str, Any], path: str, device_id: str | None) -> None:
    """Every key and leaf value of a twin section against the service's twin rules.

    Raises:
        LineError: 400004 naming the first offending key or value (the path says where).
    """
    for key, value in section.items():
        where = f"{path}.{key}"
        if not key or _TWIN_KEY_BAD.search(key) or len(key.encode()) > TWIN_KEY_MAX_BYTES:
            raise LineError(
                400004,
                f"Twin key '{where}' is invalid: keys are 1 to 1,024 bytes without '.', '$', spaces or control "
                "characters.",
                device_id=device_id,
            )
        if isinstance(value, dict):
            check_twin_section(value, where, device_id)
        elif isinstance(value, str):
            # UTF-8 takes at most 4 bytes a character: only long strings need encoding (an import checks millions).
            if len(value) > TWIN_VALUE_MAX_BYTES // 4 and len(value.encode()) > TWIN_VALUE_MAX_BYTES:
                raise LineError(400004, f"Twin value '{where}' exceeds 4 KB.", device_id=device_id)
        elif isinstance(value, list) and _size(value) > TWIN_VALUE_MAX_BYTES:
            raise LineError(400004, f"Twin value '{where}' exceeds 4 KB.", device_id=device_id)


def _strip_meta(section: Any) -> dict[str, Any]:
    return {k: v for k, v in section.items() if k not in ("$metadata", "$version")}


def parse_twin(line: Record, device_id: str) -> Record | None:
    """The twin parts of a line (tags, desired, reported), validated; None if the line has none."""
    tags = line.get("tags")
    props = line.get("properties")
    if tags is None and props is None:
        return None
    out: Record = {}
    if tags is not None:
        if not isinstance(tags, dict):
            raise LineError(400012, "'tags' must be an object.", device_id=device_id)
        if _size(tags) > TAGS_MAX_BYTES:
            raise LineError(400004, "Twin tags exceed 8 KB.", device_id=device_id)
        check_twin_section(tags, "tags", device_id)
        out["tags"] = tags
    if props is not None:
        if not isinstance(props, dict):
            raise LineError(400012, "'properties' must be an object.", device_id=device_id)
        for part in ("desired", "reported"):
            section = props.get(part)
            if section is None:
                continue
            if not isinstance(section, dict):
                raise LineError(400012, f"'properties.{part}' must be an object.", device_id=device_id)
            section = _strip_meta(section)
            if _size(section) > PROPERTIES_MAX_BYTES:
                raise LineError(400004, f"Twin {part} properties exceed 32 KB.", device_id=device_id)
            if _depth(section) > MAX_TWIN_DEPTH:
                raise LineError(400004, f"Twin {part} properties nest deeper than 10.", device_id=device_id)
            check_twin_section(section, f"properties.{part}", device_id)
            out[part] = section
    return out


def _apply_twin(record: Record, twin: Record | None, now: str) -> None:
    if twin is None:
        return
    t = record["twin"]
    for part in ("tags", "desired", "reported"):
        if part in twin:
            t[part] = twin[part]
            if part != "tags":
                t[part + "Version"] = t.get(part + "Version", 1) + 1
    t["version"] += 1
    t["etag"] = twin_etag(t["version"])
    t["lastUpdated"] = now


def _empty_twin() -> Record:
    return {
        "version": 1,
        "etag": twin_etag(1),
        "tags": {},
        "desired": {},
        "reported": {},
        "lastUpdated": None,
    }


def parse_line(text: str) -> Record:
    """JSON-decode one import line, raising the service's 400012 DeserializationError on failure."""
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise LineError(400012, f"Invalid device format in line: {text[:200]}. {exc}") from None
    if not isinstance(obj, dict):
        raise LineError(400012, f"Invalid device format in line: {text[:200]}. Expected a JSON object.")
    return obj


def line_identity(line: Record) -> tuple[str, str | None, str]:
    """(device id, module id or None, import mode) of a decoded line, validated."""
    device_id = line.get("id")
    if device_id is None or device_id == "":
        raise LineError(400005, "The line has no 'id'.")
    if not isinstance(device_id, str) or not DEVICE_ID_RE.match(device_id):
        raise LineError(
            400004,
            f"Device id '{device_id}' is invalid: up to 128 ASCII letters, digits and - . % _ * ? ! ( ) , : = @ $ '.",
            device_id=str(device_id),
        )
    module_id = line.get("moduleId")
    if module_id is not None:
        if not isinstance(module_id, str) or not MODULE_ID_RE.match(module_id):
            raise LineError(400004, f"Module id '{module_id}' is invalid.", device_id=device_id)
        if module_id in EDGE_SYSTEM_MODULES:
            raise LineError(
                400004,
                f"Module '{module_id}' is an IoT Edge system module; the IoT Edge runtime creates it and it "
                "cannot be imported.",
                device_id=device_id,
            )
    mode_raw = line.get("importMode")
    mode = "createOrUpdate" if mode_raw is None else _enum(mode_raw, _MODE_BY_LOWER, "importMode", device_id)
    return device_id, module_id, mode


def apply(line: Record, current: Record | None, *, now: str, module: bool = False) -> Record | _Delete | None:
    """Apply one validated line to ``current`` (a device or module record, or None if absent).

    Returns the new record, ``DELETE``, or None for "no change".

    Raises:
        LineError: the line breaks a rule or its precondition (exists, missing, ETag) fails.
    """
    device_id, module_id, mode = line_identity(line)
    label = f"Module {device_id}/{module_id}" if module else f"Device {device_id}"
    # Module lines answer with the module codes of the C# SDK's ErrorCode.cs (the service's are unverified).
    missing, duplicate = (404010, 409301) if module else (404001, 409001)
    exists = current is not None
    if_match = mode.endswith("IfMatchETag")

    if mode in ("delete", "deleteIfMatchETag"):
        if not exists:
            raise LineError(missing, f"{label} not found.", device_id=device_id)
        if if_match:
            _require_etag(line.get("eTag"), current["etag"], label, device_id, "eTag")  # type: ignore[index]
        return DELETE

    if mode in ("updateTwin", "updateTwinIfMatchETag"):
        if current is None:
            raise LineError(missing, f"{label} not found.", device_id=device_id)
        if if_match:
            _require_etag(line.get("twinETag"), current["twin"]["etag"], label, device_id, "twinETag")
        new = _copy(current)
        _apply_twin(new, parse_twin(line, device_id) or {}, now)
        return new

    if mode == "create" and exists:
        raise LineError(duplicate, f"{label} already exists.", device_id=device_id)
    if mode in ("update", "updateIfMatchETag") and not exists:
        raise LineError(missing, f"{label} not found.", device_id=device_id)
    if if_match and current is not None:
        _require_etag(line.get("eTag"), current["etag"], label, device_id, "eTag")
    twin = parse_twin(line, device_id)
    if current is not None and line.get("twinETag") is not None:
        # A supplied twin ETag is checked even in create/update modes (DOC-BULK).
        _require_etag(line["twinETag"], current["twin"]["etag"], label, device_id, "twinETag")

    status_raw = line.get("status")
    if status_raw is None:
        if not module:
            raise LineError(400012, "Required property 'status' not found in JSON. Path ''.", device_id=device_id)
        status = (current or {}).get("status", "enabled")
    else:
        status = _enum(status_raw, _STATUS_BY_LOWER, "status", device_id)
    reason = line.get("statusReason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > STATUS_REASON_MAX):
        raise LineError(400004, "statusReason must be a string of at most 128 characters.", device_id=device_id)
    caps = line.get("capabilities")
    if caps is not None and (not isinstance(caps, dict) or not isinstance(caps.get("iotEdge", False), bool)):
        raise LineError(400012, "'capabilities.iotEdge' must be true or false.", device_id=device_id)
    parents = line.get("parentScopes")
    if parents is not None and (not isinstance(parents, list) or not all(isinstance(p, str) for p in parents)):
        raise LineError(400012, "'parentScopes' must be a list of strings.", device_id=device_id)
    scope = line.get("deviceScope")
    if scope is not None and not isinstance(scope, str):
        raise LineError(400012, "'deviceScope' must be a string.", device_id=device_id)
    auth = parse_authentication(
        line.get("authentication"), device_id, current["authentication"] if current is not None else None
    )

    if current is None:
        record: Record = {
            "deviceId": device_id,
            "generationId": str(secrets.randbelow(10**18)).zfill(18),
            "connectionState": "Disconnected",
            "connectionStateUpdatedTime": None,
            "lastActivityTime": None,
            "cloudToDeviceMessageCount": 0,
            "statusUpdatedTime": now,
            "twin": _empty_twin(),
        }
        if module:
            record["moduleId"] = module_id
    else:
        record = _copy(current)
        if record.get("status") != status:
            record["statusUpdatedTime"] = now
    record["status"] = status
    record["statusReason"] = reason
    record["authentication"] = auth
    if module:
        managed_by = line.get("managedBy", record.get("managedBy"))
        if managed_by is not None and not isinstance(managed_by, str):
            raise LineError(400012, "'managedBy' must be a string.", device_id=device_id)
        record["managedBy"] = managed_by
    else:
        edge = bool((caps or {}).get("iotEdge", False))
        record["capabilities"] = {"iotEdge": edge}
        record["deviceScope"] = _edge_scope(record, scope) if edge else scope
        record["parentScopes"] = parents or []
    record["etag"] = new_etag()
    _apply_twin(record, twin, now)
    return record


def _edge_scope(record: Record, given: str | None) -> str:
    """The scope of an IoT Edge device: generated by the hub and kept for the device's life (REST Device model:
    "auto-generated and immutable for edge devices"); child devices name it as their ``deviceScope`` and child
    Edge devices as their ``parentScopes``. A scope already in this hub's format given when the device is created
    is kept, so an export imported into another hub keeps its hierarchy (inferred)."""
    kept = record.get("deviceScope")
    if isinstance(kept, str) and kept.startswith(EDGE_SCOPE_PREFIX):
        return kept
    if given and given.startswith(EDGE_SCOPE_PREFIX) and "etag" not in record:
        return given
    # The format seen in the service's answers: ms-azure-iot-edge://<deviceId>-<generationId>.
    return f"{EDGE_SCOPE_PREFIX}{record['deviceId']}-{record['generationId']}"


def new_module(device_id: str, module_id: str, now: str) -> Record:
    """A module identity the hub creates itself (the IoT Edge system modules of a new Edge device)."""
    record = apply({"id": device_id, "moduleId": "x", "importMode": "create"}, None, now=now, module=True)
    assert isinstance(record, dict)
    record["moduleId"] = module_id
    return record


def _require_etag(given: Any, actual: str, label: str, device_id: str, field: str) -> None:
    if given is None or given == "":
        # Recorded service behaviour: a bulk deleteIfMatchETag without an eTag succeeded (azure-sdk-for-net
        # SessionRecords, Jobs_Export_Import_Lifecycle); the other *IfMatchETag modes are taken to do the same.
        return
    if not isinstance(given, str):
        raise LineError(400012, f"'{field}' must be a string.", device_id=device_id)
    if strip_etag(given) != strip_etag(actual):
        raise LineError(
            412001,
            f"The {field} of {label} does not match (given {given}, current {actual}).",
            device_id=device_id,
        )


# --- wire representations -------------------------------------------------------------------------------


def _twin_properties(t: Record) -> Record:
    meta = {"$lastUpdated": t.get("lastUpdated")}
    return {
        "desired": {**t["desired"], "$metadata": meta, "$version": t.get("desiredVersion", 1)},
        "reported": {**t["reported"], "$metadata": meta, "$version": t.get("reportedVersion", 1)},
    }


def device_json(r: Record) -> Record:
    """The Device model of the REST API (GET/PUT /devices/{id})."""
    return {
        "deviceId": r["deviceId"],
        "generationId": r["generationId"],
        "etag": r["etag"],
        "connectionState": r["connectionState"],
        "status": r["status"],
        "statusReason": r.get("statusReason"),
        "connectionStateUpdatedTime": r.get("connectionStateUpdatedTime") or "0001-01-01T00:00:00Z",
        "statusUpdatedTime": r.get("statusUpdatedTime") or "0001-01-01T00:00:00Z",
        "lastActivityTime": r.get("lastActivityTime") or "0001-01-01T00:00:00Z",
        "cloudToDeviceMessageCount": r.get("cloudToDeviceMessageCount", 0),
        "authentication": r["authentication"],
        "capabilities": r.get("capabilities", {"iotEdge": False}),
        "deviceScope": r.get("deviceScope"),
        "parentScopes": r.get("parentScopes", []),
    }


def module_json(r: Record) -> Record:
    """The Module model of the REST API (GET/PUT /devices/{id}/modules/{moduleId}), as recorded."""
    return {
        "moduleId": r["moduleId"],
        "managedBy": r.get("managedBy"),
        "deviceId": r["deviceId"],
        "generationId": r["generationId"],
        "etag": r["etag"],
        "connectionState": r["connectionState"],
        "connectionStateUpdatedTime": r.get("connectionStateUpdatedTime") or "0001-01-01T00:00:00Z",
        "lastActivityTime": r.get("lastActivityTime") or "0001-01-01T00:00:00Z",
        "cloudToDeviceMessageCount": r.get("cloudToDeviceMessageCount", 0),
        "authentication": r["authentication"],
    }


def twin_json(r: Record) -> Record:
    """The Twin model (queries, GET/PATCH/PUT /twins/{id}[/modules/{moduleId}])."""
    t = r["twin"]
    out: Record = {"deviceId": r["deviceId"]}
    if "moduleId" in r:
        out["moduleId"] = r["moduleId"]
    out.update(
        {
            "etag": t["etag"],
            "deviceEtag": r["etag"],
            "status": r["status"],
            "statusReason": r.get("statusReason"),
            "statusUpdateTime": r.get("statusUpdatedTime") or "0001-01-01T00:00:00Z",
            "connectionState": r["connectionState"],
            "lastActivityTime": r.get("lastActivityTime") or "0001-01-01T00:00:00Z",
            "cloudToDeviceMessageCount": r.get("cloudToDeviceMessageCount", 0),
            "authenticationType": r["authentication"]["type"],
            "x509Thumbprint": r["authentication"]["x509Thumbprint"],
            "version": t["version"],
            "tags": t["tags"],
            "properties": _twin_properties(t),
        }
    )
    if "moduleId" not in r:
        out["capabilities"] = r.get("capabilities", {"iotEdge": False})
        out["deviceScope"] = r.get("deviceScope")
        out["parentScopes"] = r.get("parentScopes", [])
    return out


def merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """A twin PATCH: objects merge key by key, ``null`` removes a key, anything else replaces (device twin docs)."""
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_patch(out[key], value)
        else:
            out[key] = value
    return out


def export_line(r: Record, *, exclude_keys: bool) -> Record:
    """One line of an export blob (ExportImportDevice), for a device or a module record.

    The shape follows what the service writes (DOC-BULK's example and the lines quoted in
    Azure/azure-iot-sdk-csharp#1146): ``"authentication": null`` when keys are excluded, ``statusReason`` as ``""``
    on device lines, twin properties without ``$metadata``/``$version``, ``capabilities`` on module lines too.
    """
    module = "moduleId" in r
    out: Record = {"id": r["deviceId"]}
    if module:
        out["moduleId"] = r["moduleId"]
    out["eTag"] = r["etag"]
    out["status"] = r["status"]
    if not module:
        out["statusReason"] = r.get("statusReason") or ""
    out["authentication"] = None if exclude_keys else r["authentication"]
    t = r["twin"]
    out["twinETag"] = t["etag"]
    out["tags"] = t["tags"]
    out["properties"] = {"desired": t["desired"], "reported": t["reported"]}
    out["capabilities"] = {"iotEdge": False} if module else r.get("capabilities", {"iotEdge": False})
    if not module:
        if r.get("deviceScope"):
            out["deviceScope"] = r["deviceScope"]
        if r.get("parentScopes"):
            out["parentScopes"] = r["parentScopes"]
    return out


# --- configurations (automatic device management) -------------------------------------------------------

# Ids: lower case (the C# E2E tests: "Configuration Id characters must be all lower-case"), up to 128 characters,
# no spaces and none of & ^ [ ] { } \ | " < > / (automatic device management docs).
CONFIG_ID_RE = re.compile(r"^[a-z0-9\-.+%_#*?!(),:=@$;\']{1,128}$")
CONFIG_CONTENT_KINDS = ("deviceContent", "moduleContent", "modulesContent")
CONFIG_IMPORT_MODES = ("createOrUpdateIfMatchETag",)  # the only ConfigurationImportMode (C# SDK)


def apply_configuration(body: Any, current: Record | None, *, config_id: str, now: str) -> Record:
    """The configuration a PUT (or an import line) makes of ``body``, validated; keeps ``createdTimeUtc``.

    Raises:
        LineError: 400004 for a bad id, priority or condition, 400901 InvalidConfigurationContent for content.
    """
    if not CONFIG_ID_RE.match(config_id):
        raise LineError(
            400004,
            f"Configuration id '{config_id}' is invalid: up to 128 lower-case letters, digits "
            "and - . + % _ # * ? ! ( ) , : = @ $ ; '.",
        )
    if not isinstance(body, dict):
        raise LineError(400012, "A configuration must be a JSON object.")
    if body.get("id", config_id) != config_id:
        raise LineError(400004, f"The configuration id in the body ({body.get('id')}) differs from '{config_id}'.")
    content = body.get("content") or {}
    if not isinstance(content, dict) or set(content) - set(CONFIG_CONTENT_KINDS):
        raise LineError(400901, f"'content' may hold only {', '.join(CONFIG_CONTENT_KINDS)}.")
    kinds = [k for k in CONFIG_CONTENT_KINDS if content.get(k)]
    if len(kinds) > 1:
        raise LineError(400901, f"'content' holds {' and '.join(kinds)}; a configuration has one kind of content.")
    for kind in kinds:
        if not isinstance(content[kind], dict):
            raise LineError(400901, f"'content.{kind}' must be an object.")
    if current is not None and kinds and current.get("content", {}).get(kinds[0]) not in (None, content[kinds[0]]):
        # Content is immutable once created (automatic device management docs); the swagger names the error.
        raise LineError(400901, "The content of an existing configuration cannot be changed; create a new one.")
    priority = body.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool) or priority < 0:
        raise LineError(400004, "'priority' must be a non-negative integer.")
    condition = body.get("targetCondition", "")
    if not isinstance(condition, str):
        raise LineError(400004, "'targetCondition' must be a string.")
    labels = body.get("labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise LineError(400004, "'labels' must be an object of strings.")
    metrics = body.get("metrics") or {}
    queries = metrics.get("queries") if isinstance(metrics, dict) else None
    if not isinstance(queries or {}, dict):
        raise LineError(400004, "'metrics.queries' must be an object of query strings.")
    version = int(base64.b64decode(current["etag"]).decode()) + 1 if current else 1
    return {
        "id": config_id,
        "schemaVersion": body.get("schemaVersion"),
        "labels": labels,
        "content": {k: content[k] for k in kinds},
        "targetCondition": condition,
        "createdTimeUtc": current["createdTimeUtc"] if current else now,
        "lastUpdatedTimeUtc": now,
        "priority": priority,
        "systemMetrics": {
            "results": {},
            "queries": {
                # IoT Hub query text the service shows, not SQL run anywhere.
                "targetedCount": "select deviceId from devices" + (f" where {condition}" if condition != "*" else ""),  # noqa: S608
                "appliedCount": f"select deviceId from devices where configurations.[[{config_id}]].status = "  # noqa: S608
                "'Applied'",
            },
        },
        "metrics": {"results": {}, "queries": dict(queries or {})},
        # The recorded ETags count versions: "MQ==" ("1"), then "Mg==" ("2").
        "etag": base64.b64encode(str(version).encode()).decode(),
    }


def import_configuration(line: Record, current: Record | None, *, now: str) -> Record:
    """One line of a configurations import blob (ImportConfiguration): the configuration it makes.

    Raises:
        LineError: as ``apply_configuration``; 400012 for an unknown importMode, 412001 for a stale eTag.
    """
    config_id = line.get("id")
    if not isinstance(config_id, str) or not config_id:
        raise LineError(400005, "The configuration line has no 'id'.")
    mode = line.get("importMode", "createOrUpdateIfMatchETag")
    if not isinstance(mode, str) or mode.lower() not in [m.lower() for m in CONFIG_IMPORT_MODES]:
        raise LineError(400012, f"Error converting value {json.dumps(mode)} to type 'ConfigurationImportMode'.")
    if current is not None:
        _require_etag(
            line.get("etag") or line.get("eTag"), current["etag"], f"Configuration {config_id}", config_id, "etag"
        )
    body = {k: v for k, v in line.items() if k not in ("importMode", "etag", "eTag")}
    return apply_configuration(body, current, config_id=config_id, now=now)
