"""CSV sheets through the whole import flow, against Azurite and the IoT Hub emulator: a .csv upload becomes a
completed import with its devices (twin values typed, an Edge parent honoured) in the hub; a bad sheet is rejected
with findings that name the cell, the line and the column, and nothing reaches the hub."""

from __future__ import annotations

import json
from typing import Any

from shared.ledger import JobState
from shared.storage import BlobRef

from .helpers import KEY, Clock, Jobs, hub_count, run_to_end


def upload_sheet(jobs: Jobs, name: str, text: str) -> BlobRef:
    etag = jobs.storage.upload_bytes(jobs.containers.uploads, name, text.encode("utf-8"))
    return BlobRef(jobs.containers.uploads, name, etag)


def twins(jobs: Jobs) -> dict[str, dict[str, Any]]:
    return {t["deviceId"]: t for t in jobs.hubs["devhub"].query_devices("SELECT * FROM devices")}


def test_a_csv_upload_is_imported_with_its_twin_values_and_parent(jobs: Jobs, clock: Clock) -> None:
    # Excel's "CSV UTF-8" in a locale whose list separator is ';': a BOM, CRLF, quoted cells
    sheet = (
        "\ufeffid;status;primaryKey;secondaryKey;tags.site;tags.floor;desired.interval;desired.cfg;edge\r\n"
        f'gw-1;enabled;{KEY};{KEY};"plant; north";3;30;"{{""mode"": ""eco""}}";true\r\n'
        "s-1;disabled;;;plant-b;007;;;no\r\n"
    )
    ref = upload_sheet(jobs, "Fleet.CSV", sheet)
    job = jobs.accept_upload(ref, "devhub")
    assert (job.state, job.lines, job.modes) == (JobState.QUEUED, 2, {"createOrUpdate": 2})
    done = run_to_end(jobs, job, clock)
    assert done.state is JobState.COMPLETED and done.failed_devices == 0
    assert hub_count(jobs) == 2
    found = twins(jobs)
    assert found["gw-1"]["tags"] == {"site": "plant; north", "floor": 3}
    assert found["gw-1"]["properties"]["desired"]["interval"] == 30
    assert found["gw-1"]["properties"]["desired"]["cfg"] == {"mode": "eco"}
    assert found["gw-1"]["capabilities"] == {"iotEdge": True} and found["gw-1"]["status"] == "enabled"
    assert found["s-1"]["tags"] == {"site": "plant-b", "floor": "007"} and found["s-1"]["status"] == "disabled"
    # the hub read JSON lines: the staged copy of a sheet is the format's, not the CSV
    assert jobs.storage.properties(BlobRef(jobs.containers.archive, f"processed/{job.job_id}/Fleet.CSV"))

    # a leaf device under the gateway, named by the scope the hub gave it (as an export writes it)
    scope = found["gw-1"]["deviceScope"]
    assert scope.startswith("ms-azure-iot-edge://gw-1-")
    ref = upload_sheet(jobs, "leaves.csv", f"id,status,parent\nleaf-1,enabled,{scope}\n")
    done = run_to_end(jobs, jobs.accept_upload(ref, "devhub"), clock)
    assert done.state is JobState.COMPLETED
    leaf = twins(jobs)["leaf-1"]
    assert leaf["deviceScope"] == scope and leaf["parentScopes"] == [scope]


def test_a_bad_csv_upload_is_rejected_with_cells_lines_and_columns_and_the_hub_untouched(jobs: Jobs) -> None:
    sheet = (
        "id,stauts,primaryKey,secondaryKey,parent\n"  # line 1: a header slip
        f"ok-1,enabled,{KEY},{KEY},\n"
        f"bad-1,enabled,abc!,{KEY},\n"  # line 3: not base64
        f"bad-2,enabled,{KEY},{KEY},edge-1\n"  # line 4: a parent by id
        "bad-3,enabled\n"  # line 5: cells missing
    )
    ref = upload_sheet(jobs, "bad.csv", sheet)
    job = jobs.accept_upload(ref, "devhub")
    assert job.state is JobState.REJECTED
    container, path = job.reports["rejection"].split("/", 1)
    report = json.loads(b"".join(jobs.storage.open_read(BlobRef(container, path))))
    assert [(e["line"], e["code"], e["field"]) for e in report["errors"]] == [
        (1, "MISSPELLED_FIELD", "stauts"),
        (3, "INVALID_KEY", "primaryKey"),
        (4, "INVALID_PARENT", "parent"),
        (5, "WRONG_CELL_COUNT", None),
    ]
    messages = [e["message"] for e in report["errors"]]
    assert "did you mean 'status'" in messages[0]
    assert messages[1] == "C3 (line 3, column primaryKey): primaryKey is not valid base64."
    assert hub_count(jobs) == 0 and jobs.hubs["devhub"].list_jobs() == []
    assert jobs.storage.properties(BlobRef(jobs.containers.archive, f"failed/{job.job_id}/bad.csv"))


def test_a_sheet_not_named_csv_is_rejected_with_the_fix(jobs: Jobs) -> None:
    ref = upload_sheet(jobs, "devices.txt", "id,status\nd1,enabled\n")
    job = jobs.accept_upload(ref, "devhub")
    assert job.state is JobState.REJECTED
    container, path = job.reports["rejection"].split("/", 1)
    report = json.loads(b"".join(jobs.storage.open_read(BlobRef(container, path))))
    assert [e["code"] for e in report["errors"]] == ["CSV_FILE"]
    assert "named <name>.csv" in report["errors"][0]["message"]
