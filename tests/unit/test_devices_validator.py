"""The streaming devices-file validator: every rule, valid and invalid, and properties over random input."""

from __future__ import annotations

import base64
import codecs
import gzip
import io
import json
import tracemalloc
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emulators.iothub import model
from shared.devices import (
    IMPORT_MODES,
    MAX_LINE_BYTES,
    Code,
    Finding,
    LineChecker,
    ValidationReport,
    fast,
    fields,
    validate_stream,
)
from shared.devices.fast import accept
from shared.devices.rules import DEVICE_ID_RE
from shared.devices.sniff import sniff

KEY = base64.b64encode(b"k" * 32).decode()
SHORT_KEY = base64.b64encode(b"k" * 15).decode()
LONG_KEY = base64.b64encode(b"k" * 65).decode()
ID_ALPHABET = "abcXYZ019-.%_*?!(),:=@$'"
THUMB = "ab" * 20


def run(*lines: Any, raw: bytes | None = None, **kw: Any) -> ValidationReport:
    data = (
        raw if raw is not None else "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines).encode()
    )
    return validate_stream(io.BytesIO(data), **kw)


def codes(report: ValidationReport) -> list[str]:
    return [str(f.code) for f in report.errors]


def dev(device_id: str = "d1", **extra: Any) -> dict[str, Any]:
    return {"id": device_id, "status": "enabled", **extra}


VALID_LINES: list[dict[str, Any]] = [
    dev(),
    dev(
        "d2",
        importMode="create",
        authentication={"symmetricKey": {"primaryKey": KEY, "secondaryKey": KEY}, "type": "sas"},
    ),
    dev(
        "d3",
        authentication={
            "x509Thumbprint": {"primaryThumbprint": THUMB, "secondaryThumbprint": "CD" * 32},
            "type": "selfSigned",
        },
    ),
    dev("d4", authentication={"type": "certificateAuthority"}, capabilities={"iotEdge": True}, parentScopes=["s"]),
    dev("d5", importMode="updateIfMatchETag", eTag="MA=="),
    {"id": "d6", "importMode": "delete"},
    {"id": "d7", "importMode": "updateTwinIfMatchETag", "twinETag": "AAAAAAAAAAE=", "tags": {"a": 1}},
    dev("d8", tags={"site": "oslo"}, properties={"desired": {"cfg": {"a": {"b": 1}}, "$metadata": {}, "$version": 3}}),
    {"id": "d8", "moduleId": "telemetry", "importMode": "createOrUpdate"},
    dev("d9", authentication={"symmetricKey": {"primaryKey": None, "secondaryKey": None}, "type": "sas"}),
    dev("A-1.%_*?!(),:=@$'"),
]


# A line as a hub exports it (a backup being restored): ETags, null thumbprints beside keys, twin metadata.
EXPORTED_LINE: dict[str, Any] = {
    "id": "dev-42",
    "eTag": "MTIzNDU2Nzg=",
    "status": "enabled",
    "statusReason": "ok",
    "authentication": {
        "symmetricKey": {"primaryKey": KEY, "secondaryKey": KEY},
        "x509Thumbprint": {"primaryThumbprint": None, "secondaryThumbprint": None},
        "type": "sas",
    },
    "twinETag": "AAAAAAAAAAE=",
    "tags": {"site": "oslo"},
    "properties": {
        "desired": {
            "interval": 30,
            "$metadata": {"$lastUpdated": "2026-11-21T00:00:00Z", "interval": {"$lastUpdated": "2026-11-21T00:00:00Z"}},
            "$version": 2,
        },
        "reported": {"$metadata": {"$lastUpdated": "2026-11-21T00:00:00Z"}, "$version": 1},
    },
    "capabilities": {"iotEdge": False},
}


def test_valid_lines_pass_with_counts() -> None:
    report = run(*VALID_LINES)
    assert report.valid, codes(report)
    assert report.lines == len(VALID_LINES) and report.module_lines == 1
    assert report.modes["createOrUpdate"] == 7 and report.modes["delete"] == 1 and report.modes["create"] == 1


@pytest.mark.parametrize(
    ("line", "code", "field", "hint"),
    [
        ({"status": "enabled"}, Code.MISSING_FIELD, "id", "device id"),
        (dev(""), Code.INVALID_DEVICE_ID, "id", "deviceId is empty"),
        ({"id": "d", "moduleId": ""}, Code.INVALID_MODULE_ID, "moduleId", "moduleId is empty"),
        (dev(importMode="CreateOrUpdate"), Code.INVALID_IMPORT_MODE, "importMode", "use 'createOrUpdate'"),
        (dev(importMode="upsert"), Code.INVALID_IMPORT_MODE, "importMode", "one of"),
        (dev(status="Enabled"), Code.INVALID_STATUS, "status", "use 'enabled'"),
        ({"id": "d1", "importMode": "create"}, Code.MISSING_FIELD, "status", '"status": "enabled"'),
        (dev("has space"), Code.INVALID_DEVICE_ID, "id", "no spaces"),
        (dev("a+b"), Code.INVALID_DEVICE_ID, "id", "+"),
        (dev("x" * 129), Code.INVALID_DEVICE_ID, "id", "1-128"),
        (dev(id=5), Code.WRONG_TYPE, "id", "string"),
        ({"id": "d", "moduleId": "$edgeAgent"}, Code.EDGE_SYSTEM_MODULE, "moduleId", "Remove this line"),
        ({"id": "d", "moduleId": "bad module"}, Code.INVALID_MODULE_ID, "moduleId", "invalid"),
        (
            dev(authentication={"type": "SELF_SIGNED"}),
            Code.INVALID_AUTH_TYPE,
            "authentication.type",
            "use 'selfSigned'",
        ),
        (
            dev(authentication={"symmetricKey": {"primaryKey": KEY}}),
            Code.INCOMPLETE_KEY_PAIR,
            "authentication.symmetricKey",
            "both",
        ),
        (
            dev(authentication={"symmetricKey": {"primaryKey": "bm9wZQ==", "secondaryKey": KEY}}),
            Code.INVALID_KEY,
            "authentication.symmetricKey.primaryKey",
            "16 to 64",
        ),
        (
            dev(authentication={"symmetricKey": {"primaryKey": "!!", "secondaryKey": KEY}}),
            Code.INVALID_KEY,
            "authentication.symmetricKey.primaryKey",
            "base64",
        ),
        (
            dev(
                authentication={
                    "symmetricKey": {"primaryKey": base64.b64encode(b"k" * 65).decode(), "secondaryKey": KEY}
                }
            ),
            Code.INVALID_KEY,
            "authentication.symmetricKey.primaryKey",
            "65 bytes",
        ),
        (
            dev(
                authentication={
                    "symmetricKey": {"primaryKey": KEY, "secondaryKey": KEY},
                    "x509Thumbprint": {"primaryThumbprint": THUMB},
                }
            ),
            Code.KEYS_AND_THUMBPRINTS,
            "authentication",
            "keep one",
        ),
        (
            dev(authentication={"x509Thumbprint": {"primaryThumbprint": "xyz"}}),
            Code.INVALID_THUMBPRINT,
            "authentication.x509Thumbprint.primaryThumbprint",
            "40 hex",
        ),
        (
            dev(authentication={"type": "selfSigned"}),
            Code.AUTH_TYPE_MISMATCH,
            "authentication.x509Thumbprint",
            "primaryThumbprint",
        ),
        (
            dev(authentication={"type": "sas", "x509Thumbprint": {"primaryThumbprint": THUMB}}),
            Code.AUTH_TYPE_MISMATCH,
            "authentication.type",
            "selfSigned",
        ),
        (
            dev(
                authentication={
                    "type": "certificateAuthority",
                    "symmetricKey": {"primaryKey": KEY, "secondaryKey": KEY},
                }
            ),
            Code.AUTH_TYPE_MISMATCH,
            "authentication.type",
            "type 'sas'",
        ),
        (
            dev(authentication={"thumbprint": {"primaryThumbprint": THUMB}}),
            Code.FIELD_NAME_CASE,
            "authentication.thumbprint",
            "x509Thumbprint",
        ),
        (dev(ImportMode="delete"), Code.FIELD_NAME_CASE, "ImportMode", "importMode"),
        (dev(importMode="updateIfMatchETag"), Code.MISSING_ETAG, "eTag", "current ETag"),
        (dev(importMode="deleteIfMatchETag"), Code.MISSING_ETAG, "eTag", "eTag"),
        (dev(importMode="createOrUpdateIfMatchETag", eTag=""), Code.MISSING_ETAG, "eTag", "eTag"),
        ({"id": "d", "importMode": "updateTwinIfMatchETag"}, Code.MISSING_ETAG, "twinETag", "twinETag"),
        (dev(tags={"t": "x" * 9000}), Code.TWIN_TOO_LARGE, "tags", "8 KB"),
        (
            dev(properties={"desired": {f"k{i}": "x" * 3000 for i in range(12)}}),
            Code.TWIN_TOO_LARGE,
            "properties.desired",
            "32 KB",
        ),
        (dev(properties={"reported": {"big": "x" * 5000}}), Code.TWIN_TOO_LARGE, "properties.reported.big", "4 KB"),
        (dev(tags={"a.b": 1}), Code.INVALID_TWIN_KEY, "tags", "'.'"),
        (dev(properties={"desired": {"ok": {"bad key": 1}}}), Code.INVALID_TWIN_KEY, "properties.desired", "spaces"),
        (dev(tags="oslo"), Code.WRONG_TYPE, "tags", "object"),
        (dev(statusReason="r" * 129), Code.STATUS_REASON_TOO_LONG, "statusReason", "128"),
        (dev(capabilities={"iotEdge": "yes"}), Code.WRONG_TYPE, "capabilities", "iotEdge"),
        (dev(parentScopes="s"), Code.WRONG_TYPE, "parentScopes", "list"),
        ("[1, 2]", Code.NOT_AN_OBJECT, None, "one JSON object"),
        ('{"id": "d1", "status": "enabled"', Code.INVALID_JSON, None, "Not valid JSON"),
    ],
)
def test_each_rule(line: Any, code: Code, field: str | None, hint: str) -> None:
    report = run(dev("before"), line, dev("after"))
    assert not report.valid
    finding = next(f for f in report.errors if f.code == code)
    assert finding.line == 2
    assert finding.field == field
    assert hint in finding.message
    assert report.lines_with_errors == 1


# --- field names: the hub drops what it does not know, so a slip must not pass silently ------------------------

PAIR = {"primaryKey": KEY, "secondaryKey": KEY}


@pytest.mark.parametrize(
    ("line", "code", "field", "meant"),
    [
        (dev(tag={"site": "oslo"}), Code.MISSPELLED_FIELD, "tag", "tags"),
        (dev(capabilites={"iotEdge": True}), Code.MISSPELLED_FIELD, "capabilites", "capabilities"),
        (dev(statuss="enabled", status=None), Code.MISSPELLED_FIELD, "statuss", "status"),
        (dev(parentScope=["s"]), Code.MISSPELLED_FIELD, "parentScope", "parentScopes"),
        ({"id": "d1", "module": "m"}, Code.MISSPELLED_FIELD, "module", "moduleId"),
        (dev(properties={"desierd": {"a": 1}}), Code.MISSPELLED_FIELD, "properties.desierd", "desired"),
        (dev(properties={"reportd": {}}), Code.MISSPELLED_FIELD, "properties.reportd", "reported"),
        (
            dev(authentication={"symetricKey": PAIR}),
            Code.MISSPELLED_FIELD,
            "authentication.symetricKey",
            "symmetricKey",
        ),
        (dev(authentication={"tpye": "sas"}), Code.MISSPELLED_FIELD, "authentication.tpye", "type"),
        (
            dev(authentication={"symmetricKey": {"primaryKey": KEY, "secondary": KEY}}),
            Code.MISSPELLED_FIELD,
            "authentication.symmetricKey.secondary",
            "secondaryKey",
        ),
        (
            dev(authentication={"x509Thumbprint": {"primaryThumbprnt": THUMB}}),
            Code.MISSPELLED_FIELD,
            "authentication.x509Thumbprint.primaryThumbprnt",
            "primaryThumbprint",
        ),
        (dev(capabilities={"iotEgde": True}), Code.MISSPELLED_FIELD, "capabilities.iotEgde", "iotEdge"),
        # a difference of case (or of punctuation) is its own finding, at any depth
        (dev(Tags={"a": 1}), Code.FIELD_NAME_CASE, "Tags", "tags"),
        (
            dev(authentication={"SymmetricKey": PAIR}),
            Code.FIELD_NAME_CASE,
            "authentication.SymmetricKey",
            "symmetricKey",
        ),
        (
            dev(authentication={"symmetricKey": {"primary_key": KEY, "secondaryKey": KEY}}),
            Code.FIELD_NAME_CASE,
            "authentication.symmetricKey.primary_key",
            "primaryKey",
        ),
        (dev(properties={"Desired": {}}), Code.FIELD_NAME_CASE, "properties.Desired", "desired"),
    ],
)
def test_a_near_miss_of_a_field_is_an_error_with_the_field_meant(
    line: dict[str, Any], code: Code, field: str, meant: str
) -> None:
    line = {k: v for k, v in line.items() if v is not None}
    report = run(dev("before"), line, dev("after"))
    assert not report.valid
    finding = next(f for f in report.errors if f.code == code)
    assert (finding.line, finding.field, finding.device_id) == (2, field, line["id"])
    key = field.rpartition(".")[2]
    assert f"Field '{key}'" in finding.message and f"did you mean '{meant}'?" in finding.message
    where = field.rpartition(".")[0]
    assert (f" in {where} " in finding.message) == bool(where)


def test_the_message_says_where_the_field_is() -> None:
    report = run(*[dev(f"d{i}") for i in range(6)], dev("d7", authentication={"symetricKey": PAIR}))
    assert [(f.line, f.message) for f in report.errors] == [
        (
            7,
            "Field 'symetricKey' in authentication is not known; did you mean 'symmetricKey'? The hub would drop it "
            "silently.",
        )
    ]


@pytest.mark.parametrize(
    ("line", "field"),
    [
        (dev(site="oslo"), "site"),
        (dev(twin={"tags": {"a": 1}}), "twin"),  # the format has no 'twin': its parts are top-level
        (dev(properties={"desired": {}, "extra": 1}), "properties.extra"),
        (dev(authentication={"type": "sas", "kind": "x"}), "authentication.kind"),
        (dev(capabilities={"iotEdge": False, "other": True}), "capabilities.other"),
        (dev(state="on"), "state"),  # like 'status', but the line has its real 'status': other data, not a slip
        (dev(ip="10.0.0.1"), "ip"),  # one edit from 'id', but two-letter names are only matched by case
    ],
)
def test_other_unknown_fields_are_line_numbered_warnings_and_the_file_stays_valid(
    line: dict[str, Any], field: str
) -> None:
    report = run(dev("before"), line, dev("after"))
    assert report.valid, codes(report)
    assert [(f.line, f.code, f.field, f.device_id) for f in report.warnings] == [(2, Code.UNKNOWN_FIELD, field, "d1")]
    assert report.warning_count == report.lines_with_warnings == 1
    assert "the hub ignores it" in report.warnings[0].message


def test_warnings_are_counted_all_kept_first_and_summarized() -> None:
    lines = [dev(f"d{i}", site="x", floor=1) for i in range(30)]
    report = run(*lines, dev("bad", tag={}), max_errors=5, max_warnings=4)
    assert not report.valid and codes(report) == ["MISSPELLED_FIELD"]
    assert report.warning_count == 60 and report.lines_with_warnings == 30
    assert [(f.line, f.field) for f in report.warnings] == [(1, "site"), (1, "floor"), (2, "site"), (2, "floor")]
    summary = report.summary()
    assert (summary["warningCount"], summary["warningsShown"], summary["linesWithWarnings"]) == (60, 4, 30)
    assert summary["warnings"][0] == report.warnings[0].as_dict() and summary["warnings"][0]["line"] == 1
    assert summary["errorCount"] == 1 and summary["valid"] is False


def test_twin_data_names_are_the_users_own_and_never_judged() -> None:
    report = run(
        dev(
            tags={"tag": 1, "statuss": 2, "anything": {"desierd": 3}},
            properties={"desired": {"symetricKey": 1, "reportd": {"x": 1}}, "reported": {"capabilites": 2}},
        )
    )
    assert report.valid and report.warning_count == 0, report.summary()


SERVICE_WRITTEN = {
    "statusUpdatedTime": "2026-11-21T00:00:00Z",
    "connectionState": "Disconnected",
    "connectionStateUpdatedTime": "0001-01-01T00:00:00Z",
    "lastActivityTime": "0001-01-01T00:00:00Z",
    "cloudToDeviceMessageCount": 0,
    "generationId": "638000000000000000",
    "version": 3,
    "deviceScope": "ms-azure-iot-edge://edge-1-638000000000000000",
    "parentScopes": ["ms-azure-iot-edge://edge-1-638000000000000000"],
}


def test_what_the_service_writes_in_exports_is_known_and_never_flagged() -> None:
    exported = {**EXPORTED_LINE, **SERVICE_WRITTEN}
    module = {
        "id": "dev-42",
        "moduleId": "telemetry",
        "managedBy": "iotEdge",
        "eTag": "MA==",
        "status": "enabled",
        "authentication": None,
        "twinETag": "AAAAAAAAAAE=",
        "tags": {},
        "properties": EXPORTED_LINE["properties"],
        **SERVICE_WRITTEN,
    }
    del module["deviceScope"], module["parentScopes"]
    report = run(EXPORTED_LINE, exported | {"id": "dev-43"}, module, dev("d1", importMode="createOrUpdate"))
    assert report.valid and report.warning_count == 0, report.summary()


@pytest.mark.parametrize("exclude_keys", [False, True])
def test_lines_exported_by_the_hub_emulator_pass_without_a_finding(exclude_keys: bool) -> None:
    now = "2026-11-21T00:00:00Z"
    records = [
        model.apply(dev("d1", tags={"site": "oslo"}, properties={"desired": {"n": 1}}), None, now=now),
        model.apply(dev("e1", capabilities={"iotEdge": True}, deviceScope="s", parentScopes=["p"]), None, now=now),
        model.apply({"id": "d1", "moduleId": "m1", "managedBy": "iotEdge"}, None, now=now, module=True),
    ]
    assert all(isinstance(r, dict) for r in records)
    report = run(*[model.export_line(r, exclude_keys=exclude_keys) for r in records if isinstance(r, dict)])
    assert report.valid and report.lines == 3 and report.warning_count == 0, report.summary()


def test_depth_limit() -> None:
    deep: dict[str, Any] = {"v": 1}
    for _ in range(10):
        deep = {"n": deep}
    assert Code.TWIN_TOO_DEEP in codes(run(dev(properties={"desired": deep})))
    assert run(dev(properties={"desired": deep["n"]})).valid


def test_duplicates_name_both_lines() -> None:
    report = run(dev("a"), dev("b"), {"id": "b", "moduleId": "m"}, {"id": "b", "moduleId": "m"}, dev("a"))
    dupes = [f for f in report.errors if f.code == Code.DUPLICATE_ID]
    assert [(f.line, f.device_id, f.module_id) for f in dupes] == [(4, "b", "m"), (5, "a", None)]
    assert "line 1" in dupes[1].message and "line 3" in dupes[0].message


def test_many_repeats_keep_the_first_findings_and_count_them_all() -> None:
    report = run(*[dev("a")] * 500, dev("b"), dev("b"), max_errors=10)
    assert report.error_count == report.lines_with_errors == 500
    assert [f.line for f in report.errors] == list(range(2, 12))
    assert all(f.code == Code.DUPLICATE_ID and "line 1" in f.message for f in report.errors)


def test_bom_crlf_and_blank_lines_are_tolerated_and_normalized() -> None:
    out: list[bytes] = []
    body = b'\xef\xbb\xbf{"id":"a","status":"enabled"}\r\n\r\n  \n{"id":"b","status":"enabled"}'
    report = validate_stream(io.BytesIO(body), sink=out.append)
    assert report.valid and report.lines == 2 and report.blank_lines == 2
    assert b"".join(out) == b'{"id":"a","status":"enabled"}\n{"id":"b","status":"enabled"}\n'


def test_not_utf8() -> None:
    report = run(raw=b'{"id":"a","status":"enabled"}\n{"id":"\xff\xfe","status":"enabled"}\n')
    assert [(f.line, f.code) for f in report.errors] == [(2, Code.NOT_UTF8)]


GOOD_BODY = "".join(json.dumps(dev(f"d{i}")) + "\n" for i in range(200))


def in_chunks(body: bytes, size: int) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


@pytest.mark.parametrize("size", [1, 5, 1 << 20])
def test_a_gzip_file_gets_one_finding_that_says_so(size: int) -> None:
    out: list[bytes] = []
    report = validate_stream(in_chunks(gzip.compress(GOOD_BODY.encode()), size), sink=out.append)
    assert [(f.line, f.code) for f in report.errors] == [(0, Code.COMPRESSED_FILE)]
    assert report.error_count == 1 and not report.valid and out == []
    assert "the file is gzip-compressed: upload it uncompressed" in report.errors[0].message.lower()


ARRAY_BODY = "[\n" + ",\n".join(json.dumps(dev(f"d{i}")) for i in range(200)) + "\n]\n"


@pytest.mark.parametrize("size", [1, 7, 1 << 20])
@pytest.mark.parametrize("body", [ARRAY_BODY, "  " + json.dumps([dev(f"d{i}") for i in range(50)]), "\ufeff[]"])
def test_a_json_array_gets_one_finding_naming_the_format_and_the_fix(body: str, size: int) -> None:
    out: list[bytes] = []
    report = validate_stream(in_chunks(body.encode(), size), sink=out.append)
    assert [(f.line, f.code) for f in report.errors] == [(0, Code.JSON_ARRAY)]
    assert report.error_count == 1 and not report.valid and out == []
    message = report.errors[0].message
    assert "JSON array" in message and "one device object per line" in message and "jq -c '.[]'" in message


CSV_BODY = "id,status,tags.site\nd1,enabled,oslo\nd2,disabled,bergen\n"


@pytest.mark.parametrize("size", [1, 7, 1 << 20])
@pytest.mark.parametrize(
    "body",
    [
        CSV_BODY,
        CSV_BODY.replace("\n", "\r\n"),
        '\ufeff"deviceId";"status"\r\n"d1";"enabled"\r\n',  # Excel in a locale whose list separator is ';'
        "deviceId,status",  # a header alone, no newline
    ],
)
def test_a_csv_file_gets_one_finding_naming_the_format_and_the_fix(body: str, size: int) -> None:
    report = validate_stream(in_chunks(body.encode(), size))
    assert [(f.line, f.code) for f in report.errors] == [(0, Code.CSV_FILE)]
    assert report.error_count == 1 and not report.valid
    message = report.errors[0].message
    assert "CSV" in message and "named <name>.csv" in message and "one device object per line" in message
    assert "status" in message  # the header it saw


@pytest.mark.parametrize(
    "first_line",
    [
        json.dumps(dev("d1")),  # a JSON line is never a header
        "hello",  # one word: no table, the line checks explain it
        "id,status {",  # not all cells are names
    ],
)
def test_a_first_line_that_is_no_csv_header_is_left_to_the_line_checks(first_line: str) -> None:
    report = validate_stream(io.BytesIO((first_line + "\n").encode()))
    assert Code.CSV_FILE not in codes(report) and Code.JSON_ARRAY not in codes(report)


def test_device_id_gets_a_did_you_mean_id_and_no_second_finding() -> None:
    report = run({"deviceId": "d1", "status": "enabled"}, {"device_id": "d2", "status": "enabled"})
    assert [(f.line, f.code, f.field) for f in report.errors] == [
        (1, Code.MISSPELLED_FIELD, "deviceId"),
        (2, Code.MISSPELLED_FIELD, "device_id"),
    ]
    assert all("did you mean 'id'" in f.message for f in report.errors)
    assert report.lines_with_errors == 2


def test_device_id_beside_id_is_other_data_not_a_slip() -> None:
    report = run({"id": "d1", "deviceId": "d1", "status": "enabled"})
    assert report.valid and [w.code for w in report.warnings] == [Code.UNKNOWN_FIELD]


@pytest.mark.parametrize(
    ("encoding", "bom", "named"),
    [
        ("utf-16-le", codecs.BOM_UTF16_LE, "UTF-16 (little-endian)"),
        ("utf-16-be", codecs.BOM_UTF16_BE, "UTF-16 (big-endian)"),
        ("utf-16-le", b"", "UTF-16 (little-endian)"),  # no BOM: told by its NUL bytes
        ("utf-16-be", b"", "UTF-16 (big-endian)"),
        ("utf-32-le", codecs.BOM_UTF32_LE, "UTF-32 (little-endian)"),
        ("utf-32-be", b"", "UTF-32 (big-endian)"),
    ],
)
@pytest.mark.parametrize("size", [1, 1 << 20])
def test_a_utf16_file_gets_one_finding_for_the_file(encoding: str, bom: bytes, named: str, size: int) -> None:
    report = validate_stream(in_chunks(bom + GOOD_BODY.encode(encoding), size))
    assert [(f.line, f.code) for f in report.errors] == [(0, Code.WRONG_ENCODING)]
    assert report.error_count == 1 and report.lines_with_errors == 0
    assert f"The file is {named} text: save it as UTF-8" in report.errors[0].message


def test_sniffing_looks_at_the_first_bytes_only() -> None:
    # validate_stream hands over its whole first chunk (1 MB): cutting it into characters cost 37 MB of peak RSS
    first_chunk = GOOD_BODY.encode() * 160
    assert len(first_chunk) > 1 << 20
    tracemalloc.start()
    try:
        assert sniff(first_chunk) is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10_000


def test_short_files_and_a_bad_line_later_are_still_judged_line_by_line() -> None:
    assert run(raw=b'{"id":"a","status":"enabled"}').valid
    assert codes(run(raw=b"{}")) == ["MISSING_FIELD", "MISSING_FIELD"]  # no id, no status: not taken for UTF-16
    # two stray bytes that look like a UTF-16 BOM before UTF-8 lines: the first line is what is wrong
    assert [(f.line, f.code) for f in run(raw=b"\xfe\xff" + GOOD_BODY.encode()).errors] == [(1, Code.NOT_UTF8)]
    later = GOOD_BODY.encode() + '{"id":"x","status":"enabled"}\n'.encode("utf-16-le")
    # the UTF-16 newline is "\n\x00": its NUL starts one more line
    assert [(f.line, f.code) for f in run(raw=later).errors] == [(201, Code.INVALID_JSON), (202, Code.INVALID_JSON)]


def test_over_long_line_is_skipped_without_holding_it() -> None:
    huge = b'{"id":"x","tags":{"t":"' + b"y" * (MAX_LINE_BYTES * 3) + b'"}}'
    chunks = [
        b'{"id":"a","status":"enabled"}\n',
        *(huge[i : i + 50_000] for i in range(0, len(huge), 50_000)),
        b"\n",
        b'{"id":"b","status":"enabled"}\n',
    ]
    report = validate_stream(iter(chunks))
    assert [(f.line, f.code) for f in report.errors] == [(2, Code.LINE_TOO_LONG)]
    assert report.lines == 3


def test_empty_file() -> None:
    for body in (b"", b"\n\n  \n", b"\xef\xbb\xbf"):
        report = run(raw=body)
        assert codes(report) == ["EMPTY_FILE"]


def test_first_errors_in_full_and_the_total() -> None:
    report = run(*[dev(f"bad id {i}") for i in range(250)], max_errors=20)
    assert report.error_count == 250 and len(report.errors) == 20
    assert [f.line for f in report.errors] == list(range(1, 21))
    summary = report.summary()
    assert summary["errorCount"] == 250 and summary["errorsShown"] == 20


def test_sink_gets_only_valid_lines_and_chunk_boundaries_do_not_matter() -> None:
    lines = [dev(f"d{i}") for i in range(50)]
    body = "".join(json.dumps(x) + "\n" for x in lines).encode()
    for size in (1, 7, 64, 4096):
        out: list[bytes] = []
        report = validate_stream(iter(body[i : i + size] for i in range(0, len(body), size)), sink=out.append)
        assert report.valid and report.lines == 50
        assert b"".join(out).count(b"\n") == 50


# --- properties ---------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=6)
)
twin_keys = st.text(alphabet="ab1_ .$\x01\x85é", max_size=4)
field_values = {
    "id": st.one_of(st.text(max_size=10), st.sampled_from(["d1", "d 2", "x" * 130]), st.integers()),
    "moduleId": st.one_of(st.none(), st.sampled_from(["m", "$edgeHub", "bad m"])),
    "importMode": st.one_of(
        st.none(),
        st.sampled_from(
            [
                "create",
                "createOrUpdate",
                "CreateOrUpdate",
                "updateIfMatchETag",
                "updateTwinIfMatchETag",
                "delete",
                "nope",
            ]
        ),
    ),
    "status": st.one_of(st.none(), st.sampled_from(["enabled", "disabled", "Enabled", ""])),
    "eTag": st.one_of(st.none(), st.text(max_size=6)),
    "authentication": st.one_of(
        st.none(),
        st.fixed_dictionaries(
            {},
            optional={
                "type": st.sampled_from(["sas", "selfSigned", "certificateAuthority", "none", "SELF_SIGNED"]),
                "symmetricKey": st.one_of(
                    st.none(),
                    st.fixed_dictionaries(
                        {},
                        optional={
                            "primaryKey": st.sampled_from([KEY, "bm9wZQ==", "!!", None]),
                            "secondaryKey": st.sampled_from([KEY, None]),
                        },
                    ),
                ),
                "x509Thumbprint": st.one_of(
                    st.none(),
                    st.fixed_dictionaries({}, optional={"primaryThumbprint": st.sampled_from([THUMB, "xyz", None])}),
                ),
            },
        ),
    ),
    "tags": json_values,
    "properties": st.one_of(
        json_values, st.fixed_dictionaries({}, optional={"desired": json_values, "reported": json_values})
    ),
}
lines_strategy = st.fixed_dictionaries({}, optional=field_values)


def full_verdict(raw: bytes) -> tuple[str | None, str | None, str] | None:
    """What the full check says of one line (None: it has findings)."""
    report = ValidationReport()
    result = LineChecker(report).check(orjson.loads(raw), 1)
    assert (result is None) == (report.error_count > 0)
    return result


def full_warnings(raw: bytes) -> list[Finding]:
    report = ValidationReport()
    LineChecker(report).check(orjson.loads(raw), 1)
    return report.warnings


def assert_fast_agrees(raw: bytes) -> None:
    """The fast path's contract: what it accepts, the full check accepts too, with the same id and mode, and
    without a warning (an accepted line never reaches the full check, so a warning would be lost)."""
    fast = accept(raw)
    if fast is not None:
        assert full_verdict(raw) == (fast[0], None, fast[1]), raw
        assert full_warnings(raw) == [], raw


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` about nine times in ten: near-valid lines exercise the fast path's accepting branch too."""
    return st.one_of(*[good] * 9, bad)


metadata = st.dictionaries(
    st.sampled_from(["$lastUpdated", "a", "a.b"]),
    mostly(
        st.one_of(st.text(max_size=3), st.dictionaries(st.just("$lastUpdated"), st.text(max_size=3))),
        st.dictionaries(st.just("$lastUpdated"), json_values),
    ),
    max_size=2,
)


def with_metadata(line: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Sometimes give the line's twin sections "$metadata" and "$version", as an export does."""
    sections = [s for s in (line.get("tags"), *_property_sections(line)) if isinstance(s, dict)]
    if not sections:
        return st.just(line)

    def add(meta: dict[str, Any], version: Any, which: int) -> dict[str, Any]:
        copy = json.loads(json.dumps(line))
        target = [s for s in (copy.get("tags"), *_property_sections(copy)) if isinstance(s, dict)][which]
        target["$metadata"] = meta
        if version is not None:
            target["$version"] = version
        return copy

    return st.one_of(
        st.just(line),
        st.builds(add, metadata, st.sampled_from([1, None, {"x": 1}]), st.integers(0, len(sections) - 1)),
        st.builds(add, metadata, st.just(1), st.integers(0, len(sections) - 1)),
    )


def _property_sections(line: dict[str, Any]) -> list[Any]:
    props = line.get("properties")
    return [props.get("desired"), props.get("reported")] if isinstance(props, dict) else []


flat_twin = st.dictionaries(st.text(alphabet="ab1_", min_size=1, max_size=4), scalars, max_size=3)
# Lines near the fast path's shapes, so that both its accepting and its declining branches are exercised.
near_fast_lines = st.fixed_dictionaries(
    {
        "id": mostly(
            st.text(alphabet=ID_ALPHABET, min_size=1, max_size=6),
            st.one_of(st.text(alphabet=ID_ALPHABET + " #+é\n", max_size=6), st.just("x" * 129)),
        ),
        "status": mostly(st.sampled_from(["enabled", "disabled"]), st.sampled_from(["Disabled", None])),
    },
    optional={
        "importMode": mostly(
            st.sampled_from(["create", "createOrUpdate", "update", "delete", "updateTwin"]),
            st.sampled_from(["Create", "updateIfMatchETag", None]),
        ),
        "authentication": mostly(
            st.one_of(
                st.fixed_dictionaries(
                    {"symmetricKey": st.fixed_dictionaries({"primaryKey": st.just(KEY), "secondaryKey": st.just(KEY)})},
                    optional={
                        "type": st.just("sas"),
                        "x509Thumbprint": st.just({"primaryThumbprint": None, "secondaryThumbprint": None}),
                    },
                ),
                st.just({"symmetricKey": {"primaryKey": None, "secondaryKey": None}, "type": "selfSigned"}),
                st.fixed_dictionaries(
                    {
                        "x509Thumbprint": st.fixed_dictionaries(
                            {"primaryThumbprint": st.sampled_from([THUMB, "CD" * 32])}
                        )
                    },
                    optional={"type": st.just("selfSigned")},
                ),
                st.fixed_dictionaries({"type": st.sampled_from(["sas", "certificateAuthority", "none"])}),
            ),
            st.fixed_dictionaries(
                {},
                optional={
                    "type": st.sampled_from(["sas", "selfSigned", "certificateAuthority", "none", "x", None]),
                    "symmetricKey": st.one_of(
                        st.none(),
                        st.fixed_dictionaries(
                            {},
                            optional={
                                "primaryKey": st.sampled_from([KEY, SHORT_KEY, LONG_KEY, "bm9wZQ==", "Zm9v", "é", 1]),
                                "secondaryKey": st.sampled_from([KEY, None, "!!"]),
                            },
                        ),
                    ),
                    "x509Thumbprint": st.one_of(
                        st.none(),
                        st.fixed_dictionaries(
                            {},
                            optional={
                                "primaryThumbprint": st.sampled_from([THUMB, "ab" * 19, "g" * 40, None]),
                                "secondaryThumbprint": st.sampled_from([THUMB, "xyz", None]),
                            },
                        ),
                    ),
                },
            ),
        ),
        "tags": mostly(flat_twin, st.one_of(st.none(), st.dictionaries(twin_keys, scalars, max_size=3), json_values)),
        "properties": mostly(
            st.fixed_dictionaries({}, optional={"desired": flat_twin, "reported": flat_twin}),
            st.one_of(
                st.none(),
                json_values,
                st.fixed_dictionaries(
                    {},
                    optional={
                        "desired": st.one_of(st.none(), st.dictionaries(twin_keys, scalars, max_size=3)),
                        "reported": json_values,
                    },
                ),
            ),
        ),
        "eTag": mostly(st.just("MA=="), st.sampled_from(["", None, 1])),
        "twinETag": mostly(st.just("AAAAAAAAAAE="), st.sampled_from(["", None])),
        "statusReason": mostly(
            st.text(alphabet="aé😀", max_size=128),
            st.one_of(st.none(), st.integers(), st.text(alphabet="aé😀", min_size=129, max_size=130)),
        ),
        "capabilities": mostly(
            st.fixed_dictionaries({}, optional={"iotEdge": st.booleans()}),
            st.one_of(st.none(), st.just({"iotEdge": 1}), st.just({"other": True})),
        ),
        "parentScopes": mostly(st.lists(st.just("s"), max_size=2), st.one_of(st.none(), st.just([1]))),
        "deviceScope": mostly(st.just("scope"), st.sampled_from([2, None])),
    },
).flatmap(with_metadata)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(lines_strategy, near_fast_lines), st.sampled_from(["compact", "spaced", "ascii"]))
def test_fast_path_never_accepts_what_the_full_check_rejects(line: dict[str, Any], form: str) -> None:
    if form == "compact":
        raw = json.dumps(line, separators=(",", ":"), ensure_ascii=False).encode()
    elif form == "spaced":
        raw = json.dumps(line, indent=1, ensure_ascii=False).replace("\n", " ").encode()
    else:
        raw = json.dumps(line).encode()  # escapes for non-ASCII: always the full check's
    assert_fast_agrees(raw)


# Edits of an exported line (path, candidate values; None deletes): most keep it valid, some break one rule.
EXPORT_EDITS: list[tuple[tuple[str, ...], list[Any]]] = [
    (("properties", "desired", "$metadata"), [{}, {"a": {"$lastUpdated": "t"}}, {"a": {"b": {"c": 1}}}, 1, None]),
    (("properties", "desired", "interval"), [30, 1.5, "s", {"x": 1}, [1], None]),
    (("properties", "desired", "a.b"), [1, None]),
    (("properties", "reported", "$version"), [1, {"x": 1}, None]),
    (("tags",), [{"site": "oslo"}, {"a": {"b": 1}}, {"$metadata": {}}, {"$metadata": {"a": {}}, "x y": 1}, None]),
    (("authentication", "x509Thumbprint"), [{"primaryThumbprint": None}, {"primaryThumbprint": THUMB}, None]),
    (("authentication", "symmetricKey"), [{"primaryKey": None, "secondaryKey": None}, {"primaryKey": KEY}, None]),
    (("authentication", "type"), ["sas", "selfSigned", "none", "certificateAuthority", None]),
    (("eTag",), ["MA==", "", None]),
    (("twinETag",), ["AAAAAAAAAAE=", "", None]),
    (("importMode",), [*IMPORT_MODES, None]),
    (("status",), ["enabled", None]),
    (("statusReason",), ["r" * 128, "r" * 129, None]),
    (("capabilities",), [{"iotEdge": True}, {"iotEdge": 1}, {}, None]),
    (("parentScopes",), [["s"], [1], None]),
    # what the service writes beside the format (known, never flagged), and slips of the format's own names
    (("connectionState",), ["Disconnected", None]),
    (("statusUpdatedTime",), ["2026-11-21T00:00:00Z", None]),
    (("capabilities", "iotEgde"), [True, None]),
    (("authentication", "symetricKey"), [{"primaryKey": KEY, "secondaryKey": KEY}, None]),
    (("properties", "desierd"), [{"a": 1}, None]),
    (("site",), ["oslo", None]),
]


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(EXPORT_EDITS) - 1), st.integers(0, 9)), max_size=3))
def test_fast_path_contract_on_exported_lines(edits: list[tuple[int, int]]) -> None:
    line = json.loads(json.dumps(EXPORTED_LINE))
    for which, choice in edits:
        path, values = EXPORT_EDITS[which]
        parent = line
        for key in path[:-1]:
            parent = parent.setdefault(key, {})
        value = values[choice % len(values)]
        if value is None:
            parent.pop(path[-1], None)
        else:
            parent[path[-1]] = value
    assert_fast_agrees(json.dumps(line, separators=(",", ":")).encode())


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(VALID_LINES),
    st.integers(min_value=0, max_value=400),
    st.binary(min_size=0, max_size=3),
    st.integers(min_value=0, max_value=3),
)
def test_fast_path_holds_its_contract_on_mutated_bytes(line: dict[str, Any], at: int, junk: bytes, cut: int) -> None:
    raw = bytearray(json.dumps(line, separators=(",", ":")).encode())
    pos = min(at, len(raw))
    raw[pos : pos + cut] = junk
    try:
        orjson.loads(bytes(raw))
    except orjson.JSONDecodeError:
        assert accept(bytes(raw)) is None  # what does not parse is never accepted
        return
    assert_fast_agrees(bytes(raw))


B64_NEAR = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_ .", max_size=96)


@settings(max_examples=2000)
@given(st.one_of(B64_NEAR, st.binary(min_size=10, max_size=70).map(lambda b: base64.b64encode(b).decode())))
def test_fast_path_keys_are_what_the_full_check_calls_keys(text: str) -> None:
    """The fast path decodes keys as a typed ``bytes`` field (msgspec's base64, in C) instead of calling
    ``a2b_base64(strict_mode=True)``: whatever msgspec accepts there, the full check must accept too."""
    raw = json.dumps(
        {
            "id": "d1",
            "status": "enabled",
            "authentication": {"type": "sas", "symmetricKey": {"primaryKey": text, "secondaryKey": KEY}},
        }
    ).encode()
    assert_fast_agrees(raw)


def test_a_run_of_lines_stops_at_the_first_the_fast_path_cannot_prove() -> None:
    good = [json.dumps({"id": f"d{i}", "status": "enabled"}).encode() for i in range(4)]
    batch: list[bytes | None] = [good[0], good[1], b'{"id": "d?", "status": "on"}', None, good[2], b"", good[3]]
    ids: list[str] = []
    modes: list[str] = []
    assert fast.accept_run(batch, 0, ids, modes) == 2
    assert fast.accept_run(batch, 3, ids, modes) == 3  # an over-long line (None) is never accepted
    assert fast.accept_run(batch, 4, ids, modes) == 5  # nor a blank one
    assert fast.accept_run(batch, 6, ids, modes) == 7
    assert ids == ["d0", "d1", "d2", "d3"] and modes == ["createOrUpdate"] * 4


def test_lines_around_the_slow_ones_keep_their_numbers_and_ids() -> None:
    """A batch mixes runs of fast lines with lines the full check decides: line numbers and repeats stay exact."""
    lines = [json.dumps({"id": f"d{i}", "status": "enabled"}) for i in range(7)]
    # Valid, but escaped (json.dumps writes \u00e9), so the full check decides them: repeats of d0 and d1.
    lines[2] = json.dumps({"id": "d0", "status": "enabled", "statusReason": "caf\u00e9"})
    lines[4] = json.dumps({"id": "d1", "status": "enabled", "statusReason": "\u00e9t\u00e9"})
    lines[5] = json.dumps({"id": "d5", "status": "on"})  # invalid: explained on its own line
    report = validate_stream(io.BytesIO(("\n".join(lines) + "\n\n").encode()))
    assert sorted((f.line, f.code) for f in report.errors) == [
        (3, Code.DUPLICATE_ID),
        (5, Code.DUPLICATE_ID),
        (6, Code.INVALID_STATUS),
    ]
    assert report.lines == 7 and report.blank_lines == 1


def test_common_shapes_take_the_fast_path() -> None:
    """The bench's speed rests on this: the usual lines never reach the full check."""
    fast = [line for line in VALID_LINES if accept(json.dumps(line, separators=(",", ":")).encode())]
    assert [line["id"] for line in fast] == ["d1", "d2", "d3", "d4", "d5", "d6", "d7", "d9", "A-1.%_*?!(),:=@$'"]
    assert accept(json.dumps(EXPORTED_LINE, separators=(",", ":")).encode()) == ("dev-42", "createOrUpdate")
    assert accept(b'{"id":"d1","status":"enabled","tags":{"site":"oslo","n":1.5},"properties":{"desired":{"x":null}}}')
    assert accept(b'{"id":"d1","status":"enabled","authentication":{"type":"none"}}')
    only_secondary = b'{"id":"d1","status":"enabled","authentication":{"x509Thumbprint":{"secondaryThumbprint":"%s"}}}'
    assert accept(only_secondary % THUMB.encode()) == ("d1", "createOrUpdate")
    assert_fast_agrees(only_secondary % THUMB.encode())


@pytest.mark.parametrize(
    "raw",
    [
        b'{"id":"d1"}',  # no status with createOrUpdate
        b'{"id":"d1","status":null}',
        b'{"id":"d1","status":"enabled","authentication":{"type":"selfSigned"}}',
        b'{"id":"d1","status":"enabled","tags":{"a.b":1}}',
        b'{"id":"d1","status":"enabled","properties":{"desired":{"$version":1}}}',
        b'{"id":"d1","status":"enabled","tags":{"a":{"b":1}}}',  # nested: the full check measures depth
        b'{"id":"d1","status":"enabled","id":"d 2"}',  # a repeated key: the last one counts, in both parsers
        b'{"id":"d\\u00e9","status":"enabled"}',
        b'{"id":"d1","status":"enabled"} x',
        b'{"id":"d1","status":"enabled","Status":"enabled"}',
        # unknown keys at any depth: the full check names them (the fast path forbids them, so they reach it)
        b'{"id":"d1","status":"enabled","tag":{"a":1}}',
        b'{"id":"d1","status":"enabled","site":"oslo"}',
        b'{"id":"d1","status":"enabled","capabilities":{"iotEgde":true}}',
        b'{"id":"d1","status":"enabled","properties":{"desierd":{"a":1}}}',
        b'{"id":"d1","status":"enabled","authentication":{"symetricKey":{"primaryKey":null,"secondaryKey":null}}}',
        b'{"id":"d1","status":"enabled","authentication":{"x509Thumbprint":{"primaryThumbprnt":"'
        + THUMB.encode()
        + b'"}}}',
        b'{"id":"d1","importMode":"updateIfMatchETag","status":"enabled","eTag":""}',
        b'{"id":"d1","importMode":"updateTwinIfMatchETag","eTag":"MA=="}',
        b'{"id":"d1","status":"enabled","authentication":{"symmetricKey":{"primaryKey":null,"secondaryKey":"'
        + KEY.encode()
        + b'"}}}',
        # metadata lines: an object outside "$metadata", or a bad key beside one, go to the full check
        b'{"id":"d1","status":"enabled","tags":{"a":{"b.c":1}},"properties":{"desired":{"$metadata":{}}}}',
        b'{"id":"d1","status":"enabled","properties":{"desired":{"a b":1,"$metadata":{}}}}',
        b'{"id":"d1","status":"enabled","properties":{"desired":{"$metadata":{"a":{"b":{"c":1}}}}}}',
        b'{"id":"d1","status":"enabled","statusReason":"' + b"r" * 129 + b'"}',
        b'{"id":"d1","status":"enabled","authentication":{"type":"selfSigned","x509Thumbprint":{"secondaryThumbprint":"'
        + THUMB.encode()
        + b'"}}}',
    ],
)
def test_fast_path_declines(raw: bytes) -> None:
    assert accept(raw) is None


def test_fast_path_id_characters_match_the_rule() -> None:
    for code in range(128):
        char = chr(code)
        assert (char in fast._ID_CHARS) == bool(DEVICE_ID_RE.fullmatch(char)), repr(char)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(lines_strategy.map(json.dumps), st.text(max_size=40)), max_size=12), st.binary(max_size=30))
def test_random_files_never_crash_and_errors_are_line_numbered(lines: list[str], noise: bytes) -> None:
    body = "\n".join(lines).encode() + noise
    report = validate_stream(io.BytesIO(body))
    assert report.valid == (report.error_count == 0)
    total_lines = body.count(b"\n") + 1
    for finding in report.errors:
        assert 0 <= finding.line <= total_lines
        assert finding.message
    # no lines: an empty file, or one that is not text of lines at all (one finding for the file)
    whole_file = {"EMPTY_FILE", "WRONG_ENCODING", "COMPRESSED_FILE", "JSON_ARRAY", "CSV_FILE"}
    assert (report.lines == 0) <= bool(whole_file & set(codes(report)))


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(min_value=0, max_value=len(VALID_LINES) - 1),
    st.integers(min_value=0, max_value=200),
    st.binary(min_size=1, max_size=3),
)
def test_mutated_valid_files_yield_valid_or_line_numbered_errors(index: int, at: int, junk: bytes) -> None:
    body = bytearray("".join(json.dumps(x) + "\n" for x in VALID_LINES).encode())
    pos = min(at, len(body))
    body[pos:pos] = junk
    report = validate_stream(io.BytesIO(bytes(body)))
    if report.valid:
        # Whatever it accepts, every line is a JSON object: checked here without the validator's own code.
        for n, raw in enumerate(bytes(body).split(b"\n"), 1):
            text = raw.removeprefix(b"\xef\xbb\xbf") if n == 1 else raw
            if text.strip():
                assert isinstance(json.loads(text), dict), (n, text)
        return
    whole_file = (Code.COMPRESSED_FILE, Code.WRONG_ENCODING, Code.JSON_ARRAY, Code.CSV_FILE)
    file_level = [f for f in report.errors if f.code in whole_file]
    if file_level:  # one finding for the whole file, only when junk near the start reads as another format
        assert pos < 16 and len(report.errors) == 1 and file_level[0].line == 0
        return
    assert all(f.line >= 1 for f in report.errors)
    broken_line = bytes(body[:pos]).count(b"\n") + 1
    assert any(f.line in (broken_line, broken_line + 1) for f in report.errors) or any(
        f.code == Code.DUPLICATE_ID for f in report.errors
    )


SENSOR = {"name": "sensor-1", "temperature": 21.5, "humidity": 40, "location": {"lat": 59.9}}


def test_a_large_file_of_other_objects_is_given_up_on_early_but_read_to_its_end() -> None:
    body = "".join(json.dumps({**SENSOR, "name": f"s-{i}"}) + "\n" for i in range(5000)).encode()
    read = 0

    def chunks() -> Iterator[bytes]:
        nonlocal read
        for chunk in in_chunks(body, 1024):
            read += len(chunk)
            yield chunk

    report = validate_stream(chunks(), give_up_after=100, max_errors=20)
    assert report.errors[0].code is Code.NO_DEVICE_LINES and report.errors[0].line == 0
    assert f"None of the first {report.lines:,} lines is a valid device line" in report.errors[0].message
    assert 100 <= report.lines < 200 and len(report.errors) == 20
    assert read == len(body)  # what a caller hashes is the whole file


def test_a_devices_file_with_bad_lines_later_is_checked_to_its_end() -> None:
    lines = [json.dumps(dev(f"d{i}")) for i in range(10)] + [json.dumps(SENSOR)] * 300
    report = validate_stream(in_chunks("\n".join(lines).encode(), 1024), give_up_after=100)
    assert Code.NO_DEVICE_LINES not in codes(report) and report.lines == 310


def test_the_near_miss_of_a_key_is_worked_out_once_per_key() -> None:
    body = "".join(json.dumps({**SENSOR, "name": f"s-{i}"}) + "\n" for i in range(300)).encode()
    fields._candidates.cache_clear()
    validate_stream(io.BytesIO(body))
    info = fields._candidates.cache_info()
    assert info.misses <= 10 and info.hits >= 300 * 3
