"""The e2e harness itself: the host stops cleanly even when started with SIGINT ignored, and a blob listing that
fails raises instead of reading as an empty container."""

from __future__ import annotations

import signal

import pytest
from azure.core.exceptions import HttpResponseError

from .app import Stack


def test_stop_ends_a_host_that_ignores_sigint_cleanly(stack: Stack) -> None:
    # As under nohup or a CI runner: the child inherits SIGINT ignored, so Python never raises KeyboardInterrupt.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        stack.app.start()
    finally:
        signal.signal(signal.SIGINT, previous)
    stack.app.stop()
    assert stack.app.proc is not None
    assert stack.app.proc.returncode == 0, stack.app.log()[-2000:]  # not -9: it was not killed after the timeout
    log = stack.app.log()
    assert "stopping (SIGTERM)" in log and "stopped" in log
    assert "Traceback" not in log


def test_names_of_a_missing_container_is_empty_but_a_failed_listing_raises(stack: Stack) -> None:
    assert stack.names("no-such-container") == []
    with pytest.raises(HttpResponseError):
        stack.names("Not_A_Container_Name")  # refused by the service: not "nothing there"
