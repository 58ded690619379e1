"""The ids of a file seen so far, to find a device given twice without holding every id in memory.

Ids are spread over ``BUCKETS`` spool files by hash as they arrive (appends only, so the order of the file does not
matter: a sorted export and a shuffled one cost the same), and each bucket is checked on its own at the end. Only
one bucket's distinct ids are in memory at a time, about 1/64 of the file's. A bucket with more than
``max_distinct`` distinct ids (a file of several million lines) is spread again with a salted hash before it is
checked, so memory stays bounded whatever the size of the file.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import BinaryIO, TextIO

from .spool import SpoolDir

BUCKETS = 64
MAX_DISTINCT = 100_000  # distinct ids of one bucket held at once: 12.8 MB for 11-character ids (tracemalloc)
MAX_DEPTH = 4  # spreads of one bucket; past it a bucket is checked whatever its size (only repeats keep it large)
_READ_BATCH = 16_384  # ids read back at a time: the text, its join and its split are held together
_LINE_TYPE = "Q"


class _Buckets:
    """Up to ``BUCKETS`` pairs of spool files: the ids (one per line) and their line numbers (machine integers).

    A bucket's files are created when it first gets an id, so a small file costs a few files, not 128.
    """

    def __init__(self, folder: Path, name: str) -> None:
        self._folder = folder
        self.name = name
        self.paths: dict[int, tuple[Path, Path]] = {}
        self._files: dict[int, tuple[TextIO, BinaryIO]] = {}

    def spread(self, keys: Sequence[str], lines: Sequence[int], salt: int) -> None:
        """Append ids (valid ids hold no newline) to the buckets their hash, salted when spreading again, picks."""
        ids: list[list[str]] = [[] for _ in range(BUCKETS)]
        numbers = [array(_LINE_TYPE) for _ in range(BUCKETS)]
        mask = BUCKETS - 1
        bucket_of: Callable[[str], int] = (lambda key: hash((salt, key))) if salt else hash
        for key, n in zip(keys, lines, strict=True):
            b = bucket_of(key) & mask
            ids[b].append(key)
            numbers[b].append(n)
        for b, (bucket_ids, bucket_lines) in enumerate(zip(ids, numbers, strict=True)):
            if bucket_ids:
                id_file, line_file = self._files.get(b) or self._open(b)
                id_file.write("\n".join(bucket_ids) + "\n")
                bucket_lines.tofile(line_file)

    def _open(self, b: int) -> tuple[TextIO, BinaryIO]:
        paths = self.paths[b] = (self._folder / f"{self.name}-{b}.ids", self._folder / f"{self.name}-{b}.lines")
        files = self._files[b] = (paths[0].open("w", encoding="utf-8", newline="\n"), paths[1].open("wb"))
        return files

    def close(self) -> None:
        for id_file, line_file in self._files.values():
            id_file.close()
            line_file.close()
        self._files.clear()


def _read(paths: tuple[Path, Path]) -> Iterator[tuple[list[str], array[int]]]:
    """A bucket's (ids, line numbers) in batches, in the order they were written."""
    with paths[0].open(encoding="utf-8", newline="\n") as id_file, paths[1].open("rb") as line_file:
        while batch := list(islice(id_file, _READ_BATCH)):
            keys = "".join(batch).split("\n")  # in C, where stripping each line would be a Python loop
            keys.pop()
            lines = array(_LINE_TYPE)
            lines.fromfile(line_file, len(keys))
            yield keys, lines


class SeenIds:
    """Add ids with their line numbers; ``duplicates`` then gives every id seen twice with all its line numbers."""

    def __init__(self, *, max_distinct: int = MAX_DISTINCT) -> None:
        # A spool folder of a process killed mid-check is removed by the next process that makes one (see spool).
        self._dir = SpoolDir()
        self._folder = self._dir.path
        self._buckets = _Buckets(self._folder, "0")
        self.max_distinct = max_distinct
        self.respread = 0  # buckets spread again because they held too many distinct ids

    def extend(self, keys: list[str], lines: list[int]) -> None:
        """Ids are ``device`` or ``device\\x00module``."""
        if keys:
            self._buckets.spread(keys, lines, 0)

    def duplicates(self) -> Iterator[tuple[str, list[int]]]:
        """(id, line numbers) of every id seen more than once; the first line number comes first."""
        self._buckets.close()
        yield from self._check(self._buckets, 0)

    def _check(self, buckets: _Buckets, depth: int) -> Iterator[tuple[str, list[int]]]:
        for i, paths in sorted(buckets.paths.items()):
            found = self._bucket_duplicates(paths, limit=self.max_distinct if depth < MAX_DEPTH else None)
            if found is None:
                self.respread += 1
                inner = _Buckets(self._folder, f"{buckets.name}-{i}")
                for keys, numbers in _read(paths):
                    inner.spread(keys, numbers, depth + 1)
                inner.close()
                yield from self._check(inner, depth + 1)
            else:
                yield from found.items()
            for path in paths:
                path.unlink()

    @staticmethod
    def _bucket_duplicates(paths: tuple[Path, Path], limit: int | None) -> dict[str, list[int]] | None:
        """The bucket's repeated ids, or None when it holds more than ``limit`` distinct ids."""
        first: dict[str, int] = {}
        found: dict[str, list[int]] = {}
        for keys, lines in _read(paths):
            # In C: the batch's first occurrences, and whether any id repeats; the Python loop runs only then.
            batch = dict(zip(reversed(keys), reversed(lines), strict=True))
            if len(batch) == len(keys) and first.keys().isdisjoint(batch):
                first.update(batch)
            else:
                for key, n in zip(keys, lines, strict=True):
                    if (at := first.setdefault(key, n)) != n:
                        found.setdefault(key, [at]).append(n)
            if limit is not None and len(first) > limit:
                return None
        return found

    def close(self) -> None:
        self._buckets.close()
        self._dir.cleanup()
