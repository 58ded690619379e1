"""Bench: the CSV sheet reader next to the JSON-lines validator, on the same devices.

Generates a realistic N-line devices file (bench.common.device_lines: keys, x509, tags, desired) and the same
devices as a CSV sheet (written by ``iotjobs export --csv``'s own writer, keys kept), validates each in a child
process (time and peak RSS from wait4), then the sheet at a quarter of N to show its memory does not grow with
the rows. Prints one JSON line. The machine may be shared: compare the two rates, measured back to back, rather
than the absolute figures.
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

from bench.common import device_lines, mib, write_file
from iotjobs import sheet

_CHILD = """
import sys, time, json
from shared.devices import validate_csv_stream, validate_stream
validate = validate_csv_stream if sys.argv[2] == "csv" else validate_stream
start = time.perf_counter()
with open(sys.argv[1], 'rb') as f:
    report = validate(f, sink=lambda batch: None)  # staging's cost without its writes
print(json.dumps({"seconds": time.perf_counter() - start, "valid": report.valid, "lines": report.lines,
                  "errors": report.error_count}))
"""


def run(path: Path, kind: str) -> dict[str, Any]:
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(path), kind], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"validator failed: {out}")
    result: dict[str, Any] = json.loads(out)
    if not result["valid"]:
        raise SystemExit(f"the generated {kind} file was not valid: {result}")
    result["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)
    result["lines_per_s"] = round(result["lines"] / result["seconds"])
    return result


def write_sheet(jsonl: Path, target: Path) -> int:
    def lines() -> Any:
        with jsonl.open("rb") as f:
            yield from f

    twin = sheet.twin_columns(lines())
    with target.open("w", encoding="utf-8-sig", newline="") as out:
        sheet.write(out, sheet.rows(lines(), twin, keys=True))
    return target.stat().st_size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lines", type=int, default=1_000_000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-csv-") as tmp:
        folder = Path(tmp)
        result: dict[str, Any] = {"bench": "validate_csv", "lines": args.lines}
        sizes: dict[str, float] = {}
        for n, tag in ((args.lines, "full"), (args.lines // 4, "quarter")):
            jsonl, csv_path = folder / f"{tag}.jsonl", folder / f"{tag}.csv"
            started = time.perf_counter()
            sizes[f"{tag}_jsonl_mib"] = mib(write_file(jsonl, device_lines(n, seed=7)))
            sizes[f"{tag}_csv_mib"] = mib(write_sheet(jsonl, csv_path))
            print(f"{tag}: wrote {n:,} devices both ways in {time.perf_counter() - started:.1f}s", file=sys.stderr)
            if tag == "full":
                result["jsonl"] = run(jsonl, "jsonl")
                result["csv"] = run(csv_path, "csv")
            else:
                result["csv_quarter"] = run(csv_path, "csv")
        result["sizes"] = sizes
        result["csv_time_vs_jsonl"] = round(result["csv"]["seconds"] / result["jsonl"]["seconds"], 2)
        print(json.dumps(result))


if __name__ == "__main__":
    main()
