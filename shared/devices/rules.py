"""The rules of the ExportImportDevice JSON-lines format, and the full check that explains every finding.

Every rule of the import format is here (from Microsoft's "Import and export IoT Hub device identities in bulk"
and the ExportImportDevice model of the service SDKs); each finding carries the line
number, the device id, the field, a stable code and a message that says what to change.
"""

from __future__ import annotations

import binascii
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, get_args

import orjson

from .fields import (
    AUTHENTICATION,
    CAPABILITIES,
    LINE,
    PROPERTIES,
    SYMMETRIC_KEY,
    X509_THUMBPRINT,
    Miss,
    Shape,
    unknown_keys,
)

# The enumerations of the format as types (the fast path decodes into them) and as the tuples the checks use.
ImportMode = Literal[
    "createOrUpdate",
    "create",
    "update",
    "updateIfMatchETag",
    "createOrUpdateIfMatchETag",
    "delete",
    "deleteIfMatchETag",
    "updateTwin",
    "updateTwinIfMatchETag",
]
Status = Literal["enabled", "disabled"]
AuthType = Literal["sas", "selfSigned", "certificateAuthority", "none"]
IMPORT_MODES: tuple[str, ...] = get_args(ImportMode)
STATUSES: tuple[str, ...] = get_args(Status)
AUTH_TYPES: tuple[str, ...] = get_args(AuthType)
DEFAULT_MODE = "createOrUpdate"
FIELDS = LINE.fields
ETAG_MODES = {"updateIfMatchETag": "eTag", "createOrUpdateIfMatchETag": "eTag", "deleteIfMatchETag": "eTag"}
TWIN_ETAG_MODES = {"updateTwinIfMatchETag"}
NO_STATUS_MODES = {"delete", "deleteIfMatchETag", "updateTwin", "updateTwinIfMatchETag"}
EDGE_SYSTEM_MODULES = ("$edgeAgent", "$edgeHub")

DEVICE_ID_RE = re.compile(r"[A-Za-z0-9\-.%_*?!(),:=@$']{1,128}")
MODULE_ID_RE = re.compile(r"[A-Za-z0-9\-.+%_#*?!(),:=@$']{1,128}")
THUMBPRINT_RE = re.compile(r"[0-9A-Fa-f]{40}|[0-9A-Fa-f]{64}")
TWIN_KEY_BAD = re.compile(r"[.$ \x00-\x1f\x7f-\x9f]")
MIN_KEY_BYTES, MAX_KEY_BYTES = 16, 64
TAGS_MAX_BYTES = 8 * 1024
PROPERTIES_MAX_BYTES = 32 * 1024
PROPERTY_VALUE_MAX_BYTES = 4 * 1024
TWIN_MAX_DEPTH = 10
STATUS_REASON_MAX = 128
MAX_LINE_BYTES = 128 * 1024  # twin limits (8 + 32 + 32 KB) plus identity fit well below this


class Code(StrEnum):
    """Stable codes of validation findings (reports and tests key on them)."""

    EMPTY_FILE = "EMPTY_FILE"
    NOT_UTF8 = "NOT_UTF8"
    WRONG_ENCODING = "WRONG_ENCODING"  # the whole file: UTF-16 or UTF-32
    COMPRESSED_FILE = "COMPRESSED_FILE"  # the whole file: gzip
    JSON_ARRAY = "JSON_ARRAY"  # the whole file: one JSON array instead of JSON lines
    CSV_FILE = "CSV_FILE"  # the whole file: a CSV (or semicolon-separated) table
    NO_DEVICE_LINES = "NO_DEVICE_LINES"  # the whole file: so many lines in, not one device line; the rest unread
    LINE_TOO_LONG = "LINE_TOO_LONG"
    INVALID_JSON = "INVALID_JSON"
    NOT_AN_OBJECT = "NOT_AN_OBJECT"
    MISSING_FIELD = "MISSING_FIELD"
    WRONG_TYPE = "WRONG_TYPE"
    FIELD_NAME_CASE = "FIELD_NAME_CASE"
    MISSPELLED_FIELD = "MISSPELLED_FIELD"
    UNKNOWN_FIELD = "UNKNOWN_FIELD"  # a warning: the hub ignores the field
    INVALID_DEVICE_ID = "INVALID_DEVICE_ID"
    INVALID_MODULE_ID = "INVALID_MODULE_ID"
    EDGE_SYSTEM_MODULE = "EDGE_SYSTEM_MODULE"
    INVALID_IMPORT_MODE = "INVALID_IMPORT_MODE"
    INVALID_STATUS = "INVALID_STATUS"
    STATUS_REASON_TOO_LONG = "STATUS_REASON_TOO_LONG"
    INVALID_AUTH_TYPE = "INVALID_AUTH_TYPE"
    INVALID_KEY = "INVALID_KEY"
    INCOMPLETE_KEY_PAIR = "INCOMPLETE_KEY_PAIR"
    KEYS_AND_THUMBPRINTS = "KEYS_AND_THUMBPRINTS"
    INVALID_THUMBPRINT = "INVALID_THUMBPRINT"
    AUTH_TYPE_MISMATCH = "AUTH_TYPE_MISMATCH"
    MISSING_ETAG = "MISSING_ETAG"
    TWIN_TOO_LARGE = "TWIN_TOO_LARGE"
    TWIN_TOO_DEEP = "TWIN_TOO_DEEP"
    INVALID_TWIN_KEY = "INVALID_TWIN_KEY"
    DUPLICATE_ID = "DUPLICATE_ID"
    # CSV sheets only (shared.devices.csvfile): the rest of a sheet's findings are those of JSON lines
    JSON_NOT_CSV = "JSON_NOT_CSV"  # the whole file: named .csv, holds JSON
    CSV_SYNTAX = "CSV_SYNTAX"  # a quote never closed, or text after a closing quote: the rest is unread
    UNKNOWN_COLUMN = "UNKNOWN_COLUMN"  # a header cell that cannot be a column (tags.a..b, overlapping twin paths)
    DUPLICATE_COLUMN = "DUPLICATE_COLUMN"
    WRONG_CELL_COUNT = "WRONG_CELL_COUNT"  # a row with more or fewer cells than the header
    INVALID_PARENT = "INVALID_PARENT"  # a parent given as a device id, not the scope the hub gave it


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem, where it is and what to change."""

    line: int
    code: Code
    message: str
    device_id: str | None = None
    module_id: str | None = None
    field: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "code": str(self.code),
            "deviceId": self.device_id,
            "moduleId": self.module_id,
            "field": self.field,
            "message": self.message,
        }


@dataclass
class ValidationReport:
    """The outcome: counts, and the first ``max_errors`` errors and ``max_warnings`` warnings in line order with
    their totals.

    An error makes the file invalid (the hub would refuse or mis-import the line); a warning does not (the hub would
    ignore what it points at, such as an unknown field), so a file with only warnings is imported.
    """

    lines: int = 0  # lines holding a device or module (blank lines excluded)
    blank_lines: int = 0
    modes: Counter[str] = field(default_factory=Counter)
    module_lines: int = 0
    errors: list[Finding] = field(default_factory=list)
    error_count: int = 0
    lines_with_errors: int = 0
    max_errors: int = 100
    warnings: list[Finding] = field(default_factory=list)
    warning_count: int = 0
    lines_with_warnings: int = 0
    max_warnings: int = 100

    @property
    def valid(self) -> bool:
        return self.error_count == 0

    def add(self, finding: Finding) -> None:
        self.error_count += 1
        if len(self.errors) < self.max_errors:
            self.errors.append(finding)

    def warn(self, finding: Finding) -> None:
        self.warning_count += 1
        if len(self.warnings) < self.max_warnings:
            self.warnings.append(finding)

    def summary(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "lines": self.lines,
            "blankLines": self.blank_lines,
            "moduleLines": self.module_lines,
            "modes": dict(self.modes),
            "errorCount": self.error_count,
            "linesWithErrors": self.lines_with_errors,
            "errors": [f.as_dict() for f in self.errors],
            "errorsShown": len(self.errors),
            "warningCount": self.warning_count,
            "linesWithWarnings": self.lines_with_warnings,
            "warnings": [f.as_dict() for f in self.warnings],
            "warningsShown": len(self.warnings),
        }


# --- hints ----------------------------------------------------------------------------------------------


def _squash(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _near(value: str, choices: Iterable[str]) -> str | None:
    key = _squash(value)
    return next((c for c in choices if _squash(c) == key), None)


def _enum_message(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if isinstance(value, str) and (hint := _near(value, choices)):
        return f"{name} '{value}' is not valid: use '{hint}' (the exact casing matters)."
    return f"{name} {_dumps(value).decode()} is not valid: use one of {', '.join(choices)}."


# --- line rules -----------------------------------------------------------------------------------------


def _depth(obj: Any) -> int:
    if isinstance(obj, dict):
        return 1 + max((_depth(v) for v in obj.values()), default=0)
    if isinstance(obj, list):
        return max((_depth(v) for v in obj), default=0)
    return 0


def _bad_twin_key(obj: Any, top: bool = True) -> str | None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if top and k in ("$metadata", "$version"):
                continue
            if len(k.encode()) > 1024 or TWIN_KEY_BAD.search(k):
                return str(k)
            bad = _bad_twin_key(v, top=False)
            if bad is not None:
                return bad
    return None


def _dumps(obj: Any) -> bytes:
    """Compact JSON; falls back to the stdlib for what orjson refuses (integers beyond 64 bits)."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _size(obj: Any) -> int:
    return len(_dumps(obj))


class LineChecker:
    """Checks one decoded line and explains every problem; appends findings to the report.

    This is the full check: every rule, every finding with what to change. Most lines never reach it, because
    ``fast.accept`` proves them valid first (see ``stream.validate_stream``).
    """

    def __init__(self, report: ValidationReport) -> None:
        self.report = report

    def check(self, obj: Any, n: int) -> tuple[str | None, str | None, str] | None:
        """Return (device id, module id, mode) for a line without findings, else None."""
        report = self.report
        if not isinstance(obj, dict):
            report.lines_with_errors += 1
            report.add(Finding(n, Code.NOT_AN_OBJECT, "Each line must be one JSON object describing a device."))
            return None
        before, warnings_before = report.error_count, report.warning_count
        dev = obj.get("id")
        did = dev if isinstance(dev, str) else None
        raw_mod = obj.get("moduleId")
        module = raw_mod if isinstance(raw_mod, str) else None

        def add(code: Code, msg: str, fld: str | None = None, mid: str | None = None) -> None:
            report.add(Finding(n, code, msg, did, mid, fld))

        id_misnamed = False

        def check_keys(section: dict[str, Any], shape: Shape, skip: frozenset[str] = frozenset()) -> None:
            """Findings for the keys of ``section`` the format does not know at ``shape`` (see ``fields``)."""
            nonlocal id_misnamed
            for key, miss, meant in unknown_keys(section, shape):
                if key in skip:
                    continue
                id_misnamed = id_misnamed or (shape is LINE and meant == "id")
                where = f" in {shape.path}" if shape.path else ""
                at = shape.where(key)
                if miss is Miss.CASE:
                    msg = f"Field '{key}'{where} is not recognised: did you mean '{meant}'?"
                    add(Code.FIELD_NAME_CASE, msg, at, module)
                elif miss is Miss.NEAR:
                    add(
                        Code.MISSPELLED_FIELD,
                        f"Field '{key}'{where} is not known; did you mean '{meant}'? The hub would drop it silently.",
                        at,
                        module,
                    )
                else:
                    report.warn(
                        Finding(
                            n,
                            Code.UNKNOWN_FIELD,
                            f"Field '{key}'{where} is not part of the format: the hub ignores it (remove it, or check "
                            "its name).",
                            did,
                            module,
                            at,
                        )
                    )

        check_keys(obj, LINE)
        if dev is None and id_misnamed:
            pass  # the field that holds it under another name ('deviceId') has its finding: one is enough
        elif dev is None:
            add(Code.MISSING_FIELD, "The line has no 'id': every line needs the device id.", "id")
        elif dev == "":
            add(Code.INVALID_DEVICE_ID, "deviceId is empty: 'id' must hold the device id (1-128 characters).", "id")
        elif not isinstance(dev, str):
            add(Code.WRONG_TYPE, "'id' must be a string.", "id")
        elif not DEVICE_ID_RE.fullmatch(dev):
            add(
                Code.INVALID_DEVICE_ID,
                f"Device id '{dev[:140]}' is invalid: use 1-128 ASCII letters, digits or - . % _ * ? ! ( ) , : = @ $ ' "
                "(no spaces, + or #).",
                "id",
            )
        mod = raw_mod
        mid = None
        if mod is not None:
            if mod == "":
                add(Code.INVALID_MODULE_ID, "moduleId is empty: give the module id, or leave it out.", "moduleId")
            elif not isinstance(mod, str) or not MODULE_ID_RE.fullmatch(mod):
                add(Code.INVALID_MODULE_ID, f"Module id {_dumps(mod).decode()[:140]} is invalid.", "moduleId")
            elif mod in EDGE_SYSTEM_MODULES:
                add(
                    Code.EDGE_SYSTEM_MODULE,
                    f"Module '{mod}' is an IoT Edge system module: the IoT Edge runtime creates it and an import "
                    "rejects it. Remove this line (exports include such lines).",
                    "moduleId",
                    mod,
                )
            else:
                mid = mod
        raw_mode = obj.get("importMode")
        mode = DEFAULT_MODE
        if raw_mode is not None:
            if raw_mode in _MODES:
                mode = raw_mode
            else:
                add(Code.INVALID_IMPORT_MODE, _enum_message("importMode", raw_mode, IMPORT_MODES), "importMode", mid)
                mode = ""
        status = obj.get("status")
        if status is None:
            if mod is None and mode and mode not in NO_STATUS_MODES:
                add(
                    Code.MISSING_FIELD,
                    f'\'status\' is required with importMode {mode}: add "status": "enabled".',
                    "status",
                )
        elif status not in STATUSES:
            add(Code.INVALID_STATUS, _enum_message("status", status, STATUSES), "status", mid)
        reason = obj.get("statusReason")
        if reason is not None and (not isinstance(reason, str) or len(reason) > STATUS_REASON_MAX):
            add(
                Code.STATUS_REASON_TOO_LONG,
                "'statusReason' must be a string of at most 128 characters.",
                "statusReason",
                mid,
            )
        etag_field = ETAG_MODES.get(mode) or ("twinETag" if mode in TWIN_ETAG_MODES else None)
        if etag_field is not None:
            etag = obj.get(etag_field)
            if not isinstance(etag, str) or not etag:
                add(
                    Code.MISSING_ETAG,
                    f"importMode {mode} needs '{etag_field}' (the current ETag, from an export or a GET); add it, or "
                    f"use a mode without IfMatchETag.",
                    etag_field,
                    mid,
                )
        for name in ("eTag", "twinETag", "deviceScope"):
            value = obj.get(name)
            if value is not None and not isinstance(value, str):
                add(Code.WRONG_TYPE, f"'{name}' must be a string.", name, mid)
        caps = obj.get("capabilities")
        if caps is not None and (not isinstance(caps, dict) or not isinstance(caps.get("iotEdge", False), bool)):
            add(Code.WRONG_TYPE, "'capabilities' must be {\"iotEdge\": true|false}.", "capabilities", mid)
        if isinstance(caps, dict):
            check_keys(caps, CAPABILITIES)
        parents = obj.get("parentScopes")
        if parents is not None and (not isinstance(parents, list) or not all(isinstance(p, str) for p in parents)):
            add(Code.WRONG_TYPE, "'parentScopes' must be a list of strings.", "parentScopes", mid)
        auth = obj.get("authentication")
        if auth is not None:
            self._auth(auth, add, check_keys, mid)
        if "tags" in obj or "properties" in obj:
            self._twin(obj, add, check_keys, mid)
        if report.warning_count != warnings_before:
            report.lines_with_warnings += 1
        if report.error_count != before:
            report.lines_with_errors += 1
            return None
        return did, mid, mode

    @staticmethod
    def _auth(auth: Any, add: Callable[..., None], check_keys: Callable[..., None], mid: str | None) -> None:
        if not isinstance(auth, dict):
            add(Code.WRONG_TYPE, "'authentication' must be an object.", "authentication", mid)
            return
        check_keys(auth, AUTHENTICATION, skip=_SAID_BELOW)
        for name, shape in _AUTH_SECTIONS:
            if isinstance(section := auth.get(name), dict):
                check_keys(section, shape)
        if "thumbprint" in auth:
            add(
                Code.FIELD_NAME_CASE,
                "'authentication.thumbprint' is not a field: use 'x509Thumbprint' "
                '({"primaryThumbprint": ..., "secondaryThumbprint": ...}).',
                "authentication.thumbprint",
                mid,
            )
        kind = auth.get("type")
        if kind is not None and kind not in AUTH_TYPES:
            add(
                Code.INVALID_AUTH_TYPE,
                _enum_message("authentication.type", kind, AUTH_TYPES),
                "authentication.type",
                mid,
            )
            kind = "?"
        keys = _pair(auth, "symmetricKey", ("primaryKey", "secondaryKey"), add, mid)
        thumbs = _pair(auth, "x509Thumbprint", ("primaryThumbprint", "secondaryThumbprint"), add, mid)
        has_keys = any(k is not None for k in keys)
        has_thumbs = any(t is not None for t in thumbs)
        if has_keys and has_thumbs:
            add(
                Code.KEYS_AND_THUMBPRINTS,
                "A device cannot have both symmetric keys and X.509 thumbprints: keep one of them.",
                "authentication",
                mid,
            )
        if has_keys:
            if keys[0] is None or keys[1] is None:
                add(
                    Code.INCOMPLETE_KEY_PAIR,
                    "Give both primaryKey and secondaryKey, or neither to have the hub generate them.",
                    "authentication.symmetricKey",
                    mid,
                )
            for name, key in zip(("primaryKey", "secondaryKey"), keys, strict=True):
                if key is None:
                    continue
                problem = _key_problem(key)
                if problem:
                    add(Code.INVALID_KEY, f"{name} {problem}", f"authentication.symmetricKey.{name}", mid)
            if kind in ("selfSigned", "certificateAuthority", "none"):
                add(
                    Code.AUTH_TYPE_MISMATCH,
                    f"authentication.type '{kind}' does not use symmetric keys: remove them or use type 'sas'.",
                    "authentication.type",
                    mid,
                )
        for name, thumb in zip(("primaryThumbprint", "secondaryThumbprint"), thumbs, strict=False):
            if thumb is not None and (not isinstance(thumb, str) or not THUMBPRINT_RE.fullmatch(thumb)):
                add(
                    Code.INVALID_THUMBPRINT,
                    f"{name} must be the certificate's SHA-1 (40 hex) or SHA-256 (64 hex) thumbprint.",
                    f"authentication.x509Thumbprint.{name}",
                    mid,
                )
        if kind == "selfSigned" and (not thumbs or thumbs[0] is None):
            add(
                Code.AUTH_TYPE_MISMATCH,
                "authentication.type 'selfSigned' needs x509Thumbprint.primaryThumbprint.",
                "authentication.x509Thumbprint",
                mid,
            )
        if has_thumbs and kind in ("sas", "certificateAuthority", "none"):
            add(
                Code.AUTH_TYPE_MISMATCH,
                f"authentication.type '{kind}' does not use thumbprints: remove them or use type 'selfSigned'.",
                "authentication.type",
                mid,
            )

    @staticmethod
    def _twin(obj: dict[str, Any], add: Callable[..., None], check_keys: Callable[..., None], mid: str | None) -> None:
        tags = obj.get("tags")
        if tags is not None:
            if not isinstance(tags, dict):
                add(Code.WRONG_TYPE, "'tags' must be an object.", "tags", mid)
            else:
                _twin_section(tags, "tags", TAGS_MAX_BYTES, add, mid)
        props = obj.get("properties")
        if props is None:
            return
        if not isinstance(props, dict):
            add(Code.WRONG_TYPE, "'properties' must be an object with 'desired' and/or 'reported'.", "properties", mid)
            return
        check_keys(props, PROPERTIES)
        for part in ("desired", "reported"):
            section = props.get(part)
            if section is None:
                continue
            name = f"properties.{part}"
            if not isinstance(section, dict):
                add(Code.WRONG_TYPE, f"'{name}' must be an object.", name, mid)
                continue
            _twin_section(section, name, PROPERTIES_MAX_BYTES, add, mid)


_META = ("$metadata", "$version")


def _twin_section(section: dict[str, Any], name: str, limit: int, add: Callable[..., None], mid: str | None) -> None:
    # Hot path: one serialization gives the size, and its brace count bounds the depth and says whether any
    # value is an object; the slow walks run only when these cheap checks cannot rule a problem out.
    dumped = _dumps(section)
    size = len(dumped)
    if size > limit:
        add(Code.TWIN_TOO_LARGE, f"Twin '{name}' is {size} bytes: the limit is {limit // 1024} KB.", name, mid)
    braces = dumped.count(b"{")
    if braces > TWIN_MAX_DEPTH and _depth(section) > TWIN_MAX_DEPTH:
        add(Code.TWIN_TOO_DEEP, f"'{name}' nests deeper than 10 levels.", name, mid)
    keys = (
        "".join(k for k in section if k not in _META)
        if ("$metadata" in section or "$version" in section)
        else "".join(section)
    )
    if TWIN_KEY_BAD.search(keys) or len(keys) > 1024 or braces > 1:
        bad = _bad_twin_key(section)
        if bad is not None:
            add(
                Code.INVALID_TWIN_KEY,
                f"Key '{bad[:60]}' in '{name}' is not allowed: keys cannot contain '.', '$', spaces or control "
                "characters, nor exceed 1 KB.",
                name,
                mid,
            )
    if size > PROPERTY_VALUE_MAX_BYTES:
        for key, value in section.items():
            if key not in _META and isinstance(value, (dict, list, str)) and _size(value) > PROPERTY_VALUE_MAX_BYTES:
                add(Code.TWIN_TOO_LARGE, f"'{name}.{key[:60]}' exceeds 4 KB.", f"{name}.{key[:60]}", mid)


def _pair(
    auth: dict[str, Any], name: str, fields: tuple[str, str], add: Callable[..., None], mid: str | None
) -> list[Any]:
    """The two values of ``authentication.<name>`` (keys or thumbprints); none when it is absent or not an object."""
    section = auth.get(name)
    if section is None:
        return []
    if not isinstance(section, dict):
        add(Code.WRONG_TYPE, f"'authentication.{name}' must be an object.", f"authentication.{name}", mid)
        return []
    return [section.get(fields[0]), section.get(fields[1])]


def _key_problem(key: Any) -> str | None:
    if not isinstance(key, str):
        return "must be a base64 string."
    try:
        raw = binascii.a2b_base64(key, strict_mode=True)
    except (binascii.Error, ValueError):
        return "is not valid base64."
    if not MIN_KEY_BYTES <= len(raw) <= MAX_KEY_BYTES:
        return f"decodes to {len(raw)} bytes: keys must be {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes (32 is usual)."
    return None


# 'thumbprint' in authentication has its own finding with the shape to use, in ``_auth``.
_SAID_BELOW = frozenset({"thumbprint"})
_AUTH_SECTIONS = (("symmetricKey", SYMMETRIC_KEY), ("x509Thumbprint", X509_THUMBPRINT))
_MODES = frozenset(IMPORT_MODES)
