"""What the first bytes of an upload say when it is not a JSON-lines file at all: one finding for the whole file.

Without this, a gzip file, a file saved as UTF-16 (PowerShell's ``Out-File`` and ``>`` in Windows PowerShell 5), a
JSON array (what ``ConvertTo-Json`` or ``json.dump`` of a list writes) or a CSV table got a "not UTF-8" or "not
valid JSON" finding on every line, the real cause buried under a hundred of them.
"""

from __future__ import annotations

import re

from .rules import Code, Finding

HEAD_BYTES = 16  # enough for every signature below and for the pattern of NULs of a few characters
FIRST_LINE_BYTES = 1024  # how much of the first line tells a CSV header (a longer one is no header)

_GZIP = b"\x1f\x8b"
# Longest first: the UTF-32 little-endian BOM starts with the UTF-16 one. The width is that of a character.
_BOMS = (
    (b"\xff\xfe\x00\x00", "UTF-32 (little-endian)", 4),
    (b"\x00\x00\xfe\xff", "UTF-32 (big-endian)", 4),
    (b"\xff\xfe", "UTF-16 (little-endian)", 2),
    (b"\xfe\xff", "UTF-16 (big-endian)", 2),
)


def _nul_pattern(head: bytes) -> str | None:
    """The encoding a BOM-less start written in ASCII characters has, told by where its NUL bytes are.

    JSON text never holds a raw NUL (control characters in strings must be escaped), so NULs at every other byte
    (or three in four) can only be the zero high bytes of ASCII characters in UTF-16 (or UTF-32).
    """
    for width, name in ((4, "UTF-32"), (2, "UTF-16")):
        body = head[: len(head) - len(head) % width]
        if len(body) < 2 * width:
            continue
        units = [body[i : i + width] for i in range(0, len(body), width)]
        if all(u[1:] == b"\x00" * (width - 1) and u[0] for u in units):
            return f"{name} (little-endian)"
        if all(u[:-1] == b"\x00" * (width - 1) and u[-1] for u in units):
            return f"{name} (big-endian)"
    return None


def _encoding(head: bytes) -> str | None:
    """UTF-16 or UTF-32 with its byte order, or None for a start that may be UTF-8.

    A BOM counts when what follows it agrees (a devices file starts with ASCII: '{', a space, a newline), or when too
    little follows to tell: two stray bytes that look like a BOM before UTF-8 lines leave the file to the line checks.
    """
    for bom, name, width in _BOMS:
        if head.startswith(bom):
            rest = head[len(bom) :]
            return name if len(rest) < 2 * width or _nul_pattern(rest) == name else None
    return _nul_pattern(head)


_UTF8_BOM = b"\xef\xbb\xbf"
_ARRAY_START = re.compile(rb"\s*\[")
# A header cell: a column name, maybe quoted (Excel and Export-Csv quote every cell). Two or more of them, split
# by commas or semicolons (Excel writes semicolons where the decimal separator is a comma), make a CSV header;
# a JSON line starts with '{' and can never match.
_CELL = re.compile(rb'\s*"?[A-Za-z_$][A-Za-z0-9_.$ -]{0,63}"?\s*')

_CSV_FIX = (
    "The file is a CSV table (header '{header}') but its name does not end with .csv, so it was read as JSON lines: "
    "upload it again named <name>.csv to have it read as a CSV sheet (columns: docs/operations.md, 'CSV uploads'; "
    "iotjobs template csv prints an example), or upload JSON lines, one device object per line, such as "
    '{{"id": "dev-1", "status": "enabled"}}.'
)
_ARRAY_FIX = (
    "The file is one JSON array ('[' ... ']'), not JSON lines: upload one device object per line, without the "
    "brackets and the commas between objects (for example: jq -c '.[]' devices.json > devices.jsonl)."
)


def _csv_header(first_line: bytes) -> str | None:
    """The header of a CSV table if ``first_line`` is one (two or more column names), else None."""
    for sep in (b",", b";"):
        cells = first_line.split(sep)
        if len(cells) >= 2 and all(_CELL.fullmatch(c) for c in cells):
            return first_line.decode("ascii", "replace")[:120]
    return None


def sniff(head: bytes) -> Finding | None:
    """The finding for a file that starts with ``head`` (its first bytes, up to its first line's end if that comes
    within ``FIRST_LINE_BYTES``, or all of a shorter file) when those bytes show it is compressed, not UTF-8, a JSON
    array or a CSV table; None when it may be a devices file."""
    start = head[:FIRST_LINE_BYTES].removeprefix(_UTF8_BOM)
    head = head[:HEAD_BYTES]  # callers may pass a whole first chunk (1 MB): the checks below would copy all of it
    if head.startswith(_GZIP):
        return Finding(
            0,
            Code.COMPRESSED_FILE,
            "The file is gzip-compressed: upload it uncompressed (one JSON object per line, UTF-8).",
        )
    encoding = _encoding(head)
    if encoding is not None:
        return Finding(
            0,
            Code.WRONG_ENCODING,
            f"The file is {encoding} text: save it as UTF-8 (in PowerShell, Out-File -Encoding utf8) and upload it "
            "again.",
        )
    if _ARRAY_START.match(start):
        return Finding(0, Code.JSON_ARRAY, _ARRAY_FIX)
    first_line, newline, _ = start.partition(b"\n")
    if (newline or len(start) < FIRST_LINE_BYTES) and (header := _csv_header(first_line.rstrip(b"\r"))):
        return Finding(0, Code.CSV_FILE, _CSV_FIX.format(header=header))
    return None
