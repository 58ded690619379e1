"""Previews (plan jobs): what an import would do, read from a fresh export joined with the file, changing nothing;
and imports held awaiting approval on a hub that requires a plan."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from shared.config import Snapshots
from shared.engine import JobEngine
from shared.kinds import registry as kinds_registry
from shared.ledger import Job, JobKind, JobState
from shared.storage import BlobRef

from .helpers import KEY, Clock, Jobs, devices, hub_count, run_to_end, upload, wait_until


def put(p: Jobs, name: str, lines: list[dict[str, Any] | str], container: str = "plans") -> BlobRef:
    """A file outside uploads/ (a plan reads it in place; an upload would be imported on arrival)."""
    p.storage.ensure_container(container)
    data = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines).encode()
    etag = p.storage.upload_bytes(container, name, data)
    return BlobRef(container, name, etag)


def plan_of(p: Jobs, ref: BlobRef, clock: Clock) -> tuple[Job, dict[str, Any]]:
    job = p.engine.accept(p.engine.draft(JobKind.PLAN, "devhub", source=ref, keyed_by_source=False))
    done = run_to_end(p, job, clock)
    assert done.state is JobState.COMPLETED, done.failure_reason
    container, _, name = done.reports["plan"].partition("/")
    return done, json.loads(b"".join(p.storage.open_read(BlobRef(container, name))))


def seed(p: Jobs, clock: Clock) -> None:
    auth = {"type": "sas", "symmetricKey": {"primaryKey": KEY, "secondaryKey": KEY}}
    lines: list[dict[str, Any] | str] = [
        {"id": f"s-{i}", "status": "enabled", "authentication": auth, "tags": {"site": "a", "n": i}} for i in range(10)
    ]
    lines.append({"id": "s-0", "moduleId": "m1"})
    done = run_to_end(p, p.accept_upload(upload(p, "seed.jsonl", lines), "devhub"), clock)
    assert done.state is JobState.COMPLETED


def test_a_plan_counts_each_mode_names_refused_lines_and_changes_nothing(jobs: Jobs, clock: Clock) -> None:
    seed(jobs, clock)
    before = hub_count(jobs)
    other = "b3RoZXIta2V5LW90aGVyLWtleS1vdGhlci1rZXktMTIz"  # another valid key
    lines: list[dict[str, Any] | str] = [
        {"id": "new-1", "status": "enabled", "importMode": "create"},  # 1 create
        {"id": "s-1", "status": "enabled", "importMode": "create"},  # 2 refused: exists
        {"id": "ghost", "status": "enabled", "importMode": "update"},  # 3 refused: missing
        "",  # 4 blank: not counted, numbering kept
        {"id": "s-2", "status": "disabled"},  # 5 update (createOrUpdate)
        {"id": "s-3", "importMode": "updateTwin", "tags": {"site": "b", "n": 3}},  # 6 twin
        {"id": "s-4", "importMode": "delete"},  # 7 delete
        {"id": "gone", "importMode": "delete"},  # 8 refused: missing
        {"id": "s-5", "status": "enabled", "importMode": "updateIfMatchETag", "eTag": "stale"},  # 9 refused: ETag
        {"id": "s-6", "status": "enabled", "tags": {"site": "a", "n": 6}},  # 10 unchanged
        {
            "id": "s-7",
            "status": "enabled",
            "authentication": {"type": "sas", "symmetricKey": {"primaryKey": other, "secondaryKey": other}},
        },  # 11 update: keys
        {"id": "new-1", "moduleId": "m1", "importMode": "create"},  # 12 create (its device is created on line 1)
        {"id": "s-0", "moduleId": "m1", "importMode": "create"},  # 13 refused: module exists
    ]
    job, plan = plan_of(jobs, put(jobs, f"{clock.now:%H%M%S}-plan.jsonl", lines), clock)

    assert plan["totals"] == {"create": 2, "update": 2, "twin": 1, "delete": 1, "unchanged": 1, "refused": 5}
    assert plan["byMode"]["create"] == {**dict.fromkeys(plan["totals"], 0), "create": 2, "refused": 2}
    assert plan["byMode"]["delete"]["refused"] == 1 and plan["byMode"]["delete"]["delete"] == 1
    refused = [(r["line"], r["deviceId"], r["code"]) for r in plan["refused"]]
    assert refused == [
        (2, "s-1", "DeviceAlreadyExists"),
        (3, "ghost", "DeviceNotFound"),
        (8, "gone", "DeviceNotFound"),
        (9, "s-5", "PreconditionFailed"),
        (13, "s-0", "ModuleAlreadyExistsOnDevice"),
    ]
    diffs = {d["line"]: d["changes"] for d in plan["diffSample"]}
    assert diffs[5] == {"status": {"from": "enabled", "to": "disabled"}}
    assert diffs[6] == {"twin": {"tags": {"changed": ["site"]}}}
    assert diffs[11] == {"keys": "changed"}
    assert "a fresh export" in plan["registry"]["from"] and plan["registry"]["lines"] == 11
    assert job.lines == 12 and job.kind is JobKind.PLAN

    # Nothing changed: the same devices, and no key anywhere in the report.
    assert hub_count(jobs) == before
    assert KEY not in json.dumps(plan) and other not in json.dumps(plan)
    assert [h.type for h in jobs.hubs["devhub"].list_jobs()][-1] == "export"


def test_a_plan_of_a_bad_file_is_rejected_like_its_import(jobs: Jobs, clock: Clock) -> None:
    ref = put(jobs, f"{clock.now:%H%M%S}-bad.jsonl", [{"id": "x", "status": "ENABLED"}])
    job = jobs.engine.accept(jobs.engine.draft(JobKind.PLAN, "devhub", source=ref, keyed_by_source=False))
    assert job.state is JobState.REJECTED and "rejection" in job.reports
    assert jobs.hubs["devhub"].list_jobs() == []  # nothing reached the hub


def test_a_plan_reads_a_young_backup_instead_of_exporting_when_allowed(jobs: Jobs, clock: Clock) -> None:
    from datetime import timedelta

    seed(jobs, clock)
    backup = run_to_end(jobs, jobs.queue_export("devhub"), clock)
    assert backup.state is JobState.COMPLETED
    kinds, off = kinds_registry(retention_days=None, central=None, plan_backup_max_age=timedelta(hours=1))
    engine = JobEngine(jobs.engine.ctx, jobs.slots, kinds, off)
    hub_jobs = len(jobs.hubs["devhub"].list_jobs())
    job = engine.accept(
        engine.draft(JobKind.PLAN, "devhub", source=put(jobs, "young.jsonl", devices(3, "s")), keyed_by_source=False)
    )
    done = engine.start_next("devhub")
    assert done is not None and done.state is JobState.COMPLETED and done.job_id == job.job_id
    assert done.registry_from is not None and done.registry_from.startswith("backup ")
    assert len(jobs.hubs["devhub"].list_jobs()) == hub_jobs  # no export was needed
    assert any("no keys" in n for n in done.notes)  # a keyless backup cannot compare authentication


def test_a_risky_import_waits_for_approval_on_a_hub_that_requires_a_plan(jobs: Jobs, clock: Clock) -> None:
    seed(jobs, clock)
    # Snapshots explicit: this is about approval, and the small import is followed alone (no snapshot job first).
    kinds, off = kinds_registry(retention_days=None, central=None, approval={"devhub": 2}, snapshots=Snapshots.EXPLICIT)
    engine = JobEngine(jobs.engine.ctx, jobs.slots, kinds, off)
    small = engine.accept(engine.draft(JobKind.IMPORT, "devhub", source=upload(jobs, "ok.jsonl", devices(2, "s"))))
    assert small.state is JobState.QUEUED  # two updates at most: under the limit
    risky_lines: list[dict[str, Any] | str] = [{"id": "s-9", "importMode": "delete"}]
    risky = engine.accept(engine.draft(JobKind.IMPORT, "devhub", source=upload(jobs, "risky.jsonl", risky_lines)))
    assert risky.state is JobState.AWAITING_APPROVAL and "approve" in (risky.waiting_for or "")

    def after_a_pass() -> JobState:
        engine.monitor_pass("devhub")
        clock.advance(0.5)
        return jobs.ledger.get("devhub", small.job_id).state

    # Passes until the small import has run (a fixed count of passes raced the hub's own job on a loaded machine).
    wait_until(after_a_pass, lambda state: state is JobState.COMPLETED, what="the small import's end")
    assert jobs.ledger.get("devhub", risky.job_id).state is JobState.AWAITING_APPROVAL  # never started alone
    approved = jobs.ledger.move(
        replace(jobs.ledger.get("devhub", risky.job_id), waiting_for=None), JobState.QUEUED, now=clock()
    )
    jobs.engine = engine
    done = run_to_end(jobs, approved, clock)
    assert done.state is JobState.COMPLETED and hub_count(jobs) == 9
    # a held import can be cancelled too
    again = engine.accept(engine.draft(JobKind.IMPORT, "devhub", source=upload(jobs, "r2.jsonl", risky_lines)))
    assert engine.cancel(again).state is JobState.CANCELLED
