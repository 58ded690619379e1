"""Bench: the function app end to end under the local Functions host, Azurite and the IoT Hub emulator.

1. Drop-to-``completed`` time for an N-device upload (default 100,000), next to the reference: a file of the same
   size and mix (other ids, so it creates devices too) imported by a bare IoT Hub import job (no validation,
   staging, ledger or reports), run side by side on the same stack. The ratio is what the app adds.
2. The host process's peak RSS while it handles a 1,000,000-device upload, and a 4x smaller one, to show memory
   stays flat with file size (goal: flat, under 150 MB).

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from azure.storage.blob import BlobServiceClient

from bench.common import PeakRss, device_lines, elapsed, mib, write_file
from emulators.azurite import Azurite
from emulators.functions_host.process import HostProcess, stack_settings
from emulators.iothub import IoTHubEmulator
from shared.iothub import IoTHubClient
from shared.ledger import TERMINAL_STATES
from shared.storage import Storage


def _upload(service: BlobServiceClient, container: str, name: str, path: Path) -> None:
    with path.open("rb") as f:
        service.get_blob_client(container, name).upload_blob(f, overwrite=True, max_concurrency=2)


def _wait_app(app: HostProcess, source: str) -> dict[str, Any]:
    while True:
        jobs = [j for j in app.call("GET", "jobs", params={"limit": "200"}).json()["jobs"] if j["source"] == source]
        if jobs and jobs[0]["state"] in TERMINAL_STATES:
            job: dict[str, Any] = jobs[0]
            return job
        time.sleep(0.2)


def reference(hub: IoTHubEmulator, service: BlobServiceClient, path: Path) -> float:
    """A bare hub import job of the same file: upload done -> job completed."""
    store = Storage(service)
    for name in ("ref-in", "ref-out"):
        store.ensure_container(name)
    _upload(service, "ref-in", "devices.txt", path)
    client = IoTHubClient.from_connection_string(hub.connection_string())
    start = time.perf_counter()
    job = client.create_import_job(
        store.sas.container_sas_url("ref-in", "rl"), store.sas.container_sas_url("ref-out", "rwd")
    )
    while not job.status.is_terminal:
        time.sleep(0.2)
        job = client.get_job(job.job_id)
    return elapsed(start)


def drop(app: HostProcess, service: BlobServiceClient, path: Path, name: str) -> tuple[float, dict[str, Any], int]:
    """Upload, then time until the app's job completes; sample the host's RSS throughout."""
    assert app.proc is not None
    with PeakRss(app.proc.pid) as rss:
        _upload(service, "uploads", name, path)
        start = time.perf_counter()
        job = _wait_app(app, f"uploads/{name}")
        seconds = elapsed(start)
    return seconds, job, rss.peak


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--devices", type=int, default=100_000)
    p.add_argument("--memory-devices", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args()
    result: dict[str, Any] = {"bench": "app_e2e", "devices": args.devices}
    with tempfile.TemporaryDirectory(prefix="bench-app-") as tmp:
        work = Path(tmp)
        azurite = Azurite(work / "azurite").start()
        hub = IoTHubEmulator(work / "iothub", port=0)
        hub.start()
        os.environ["REQUESTS_CA_BUNDLE"] = str(hub.ca_path)
        app = HostProcess(work / "host", stack_settings(azurite, hub, MONITOR_SCHEDULE="* * * * * *"))
        try:
            app.start()
            service = BlobServiceClient.from_connection_string(azurite.connection_string)
            Storage(service).ensure_container("uploads")
            assert app.proc is not None
            result["host_idle_rss_mb"] = mib(PeakRss(app.proc.pid).proc.memory_info().rss)

            path = work / "devices.txt"
            result["file_mb"] = mib(write_file(path, device_lines(args.devices, seed=args.seed, prefix="e2e")))
            seconds, job, _ = drop(app, service, path, "bench.jsonl")
            assert job["state"] == "completed", job
            result["app_drop_to_completed_s"] = seconds
            result["app_devices_per_s"] = round(args.devices / seconds)
            # Same size and mix, other ids: the reference creates devices too, rather than updating ours.
            ref = work / "reference.txt"
            write_file(ref, device_lines(args.devices, seed=args.seed, prefix="ref"))
            result["reference_hub_import_s"] = reference(hub, service, ref)
            result["app_vs_bare_hub_job_x"] = round(seconds / result["reference_hub_import_s"], 2)

            for label, count in (("quarter", args.memory_devices // 4), ("full", args.memory_devices)):
                big = work / f"mem-{label}.txt"
                size = write_file(big, device_lines(count, seed=args.seed, prefix=f"m{label}"))
                seconds, job, peak = drop(app, service, big, f"mem-{label}.jsonl")
                assert job["state"] == "completed", job
                big.unlink()
                result[f"mem_{label}_devices"] = count
                result[f"mem_{label}_file_mb"] = mib(size)
                result[f"mem_{label}_drop_to_completed_s"] = seconds
                result[f"mem_{label}_host_peak_rss_mb"] = mib(peak)
            result["rss_growth_4x"] = round(
                result["mem_full_host_peak_rss_mb"] / result["mem_quarter_host_peak_rss_mb"], 2
            )
        finally:
            app.stop()
            hub.stop()
            azurite.stop()
    result["goals"] = {"mem_full_host_peak_rss_mb": "< 150, flat (rss_growth_4x ~ 1)"}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
