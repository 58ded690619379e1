"""The fast path: proves a line of the usual shapes valid without building a Python dict for it.

Almost every line of a real devices file is one of a few shapes: an id, a status and an import mode, with or
without keys or thumbprints, with or without flat tags and desired properties. ``accept`` decodes such a line
straight into typed structs (msgspec, in C: types, enums and unknown fields are checked while parsing) and then
checks what a type cannot say (id characters, base64 keys, thumbprints, twin key characters) with C-level string
methods. It only ever accepts: anything it cannot prove valid, it leaves to ``rules.LineChecker``, which explains
what is wrong. A property test holds the two to that contract (``tests/unit/test_devices_validator.py``).
"""

from __future__ import annotations

import binascii
from typing import Literal

import msgspec

from .rules import (
    MAX_KEY_BYTES,
    MIN_KEY_BYTES,
    NO_STATUS_MODES,
    PROPERTY_VALUE_MAX_BYTES,
    TWIN_KEY_BAD,
)

# The modes, statuses and auth types a fast line may have. Literal types must be spelt out for the type checker;
# a unit test checks them against the rules' tuples.
FastMode = Literal["createOrUpdate", "create", "update", "delete", "updateTwin"]
FastStatus = Literal["enabled", "disabled"]
FastAuthType = Literal["sas", "selfSigned", "certificateAuthority", "none"]
Scalar = str | int | float | bool | None

# A float can print up to 4.5 times longer than it is written ("1e15" is 1000000000000000.0), and nothing else in a
# line grows when the full check re-serializes it. A line this short therefore cannot hold a twin section or value
# over the smallest size limit (4 KB per property value), nor a twin key over 1 KB: the sizes need no measuring.
FAST_LINE_MAX = PROPERTY_VALUE_MAX_BYTES * 2 // 9

# What DEVICE_ID_RE allows, for str.strip (a unit test checks the two agree on every ASCII character).
_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-.%_*?!(),:=@$'"
_HEX = "0123456789abcdefABCDEF"
_BAD_TWIN_KEY = TWIN_KEY_BAD.search
_a2b = binascii.a2b_base64


class _SymmetricKey(msgspec.Struct, forbid_unknown_fields=True):
    primaryKey: str
    secondaryKey: str


class _X509(msgspec.Struct, forbid_unknown_fields=True):
    primaryThumbprint: str
    secondaryThumbprint: str | None = None


class _Authentication(msgspec.Struct, forbid_unknown_fields=True):
    type: FastAuthType | None = None
    symmetricKey: _SymmetricKey | None = None
    x509Thumbprint: _X509 | None = None


class _Properties(msgspec.Struct, forbid_unknown_fields=True):
    desired: dict[str, Scalar] | None = None
    reported: dict[str, Scalar] | None = None


class _Line(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    importMode: FastMode = "createOrUpdate"
    status: FastStatus | None = None
    authentication: _Authentication | None = None
    tags: dict[str, Scalar] | None = None
    properties: _Properties | None = None


_decode = msgspec.json.Decoder(_Line).decode
_NOT_FAST = (msgspec.DecodeError, ValueError)  # a ValidationError is a DecodeError; bad UTF-8 a ValueError


def accept(raw: bytes) -> tuple[str, str] | None:
    """(device id, import mode) when the line is certainly valid; None when the full check must look at it."""
    # Escapes go to the full check: one could hide a lone surrogate, which the two parsers do not treat alike.
    if len(raw) > FAST_LINE_MAX or b"\\" in raw:
        return None
    try:
        line = _decode(raw)
    except _NOT_FAST:
        return None
    dev = line.id
    if not 0 < len(dev) <= 128 or dev.strip(_ID_CHARS):
        return None
    mode = line.importMode
    if line.status is None and mode not in NO_STATUS_MODES:
        return None
    auth = line.authentication
    if auth is not None:
        keys, thumbs, kind = auth.symmetricKey, auth.x509Thumbprint, auth.type
        if keys is not None:
            if thumbs is not None or kind not in (None, "sas"):
                return None
            if not (_key_ok(keys.primaryKey) and _key_ok(keys.secondaryKey)):
                return None
        elif thumbs is not None:
            if kind not in (None, "selfSigned") or not _thumb_ok(thumbs.primaryThumbprint):
                return None
            if thumbs.secondaryThumbprint is not None and not _thumb_ok(thumbs.secondaryThumbprint):
                return None
        elif kind == "selfSigned":
            return None
    # Twin keys: the sections are flat (their values are scalars by type), so checking the top-level keys of each
    # is checking them all. '$metadata' and '$version' fall to the full check through the '$'.
    keys_text = "".join(line.tags) if line.tags else ""
    props = line.properties
    if props is not None:
        if props.desired:
            keys_text += "".join(props.desired)
        if props.reported:
            keys_text += "".join(props.reported)
    if keys_text and not keys_text.isalnum() and _BAD_TWIN_KEY(keys_text):
        return None
    return dev, mode


def _key_ok(key: str) -> bool:
    # The same test as the full check's (strict base64, 16-64 bytes), without building a message.
    try:
        return MIN_KEY_BYTES <= len(_a2b(key, strict_mode=True)) <= MAX_KEY_BYTES
    except ValueError:  # binascii.Error, and non-ASCII text
        return False


def _thumb_ok(thumb: str) -> bool:
    return len(thumb) in (40, 64) and not thumb.strip(_HEX)
