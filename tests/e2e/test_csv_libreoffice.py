"""CSV device sheets written by LibreOffice: a generated OpenDocument spreadsheet converted with ``soffice
--headless --convert-to csv`` (Debian's libreoffice-calc, installed here when missing, as the browser tests install
Chromium), read by the app's sheet reader."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from shared.devices import ValidationReport, validate_csv_stream

KEY = base64.b64encode(b"k" * 32).decode()
KEY2 = base64.b64encode(b"s" * 32).decode()


def found(report: ValidationReport) -> list[tuple[int, str, str | None]]:
    return [(f.line, str(f.code), f.field) for f in report.errors]


def _soffice() -> str:
    """LibreOffice's soffice, installed with apt-get (Debian's libreoffice-calc) when missing, as the browser tests
    install Chromium; the test is skipped, saying why, only where it cannot be installed."""
    found = shutil.which("soffice") or shutil.which("libreoffice")
    if found:
        return found
    if not shutil.which("apt-get"):
        pytest.skip("LibreOffice test: soffice is not installed and this system has no apt-get to install it")
    if os.geteuid() != 0:
        pytest.skip("LibreOffice test: run `sudo apt-get install libreoffice-calc` to run this test")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-qq"],
        # waits for the package lock rather than fail when another test (Chromium) installs at the same time
        [
            "apt-get",
            "install",
            "-y",
            "-qq",
            "-o",
            "DPkg::Lock::Timeout=600",
            "--no-install-recommends",
            "libreoffice-calc",
        ],
    ):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200, check=False)
        if done.returncode != 0:
            tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
            pytest.skip(f"LibreOffice test: `{' '.join(command)}` failed ({done.returncode}): {' / '.join(tail)}")
    found = shutil.which("soffice") or shutil.which("libreoffice")
    if not found:
        pytest.skip("LibreOffice test: apt-get installed libreoffice-calc but no soffice is on PATH")
    return found


def _ods(path: Path, rows: list[list[str]]) -> None:
    """A minimal OpenDocument spreadsheet (every cell text, as a sheet typed by hand with text cells)."""

    def cell(value: str) -> str:
        text = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        return f'<table:table-cell office:value-type="string"><text:p>{text}</text:p></table:table-cell>'

    body = "".join(f"<table:table-row>{''.join(cell(v) for v in row)}</table:table-row>" for row in rows)
    content = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<office:document-content xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
        'xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0" '
        'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" office:version="1.2">'
        f'<office:body><office:spreadsheet><table:table table:name="devices">{body}</table:table>'
        "</office:spreadsheet></office:body></office:document-content>"
    )
    manifest = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<manifest:manifest xmlns:manifest="urn:oasis:names:tc:opendocument:xmlns:manifest:1.0" '
        'manifest:version="1.2">'
        '<manifest:file-entry manifest:full-path="/" '
        'manifest:media-type="application/vnd.oasis.opendocument.spreadsheet"/>'
        '<manifest:file-entry manifest:full-path="content.xml" manifest:media-type="text/xml"/>'
        "</manifest:manifest>"
    )
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(zipfile.ZipInfo("mimetype"), "application/vnd.oasis.opendocument.spreadsheet")
        z.writestr("content.xml", content, compress_type=zipfile.ZIP_DEFLATED)
        z.writestr("META-INF/manifest.xml", manifest, compress_type=zipfile.ZIP_DEFLATED)


_FILTER = ":Text - txt - csv (StarCalc):"


@pytest.mark.parametrize(
    ("filter_options", "delimiter", "site"),
    # LibreOffice's CSV filter options: field separator (44 ',', 59 ';'), text delimiter (34 '"'), character set
    # (76 UTF-8, 12 ISO-8859-1). Its plain --convert-to csv writes commas in the system's character set (not
    # UTF-8 in a C locale), so that case is ASCII.
    [
        ("", ",", "Zurich"),
        (f"{_FILTER}44,34,76,1", ",", "Zürich"),
        (f"{_FILTER}59,34,76,1", ";", "Zürich"),
        (f"{_FILTER}59,34,12,1", ";", "Zürich"),
    ],
    ids=["default", "comma-utf8", "semicolon-utf8", "semicolon-latin1"],
)
def test_sheets_written_by_libreoffice(tmp_path: Path, filter_options: str, delimiter: str, site: str) -> None:
    soffice = _soffice()
    rows = [
        ["id", "status", "statusReason", "primaryKey", "secondaryKey", "tags.site", "desired.interval", "edge"],
        ["lo-1", "enabled", "in stock; shelf 3, row 2", KEY, KEY2, site, "30", "false"],
        ["lo-2", "disabled", 'said "no"', "", "", "plant-b", '{"mode": "eco"}', "true"],
    ]
    _ods(tmp_path / "devices.ods", rows)
    done = subprocess.run(
        [
            soffice,
            "--headless",
            f"-env:UserInstallation=file://{tmp_path}/profile",  # its own profile: runs in parallel never share one
            "--convert-to",
            f"csv{filter_options}",
            "--outdir",
            str(tmp_path),
            str(tmp_path / "devices.ods"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    written = tmp_path / "devices.csv"
    assert done.returncode == 0 and written.exists(), done.stdout + done.stderr
    data = written.read_bytes()
    assert data.splitlines()[0].count(delimiter.encode()) == 7  # it wrote the separator asked for
    out: list[bytes] = []
    report = validate_csv_stream(io.BytesIO(data), sink=out.append)
    if "latin1" in filter_options or ",12," in filter_options:
        # the usual mistake: a sheet saved in another character set is named at its first such line, with the fix
        assert found(report) == [(2, "NOT_UTF8", None)] and "UTF-8 (LibreOffice)" in report.errors[0].message
        return
    assert report.valid, report.errors
    lines = [json.loads(line) for line in b"".join(out).splitlines() if line.strip()]
    assert lines[0]["statusReason"] == "in stock; shelf 3, row 2" and lines[0]["tags"]["site"] == site
    assert lines[0]["properties"]["desired"]["interval"] == 30
    assert lines[1]["statusReason"] == 'said "no"' and lines[1]["properties"]["desired"]["interval"] == {"mode": "eco"}
    assert lines[1]["capabilities"] == {"iotEdge": True}
