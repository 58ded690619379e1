"""What the Functions host indexes from function_app.py under each setting (read when the app is indexed)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.config import BACKUP_SCHEDULE, ConfigError, schedule, uploads_trigger_source

REPO = Path(__file__).resolve().parents[2]

INDEX = """
import json, function_app
out = {}
for f in function_app.app.get_functions():
    out[f.get_function_name()] = [json.loads(b) for b in f.get_raw_bindings()][0]
print(json.dumps(out))
"""


def indexed(**env: str) -> dict[str, dict[str, object]]:
    """The trigger bindings of a fresh import of function_app with ``env`` (and no other app setting)."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in ("UPLOADS_TRIGGER_SOURCE", "BACKUP_SCHEDULE", "MONITOR_SCHEDULE")
    }
    done = subprocess.run(
        [sys.executable, "-c", INDEX], cwd=REPO, env={**clean, **env}, capture_output=True, text=True, check=True
    )
    result: dict[str, dict[str, object]] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_the_blob_trigger_source_follows_the_setting() -> None:
    assert indexed(UPLOADS_TRIGGER_SOURCE="EventGrid")["import_on_upload"]["source"] == "EventGrid"
    assert indexed()["import_on_upload"]["source"] == "LogsAndContainerScan"
    assert (
        indexed(UPLOADS_TRIGGER_SOURCE="LogsAndContainerScan")["import_on_upload"]["source"] == "LogsAndContainerScan"
    )


def test_timer_schedules_have_their_documented_defaults_when_the_settings_are_absent() -> None:
    bare = indexed()
    assert (bare["nightly_backup"]["schedule"], bare["job_monitor"]["schedule"]) == ("0 0 2 * * *", "*/30 * * * * *")
    assert bare["nightly_backup"]["useMonitor"] is True
    named = indexed(BACKUP_SCHEDULE="0 30 1 * * *", MONITOR_SCHEDULE="*/10 * * * * *")
    assert (named["nightly_backup"]["schedule"], named["job_monitor"]["schedule"]) == (
        "%BACKUP_SCHEDULE%",
        "%MONITOR_SCHEDULE%",
    )
    assert schedule(BACKUP_SCHEDULE, {"BACKUP_SCHEDULE": "  "}) == "0 0 2 * * *"  # blank is absent


def test_an_unknown_trigger_source_is_named() -> None:
    with pytest.raises(ConfigError, match="UPLOADS_TRIGGER_SOURCE is 'Polling'"):
        uploads_trigger_source({"UPLOADS_TRIGGER_SOURCE": "Polling"})


def test_the_app_quiets_the_azure_sdk_http_logs() -> None:
    # In Azure the worker forwards every record at the root logger's level (INFO and below): the app itself must
    # raise the SDK's loggers. A fresh process, root at DEBUG as the worker may set it, then the app imported.
    probe = (
        "import logging; logging.getLogger().setLevel(logging.DEBUG); import function_app; "
        "h = logging.getLogger('azure.core.pipeline.policies.http_logging_policy'); "
        "print(h.getEffectiveLevel(), h.isEnabledFor(logging.INFO), "
        "logging.getLogger('shared').isEnabledFor(logging.INFO))"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.split() == [str(logging.WARNING), "False", "True"]  # the app's own INFO still flows


def test_host_json_sets_nothing_that_does_nothing() -> None:
    host = json.loads((REPO / "host.json").read_text())
    assert set(host["extensions"]) == {"http", "blobs"}  # no queue trigger: no extensions.queues
