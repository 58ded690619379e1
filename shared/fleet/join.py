"""Joining a devices file with a registry by device id, in bounded memory.

Both sides are spread over ``BUCKETS`` spool files by the hash of the device id as they stream past (appends only:
the order of either side does not matter), then joined one bucket at a time: a bucket's file lines are read, and
only the registry lines of the devices they touch are kept. So memory holds about 1/``BUCKETS`` of the file and of
the registry, whatever their sizes, as ``devices.seen`` does for repeated ids. A device's module lines share its
device's bucket, so one device (its line, its modules) is always seen whole.

The spool folder is a ``SpoolDir``: a process killed mid-join leaves a folder the next one removes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..devices import iter_batches
from ..devices.spool import SpoolDir

BUCKETS = 256
_FLUSH_BYTES = 4 * 1024 * 1024  # buffered across all buckets before they are appended to their files

Doc = dict[str, Any]


class Partitioned:
    """Records (one JSON line each) spread over ``BUCKETS`` files by the hash of their device id."""

    def __init__(self, folder: Path, name: str) -> None:
        self._folder = folder
        self._name = name
        self._buffers: dict[int, list[bytes]] = {}
        self._buffered = 0
        self.buckets: set[int] = set()
        self.records = 0

    def _path(self, bucket: int) -> Path:
        return self._folder / f"{self._name}-{bucket}.jsonl"

    def add(self, device_id: str, record: bytes) -> None:
        bucket = hash(device_id) & (BUCKETS - 1)
        self._buffers.setdefault(bucket, []).append(record)
        self._buffered += len(record) + 1
        self.records += 1
        if self._buffered >= _FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        for bucket, records in self._buffers.items():
            with self._path(bucket).open("ab") as out:
                out.write(b"\n".join(records) + b"\n")
            self.buckets.add(bucket)
        self._buffers.clear()
        self._buffered = 0

    def read(self, bucket: int) -> Iterator[bytes]:
        path = self._path(bucket)
        if bucket not in self.buckets or not path.exists():
            return
        with path.open("rb") as spool:
            for line in spool:
                yield line.rstrip(b"\n")

    def drop(self, bucket: int) -> None:
        self._path(bucket).unlink(missing_ok=True)


@dataclass
class Device:
    """One device the file touches: its lines (line number, line) in file order, and the registry's lines of it
    (``None``: the device line; a module id: that module), as they stood when the registry side was read."""

    device_id: str
    lines: list[tuple[int, Doc]] = field(default_factory=list)
    current: dict[str | None, Doc] = field(default_factory=dict)


class Join:
    """Spool a file's lines and a registry's lines, then ``devices()`` yields each device the file touches with the
    registry's state of it. Use as a context manager (the spool folder is removed on exit)."""

    def __init__(self) -> None:
        self._dir = SpoolDir()
        self.file = Partitioned(self._dir.path, "file")
        self.registry = Partitioned(self._dir.path, "registry")
        self.registry_lines = 0

    def __enter__(self) -> Join:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._dir.cleanup()

    def add_file(self, chunks: Iterable[bytes]) -> int:
        """Spool a devices file (blank lines skipped, line numbers as the validator counts them); its line count."""
        lines = 0
        for first, batch in iter_batches(chunks):
            for n, raw in enumerate(batch, start=first):
                if raw is None or not raw.strip():
                    continue
                doc = orjson.loads(raw)
                self.file.add(str(doc["id"]), b"%d " % n + raw)
                lines += 1
        self.file.flush()
        return lines

    def add_records(self, records: Iterable[tuple[str, bytes]]) -> None:
        """Spool file-side records that are not a devices file (device id, ``<line> <json>``)."""
        for device_id, record in records:
            self.file.add(device_id, record)
        self.file.flush()

    def add_registry(self, chunks: Iterable[bytes], seen: Callable[[Doc], None] | None = None) -> int:
        """Spool a registry export (devices, each followed by its modules; a first line that is not JSON, as the
        service may write, is skipped); its device and module line count. ``seen`` is shown every line's document
        on the way (to count them without a second read)."""
        for _, batch in iter_batches(chunks):
            for raw in batch:
                if raw is None or not raw.strip() or not raw.lstrip().startswith(b"{"):
                    continue
                doc = orjson.loads(raw)
                if seen is not None:
                    seen(doc)
                self.registry.add(str(doc["id"]), raw)
                self.registry_lines += 1
        self.registry.flush()
        return self.registry_lines

    def devices(self) -> Iterator[Device]:
        """Every device the file side touches, one bucket at a time (bucket order, then file order)."""
        for bucket in sorted(self.file.buckets):
            touched: dict[str, Device] = {}
            for record in self.file.read(bucket):
                number, _, raw = record.partition(b" ")
                doc = orjson.loads(raw)
                device_id = str(doc["id"])
                entry = touched.get(device_id)
                if entry is None:
                    entry = touched[device_id] = Device(device_id)
                entry.lines.append((int(number), doc))
            for raw in self.registry.read(bucket):
                doc = orjson.loads(raw)
                entry = touched.get(str(doc["id"]))
                if entry is not None:
                    module = doc.get("moduleId")
                    entry.current[module if isinstance(module, str) else None] = doc
            self.file.drop(bucket)
            self.registry.drop(bucket)
            for entry in touched.values():
                entry.lines.sort(key=lambda pair: pair[0])
                yield entry
