"""Devices as a CSV sheet: the columns, and a streaming reader that feeds the JSON-lines validator.

A spreadsheet is how most device lists are kept, so a ``.csv`` upload is accepted beside JSON lines. Each row is
turned into the ExportImportDevice object a JSON line would hold and validated by ``stream.validate_stream``: one
implementation of the rules, the same findings, the same staged JSON lines for the hub. The rows are written as
JSON lines at the CSV line numbers they came from (the header line, and the extra lines of a quoted cell that holds
line breaks, become blank lines), so every finding already carries the CSV line; it is then given the cell
(``C7``) and the column header. Memory stays flat: rows are read one at a time and handed on in chunks.

Typing (docs/operations.md, "CSV uploads"): cells are trimmed and an empty cell means "not given"; ``edge`` is
``true``/``false`` (also ``1``/``0``, ``yes``/``no``, any case); ``tags.<path>`` and ``desired.<path>`` cells are
JSON where they parse as JSON (``42``, ``true``, ``{"a": 1}``, ``"007"``) and text otherwise; ``parent`` is the
parent Edge device's scope as an export writes it (``ms-azure-iot-edge://<id>-<generationId>``): the hub gives that
scope when it creates the parent, so a bare device id cannot be turned into it here and is refused, saying so.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from itertools import chain, pairwise
from typing import Any, BinaryIO

import orjson

from .fields import Miss, Shape, near_miss
from .rules import MAX_LINE_BYTES, Code, Finding, ValidationReport
from .sniff import sniff
from .stream import CHUNK, GIVE_UP_AFTER, iter_batches, validate_stream

# The columns in the order the template and the CSV export write them. eTag and twinETag are there for the
# IfMatchETag import modes and for exports read back in.
COLUMNS = (
    "id",
    "moduleId",
    "importMode",
    "status",
    "statusReason",
    "authType",
    "primaryKey",
    "secondaryKey",
    "primaryThumbprint",
    "secondaryThumbprint",
    "edge",
    "parent",
    "eTag",
    "twinETag",
)
TWIN_PREFIXES = ("tags", "desired")  # tags.<path>, desired.<path>, or the whole section as one JSON object
EDGE_SCOPE_PREFIX = "ms-azure-iot-edge://"
TRUE = frozenset({"true", "1", "yes"})
FALSE = frozenset({"false", "0", "no"})

# Where each column goes in a JSON line; also how a finding's field (a JSON path) is named back as a column.
_PLACES: dict[str, tuple[str, ...]] = {
    "id": ("id",),
    "moduleId": ("moduleId",),
    "importMode": ("importMode",),
    "status": ("status",),
    "statusReason": ("statusReason",),
    "authType": ("authentication", "type"),
    "primaryKey": ("authentication", "symmetricKey", "primaryKey"),
    "secondaryKey": ("authentication", "symmetricKey", "secondaryKey"),
    "primaryThumbprint": ("authentication", "x509Thumbprint", "primaryThumbprint"),
    "secondaryThumbprint": ("authentication", "x509Thumbprint", "secondaryThumbprint"),
    "eTag": ("eTag",),
    "twinETag": ("twinETag",),
}
_COLUMN_OF_FIELD = {".".join(place): column for column, place in _PLACES.items()} | {
    "capabilities": "edge",
    "deviceScope": "parent",
    "parentScopes": "parent",
    "authentication.symmetricKey": "primaryKey",
    "authentication.x509Thumbprint": "primaryThumbprint",
    "authentication": "authType",
}
# The header names a did-you-mean is looked for among (a twin column by its first part: 'tag.site' -> 'tags.site').
_HEADER = Shape("", (*COLUMNS, *TWIN_PREFIXES))
_ALIASES = {"deviceid": "id", "device": "id", "devicename": "id", "iotedge": "edge", "isedge": "edge"}


@dataclass(frozen=True, slots=True)
class Column:
    index: int
    name: str
    place: tuple[str, ...]  # where the value goes in the line; () for edge/parent (special) or an ignored column
    twin: bool = False


def is_csv_name(name: str) -> bool:
    """Whether an upload is read as CSV: its name ends with ``.csv`` (any case)."""
    return name.lower().endswith(".csv")


def cell_name(index: int, line: int) -> str:
    """The spreadsheet's name of a cell: column 0, line 7 -> ``A7``; column 27 -> ``AB``."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return f"{letters}{line}"


_SEP_LINE = re.compile(r"sep=[;,\t|]\n")


def delimiter_of(header_line: str) -> str:
    """``;`` or ``,``: whichever the header line has more of outside quotes (Excel writes ``;`` where the decimal
    separator is a comma). A one-column sheet reads the same either way."""
    counts = {",": 0, ";": 0}
    quoted = False
    for ch in header_line:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch in counts:
            counts[ch] += 1
    return ";" if counts[";"] > counts[","] else ","


class _Sheet:
    """Reads the rows of a CSV stream and writes them as JSON lines at their CSV line numbers; keeps the findings
    that only the CSV can have (header, cell counts, cell values) and how many rows there were."""

    def __init__(self, stream: BinaryIO | Iterable[bytes], max_errors: int, give_up_after: int) -> None:
        self.stream = stream
        self.give_up_after = give_up_after
        self.errors: list[Finding] = []
        self.warnings: list[Finding] = []
        self.error_count = 0
        self.warning_count = 0
        self.rows_with_errors = 0
        self.rows = 0
        self.empty_rows = 0
        self.max_errors = max_errors
        self.columns: list[Column] = []
        self.used: list[Column] | None = None
        self.header_line = 1  # 2 after Excel's "sep=;" line
        self.delimiter = ","
        self.header: list[str] = []
        self.fatal = False

    # --- findings ----------------------------------------------------------------------------------------

    def error(self, finding: Finding) -> None:
        self.error_count += 1
        if finding.line == 0:  # about the whole sheet: kept first, whatever the cap
            self.errors = [finding, *self.errors][: self.max_errors]
        elif len(self.errors) < self.max_errors:
            self.errors.append(finding)

    def warn(self, finding: Finding) -> None:
        self.warning_count += 1
        if len(self.warnings) < self.max_errors:
            self.warnings.append(finding)

    # --- the header --------------------------------------------------------------------------------------

    def read_header(self, cells: list[str]) -> None:
        h = self.header_line
        names = [c.strip() for c in cells]
        self.header = names
        seen: dict[str, int] = {}
        twin_paths: list[tuple[tuple[str, ...], str]] = []
        for i, name in enumerate(names):
            where = cell_name(i, h)
            if not name:
                self.columns.append(Column(i, "", ()))
                continue
            if name in seen:
                self.error(
                    Finding(
                        h,
                        Code.DUPLICATE_COLUMN,
                        f"{where} (line {h}): column '{name}' is already column {cell_name(seen[name], h)[:-1]}: "
                        "give each column once.",
                        field=name,
                    )
                )
                self.columns.append(Column(i, name, ()))
                continue
            seen[name] = i
            if name in _PLACES:
                self.columns.append(Column(i, name, _PLACES[name]))
            elif name in ("edge", "parent"):
                self.columns.append(Column(i, name, ()))
            elif (prefix := name.split(".", 1)[0]) in TWIN_PREFIXES:
                rest = tuple(name.split(".")[1:])
                if any(not part for part in rest):
                    self.error(
                        Finding(
                            h,
                            Code.UNKNOWN_COLUMN,
                            f"{where} (line {h}): column '{name}' has an empty name part: write "
                            f"{prefix}.<name>[.<name>...].",
                            field=name,
                        )
                    )
                    self.columns.append(Column(i, name, ()))
                    continue
                place = ("tags", *rest) if prefix == "tags" else ("properties", "desired", *rest)
                twin_paths.append((place, name))
                self.columns.append(Column(i, name, place, twin=True))
            else:
                self.columns.append(self._unknown(i, name, names))
        # 'tags.site' and 'tags.site.floor' would both set tags.site: one value would silently win.
        twin_paths.sort()
        for (a, name_a), (b, name_b) in pairwise(twin_paths):
            if b[: len(a)] == a:
                at = next(c.index for c in self.columns if c.name == name_b)
                self.columns[at] = Column(at, name_b, ())  # its cells are not read: the finding stands for them
                self.error(
                    Finding(
                        h,
                        Code.UNKNOWN_COLUMN,
                        f"line {h}: columns '{name_a}' and '{name_b}' both set '{name_a}': keep one of them.",
                        field=name_b,
                    )
                )
        if not any(c.place == ("id",) for c in self.columns):  # a slip of 'id' has its own finding
            self.error(
                Finding(
                    h,
                    Code.MISSING_FIELD,
                    f"line {h}: the header has no 'id' column; the first line of the sheet must name the columns, such "
                    "as id,status,primaryKey.",
                    field="id",
                )
            )
            self.fatal = True

    def _unknown(self, i: int, name: str, names: list[str]) -> Column:
        """The finding for a header cell that is no column; the column it is read as (a slip of a plain column is
        read as that column, so its rows are judged once, not each told its status is missing)."""
        h = self.header_line
        where = cell_name(i, h)
        meant = _meant(name)
        if meant is not None:
            suffix = name.split(".", 1)[1] if "." in name and meant in TWIN_PREFIXES else None
            meant_name = f"{meant}.{suffix}" if suffix else meant
            self.error(
                Finding(
                    h,
                    Code.MISSPELLED_FIELD,
                    f"{where} (line {h}): column '{name}' is not known; did you mean '{meant_name}'? Rename the "
                    "column.",
                    field=name,
                )
            )
            if meant in _PLACES and meant not in names:
                return Column(i, name, _PLACES[meant])
            return Column(i, name, ())
        self.warn(
            Finding(
                h,
                Code.UNKNOWN_FIELD,
                f"{where} (line {h}): column '{name}' is not a devices column: its cells are not imported (columns: "
                f"{', '.join(COLUMNS)}, tags.<name>, desired.<name>).",
                field=name,
            )
        )
        return Column(i, name, ())

    # --- the rows ----------------------------------------------------------------------------------------

    def row(self, cells: list[str], line: int) -> dict[str, Any] | None:
        """The JSON object of one row (without the cells that have findings), or None for an empty row or one whose
        cells cannot be matched to the columns."""
        if not any(c.strip() for c in cells):
            self.empty_rows += 1
            return None
        self.rows += 1
        before = self.error_count
        if len(cells) != len(self.columns):
            many = len(cells) > len(self.columns)
            other = ";" if self.delimiter == "," else ","
            if not many and sum(c.count(other) for c in cells) >= len(self.columns) - len(cells):
                why = f"its cells are separated by '{other}' and the header's by '{self.delimiter}'?"
            elif many:
                why = "a value holds the delimiter without quotes around it?"
            else:
                why = "a cell is missing, or a value holds a line break without quotes around it?"
            self.error(
                Finding(
                    line,
                    Code.WRONG_CELL_COUNT,
                    f"line {line} has {len(cells)} cells and the header {len(self.columns)}: {why} Give every row "
                    "one cell per column.",
                )
            )
            self.rows_with_errors += 1
            return None
        obj: dict[str, Any] = {}
        edge: bool | None = None
        parent: str | None = None
        if self.used is None:
            # The columns that are read, in a list the hot loop walks without looking at names.
            self.used = [c for c in self.columns if c.name and (c.place or c.name in ("edge", "parent"))]
        for col in self.used:
            value = cells[col.index]
            if not value:
                continue
            value = value.strip()
            if not value:
                continue
            if col.twin:
                _put(obj, col.place, _typed(value))
            elif col.place:
                _put(obj, col.place, value)
            elif col.name == "edge":
                lowered = value.lower()
                if lowered in TRUE:
                    edge = True
                elif lowered in FALSE:
                    edge = False
                else:
                    self.error(
                        Finding(
                            line,
                            Code.WRONG_TYPE,
                            f"{cell_name(col.index, line)} (line {line}, column edge): '{value[:40]}' is not a "
                            "yes or no: write true or false (1/0 and yes/no are read too).",
                            field="edge",
                        )
                    )
            elif col.name == "parent":
                if not value.startswith(EDGE_SCOPE_PREFIX):
                    self.error(
                        Finding(
                            line,
                            Code.INVALID_PARENT,
                            f"{cell_name(col.index, line)} (line {line}, column parent): '{value[:60]}' is not a "
                            f"parent scope. The hub names a parent Edge device by its scope "
                            f"({EDGE_SCOPE_PREFIX}<id>-<generationId>), which it gives when it creates that "
                            "device: copy it from an export (iotjobs export --csv writes it), or leave the cell "
                            "empty and set the parent in the portal or with az iot hub device-identity parent set.",
                            field="parent",
                        )
                    )
                else:
                    parent = value
        if edge is not None:
            obj["capabilities"] = {"iotEdge": edge}
        if parent is not None:
            # The format names the parent in parentScopes for both kinds; a leaf device also takes it as its own
            # deviceScope (an Edge device's deviceScope is its own, generated by the hub). (ExportImportDevice,
            # "deviceScope" and "parentScopes" in the REST reference.)
            obj["parentScopes"] = [parent]
            if not edge:
                obj["deviceScope"] = parent
        if self.error_count != before:
            # Still checked by the rules (without the cell at fault), so one round of fixes finds all of them.
            self.rows_with_errors += 1
        return obj

    # --- reading -----------------------------------------------------------------------------------------

    def lines(self) -> Iterator[bytes]:
        """The JSON lines (blank where a CSV line holds no device), in chunks of about ``CHUNK`` bytes."""
        chunks = _chunks(self.stream)
        try:
            yield from self._lines(chunks)
        finally:
            for _ in chunks:  # read to the end all the same: what the caller hashes is the whole file
                pass

    def _lines(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        # The csv module reads lines this generator decodes one by one (BOM and CRs dropped by iter_batches, as for
        # JSON lines): a line that is not UTF-8 or too long is named exactly, and no line is ever held whole past
        # MAX_LINE_BYTES.
        # Through an iterator without close(): when the text generator is dropped early it must not close the
        # source, which lines() still reads to its end.
        text = _text_lines(iter(lambda: next(chunks, None), None))
        try:
            first = next(text, "")
        except _BadLine as bad:
            self.error(bad.finding)
            return
        if not first:
            return
        out = bytearray()
        if _SEP_LINE.fullmatch(first):
            # Excel's way to name the delimiter ("sep=;" as the first line, which Excel reads and may write)
            delimiter, lines = first[4], text
            self.header_line = 2
            out += b"\n"
        else:
            delimiter, lines = delimiter_of(first), chain((first,), text)
        skip = self.header_line - 1  # lines before the reader's first
        self.delimiter = delimiter
        reader = csv.reader(lines, delimiter=delimiter, strict=True)
        # One growing buffer, not a list of lines: orjson's bytes each hold a 4 KB allocation while they live, so
        # a chunk's worth of them kept 16 MB for 1 MB of lines.
        done = skip  # CSV lines written out so far
        dumps = orjson.dumps
        try:
            for cells in reader:
                end = reader.line_num + skip
                start = done + 1
                if start == self.header_line:
                    self.read_header(cells)
                    out += b"\n"
                    if self.fatal:
                        return
                else:
                    obj = self.row(cells, start)
                    if obj is not None:
                        out += dumps(obj)
                    out += b"\n"
                out += b"\n" * (end - start)  # the other lines of a cell with line breaks
                done = end
                if len(out) >= CHUNK:
                    yield bytes(out)
                    out.clear()
                if self.rows_with_errors >= self.give_up_after and self.rows_with_errors == self.rows:
                    # Not a devices sheet (every row so far wrong in the CSV's own terms): say so and stop, as the
                    # JSON-lines validator does for rows its rules refuse.
                    self.error(Finding(0, Code.NO_DEVICE_LINES, _NO_DEVICE_ROWS.format(n=self.rows)))
                    break
        except csv.Error as exc:
            at = done + 1
            self.error(
                Finding(
                    at,
                    Code.CSV_SYNTAX,
                    f'line {at}: the CSV cannot be read from here ({exc}): a quote (") opened in a cell must be '
                    'closed, and a quote inside a quoted cell is written twice (""). The rest of the file was not '
                    "checked.",
                )
            )
            self.rows_with_errors += 1
        except _BadLine as bad:
            self.error(bad.finding)
            self.rows_with_errors += 1
        if out:
            yield bytes(out)


_UTF8_BOM = b"\xef\xbb\xbf"
_JSON_NOT_CSV = (
    "The file is named .csv but holds JSON ('{' or '[' where the header should be): name a JSON-lines file .jsonl "
    "(or anything but .csv), or save the sheet as CSV with a header row such as id,status."
)
_NO_DEVICE_ROWS = (
    "None of the first {n:,} rows can be read as a device (their problems follow), so the rest of the sheet was not "
    "checked: is this the devices sheet you meant? If it is, fix what those rows have in common."
)
_TOO_LONG = (
    f"line {{line}} is longer than {MAX_LINE_BYTES // 1024} KB: no devices row is this large (a quote opened and "
    "never closed?). The rest of the file was not checked."
)
_NOT_UTF8 = (
    "line {line} is not UTF-8: save the sheet as 'CSV UTF-8' (Excel) or with the character "
    "set UTF-8 (LibreOffice). The rest of the file was not checked."
)


def _meant(name: str) -> str | None:
    """The column a header name is a slip of (case, typo or another tool's name for it), if any."""
    head = name.split(".", 1)[0] if "." in name else name
    alias = _ALIASES.get("".join(ch for ch in name.lower() if ch.isalnum()))
    if alias is not None:
        return alias
    for candidate in (name, head):
        miss, meant = near_miss(candidate, _HEADER, {})
        if miss is not Miss.UNKNOWN and meant is not None:
            return meant
    return None


_JSON_STARTS = frozenset('-0123456789[{"tfn')  # the first character of every JSON value (t/f/n: true/false/null)


def _typed(value: str) -> Any:
    """A twin cell's value: JSON where it parses as JSON, else the text itself."""
    if value[0] not in _JSON_STARTS:  # most text cells: no parse attempt (a failed one raises, which is slow)
        return value
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return value


def _put(obj: dict[str, Any], place: tuple[str, ...], value: Any) -> None:
    if len(place) == 1:
        obj[place[0]] = value
        return
    for key in place[:-1]:
        obj = obj.setdefault(key, {})
    obj[place[-1]] = value


class _BadLine(Exception):
    """Internal: a line the sheet cannot be read past (not UTF-8, or too long), as its finding."""

    def __init__(self, finding: Finding) -> None:
        super().__init__(finding.message)
        self.finding = finding


def _chunks(stream: BinaryIO | Iterable[bytes]) -> Iterator[bytes]:
    return iter(lambda: stream.read(CHUNK), b"") if hasattr(stream, "read") else iter(stream)


def _text_lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """The lines of a UTF-8 byte stream as text, each ending with a newline (for the csv module)."""
    for first, batch in iter_batches(chunks):
        for i, raw in enumerate(batch):
            if raw is None:
                raise _BadLine(Finding(first + i, Code.LINE_TOO_LONG, _TOO_LONG.format(line=first + i)))
            try:
                yield raw.decode() + "\n"
            except UnicodeDecodeError:
                raise _BadLine(Finding(first + i, Code.NOT_UTF8, _NOT_UTF8.format(line=first + i))) from None


def _column_of(field: str | None, header: list[str]) -> str | None:
    """The CSV column a finding's field (a JSON path) came from."""
    if field is None:
        return None
    if field in _COLUMN_OF_FIELD:
        return _COLUMN_OF_FIELD[field]
    for prefix, column in (("tags", "tags"), ("properties.desired", "desired")):
        if field == prefix or field.startswith(prefix + "."):
            rest = field[len(prefix) :]
            exact = column + rest
            if exact in header:
                return exact
            # A twin finding names its section ('tags'): the column is the first of that section.
            return next((h for h in header if h == column or h.startswith(column + ".")), exact)
    return field


def _in_cells(finding: Finding, header: list[str]) -> Finding:
    """A finding of the JSON-lines validator, named in the sheet's terms: the cell, the line and the column."""
    if finding.line <= 0:
        return finding
    column = _column_of(finding.field, header)
    if column is not None and column in header:
        where = f"{cell_name(header.index(column), finding.line)} (line {finding.line}, column {column})"
    elif column is not None:
        where = f"line {finding.line}, column {column} (not in the sheet)"
    else:
        where = f"line {finding.line}"
    return replace(finding, field=column, message=f"{where}: {finding.message}")


def validate_csv_stream(
    stream: BinaryIO | Iterable[bytes],
    *,
    max_errors: int = 100,
    max_warnings: int | None = None,
    sink: Callable[[bytes], None] | None = None,
    give_up_after: int = GIVE_UP_AFTER,
) -> ValidationReport:
    """Validate a CSV devices sheet as ``validate_stream`` validates JSON lines, with the same report; ``sink``
    receives the normalized JSON lines of the valid rows (discard them when the report is not valid)."""
    chunks = _chunks(stream)
    head = b""
    for chunk in chunks:  # enough of the start to tell a compressed or UTF-16 file
        head += chunk
        if len(head) >= 16:
            break
    wrong = sniff(head[:16])
    if wrong is not None and wrong.code not in (Code.COMPRESSED_FILE, Code.WRONG_ENCODING):
        wrong = None  # a JSON array or CSV-looking start is no news here
    if head.removeprefix(_UTF8_BOM).lstrip()[:1] in (b"{", b"["):
        wrong = Finding(0, Code.JSON_NOT_CSV, _JSON_NOT_CSV)
    if wrong is not None:
        report = ValidationReport(
            max_errors=max_errors, max_warnings=max_errors if max_warnings is None else max_warnings
        )
        report.add(wrong)
        for _ in chunks:  # read to the end all the same: what the caller hashes is the whole file
            pass
        return report

    def all_chunks() -> Iterator[bytes]:
        if head:
            yield head
        yield from chunks

    sheet = _Sheet(all_chunks(), max_errors, give_up_after)
    report = validate_stream(
        sheet.lines(), max_errors=max_errors, max_warnings=max_warnings, sink=sink, give_up_after=give_up_after
    )
    header = sheet.header
    errors = [f for f in report.errors if f.code is not Code.EMPTY_FILE]  # said below in the sheet's terms
    report.error_count -= len(report.errors) - len(errors)
    report.errors = sorted([*(_in_cells(f, header) for f in errors), *sheet.errors], key=lambda f: f.line)[
        : report.max_errors
    ]
    report.error_count += sheet.error_count
    # A row with findings of both kinds is counted once per kind: never more rows than there are.
    report.lines_with_errors = min(report.lines_with_errors + sheet.rows_with_errors, max(sheet.rows, 1))
    report.warnings = sorted([*(_in_cells(f, header) for f in report.warnings), *sheet.warnings], key=lambda f: f.line)[
        : report.max_warnings
    ]
    report.warning_count += sheet.warning_count
    report.lines = sheet.rows
    report.blank_lines = sheet.empty_rows
    if sheet.rows == 0 and sheet.error_count == 0:
        report.add(
            Finding(
                0,
                Code.EMPTY_FILE,
                "The sheet holds no devices: under the header line, add one row per device (iotjobs template csv "
                "prints an example).",
            )
        )
    return report


__all__ = ["COLUMNS", "is_csv_name", "validate_csv_stream"]
