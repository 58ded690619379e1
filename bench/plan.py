"""Bench: planning an import (``shared.fleet``: the hash-partitioned join and the per-line outcomes) of an N-line file
against an N-device registry export, apart from the export itself.

Generates a registry shaped as a hub exports it with keys (ETags, twins, a module on every 20th device) and a file
of N lines (half updates of existing devices, a quarter creates, a tenth deletes, twin changes, some lines the hub
would refuse), then plans it in a child process (peak RSS from wait4) and prints one JSON line: the time to spool
both sides, the time to join and decide, lines/s, peak RSS, and the same for a file and registry 4x smaller to show
memory stays flat. The export is the hub's job: its time is measured by ``bench/iothub_import_export.py`` (the
emulator exports 1M devices in about 19 s) and is not part of these figures.
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

from bench.common import mib, write_file

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


def child(file: Path, registry: Path) -> None:
    """Plan ``file`` against ``registry`` and print the figures (run in a child process: its own peak RSS)."""
    from shared.fleet import Join, Plan

    def chunks(path: Path) -> Iterator[bytes]:
        with path.open("rb") as f:
            while chunk := f.read(4 * 1024 * 1024):
                yield chunk

    start = time.perf_counter()
    plan = Plan()
    with Join() as join:
        lines = join.add_file(chunks(file))
        reg = join.add_registry(chunks(registry))
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
            }
        )
    )


def run(file: Path, registry: Path) -> dict[str, object]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.plan", "--child", str(file), str(registry)], stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"the planning child failed ({status})")
    figures: dict[str, object] = json.loads(out)
    figures["peakRssMiB"] = round(mib(usage.ru_maxrss * 1024), 1)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=100_000, help="lines in the file and devices in the registry")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--child", nargs=2, metavar=("FILE", "REGISTRY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]))
        return
    result: dict[str, object] = {"bench": "plan", "lines": args.lines}
    with tempfile.TemporaryDirectory(prefix="bench-plan-") as tmp:
        for label, n in (("quarter", args.lines // 4), ("full", args.lines)):
            file, registry = Path(tmp) / f"file-{n}.jsonl", Path(tmp) / f"registry-{n}.txt"
            write_file(registry, registry_lines(n, args.seed))
            write_file(file, file_lines(n, args.seed))
            figures = run(file, registry)
            figures["fileMiB"] = round(mib(file.stat().st_size), 1)
            figures["registryMiB"] = round(mib(registry.stat().st_size), 1)
            figures["linesPerS"] = int(n / max(float(str(figures["planS"])), 1e-9))
            result[label] = figures
            file.unlink()
            registry.unlink()
    quarter, full = result["quarter"], result["full"]
    assert isinstance(quarter, dict) and isinstance(full, dict)
    result["rssGrowth4x"] = round(float(full["peakRssMiB"]) / float(quarter["peakRssMiB"]), 2)
    result["exportNote"] = "export time excluded: see bench/iothub_import_export.py (1M devices in about 19 s)"
    print(json.dumps(result))


if __name__ == "__main__":
    main()
