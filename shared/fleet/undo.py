"""Undoing an import: the snapshot taken before it, and the inverse file built from that snapshot afterwards.

A snapshot holds one record per device the import's file touches: ``{"id", "before": [its export lines, device
first, then modules, keys included, or none when it did not exist], "lines": [[line number, line], ...]}``.

To undo, each record is joined with a fresh export. Per device and module, the state now is compared with the
state before and with what the import's lines would have made of it: equal to either, it has not been changed by
anyone else since (equal to "before" also covers lines a cancelled or failed import never applied); otherwise it
*moved*, and a rollback refuses unless forced. The inverse: created -> deleted, deleted -> created again from the
snapshot (keys, twin, modules), updated -> restored (createOrUpdate with the snapshot's state). IoT Edge system
modules are left to the hub, which creates them with their device and refuses them in an import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from ..devices import EDGE_SYSTEM_MODULES
from .join import Device, Doc
from .plan import _auth, _desired, decide

MAX_MOVED_SHOWN = 100


def snapshot_record(device: Device) -> bytes:
    """One device of a snapshot: its state before the import and the import's lines for it."""
    before = [device.current[None]] if None in device.current else []
    before += [doc for module, doc in sorted(device.current.items(), key=lambda kv: kv[0] or "") if module]
    return orjson.dumps({"id": device.device_id, "before": before, "lines": device.lines})


def fingerprint(doc: Doc | None) -> dict[str, Any] | None:
    """What a rollback compares of a device or module (None: it does not exist); generated fields left out."""
    if doc is None:
        return None
    kind, creds = _auth(doc)
    return {
        "status": doc.get("status") or "enabled",
        "authType": kind,
        "keys": creds,
        "tags": doc.get("tags") or {},
        "desired": _desired(doc) or {},
        "iotEdge": bool((doc.get("capabilities") or {}).get("iotEdge", False)),
    }


def expected(before: Doc | None, line: Doc, device_exists: bool) -> dict[str, Any] | None:
    """What one import line leaves of ``before`` (None: absent), as far as it can be known (fields the hub makes up,
    such as the keys of a device created without them, are left out)."""
    outcome = decide(0, line, before, device_exists)
    old = fingerprint(before)
    if outcome.kind in ("refused", "unchanged"):
        return old
    if outcome.kind == "delete":
        return None
    after: dict[str, Any] = dict(old or {})
    if "tags" in line:
        after["tags"] = line.get("tags") or {}
    if _desired(line) is not None:
        after["desired"] = _desired(line)
    if outcome.kind == "twin" and str(line.get("importMode", "")).startswith("updateTwin"):
        return after
    after["status"] = line.get("status") or (old or {}).get("status") or "enabled"
    caps = line.get("capabilities")
    if not isinstance(line.get("moduleId"), str) or isinstance(caps, dict):
        after["iotEdge"] = bool((caps or {}).get("iotEdge", False)) if isinstance(caps, dict) else False
    kind, creds = _auth(line)
    if kind is None and old is None:
        after["authType"] = "sas"  # keys made by the hub: unknown
        after.pop("keys", None)
    elif kind is not None:
        keep = old is not None and old.get("authType") == kind
        after["authType"] = kind
        if creds is not None:
            after["keys"] = creds
        elif not keep:
            after.pop("keys", None)
    after.setdefault("tags", {})
    after.setdefault("desired", {})
    return after


def _matches(now: dict[str, Any] | None, wanted: dict[str, Any] | None) -> bool:
    if now is None or wanted is None:
        return now is wanted
    return all(now.get(k) == v for k, v in wanted.items())


def restore_line(doc: Doc, mode: str) -> Doc:
    """An export line as an import line putting it back (ETags dropped: it restores whatever happened since)."""
    out: Doc = {k: v for k, v in doc.items() if k not in ("eTag", "twinETag", "properties")}
    out["properties"] = {"desired": _desired(doc) or {}}
    if not out.get("statusReason"):
        out.pop("statusReason", None)
    if isinstance(doc.get("moduleId"), str):
        out.pop("capabilities", None)  # an export writes it on module lines; an import line of a module has none
    out["importMode"] = mode
    return out


@dataclass
class Inverse:
    """Accumulates, device by device, the inverse lines and the devices that moved since the import."""

    lines: int = 0
    modes: dict[str, int] = field(default_factory=dict)
    moved: list[str] = field(default_factory=list)
    moved_count: int = 0
    devices: int = 0

    def add(self, device: Device, emit: Any) -> None:
        """``device.lines[0]`` is the snapshot record; ``device.current`` the registry now. ``emit(bytes)``
        receives the inverse lines."""
        record = device.lines[0][1]
        before: dict[str | None, Doc] = {}
        for doc in record.get("before") or []:
            module = doc.get("moduleId")
            before[module if isinstance(module, str) else None] = doc
        lines: list[Doc] = [line for _, line in record.get("lines") or []]
        now = device.current
        self.devices += 1
        if self._moved(before, lines, now):
            self.moved_count += 1
            if len(self.moved) < MAX_MOVED_SHOWN:
                self.moved.append(device.device_id)
        for line in self._inverse(device.device_id, before, now):
            self.lines += 1
            mode = str(line["importMode"])
            self.modes[mode] = self.modes.get(mode, 0) + 1
            emit(orjson.dumps(line) + b"\n")

    @staticmethod
    def _moved(before: dict[str | None, Doc], lines: list[Doc], now: dict[str | None, Doc]) -> bool:
        """Whether anything of the device differs from both its state before and what the import made of it."""
        wanted: dict[str | None, dict[str, Any] | None] = {k: fingerprint(v) for k, v in before.items()}
        touched: set[str | None] = set()
        for line in lines:
            module = line.get("moduleId") if isinstance(line.get("moduleId"), str) else None
            if module in EDGE_SYSTEM_MODULES:
                continue
            state_before = before.get(module)
            device_after = wanted.get(None)
            result = expected(state_before, line, device_after is not None or module is None)
            wanted[module] = result
            touched.add(module)
            if module is None and result is None:  # deleted with the device
                wanted = {k: None for k in wanted}
        for module in set(before) | set(now) | touched:
            if module in EDGE_SYSTEM_MODULES:
                continue
            current = fingerprint(now.get(module))
            if current == fingerprint(before.get(module)):
                continue
            by_import = module in touched or (module is not None and None in touched)
            if by_import and _matches(current, wanted.get(module)):
                continue
            return True
        return False

    @staticmethod
    def _inverse(device_id: str, before: dict[str | None, Doc], now: dict[str | None, Doc]) -> list[Doc]:
        was, is_ = before.get(None), now.get(None)
        modules = sorted(m for m in set(before) | set(now) if m is not None and m not in EDGE_SYSTEM_MODULES)
        if was is None and is_ is None:
            return []
        if was is None:
            return [{"id": device_id, "importMode": "delete"}]  # its modules go with it
        if is_ is None:
            return [restore_line(was, "create")] + [restore_line(before[m], "create") for m in modules if m in before]
        out: list[Doc] = []
        if fingerprint(was) != fingerprint(is_):
            out.append(restore_line(was, "createOrUpdate"))
        for m in modules:
            b, n = before.get(m), now.get(m)
            if b is None:
                out.append({"id": device_id, "moduleId": m, "importMode": "delete"})
            elif n is None:
                out.append(restore_line(b, "create"))
            elif fingerprint(b) != fingerprint(n):
                out.append(restore_line(b, "createOrUpdate"))
        return out
