"""A real headless Chromium for the browser tests: Debian's ``chromium`` package (installed here when missing),
driven by Playwright over the DevTools protocol. Playwright never downloads a browser of its own here: it is given
the system's executable."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

# As the machine's notes prescribe: no sandbox as root, and none of Chromium's own background traffic (updates,
# sync, component downloads), which this closed network refuses.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
CANDIDATES = ("chromium", "chromium-browser")


def _found() -> str | None:
    return next((path for name in CANDIDATES if (path := shutil.which(name))), None)


def chromium_executable() -> str:
    """The system Chromium, installed with apt-get when it is missing; the test is skipped, saying why, only where
    it cannot be installed (not root, no apt-get, or the install failed)."""
    found = _found()
    if found:
        return found
    if not shutil.which("apt-get"):
        pytest.skip("browser test: Chromium is not installed and this system has no apt-get to install it")
    if os.geteuid() != 0:
        pytest.skip("browser test: Chromium is not installed; run `sudo apt-get install chromium` to run this test")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200, check=False)
        if done.returncode != 0:
            tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
            pytest.skip(f"browser test: `{' '.join(command)}` failed ({done.returncode}): {' / '.join(tail)}")
    found = _found()
    if not found:
        pytest.skip("browser test: apt-get installed chromium but no chromium executable is on PATH")
    return found
