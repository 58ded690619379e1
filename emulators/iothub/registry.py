"""Batches of registry changes: the one path by which import jobs, bulk calls and device PUT/DELETE write."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .model import DELETE, EDGE_SYSTEM_MODULES, LineError, Record, apply, line_identity, new_module
from .store import Store


@dataclass(frozen=True, slots=True)
class Failure:
    """A line that was not applied: the error, and the line it came from (for the error log)."""

    error: LineError
    device_id: str | None
    module_id: str | None
    mode: str | None


class Registry:
    """Applies decoded ExportImportDevice lines to the store, in order, a batch per transaction."""

    def __init__(self, store: Store, now: Callable[[], str], *, query_lag: Callable[[], float] = lambda: 0.0) -> None:
        self.store = store
        self.now = now
        # Seconds before a change shows in query results (0: at once); read per batch so tests can change it.
        self.query_lag = query_lag

    def apply_batch(self, lines: Sequence[Record | LineError]) -> list[Failure]:
        """Apply ``lines`` (decoded lines, or the LineError their decoding raised) in one transaction."""
        now = self.now()
        failures: list[Failure] = []
        with self.store.write_lock:
            dev_ids = {ln["id"] for ln in lines if isinstance(ln, dict) and isinstance(ln.get("id"), str)}
            mod_keys = {
                (ln["id"], ln["moduleId"])
                for ln in lines
                if isinstance(ln, dict) and isinstance(ln.get("id"), str) and isinstance(ln.get("moduleId"), str)
            }
            stored = self.store.get_devices(dev_ids)
            stored_mods = self.store.get_modules(mod_keys)
            devices: dict[str, Record | None] = {}
            modules: dict[tuple[str, str], Record | None] = {}
            recreated: set[str] = set()  # deleted in this batch: their stored modules are gone too

            for line in lines:
                if isinstance(line, LineError):
                    failures.append(Failure(line, line.device_id, None, None))
                    continue
                dev_id: str | None = line.get("id") if isinstance(line.get("id"), str) else None
                mod_id: str | None = None
                mode: str | None = None
                try:
                    dev_id, mod_id, mode = line_identity(line)
                    device = devices[dev_id] if dev_id in devices else stored.get(dev_id)
                    if mod_id is None:
                        result = apply(line, device, now=now)
                        if result is DELETE:
                            devices[dev_id] = None
                            recreated.add(dev_id)
                            for key in [k for k in modules if k[0] == dev_id]:
                                del modules[key]
                        elif isinstance(result, dict):
                            devices[dev_id] = result
                            was_edge = device is not None and device.get("capabilities", {}).get("iotEdge", False)
                            if result["capabilities"]["iotEdge"] and not was_edge:
                                # A new IoT Edge device gets its two system modules from the hub (IoT Edge docs;
                                # exports list them, Azure/azure-iot-sdk-csharp#1146).
                                for system in EDGE_SYSTEM_MODULES:
                                    modules.setdefault((dev_id, system), new_module(dev_id, system, now))
                        continue
                    if device is None:
                        raise LineError(404001, f"Device {dev_id} not found.", device_id=dev_id)
                    key = (dev_id, mod_id)
                    if key in modules:
                        current = modules[key]
                    elif dev_id in recreated:
                        current = None
                    else:
                        current = stored_mods.get(key)
                    result = apply(line, current, now=now, module=True)
                    if result is DELETE:
                        modules[key] = None
                    elif isinstance(result, dict):
                        result["deviceId"] = dev_id
                        modules[key] = result
                except LineError as exc:
                    failures.append(Failure(exc, dev_id, mod_id, mode))
            lag = self.query_lag()
            self.store.write(devices, modules, query_lag=lag if lag > 0 else None)
        return failures
