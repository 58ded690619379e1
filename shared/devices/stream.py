"""Reading a devices file as a stream, and validating it in one pass.

``validate_stream`` reads any byte stream (a blob download, a local file) in chunks and never holds the file:
memory stays flat whether the file has ten lines or ten million. Each line is first offered to ``fast.accept``,
which proves the usual shapes valid in a few microseconds; the rest are parsed and explained by
``rules.LineChecker``. Valid lines can be handed, normalized, to a ``sink`` in the same pass, so validating and
staging the copy the hub will read cost one read of the upload.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from typing import BinaryIO

import orjson

from .fast import accept_run
from .rules import MAX_LINE_BYTES, Code, Finding, LineChecker, ValidationReport
from .seen import SeenIds
from .sniff import FIRST_LINE_BYTES, HEAD_BYTES, sniff

CHUNK = 1024 * 1024
# A file whose first this many lines all have problems, none a device line, is some other file (sensor readings, a
# report): the rest is not checked, so a huge wrong file is rejected in a moment, not after minutes of findings
# nobody reads. Checked per chunk read, so a little more may be read.
GIVE_UP_AFTER = 10_000
_BOM = b"\xef\xbb\xbf"


def _chunks(stream: BinaryIO | Iterable[bytes]) -> Iterator[bytes]:
    if hasattr(stream, "read"):
        while chunk := stream.read(CHUNK):
            yield chunk
    else:
        yield from stream


def _head(chunks: Iterator[bytes]) -> bytes:
    """The first ``HEAD_BYTES`` bytes and the first line (up to ``FIRST_LINE_BYTES``) or more (all of a shorter
    stream), however small the chunks are."""
    head = b""
    for chunk in chunks:
        head += chunk
        if len(head) >= HEAD_BYTES and (b"\n" in head or len(head) >= FIRST_LINE_BYTES):
            break
    return head


def iter_batches(stream: BinaryIO | Iterable[bytes]) -> Iterator[tuple[int, list[bytes | None]]]:
    """(number of the first line, lines) per chunk read: BOM and CR stripped, ``None`` for an over-long line.

    An over-long line is skipped without ever being held whole in memory. Batches (not single lines) keep the
    per-line cost of the hot loop low.
    """
    n = 0
    carry = b""
    skipping = False
    first = True
    for chunk in _chunks(stream):
        if first:
            chunk = chunk.removeprefix(_BOM)  # noqa: PLW2901 - the BOM is only tolerated at the start
            first = False
        parts = chunk.split(b"\n")
        last = parts.pop()
        if parts:
            if carry and not skipping:
                parts[0] = carry + parts[0]
            batch: list[bytes | None] = parts  # type: ignore[assignment]
            # Most chunks have neither CRs nor over-long lines: both are ruled out in C before any per-line work.
            if b"\r" in chunk or parts[0].endswith(b"\r") or max(map(len, parts)) > MAX_LINE_BYTES:
                batch = [None if len(p) > MAX_LINE_BYTES else (p[:-1] if p.endswith(b"\r") else p) for p in parts]
            if skipping:
                batch[0] = None  # the end of a line already found over-long
                skipping = False
            yield n + 1, batch
            n += len(batch)
            carry = last
        elif not skipping:
            carry += last
        if not skipping and len(carry) > MAX_LINE_BYTES:
            carry = b""
            skipping = True
    if skipping:
        yield n + 1, [None]
    elif carry:
        yield n + 1, [carry.removesuffix(b"\r")]


def validate_stream(
    stream: BinaryIO | Iterable[bytes],
    *,
    max_errors: int = 100,
    max_warnings: int | None = None,
    sink: Callable[[bytes], None] | None = None,
    give_up_after: int = GIVE_UP_AFTER,
) -> ValidationReport:
    """Validate a devices file; optionally pass the valid, normalized lines (LF-terminated) to ``sink``.

    The report keeps the first ``max_errors`` errors and ``max_warnings`` (by default as many) warnings. When the
    first ``give_up_after`` lines (or a few more) all have problems and none is a device line, the rest of the file
    is read (a caller may hash it) but not checked, and one more finding says so.

    ``sink`` receives batches of whole lines; when the report is not valid, what it received must be discarded.
    """
    report = ValidationReport(max_errors=max_errors, max_warnings=max_errors if max_warnings is None else max_warnings)
    chunks = _chunks(stream)
    head = _head(chunks)
    if (wrong := sniff(head)) is not None:
        # Not a text file of lines at all: the one reason, instead of a finding on every line.
        report.add(wrong)
        return report
    check = LineChecker(report).check
    add = report.add
    seen = SeenIds()
    loads = orjson.loads
    decode_error = orjson.JSONDecodeError
    modes: dict[str, int] = {}
    blank = module_lines = total = 0
    try:
        for first, batch in iter_batches(chain((head,), chunks)):
            out: list[bytes] | None = [] if sink is not None else None
            ids: list[str] = []
            id_lines: list[int] = []
            fast_modes: list[str] = []
            size = len(batch)
            i = 0
            while i < size:
                # A run of lines the fast path proves valid costs no Python loop here; the usual batch is one run.
                end = accept_run(batch, i, ids, fast_modes)
                if end > i:
                    id_lines.extend(range(first + i, first + end))
                    if out is not None:
                        out.extend(batch[i:end])  # type: ignore[arg-type]  # accepted lines are never None
                    if end == size:
                        break
                i = end
                n = first + i
                raw = batch[i]
                i += 1
                if raw is None:
                    report.lines_with_errors += 1
                    add(Finding(n, Code.LINE_TOO_LONG, _TOO_LONG))
                    continue
                if not raw or raw.isspace():
                    blank += 1
                    continue
                try:
                    obj = loads(raw)
                except decode_error as exc:
                    report.lines_with_errors += 1
                    try:
                        raw.decode("utf-8")
                    except UnicodeDecodeError:
                        add(Finding(n, Code.NOT_UTF8, "The line is not valid UTF-8: save the file as UTF-8."))
                        continue
                    add(Finding(n, Code.INVALID_JSON, f"Not valid JSON: {exc}. Each line must be one JSON object."))
                    continue
                ok = check(obj, n)
                if ok is None:
                    continue
                did, mid, mode = ok
                modes[mode] = modes.get(mode, 0) + 1
                if mid is not None:
                    module_lines += 1
                if did is not None:
                    ids.append(did if mid is None else f"{did}\x00{mid}")
                    id_lines.append(n)
                if out is not None:
                    out.append(raw)
            total = first + size - 1
            for mode, count in Counter(fast_modes).items():  # counted in C, a few modes a file
                modes[mode] = modes.get(mode, 0) + count
            seen.extend(ids, id_lines)
            if sink is not None and out:
                sink(b"\n".join(out) + b"\n")
            if not modes and report.lines_with_errors >= give_up_after:
                # First, whatever the cap: it is the one finding about the whole file.
                report.error_count += 1
                found = Finding(0, Code.NO_DEVICE_LINES, _NO_DEVICE_LINES.format(n=total))
                report.errors = [found, *report.errors][: report.max_errors]
                for _ in chunks:  # read to the end all the same: what the caller hashes is the whole file
                    pass
                break
        dupes, dupe_count = _first_duplicates(seen, max_errors)
    finally:
        seen.close()
    report.lines = total - blank
    report.blank_lines = blank
    report.module_lines = module_lines
    report.modes.update(modes)
    if dupes:
        report.error_count += dupe_count
        report.lines_with_errors += dupe_count
        report.errors = sorted(report.errors + dupes, key=lambda f: f.line)[: report.max_errors]
    if report.lines == 0:
        report.add(Finding(0, Code.EMPTY_FILE, "The file holds no devices: add one JSON object per line."))
    return report


_NO_DEVICE_LINES = (
    "None of the first {n:,} lines is a valid device line (their problems follow), so the rest of the file was not "
    "checked: is this the devices file you meant? If it is, fix what those lines have in common. Each line must be "
    'one device object, such as {{"id": "dev-1", "status": "enabled"}}.'
)

_TOO_LONG = (
    f"Line is longer than {MAX_LINE_BYTES // 1024} KB: a device line cannot be this large (twin limits are "
    "8 KB tags, 32 KB desired, 32 KB reported)."
)


def _first_duplicates(seen: SeenIds, keep: int) -> tuple[list[Finding], int]:
    """The first ``keep`` repeated-id findings in line order, and how many there are in all.

    Only ``keep`` are held at a time, so a file of nothing but repeats does not fill memory with findings.
    """
    count = 0

    def findings() -> Iterator[Finding]:
        nonlocal count
        for key, lines in seen.duplicates():
            did, _, mid = key.partition("\x00")
            what = f"Device '{did}'" + (f" module '{mid}'" if mid else "")
            for line in lines[1:]:
                count += 1
                yield Finding(
                    line,
                    Code.DUPLICATE_ID,
                    f"{what} already appears on line {lines[0]}: give each device (and module) one line per file.",
                    did,
                    mid or None,
                    "id",
                )

    return heapq.nsmallest(keep, findings(), key=lambda f: f.line), count
