"""Spool folders of the id check: a process killed mid-validation leaves one, and the next process removes it.

Real processes: children validate a stream that stops half way (it waits on their stdin), so they are caught
mid-validation with their spool folder in the temp dir; one is killed with SIGKILL, the other stays alive.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.devices import spool, validate_stream
from shared.devices.seen import SeenIds

REPO = Path(__file__).resolve().parents[2]

# Validates 5,000 lines, then waits for its stdin to close before the stream ends.
CHILD = """
import sys
from shared.devices import validate_stream

def lines():
    yield b"".join(b'{"id":"d%d","status":"enabled"}\\n' % i for i in range(5000))
    sys.stdin.read()

report = validate_stream(lines())
print(report.valid, report.lines)
"""

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="spool folders are locked with flock")


def start_child(tmp: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "TMPDIR": str(tmp)}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD],
        cwd=REPO,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def spool_of(pid: int, tmp: Path, *, deadline_s: float = 60.0) -> Path:
    """The child's spool folder, once it holds ids (the child is then mid-validation); waits up to a deadline."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        for folder in tmp.glob(f"{spool.PREFIX}{pid}-*"):
            if any(folder.glob("*.ids")):
                return folder
        time.sleep(0.02)
    raise AssertionError(f"no spool folder with ids for process {pid} in {tmp}: {sorted(tmp.iterdir())}")


def kill(child: subprocess.Popen[str]) -> None:
    """SIGKILL (no cleanup can run), then reap it and close its pipes."""
    if child.poll() is None:
        child.send_signal(signal.SIGKILL)
    child.communicate(timeout=30)


@pytest.fixture
def tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A temp dir of its own for this process too (the sweep runs once per temp dir and process)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    yield tmp_path


def test_the_folder_of_a_killed_process_is_removed_by_the_next_validation_and_live_ones_are_kept(tmp: Path) -> None:
    doomed, alive = start_child(tmp), start_child(tmp)
    try:
        doomed_folder, alive_folder = spool_of(doomed.pid, tmp), spool_of(alive.pid, tmp)
        kill(doomed)
        assert doomed.returncode == -signal.SIGKILL
        assert doomed_folder.is_dir()  # what the kill leaves behind
        before_locks = tmp / f"{spool.PREFIX}from-an-older-version"  # no lock file: nothing proves it abandoned
        before_locks.mkdir()
        mine = SeenIds()  # this process's own folder, live while the sweep runs (it makes the first one here)
        try:
            report = validate_stream(io.BytesIO(b'{"id":"a","status":"enabled"}\n'))
            assert report.valid
            assert not doomed_folder.exists()
            assert alive_folder.is_dir() and mine._folder.is_dir() and before_locks.is_dir()
            assert spool.sweep_dead_spools(tmp) == []  # nothing else to remove: the live ones stay
            assert alive_folder.is_dir() and mine._folder.is_dir()
        finally:
            mine.close()
        assert not mine._folder.exists()
        out, _ = alive.communicate("", timeout=60)  # the stream ends: the live child finishes its validation
        assert alive.returncode == 0 and out.split() == ["True", "5000"]
        assert not alive_folder.exists()  # removed by its own process
    finally:
        for child in (doomed, alive):
            kill(child)


def test_a_sweep_removes_every_abandoned_folder_and_only_those(tmp: Path) -> None:
    children = [start_child(tmp) for _ in range(3)]
    try:
        folders = [spool_of(child.pid, tmp) for child in children]
        for child in children[:2]:
            kill(child)
        assert sorted(spool.sweep_dead_spools(tmp)) == sorted(folders[:2])
        assert [f.exists() for f in folders] == [False, False, True]
    finally:
        for child in children:
            kill(child)
