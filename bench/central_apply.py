"""Plan/apply of a large IoT Central data-export file, against a blind upsert of every item (what `az iot central
export [destination] create` does: one PUT per item, no comparison), side by side on the emulator.

Prints the time and the number of write requests of: the first apply, an apply of the same file again, and an
apply after 10 % of the exports changed, for both approaches. The point is the writes (each one a change to a live
app and a chance to break a running export); the time is dominated by the emulator's round trips.

    .venv/bin/python -m bench.central_apply [--destinations 100] [--exports 300]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from emulators.iotcentral import IoTCentralEmulator
from shared.dataexport import apply, make_plan, parse, read_app, resolve
from shared.iotcentral import DESTINATIONS, EXPORTS, IoTCentralClient

FILTERS = ("SELECT * FROM devices WHERE $simulated = true", "SELECT * FROM devices WHERE $simulated = false")
ENV = {"BENCH_HOOK_KEY": "bench-hook-key", "BENCH_STORAGE": "AccountName=a;AccountKey=a2V5;EndpointSuffix=x"}


def document(destinations: int, exports: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    dests: dict[str, Any] = {}
    for i in range(destinations):
        if i % 2:
            dests[f"d{i:04d}"] = {
                "displayName": f"hook {i}",
                "type": "webhook@v1",
                "url": f"https://hooks.example.com/{i}",
                "headerCustomizations": {"x-key": {"value": {"appSetting": "BENCH_HOOK_KEY"}, "secret": True}},
            }
        else:
            dests[f"d{i:04d}"] = {
                "displayName": f"blob {i}",
                "type": "blobstorage@v1",
                "authorization": {
                    "type": "connectionString",
                    "connectionString": {"appSetting": "BENCH_STORAGE"},
                    "containerName": f"c{i}",
                },
            }
    names = list(dests)
    exps = {
        f"e{i:04d}": {
            "displayName": f"export {i}",
            "enabled": True,
            "source": rng.choice(["telemetry", "properties", "deviceLifecycle", "audit"]),
            "filter": FILTERS[i % 2],
            "destinations": [{"id": d} for d in rng.sample(names, 2)],
        }
        for i in range(exports)
    }
    return {"destinations": dests, "exports": exps}


def ours(client: IoTCentralClient, doc: dict[str, Any]) -> None:
    parsed = parse(json.dumps(doc).encode())
    resolved = resolve(parsed, ENV)
    apply(make_plan(parsed, resolved, *read_app(client)), client)


def blind(client: IoTCentralClient, doc: dict[str, Any]) -> None:
    resolved = resolve(parse(json.dumps(doc).encode()), ENV)
    for item_id, body in resolved.items():
        client.put(DESTINATIONS, item_id, body)
    for item_id, body in doc["exports"].items():
        client.put(EXPORTS, item_id, body)


def measure(emu: IoTCentralEmulator, fn: Any, client: IoTCentralClient, doc: dict[str, Any]) -> tuple[float, int]:
    before = len(log(emu))
    start = time.perf_counter()
    fn(client, doc)
    seconds = time.perf_counter() - start
    writes = sum(1 for e in log(emu)[before:] if e["method"] != "GET")
    return seconds, writes


def log(emu: IoTCentralEmulator) -> list[dict[str, Any]]:
    r = requests.get(f"{emu.url}/_emulator/requests", verify=str(emu.ca_path), timeout=30)
    r.raise_for_status()
    entries: list[dict[str, Any]] = r.json()
    return entries


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--destinations", type=int, default=100)
    p.add_argument("--exports", type=int, default=300)
    args = p.parse_args()
    doc = document(args.destinations, args.exports, seed=1)
    changed = json.loads(json.dumps(doc))
    for i, export in enumerate(changed["exports"].values()):
        if i % 10 == 0:
            export["enabled"] = False
    rows = []
    for name, fn in (("plan + apply (ours)", ours), ("blind upsert (CLI-like)", blind)):
        with tempfile.TemporaryDirectory() as tmp:
            emu = IoTCentralEmulator(Path(tmp), port=0, control_plane=True, page_size=100)
            emu.start()
            os.environ["REQUESTS_CA_BUNDLE"] = str(emu.ca_path)
            client = IoTCentralClient.from_api_token(emu.url, emu.api_token())
            try:
                rows.append(
                    (
                        name,
                        measure(emu, fn, client, doc),
                        measure(emu, fn, client, doc),
                        measure(emu, fn, client, changed),
                    )
                )
            finally:
                emu.stop()
    items = args.destinations + args.exports
    print(f"{args.destinations} destinations + {args.exports} exports ({items} items), emulator on loopback")
    print(f"{'approach':<26}{'first apply':>22}{'same file again':>22}{'10% of exports changed':>26}")
    for name, *runs in rows:
        print(
            f"{name:<26}"
            + "".join(f"{f'{s:.2f} s, {w} writes':>{n}}" for (s, w), n in zip(runs, (22, 22, 26), strict=True))
        )
    (_, a1, a2, a3), (_, b1, b2, b3) = rows
    print(
        f"writes, ours / blind: first {a1[1] / b1[1]:.2f}, again {a2[1] / b2[1]:.2f}, 10% changed {a3[1] / b3[1]:.2f}"
    )
    print(
        f"time, ours / blind:   first {a1[0] / b1[0]:.2f}, again {a2[0] / b2[0]:.2f}, 10% changed {a3[0] / b3[0]:.2f}"
    )


if __name__ == "__main__":
    main()
