"""``make run``'s demo, as a newcomer runs it (``--demo-only`` so it exits), judged by what it left behind: the
ledger, the archive, the reports, the backups, the hub's registry and the IoT Central app, read from its state
folder after it stopped (not by the text it prints, much of which it prints whatever happened)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient

from emulators.azurite import REPO, Azurite
from shared.ledger import Job, JobKind, JobState, Ledger

SAMPLES = REPO / "samples"


@pytest.fixture
def demo_state(tmp_path: Path) -> Path:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("REQUESTS_CA_BUNDLE", None)
    out = subprocess.run(
        [sys.executable, "-m", "emulators.devstack", "--demo-only", "--state", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert "Traceback" not in (tmp_path / "functions" / "host.log").read_text()
    return tmp_path


@pytest.fixture
def storage(demo_state: Path) -> Iterator[Azurite]:
    """The demo's Azurite started again on the state it left (as a second ``make run`` would)."""
    azurite = Azurite(demo_state / "azurite").start()
    yield azurite
    azurite.stop(remove=False)


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_make_run_demo_imports_rejects_backs_up_and_applies_central(demo_state: Path, storage: Azurite) -> None:
    blobs = BlobServiceClient.from_connection_string(storage.connection_string)
    ledger = Ledger(TableServiceClient.from_connection_string(storage.connection_string).get_table_client("jobledger"))

    def read(path: str) -> bytes:
        container, _, name = path.partition("/")
        return bytes(blobs.get_blob_client(container, name).download_blob().readall())

    def names(container: str) -> list[str]:
        return sorted(b.name for b in blobs.get_container_client(container).list_blobs())

    jobs, _ = ledger.list_jobs(limit=100)
    by_source: dict[str | None, Job] = {j.source: j for j in jobs}
    assert len(jobs) == 4 and len(by_source) == 4, jobs

    # 1. The good file: imported, the hub's one refusal (a delete of a device it does not have) reported per device.
    good = by_source["uploads/devices-good.jsonl"]
    sample = lines(SAMPLES / "devices-good.jsonl")
    assert (good.kind, good.state, good.lines, good.failed_devices) == (
        JobKind.IMPORT, JobState.COMPLETED_WITH_ERRORS, len(sample), 1,
    )  # fmt: skip
    refused = [json.loads(x) for x in read(good.reports["errors"]).decode().splitlines()]
    assert [(r["deviceId"], r["errorName"]) for r in refused] == [("demo-retired-01", "DeviceNotFound")]
    assert good.archived == f"archive/processed/{good.job_id}/devices-good.jsonl"
    assert read(good.archived) == (SAMPLES / "devices-good.jsonl").read_bytes()

    # 2. The file with mistakes: rejected with line-numbered findings, nothing sent, archived as failed.
    bad = by_source["uploads/devices-with-mistakes.jsonl"]
    assert (bad.state, bad.hub_job_id) == (JobState.REJECTED, None) and bad.validation_errors > 0
    rejection = json.loads(read(bad.reports["rejection"]))
    assert rejection["errors"] and all(e["line"] >= 1 and e["code"] for e in rejection["errors"])
    assert bad.archived == f"archive/failed/{bad.job_id}/devices-with-mistakes.jsonl"

    # 4. The backup over HTTP: the registry as the demo left it (seeded devices + the good file less its refusal).
    export = by_source[None]  # an export reads nothing
    assert (export.kind, export.state) == (JobKind.EXPORT, JobState.COMPLETED)
    manifest = json.loads(read(export.reports["manifest"]))
    backed_up = {json.loads(x)["id"] for x in read(export.reports["backup"]).decode().splitlines()}
    expected = {f"demo-seed-{i:02d}" for i in range(5)} | {d["id"] for d in sample if d.get("importMode") != "delete"}
    assert backed_up == expected
    assert (manifest["devices"], manifest["includesKeys"], export.devices) == (len(expected), False, len(expected))

    # 5.-7. IoT Central: backed up before the apply (the hand-made pair), then the sample applied step by step.
    apply = by_source["uploads/central/dataexport.json"]
    assert (apply.hub, apply.kind, apply.state) == ("central", JobKind.CENTRAL_APPLY, JobState.COMPLETED)
    result = json.loads(read(apply.reports["result"]))
    assert [r["outcome"] for r in result["results"]] == ["done"] * 7 and apply.steps["create"] == 7
    assert apply.archived == f"archive/processed/{apply.job_id}/central/dataexport.json"
    central_backups = [n for n in names("backups") if n.startswith("central/") and n.endswith("manifest.json")]
    assert len(central_backups) == 1
    assert {k: json.loads(read(f"backups/{central_backups[0]}"))[k] for k in ("destinations", "exports")} == {
        "destinations": 1, "exports": 1,
    }  # fmt: skip
    app = json.loads((demo_state / "iotcentral" / "dataexport.json").read_text())
    wanted = json.loads((SAMPLES / "central" / "dataexport.json").read_text())
    assert set(app["destinations"]) == {"legacy-webhook", *wanted["destinations"]}  # kept: no prune
    assert set(app["exports"]) == {"legacy-export", *wanted["exports"]}

    # Nothing left behind or lost: every upload was archived, exactly the three the demo dropped.
    assert names("uploads") == []
    assert names("archive") == sorted(j.archived.removeprefix("archive/") for j in jobs if j.archived)
    assert all(j.state.is_terminal for j in jobs)
