"""``make run``'s stack started as a person starts it from a terminal, for the tests about it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from emulators.azurite import REPO


def start_devstack(state: Path) -> subprocess.Popen[str]:
    """``python -m emulators.devstack --state STATE`` (what ``make run`` runs), its output on ``stdout`` (text).

    As an interactive shell starts it: SIGINT raises KeyboardInterrupt (a shell without job control would have it
    ignored), in a process group of its own that the "terminal" signals; the test's CA bundle is not passed on.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    env.pop("REQUESTS_CA_BUNDLE", None)
    start = (
        "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        f"sys.argv = ['devstack', '--state', {str(state)!r}]; "
        "runpy.run_module('emulators.devstack', run_name='__main__')"
    )
    return subprocess.Popen(
        [sys.executable, "-c", start], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, process_group=0,
    )  # fmt: skip
