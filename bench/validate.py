"""Bench: the streaming validator against the parse floor (orjson / msgspec decoding every line), `jq -c .` and a
jsonschema validator of the same rules.

Generates a realistic N-line devices file (keys, x509, twins, modes), validates it in a child process (peak RSS
from wait4), times `jq -c . FILE > /dev/null` on the same file, and times `jsonschema` on the first
``--schema-sample`` lines (it is too slow for the whole file; its rate is compared per line). Then runs ours on
the same lines shuffled (repeated ids are found by hash, so order must not matter), on N/5 lines shaped as a hub
exports them (restoring a backup), and on a file 4x larger to show memory stays flat. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from bench.common import device_lines, mib, write_file
from shared.devices import AUTH_TYPES, EDGE_SYSTEM_MODULES, IMPORT_MODES, STATUSES

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id"],
    "properties": {
        "id": {"type": "string", "pattern": r"^[A-Za-z0-9\-.%_*?!(),:=@$']{1,128}$"},
        "moduleId": {
            "type": "string",
            "pattern": r"^[A-Za-z0-9\-.+%_#*?!(),:=@$']{1,128}$",
            "not": {"enum": list(EDGE_SYSTEM_MODULES)},
        },
        "importMode": {"enum": list(IMPORT_MODES)},
        "status": {"enum": list(STATUSES)},
        "statusReason": {"type": "string", "maxLength": 128},
        "eTag": {"type": "string"},
        "twinETag": {"type": "string"},
        "authentication": {
            "type": ["object", "null"],
            "properties": {
                "type": {"enum": list(AUTH_TYPES)},
                "symmetricKey": {
                    "type": ["object", "null"],
                    "properties": {
                        "primaryKey": {"type": ["string", "null"], "pattern": "^[A-Za-z0-9+/]{22,88}={0,2}$"},
                        "secondaryKey": {"type": ["string", "null"], "pattern": "^[A-Za-z0-9+/]{22,88}={0,2}$"},
                    },
                    "dependentRequired": {"primaryKey": ["secondaryKey"], "secondaryKey": ["primaryKey"]},
                },
                "x509Thumbprint": {
                    "type": ["object", "null"],
                    "properties": {
                        "primaryThumbprint": {
                            "type": ["string", "null"],
                            "pattern": "^([0-9A-Fa-f]{40}|[0-9A-Fa-f]{64})$",
                        },
                        "secondaryThumbprint": {
                            "type": ["string", "null"],
                            "pattern": "^([0-9A-Fa-f]{40}|[0-9A-Fa-f]{64})$",
                        },
                    },
                },
            },
            "not": {"required": ["symmetricKey", "x509Thumbprint"]},
        },
        "tags": {"type": "object", "propertyNames": {"pattern": r"^[^.$ ]+$"}},
        "properties": {
            "type": "object",
            "properties": {
                "desired": {"type": "object", "propertyNames": {"pattern": r"^([^.$ ]+|\$metadata|\$version)$"}},
                "reported": {"type": "object", "propertyNames": {"pattern": r"^([^.$ ]+|\$metadata|\$version)$"}},
            },
        },
        "capabilities": {"type": "object", "properties": {"iotEdge": {"type": "boolean"}}},
        "parentScopes": {"type": "array", "items": {"type": "string"}},
        "deviceScope": {"type": "string"},
    },
    "allOf": [
        {
            "if": {
                "properties": {
                    "importMode": {"enum": ["updateIfMatchETag", "deleteIfMatchETag", "createOrUpdateIfMatchETag"]}
                },
                "required": ["importMode"],
            },
            "then": {"required": ["eTag"]},
        },
        {
            "if": {"properties": {"importMode": {"const": "updateTwinIfMatchETag"}}, "required": ["importMode"]},
            "then": {"required": ["twinETag"]},
        },
    ],
}

_CHILD = """
import sys, time, json
from shared.devices import validate_stream
start = time.perf_counter()
with open(sys.argv[1], 'rb') as f:
    report = validate_stream(f)
print(json.dumps({"seconds": time.perf_counter() - start, "valid": report.valid, "lines": report.lines,
                  "errors": report.error_count}))
"""

# The parse floor: a JSON parser's decode of every line, read the same way, in a child started the same way.
_FLOOR = """
import sys, time, json
import orjson, msgspec
decode = {"orjson": orjson.loads, "msgspec": msgspec.json.Decoder().decode}[sys.argv[2]]
start = time.perf_counter()
with open(sys.argv[1], 'rb') as f:
    for line in f:
        decode(line)
print(json.dumps({"seconds": time.perf_counter() - start}))
"""

_SHUFFLE = """
import random, sys
lines = open(sys.argv[1], 'rb').readlines()
random.Random(int(sys.argv[3])).shuffle(lines)
open(sys.argv[2], 'wb').writelines(lines)
"""


def exported_lines(count: int, *, seed: int) -> Iterator[str]:
    """The export format of a hub with keys included, twins with metadata (one device per line)."""
    rng = random.Random(seed)
    stamp = "2026-11-21T02:00:00.0000000Z"
    for i in range(count):
        keys = [base64.b64encode(rng.randbytes(32)).decode() for _ in range(2)]
        interval = rng.choice([10, 30, 60])
        line = {
            "id": f"dev-{i:07d}",
            "eTag": base64.b64encode(str(rng.randrange(1 << 30)).encode()).decode(),
            "status": "enabled",
            "authentication": {
                "symmetricKey": {"primaryKey": keys[0], "secondaryKey": keys[1]},
                "x509Thumbprint": {"primaryThumbprint": None, "secondaryThumbprint": None},
                "type": "sas",
            },
            "twinETag": "AAAAAAAAAAE=",
            "tags": {"site": rng.choice(["oslo", "lyon", "porto"])},
            "properties": {
                "desired": {
                    "interval": interval,
                    "$metadata": {"$lastUpdated": stamp, "interval": {"$lastUpdated": stamp}},
                    "$version": 2,
                },
                "reported": {"$metadata": {"$lastUpdated": stamp}, "$version": 1},
            },
            "capabilities": {"iotEdge": False},
        }
        yield json.dumps(line, separators=(",", ":"))


def ours(path: Path) -> dict[str, Any]:
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"validator failed: {out}")
    result: dict[str, Any] = json.loads(out)
    result["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)
    return result


def floor_seconds(path: Path, parser: str) -> float:
    out = subprocess.run([sys.executable, "-c", _FLOOR, str(path), parser], capture_output=True, text=True, check=True)
    seconds: float = json.loads(out.stdout)["seconds"]
    return seconds


def jq_seconds(path: Path) -> float | None:
    if shutil.which("jq") is None:
        print("jq not found: `apt-get install jq` to compare", file=sys.stderr)
        return None
    start = time.perf_counter()
    with path.open("rb") as f:
        subprocess.run(["jq", "-c", "."], stdin=f, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def jsonschema_rate(path: Path, sample: int) -> float:
    import jsonschema

    validator = jsonschema.Draft202012Validator(SCHEMA)
    start = time.perf_counter()
    n = 0
    with path.open("rb") as f:
        for raw in islice(f, sample):
            for _ in validator.iter_errors(json.loads(raw)):
                pass
            n += 1
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--lines", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--schema-sample", type=int, default=50_000)
    p.add_argument("--no-4x", action="store_true", help="skip the 4x file (memory flatness)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-validate-") as tmp:
        path = Path(tmp) / "devices.txt"
        size = write_file(path, device_lines(args.lines, seed=args.seed, modes=True))
        mine = ours(path)
        assert mine["valid"] and mine["lines"] == args.lines, mine
        floor = {parser: floor_seconds(path, parser) for parser in ("orjson", "msgspec")}
        jq = jq_seconds(path)
        schema_rate = jsonschema_rate(path, args.schema_sample)
        our_rate = args.lines / mine["seconds"]
        result: dict[str, Any] = {
            "bench": "validate",
            "lines": args.lines,
            "file_mb": mib(size),
            "ours_s": round(mine["seconds"], 2),
            "ours_lines_per_s": round(our_rate),
            "ours_peak_rss_mb": mine["peak_rss_mb"],
            "floor_orjson_s": round(floor["orjson"], 2),
            "floor_msgspec_s": round(floor["msgspec"], 2),
            "ours_vs_floor_x": round(mine["seconds"] / min(floor.values()), 2),
            "jq_s": round(jq, 2) if jq else None,
            "speed_vs_jq_x": round(jq / mine["seconds"], 2) if jq else None,
            "jsonschema_lines_per_s": round(schema_rate),
            "jsonschema_sample_lines": args.schema_sample,
            "speed_vs_jsonschema_x": round(our_rate / schema_rate, 1),
        }
        # The same lines in random order: an export is not sorted by id, and finding repeats must not care.
        # Shuffled in a child: a child's peak RSS (from wait4) starts at its parent's, so this process stays small.
        shuffled = Path(tmp) / "devices-shuffled.txt"
        subprocess.run([sys.executable, "-c", _SHUFFLE, str(path), str(shuffled), str(args.seed)], check=True)
        mine_shuffled = ours(shuffled)
        assert mine_shuffled["valid"], mine_shuffled
        shuffled.unlink()
        result["ours_shuffled_s"] = round(mine_shuffled["seconds"], 2)
        # Lines as a hub exports them (a backup being restored): ETags, twin metadata, null thumbprints.
        exported = Path(tmp) / "devices-exported.txt"
        write_file(exported, exported_lines(args.lines // 5, seed=args.seed))
        mine_exported = ours(exported)
        assert mine_exported["valid"], mine_exported
        exported.unlink()
        result["exported_lines"] = args.lines // 5
        result["ours_exported_lines_per_s"] = round(mine_exported["lines"] / mine_exported["seconds"])
        if not args.no_4x:
            path.unlink()
            big = Path(tmp) / "devices-4x.txt"
            result["file_4x_mb"] = mib(write_file(big, device_lines(args.lines * 4, seed=args.seed, modes=True)))
            mine4 = ours(big)
            assert mine4["valid"], mine4
            result["ours_4x_s"] = round(mine4["seconds"], 2)
            result["ours_4x_peak_rss_mb"] = mine4["peak_rss_mb"]
            result["rss_growth_4x"] = round(mine4["peak_rss_mb"] / mine["peak_rss_mb"], 2)
        result["goals"] = {
            "ours_vs_floor_x": "<= 2",
            "speed_vs_jq_x": ">= 1",
            "speed_vs_jsonschema_x": ">= 20",
            "peak_rss_mb": "< 100, flat",
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
