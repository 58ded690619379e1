"""Devices as a CSV sheet, on the client's side: the empty sheet ``iotjobs template csv`` prints, and a backup's
JSON lines written as rows (``iotjobs export --csv``).

The app reads sheets (``shared.devices.csvfile``); this package is installed on its own and does not import the
app's code, so the columns are written out here too, and a unit test holds the two lists to each other.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from typing import IO, Any

COLUMNS = (
    "id",
    "moduleId",
    "importMode",
    "status",
    "statusReason",
    "authType",
    "primaryKey",
    "secondaryKey",
    "primaryThumbprint",
    "secondaryThumbprint",
    "edge",
    "parent",
    "eTag",
    "twinETag",
)
KEY_COLUMNS = ("primaryKey", "secondaryKey")
_TEMPLATE_COLUMNS = (*COLUMNS[:12], "tags.site", "tags.floor", "desired.telemetryInterval")
_EXAMPLES = (
    # A device with keys the hub generates, two tags and a desired property typed as a number.
    ["sensor-0001", "", "createOrUpdate", "enabled", "", "sas", "", "", "", "", "false", "", "plant-a", "3", "30"],
    # An IoT Edge gateway authenticated by X.509 thumbprints, disabled until it is installed.
    [
        "gateway-01",
        "",
        "createOrUpdate",
        "disabled",
        "not installed yet",
        "selfSigned",
        "",
        "",
        "9B5F4A8E33C1D2A6B7E8F90A1B2C3D4E5F60718A",
        "1A2B3C4D5E6F708192A3B4C5D6E7F8091A2B3C4D",
        "true",
        "",
        "plant-a",
        "0",
        "",
    ],
)


def template() -> str:
    """The header and two example rows, comma-separated with CRLF line ends (RFC 4180, what Excel writes)."""
    out = _Text()
    writer = csv.writer(out)
    writer.writerow(_TEMPLATE_COLUMNS)
    writer.writerows(_EXAMPLES)
    return out.text


def twin_columns(lines: Iterable[bytes]) -> list[str]:
    """The ``tags.<path>`` and ``desired.<path>`` columns that hold every twin value of ``lines``: one per leaf
    path, except where one device has an object at a path another has a value at (the shorter path then holds the
    object as JSON, since the two columns could not both be read back)."""
    paths: set[tuple[str, ...]] = set()
    for line in lines:
        doc = _doc(line)
        if doc is None:
            continue
        for prefix, section in _sections(doc):
            paths.update((prefix, *p) for p in _leaves(section))
    kept = sorted(p for p in paths if not any(p[:i] in paths for i in range(2, len(p))))
    return [".".join(p) for p in kept]


def rows(lines: Iterable[bytes], twin: list[str], *, keys: bool) -> Iterator[list[str]]:
    """The header row, then one row per device or module line of an export (keys only with ``keys``)."""
    columns = [c for c in COLUMNS if keys or c not in KEY_COLUMNS]
    yield [*columns, *twin]
    paths = [tuple(t.split(".")) for t in twin]
    for line in lines:
        doc = _doc(line)
        if doc is None:
            continue
        auth = doc.get("authentication") or {}
        sym = auth.get("symmetricKey") or {}
        thumbs = auth.get("x509Thumbprint") or {}
        edge = bool((doc.get("capabilities") or {}).get("iotEdge", False))
        parents = doc.get("parentScopes") or []
        # An Edge device's deviceScope is its own; its parent is in parentScopes. A leaf device's deviceScope is
        # its parent's scope.
        parent = (parents[0] if parents else "") if edge else (doc.get("deviceScope") or "")
        values = {
            "id": doc.get("id") or "",
            "moduleId": doc.get("moduleId") or "",
            "status": doc.get("status") or "",
            "statusReason": doc.get("statusReason") or "",
            "authType": auth.get("type") or "",
            "primaryKey": sym.get("primaryKey") or "",
            "secondaryKey": sym.get("secondaryKey") or "",
            "primaryThumbprint": thumbs.get("primaryThumbprint") or "",
            "secondaryThumbprint": thumbs.get("secondaryThumbprint") or "",
            "edge": "" if doc.get("moduleId") else ("true" if edge else "false"),
            "parent": parent,
        }
        twin_docs = dict(_sections(doc))
        yield [str(values.get(c, "")) for c in columns] + [_cell(_at(twin_docs, p)) for p in paths]


def write(out: IO[str], table: Iterable[list[str]]) -> int:
    """Write rows to ``out`` (opened with ``newline=""``); how many device rows."""
    writer = csv.writer(out)
    n = -1
    for row in table:
        writer.writerow(row)
        n += 1
    return max(n, 0)


_MISSING = object()


def _doc(line: bytes) -> dict[str, Any] | None:
    line = line.strip()
    if not line:
        return None
    doc = json.loads(line)
    return doc if isinstance(doc, dict) else None


def _sections(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    tags = doc.get("tags")
    if isinstance(tags, dict):
        yield "tags", tags
    desired = (doc.get("properties") or {}).get("desired")
    if isinstance(desired, dict):
        yield "desired", {k: v for k, v in desired.items() if k not in ("$metadata", "$version")}


def _leaves(section: dict[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for key, value in section.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, (*path, key))
        else:
            yield (*path, key)


def _at(sections: dict[str, dict[str, Any]], path: tuple[str, ...]) -> Any:
    node: Any = sections.get(path[0], _MISSING)
    for key in path[1:]:
        if not isinstance(node, dict) or key not in node:
            return _MISSING
        node = node[key]
    return node


def _cell(value: Any) -> str:
    """A twin value as the sheet reader types it back: text as itself unless it would read as something else
    (JSON such as '42', surrounding spaces, empty), every other value as JSON."""
    if value is _MISSING:
        return ""
    if isinstance(value, str) and value and value == value.strip() and not _is_json(value):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


class _Text:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, s: str) -> int:
        self.parts.append(s)
        return len(s)

    @property
    def text(self) -> str:
        return "".join(self.parts)
