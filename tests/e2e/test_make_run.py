"""``make run``'s demo, as a newcomer sees it (``--demo-only`` so it exits)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from emulators.azurite import REPO


def test_make_run_demo_imports_rejects_backs_up_and_applies_central(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("REQUESTS_CA_BUNDLE", None)
    out = subprocess.run(
        [sys.executable, "-m", "emulators.devstack", "--demo-only", "--state", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "completed_with_errors 100%" in text and "DeviceNotFound" in text
    assert "rejected" in text and "INVALID_IMPORT_MODE" in text and "line   2" in text
    assert "backups/devhub/" in text and "keys included: False" in text
    assert "1 destination(s), 1 export(s)" in text and "backups/central/" in text
    assert "kept, not in the file (no prune)" in text and "'create': 7" in text
    assert text.count("-> done") == 7 and "0 change(s)" in text
    assert "x-functions-key" in text and "Traceback" not in text + out.stderr
