"""The suite's one wait: it returns what it waited for, and a wait that never ends says what it waited for."""

from __future__ import annotations

import itertools

import pytest

from tests.waiting import wait_until


def test_the_wait_returns_the_first_value_that_is_done() -> None:
    counter = itertools.count()
    assert wait_until(lambda: next(counter), lambda n: n >= 3, interval=0) == 3
    assert wait_until(lambda: next(counter) > 5, interval=0) is True


def test_a_wait_past_its_deadline_names_what_it_waited_for_and_the_last_value() -> None:
    with pytest.raises(TimeoutError, match=r"the job to end: not after 0\.1 s; last seen: running"):
        wait_until(lambda: "running", lambda s: s == "completed", deadline=0.1, interval=0.01, what="the job to end")
    with pytest.raises(TimeoutError, match="host log tail"):
        wait_until(lambda: False, deadline=0, what=lambda: "host log tail")
