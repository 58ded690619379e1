"""Verifying a migration: the source hub's export joined with the target hub's by device id (``Join``: memory stays
flat whatever the registry's size), each device and module compared by what an operator sets (``fingerprint``:
status, authentication type and keys, tags, desired properties, the Edge flag), never by what each hub generates
on its own (ETags, generation ids, times, connection state, device scopes).

Every device is compared, not a sample: the join streams, so comparing all costs no more memory than a sample.
A difference the service explains (an IoT Edge system module, which the target hub creates itself with keys of its
own) is listed apart from the ones that need a look.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..devices import EDGE_SYSTEM_MODULES, iter_batches
from .join import Device, Doc
from .undo import fingerprint

MAX_SHOWN = 100  # differences listed per group in the report; the counts cover all

_SYSTEM_MODULES = frozenset(EDGE_SYSTEM_MODULES)
_SYSTEM_WHY = (
    "IoT Edge system module: the hub creates it with its Edge device (with keys of its own) and refuses it in an "
    "import, so it is never copied"
)


@dataclass(frozen=True, slots=True)
class Difference:
    device_id: str
    module_id: str | None
    fields: tuple[str, ...]  # what differs; ("missing",) or ("onlyInTarget",) for a whole device or module
    why: str

    def public(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"deviceId": self.device_id, "fields": list(self.fields), "why": self.why}
        if self.module_id is not None:
            doc["moduleId"] = self.module_id
        return doc


@dataclass(slots=True)
class Census:
    """What one registry export holds, per kind of line, counted as its lines go past (``see``), and the scope of
    each of its IoT Edge devices (a hub generates them: the same hierarchy has other scopes in another hub, so
    parents are compared by device id, ``parent``). Memory: one entry per Edge device, not per device."""

    devices: int = 0
    edge_devices: int = 0
    modules: int = 0
    edge_scopes: dict[str, str] = field(default_factory=dict)  # scope -> Edge device id

    def see(self, doc: Doc) -> None:
        if isinstance(doc.get("moduleId"), str):
            self.modules += 1
            return
        self.devices += 1
        if (doc.get("capabilities") or {}).get("iotEdge"):
            self.edge_devices += 1
            scope = doc.get("deviceScope")
            if isinstance(scope, str) and scope:
                self.edge_scopes[scope] = str(doc["id"])

    def parent(self, doc: Doc) -> str | None:
        """The id of a device's parent Edge device (None: it has none): an Edge device names its parent's scope in
        ``parentScopes``, a leaf device in ``deviceScope``. A scope no Edge device has reads as such."""
        if (doc.get("capabilities") or {}).get("iotEdge"):
            scopes = doc.get("parentScopes")
            scope = scopes[0] if isinstance(scopes, list) and scopes else None
        else:
            scope = doc.get("deviceScope")
        if not isinstance(scope, str) or not scope:
            return None
        return self.edge_scopes.get(scope, f"(no Edge device has scope {scope})")

    def public(self) -> dict[str, int]:
        return {"devices": self.devices, "edgeDevices": self.edge_devices, "modules": self.modules}


@dataclass
class Verification:
    """Differences between the source's devices and the target's, added one joined device at a time."""

    target: str  # the target hub's name, for the reasons
    source_census: Census = field(default_factory=Census)  # both exports, seen whole before the first ``add``
    target_census: Census = field(default_factory=Census)
    devices: int = 0  # source devices compared
    equal: int = 0  # source devices found in the target with every module, all alike
    missing: int = 0  # source devices not in the target
    different: int = 0  # devices (or their modules) that differ and need a look
    explained: int = 0  # devices whose only differences the service explains
    shown: list[Difference] = field(default_factory=list)
    explained_shown: list[Difference] = field(default_factory=list)
    _found_in_target: int = 0

    def add(self, device: Device) -> None:
        source: dict[str | None, Doc] = {}
        for _, doc in device.lines:
            module = doc.get("moduleId")
            source[module if isinstance(module, str) else None] = doc
        if None not in source:
            return  # module lines without their device: nothing to compare them under
        self.devices += 1
        target = device.current
        if None not in target:
            self.missing += 1
            why = f"not in {self.target}: the import refused it or never reached it (see the import job's errors)"
            self._show(Difference(device.device_id, None, ("missing",), why))
            return
        self._found_in_target += 1
        needs_look: list[Difference] = []
        explained: list[Difference] = []
        for module in sorted(set(source) | set(target), key=lambda m: m or ""):
            found = _compare(device.device_id, module, source.get(module), target.get(module), self.target)
            if found is None:
                continue
            (explained if found.why == _SYSTEM_WHY else needs_look).append(found)
        parents = self.source_census.parent(source[None]), self.target_census.parent(target[None])
        if parents[0] != parents[1]:
            src_parent, dst_parent = (p or "none" for p in parents)
            why = f"its parent Edge device is {src_parent} in the source and {dst_parent} in {self.target}"
            needs_look.append(Difference(device.device_id, None, ("parent",), why))
        if needs_look:
            self.different += 1
            for diff in needs_look:
                self._show(diff)
        elif explained:
            self.explained += 1
            for diff in explained:
                if len(self.explained_shown) < MAX_SHOWN:
                    self.explained_shown.append(diff)
        else:
            self.equal += 1

    def _show(self, diff: Difference) -> None:
        if len(self.shown) < MAX_SHOWN:
            self.shown.append(diff)

    def only_in_target(self, target_devices: int) -> int:
        """Target devices the source does not have (a createOrUpdate into a hub that held devices already)."""
        return max(target_devices - self._found_in_target, 0)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.different)


def _compare(device_id: str, module: str | None, src: Doc | None, dst: Doc | None, target: str) -> Difference | None:
    if module in _SYSTEM_MODULES:
        if src is not None and dst is not None and fingerprint(src) != fingerprint(dst):
            return Difference(device_id, module, _changed(src, dst), _SYSTEM_WHY)
        return None  # the hub made it (or the source's Edge device had none): as expected either way
    if src is None:
        why = f"only in {target}: the source has no such module (it was there before the migration)"
        return Difference(device_id, module, ("onlyInTarget",), why)
    if dst is None:
        why = f"not in {target}: the import refused it or never reached it (see the import job's errors)"
        return Difference(device_id, module, ("missing",), why)
    changed = _changed(src, dst)
    if not changed:
        return None
    why = f"{', '.join(changed)} differ in {target}: changed there since the import, or the import refused the line"
    return Difference(device_id, module, changed, why)


def _changed(src: Doc, dst: Doc) -> tuple[str, ...]:
    a, b = fingerprint(src) or {}, fingerprint(dst) or {}
    return tuple(name for name in a if a.get(name) != b.get(name))


def source_records(chunks: Iterable[bytes], counted: Census) -> Iterator[tuple[str, bytes]]:
    """The file-side records of a ``Join`` (device id, ``<line> <json>``) from an export's chunks, each line counted
    in ``counted``; a first line that is not JSON (a note the service may write) and blank lines are skipped."""
    for first, batch in iter_batches(chunks):
        for number, raw in enumerate(batch, start=first):
            if raw is None or not raw.lstrip().startswith(b"{"):
                continue
            doc = orjson.loads(raw)
            counted.see(doc)
            yield str(doc["id"]), b"%d " % number + raw.strip()
