"""The keys each object of the ExportImportDevice format may hold, and what an unknown key is a near miss of.

The hub drops a key it does not know without a word: ``"tag"`` for ``"tags"`` imports a device without its tags,
``"symetricKey"`` one with generated keys. So every structural object of a line (the line, ``authentication``,
``symmetricKey``, ``x509Thumbprint``, ``capabilities``, ``properties``) is held to its known keys. Twin ``tags``
and the names inside ``desired``/``reported`` are the user's own data and are never judged here.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum

# Fields that exports, and the service's other device and twin models, carry and an import ignores. Backups are
# restored from exports and some files are built from REST or query output, so these are known, never reported.
SERVICE_FIELDS = frozenset(
    {
        "$metadata",
        "$version",
        "version",
        "generationId",
        "deviceEtag",
        "statusUpdatedTime",
        "statusUpdateTime",  # the twin model's spelling
        "connectionState",
        "connectionStateUpdatedTime",
        "lastActivityTime",
        "cloudToDeviceMessageCount",
        "authenticationType",
        "modelId",
        "managedBy",
    }
)


@dataclass(frozen=True, slots=True)
class Shape:
    """One object of the format: the keys the hub reads, and the ones it is known to ignore."""

    path: str  # where the object is in a line, "" for the line itself
    fields: tuple[str, ...]
    ignored: frozenset[str] = frozenset()
    known: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "known", frozenset(self.fields) | self.ignored)

    def where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key


class Miss(Enum):
    """How an unknown key relates to the fields of its object."""

    CASE = "case"  # the same name but for case or punctuation: 'ImportMode', 'primary_key'
    NEAR = "near"  # a typo of a field: 'tag', 'symetricKey', 'desierd'
    UNKNOWN = "unknown"  # like no field of the object: the hub ignores it


def _squash(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def distance(a: str, b: str) -> int:
    """Edit distance counting a swap of two neighbours as one edit (optimal string alignment)."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        row = [i]
        for j, cb in enumerate(b, 1):
            cost = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cost = min(cost, prev2[j - 2] + 1)
            row.append(cost)
        prev2, prev = prev, row
    return prev[-1]


def _allowed(name: str) -> int:
    # One edit in a short name already reaches other words ('id' -> 'ip'); two in a longer one are still a typo.
    return 0 if len(name) <= 2 else 1 if len(name) <= 4 else 2


def _common_prefix(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def near_miss(key: str, shape: Shape, present: Mapping[str, object]) -> tuple[Miss, str | None]:
    """What an unknown ``key`` of an object is: the field it is a slip of (case first, then typos), or unknown.

    A typo is a few edits away ('symetricKey', 'desierd') or most of the name ('module', 'primary'); among
    several, the closest wins, and at a tie the one it starts like ('tag' is 'tags', not 'eTag'). A field the object
    already holds is no candidate for a typo: beside a real 'status', 'state' is some other data. A case slip is one
    whatever else the object holds ('Status' beside 'status' is still a slip).
    """
    for miss, name in _candidates(key, shape):
        if miss is Miss.CASE or name not in present:
            return miss, name
    return Miss.UNKNOWN, None


# Files repeat their keys on every line: a file of a million lines of some other object (sensor readings, a CSV
# export turned JSON) asks about the same few keys a million times, and ranking one costs a few hundred
# microseconds (edit distance and difflib against every field). So each (key, object) is ranked once.
@functools.lru_cache(maxsize=4096)
def _candidates(key: str, shape: Shape) -> tuple[tuple[Miss, str], ...]:
    """The fields ``key`` may be a slip of, best first: a case slip alone if there is one; else its alias and the
    typo candidates (the caller drops those the object already holds)."""
    squashed = _squash(key)
    for name in shape.fields:
        if _squash(name) == squashed:
            return ((Miss.CASE, name),)
    found: list[tuple[Miss, str]] = []
    alias = _ALIASES.get((shape.path, squashed))
    if alias is not None:
        found.append((Miss.NEAR, alias))
    lowered = key.lower()
    if len(lowered) > 2 * _LONGEST:  # far longer than any field: no typo of one (and costly to compare)
        return tuple(found)
    ranked: list[tuple[float, int, int, str]] = []
    for name in shape.fields:
        target = name.lower()
        d = distance(lowered, target)
        ratio = difflib.SequenceMatcher(None, lowered, target).ratio()
        if d <= _allowed(name) or ratio >= _RATIO:
            ranked.append((-ratio, d, -_common_prefix(lowered, target), name))
    found += [(Miss.NEAR, rank[3]) for rank in sorted(ranked)]
    return tuple(found)


# Names other tools give a field (IoT Central, the portal's CSV, the device SDKs say 'deviceId'), too far from it
# for the typo rules: (shape path, squashed name) -> the field meant.
_ALIASES = {("", "deviceid"): "id", ("", "device"): "id", ("", "moduleid"): "moduleId"}
_LONGEST = 32  # longer than any field name of the format ('connectionStateUpdatedTime' is 26)
_RATIO = 0.8  # difflib's closeness past which most of the name is there (its own default, 0.6, reaches 'mode')


def unknown_keys(obj: Mapping[str, object], shape: Shape) -> Iterator[tuple[str, Miss, str | None]]:
    """(key, how it misses, the field meant) for each key of ``obj`` that is not known at ``shape``."""
    known = shape.known
    for key in obj:
        if key not in known:
            miss, name = near_miss(key, shape, obj)
            yield key, miss, name


LINE = Shape(
    "",
    (
        "id",
        "moduleId",
        "eTag",
        "importMode",
        "status",
        "statusReason",
        "authentication",
        "twinETag",
        "tags",
        "properties",
        "capabilities",
        "deviceScope",
        "parentScopes",
    ),
    SERVICE_FIELDS,
)
AUTHENTICATION = Shape("authentication", ("type", "symmetricKey", "x509Thumbprint"))
SYMMETRIC_KEY = Shape("authentication.symmetricKey", ("primaryKey", "secondaryKey"))
X509_THUMBPRINT = Shape("authentication.x509Thumbprint", ("primaryThumbprint", "secondaryThumbprint"))
CAPABILITIES = Shape("capabilities", ("iotEdge",))
# The twin's metadata lives inside desired and reported; beside them it would be the service's too, never a typo.
PROPERTIES = Shape("properties", ("desired", "reported"), frozenset({"$metadata", "$version"}))
