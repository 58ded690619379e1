"""CSV device sheets: delimiters, quoting, BOM and CRLF, typed twin cells, header slips, cells in findings, and the
sheets Python's csv module writes (shared.devices.csvfile). LibreOffice's: tests/e2e/test_csv_libreoffice.py."""

from __future__ import annotations

import base64
import csv
import io
import json
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest

from shared.devices import ValidationReport, validate_csv_stream, validate_stream
from shared.devices.csvfile import COLUMNS, cell_name, delimiter_of, is_csv_name

KEY = base64.b64encode(b"k" * 32).decode()
KEY2 = base64.b64encode(b"s" * 32).decode()
SCOPE = "ms-azure-iot-edge://edge-1-637000000000000000"


def check(text: str, *, chunk: int | None = None, **kw: Any) -> tuple[ValidationReport, list[dict[str, Any]]]:
    """The report of a sheet, and the JSON lines it staged (as objects)."""
    data = text.encode("utf-8")
    out: list[bytes] = []
    stream: Any = io.BytesIO(data) if chunk is None else iter(data[i : i + chunk] for i in range(0, len(data), chunk))
    report = validate_csv_stream(stream, sink=out.append, **kw)
    lines = [json.loads(line) for line in b"".join(out).splitlines() if line.strip()]
    return report, lines


def found(report: ValidationReport) -> list[tuple[int, str, str | None]]:
    return [(f.line, str(f.code), f.field) for f in report.errors]


SHEET = (
    "id,status,primaryKey,secondaryKey,tags.site,tags.floor,desired.interval,desired.cfg,edge\n"
    f'dev-1,enabled,{KEY},{KEY2},plant-a,3,30,"{{""mode"": ""eco""}}",false\n'
    "dev-2,disabled,,,plant-b,007,true,text,yes\n"
)


@pytest.mark.parametrize("chunk", [None, 1, 7])
def test_a_sheet_becomes_the_json_lines_of_the_format_with_typed_twin_cells(chunk: int | None) -> None:
    report, lines = check(SHEET, chunk=chunk)
    assert report.valid, report.errors
    assert report.lines == 2 and report.modes == {"createOrUpdate": 2}
    assert lines == [
        {
            "id": "dev-1",
            "status": "enabled",
            "authentication": {"symmetricKey": {"primaryKey": KEY, "secondaryKey": KEY2}},
            "tags": {"site": "plant-a", "floor": 3},
            "properties": {"desired": {"interval": 30, "cfg": {"mode": "eco"}}},
            "capabilities": {"iotEdge": False},
        },
        {
            "id": "dev-2",
            "status": "disabled",
            "tags": {"site": "plant-b", "floor": "007"},  # not JSON (a leading zero): kept as text
            "properties": {"desired": {"interval": True, "cfg": "text"}},
            "capabilities": {"iotEdge": True},
        },
    ]


@pytest.mark.parametrize(
    "text",
    [
        SHEET.replace(",", ";").replace('""mode""; ""eco""', '""mode"": ""eco""'),  # Excel with a ';' locale
        "\ufeff" + SHEET.replace("\n", "\r\n"),  # Excel's "CSV UTF-8": a BOM and CRLF
        SHEET.rstrip("\n"),  # no newline after the last row
    ],
    ids=["semicolons", "bom-crlf", "no-final-newline"],
)
def test_semicolons_bom_and_crlf_read_the_same(text: str) -> None:
    report, lines = check(text)
    assert report.valid, report.errors
    assert lines == check(SHEET)[1]


def test_the_delimiter_is_sniffed_from_the_header_outside_quotes() -> None:
    assert delimiter_of("id;status;tags.a\r\n") == ";"
    assert delimiter_of('"id";"status"\n') == ";"
    assert delimiter_of('id,"a;b;c"\n') == ","
    assert delimiter_of("id\n") == ","
    assert is_csv_name("hub/Devices.CSV") and not is_csv_name("devices.csv.txt")
    assert [cell_name(i, 7) for i in (0, 2, 25, 26, 27)] == ["A7", "C7", "Z7", "AA7", "AB7"]


def test_a_quoted_cell_may_hold_the_delimiter_quotes_and_line_breaks_and_lines_stay_csv_lines() -> None:
    text = (
        "id,status,statusReason,tags.note\n"
        'dev-1,enabled,"broken, sent back","two\nlines"\n'  # lines 2-3
        'dev-2,enabled,"said ""hello""",x\n'  # line 4
        f"dev-3,enabled,,x,{KEY}\n"  # line 5: one cell too many
    )
    report, _ = check(text)
    assert found(report) == [(5, "WRONG_CELL_COUNT", None)]
    assert "5 cells and the header 4" in report.errors[0].message
    report, lines = check(text.rsplit("dev-3", 1)[0])
    assert report.valid
    assert lines[0]["statusReason"] == "broken, sent back" and lines[0]["tags"]["note"] == "two\nlines"
    assert lines[1]["statusReason"] == 'said "hello"'


def test_findings_name_the_cell_the_line_and_the_column() -> None:
    text = (
        "id,status,primaryKey,secondaryKey\n"
        f"dev-1,enabled,{KEY},{KEY2}\n"
        f"dev 2,Enabled,{KEY},{KEY2}\n"  # line 3: a space in the id, the status's case
        "dev-3,enabled,\n"  # line 4: one cell short
        f"dev-4,enabled,abc!,{KEY2}\n"  # line 5: not base64
        f"dev-1,enabled,{KEY},{KEY2}\n"  # line 6: dev-1 again
    )
    report, _ = check(text)
    assert found(report) == [
        (3, "INVALID_DEVICE_ID", "id"),
        (3, "INVALID_STATUS", "status"),
        (4, "WRONG_CELL_COUNT", None),
        (5, "INVALID_KEY", "primaryKey"),
        (6, "DUPLICATE_ID", "id"),
    ]
    messages = [f.message for f in report.errors]
    assert messages[0].startswith("A3 (line 3, column id): ")
    assert messages[1].startswith("B3 (line 3, column status): ") and "use 'enabled'" in messages[1]
    assert messages[3] == "C5 (line 5, column primaryKey): primaryKey is not valid base64."
    assert "already appears on line 2" in messages[4]
    assert report.lines == 5 and report.lines_with_errors == 4


def test_a_column_the_rules_need_but_the_sheet_lacks_is_named() -> None:
    report, _ = check("id,tags.site\ndev-1,a\n")
    assert found(report) == [(2, "MISSING_FIELD", "status")]
    assert report.errors[0].message.startswith("line 2, column status (not in the sheet): ")


@pytest.mark.parametrize(
    ("header", "code", "meant"),
    [
        ("stauts", "MISSPELLED_FIELD", "'status'"),
        ("Status", "MISSPELLED_FIELD", "'status'"),
        ("primarykey", "MISSPELLED_FIELD", "'primaryKey'"),
        ("tag.site", "MISSPELLED_FIELD", "'tags.site'"),
        ("desierd.interval", "MISSPELLED_FIELD", "'desired.interval'"),
        ("iotEdge", "MISSPELLED_FIELD", "'edge'"),
    ],
)
def test_a_header_slip_gets_a_did_you_mean(header: str, code: str, meant: str) -> None:
    report, _ = check(f"id,status,{header}\ndev-1,enabled,x\n")
    assert [(f.line, str(f.code), f.field) for f in report.errors][:1] == [(1, code, header)]
    assert f"did you mean {meant}" in report.errors[0].message
    assert report.errors[0].message.startswith("C1 (line 1): ")


def test_a_header_slip_is_one_finding_not_one_per_row() -> None:
    report, _ = check("deviceId,stauts\ndev-1,enabled\ndev-2,enabled\n")
    assert found(report) == [(1, "MISSPELLED_FIELD", "deviceId"), (1, "MISSPELLED_FIELD", "stauts")]
    assert "did you mean 'id'" in report.errors[0].message
    report, _ = check("name,status\ndev-1,enabled\ndev-2,enabled\n")
    assert found(report) == [(1, "MISSING_FIELD", "id")]  # and not read on: no row can be a device
    assert "no 'id' column" in report.errors[0].message


def test_an_unknown_column_is_a_warning_and_its_cells_are_not_imported() -> None:
    report, lines = check("id,status,notes\ndev-1,enabled,call Bob\n")
    assert report.valid
    assert [(f.line, str(f.code), f.field) for f in report.warnings] == [(1, "UNKNOWN_FIELD", "notes")]
    assert lines == [{"id": "dev-1", "status": "enabled"}]


def test_overlapping_or_repeated_columns_are_refused() -> None:
    assert found(check("id,status,tags.a,tags.a.b\nd,enabled,1,2\n")[0]) == [(1, "UNKNOWN_COLUMN", "tags.a.b")]
    assert found(check("id,status,status\nd,enabled,enabled\n")[0]) == [(1, "DUPLICATE_COLUMN", "status")]


def test_edge_and_parent() -> None:
    text = f"id,status,edge,parent\nedge-2,enabled,1,{SCOPE}\nleaf,enabled,,{SCOPE}\nx,enabled,maybe,\n"
    report, lines = check(text)
    assert found(report) == [(4, "WRONG_TYPE", "edge")]
    assert "'maybe' is not a yes or no" in report.errors[0].message
    report, lines = check(text.rsplit("x,", 1)[0])
    assert lines == [
        {"id": "edge-2", "status": "enabled", "capabilities": {"iotEdge": True}, "parentScopes": [SCOPE]},
        {"id": "leaf", "status": "enabled", "parentScopes": [SCOPE], "deviceScope": SCOPE},
    ]
    report, _ = check("id,status,parent\nleaf,enabled,edge-1\n")
    assert found(report) == [(2, "INVALID_PARENT", "parent")]
    assert "ms-azure-iot-edge://" in report.errors[0].message and "iotjobs export --csv" in report.errors[0].message


def test_empty_rows_and_cells_mean_not_given() -> None:
    report, lines = check("id;status;tags.a;desired.b\n;;;\nd1;enabled;;\n\n")
    assert report.valid and report.lines == 1 and report.blank_lines == 2
    assert lines == [{"id": "d1", "status": "enabled"}]


def test_hand_written_mistakes_each_get_a_finding() -> None:
    # an unclosed quote: the reader cannot go on, and says where and why
    report, _ = check('id,status,statusReason\nd1,enabled,"broken\nd2,enabled,ok\n')
    assert found(report) == [(2, "CSV_SYNTAX", None)]
    assert "quote" in report.errors[0].message
    # text after a closing quote
    report, _ = check('id,status,statusReason\nd1,enabled,"a"b\n')
    assert found(report) == [(2, "CSV_SYNTAX", None)]
    # saved in Windows-1252 (Excel's plain "CSV" on a Western locale)
    report, _ = check("id,status,tags.city\nd1,enabled,x\n")
    data = "id,status,tags.city\nd1,enabled,Zürich\n".encode("cp1252")
    report = validate_csv_stream(io.BytesIO(data))
    assert found(report) == [(2, "NOT_UTF8", None)] and "CSV UTF-8" in report.errors[0].message
    # saved as UTF-16 ("Unicode text"), or a header alone
    report = validate_csv_stream(io.BytesIO("id,status\nd1,enabled\n".encode("utf-16")))
    assert [str(f.code) for f in report.errors] == ["WRONG_ENCODING"]
    assert found(check("id,status\n")[0]) == [(0, "EMPTY_FILE", None)]


def test_json_lines_named_csv_get_one_finding_that_says_so() -> None:
    for body in (b'{"id": "d1", "status": "enabled"}\n', b"\xef\xbb\xbf  [{}]"):
        report = validate_csv_stream(io.BytesIO(body))
        assert found(report) == [(0, "JSON_NOT_CSV", None)] and ".jsonl" in report.errors[0].message


def test_a_csv_named_otherwise_is_told_to_be_named_csv() -> None:
    report = validate_stream(io.BytesIO(b"id,status\nd1,enabled\n"))
    assert [str(f.code) for f in report.errors] == ["CSV_FILE"]
    assert "named <name>.csv" in report.errors[0].message


def test_the_whole_file_is_read_even_when_the_header_is_fatal() -> None:
    # the caller hashes what it reads: a sheet refused at its header must still be read to its end
    read: list[bytes] = []

    def chunks() -> Iterator[bytes]:
        for chunk in (b"a,b\n", b"1,2\n" * 10, b"3,4\n"):
            read.append(chunk)
            yield chunk

    report = validate_csv_stream(chunks())
    assert not report.valid and len(read) == 3


def test_memory_stays_flat_as_the_sheet_grows() -> None:
    def sheet(rows: int) -> Iterator[bytes]:
        yield b"id;status;primaryKey;secondaryKey;tags.site;desired.n\r\n"
        block = 1000
        for start in range(0, rows, block):
            yield "".join(
                f"dev-{i};enabled;{KEY};{KEY2};plant-{i % 7};{i}\r\n" for i in range(start, start + block)
            ).encode()

    peaks: list[int] = []
    for rows in (5_000, 50_000):
        tracemalloc.start()
        try:
            report = validate_csv_stream(sheet(rows), sink=lambda _batch: None)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert report.valid and report.lines == rows
        peaks.append(peak)
    # ten times the rows, not ten times the memory (the repeated-id check spools to disk past its buffer)
    assert peaks[1] < peaks[0] * 2 + 4_000_000, peaks


def test_sheets_written_by_pythons_csv_module() -> None:
    for dialect, delimiter in (("excel", ","), ("excel", ";"), ("unix", ",")):
        buf = io.StringIO(newline="")
        writer = csv.writer(buf, dialect=dialect, delimiter=delimiter)
        writer.writerow(["id", "status", "statusReason", "primaryKey", "secondaryKey", "tags.note", "desired.list"])
        writer.writerow(["d1", "enabled", 'quote " and ; and ,', KEY, KEY2, "line\nbreak", "[1, 2]"])
        writer.writerow(["d2", "disabled", "", "", "", "", ""])
        report, lines = check(buf.getvalue())
        assert report.valid, (dialect, delimiter, report.errors)
        assert lines[0]["statusReason"] == 'quote " and ; and ,' and lines[0]["tags"]["note"] == "line\nbreak"
        assert lines[0]["properties"]["desired"]["list"] == [1, 2]
        assert lines[1] == {"id": "d2", "status": "disabled"}


def test_the_columns_are_those_the_cli_writes() -> None:
    # The CLI is packaged on its own (it does not import shared): its template and CSV export must agree with this
    from iotjobs import sheet

    assert sheet.COLUMNS == COLUMNS
    report, lines = check(sheet.template())
    assert report.valid, report.errors
    assert len(lines) == 2


def test_an_export_written_as_csv_reads_back_as_the_same_devices() -> None:
    from iotjobs import sheet

    exported: list[dict[str, Any]] = [
        {
            "id": "edge-1",
            "eTag": "AAAA",
            "status": "enabled",
            "authentication": {"type": "sas", "symmetricKey": {"primaryKey": KEY, "secondaryKey": KEY2}},
            "capabilities": {"iotEdge": True},
            "deviceScope": SCOPE,
            "parentScopes": [],
            "tags": {"site": "a", "loc": {"floor": 2, "room": "12"}, "note": " spaced "},
            "properties": {"desired": {"interval": 30, "$metadata": {}, "$version": 3}, "reported": {"x": 1}},
        },
        {
            "id": "leaf-1",
            "status": "disabled",
            "statusReason": "broken, sent back",
            "authentication": {"type": "selfSigned", "x509Thumbprint": {"primaryThumbprint": "ab" * 20}},
            "capabilities": {"iotEdge": False},
            "deviceScope": SCOPE,
            "parentScopes": [SCOPE],
            "tags": {"site": "b", "loc": "unknown", "empty": ""},
        },
        {"id": "edge-1", "moduleId": "m1", "status": "enabled", "authentication": {"type": "sas"}},
    ]
    lines = [json.dumps(d).encode() for d in exported]
    twin = sheet.twin_columns(lines)
    # 'loc' is an object for one device and text for the other: one column holds it, as JSON where it is an object
    assert twin == ["desired.interval", "tags.empty", "tags.loc", "tags.note", "tags.site"]
    for keys in (False, True):
        buf = io.StringIO(newline="")
        assert sheet.write(buf, sheet.rows(lines, twin, keys=keys)) == 3
        assert ("primaryKey" in buf.getvalue().splitlines()[0]) is keys
        report, back = check(buf.getvalue())
        assert report.valid, report.errors
        assert back[0]["tags"] == exported[0]["tags"] and back[0]["properties"] == {"desired": {"interval": 30}}
        assert back[0]["capabilities"] == {"iotEdge": True} and "deviceScope" not in back[0]  # its own scope
        assert back[0].get("authentication") == (
            {"type": "sas", "symmetricKey": {"primaryKey": KEY, "secondaryKey": KEY2}} if keys else {"type": "sas"}
        )
        assert back[1]["tags"] == exported[1]["tags"] and back[1]["statusReason"] == "broken, sent back"
        assert back[1]["deviceScope"] == SCOPE and back[1]["parentScopes"] == [SCOPE]
        assert back[1]["authentication"] == exported[1]["authentication"]
        assert back[2] == {"id": "edge-1", "moduleId": "m1", "status": "enabled", "authentication": {"type": "sas"}}


def test_a_sheet_of_rows_that_never_fit_the_header_is_given_up_on_with_one_finding_first() -> None:
    rows = "".join(f"r{i},enabled,x,y\n" for i in range(300))  # four cells under a two-column header
    report, _ = check("id,status\n" + rows, give_up_after=100, max_errors=20)
    assert found(report)[0] == (0, "NO_DEVICE_LINES", None) and "rest of the sheet was not checked" in (
        report.errors[0].message
    )
    assert report.lines < 300 and not report.valid


def test_excels_sep_line_names_the_delimiter_and_lines_keep_their_numbers() -> None:
    report, lines = check("sep=;\r\nid;status;statusReason\r\nd1;enabled;a, b\r\nd2;Enabled;\r\n")
    assert found(report) == [(4, "INVALID_STATUS", "status")] and lines[0]["statusReason"] == "a, b"
    assert report.errors[0].message.startswith("B4 (line 4, column status): ")
    report, _ = check("sep=,\nid,status,stauts\nd1,enabled,x\n")
    assert found(report) == [(2, "MISSPELLED_FIELD", "stauts")] and report.errors[0].message.startswith("C2 (line 2)")


def test_a_row_separated_otherwise_than_the_header_is_told_so() -> None:
    report, _ = check("id;status;tags.site\nd1;enabled;a\nd2,enabled,b\n")
    assert found(report) == [(3, "WRONG_CELL_COUNT", None)]
    assert "separated by ',' and the header's by ';'" in report.errors[0].message
