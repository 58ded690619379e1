"""The operator's toolbox against the local stack (issue 24): ``iotjobs devices``, ``backups`` and ``report`` with
their exit codes, their piped output parsed back, and the HTTP routes under them (paging, keys never shown unless
asked by name)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from emulators.azurite import REPO
from emulators.functions_host import FUNCTION_KEY
from tests.integration.helpers import control, device_line

from .app import Stack
from .test_cli import SCRIPT, _lines, runner


def _tsv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE))


def _keys_of(stack: Stack, device_id: str) -> list[str]:
    """The device's keys as the hub holds them (read straight from the app with ?keys=true)."""
    reply = stack.app.call("GET", f"hubs/devhub/devices/{device_id}", params={"keys": "true"})
    assert reply.status_code == 200, reply.text
    sym = reply.json()["identity"]["authentication"]["symmetricKey"]
    return [sym["primaryKey"], sym["secondaryKey"]]


def _on_a_terminal(stack: Stack, tmp_path: Path, *args: str) -> str:
    """What the command prints when its stdout is a terminal (a pseudo-terminal), as a person runs it."""
    main, child = os.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTJOBS_")}
    env.update(IOTJOBS_URL=stack.app.url, IOTJOBS_KEY=FUNCTION_KEY, PYTHONPATH=str(REPO), COLUMNS="200")
    with subprocess.Popen([str(SCRIPT), *args], stdout=child, stderr=subprocess.PIPE, cwd=tmp_path, env=env) as run:
        os.close(child)
        chunks = []
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the terminal's other end closed: the command has ended
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert run.wait(timeout=120) == 0
    os.close(main)
    return b"".join(chunks).decode()


def test_devices_list_show_and_count_with_exit_codes_and_no_key_anywhere(stack: Stack, tmp_path: Path) -> None:
    iotjobs = runner(stack, tmp_path)
    rows: list[dict[str, Any]] = [device_line(f"tb-{i:02d}", tags={"site": "a" if i < 3 else "b"}) for i in range(7)]
    rows.append(device_line("odd%id?x", tags={"site": "b"}))  # characters a URL path reserves
    assert iotjobs("upload", str(_lines(tmp_path / "fleet.jsonl", rows)), "--follow").returncode == 0
    keys = _keys_of(stack, "tb-00")
    assert all(k and len(k) > 20 for k in keys)

    # Piped, the listing is tab-separated with a header: parsed back whole.
    listed = iotjobs("devices", "list", "--hub", "devhub")
    assert listed.returncode == 0, listed.stderr
    parsed = _tsv(listed.stdout)
    assert sorted(r["deviceId"] for r in parsed) == sorted(r["id"] for r in rows)
    assert json.loads(next(r for r in parsed if r["deviceId"] == "tb-00")["tags"]) == {"site": "a"}

    # A query and --top: pages of 2 (each one call against the hub's query quota), read until 3 devices.
    query = "SELECT * FROM devices WHERE tags.site = 'b'"
    some = iotjobs("devices", "list", "--hub", "devhub", "--query", query, "--top", "3", "-o", "json")
    assert some.returncode == 0, some.stderr
    assert len(json.loads(some.stdout)) == 3 and "the query selects more" in some.stderr
    ids = iotjobs("devices", "list", "--hub", "devhub", "--query", query, "--jmespath", "[].deviceId")
    assert sorted(ids.stdout.split()) == sorted(["odd%id?x", *(f"tb-{i:02d}" for i in range(3, 7))])

    counted = iotjobs("devices", "count", "--hub", "devhub", "--query", query, "-o", "json")
    assert counted.returncode == 0 and json.loads(counted.stdout)["count"] == 5
    total = iotjobs("devices", "count", "--hub", "devhub", "--jmespath", "count")
    assert total.stdout.strip() == "8"

    shown = iotjobs("devices", "show", "odd%id?x", "--hub", "devhub", "-o", "json")
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["identity"]["deviceId"] == "odd%id?x" and doc["twin"]["tags"] == {"site": "b"}
    assert doc["identity"]["authentication"]["symmetricKey"] == {"primaryKey": None, "secondaryKey": None}
    assert [j["kind"] for j in doc["recentHubJobs"]] == ["import"] and "does not index" in doc["recentHubJobsNote"]
    piped = {r["field"]: r["value"] for r in _tsv(iotjobs("devices", "show", "tb-00", "--hub", "devhub").stdout)}
    assert (piped["status"], json.loads(piped["tags"])) == ("enabled", {"site": "a"})
    human = iotjobs("devices", "show", "tb-00", "--hub", "devhub", "-o", "table")
    assert human.returncode == 0 and "tags" in human.stdout and '{"site":"a"}' in human.stdout

    # Keys: refused to a pipe (exit 2); never in any output above.
    refused = iotjobs("devices", "show", "tb-00", "--hub", "devhub", "--show-keys")
    assert refused.returncode == 2 and "only to a terminal" in refused.stderr and keys[0] not in refused.stdout
    for done in (listed, some, shown, human):
        assert not any(k in done.stdout + done.stderr for k in keys)

    # To a terminal (a pseudo-terminal here), --show-keys prints them.
    assert keys[0] in _on_a_terminal(stack, tmp_path, "devices", "show", "tb-00", "--hub", "devhub", "--show-keys")

    missing = iotjobs("devices", "show", "nobody", "--hub", "devhub")
    assert missing.returncode == 1 and "DeviceNotFound" in missing.stderr
    bad = iotjobs("devices", "list", "--hub", "devhub", "--query", "SELEKT nothing")
    assert bad.returncode == 1 and "InvalidQuery" in bad.stderr
    unknown = iotjobs("devices", "list", "--hub", "nohub")
    assert unknown.returncode == 1 and "UnknownHub" in unknown.stderr
    assert iotjobs("devices", "show", "--hub", "devhub").returncode == 2  # no id
    assert iotjobs("devices", "list", "--hub", "devhub", "--jmespath", "[").returncode == 2


def test_the_device_routes_page_by_next_and_keep_keys_out_unless_asked(stack: Stack, tmp_path: Path) -> None:
    iotjobs = runner(stack, tmp_path)
    fleet = _lines(tmp_path / "f.jsonl", [device_line(f"pg-{i}") for i in range(5)])
    assert iotjobs("upload", str(fleet), "--follow").returncode == 0
    app = stack.app
    seen: list[str] = []
    params: dict[str, str] = {"top": "2"}
    pages = 0
    while True:
        reply = app.call("GET", "hubs/devhub/devices", params=params)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert len(body["devices"]) <= 2 and "primaryKey" not in reply.text.replace('"primaryKey": null', "")
        seen += [d["deviceId"] for d in body["devices"]]
        pages += 1
        if not body["next"]:
            break
        params["continuation"] = body["next"]
    assert sorted(seen) == [f"pg-{i}" for i in range(5)] and pages == 3
    plain = app.call("GET", "hubs/devhub/devices/pg-1")
    assert plain.status_code == 200 and plain.headers["Cache-Control"] == "no-store"
    assert _keys_of(stack, "pg-1")[0] not in plain.text
    # A hub that throttles the query past the app's own retries: 503 with the wait, never a 5xx that means "broken".
    control(stack.hub, "faults", {"rate": 1.0, "statuses": [429], "retryAfter": 1})
    try:
        busy = app.call("GET", "hubs/devhub/devices")
    finally:
        control(stack.hub, "faults", {"rate": 0})
    assert busy.status_code == 503 and busy.json()["error"]["code"] == "IoTHubBusy", busy.text
    assert int(busy.headers["Retry-After"]) >= 1
    assert app.call("GET", "hubs/devhub/devices", params={"top": "0"}).status_code == 400
    assert app.call("GET", "hubs/devhub/devices/bad id").status_code == 400


def test_backups_list_and_show_and_a_jobs_reports(stack: Stack, tmp_path: Path) -> None:
    iotjobs = runner(stack, tmp_path)
    nothing = iotjobs("backups", "list", "--hub", "devhub")
    assert nothing.returncode == 0 and nothing.stdout.splitlines() == ["\t".join(("hub", "stamp", "taken", "age",
                                                                                  "devices", "modules", "keys",
                                                                                  "bytes", "expires"))]  # fmt: skip
    fleet = _lines(tmp_path / "fleet.jsonl", [device_line(f"bk-{i}") for i in range(4)])
    assert iotjobs("upload", str(fleet), "--follow").returncode == 0
    assert iotjobs("export", "--hub", "devhub", "--follow").returncode == 0

    listed = iotjobs("backups", "list", "--hub", "devhub")
    assert listed.returncode == 0, listed.stderr
    (row,) = _tsv(listed.stdout)
    assert (row["hub"], row["devices"], row["keys"], row["expires"]) == ("devhub", "4", "no keys", "kept (newest)")
    stamp = row["stamp"]
    as_json = json.loads(iotjobs("backups", "list", "-o", "json").stdout)
    assert as_json["hubs"][0]["backups"][0]["stamp"] == stamp and as_json["retentionDays"] > 0

    shown = iotjobs("backups", "show", stamp, "--hub", "devhub", "-o", "json")
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["manifest"]["devices"] == 4 and {f["name"] for f in doc["files"]} >= {"devices.txt", "manifest.json"}
    files = _tsv(iotjobs("backups", "show", stamp, "--hub", "devhub").stdout)
    assert int(next(f for f in files if f["file"] == "devices.txt")["bytes"]) == doc["manifest"]["bytes"]
    gone = iotjobs("backups", "show", "20200101T000000Z", "--hub", "devhub")
    assert gone.returncode == 1 and "NotABackup" in gone.stderr
    assert iotjobs("backups", "show", "yesterday", "--hub", "devhub").returncode == 1  # refused by the route

    # A rejected file: the main report (rejection) printed whole on stdout, the list on stderr; --download writes all.
    typos = _lines(tmp_path / "typos.jsonl", [{"id": "t-1", "status": "SELF_SIGNED"}])
    rejected = iotjobs("--json", "upload", str(typos), "--follow")
    assert rejected.returncode == 3
    job_id = json.loads(rejected.stdout)["jobId"]
    report = iotjobs("report", job_id, "--hub", "devhub")
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["errors"][0]["line"] == 1 and "rejection" in report.stderr
    listing = json.loads(iotjobs("report", job_id, "--hub", "devhub", "--list", "-o", "json").stdout)
    names = {f["name"] for f in listing}
    assert "rejection" in names and all(f["bytes"] > 0 for f in listing)
    target = tmp_path / "reports"
    downloaded = iotjobs("report", job_id, "--hub", "devhub", "--download", str(target))
    assert downloaded.returncode == 0, downloaded.stderr
    assert {p.name for p in target.iterdir()} == {f["file"] for f in listing}
    assert json.loads((target / "rejection.json").read_text())["errors"][0]["line"] == 1
    no_job = iotjobs("report", "8234567890123-0a1b2c", "--hub", "devhub")
    assert no_job.returncode == 1 and "JobNotFound" in no_job.stderr

    # Every listing parses back when piped: jobs through JMESPath, status as TSV.
    failed = iotjobs("jobs", "--jmespath", "[?state=='rejected'].jobId")
    assert failed.returncode == 0 and failed.stdout.split() == [job_id]
    (hub_row,) = _tsv(iotjobs("status", "-o", "tsv").stdout)
    assert (hub_row["hub"], hub_row["backupDevices"], hub_row["queued"]) == ("devhub", "4", "0")
    assert iotjobs("restore", "latest", "--jmespath", "state").returncode == 2  # not a listing: refused
