"""Bench: migrating an N-device hub (default 100,000; ``--devices 1000000`` for the issue's figure) through the app,
against its reference: the sum of a bare export job of the same hub and a bare import job of that export into an
empty hub, run side by side on the same stack (Azurite, two IoT Hub emulators sharing one CA, the local Functions
host).

The migration is timed from ``POST /api/migrations`` to the state ``completed``: its three jobs (the source's
export kept with a manifest; the import, validated and staged; the verification, a target export joined with the
source's and compared device by device) and the monitor's turns between them (every second here). The reference's
export and import are hub jobs only (the copy between them, which drops the exported ETags, is not counted). Also
the host's peak RSS during the migration, to show memory stays flat.

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import requests
from azure.storage.blob import BlobServiceClient

from bench.common import PeakRss, device_lines, elapsed, mib, write_file
from emulators.azurite import Azurite
from emulators.functions_host.process import HostProcess, stack_settings
from emulators.iothub import IoTHubEmulator
from shared.iothub import IoTHubClient
from shared.iothub import Job as HubJob
from shared.ledger import TERMINAL_STATES
from shared.storage import BlobRef, Storage


def _wait(client: IoTHubClient, job: HubJob) -> HubJob:
    while not job.status.is_terminal:
        time.sleep(0.2)
        job = client.get_job(job.job_id)
    return job


def _reset(hub: IoTHubEmulator) -> None:
    r = requests.post(f"{hub.url}/_emulator/reset", json={}, verify=str(hub.ca_path), timeout=30)
    r.raise_for_status()


def seed(hub: IoTHubEmulator, store: Storage, path: Path) -> None:
    """The source hub's registry, by a bare import job (not timed)."""
    client = IoTHubClient.from_connection_string(hub.connection_string())
    for name in ("seed-in", "seed-out"):
        store.ensure_container(name)
    with path.open("rb") as f:
        store.service.get_blob_client("seed-in", "devices.txt").upload_blob(f, overwrite=True, max_concurrency=2)
    job = client.create_import_job(
        store.sas.container_sas_url("seed-in", "rl"), store.sas.container_sas_url("seed-out", "rwd")
    )
    assert _wait(client, job).status.value == "completed"


def reference(source: IoTHubEmulator, target: IoTHubEmulator, store: Storage) -> dict[str, float]:
    """A bare export of the source with keys, then a bare import of it into the (empty) target: each job's time."""
    src = IoTHubClient.from_connection_string(source.connection_string())
    dst = IoTHubClient.from_connection_string(target.connection_string())
    for name in ("ref-export", "ref-in", "ref-out"):
        store.ensure_container(name)
    start = time.perf_counter()
    job = _wait(src, src.create_export_job(store.sas.container_sas_url("ref-export", "rwdl"), exclude_keys=False))
    export_s = elapsed(start)
    assert job.status.value == "completed", job
    # The exported ETags would be checked against the empty hub: dropped on the way, as a restore does (not timed).
    staged = store.stage("ref-in", "devices.txt")
    carry = b""
    for chunk in store.open_read(BlobRef("ref-export", "devices.txt")):
        *whole, carry = (carry + chunk).split(b"\n")
        out = []
        for line in whole:
            if line.strip():
                doc = orjson.loads(line)
                doc.pop("eTag", None)
                doc.pop("twinETag", None)
                out.append(orjson.dumps(doc))
        if out:
            staged.write(b"\n".join(out) + b"\n")
    staged.commit()
    start = time.perf_counter()
    job = dst.create_import_job(
        store.sas.container_sas_url("ref-in", "rl"), store.sas.container_sas_url("ref-out", "rwd")
    )
    job = _wait(dst, job)
    import_s = elapsed(start)
    assert job.status.value == "completed", job
    return {"reference_export_s": export_s, "reference_import_s": import_s}


def migrate(app: HostProcess) -> tuple[float, dict[str, Any], int]:
    assert app.proc is not None
    with PeakRss(app.proc.pid) as rss:
        start = time.perf_counter()
        r = app.call("POST", "migrations", json={"from": "devhub", "to": "stagehub", "mode": "create"})
        assert r.status_code == 202, r.text
        doc: dict[str, Any] = r.json()
        path = f"migrations/devhub/{doc['migrationId']}"
        while doc["state"] not in TERMINAL_STATES:
            time.sleep(0.5)
            doc = app.call("GET", path).json()
        seconds = elapsed(start)
    return seconds, doc, rss.peak


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--devices", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args()
    result: dict[str, Any] = {"bench": "migration", "devices": args.devices}
    with tempfile.TemporaryDirectory(prefix="bench-migration-") as tmp:
        work = Path(tmp)
        azurite = Azurite(work / "azurite").start()
        source = IoTHubEmulator(work / "devhub", port=0, control_plane=True)
        source.start()
        assert source.ca_path is not None
        target = IoTHubEmulator(work / "stagehub", port=0, control_plane=True, tls_dir=source.ca_path.parent)
        target.start()
        os.environ["REQUESTS_CA_BUNDLE"] = str(source.ca_path)
        values = stack_settings(
            azurite,
            source,
            MONITOR_SCHEDULE="* * * * * *",
            IOTHUB_HUBS="devhub,stagehub",
            IOTHUB_STAGEHUB_CONNECTION_STRING=target.connection_string(),
        )
        app = HostProcess(work / "host", values)
        try:
            store = Storage(BlobServiceClient.from_connection_string(azurite.connection_string))
            path = work / "devices.txt"
            result["file_mb"] = mib(write_file(path, device_lines(args.devices, seed=args.seed, prefix="mig")))
            seed(source, store, path)
            path.unlink()
            result.update(reference(source, target, store))
            result["reference_s"] = round(result["reference_export_s"] + result["reference_import_s"], 2)
            _reset(target)
            app.start()
            assert app.proc is not None
            result["host_idle_rss_mb"] = mib(PeakRss(app.proc.pid).proc.memory_info().rss)
            seconds, doc, peak = migrate(app)
            assert doc["state"] == "completed", json.dumps(doc)[:2000]
            jobs = doc["jobs"]
            result["migration_s"] = seconds
            for step in ("export", "import", "verify"):
                job = jobs[step]
                started = job["started"] or job["created"]
                result[f"step_{step}_s"] = round(
                    (datetime.fromisoformat(job["updated"]) - datetime.fromisoformat(started)).total_seconds(), 2
                )
            result["verified_devices"] = doc["verification"]["compared"]
            result["host_peak_rss_mb"] = mib(peak)
            result["migration_vs_reference_x"] = round(seconds / result["reference_s"], 2)
        finally:
            app.stop()
            target.stop()
            source.stop()
            azurite.stop()
    result["goals"] = {"migration_vs_reference_x": "export + import + a verification export and join: about 2x"}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
