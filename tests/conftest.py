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
