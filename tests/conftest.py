"""Root fixtures: environment hygiene. Suite-specific servers live in each suite's conftest."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _clean_environ() -> Iterator[None]:
    """Each test sees (and leaves) the environment as it was."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
