"""Every importMode, with the device present or absent and ETags matching or not, in one import job."""

from __future__ import annotations

from typing import Any

from azure.iot.hub import IoTHubJobManager, IoTHubRegistryManager
from azure.iot.hub.models import ExportImportDevice
from msrest.exceptions import HttpOperationError

from emulators.iothub import IoTHubEmulator

from .helpers import Storage, sas_import, wait_for

# (case, importMode, device exists before, which ETag the line carries, expected outcome)
CASES: list[tuple[str, str, bool, str | None, str | int]] = [
    ("cou-new", "createOrUpdate", False, None, "created"),
    ("cou-old", "createOrUpdate", True, None, "updated"),
    ("cou-twin-stale", "createOrUpdate", True, "stale-twin", 412001),
    ("create-new", "create", False, None, "created"),
    ("create-old", "create", True, None, 409001),
    ("update-new", "update", False, None, 404001),
    ("update-old", "update", True, None, "updated"),
    ("uim-match", "updateIfMatchETag", True, "match", "updated"),
    ("uim-stale", "updateIfMatchETag", True, "stale", 412001),
    # Without an eTag an *IfMatchETag mode is unconditional (a recorded bulk deleteIfMatchETag without one
    # succeeded: azure-sdk-for-net SessionRecords, Jobs_Export_Import_Lifecycle).
    ("uim-none", "updateIfMatchETag", True, None, "updated"),
    ("dim-none", "deleteIfMatchETag", True, None, "deleted"),
    ("tim-none", "updateTwinIfMatchETag", True, None, "twin"),
    ("uim-new", "updateIfMatchETag", False, "stale", 404001),
    ("couim-new", "createOrUpdateIfMatchETag", False, None, "created"),
    ("couim-match", "createOrUpdateIfMatchETag", True, "match", "updated"),
    ("couim-stale", "createOrUpdateIfMatchETag", True, "stale", 412001),
    ("delete-old", "delete", True, None, "deleted"),
    ("delete-new", "delete", False, None, 404001),
    ("dim-match", "deleteIfMatchETag", True, "match", "deleted"),
    ("dim-stale", "deleteIfMatchETag", True, "stale", 412001),
    ("twin-old", "updateTwin", True, None, "twin"),
    ("twin-new", "updateTwin", False, None, 404001),
    ("tim-match", "updateTwinIfMatchETag", True, "match-twin", "twin"),
    ("tim-stale", "updateTwinIfMatchETag", True, "stale-twin", 412001),
]


def test_every_import_mode(iothub: IoTHubEmulator, storage: Storage) -> None:
    rm = IoTHubRegistryManager.from_connection_string(iothub.connection_string())
    existing = [case for case, _, exists, _, _ in CASES if exists]
    rm.bulk_create_or_update_devices([ExportImportDevice(id=c, status="enabled") for c in existing])
    before = {c: rm.get_device(c) for c in existing}
    twins = {c: rm.get_twin(c) for c in existing}

    lines: list[dict[str, Any]] = []
    for case, mode, _exists, etag, _ in CASES:
        line: dict[str, Any] = {"id": case, "importMode": mode, "status": "disabled", "tags": {"v": 2}}
        if etag == "match":
            line["eTag"] = before[case].etag
        elif etag == "stale":
            line["eTag"] = "bm90LXRoZS1ldGFn"
        elif etag == "match-twin":
            line["twinETag"] = twins[case].etag
        elif etag == "stale-twin":
            line["twinETag"] = "AAAAAAAAAAk="
        lines.append(line)
    src, out = storage.container("in"), storage.container("out")
    storage.upload_lines(src, lines)
    jm = IoTHubJobManager.from_connection_string(iothub.connection_string())
    job = jm.create_import_export_job(sas_import(storage, src, out))
    assert wait_for(lambda: jm.get_import_export_job(job.job_id)).status == "completed"
    errors = {e["deviceId"]: e["errorCode"] for e in storage.read_lines(out, "importErrors.log")}

    for case, _mode, exists, _, expected in CASES:
        try:
            device = rm.get_device(case)
        except HttpOperationError as exc:
            assert exc.response.status_code == 404
            device = None
        if isinstance(expected, int):
            assert errors.get(case) == expected, case
            if exists:  # a refused line leaves the device as it was
                assert device is not None and device.etag == before[case].etag, case
            else:
                assert device is None, case
            continue
        assert case not in errors, (case, errors.get(case))
        if expected == "deleted":
            assert device is None, case
        elif expected == "twin":
            assert device is not None and device.status == "enabled", case  # identity untouched
            assert rm.get_twin(case).tags == {"v": 2}, case
        else:
            assert device is not None and device.status == "disabled", case
            assert rm.get_twin(case).tags == {"v": 2}, case
            if expected == "updated":
                assert device.generation_id == before[case].generation_id, case
    assert len(errors) == sum(isinstance(c[4], int) for c in CASES)
