"""The rollback's comparison of a device now with what an import made of it (``shared.fleet.undo``), on the lines an
export really holds: a device the import left as it wanted has not moved, whatever the export writes as null."""

from __future__ import annotations

from typing import Any

from shared.fleet.join import Device
from shared.fleet.plan import field_diff
from shared.fleet.undo import Inverse

THUMB = "9F3B2A1C4D5E6F708192A3B4C5D6E7F8091A2B3C"


def export_line(status: str) -> dict[str, Any]:
    """A self-signed device as an export writes it: the secondary thumbprint it was never given is null."""
    return {
        "id": "camera",
        "eTag": "AAAAAAAAAAE=",
        "status": status,
        "authentication": {
            "type": "selfSigned",
            "x509Thumbprint": {"primaryThumbprint": THUMB, "secondaryThumbprint": None},
        },
        "capabilities": {"iotEdge": False},
        "tags": {},
        "properties": {"desired": {}},
    }


def undo(line: dict[str, Any], now: dict[str, Any]) -> tuple[Inverse, list[bytes]]:
    record = {"id": "camera", "before": [export_line("enabled")], "lines": [[1, line]]}
    inverse, out = Inverse(), list[bytes]()
    inverse.add(Device("camera", [(0, record)], {None: now}), out.append)
    return inverse, out


def test_an_x509_update_without_a_secondary_thumbprint_is_undone_not_refused() -> None:
    line = {
        "id": "camera",
        "importMode": "update",
        "status": "disabled",
        "authentication": {"type": "selfSigned", "x509Thumbprint": {"primaryThumbprint": THUMB}},
    }
    inverse, out = undo(line, export_line("disabled"))
    assert (inverse.moved_count, inverse.lines, inverse.modes) == (0, 1, {"createOrUpdate": 1})
    assert b'"status":"enabled"' in out[0]


def test_a_device_changed_by_someone_else_since_still_counts_as_moved() -> None:
    line = {
        "id": "camera",
        "importMode": "update",
        "status": "disabled",
        "authentication": {"type": "selfSigned", "x509Thumbprint": {"primaryThumbprint": THUMB}},
    }
    other = export_line("disabled")
    other["authentication"]["x509Thumbprint"]["secondaryThumbprint"] = "A" * 40
    inverse, _ = undo(line, other)
    assert inverse.moved == ["camera"]


def test_the_plan_does_not_call_an_unchanged_thumbprint_changed() -> None:
    line = {
        "id": "camera",
        "importMode": "update",
        "status": "disabled",
        "authentication": {"type": "selfSigned", "x509Thumbprint": {"primaryThumbprint": THUMB}},
    }
    identity, _ = field_diff(line, export_line("enabled"))
    assert identity == {"status": {"from": "enabled", "to": "disabled"}}
