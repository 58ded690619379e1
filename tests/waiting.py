"""The suite's one way to wait for something that happens in another thread or process: poll, with a deadline that
only stops a hung test (it asserts nothing about speed) and a message that says what never happened."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    fetch: Callable[[], T],
    done: Callable[[T], object] = bool,
    *,
    deadline: float = 60,
    interval: float = 0.05,
    what: str | Callable[[], str] = "the condition",
) -> T:
    """Call ``fetch`` every ``interval`` seconds until ``done`` holds for what it returned (by default: until it
    returns something true), and return that. After ``deadline`` seconds, raise ``TimeoutError`` naming ``what``
    (a callable is called then, e.g. for a host's log) and the last value fetched."""
    end = time.monotonic() + deadline
    while True:
        value = fetch()
        if done(value):
            return value
        if time.monotonic() > end:
            said = what() if callable(what) else what
            raise TimeoutError(f"{said}: not after {deadline:g} s; last seen: {str(value)[:2000]}")
        time.sleep(interval)
