"""The IoT Hub emulator driven by Microsoft's own service SDK (azure-iot-hub), unchanged."""

from __future__ import annotations

import pytest
from azure.iot.hub import IoTHubJobManager, IoTHubRegistryManager
from azure.iot.hub.models import ExportImportDevice, JobProperties, QuerySpecification
from msrest.exceptions import HttpOperationError

from emulators.iothub import IoTHubEmulator

from .helpers import Storage, control, device_line, sas_import, wait_for, wait_until

KEY_A = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="  # 32 bytes
KEY_B = "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI="
THUMB = "A" * 40


def registry(emu: IoTHubEmulator) -> IoTHubRegistryManager:
    return IoTHubRegistryManager.from_connection_string(emu.connection_string())


def jobs(emu: IoTHubEmulator) -> IoTHubJobManager:
    return IoTHubJobManager.from_connection_string(emu.connection_string())


def error_code(exc: HttpOperationError) -> str:
    return str(exc.response.headers.get("iothub-errorcode"))


def test_device_lifecycle_with_etags(iothub: IoTHubEmulator) -> None:
    rm = registry(iothub)
    created = rm.create_device_with_sas("sensor-1", KEY_A, KEY_B, "enabled")
    assert created.authentication.type == "sas"
    assert created.authentication.symmetric_key.primary_key == KEY_A
    generated = rm.create_device_with_sas("sensor-2", None, None, "enabled")
    assert len(generated.authentication.symmetric_key.primary_key) == 44  # generated 32-byte keys
    x509 = rm.create_device_with_x509("cam-1", THUMB, None, "enabled")
    assert x509.authentication.type == "selfSigned"
    ca = rm.create_device_with_certificate_authority("gw-1", "enabled")
    assert ca.authentication.type == "certificateAuthority"

    with pytest.raises(HttpOperationError) as exists:
        rm.create_device_with_sas("sensor-1", None, None, "enabled")
    assert exists.value.response.status_code == 409
    assert error_code(exists.value) == "DeviceAlreadyExists"

    updated = rm.update_device_with_sas("sensor-1", created.etag, KEY_A, KEY_B, "disabled")
    assert updated.status == "disabled" and updated.etag != created.etag
    with pytest.raises(HttpOperationError) as stale:
        rm.update_device_with_sas("sensor-1", created.etag, KEY_A, KEY_B, "enabled")
    assert stale.value.response.status_code == 412
    with pytest.raises(HttpOperationError) as stale_delete:
        rm.delete_device("sensor-1", etag=created.etag)
    assert stale_delete.value.response.status_code == 412

    assert rm.get_device("sensor-1").status == "disabled"
    rm.delete_device("sensor-1", etag=updated.etag)
    with pytest.raises(HttpOperationError) as gone:
        rm.get_device("sensor-1")
    assert gone.value.response.status_code == 404
    assert error_code(gone.value) == "DeviceNotFound"
    assert {d.device_id for d in rm.get_devices(10)} == {"sensor-2", "cam-1", "gw-1"}


def test_statistics_and_bulk(iothub: IoTHubEmulator) -> None:
    rm = registry(iothub)
    devices = [
        ExportImportDevice(id=f"bulk-{i}", status="enabled" if i % 3 else "disabled", import_mode="create")
        for i in range(30)
    ]
    result = rm.bulk_create_or_update_devices(devices)
    assert result.is_successful is True and result.errors == []
    stats = rm.get_device_registry_statistics()
    assert (stats.total_device_count, stats.enabled_device_count, stats.disabled_device_count) == (30, 20, 10)

    again = rm.bulk_create_or_update_devices(
        [
            ExportImportDevice(id="bulk-1", status="enabled", import_mode="create"),
            ExportImportDevice(id="bulk-new", status="enabled", import_mode="create"),
        ]
    )
    assert again.is_successful is False
    assert [(e.device_id, e.error_code) for e in again.errors] == [("bulk-1", "DeviceAlreadyExists")]
    assert rm.get_device("bulk-new").status == "enabled"

    too_many = [ExportImportDevice(id=f"x-{i}", status="enabled") for i in range(101)]
    with pytest.raises(HttpOperationError) as over:
        rm.bulk_create_or_update_devices(too_many)
    assert error_code(over.value) == "TooManyDevices"


def test_query_pages_with_continuation(iothub: IoTHubEmulator) -> None:
    rm = registry(iothub)
    rm.bulk_create_or_update_devices(
        [ExportImportDevice(id=f"q-{i:02d}", status="enabled", import_mode="create") for i in range(25)]
    )
    seen: list[str] = []
    token = None
    pages = 0
    while True:
        page = rm.query_iot_hub(QuerySpecification(query="SELECT * FROM devices"), token, 10)
        seen += [t.device_id for t in page.items]
        pages += 1
        token = page.continuation_token
        if not token:
            break
    assert pages == 3
    assert seen == [f"q-{i:02d}" for i in range(25)]
    assert page.type == "Twin"
    rm.update_device_with_sas("q-07", "*", None, None, "disabled")
    disabled = rm.query_iot_hub(QuerySpecification(query="SELECT * FROM devices WHERE status = 'disabled'"))
    assert [t.device_id for t in disabled.items] == ["q-07"]
    count = rm.query_iot_hub(QuerySpecification(query="SELECT COUNT() AS n FROM devices"))
    assert count.items[0].additional_properties == {"n": 25}  # the SDK reads every row as a Twin


def test_import_then_export_round_trip(iothub: IoTHubEmulator, storage: Storage) -> None:
    src, out = storage.container("in"), storage.container("out")
    lines = [
        device_line("r-1", authentication={"symmetricKey": {"primaryKey": KEY_A, "secondaryKey": KEY_B}}),
        device_line("r-2", "create", tags={"site": "oslo"}, properties={"desired": {"interval": 30}}),
        device_line("r-3", authentication={"x509Thumbprint": {"primaryThumbprint": THUMB}, "type": "selfSigned"}),
        {"id": "r-2", "moduleId": "telemetry", "importMode": "createOrUpdate"},
    ]
    storage.upload_lines(src, lines)
    jm = jobs(iothub)
    job = jm.create_import_export_job(sas_import(storage, src, out, storage_authentication_type="keyBased"))
    assert job.status == "enqueued"
    done = wait_for(lambda: jm.get_import_export_job(job.job_id))
    assert done.status == "completed", done.failure_reason
    assert done.progress == 100
    assert storage.read_lines(out, "importErrors.log") == []
    twin = registry(iothub).get_twin("r-2")
    assert twin.tags == {"site": "oslo"} and twin.properties.desired["interval"] == 30

    for exclude in (False, True):
        export = jm.create_import_export_job(
            JobProperties(
                type="export",
                output_blob_container_uri=storage.sas_url(out, "rwd"),
                output_blob_name=f"export-{exclude}.txt",
                exclude_keys_in_export=exclude,
            )
        )
        assert wait_for(lambda e=export: jm.get_import_export_job(e.job_id)).status == "completed"
        exported = storage.read_lines(out, f"export-{exclude}.txt")
        assert [(e["id"], e.get("moduleId")) for e in exported] == [
            ("r-1", None),
            ("r-2", None),
            ("r-2", "telemetry"),
            ("r-3", None),
        ]
        if exclude:  # the service writes "authentication": null without keys (Azure/azure-iot-sdk-csharp#1146)
            assert [e["authentication"] for e in exported] == [None] * 4
        else:
            assert exported[0]["authentication"]["symmetricKey"] == {"primaryKey": KEY_A, "secondaryKey": KEY_B}
            assert exported[3]["authentication"]["x509Thumbprint"]["primaryThumbprint"] == THUMB
        assert exported[1]["tags"] == {"site": "oslo"}
        assert exported[1]["properties"]["desired"] == {"interval": 30}
    assert {j.job_id for j in jm.get_import_export_jobs()} >= {job.job_id}


def test_import_writes_per_device_errors(iothub: IoTHubEmulator, storage: Storage) -> None:
    rm = registry(iothub)
    rm.create_device_with_sas("exists", None, None, "enabled")
    src, out = storage.container("in"), storage.container("out")
    storage.upload_lines(
        src,
        [
            device_line("exists", "create"),
            device_line("missing", "update"),
            "{not json",
            device_line("bad-auth", authentication={"type": "SELF_SIGNED"}),
            device_line(
                "short-key",
                authentication={"symmetricKey": {"primaryKey": "c2hvcnQ=", "secondaryKey": "c2hvcnQ="}},
            ),
            {"id": "exists", "moduleId": "$edgeAgent"},
            device_line("fine"),
        ],
    )
    jm = jobs(iothub)
    job = jm.create_import_export_job(sas_import(storage, src, out))
    assert wait_for(lambda: jm.get_import_export_job(job.job_id)).status == "completed"
    log = storage.read_lines(out, "importErrors.log")
    assert [(e.get("deviceId"), e["errorCode"]) for e in log] == [
        ("exists", 409001),
        ("missing", 404001),
        (None, 400012),
        ("bad-auth", 400012),
        ("short-key", 400004),
        ("exists", 400004),
    ]
    assert all(isinstance(e["errorStatus"], str) and e["errorStatus"] for e in log)
    assert rm.get_device("fine").status == "enabled"


def test_second_job_gets_job_quota_exceeded_and_cancel(iothub: IoTHubEmulator, storage: Storage) -> None:
    out = storage.container("out")
    control(iothub, "jobs", {"paused": True})
    jm = jobs(iothub)
    first = jm.create_import_export_job(
        JobProperties(type="export", output_blob_container_uri=storage.sas_url(out, "rwd"))
    )
    with pytest.raises(HttpOperationError) as busy:
        jm.create_import_export_job(JobProperties(type="export", output_blob_container_uri=storage.sas_url(out, "rwd")))
    assert busy.value.response.status_code == 403
    assert error_code(busy.value) == "JobQuotaExceeded"
    assert "403003" in busy.value.response.text
    jm.cancel_import_export_job(first.job_id)
    assert jm.get_import_export_job(first.job_id).status == "cancelled"
    control(iothub, "jobs", {"paused": False})
    second = jm.create_import_export_job(
        JobProperties(type="export", output_blob_container_uri=storage.sas_url(out, "rwd"))
    )
    assert wait_for(lambda: jm.get_import_export_job(second.job_id)).status == "completed"
    assert jm.get_import_export_job(first.job_id).status == "cancelled"


def test_cancel_a_running_export_leaves_no_partial_blob(iothub: IoTHubEmulator, storage: Storage) -> None:
    rm = registry(iothub)
    for n in range(25):
        rm.bulk_create_or_update_devices([ExportImportDevice(id=f"c-{n}-{i}", status="enabled") for i in range(100)])
    control(iothub, "faults", {"jobStepDelay": 0.3})  # 2,500 devices: three steps, each slowed down
    out = storage.container("out")
    jm = jobs(iothub)
    job = jm.create_import_export_job(
        JobProperties(type="export", output_blob_container_uri=storage.sas_url(out, "rwd"))
    )
    wait_until(lambda: jm.get_import_export_job(job.job_id).status == "running")
    jm.cancel_import_export_job(job.job_id)
    final = wait_for(lambda: jm.get_import_export_job(job.job_id))
    assert final.status == "cancelled"
    assert final.end_time_utc is not None
    # The runner notices at its next step and stops; the export blob is never committed.
    control(iothub, "faults", {"jobStepDelay": 0})
    second = jm.create_import_export_job(
        JobProperties(type="export", output_blob_container_uri=storage.sas_url(out, "rwd"), output_blob_name="b.txt")
    )
    assert wait_for(lambda: jm.get_import_export_job(second.job_id)).status == "completed"
    assert not storage.service.get_blob_client(out, "devices.txt").exists()
    assert len(storage.read_lines(out, "b.txt")) == 2500


def test_identity_based_storage(iothub: IoTHubEmulator, storage: Storage) -> None:
    src, out = storage.container("in"), storage.container("out")
    storage.upload_lines(src, [device_line("id-1"), device_line("id-2")])
    jm = jobs(iothub)
    job = jm.create_import_export_job(
        JobProperties(
            type="import",
            input_blob_container_uri=storage.plain_url(src),
            output_blob_container_uri=storage.plain_url(out),
            storage_authentication_type="identityBased",
        )
    )
    assert wait_for(lambda: jm.get_import_export_job(job.job_id)).status == "completed"
    assert registry(iothub).get_device_registry_statistics().total_device_count == 2


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("expired input SAS", "has not expired"),
        ("read-only output SAS", "grants Write"),
        ("missing input blob", "not found"),
        ("empty input blob", "empty"),
        ("plain URL with keyBased", "has no SAS token"),
    ],
)
def test_storage_failures_fail_the_job_with_a_reason(
    iothub: IoTHubEmulator, storage: Storage, case: str, expected: str
) -> None:
    src, out = storage.container("in"), storage.container("out")
    storage.upload_lines(src, [device_line("never-imported")])
    input_uri, output_uri = storage.sas_url(src, "rl"), storage.sas_url(out, "rwd")
    if case == "expired input SAS":
        input_uri = storage.sas_url(src, "rl", hours=-1)
    elif case == "read-only output SAS":
        output_uri = storage.sas_url(out, "rl")
    elif case == "missing input blob":
        storage.service.get_blob_client(src, "devices.txt").delete_blob()
    elif case == "empty input blob":
        storage.service.get_blob_client(src, "devices.txt").upload_blob(b"", overwrite=True)
    else:
        input_uri = storage.plain_url(src)
    jm = jobs(iothub)
    job = jm.create_import_export_job(
        JobProperties(type="import", input_blob_container_uri=input_uri, output_blob_container_uri=output_uri)
    )
    final = wait_for(lambda: jm.get_import_export_job(job.job_id))
    assert final.status == "failed"
    assert expected in final.failure_reason
    assert "sig=" not in final.failure_reason
    assert registry(iothub).get_device_registry_statistics().total_device_count == 0
