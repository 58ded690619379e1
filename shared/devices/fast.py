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
_NEEDS_TWIN_ETAG = frozenset(TWIN_ETAG_MODES)
_IF_MATCH_MODES = frozenset(ETAG_MODES) | _NEEDS_TWIN_ETAG  # the modes that need eTag, or twinETag
_META = ("$metadata", "$version")


# A key is decoded from strict base64 and its length checked in C, as a ``bytes`` field: what msgspec accepts as
# base64 the full check's ``binascii.a2b_base64(strict_mode=True)`` accepts too (a property test holds them to it).
_Key = Annotated[bytes, msgspec.Meta(min_length=MIN_KEY_BYTES, max_length=MAX_KEY_BYTES)]
_Thumb = Annotated[str, msgspec.Meta(min_length=40, max_length=64)]
_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


# gc=False: these structs hold no cycles, and untracked objects cost the cyclic collector nothing when a million
# of them pass through (a tracked struct per line made collections a large share of the time).
class _SymmetricKey(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    primaryKey: _Key | None = None
    secondaryKey: _Key | None = None


class _X509(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    primaryThumbprint: _Thumb | None = None
    secondaryThumbprint: _Thumb | None = None


class _Authentication(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    type: AuthType | None = None
    symmetricKey: _SymmetricKey | None = None
    x509Thumbprint: _X509 | None = None


class _Capabilities(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    iotEdge: bool = False


class _Properties(msgspec.Struct, Generic[V], forbid_unknown_fields=True, gc=False):
    desired: dict[str, V] | None = None
    reported: dict[str, V] | None = None


class _Line(msgspec.Struct, Generic[V], forbid_unknown_fields=True, gc=False):
    id: _Id
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
# being restored), told apart by a substring search so that neither shape pays for the other.
_decode = msgspec.json.Decoder(_Line[Scalar]).decode
_decode_exported = msgspec.json.Decoder(_Line[MetaValue]).decode
_NOT_FAST = (msgspec.DecodeError, ValueError)  # a ValidationError is a DecodeError; bad UTF-8 a ValueError


def accept(raw: bytes) -> tuple[str, str] | None:
    """(device id, import mode) when the line is certainly valid; None when the full check must look at it."""
    ids: list[str] = []
    modes: list[str] = []
    accept_run([raw], 0, ids, modes)
    return (ids[0], modes[0]) if ids else None


def accept_run(batch: list[bytes | None], start: int, ids: list[str], modes: list[str]) -> int:
    """Accept lines from ``batch[start]`` on while each is certainly valid; the index of the first that is not.

    The id and import mode of each accepted line are appended to ``ids`` and ``modes``. One call covers a run of
    lines (all of a valid file's batch, usually), so the hot loop pays no call per line. ``None`` (an over-long
    line) and anything this cannot prove valid end the run: the caller gives that line to the full check.
    """
    add_id, add_mode = ids.append, modes.append
    decode, decode_exported, not_fast = _decode, _decode_exported, _NOT_FAST
    for i in range(start, len(batch)):
        raw = batch[i]
        # Escapes go to the full check: one could hide a lone surrogate, which the two parsers do not treat alike.
        if raw is None or len(raw) > FAST_LINE_MAX or b"\\" in raw:
            return i
        # A line exported from a hub (twin metadata) goes straight to its own shape, so it is decoded once.
        exported = b'"$metadata"' in raw
        try:
            line: _Line[Any] = decode_exported(raw) if exported else decode(raw)
        except not_fast:
            return i
        dev = line.id
        if dev.strip(_ID_CHARS):  # its length (1-128) is the type's
            return i
        mode = line.importMode or DEFAULT_MODE
        if line.status is None and mode not in NO_STATUS_MODES:
            return i
        if mode in _IF_MATCH_MODES and not (line.twinETag if mode in _NEEDS_TWIN_ETAG else line.eTag):
            return i
        auth = line.authentication
        if auth is not None:
            # The usual shape decided inline: a SAS device with both keys (base64 decoded and sized by the type).
            keys = auth.symmetricKey
            if not (
                keys is not None
                and auth.x509Thumbprint is None
                and keys.primaryKey is not None
                and keys.secondaryKey is not None
                and auth.type in (None, "sas")
            ) and not _authentication_ok(auth):
                return i
        # Twin keys: values are scalars by type, so the top-level keys of each section are all its keys.
        tags, props = line.tags, line.properties
        if exported:
            keys_text = _exported_twin_keys(tags, props)
            if keys_text is None:
                return i
        else:
            keys_text = "".join(tags) if tags else ""
            if props is not None:
                if props.desired:
                    keys_text += "".join(props.desired)
                if props.reported:
                    keys_text += "".join(props.reported)
        if keys_text and not keys_text.isalnum() and _BAD_TWIN_KEY(keys_text):
            return i
        add_id(dev)
        add_mode(mode)
    return len(batch)


def _authentication_ok(auth: _Authentication) -> bool:
    """The full check's authentication rules, for what the types let through (keys are valid base64 of 16-64
    bytes, thumbprints 40-64 characters, by type)."""
    kind, keys, thumbs = auth.type, auth.symmetricKey, auth.x509Thumbprint
    k1, k2 = (None, None) if keys is None else (keys.primaryKey, keys.secondaryKey)
    if thumbs is None or (thumbs.primaryThumbprint is None and thumbs.secondaryThumbprint is None):
        if k1 is None and k2 is None:
            return kind != "selfSigned"  # it needs a primary thumbprint
        return kind in (None, "sas") and k1 is not None and k2 is not None
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


def _thumb_ok(thumb: str) -> bool:
    return len(thumb) in (40, 64) and not thumb.strip(_HEX)
