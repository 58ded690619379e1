"""Root fixtures: environment hygiene. Suite-specific servers live in each suite's conftest."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# CI must be reproducible (a new random counterexample should not decide whether a change lands); locally the
# search stays random so it keeps finding new cases. No per-example deadline: timing is not what these test.
settings.register_profile("ci", derandomize=True, deadline=None)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


# Modules whose tests run on one worker, one after the other, under `make test`'s parallel workers: make run's
# stacks prefer the usual ports (7071, 8443-8445, 10000-10002), so two at once would move each other's ports, and
# their module-scoped stacks must start once, not once per worker. Every other test takes free ports from the
# kernel, from its ip_local_port_range (Linux: 32768-60999 by default), never the usual ones.
ONE_WORKER = {"tests/e2e/test_make_run.py": "usual-ports", "tests/e2e/test_docs.py": "usual-ports"}


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """``--dist loadgroup`` with the groups of ``ONE_WORKER``. (pytest-xdist 3.8 groups by the ``xdist_group``
    mark by renaming node ids, which pytest 9.2's structured node ids no longer allow: its marks group nothing.)
    Any other test is sent on its own, as ``--dist load`` does."""
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class Grouped(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return ONE_WORKER.get(nodeid.split("::", 1)[0]) or nodeid

    return Grouped(config, log)  # type: ignore[arg-type]


SUITE_MARKS = {"unit": pytest.mark.unit, "integration": pytest.mark.integration, "e2e": pytest.mark.e2e}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its suite's folder (``-m unit``, ``-m integration``, ``-m "not e2e"``); the markers are
    declared in pyproject.toml (``--strict-markers``)."""
    here = Path(__file__).parent
    for item in items:
        folder = Path(str(item.fspath)).relative_to(here).parts[0]
        if folder in SUITE_MARKS:
            item.add_marker(SUITE_MARKS[folder])


@pytest.fixture(autouse=True)
def _clean_environ() -> Iterator[None]:
    """Each test sees (and leaves) the environment as it was."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
