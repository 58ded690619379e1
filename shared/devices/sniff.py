"""What the first bytes of an upload say when it is not UTF-8 text at all: one finding for the whole file.

Without this, a gzip file or a file saved as UTF-16 (PowerShell's ``Out-File`` and ``>`` in Windows PowerShell 5)
got a "not UTF-8" or "not valid JSON" finding on every line, the real cause buried under a hundred of them.
"""

from __future__ import annotations

from .rules import Code, Finding

HEAD_BYTES = 16  # enough for every signature below and for the pattern of NULs of a few characters

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


def sniff(head: bytes) -> Finding | None:
    """The finding for a file that starts with ``head`` (its first ``HEAD_BYTES`` bytes, or all of a shorter one),
    when those bytes show it is compressed or not UTF-8; None when it may be a devices file."""
    head = head[:HEAD_BYTES]  # callers may pass a whole first chunk (1 MB): the checks below would copy all of it
    if head.startswith(_GZIP):
        return Finding(
            0,
            Code.COMPRESSED_FILE,
            "The file is gzip-compressed: upload it uncompressed (one JSON object per line, UTF-8).",
        )
    encoding = _encoding(head)
    if encoding is None:
        return None
    return Finding(
        0,
        Code.WRONG_ENCODING,
        f"The file is {encoding} text: save it as UTF-8 (in PowerShell, Out-File -Encoding utf8) and upload it again.",
    )
