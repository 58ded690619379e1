"""Realistic mode: throttles per SKU and unit count, job times and progress, and the read-after-write lag of
queries, at a small --time-scale. No assertion here is on a duration: waits are bounded only to stop a hung test."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.iot.hub import IoTHubJobManager, IoTHubRegistryManager
from azure.iot.hub.models import JobProperties

from emulators.iothub import IoTHubEmulator
from emulators.iothub.__main__ import main
from emulators.iothub.quotas import Op, Profile, Throttle, job_times, limits

from .helpers import Storage, device_line, hub_call, sas_import, wait_for, wait_until


def bulk(emu: IoTHubEmulator, prefix: str, n: int) -> requests.Response:
    return hub_call(emu, "POST", "/devices", body=[device_line(f"{prefix}-{i}") for i in range(n)])


def usage(emu: IoTHubEmulator) -> dict[str, Any]:
    r = requests.get(f"{emu.url}/_emulator/usage", verify=str(emu.ca_path), timeout=10)
    r.raise_for_status()
    body: dict[str, Any] = r.json()
    return body


def query_ids(emu: IoTHubEmulator, where: str = "") -> list[str]:
    r = hub_call(emu, "POST", "/devices/query", body={"query": f"SELECT * FROM devices {where}"})  # noqa: S608
    assert r.status_code == 200, r.text
    return [t["deviceId"] for t in r.json()]


# --- throttles --------------------------------------------------------------------------------------------


def test_documented_rates_per_sku_and_unit() -> None:
    s1 = limits("S1", 1)
    assert s1[Op.REGISTRY] == (100, 60) and s1[Op.QUERY] == (20, 60) and s1[Op.JOBS] == (100, 60)
    assert limits("S1", 3)[Op.REGISTRY] == (300, 60)
    assert limits("S2", 2)[Op.TWIN_READ] == (100, 1) and limits("S2", 20)[Op.TWIN_READ] == (200, 1)
    s3 = limits("S3", 2)
    assert s3[Op.REGISTRY] == (10000, 60) and s3[Op.QUERY] == (2000, 60) and s3[Op.CONFIGURATIONS] == (40, 60)
    with pytest.raises(ValueError, match="1 to 1 units"):
        Profile("F1", 2)
    with pytest.raises(ValueError, match="one of"):
        Profile("B1")


def test_fast_mode_counts_but_never_throttles() -> None:
    fast = Throttle(Profile())
    for _ in range(1000):
        fast.charge(Op.QUERY)
    assert fast.calls["query"] == 1000 and not fast.throttled


def test_bulk_calls_count_per_device_as_documented(realistic_hub: IoTHubEmulator) -> None:
    # Quotas docs: "S1 IoT hub with one unit, only two of these [50-device] bulk requests are accepted per minute
    # ... a third request ... would be rejected".
    realistic_hub.set_profile(Profile("S1", 1, time_scale=0.1))  # a 6 s minute: the third call waits ~3 s
    assert bulk(realistic_hub, "a", 50).status_code == 200
    assert bulk(realistic_hub, "b", 50).status_code == 200
    third = bulk(realistic_hub, "c", 50)
    assert third.status_code == 429
    assert third.headers["iothub-errorcode"] == "ThrottlingException"
    assert json.loads(third.json()["Message"])["errorCode"] == 429001
    retry_after = int(third.headers["Retry-After"])
    assert 1 <= retry_after <= 6
    assert hub_call(realistic_hub, "GET", "/devices/c-0").status_code == 404  # a throttled call changed nothing
    time.sleep(retry_after)
    assert bulk(realistic_hub, "c", 50).status_code == 200  # honouring Retry-After is enough
    assert usage(realistic_hub)["calls"]["registry"] >= 150
    assert usage(realistic_hub)["throttled"] == {"registry": 1}


def test_units_multiply_the_throttle(realistic_hub: IoTHubEmulator) -> None:
    realistic_hub.set_profile(Profile("S1", 2, time_scale=0.1))
    for prefix in "abcd":
        assert bulk(realistic_hub, prefix, 50).status_code == 200
    assert bulk(realistic_hub, "e", 50).status_code == 429


def test_traffic_shaping_serves_late_then_refuses(realistic_hub: IoTHubEmulator) -> None:
    realistic_hub.set_profile(Profile("S1", 1, time_scale=0.1))  # queries: 20 per 6 s, one every 0.3 s
    for _ in range(20):
        query_ids(realistic_hub)
    query_ids(realistic_hub)  # the 21st is held (shaping), not refused: the hold is shorter than 0.5 s
    assert usage(realistic_hub)["throttled"] == {}
    requests.post(
        f"{realistic_hub.url}/_emulator/quotas",
        json={"shapingSeconds": 0},
        verify=str(realistic_hub.ca_path),
        timeout=10,
    ).raise_for_status()
    refused = hub_call(realistic_hub, "POST", "/devices/query", body={"query": "SELECT * FROM devices"})
    assert refused.status_code == 429 and "query" in json.loads(refused.json()["Message"])["message"]
    assert usage(realistic_hub)["throttled"] == {"query": 1}


def test_sdk_rides_out_the_throttle_by_honouring_retry_after(realistic_hub: IoTHubEmulator) -> None:
    # urllib3, under msrest, retries a 429 that carries Retry-After (up to 3 times), so the SDK's calls succeed.
    # 100 per 5 minutes, no hold: the 104 calls are refused at the end unless they take over 12 s (at 1/2 it was
    # 1.2 s, which parallel test workers slowing the calls outlasted: not refused at all)
    realistic_hub.set_profile(Profile("S1", 1, time_scale=5, shaping_seconds=0))
    rm = IoTHubRegistryManager.from_connection_string(realistic_hub.connection_string())
    # Calls until the hub has refused one: a fixed count (104) was refused only when the calls beat the quota's
    # refill (about 1.2 s for 104), which a loaded machine does not; this way the load decides nothing.
    calls = 0
    while usage(realistic_hub)["throttled"].get("registry", 0) == 0 and calls < 1000:
        assert rm.get_device_registry_statistics().total_device_count == 0
        calls += 1
    assert usage(realistic_hub)["throttled"]["registry"] >= 1  # some were refused, then retried
    assert calls > 100  # nothing is refused within the quota (100 per window)
    for _ in range(3):  # and the calls right after a refusal are ridden out too
        assert rm.get_device_registry_statistics().total_device_count == 0
    assert usage(realistic_hub)["calls"]["registry"] == calls + 3


def test_retry_after_is_whole_seconds(realistic_hub: IoTHubEmulator) -> None:
    # A query token a second (20 a scaled minute of 20 s): the 21st call is refused if the 21 take under 1 s, and
    # then waits under 1 s, so the header says 1 (at 1/10 the calls had to take under 0.3 s: parallel test workers
    # slowed them past that)
    realistic_hub.set_profile(Profile("S1", 1, time_scale=1 / 3, shaping_seconds=0))
    for _ in range(20):
        query_ids(realistic_hub)
    refused = hub_call(realistic_hub, "POST", "/devices/query", body={"query": "SELECT * FROM devices"})
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "1"  # never a decimal, which urllib3 would refuse


# --- jobs -------------------------------------------------------------------------------------------------


def test_job_times_grow_with_the_file() -> None:
    at_scale_1 = job_times(Profile("S1"), "import")
    assert at_scale_1 is not None
    enqueued, running, rate = at_scale_1
    assert (enqueued, running) == (4.0, 12.0)  # the recorded 5-device import: ~4 s enqueued, 16.5 s in all
    assert 60 < 1_000_000 / rate < 3600  # a million lines: minutes, not seconds or days
    scaled = job_times(Profile("S1", time_scale=0.01), "import")
    assert scaled is not None and scaled[0] == pytest.approx(0.04) and scaled[2] == pytest.approx(rate * 100)
    assert job_times(Profile(), "import") is None  # fast mode: as fast as it goes


def test_job_is_enqueued_then_runs_with_progress_zero_then_completes(
    realistic_hub: IoTHubEmulator, storage: Storage
) -> None:
    src, out = storage.container("in"), storage.container("out")
    storage.upload_lines(src, [device_line(f"j-{i}") for i in range(5)])
    jm = IoTHubJobManager.from_connection_string(realistic_hub.connection_string())
    job = jm.create_import_export_job(sas_import(storage, src, out))
    seen: list[tuple[str, int]] = []

    def poll() -> Any:
        current = jm.get_import_export_job(job.job_id)
        seen.append((current.status, current.progress))
        return current

    final = wait_for(poll)
    assert (final.status, final.progress) == ("completed", 100)
    assert seen[0] == ("enqueued", 0)  # still enqueued right after it was created
    assert ("running", 0) in seen  # as recorded: progress stays 0 while the job runs
    assert {p for s, p in seen if s != "completed"} == {0}


def test_cancel_a_paced_job(realistic_hub: IoTHubEmulator, storage: Storage) -> None:
    realistic_hub.set_profile(Profile("S1", 1, time_scale=1.0))  # a 12 s minimum run: plenty of time to cancel
    out = storage.container("out")
    jm = IoTHubJobManager.from_connection_string(realistic_hub.connection_string())
    job = jm.create_import_export_job(
        JobProperties(type="export", output_blob_container_uri=storage.sas_url(out, "rwd"))
    )
    wait_until(lambda: jm.get_import_export_job(job.job_id).status == "running", deadline=30)
    jm.cancel_import_export_job(job.job_id)
    final = wait_for(lambda: jm.get_import_export_job(job.job_id), deadline=30)
    assert final.status == "cancelled"
    assert not storage.service.get_blob_client(out, "devices.txt").exists()


# --- read-after-write lag ---------------------------------------------------------------------------------


def test_queries_and_statistics_see_writes_after_the_lag(realistic_hub: IoTHubEmulator) -> None:
    realistic_hub.set_profile(Profile("S1", 1, time_scale=0.05, query_lag=40))  # a 2 s lag
    assert hub_call(realistic_hub, "PUT", "/devices/late", body={"status": "enabled"}).status_code == 200
    # As recorded: a query right after the PUT returned [], the same query later the device.
    assert query_ids(realistic_hub, "WHERE deviceId = 'late'") == []
    assert hub_call(realistic_hub, "GET", "/devices/late").status_code == 200  # reads by id are not lagged
    assert hub_call(realistic_hub, "GET", "/statistics/devices").json()["totalDeviceCount"] == 0
    wait_until(lambda: query_ids(realistic_hub, "WHERE deviceId = 'late'") == ["late"], deadline=30)
    assert hub_call(realistic_hub, "GET", "/statistics/devices").json()["totalDeviceCount"] == 1

    hub_call(realistic_hub, "PUT", "/devices/late", body={"status": "disabled"}, token="owner")
    changed = hub_call(realistic_hub, "PUT", "/devices/late", body={"status": "disabled"}, token=None)
    assert changed.status_code == 401  # (no token: nothing changed twice)
    assert query_ids(realistic_hub, "WHERE status = 'disabled'") == []  # the old state is still what queries see
    assert query_ids(realistic_hub, "WHERE status = 'enabled'") == ["late"]
    assert hub_call(realistic_hub, "DELETE", "/devices/late").status_code == 204
    assert query_ids(realistic_hub) == ["late"]  # a deleted device lingers in queries for the lag too
    wait_until(lambda: query_ids(realistic_hub) == [], deadline=30)


def test_devices_written_by_a_job_show_late_in_queries(realistic_hub: IoTHubEmulator, storage: Storage) -> None:
    realistic_hub.set_profile(Profile("S1", 1, time_scale=0.05, query_lag=400))  # a 20 s lag
    src, out = storage.container("in"), storage.container("out")
    storage.upload_lines(src, [device_line(f"imp-{i}") for i in range(3)])
    jm = IoTHubJobManager.from_connection_string(realistic_hub.connection_string())
    job = jm.create_import_export_job(sas_import(storage, src, out))
    assert wait_for(lambda: jm.get_import_export_job(job.job_id)).status == "completed"
    assert hub_call(realistic_hub, "GET", "/devices/imp-0").status_code == 200
    assert query_ids(realistic_hub) == []
    count = hub_call(realistic_hub, "POST", "/devices/query", body={"query": "SELECT COUNT() AS n FROM devices"})
    assert count.json() == [{"n": 0}]


# --- the command line -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sku", "S9"], "invalid choice"),
        (["--sku", "S3", "--units", "11"], "1 to 10 units"),
        (["--units", "2"], "need --sku"),
        (["--sku", "S1", "--time-scale", "0"], "above 0"),
    ],
)
def test_command_line_refuses_bad_profiles(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--data-dir", str(tmp_path), "--port", "0", *argv])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
