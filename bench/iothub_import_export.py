"""Bench: the IoT Hub emulator imports a generated N-device file from Azurite and exports it again.

Prints one JSON line: devices/s for import and export, the emulator's peak RSS for N/4 and N devices (memory
must stay flat as the file grows), and, as the reference, the time Azurite alone takes to stream the same blob
(the storage floor an import cannot beat).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
from azure.storage.blob import BlobServiceClient

from bench.common import PeakRss, device_lines, elapsed, mib, printed_port, write_file
from emulators.azurite import Azurite
from emulators.iothub import POLICIES
from emulators.iothub.auth import sign
from shared.storage import Storage


class Hub:
    """The emulator in its own process, so its memory is measured alone."""

    def __init__(self, data_dir: Path, storage: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "emulators.iothub", "--port", "0", "--data-dir", str(data_dir)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "IOTHUB_EMULATOR_STORAGE_IDENTITY": storage},
        )
        self.host = f"127.0.0.1:{printed_port(self.proc)}"
        self.ca = str(data_dir / "tls" / "ca.pem")

    def call(self, method: str, path: str, body: Any = None) -> Any:
        token = sign(self.host, POLICIES["iothubowner"].key, int(time.time()) + 3600, "iothubowner")
        r = requests.request(
            method,
            f"https://{self.host}{path}?api-version=2021-04-12",
            json=body,
            headers={"Authorization": token},
            verify=self.ca,
            timeout=30,
        )
        r.raise_for_status()
        return r.json() if r.content else None

    def run_job(self, body: dict[str, Any]) -> dict[str, Any]:
        job: dict[str, Any] = self.call("POST", "/jobs/create", body)
        while job["status"] not in ("completed", "failed", "cancelled"):
            time.sleep(0.2)
            job = self.call("GET", f"/jobs/{job['jobId']}")
        if job["status"] != "completed":
            raise SystemExit(f"job {job['type']} ended {job['status']}: {job.get('failureReason')}")
        return job

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def run(count: int, seed: int, work: Path, azurite: Azurite) -> dict[str, Any]:
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    container = f"bench-{count}"
    service.create_container(container)
    path = work / f"devices-{count}.txt"
    size = write_file(path, device_lines(count, seed=seed))
    with path.open("rb") as f:
        service.get_blob_client(container, "devices.txt").upload_blob(f, overwrite=True, max_concurrency=2)
    path.unlink()

    start = time.perf_counter()
    for _ in service.get_blob_client(container, "devices.txt").download_blob().chunks():
        pass
    download_s = elapsed(start)

    hub = Hub(work / f"hub-{count}", azurite.connection_string)
    try:
        with PeakRss(hub.proc.pid) as rss_import:
            start = time.perf_counter()
            hub.run_job(
                {
                    "type": "import",
                    "inputBlobContainerUri": Storage(service).sas.container_sas_url(container, "rl"),
                    "outputBlobContainerUri": Storage(service).sas.container_sas_url(container, "rwd"),
                }
            )
            import_s = elapsed(start)
        stats = hub.call("GET", "/statistics/devices")
        assert stats["totalDeviceCount"] == count, stats
        errors = service.get_blob_client(container, "importErrors.log").get_blob_properties().size
        assert errors == 0, f"import logged {errors} bytes of errors"
        with PeakRss(hub.proc.pid) as rss_export:
            start = time.perf_counter()
            hub.run_job(
                {
                    "type": "export",
                    "outputBlobContainerUri": Storage(service).sas.container_sas_url(container, "rwd"),
                    "outputBlobName": "out.txt",
                }
            )
            export_s = elapsed(start)
        exported = service.get_blob_client(container, "out.txt").get_blob_properties().size
    finally:
        hub.close()
    return {
        "devices": count,
        "file_mb": mib(size),
        "import_s": import_s,
        "import_devices_per_s": round(count / import_s),
        "export_s": export_s,
        "export_devices_per_s": round(count / export_s),
        "export_mb": mib(exported),
        "reference_azurite_download_s": download_s,
        "import_vs_download": round(import_s / max(download_s, 0.01), 1),
        "peak_rss_import_mb": mib(rss_import.peak),
        "peak_rss_export_mb": mib(rss_export.peak),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--devices", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-iothub-") as tmp, Azurite(Path(tmp) / "azurite") as azurite:
        small = run(args.devices // 4, args.seed, Path(tmp), azurite)
        big = run(args.devices, args.seed, Path(tmp), azurite)
    result = {
        "bench": "iothub_import_export",
        **big,
        "small": small,
        "rss_growth_import_x": round(big["peak_rss_import_mb"] / small["peak_rss_import_mb"], 2),
        "rss_growth_export_x": round(big["peak_rss_export_mb"] / small["peak_rss_export_mb"], 2),
        "goals": {"import_s": 60, "export_s": 30, "rss_growth_x": "~1.0"},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
