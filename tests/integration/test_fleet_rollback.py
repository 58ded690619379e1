"""Undo: an import that updates or deletes is snapshotted first; its rollback (the inverse file, run as an import
with rollbackOf set) leaves the registry as it was, by export; refused when a device changed since, unless forced;
a cancelled import and a failed one (the hub restarted mid-way, part of the file applied) are rolled back too."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from emulators.azurite import Azurite
from emulators.iothub import IoTHubEmulator
from shared.config import Snapshots
from shared.iothub import IoTHubClient
from shared.kinds import registry as registry_of_kinds
from shared.kinds import rollback_refusal
from shared.ledger import Job, JobKind, JobState
from shared.storage import BlobRef

from .conftest import engine_on
from .helpers import FAST, KEY, Clock, Jobs, control, devices, monitor_until, run_to_end, upload, wait_until
from .test_safety import registry

OTHER = "b3RoZXIta2V5LW90aGVyLWtleS1vdGhlci1rZXktMTIz"
N = 7500  # devices seeded; the import below has about 7 lines per 5 devices, with modules: over 10,000 lines


def auth(key: str = KEY) -> dict[str, Any]:
    return {"type": "sas", "symmetricKey": {"primaryKey": key, "secondaryKey": key}}


def seed(p: Jobs, clock: Clock) -> None:
    lines: list[dict[str, Any] | str] = []
    for i in range(N):
        lines.append(
            {
                "id": f"d-{i}",
                "status": "enabled",
                "authentication": auth(),
                "tags": {"site": f"s{i % 7}", "n": i},
                "properties": {"desired": {"interval": i % 60}},
            }
        )
        if i % 10 == 0:
            lines.append({"id": f"d-{i}", "moduleId": "sensor", "authentication": auth(), "tags": {"m": i}})
    lines.append({"id": "edge-1", "status": "enabled", "capabilities": {"iotEdge": True}, "authentication": auth()})
    done = run_to_end(p, p.accept_upload(upload(p, "seed.jsonl", lines), "devhub"), clock)
    assert done.state is JobState.COMPLETED, done.failure_reason


def mixed() -> list[dict[str, Any] | str]:
    """Creates (some with modules), updates (status, keys), twin changes, deletes (some with modules), module
    changes, and one line the hub refuses."""
    lines: list[dict[str, Any] | str] = []
    for i in range(N // 2):
        lines.append({"id": f"new-{i}", "status": "enabled", "importMode": "create", "tags": {"born": "import"}})
        if i % 5 == 0:
            lines.append({"id": f"new-{i}", "moduleId": "agent", "importMode": "create"})
    for i in range(0, N // 4):
        lines.append({"id": f"d-{i}", "status": "disabled", "importMode": "update", "authentication": auth(OTHER)})
    for i in range(N // 4, N // 2):
        lines.append(
            {
                "id": f"d-{i}",
                "importMode": "updateTwin",
                "tags": {"site": "moved"},
                "properties": {"desired": {"interval": 1}},
            }
        )
    for i in range(N // 2, 3 * N // 4):
        lines.append({"id": f"d-{i}", "importMode": "delete"})  # those ending in 0 take their module with them
    for i in range(0, N // 2, 10):  # the modules of the updated devices: new keys, or a new twin
        if i in (800, 810):
            continue  # their modules change below
        if i < N // 4:
            lines.append({"id": f"d-{i}", "moduleId": "sensor", "importMode": "update", "authentication": auth(OTHER)})
        else:
            lines.append({"id": f"d-{i}", "moduleId": "sensor", "importMode": "updateTwin", "tags": {"m": "moved"}})
    lines.append({"id": "d-800", "moduleId": "sensor", "importMode": "delete"})
    lines.append({"id": "d-810", "moduleId": "sensor", "status": "disabled", "importMode": "update"})
    lines.append({"id": "d-801", "moduleId": "extra", "importMode": "create", "authentication": auth(OTHER)})
    lines.append({"id": f"d-{N - 1}", "status": "enabled", "importMode": "create"})  # refused: exists
    return lines


def snapshotted_import(p: Jobs, clock: Clock, name: str, lines: list[dict[str, Any] | str]) -> Job:
    job = p.accept_upload(upload(p, name, lines), "devhub")
    return run_to_end(p, job, clock, deadline=300)


def roll_back(p: Jobs, clock: Clock, target: Job, *, force: bool = False) -> tuple[Job, Job | None]:
    """The rollback job, run to its end, and the import of the inverse file it queued (run to its end)."""
    assert rollback_refusal(p.engine.ctx, target) is None
    draft = replace(p.engine.draft(JobKind.ROLLBACK, "devhub"), rollback_of=target.job_id, force=force)
    rb = run_to_end(p, p.engine.accept(draft), clock, deadline=300)
    undo = p.ledger.find_by_key("devhub", f"rollback-{rb.job_id}")
    if undo is not None:
        undo = run_to_end(p, undo, clock, deadline=300)
    return rb, undo


def report(p: Jobs, path: str) -> dict[str, Any]:
    container, _, name = path.partition("/")
    doc: dict[str, Any] = json.loads(b"".join(p.storage.open_read(BlobRef(container, name))))
    return doc


def test_an_import_then_its_rollback_leaves_the_registry_as_it_was(jobs: Jobs, clock: Clock) -> None:
    seed(jobs, clock)
    before = registry(jobs, clock)
    lines = mixed()
    assert len(lines) >= 10_000
    started = time.monotonic()
    imported = snapshotted_import(jobs, clock, "mixed.jsonl", lines)
    print(f"import of {len(lines)} lines, snapshot first: {time.monotonic() - started:.1f} s")
    assert imported.state is JobState.COMPLETED_WITH_ERRORS, imported.failure_reason
    assert imported.failed_devices == 1
    # the snapshot was taken first, by a plan job that ran ahead of the import on the hub's slot
    snapshot = report(jobs, imported.reports.get("snapshot") or f"snapshots/{imported.job_id}/manifest.json")
    assert snapshot["importJobId"] == imported.job_id and snapshot["includesKeys"] is True
    changed = registry(jobs, clock)
    assert changed != before

    started = time.monotonic()
    rb, undo = roll_back(jobs, clock, imported)
    print(f"rollback, its inverse import included: {time.monotonic() - started:.1f} s")
    assert rb.state is JobState.COMPLETED, rb.failure_reason
    assert undo is not None and undo.rollback_of == imported.job_id and undo.kind is JobKind.IMPORT
    assert undo.state is JobState.COMPLETED, undo.failure_reason
    doc = report(jobs, rb.reports["rollback"])
    assert doc["changedSince"] == 0 and doc["importJobId"] == undo.job_id
    # the created devices (their modules go with them), and the module created on an existing device
    assert doc["inverseModes"]["delete"] == N // 2 + 1
    assert registry(jobs, clock) == before
    # the reports name devices, never keys
    assert KEY not in json.dumps(doc) and OTHER not in json.dumps(doc)


def test_a_rollback_refuses_when_a_device_changed_since_unless_forced(jobs: Jobs, clock: Clock) -> None:
    run_to_end(jobs, jobs.accept_upload(upload(jobs, "seed.jsonl", devices(5, "c")), "devhub"), clock)
    before = registry(jobs, clock)
    lines: list[dict[str, Any] | str] = [
        {"id": f"c-{i}", "status": "disabled", "importMode": "update"} for i in range(3)
    ]
    imported = snapshotted_import(jobs, clock, "disable.jsonl", lines)
    assert imported.state is JobState.COMPLETED
    # someone changes c-1 after the import
    drift: list[dict[str, Any] | str] = [{"id": "c-1", "importMode": "updateTwin", "tags": {"owner": "ops"}}]
    assert (
        run_to_end(jobs, jobs.accept_upload(upload(jobs, "drift.jsonl", drift), "devhub"), clock).state
        is JobState.COMPLETED
    )

    rb, undo = roll_back(jobs, clock, imported)
    assert rb.state is JobState.FAILED and undo is None
    assert "c-1" in (rb.failure_reason or "") and "force" in (rb.failure_reason or "")
    assert report(jobs, rb.reports["rollback"])["changedSinceShown"] == ["c-1"]

    rb, undo = roll_back(jobs, clock, imported, force=True)
    assert rb.state is JobState.COMPLETED and undo is not None and undo.state is JobState.COMPLETED
    assert registry(jobs, clock) == before  # forced: the snapshot's state, the later tag removed too


def test_a_cancelled_import_can_be_rolled_back(jobs: Jobs, clock: Clock, iothub: Any) -> None:
    run_to_end(jobs, jobs.accept_upload(upload(jobs, "seed.jsonl", devices(4, "k")), "devhub"), clock)
    before = registry(jobs, clock)
    lines: list[dict[str, Any] | str] = [{"id": f"k-{i}", "importMode": "delete"} for i in range(4)]
    job = jobs.accept_upload(upload(jobs, "del.jsonl", lines), "devhub")
    # Every hub job waits a second enqueued: the import can be cancelled before it applies anything.
    control(iothub, "faults", {"rate": 0, "jobStartDelay": 1})
    job = monitor_until(jobs, job, clock, lambda j: j.state is JobState.RUNNING)
    jobs.cancel(job)
    control(iothub, "faults", {"rate": 0, "jobStartDelay": 0})
    cancelled = run_to_end(jobs, job, clock)
    assert cancelled.state is JobState.CANCELLED
    rb, _ = roll_back(jobs, clock, cancelled)
    assert rb.state is JobState.COMPLETED, rb.failure_reason
    assert registry(jobs, clock) == before


def test_a_failed_import_can_be_rolled_back(
    tmp_path: Path, azurite: Azurite, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub fails an import it was running when it restarts, part of the file applied: the rollback puts back
    what was applied (and leaves what was not)."""
    first = IoTHubEmulator(tmp_path, port=0, control_plane=True)
    first.start()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(first.ca_path))
    try:
        jobs = engine_on(azurite, first, clock)
        seeded = jobs.accept_upload(upload(jobs, "seed.jsonl", devices(999, "x")), "devhub")
        assert run_to_end(jobs, seeded, clock).state is JobState.COMPLETED
        before = registry(jobs, clock)
        # The hub applies an import 1,000 lines at a time: the first batch deletes, updates and creates, the second
        # only creates. Every hub job then waits 10 s after each 1,000 lines or devices (an export of 999 devices
        # never waits): the hub restarts in that wait, after the first batch, while 400 devices are left.
        lines: list[dict[str, Any] | str] = [{"id": f"x-{i}", "importMode": "delete"} for i in range(600)]
        lines += [{"id": f"x-{i}", "status": "disabled", "importMode": "update"} for i in range(600, 999)]
        lines += [{"id": f"n-{i}", "status": "enabled", "importMode": "create"} for i in range(500)]
        job = jobs.accept_upload(upload(jobs, "change.jsonl", lines), "devhub")
        control(first, "faults", {"rate": 0, "jobStepDelay": 10})
        hub = jobs.hubs["devhub"]
        monitor_until(jobs, job, clock, lambda j: j.state is JobState.RUNNING)
        wait_until(lambda: hub.get_registry_statistics().total == 400, deadline=30)
    finally:
        first.stop()
    second = IoTHubEmulator(tmp_path, port=0, control_plane=True)  # the same hub, restarted on another port
    second.start()
    try:
        client = IoTHubClient.from_connection_string(second.connection_string(), retry=FAST)
        ctx = dataclasses.replace(jobs.engine.ctx, hubs={"devhub": client})
        jobs = Jobs(dataclasses.replace(jobs.engine, ctx=ctx))
        failed = run_to_end(jobs, job, clock)
        assert failed.state is JobState.FAILED and "restarted" in (failed.failure_reason or "")
        assert client.get_registry_statistics().total == 400  # the first batch applied, the second not
        rb, undo = roll_back(jobs, clock, failed)
        assert rb.state is JobState.COMPLETED, rb.failure_reason
        assert undo is not None and undo.state is JobState.COMPLETED, undo.failure_reason
        modes = report(jobs, rb.reports["rollback"])["inverseModes"]
        assert modes == {"create": 600, "createOrUpdate": 399, "delete": 1}  # n-0 only: n-1... were never made
        assert registry(jobs, clock) == before
    finally:
        second.stop()


def test_what_cannot_be_rolled_back_says_why(jobs: Jobs, clock: Clock) -> None:
    jobs.engine.kinds[JobKind.IMPORT].snapshots = Snapshots.CHANGES  # type: ignore[attr-defined]  # the default
    rejected = jobs.accept_upload(upload(jobs, "bad.jsonl", ["not json"]), "devhub")
    assert "rejected" in (rollback_refusal(jobs.engine.ctx, rejected) or "")
    created = [{**d, "importMode": "create"} for d in devices(2, "p")]
    plain = run_to_end(jobs, jobs.accept_upload(upload(jobs, "plain.jsonl", created), "devhub"), clock)
    why = rollback_refusal(jobs.engine.ctx, plain) or ""
    assert "no snapshot" in why and "only created devices" in why  # a file of creates changes no existing device
    export = run_to_end(jobs, jobs.queue_export("devhub"), clock)
    assert "only imports" in (rollback_refusal(jobs.engine.ctx, export) or "")
    queued = jobs.accept_upload(upload(jobs, "later.jsonl", [{"id": "p-0", "importMode": "delete"}]), "devhub")
    assert "wait until it ends" in (rollback_refusal(jobs.engine.ctx, queued) or "")


def wrong_file() -> list[dict[str, Any] | str]:
    """The usual mode (createOrUpdate, no importMode) with the wrong content: other keys, disabled, other tags and
    desired properties for the 40 devices of ``seed_small``, and two devices that did not exist."""
    lines: list[dict[str, Any] | str] = [
        {
            "id": f"s-{i}",
            "status": "disabled",
            "authentication": auth(OTHER),
            "tags": {"site": "wrong"},
            "properties": {"desired": {"interval": 999}},
        }
        for i in range(40)
    ]
    return [*lines, {"id": "stray-1", "status": "enabled"}, {"id": "stray-2", "status": "enabled"}]


def seed_small(p: Jobs, clock: Clock) -> None:
    lines: list[dict[str, Any] | str] = [
        {
            "id": f"s-{i}",
            "status": "enabled",
            "authentication": auth(),
            "tags": {"site": f"s{i % 3}"},
            "properties": {"desired": {"interval": i}},
        }
        for i in range(40)
    ]
    done = run_to_end(p, p.accept_upload(upload(p, "seed-small.jsonl", lines), "devhub"), clock)
    assert done.state is JobState.COMPLETED, done.failure_reason


def test_a_wrong_file_in_the_usual_mode_is_undone_by_default(jobs: Jobs, clock: Clock) -> None:
    """Issue 20 4b: an import of createOrUpdate lines only overwrites existing devices; it is snapshotted by
    default, so its rollback puts the registry back as it was (keys, status, tags, desired properties)."""
    kinds, _ = registry_of_kinds(retention_days=None, central=None)  # the app's default, as Services builds it
    jobs.engine.kinds[JobKind.IMPORT].snapshots = kinds[JobKind.IMPORT].snapshots  # type: ignore[attr-defined]
    assert kinds[JobKind.IMPORT].snapshots is Snapshots.CHANGES  # type: ignore[attr-defined]
    seed_small(jobs, clock)
    before = registry(jobs, clock)
    imported = snapshotted_import(jobs, clock, "wrong.jsonl", wrong_file())
    assert imported.state is JobState.COMPLETED, imported.failure_reason
    assert set(imported.modes) == {"createOrUpdate"}
    assert registry(jobs, clock) != before
    rb, undo = roll_back(jobs, clock, imported)
    assert rb.state is JobState.COMPLETED, rb.failure_reason
    assert undo is not None and undo.state is JobState.COMPLETED, undo.failure_reason
    assert registry(jobs, clock) == before


def test_with_snapshots_off_a_rollback_says_why_it_cannot(jobs: Jobs, clock: Clock) -> None:
    jobs.engine.kinds[JobKind.IMPORT].snapshots = Snapshots.OFF  # type: ignore[attr-defined]
    seed_small(jobs, clock)
    imported = snapshotted_import(jobs, clock, "wrong.jsonl", wrong_file())
    assert imported.state is JobState.COMPLETED, imported.failure_reason
    why = rollback_refusal(jobs.engine.ctx, imported) or ""
    assert "no snapshot" in why and "IMPORT_SNAPSHOTS" in why and "'off'" in why and "restore a backup" in why
