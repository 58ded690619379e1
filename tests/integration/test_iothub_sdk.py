"""The IoT Hub emulator driven by Microsoft's own service SDK (azure-iot-hub), unchanged, in fast and realistic
mode."""

from __future__ import annotations

import pytest
from azure.iot.hub import IoTHubConfigurationManager, IoTHubJobManager, IoTHubRegistryManager
from azure.iot.hub.models import (
    Configuration,
    ConfigurationContent,
    DeviceCapabilities,
    ExportImportDevice,
    JobProperties,
    QuerySpecification,
    Twin,
    TwinProperties,
)
from msrest.exceptions import HttpOperationError

from emulators.iothub import IoTHubEmulator
from emulators.iothub.quotas import Profile

from .helpers import Storage, control, device_line, emptied, sas_import, wait_for, wait_until

# Realistic mode with an S3 hub's throttles (these tests make a few thousand registry operations), jobs and the
# query lag at 1/100 of the service's times.
SDK_REALISTIC = Profile("S3", 1, time_scale=0.01)


@pytest.fixture(params=["fast", "realistic"])
def iothub(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> IoTHubEmulator:
    """Each SDK test against the fast emulator and against the realistic one."""
    if request.param == "fast":
        emu: IoTHubEmulator = request.getfixturevalue("iothub_server")
        return emptied(emu, monkeypatch)
    emu = request.getfixturevalue("iothub_realistic_server")
    emu.set_profile(SDK_REALISTIC)
    return emptied(emu, monkeypatch)


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

    def counts() -> tuple[int, int, int]:
        stats = rm.get_device_registry_statistics()
        return stats.total_device_count, stats.enabled_device_count, stats.disabled_device_count

    wait_until(lambda: counts() != (0, 0, 0))  # statistics lag like queries in realistic mode
    assert counts() == (30, 20, 10)

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
    # Queries see writes after the read-after-write lag (realistic mode): wait for all 25 first.
    count = QuerySpecification(query="SELECT COUNT() AS n FROM devices")
    wait_until(lambda: rm.query_iot_hub(count).items[0].additional_properties == {"n": 25})
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
    disabled = QuerySpecification(query="SELECT * FROM devices WHERE status = 'disabled'")
    wait_until(lambda: [t.device_id for t in rm.query_iot_hub(disabled).items] == ["q-07"])
    assert rm.query_iot_hub(count).items[0].additional_properties == {"n": 25}  # the SDK reads every row as a Twin


def test_query_language_through_the_sdk_with_paging(iothub: IoTHubEmulator) -> None:
    rm = registry(iothub)
    for start in range(0, 300, 100):
        result = rm.bulk_create_or_update_devices(
            [
                ExportImportDevice(
                    id=f"s-{i:03d}",
                    status="disabled" if i % 5 == 0 else "enabled",
                    import_mode="create",
                    tags={"site": ["oslo", "lyon", "porto"][i % 3], "floor": i % 4},
                )
                for i in range(start, start + 100)
            ]
        )
        assert result.is_successful is True
    text = (
        "SELECT * FROM devices WHERE (tags.site IN ['oslo', 'porto'] OR status = 'disabled') "
        "AND NOT tags.floor = 0 AND STARTSWITH(deviceId, 's-')"
    )
    expected = [f"s-{i:03d}" for i in range(300) if (i % 3 in (0, 2) or i % 5 == 0) and i % 4 != 0]
    count = QuerySpecification(query=text.replace("SELECT *", "SELECT COUNT() AS n"))
    wait_until(lambda: rm.query_iot_hub(count).items[0].additional_properties == {"n": len(expected)})
    seen: list[str] = []
    token = None
    while True:
        page = rm.query_iot_hub(QuerySpecification(query=text), token, 50)
        assert len(page.items) <= 50
        seen += [t.device_id for t in page.items]
        token = page.continuation_token
        if not token:
            break
    assert seen == expected
    grouped = rm.query_iot_hub(
        QuerySpecification(query="SELECT tags.site AS site, COUNT() AS n FROM devices GROUP BY tags.site")
    )
    assert [t.additional_properties for t in grouped.items] == [
        {"site": "lyon", "n": 100},
        {"site": "oslo", "n": 100},
        {"site": "porto", "n": 100},
    ]
    with pytest.raises(HttpOperationError) as refused:
        rm.query_iot_hub(QuerySpecification(query="SELECT * FROM devices WHERE tags.site = 'oslo' AND"))
    assert error_code(refused.value) == "ArgumentInvalid"


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
    wait_until(lambda: registry(iothub).get_device_registry_statistics().total_device_count == 2)


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


def test_modules_through_the_sdk(iothub: IoTHubEmulator) -> None:
    rm = registry(iothub)
    rm.create_device_with_sas("host-1", None, None, "enabled")
    assert rm.get_modules("host-1") == []
    module = rm.create_module_with_sas("host-1", "telemetry", "ops", KEY_A, KEY_B)
    assert (module.module_id, module.device_id, module.managed_by) == ("telemetry", "host-1", "ops")
    assert module.authentication.symmetric_key.primary_key == KEY_A
    with pytest.raises(HttpOperationError) as exists:
        rm.create_module_with_sas("host-1", "telemetry", None, None, None)
    assert (exists.value.response.status_code, error_code(exists.value)) == (409, "ModuleAlreadyExistsOnDevice")

    updated = rm.update_module_with_sas("host-1", "telemetry", "ops-2", module.etag, KEY_B, KEY_A)
    assert updated.etag != module.etag and updated.managed_by == "ops-2"
    with pytest.raises(HttpOperationError) as stale:
        rm.update_module_with_sas("host-1", "telemetry", "ops-3", module.etag, KEY_A, KEY_B)
    assert stale.value.response.status_code == 412
    assert [m.module_id for m in rm.get_modules("host-1")] == ["telemetry"]
    assert rm.get_module("host-1", "telemetry").authentication.symmetric_key.primary_key == KEY_B

    rm.delete_module("host-1", "telemetry")
    with pytest.raises(HttpOperationError) as gone:
        rm.get_module("host-1", "telemetry")
    assert (gone.value.response.status_code, error_code(gone.value)) == (404, "ModuleNotFound")
    with pytest.raises(HttpOperationError) as no_device:
        rm.get_modules("nobody")
    assert error_code(no_device.value) == "DeviceNotFound"


def test_module_and_device_twins_through_the_sdk(iothub: IoTHubEmulator) -> None:
    rm = registry(iothub)
    rm.create_device_with_sas("host-2", None, None, "enabled")
    rm.create_module_with_sas("host-2", "agent", None, None, None)
    twin = rm.get_module_twin("host-2", "agent")
    assert (twin.device_id, twin.module_id, twin.tags) == ("host-2", "agent", {})

    desired = TwinProperties(desired={"interval": 5, "mode": "eco"})
    patched = rm.update_module_twin("host-2", "agent", Twin(tags={"role": "a"}, properties=desired), twin.etag)
    assert patched.tags == {"role": "a"} and patched.properties.desired["interval"] == 5
    assert patched.etag != twin.etag
    removed = rm.update_module_twin("host-2", "agent", Twin(properties=TwinProperties(desired={"mode": None})))
    assert "mode" not in removed.properties.desired and removed.properties.desired["interval"] == 5  # null removes
    replaced = rm.replace_module_twin("host-2", "agent", Twin(tags={"only": 1}))
    assert replaced.tags == {"only": 1} and "interval" not in replaced.properties.desired
    with pytest.raises(HttpOperationError) as stale:
        rm.update_module_twin("host-2", "agent", Twin(tags={"x": 1}), twin.etag)
    assert stale.value.response.status_code == 412
    with pytest.raises(HttpOperationError) as bad_key:
        rm.update_module_twin("host-2", "agent", Twin(tags={"bad.key": 1}))
    assert (bad_key.value.response.status_code, error_code(bad_key.value)) == (400, "ArgumentInvalid")

    device_twin = rm.update_twin("host-2", Twin(tags={"site": "oslo"}), rm.get_twin("host-2").etag)
    assert device_twin.tags == {"site": "oslo"} and device_twin.module_id is None
    assert rm.get_module_twin("host-2", "agent").tags == {"only": 1}  # the module's twin is its own


def test_configurations_through_the_sdk(iothub: IoTHubEmulator) -> None:
    cm = IoTHubConfigurationManager.from_connection_string(iothub.connection_string())
    config = Configuration(
        id="firmware-2",
        labels={"team": "ops"},
        content=ConfigurationContent(device_content={"properties.desired.firmware": "2.0"}),
        target_condition="tags.site = 'oslo'",
        priority=10,
    )
    created = cm.create_configuration(config)
    assert created.etag == "MQ==" and created.priority == 10  # as recorded: the first ETag is base64 "1"
    assert created.system_metrics.queries["targetedCount"].endswith("where tags.site = 'oslo'")
    with pytest.raises(HttpOperationError) as exists:
        cm.create_configuration(config)
    assert (exists.value.response.status_code, error_code(exists.value)) == (409, "ConfigurationAlreadyExists")

    config.priority = 20
    updated = cm.update_configuration(config, created.etag)
    assert (updated.etag, updated.priority) == ("Mg==", 20)
    with pytest.raises(HttpOperationError) as stale:
        cm.update_configuration(config, created.etag)
    assert stale.value.response.status_code == 412
    assert [c.id for c in cm.get_configurations(10)] == ["firmware-2"]
    assert cm.get_configuration("firmware-2").labels == {"team": "ops"}

    cm.delete_configuration("firmware-2")
    with pytest.raises(HttpOperationError) as gone:
        cm.get_configuration("firmware-2")
    assert (gone.value.response.status_code, error_code(gone.value)) == (404, "ConfigurationNotFound")


def test_edge_hierarchy_and_configurations_in_export_and_import(iothub: IoTHubEmulator, storage: Storage) -> None:
    rm = registry(iothub)
    rm.bulk_create_or_update_devices(
        [ExportImportDevice(id="gw-1", status="enabled", capabilities=DeviceCapabilities(iot_edge=True))]
    )
    scope = rm.get_device("gw-1").device_scope
    assert scope.startswith("ms-azure-iot-edge://gw-1-")
    # The hub creates an Edge device's system modules itself (they are in exports: azure-iot-sdk-csharp#1146).
    assert [m.module_id for m in rm.get_modules("gw-1")] == ["$edgeAgent", "$edgeHub"]
    rm.bulk_create_or_update_devices(
        [
            ExportImportDevice(
                id="gw-2", status="enabled", capabilities=DeviceCapabilities(iot_edge=True), parent_scopes=[scope]
            ),
            ExportImportDevice(id="leaf-1", status="enabled", device_scope=scope),
        ]
    )
    assert rm.get_device("gw-2").device_scope not in (None, scope)  # each Edge device has its own scope
    cm = IoTHubConfigurationManager.from_connection_string(iothub.connection_string())
    cm.create_configuration(
        Configuration(id="cfg-a", content=ConfigurationContent(device_content={"properties.desired.x": 4}), priority=2)
    )

    out = storage.container("out")
    jm = jobs(iothub)
    export = jm.create_import_export_job(
        JobProperties(
            type="export",
            output_blob_container_uri=storage.sas_url(out, "rwd"),
            exclude_keys_in_export=True,
            include_configurations=True,
            configurations_blob_name="configs.txt",
        )
    )
    assert export.include_configurations is True
    assert wait_for(lambda: jm.get_import_export_job(export.job_id)).status == "completed"
    lines = {(e["id"], e.get("moduleId")): e for e in storage.read_lines(out, "devices.txt")}
    assert set(lines) == {
        ("gw-1", None),
        ("gw-1", "$edgeAgent"),
        ("gw-1", "$edgeHub"),
        ("gw-2", None),
        ("gw-2", "$edgeAgent"),
        ("gw-2", "$edgeHub"),
        ("leaf-1", None),
    }
    assert lines[("gw-1", None)]["deviceScope"] == scope
    assert lines[("gw-2", None)]["parentScopes"] == [scope]
    assert lines[("leaf-1", None)]["deviceScope"] == scope
    agent = lines[("gw-1", "$edgeAgent")]
    assert agent["authentication"] is None and agent["capabilities"] == {"iotEdge": False}
    assert lines[("leaf-1", None)]["statusReason"] == ""
    configs = storage.read_lines(out, "configs.txt")
    assert [(c["id"], c["content"], c["etag"]) for c in configs] == [
        ("cfg-a", {"deviceContent": {"properties.desired.x": 4}}, "MQ==")
    ]

    # The exported configurations go back in through an import job (and a stale eTag is refused in its log).
    cm.delete_configuration("cfg-a")
    storage.upload_lines(out, [{**configs[0], "importMode": "createOrUpdateIfMatchETag"}], name="configs-in.txt")
    storage.upload_lines(out, [device_line("leaf-1")], name="devices-in.txt")
    imported = jm.create_import_export_job(
        sas_import(
            storage,
            out,
            out,
            input_blob_name="devices-in.txt",
            include_configurations=True,
            configurations_blob_name="configs-in.txt",
        )
    )
    assert wait_for(lambda: jm.get_import_export_job(imported.job_id)).status == "completed"
    assert cm.get_configuration("cfg-a").priority == 2
    assert storage.read_lines(out, "importConfigErrors.log") == []
