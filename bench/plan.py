"""Bench: previewing an import of an N-line file into an N-device hub, the registry export included: the
emulator's export job into Azurite (as the plan kind runs it, keys included), then the plan (``shared.fleet``: the
hash-partitioned join and the per-line outcomes) reading the export and the file from Azurite, as the kind does.

The hub is the IoT Hub emulator in its own process, filled first (not timed) by an import of a registry shaped as
a hub holds it (keys, twins, a module on every 20th device). The file has N lines (half updates of existing
devices, a quarter creates, a tenth deletes, twin changes, some lines the hub would refuse). The plan runs in a
child process, which reads its own peak RSS (wait4's starts at the parent's, which holds the Azurite uploads).
Prints one JSON line: the export time, the time to spool both sides, to join and decide, the total (export + plan)
against the 60 s goal for 1M x 1M (below 1M, projected from the cost per line between the two runs), and the same
for a file and hub 4x smaller: the reference the ratios compare with (time should grow about 4x, memory stay flat).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from azure.storage.blob import BlobServiceClient

from bench.common import elapsed, mib, write_file
from bench.iothub_import_export import Hub
from emulators.azurite import Azurite
from shared.storage import BlobRef, Storage, StorageSettings

KEY = "c2VjcmV0LWRldmljZS1rZXktMDEyMzQ1Njc4OWFiY2Q="


def registry_lines(n: int, seed: int) -> Iterator[str]:
    rng = random.Random(seed)
    for i in range(n):
        line = {
            "id": f"dev-{i:07d}",
            "eTag": "AAAAAAAAAAE=",
            "status": "enabled" if rng.random() < 0.9 else "disabled",
            "statusReason": "",
            "authentication": {"type": "sas", "symmetricKey": {"primaryKey": KEY, "secondaryKey": KEY}},
            "twinETag": "AAAAAAAAAAE=",
            "tags": {"site": f"s{i % 50}", "floor": i % 7},
            "properties": {"desired": {"interval": i % 60}, "reported": {}},
            "capabilities": {"iotEdge": False},
        }
        yield json.dumps(line, separators=(",", ":"))
        if i % 20 == 0:
            module = {"id": line["id"], "moduleId": "sensor", "eTag": "AAAAAAAAAAE=", "status": "enabled"}
            yield json.dumps(module, separators=(",", ":"))


def file_lines(n: int, seed: int) -> Iterator[str]:
    rng = random.Random(seed + 1)
    order = list(range(n))
    rng.shuffle(order)  # a file in no particular order: the join must not care
    for j in order:
        r = j % 20
        if r < 10:
            yield json.dumps(
                {"id": f"dev-{j:07d}", "status": "disabled" if r < 3 else "enabled", "tags": {"site": "x"}}
            )
        elif r < 15:
            yield json.dumps({"id": f"new-{j:07d}", "status": "enabled", "importMode": "create"})
        elif r < 17:
            yield json.dumps({"id": f"dev-{j:07d}", "importMode": "delete"})
        elif r < 19:
            yield json.dumps({"id": f"dev-{j:07d}", "importMode": "updateTwin", "properties": {"desired": {"x": 1}}})
        else:
            yield json.dumps({"id": f"dev-{j:07d}", "status": "enabled", "importMode": "create"})  # refused


def seed_lines(n: int, seed: int) -> Iterator[str]:
    """The registry as import lines (what fills the hub): its export lines without the ETags the hub makes."""
    for text in registry_lines(n, seed):
        line = json.loads(text)
        line.pop("eTag", None)
        line.pop("twinETag", None)
        yield json.dumps(line, separators=(",", ":"))


GOAL_LINES = 1_000_000
GOAL_S = 60.0  # the goal: a 1M-line file previewed against a 1M-device hub, export included


CONNECTION_ENV = "BENCH_PLAN_STORAGE"  # how the child gets the connection string: never on its command line (ps)


def child(container: str) -> None:
    """Plan ``file.jsonl`` against ``registry.txt`` of ``container``, both streamed from Azurite as the plan kind
    reads them, and print the figures (run in a child process: its own peak RSS)."""
    from shared.fleet import Join, Plan

    storage = Storage.from_settings(
        StorageSettings(connection_string=os.environ[CONNECTION_ENV])
    )  # the app's 4 MiB ranges
    start = time.perf_counter()
    plan = Plan()
    with Join() as join:
        lines = join.add_file(storage.open_read(BlobRef(container, "file.jsonl")))
        reg = join.add_registry(storage.open_read(BlobRef(container, "registry.txt")))
        spooled = time.perf_counter()
        for device in join.devices():
            plan.add(device)
    done = time.perf_counter()
    doc = plan.document()
    print(
        json.dumps(
            {
                "lines": lines,
                "registryLines": reg,
                "spoolS": round(spooled - start, 2),
                "joinS": round(done - spooled, 2),
                "planS": round(done - start, 2),
                "totals": doc["totals"],
                "peakRssMiB": round(_peak_rss_kib() / 1024, 1),
            }
        )
    )


def _peak_rss_kib() -> int:
    """This process's peak resident memory (VmHWM: reset at exec, unlike wait4's ru_maxrss, which a child
    inherits from its parent at fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise SystemExit("no VmHWM in /proc/self/status (Linux only)")


def plan_in_child(connection: str, container: str) -> dict[str, Any]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.plan", "--child", container],
        stdout=subprocess.PIPE,
        env={**os.environ, CONNECTION_ENV: connection},
    )
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"the planning child failed ({proc.returncode})")
    figures: dict[str, Any] = json.loads(out)
    return figures


def upload(service: BlobServiceClient, container: str, name: str, path: Path) -> None:
    with path.open("rb") as f:
        service.get_blob_client(container, name).upload_blob(f, overwrite=True, max_concurrency=2)
    path.unlink()


def run(n: int, seed: int, work: Path, azurite: Azurite) -> dict[str, Any]:
    """Fill a fresh emulator with ``n`` devices, export its registry, plan an ``n``-line file against the export."""
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    sas = Storage(service).sas
    container = f"bench-plan-{n}"
    service.create_container(container)
    write_file(work / "seed.txt", seed_lines(n, seed))
    upload(service, container, "devices.txt", work / "seed.txt")
    file_bytes = write_file(work / "file.jsonl", file_lines(n, seed))
    upload(service, container, "file.jsonl", work / "file.jsonl")
    hub = Hub(work / f"hub-{n}", azurite.connection_string)
    try:
        start = time.perf_counter()
        hub.run_job(
            {
                "type": "import",
                "inputBlobContainerUri": sas.container_sas_url(container, "rl"),
                "outputBlobContainerUri": sas.container_sas_url(container, "rwd"),
            }
        )
        fill_s = elapsed(start)
        devices = hub.call("GET", "/statistics/devices")["totalDeviceCount"]
        assert devices == n, devices
        start = time.perf_counter()
        hub.run_job(  # as ``export_registry``: keys included, into the job's container
            {
                "type": "export",
                "outputBlobContainerUri": sas.container_sas_url(container, "rwd"),
                "outputBlobName": "registry.txt",
                "excludeKeysInExport": False,
            }
        )
        export_s = elapsed(start)
    finally:
        hub.close()
    registry_bytes = service.get_blob_client(container, "registry.txt").get_blob_properties().size
    figures = plan_in_child(azurite.connection_string, container)
    service.delete_container(container)
    plan_s = float(figures["planS"])
    return {
        "lines": n,
        "devices": devices,
        "loadAvg": round(os.getloadavg()[0], 2),  # other work on the machine, which these figures include
        "fillS": fill_s,
        "exportS": export_s,
        **{k: v for k, v in figures.items() if k != "lines"},
        "totalS": round(export_s + plan_s, 2),
        "linesPerS": int(n / max(plan_s, 1e-9)),
        "fileMiB": round(mib(file_bytes), 1),
        "registryMiB": round(mib(registry_bytes), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=100_000, help="lines in the file and devices in the hub")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--child", metavar="CONTAINER", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    with tempfile.TemporaryDirectory(prefix="bench-plan-") as tmp, Azurite(Path(tmp) / "azurite") as azurite:
        quarter = run(args.lines // 4, args.seed, Path(tmp), azurite)
        full = run(args.lines, args.seed, Path(tmp), azurite)
    total = float(full["totalS"])
    result: dict[str, Any] = {
        "bench": "plan",
        "lines": args.lines,
        "full": full,
        "quarter": quarter,  # the reference run: 4x smaller
        "exportGrowth4x": round(float(full["exportS"]) / max(float(quarter["exportS"]), 1e-9), 2),
        "planGrowth4x": round(float(full["planS"]) / max(float(quarter["planS"]), 1e-9), 2),
        "rssGrowth4x": round(float(full["peakRssMiB"]) / float(quarter["peakRssMiB"]), 2),
        "goal": {"lines": GOAL_LINES, "totalS": GOAL_S},
    }
    if args.lines == GOAL_LINES:
        result["goal"]["met"] = total <= GOAL_S
    else:  # linear from the two runs: their difference is the cost per line, without the fixed start-up costs
        per_line = (total - float(quarter["totalS"])) / (args.lines - args.lines // 4)
        projected = round(total + per_line * (GOAL_LINES - args.lines), 1)
        result["goal"].update(projectedTotalS=projected, met=projected <= GOAL_S)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
