"""Bench: what the app costs a hub and a storage account, per import job and per idle hour.

The app (its services, as the Functions host builds them) runs in this process against Azurite and the IoT Hub
emulator in realistic mode (``--sku S1 --units 1``, ``--time-scale``). Counted:

- **hub API calls**, per throttle class, by the emulator (``GET /_emulator/usage``); only the app calls it here;
- **storage transactions** the app sends (every HTTP request of the Azure SDK clients made from the app's thread;
  the emulator's own reads and writes of the job's blobs run on its threads and are the hub's, not counted).

1. An import job of N devices (default 1,000, 100,000 and 1,000,000): the upload is accepted as the blob trigger
   does it, then the monitor runs as its timer would (``MONITOR_SCHEDULE`` every 30 s, scaled by the time scale, so
   a job makes the calls it would make at the service's pace) until the job ends.
2. The nightly backup (one export job of the registry the last import left).
3. An idle app: the monitor every 30 s (real seconds) for ``--idle-minutes`` with nothing to do, extrapolated to an
   hour and a day (said so in the output).

Printed beside the S1 quota of one unit: per class, an idle day's calls (24 idle hours plus the nightly backup)
against the throttle's 24-hour capacity. The
blob trigger's own scan (``LogsAndContainerScan``) is the Functions host's, on ``AzureWebJobsStorage``, and is not
the app's code: it is not counted (with Event Grid, an idle trigger costs nothing).

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.blob import BlobServiceClient

from bench.common import device_lines, elapsed, mib, write_file
from emulators.azurite import Azurite
from emulators.functions_host.process import stack_settings
from emulators.iothub import IoTHubEmulator
from emulators.iothub.quotas import Profile, limits
from shared.config import Settings, Snapshots
from shared.ledger import Job
from shared.services import Services

MONITOR_SECONDS = 30.0  # MONITOR_SCHEDULE's default: */30 * * * * *


class StorageCounter:
    """Counts the storage requests sent from the app's thread, per service (blob, table, queue) and method."""

    def __init__(self, azurite: Azurite) -> None:
        self.services = {azurite.blob_port: "blob", azurite.table_port: "table", azurite.queue_port: "queue"}
        self.counts: Counter[str] = Counter()
        self.app_thread = threading.get_ident()
        self._send = RequestsTransport.send

    @contextmanager
    def installed(self) -> Iterator[StorageCounter]:
        counter = self
        original = self._send

        def send(transport: RequestsTransport, request: Any, **kwargs: Any) -> Any:
            if threading.get_ident() == counter.app_thread:
                service = counter.services.get(urlsplit(request.url).port or 0, "other")
                counter.counts[f"{service} {request.method}"] += 1
            return original(transport, request, **kwargs)

        RequestsTransport.send = send
        try:
            yield self
        finally:
            RequestsTransport.send = original

    def take(self) -> dict[str, int]:
        """The counts since the last take, and a total."""
        counts = dict(sorted(self.counts.items()))
        self.counts.clear()
        return {**counts, "total": sum(counts.values())}


def usage(hub: IoTHubEmulator) -> dict[str, Any]:
    r = requests.get(f"{hub.url}/_emulator/usage", verify=str(hub.ca_path), timeout=10)
    r.raise_for_status()
    body: dict[str, Any] = r.json()
    return body


def reset(hub: IoTHubEmulator) -> None:
    """An empty hub with zero counts and full throttles."""
    requests.post(f"{hub.url}/_emulator/reset", json={}, verify=str(hub.ca_path), timeout=10).raise_for_status()


def hub_calls(hub: IoTHubEmulator) -> dict[str, int]:
    calls = {k: int(v) for k, v in usage(hub)["calls"].items() if v}
    throttled = {f"{k} throttled": int(v) for k, v in usage(hub)["throttled"].items() if v}
    return {**calls, **throttled, "total": sum(calls.values())}


def import_job(
    svc: Services,
    hub: IoTHubEmulator,
    counter: StorageCounter,
    path: Path,
    *,
    monitor_every: float,
    empty_hub: bool = True,
) -> dict[str, Any]:
    """One import of ``path``: uploaded (not counted: it is the user's), accepted as the trigger does, then
    followed by the monitor until it ends (on an empty hub, or with ``empty_hub=False`` on the registry as it is)."""
    name = f"bench-{path.stem}.jsonl"
    blobs = BlobServiceClient.from_connection_string(svc.settings.storage.connection_string or "")
    uploads = svc.settings.containers.uploads
    with path.open("rb") as f:
        etag = str(blobs.get_blob_client(uploads, name).upload_blob(f, overwrite=True, max_concurrency=2)["etag"])
    if empty_hub:
        reset(hub)
    else:
        hub.throttle.reset()  # zero counts, the registry kept
    counter.take()
    start = time.perf_counter()
    job = svc.on_upload(uploads, name, etag)
    snapshot: dict[str, Any] = {}
    if svc.settings.import_snapshots is not Snapshots.OFF:
        # The snapshot's plan job runs first, on the hub's slot: its time and hub calls, apart from the import's.
        passes = 0
        while (plan := svc.ledger.find_by_key(job.hub, f"snapshot-{job.job_id}")) is None or not plan.state.is_terminal:
            time.sleep(monitor_every)
            svc.monitor()
            passes += 1
        snapshot = {"seconds": elapsed(start), "monitor_passes": passes, "hub_calls": hub_calls(hub)}
        job = svc.ledger.get(job.hub, job.job_id)
    job, passes = monitored(svc, job, monitor_every)
    return {
        "state": str(job.state),
        "seconds": elapsed(start),
        "monitor_passes": passes + snapshot.get("monitor_passes", 0),
        "hub_calls": hub_calls(hub),
        "storage_transactions": counter.take(),
        **({"snapshot": snapshot} if snapshot else {}),
    }


def monitored(svc: Services, job: Job, every: float) -> tuple[Job, int]:
    """Monitor passes every ``every`` seconds until ``job`` completes; the job and how many passes it took."""
    passes = 0
    while not job.state.is_terminal:
        time.sleep(every)
        svc.monitor()
        passes += 1
        job = svc.ledger.get(job.hub, job.job_id)
    assert job.state.value == "completed", (job.state, job.failure_reason)
    return job, passes


def nightly_backup(
    svc: Services, hub: IoTHubEmulator, counter: StorageCounter, *, monitor_every: float
) -> dict[str, Any]:
    """The nightly timer's export of the hub as the last import left it, followed by the monitor until it ends."""
    hub.throttle.reset()  # zero counts, the registry kept
    counter.take()
    (queued,) = svc.nightly_backup()
    job, passes = monitored(svc, queued, monitor_every)
    return {
        "devices": job.devices,
        "monitor_passes": passes,
        "hub_calls": hub_calls(hub),
        "storage_transactions": counter.take(),
    }


def idle(svc: Services, hub: IoTHubEmulator, counter: StorageCounter, minutes: float) -> dict[str, Any]:
    """The monitor every 30 s with nothing to do, for ``minutes``; counts per pass and extrapolated."""
    reset(hub)
    counter.take()
    passes = 0
    end = time.monotonic() + minutes * 60
    while time.monotonic() < end:
        svc.monitor()
        passes += 1
        time.sleep(MONITOR_SECONDS)
    calls, storage = hub_calls(hub), counter.take()
    per_hour = 3600 / MONITOR_SECONDS / passes
    return {
        "measured_minutes": minutes,
        "monitor_passes": passes,
        "hub_calls": calls,
        "storage_transactions": storage,
        "extrapolated": "per hour = measured x (120 passes an hour / passes measured)",
        "hub_calls_per_hour": {k: round(v * per_hour, 1) for k, v in calls.items()},
        "storage_transactions_per_hour": {k: round(v * per_hour, 1) for k, v in storage.items()},
    }


def snapshot_cost(
    azurite: Azurite, hub: IoTHubEmulator, counter: StorageCounter, work: Path, n: int, *, seed: int, every: float
) -> dict[str, Any]:
    """What the default snapshot (``IMPORT_SNAPSHOTS=changes``) adds to an import of ``n`` createOrUpdate lines
    that overwrite ``n`` existing devices: the same kind of file imported with snapshots off, then on, on a hub
    seeded with ``n`` devices. The difference is the snapshot's plan job (one export of the hub with keys, joined
    with the file)."""
    env = stack_settings(azurite, hub)
    off = Services.build(Settings.from_env({**env, "IMPORT_SNAPSHOTS": "off"}), env)
    on = Services.build(Settings.from_env({**env, "IMPORT_SNAPSHOTS": "changes"}), env)
    runs: dict[str, Any] = {}
    for label, svc, variant in (("seed", off, 0), ("snapshots_off", off, 1), ("snapshots_on", on, 2)):
        path = work / f"overwrite-{n}-{label}.txt"
        write_file(path, device_lines(n, seed=seed + variant, prefix=f"o{n}"))  # the same ids, other contents
        runs[label] = import_job(svc, hub, counter, path, monitor_every=every, empty_hub=label == "seed")
        path.unlink()
    plain, snapped = runs["snapshots_off"], runs["snapshots_on"]
    extra_calls = {
        k: snapped["hub_calls"].get(k, 0) - plain["hub_calls"].get(k, 0)
        for k in sorted(set(snapped["hub_calls"]) | set(plain["hub_calls"]))
    }
    return {
        "devices": n,
        "snapshots_off": {k: plain[k] for k in ("seconds", "monitor_passes", "hub_calls")},
        "snapshots_on": {k: snapped[k] for k in ("seconds", "monitor_passes", "hub_calls", "snapshot")},
        "extra_seconds": round(snapped["seconds"] - plain["seconds"], 1),
        "extra_hub_calls": {k: v for k, v in extra_calls.items() if v},
    }


def s1_day(calls_per_hour: dict[str, float], once_a_day: dict[str, int]) -> dict[str, Any]:
    """Per throttle class: an idle day's calls (24 idle hours and the nightly backup) against what one S1 unit's
    throttle serves in 24 hours."""
    out: dict[str, Any] = {}
    for op, (n, window) in limits("S1", 1).items():
        budget = n * 86400 / window
        day = calls_per_hour.get(op.value, 0.0) * 24 + once_a_day.get(op.value, 0)
        out[op.value] = {
            "per_day": round(day, 1),
            "s1_unit_per_day": int(budget),
            "share_pct": round(100 * day / budget, 4),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000,100000,1000000", help="devices per import job, comma-separated")
    p.add_argument("--time-scale", type=float, default=0.1, help="the emulator's time scale (job times, throttles)")
    p.add_argument("--idle-minutes", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--snapshot-sizes",
        default="",
        help="only measure what the default snapshot adds to an import that overwrites N existing devices "
        "(comma-separated N, e.g. 10000,100000,1000000); the other measurements are skipped",
    )
    args = p.parse_args()
    if args.snapshot_sizes:
        snapshots(args)
        return
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    profile = Profile("S1", 1, time_scale=args.time_scale)
    result: dict[str, Any] = {"bench": "hub_calls", "profile": profile.describe(), "monitor_every_s": MONITOR_SECONDS}
    with tempfile.TemporaryDirectory(prefix="bench-calls-") as tmp:
        work = Path(tmp)
        azurite = Azurite(work / "azurite").start()
        hub = IoTHubEmulator(work / "iothub", port=0, control_plane=True, profile=profile)
        hub.start()
        os.environ["REQUESTS_CA_BUNDLE"] = str(hub.ca_path)
        try:
            env = stack_settings(azurite, hub)
            svc = Services.build(Settings.from_env(env), env)
            counter = StorageCounter(azurite)
            with counter.installed():
                jobs = {}
                for n in sizes:
                    path = work / f"devices-{n}.txt"
                    size = write_file(path, device_lines(n, seed=args.seed, prefix=f"b{n}"))
                    job = import_job(svc, hub, counter, path, monitor_every=MONITOR_SECONDS * args.time_scale)
                    path.unlink()
                    jobs[str(n)] = {"file_mb": mib(size), **job}
                result["import_jobs"] = jobs
                every = MONITOR_SECONDS * args.time_scale
                result["nightly_backup"] = backup = nightly_backup(svc, hub, counter, monitor_every=every)
                quiet = idle(svc, hub, counter, args.idle_minutes)
                quiet["s1_one_unit_idle_day_with_nightly_backup"] = s1_day(
                    quiet["hub_calls_per_hour"], backup["hub_calls"]
                )
                result["idle"] = quiet
        finally:
            hub.stop()
            azurite.stop()
    result["goals"] = {
        "idle": "well under 1% of an S1 unit's daily budget in every class",
        "import_jobs": "hub calls do not grow with the number of devices",
    }
    print(json.dumps(result))


def snapshots(args: argparse.Namespace) -> None:
    profile = Profile("S1", 1, time_scale=args.time_scale)
    result: dict[str, Any] = {"bench": "hub_calls snapshot cost", "profile": profile.describe()}
    with tempfile.TemporaryDirectory(prefix="bench-snap-") as tmp:
        work = Path(tmp)
        azurite = Azurite(work / "azurite").start()
        hub = IoTHubEmulator(work / "iothub", port=0, control_plane=True, profile=profile)
        hub.start()
        os.environ["REQUESTS_CA_BUNDLE"] = str(hub.ca_path)
        try:
            counter = StorageCounter(azurite)
            with counter.installed():
                every = MONITOR_SECONDS * args.time_scale
                result["sizes"] = [
                    snapshot_cost(azurite, hub, counter, work, int(n), seed=args.seed, every=every)
                    for n in args.snapshot_sizes.split(",")
                    if n.strip()
                ]
                print(json.dumps(result), flush=True)
        finally:
            hub.stop()
            azurite.stop()


if __name__ == "__main__":
    main()
