"""The temp folders the id check spools to: one per validation, and those left by dead processes removed.

A process killed mid-validation (out of memory, a host recycled, SIGKILL) never runs its cleanup, and its
``devices-ids-*`` folder, up to the size of the file's ids, would stay in the temp dir for ever. So each folder holds
a lock file its process keeps locked (``flock``) for as long as the folder is in use. The kernel drops the lock when
the process ends, however it ends, so a folder whose lock can be taken belongs to no live process: the first spool a
process makes in a temp dir first removes those (``sweep_dead_spools``). A lock, unlike a PID in the name, cannot be
fooled by a PID used again, nor by processes in other PID namespaces (containers) sharing the temp dir; the name
still carries the PID, for whoever looks at the folder.

A folder is created under a name the sweep does not look at, locked, and only then renamed into view, so a sweep
never finds a live process's folder unlocked. Without ``fcntl`` (Windows) folders are not locked and nothing is
swept: no folder is removed that cannot be proven abandoned.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import threading
import weakref
from pathlib import Path
from typing import BinaryIO

if sys.platform != "win32":
    import fcntl

logger = logging.getLogger(__name__)

PREFIX = "devices-ids-"
_CREATING = ".creating-devices-ids-"  # does not start with PREFIX: a sweep never sees a folder before it is locked
_LOCK = "owner.lock"

_swept: set[str] = set()  # temp dirs this process has swept: once each is enough, later leftovers are our own
_swept_lock = threading.Lock()


def _locked(path: Path) -> bool:
    """Whether a live process holds the lock of the spool folder ``path`` (a folder without one counts as held)."""
    if sys.platform == "win32":
        return True
    try:
        fd = os.open(path / _LOCK, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        # No lock file: a folder from before locks were used, or one being removed. Nothing proves it abandoned.
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # also drops the lock just taken, before the folder is removed
    return False


def sweep_dead_spools(parent: str | os.PathLike[str] | None = None) -> list[Path]:
    """Remove the spool folders in ``parent`` (the temp dir by default) whose process has ended; the removed ones.

    Safe to run from several processes at once: a folder in use is locked, and two sweeps removing the same
    abandoned folder both succeed.
    """
    if sys.platform == "win32":
        return []
    folder = Path(parent if parent is not None else tempfile.gettempdir())
    removed: list[Path] = []
    try:
        candidates = [p for p in folder.iterdir() if p.name.startswith(PREFIX)]
    except OSError:
        return removed
    for path in candidates:
        if path.is_symlink() or not path.is_dir() or _locked(path):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    if removed:
        logger.info("removed %d spool folder(s) left by ended processes in %s", len(removed), folder)
    return removed


def _sweep_once(parent: str) -> None:
    with _swept_lock:
        if parent in _swept:
            return
        _swept.add(parent)
    sweep_dead_spools(parent)


def _remove(path: Path, lock: BinaryIO | None) -> None:
    # The folder goes first and the lock last, so that no sweep ever finds this folder unlocked.
    shutil.rmtree(path, ignore_errors=True)
    if lock is not None:
        lock.close()


class SpoolDir:
    """A fresh folder in the temp dir, locked by this process until ``cleanup`` (or until the process ends)."""

    def __init__(self) -> None:
        parent = tempfile.gettempdir()
        _sweep_once(parent)
        staging = Path(tempfile.mkdtemp(prefix=_CREATING, dir=parent))
        lock: BinaryIO | None = None
        try:
            if sys.platform != "win32":
                lock = (staging / _LOCK).open("wb")
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a fresh file: no one else can hold it
            self.path = Path(parent) / f"{PREFIX}{os.getpid()}-{staging.name.removeprefix(_CREATING)}"
            staging.rename(self.path)
        except BaseException:
            _remove(staging, lock)
            raise
        # Like tempfile.TemporaryDirectory: a spool dropped without cleanup() is still removed when collected.
        self._finalizer = weakref.finalize(self, _remove, self.path, lock)

    def cleanup(self) -> None:
        self._finalizer()
