"""The fast path: proves a line of the usual shapes valid without building a Python dict for it.

Almost every line of a real devices file is one of a few shapes: an id, a status and an import mode, with or
without keys or thumbprints, with or without flat tags and desired properties; or a line exported from a hub, with
ETags, capabilities and twin metadata. ``accept`` decodes such a line
straight into typed structs (msgspec, in C: types, enums and unknown fields are checked while parsing) and then
checks what a type cannot say (id characters, base64 keys, thumbprints, twin key characters) with C-level string
methods. It only ever accepts: anything it cannot prove valid, it leaves to ``rules.LineChecker``, which explains
what is wrong. A property test holds the two to that contract (``tests/unit/test_devices_validator.py``).
"""

from __future__ import annotations

import binascii
from typing import Annotated, Any, Generic, TypeVar

import msgspec

from .rules import (
    DEFAULT_MODE,
    ETAG_MODES,
    MAX_KEY_BYTES,
    MIN_KEY_BYTES,
    NO_STATUS_MODES,
    PROPERTY_VALUE_MAX_BYTES,
    STATUS_REASON_MAX,
    TWIN_ETAG_MODES,
    TWIN_KEY_BAD,
    AuthType,
    ImportMode,
    Status,
)

Scalar = str | int | float | bool | None
# Exports carry twin metadata: "$metadata" maps property names to {"$lastUpdated": ...} objects, one level down.
MetaValue = Scalar | dict[str, Scalar | dict[str, Scalar]]
V = TypeVar("V")

# A float can print up to 4.5 times longer than it is written ("1e15" is 1000000000000000.0), and nothing else in a
# line grows when the full check re-serializes it. A line this short therefore cannot hold a twin section or value
# over the smallest size limit (4 KB per property value), nor a twin key over 1 KB: the sizes need no measuring.
FAST_LINE_MAX = PROPERTY_VALUE_MAX_BYTES * 2 // 9

# What DEVICE_ID_RE allows, for str.strip (a unit test checks the two agree on every ASCII character).
_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-.%_*?!(),:=@$'"
_HEX = "0123456789abcdefABCDEF"
_BAD_TWIN_KEY = TWIN_KEY_BAD.search
_a2b = binascii.a2b_base64
_NEEDS_TWIN_ETAG = frozenset(TWIN_ETAG_MODES)
_IF_MATCH_MODES = frozenset(ETAG_MODES) | _NEEDS_TWIN_ETAG  # the modes that need eTag, or twinETag
_META = ("$metadata", "$version")


class _SymmetricKey(msgspec.Struct, forbid_unknown_fields=True):
    primaryKey: str | None = None
    secondaryKey: str | None = None


class _X509(msgspec.Struct, forbid_unknown_fields=True):
    primaryThumbprint: str | None = None
    secondaryThumbprint: str | None = None


class _Authentication(msgspec.Struct, forbid_unknown_fields=True):
    type: AuthType | None = None
    symmetricKey: _SymmetricKey | None = None
    x509Thumbprint: _X509 | None = None


class _Capabilities(msgspec.Struct, forbid_unknown_fields=True):
    iotEdge: bool = False


class _Properties(msgspec.Struct, Generic[V], forbid_unknown_fields=True):
    desired: dict[str, V] | None = None
    reported: dict[str, V] | None = None


class _Line(msgspec.Struct, Generic[V], forbid_unknown_fields=True):
    id: str
    importMode: ImportMode | None = None
    status: Status | None = None
    statusReason: Annotated[str, msgspec.Meta(max_length=STATUS_REASON_MAX)] | None = None
    eTag: str | None = None
    twinETag: str | None = None
    authentication: _Authentication | None = None
    tags: dict[str, V] | None = None
    properties: _Properties[V] | None = None
    capabilities: _Capabilities | None = None
    deviceScope: str | None = None
    parentScopes: list[str] | None = None


# Two decoders: flat twins for the usual lines, and twins with "$metadata" for lines exported from a hub (a backup
# being restored), told apart by a substring search so that the usual lines pay nothing for the second shape.
_decode = msgspec.json.Decoder(_Line[Scalar]).decode
_decode_exported = msgspec.json.Decoder(_Line[MetaValue]).decode
_NOT_FAST = (msgspec.DecodeError, ValueError)  # a ValidationError is a DecodeError; bad UTF-8 a ValueError


def accept(raw: bytes) -> tuple[str, str] | None:
    """(device id, import mode) when the line is certainly valid; None when the full check must look at it."""
    # Escapes go to the full check: one could hide a lone surrogate, which the two parsers do not treat alike.
    if len(raw) > FAST_LINE_MAX or b"\\" in raw:
        return None
    exported = False
    try:
        line: _Line[Any] = _decode(raw)
    except _NOT_FAST:
        # Only a line that fails the usual shape pays for the exported one.
        if b'"$metadata"' not in raw:
            return None
        try:
            line = _decode_exported(raw)
        except _NOT_FAST:
            return None
        exported = True
    dev = line.id
    if not 0 < len(dev) <= 128 or dev.strip(_ID_CHARS):
        return None
    mode = line.importMode or DEFAULT_MODE
    if line.status is None and mode not in NO_STATUS_MODES:
        return None
    if mode in _IF_MATCH_MODES and not (line.twinETag if mode in _NEEDS_TWIN_ETAG else line.eTag):
        return None
    if line.authentication is not None and not _authentication_ok(line.authentication):
        return None
    # Twin keys: values are scalars by type, so the top-level keys of each section are all its keys.
    tags, props = line.tags, line.properties
    if exported:
        keys_text = _exported_twin_keys(tags, props)
        if keys_text is None:
            return None
    else:
        keys_text = "".join(tags) if tags else ""
        if props is not None:
            if props.desired:
                keys_text += "".join(props.desired)
            if props.reported:
                keys_text += "".join(props.reported)
    if keys_text and not keys_text.isalnum() and _BAD_TWIN_KEY(keys_text):
        return None
    return dev, mode


def _authentication_ok(auth: _Authentication) -> bool:
    """The full check's authentication rules, for what the types let through; the usual shapes are decided first."""
    kind, keys, thumbs = auth.type, auth.symmetricKey, auth.x509Thumbprint
    k1, k2 = (None, None) if keys is None else (keys.primaryKey, keys.secondaryKey)
    if thumbs is None or (thumbs.primaryThumbprint is None and thumbs.secondaryThumbprint is None):
        if k1 is None and k2 is None:
            return kind != "selfSigned"  # it needs a primary thumbprint
        return kind in (None, "sas") and k1 is not None and k2 is not None and _key_ok(k1) and _key_ok(k2)
    if k1 is not None or k2 is not None or kind not in (None, "selfSigned"):
        return False
    t1, t2 = thumbs.primaryThumbprint, thumbs.secondaryThumbprint
    if t1 is None:
        return kind is None and t2 is not None and _thumb_ok(t2)
    return _thumb_ok(t1) and (t2 is None or _thumb_ok(t2))


def _exported_twin_keys(tags: dict[str, MetaValue] | None, props: _Properties[MetaValue] | None) -> str | None:
    """The keys to check in an exported line's twin, or None when a section holds an object outside "$metadata".

    The full check skips "$metadata" and "$version" at the top of a section and does not look into them; so does this.
    """
    keys_text = ""
    for section in (tags, props and props.desired, props and props.reported):
        if section:
            if not _metadata_only(section):
                return None
            keys_text += "".join(k for k in section if k not in _META)
    return keys_text


def _metadata_only(section: dict[str, MetaValue]) -> bool:
    """No object in the section but under "$metadata" (which the full check does not look into); the types let
    exported lines have objects anywhere, one level deep, so this keeps every other value a scalar."""
    objects = list(map(type, section.values())).count(dict)
    return objects == 0 or (objects == 1 and type(section.get("$metadata")) is dict)


def _key_ok(key: str) -> bool:
    # The same test as the full check's (strict base64, 16-64 bytes), without building a message.
    try:
        return MIN_KEY_BYTES <= len(_a2b(key, strict_mode=True)) <= MAX_KEY_BYTES
    except ValueError:  # binascii.Error, and non-ASCII text
        return False


def _thumb_ok(thumb: str) -> bool:
    return len(thumb) in (40, 64) and not thumb.strip(_HEX)
