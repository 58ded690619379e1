"""Shared pieces of the bench scripts: generated device files, RSS sampling, a child process's stdout."""

from __future__ import annotations

import base64
import json
import random
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

MODES = ("createOrUpdate", "create", "createOrUpdate", "update", "updateTwin")


def device_lines(count: int, *, seed: int, prefix: str = "dev", modes: bool = False) -> Iterator[str]:
    """A realistic mix: half with keys, some x509, tags and desired properties, a few disabled."""
    rng = random.Random(seed)
    for i in range(count):
        line: dict[str, object] = {"id": f"{prefix}-{i:07d}", "status": "disabled" if i % 17 == 0 else "enabled"}
        if modes:
            line["importMode"] = "createOrUpdate"
        r = rng.random()
        if r < 0.5:
            line["authentication"] = {
                "symmetricKey": {
                    "primaryKey": base64.b64encode(rng.randbytes(32)).decode(),
                    "secondaryKey": base64.b64encode(rng.randbytes(32)).decode(),
                },
                "type": "sas",
            }
        elif r < 0.6:
            line["authentication"] = {
                "x509Thumbprint": {"primaryThumbprint": rng.randbytes(20).hex()},
                "type": "selfSigned",
            }
        if rng.random() < 0.7:
            line["tags"] = {"site": rng.choice(["oslo", "lyon", "porto"]), "floor": rng.randint(1, 9)}
            line["properties"] = {"desired": {"interval": rng.choice([10, 30, 60]), "fw": "1.2.3"}}
        yield json.dumps(line, separators=(",", ":"))


def write_file(path: Path, lines: Iterator[str]) -> int:
    size = 0
    with path.open("w", encoding="utf-8") as f:
        for line in lines:
            size += f.write(line + "\n")
    return size


class PeakRss:
    """Samples a process's resident memory every 50 ms while running (``with PeakRss(pid) as p: ...``)."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return
            self._stop.wait(0.05)

    def __enter__(self) -> PeakRss:
        self.peak = self.proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def mib(n: int) -> float:
    return round(n / 1024 / 1024, 1)


def elapsed(start: float) -> float:
    return round(time.perf_counter() - start, 2)


def printed_port(proc: subprocess.Popen[str]) -> int:
    """The port an emulator started with ``--port 0`` printed (``port=N``), read from its stdout."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("port="):
            return int(line.split("=")[1])
    raise SystemExit("the emulator ended before it printed its port")
