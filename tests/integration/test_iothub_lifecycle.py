"""Restarts, fault injection and job history of the IoT Hub emulator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
from azure.iot.hub import IoTHubJobManager, IoTHubRegistryManager
from azure.iot.hub.models import ExportImportDevice, JobProperties
from msrest.exceptions import HttpOperationError

from emulators.azurite import Azurite
from emulators.iothub import FaultConfig, IoTHubEmulator

from .helpers import Storage, control, hub_call, wait_for, wait_until


def test_restart_keeps_registry_and_fails_interrupted_jobs(
    tmp_path: Path, azurite: Azurite, storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = IoTHubEmulator(tmp_path, port=0, faults=FaultConfig(job_step_delay=30))
    first.start()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(first.ca_path))
    rm = IoTHubRegistryManager.from_connection_string(first.connection_string())
    for n in range(15):
        rm.bulk_create_or_update_devices([ExportImportDevice(id=f"p-{n}-{i}", status="enabled") for i in range(100)])
    kept = rm.get_device("p-3-7")
    jm = IoTHubJobManager.from_connection_string(first.connection_string())
    out = storage.container("out")
    job = jm.create_import_export_job(
        JobProperties(type="export", output_blob_container_uri=storage.sas_url(out, "rwd"))
    )
    wait_until(lambda: jm.get_import_export_job(job.job_id).status == "running")
    first.stop()

    second = IoTHubEmulator(tmp_path, port=0)  # same data dir, new port
    second.start()
    try:
        assert second.ca_path == first.ca_path  # the certificate is reused: clients keep trusting it
        rm2 = IoTHubRegistryManager.from_connection_string(second.connection_string())
        assert rm2.get_device_registry_statistics().total_device_count == 1500
        again = rm2.get_device("p-3-7")
        assert (again.etag, again.authentication.symmetric_key.primary_key) == (
            kept.etag,
            kept.authentication.symmetric_key.primary_key,
        )
        interrupted = IoTHubJobManager.from_connection_string(second.connection_string()).get_import_export_job(
            job.job_id
        )
        assert interrupted.status == "failed"
        assert "restarted" in interrupted.failure_reason
    finally:
        second.stop()


def test_injected_faults_use_the_service_error_shape(iothub: IoTHubEmulator) -> None:
    control(iothub, "faults", {"rate": 1.0, "statuses": [503], "retryAfter": 7})
    response = hub_call(iothub, "GET", "/statistics/devices")
    assert response.status_code == 503
    assert response.headers["iothub-errorcode"] == "ServiceUnavailable"
    assert response.headers["Retry-After"] == "7"
    assert json.loads(response.json()["Message"])["errorCode"] == 503001


def test_a_share_of_requests_fails(iothub: IoTHubEmulator) -> None:
    control(iothub, "faults", {"rate": 0.5, "statuses": [429, 500, 503], "seed": 3})
    outcomes = [hub_call(iothub, "GET", "/statistics/devices").status_code for _ in range(60)]
    assert set(outcomes) == {200, 429, 500, 503}
    assert 10 < outcomes.count(200) < 50


def test_bad_fault_settings_are_refused(iothub: IoTHubEmulator) -> None:
    r = requests.post(f"{iothub.url}/_emulator/faults", json={"rate": 2}, verify=str(iothub.ca_path), timeout=10)
    assert r.status_code == 400
    with pytest.raises(ValueError, match="unknown fault setting"):
        FaultConfig.parse("rate=0.1;bogus=1")
    assert FaultConfig.parse("rate=0.25;statuses=429,503;jobStepDelay=0.5") == FaultConfig(
        rate=0.25, statuses=(429, 503), job_step_delay=0.5
    )


def test_job_history_is_kept_thirty_days(iothub: IoTHubEmulator, storage: Storage) -> None:
    jm = IoTHubJobManager.from_connection_string(iothub.connection_string())
    out = storage.container("out")
    job = jm.create_import_export_job(
        JobProperties(type="export", output_blob_container_uri=storage.sas_url(out, "rwd"))
    )
    wait_for(lambda: jm.get_import_export_job(job.job_id))
    control(iothub, "clock", {"advanceSeconds": 29 * 86400})
    assert job.job_id in {j.job_id for j in jm.get_import_export_jobs()}
    control(iothub, "clock", {"advanceSeconds": 2 * 86400})
    assert job.job_id not in {j.job_id for j in jm.get_import_export_jobs()}
    with pytest.raises(HttpOperationError) as gone:
        jm.get_import_export_job(job.job_id)
    assert gone.value.response.headers["iothub-errorcode"] == "JobNotFound"


def test_control_plane_is_off_by_default(tmp_path: Path) -> None:
    emu = IoTHubEmulator(tmp_path, port=0)
    emu.start()
    try:
        r = requests.post(f"{emu.url}/_emulator/reset", verify=str(emu.ca_path), timeout=10)
        assert r.status_code == 404
    finally:
        emu.stop()
