"""What the emulators' command lines share: serve until Ctrl-C or SIGTERM."""

from __future__ import annotations

import contextlib
import signal
import threading


def wait_until_stopped() -> None:
    """Block until Ctrl-C (KeyboardInterrupt) or SIGTERM; the caller then stops its servers."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
