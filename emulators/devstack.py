"""``make run``: start the local stack (Azurite, the IoT Hub emulator), run a short demo, serve until Ctrl-C.

State lives in ``.devstack/`` so a second run finds the registry it left; ``--fresh`` starts over.
``--demo-only`` exits after the demo (used by the tests of this command).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from azure.storage.blob import BlobServiceClient

from emulators.azurite import REPO, Azurite, free_port
from emulators.iothub import IoTHubEmulator
from shared.iothub import IoTHubClient, Job, error_name
from shared.storage import Storage

SAMPLES = REPO / "samples"


def _port(preferred: int) -> int:
    """``preferred`` if it is free on loopback, else any free port."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            return free_port()
    return preferred


def _say(text: str = "") -> None:
    print(text, flush=True)


def _wait(hub: IoTHubClient, job: Job) -> Job:
    last = -1
    while not job.status.is_terminal:
        if job.progress != last:
            _say(f"    {job.type} job {job.job_id[:8]}: {job.status} {job.progress}%")
            last = job.progress
        time.sleep(0.3)
        job = hub.get_job(job.job_id)
    _say(
        f"    {job.type} job {job.job_id[:8]}: {job.status}"
        + (f" - {job.failure_reason}" if job.failure_reason else "")
    )
    return job


def demo(hub: IoTHubClient, service: BlobServiceClient) -> None:
    store = Storage(service)
    for name in ("demo-in", "demo-out"):
        with contextlib.suppress(Exception):
            service.create_container(name)
    _say("\n== 1. Import samples/devices-good.jsonl through an IoT Hub import job")
    service.get_blob_client("demo-in", "devices.txt").upload_blob(
        (SAMPLES / "devices-good.jsonl").read_bytes(), overwrite=True
    )
    _wait(
        hub, hub.create_import_job(store.container_sas_url("demo-in", "rl"), store.container_sas_url("demo-out", "rwd"))
    )
    stats = hub.get_registry_statistics()
    _say(f"    registry: {stats.total} devices ({stats.enabled} enabled, {stats.disabled} disabled)")

    _say("\n== 2. Import samples/devices-with-mistakes.jsonl: the hub reports per-device errors")
    service.get_blob_client("demo-in", "devices.txt").upload_blob(
        (SAMPLES / "devices-with-mistakes.jsonl").read_bytes(), overwrite=True
    )
    _wait(
        hub, hub.create_import_job(store.container_sas_url("demo-in", "rl"), store.container_sas_url("demo-out", "rwd"))
    )
    log = service.get_blob_client("demo-out", "importErrors.log").download_blob().readall().decode()
    for line in log.splitlines():
        entry = json.loads(line)
        code = entry["errorCode"]
        device = entry.get("deviceId", "(no id)")
        _say(f"    {device:18} {error_name(code)} ({code}): {entry['errorStatus'][:90]}")

    _say("\n== 3. Export the registry (keys excluded)")
    _wait(hub, hub.create_export_job(store.container_sas_url("demo-out", "rwd"), output_blob_name="backup.txt"))
    lines = service.get_blob_client("demo-out", "backup.txt").download_blob().readall().decode().splitlines()
    _say(f"    demo-out/backup.txt: {len(lines)} lines; first: {lines[0][:110]}...")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="make run", description=__doc__)
    p.add_argument("--fresh", action="store_true", help="forget the state of earlier runs")
    p.add_argument("--demo-only", action="store_true", help="exit after the demo")
    p.add_argument("--state", type=Path, default=REPO / ".devstack")
    args = p.parse_args(argv)
    if args.fresh:
        shutil.rmtree(args.state, ignore_errors=True)
    _say("Starting Azurite ...")
    azurite = Azurite(args.state / "azurite").start()
    hub_server = IoTHubEmulator(
        args.state / "iothub", port=_port(8443), storage_identity=azurite.connection_string, control_plane=True
    )
    hub_server.start()
    os.environ["REQUESTS_CA_BUNDLE"] = str(hub_server.ca_path)
    try:
        hub = IoTHubClient.from_connection_string(hub_server.connection_string())
        service = BlobServiceClient.from_connection_string(azurite.connection_string)
        demo(hub, service)
        _say("\n== The local stack is up")
        _say(f"    Azurite (storage)      {azurite.connection_string}")
        _say(f"    IoT Hub emulator       {hub_server.url}")
        _say(f"    IoT Hub connection     {hub_server.connection_string()}")
        _say(f"    trust its certificate  export REQUESTS_CA_BUNDLE={hub_server.ca_path}")
        if args.demo_only:
            return 0
        _say("\nServing until Ctrl-C.")
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
        return 0
    finally:
        hub_server.stop()
        azurite.stop(remove=False)


if __name__ == "__main__":
    sys.exit(main())
