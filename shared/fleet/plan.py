"""What an import would do to a registry, line by line, read from the join of the file with the registry.

Each line gets one outcome, as the hub would apply it (the import/export docs' rules for each ``importMode``):
``create``, ``update`` (status, authentication or capabilities change), ``twin`` (only tags or desired properties
change), ``delete``, ``unchanged``, or ``refused`` (create of an existing device, update or delete of a missing
one, an ETag that no longer matches) with the code the hub answers. Lines of one device are taken in file order,
so a module line after the line that creates its device finds the device there.

Only counts, the first refused lines and a sample of field-level diffs are kept: memory does not grow with the
file. Diffs name authentication types and whether keys change, never a key.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..devices import DEFAULT_MODE, EDGE_SYSTEM_MODULES
from .join import Device, Doc

OUTCOMES = ("create", "update", "twin", "delete", "unchanged", "refused")
DIFF_SAMPLE = 20
MAX_KEYS_SHOWN = 10


@dataclass(frozen=True, slots=True)
class Refusal:
    line: int
    device_id: str
    module_id: str | None
    code: str
    message: str

    def public(self) -> dict[str, Any]:
        out: dict[str, Any] = {"line": self.line, "deviceId": self.device_id}
        if self.module_id:
            out["moduleId"] = self.module_id
        return {**out, "code": self.code, "message": self.message}


def _mode(line: Doc) -> str:
    mode = line.get("importMode")
    return mode if isinstance(mode, str) else DEFAULT_MODE


def _desired(doc: Doc | None) -> Any:
    props = (doc or {}).get("properties")
    return props.get("desired") if isinstance(props, dict) else None


def _auth(doc: Doc | None) -> tuple[str | None, Any]:
    """(type, credentials) of a line's or an export's ``authentication`` (None, None: not given)."""
    auth = (doc or {}).get("authentication")
    if not isinstance(auth, dict):
        return None, None
    kind = auth.get("type")
    creds = auth.get("symmetricKey") if kind in (None, "sas") else auth.get("x509Thumbprint")
    if isinstance(creds, dict):
        # An export writes a credential never given as null (a self-signed device's secondaryThumbprint): the same
        # as a line that leaves it out, or an update that left it so would count as changed since.
        creds = {k: v for k, v in creds.items() if v} or None  # none: the hub keeps (or makes) keys
    return (kind if isinstance(kind, str) else "sas"), creds


def _keys_changed(before: Any, after: Any) -> dict[str, Any]:
    """Which top-level keys of a tags or desired object a line adds, removes or changes (names only)."""
    before = before if isinstance(before, dict) else {}
    after = after if isinstance(after, dict) else {}
    out: dict[str, Any] = {}
    for label, names in (
        ("added", [k for k in after if k not in before]),
        ("removed", [k for k in before if k not in after]),
        ("changed", [k for k in after if k in before and after[k] != before[k]]),
    ):
        if names:
            out[label] = sorted(names)[:MAX_KEYS_SHOWN]
    return out


def field_diff(line: Doc, current: Doc, *, twin_only: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """(identity changes, twin changes) a create-or-update line makes to an existing device or module."""
    identity: dict[str, Any] = {}
    twin: dict[str, Any] = {}
    if not twin_only:
        status = line.get("status")
        if status is not None and status != current.get("status"):
            identity["status"] = {"from": current.get("status"), "to": status}
        kind, creds = _auth(line)
        now_kind, now_creds = _auth(current)
        if kind is not None:
            if now_kind is not None and kind != now_kind:
                identity["authType"] = {"from": now_kind, "to": kind}
            if creds is not None and creds != now_creds and now_creds is not None:
                identity["keys"] = "changed"  # never the keys themselves
        caps = line.get("capabilities")
        if isinstance(caps, dict) and "iotEdge" in caps:
            was = bool((current.get("capabilities") or {}).get("iotEdge", False))
            if bool(caps["iotEdge"]) != was:
                identity["iotEdge"] = {"from": was, "to": bool(caps["iotEdge"])}
    if "tags" in line and (line.get("tags") or {}) != (current.get("tags") or {}):
        twin["tags"] = _keys_changed(current.get("tags"), line.get("tags"))
    desired = _desired(line)
    if desired is not None and desired != (_desired(current) or {}):
        twin["desired"] = _keys_changed(_desired(current), desired)
    return identity, twin


@dataclass
class Outcome:
    kind: str  # one of OUTCOMES
    refusal: Refusal | None = None
    diff: dict[str, Any] | None = None


def _etag_mismatch(given: Any, actual: Any) -> bool:
    return isinstance(given, str) and given != "" and given.strip('"') != str(actual or "").strip('"')


def decide(n: int, line: Doc, current: Doc | None, device_exists: bool) -> Outcome:
    """The outcome of line ``n`` given the registry's ``current`` state of what it names (device or module)."""
    device_id = str(line["id"])
    module = line.get("moduleId") if isinstance(line.get("moduleId"), str) else None
    mode = _mode(line)
    what = f"module {device_id}/{module}" if module else f"device {device_id}"

    def refused(code: str, message: str) -> Outcome:
        return Outcome("refused", Refusal(n, device_id, module, code, message))

    missing = "ModuleNotFound" if module else "DeviceNotFound"
    if module and not device_exists and not mode.startswith("delete"):
        return refused("DeviceNotFound", f"device {device_id} does not exist, so its module cannot be changed")
    if mode.startswith("delete"):
        if current is None:
            return refused(missing, f"{what} does not exist")
        if mode == "deleteIfMatchETag" and _etag_mismatch(line.get("eTag"), current.get("eTag")):
            return refused("PreconditionFailed", f"the eTag of {what} no longer matches (it changed since)")
        return Outcome("delete")
    if mode.startswith("updateTwin"):
        if current is None:
            return refused(missing, f"{what} does not exist")
        if mode == "updateTwinIfMatchETag" and _etag_mismatch(line.get("twinETag"), current.get("twinETag")):
            return refused("PreconditionFailed", f"the twinETag of {what} no longer matches (it changed since)")
        _, twin = field_diff(line, current, twin_only=True)
        return Outcome("twin", diff={"twin": twin}) if twin else Outcome("unchanged")
    if current is None:
        if mode.startswith("update"):
            return refused(missing, f"{what} does not exist")
        return Outcome("create")
    if mode == "create":
        exists = "ModuleAlreadyExistsOnDevice" if module else "DeviceAlreadyExists"
        return refused(exists, f"{what} already exists")
    if mode.endswith("IfMatchETag") and _etag_mismatch(line.get("eTag"), current.get("eTag")):
        return refused("PreconditionFailed", f"the eTag of {what} no longer matches (it changed since)")
    if _etag_mismatch(line.get("twinETag"), current.get("twinETag")):
        return refused("PreconditionFailed", f"the twinETag of {what} no longer matches (it changed since)")
    identity, twin = field_diff(line, current)
    if identity:
        return Outcome("update", diff={**identity, **({"twin": twin} if twin else {})})
    if twin:
        return Outcome("twin", diff={"twin": twin})
    return Outcome("unchanged")


def outcomes(device: Device) -> Iterable[tuple[int, Doc, Outcome]]:
    """Each line of one device with its outcome, in file order; a line sees what the lines before it did."""
    state: dict[str | None, Doc | None] = dict(device.current)
    for n, line in device.lines:
        module = line.get("moduleId") if isinstance(line.get("moduleId"), str) else None
        outcome = decide(n, line, state.get(module), state.get(None) is not None)
        if outcome.kind == "create" or (outcome.kind in ("update", "twin") and state.get(module) is None):
            state[module] = {"id": device.device_id, **({"moduleId": module} if module else {})}
        elif outcome.kind == "delete":
            state[module] = None
            if module is None:  # a device goes with its modules
                state = {None: None}
        yield n, line, outcome


@dataclass
class Plan:
    """Counts per import mode and outcome, the first refused lines and a sample of update diffs."""

    max_shown: int = 100
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    lines: int = 0
    devices: int = 0
    system_modules: int = 0  # IoT Edge system module lines: the hub refuses them
    _refused: list[tuple[int, int, Refusal]] = field(default_factory=list)  # a max-heap by line (negated)
    _diffs: list[tuple[int, int, dict[str, Any]]] = field(default_factory=list)

    def add(self, device: Device) -> None:
        self.devices += 1
        for n, line, outcome in outcomes(device):
            self.lines += 1
            mode = _mode(line)
            if line.get("moduleId") in EDGE_SYSTEM_MODULES:
                self.system_modules += 1
            per = self.counts.setdefault(mode, dict.fromkeys(OUTCOMES, 0))
            per[outcome.kind] += 1
            self.totals[outcome.kind] += 1
            if outcome.refusal is not None:
                _keep(self._refused, (-n, n, outcome.refusal), self.max_shown)
            elif outcome.diff:
                sample = {"line": n, "deviceId": device.device_id}
                if isinstance(line.get("moduleId"), str):
                    sample["moduleId"] = line["moduleId"]
                _keep(self._diffs, (-n, n, {**sample, "changes": outcome.diff}), DIFF_SAMPLE)

    @property
    def risky_counts(self) -> tuple[int, int]:
        """(deletes, updates) the import would make."""
        return self.totals["delete"], self.totals["update"] + self.totals["twin"]

    def document(self) -> dict[str, Any]:
        refused = [r.public() for _, _, r in sorted(self._refused, key=lambda t: t[1])]
        diffs = [d for _, _, d in sorted(self._diffs, key=lambda t: t[1])]
        return {
            "lines": self.lines,
            "devicesTouched": self.devices,
            "totals": self.totals,
            "byMode": self.counts,
            "refused": refused,
            "refusedShown": len(refused),
            "diffSample": diffs,
            "edgeSystemModuleLines": self.system_modules,
        }


def _keep(heap: list[Any], item: tuple[int, int, Any], limit: int) -> None:
    """Keep the ``limit`` smallest line numbers (``item[0]`` is the negated line, so the heap's top is the largest
    kept)."""
    if len(heap) < limit:
        heapq.heappush(heap, item)
    elif item[0] > heap[0][0]:
        heapq.heapreplace(heap, item)
