"""Preview, approval and undo through the local host: POST /api/imports/plan, .../approve, .../rollback, with bad
input and crashes in the middle of a preview, of the snapshot an import takes first, and of a rollback."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from emulators.azurite import REPO, Azurite
from emulators.functions_host import FUNCTION_KEY
from emulators.iothub import IoTHubEmulator
from shared.ledger import TERMINAL_STATES
from tests.integration.helpers import control, hub_call, wait_until
from tests.integration.helpers import device_line as dev

from .app import App, Stack, settings
from .test_imports import hub_jobs, registry


def ndjson(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(x) + "\n" for x in lines).encode()


def state(stack: Stack) -> dict[str, tuple[Any, ...]]:
    """What a rollback must put back, per device: status, tags, desired properties."""
    return {k: (d["status"], d["tags"], d["properties"]["desired"]) for k, d in registry(stack).items()}


def until(stack: Stack, pick: Callable[[dict[str, Any]], bool], timeout: float = 300) -> list[dict[str, Any]]:
    """The jobs once one matches ``pick`` and every job has ended (or waits for approval); the timeout only stops
    a hung test."""
    settled = TERMINAL_STATES | {"awaiting_approval"}
    return wait_until(
        stack.app.jobs,
        lambda jobs: any(pick(j) for j in jobs) and all(j["state"] in settled for j in jobs),
        deadline=timeout,
        interval=0.2,
        what="the jobs to settle",
    )


def count(stack: Stack) -> int:
    from shared.iothub import IoTHubClient

    return IoTHubClient.from_connection_string(stack.hub.connection_string()).get_registry_statistics().total


def seed(stack: Stack, n: int = 20) -> None:
    stack.drop("seed.jsonl", [dev(f"f-{i}", tags={"n": i}) for i in range(n)])
    stack.app.wait_jobs(1)


# A file to preview against ``seed``: a create the hub refuses (f-1 exists), an update, a delete, a delete it refuses
# (nobody), a create.
PREVIEWED = [
    dev("f-1", "create"),
    dev("f-2", status="disabled"),
    {"id": "f-3", "importMode": "delete"},
    {"id": "nobody", "importMode": "delete"},
    dev("brand-new", "create"),
]


def preview(stack: Stack, lines: list[dict[str, Any]]) -> requests.Response:
    """POST the file to /api/imports/plan, waiting up to 60 s for the plan."""
    return stack.app.call(
        "POST",
        "imports/plan",
        params={"hub": "devhub", "wait": "60"},
        data=ndjson(lines),
        headers={"content-type": "application/x-ndjson"},
    )


def test_a_plan_over_http_answers_what_an_import_would_do_and_changes_nothing(stack: Stack) -> None:
    stack.app.start()
    seed(stack)
    before = state(stack)
    lines = PREVIEWED
    r = preview(stack, lines)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["kind"] == "plan" and body["state"] == "completed"
    plan = body["plan"]
    assert plan["totals"] == {"create": 1, "update": 1, "twin": 0, "delete": 1, "unchanged": 0, "refused": 2}
    assert [(x["line"], x["deviceId"]) for x in plan["refused"]] == [(1, "f-1"), (4, "nobody")]
    assert state(stack) == before  # nothing changed
    assert not stack.names("uploads")  # and nothing was imported

    # bad input: an unknown hub, an upload, a file the import would reject
    r = stack.app.call("POST", "imports/plan", json={"blob": "plans/x.jsonl", "hub": "nohub"})
    assert (r.status_code, r.json()["error"]["code"]) == (404, "UnknownHub")
    stack.drop("elsewhere.jsonl", [dev("z")])
    r = stack.app.call("POST", "imports/plan", json={"blob": "uploads/elsewhere.jsonl"})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "IsAnUpload")
    r = stack.app.call(
        "POST", "imports/plan", data=b'{"id": "x", "status": "ENABLED"}\n', headers={"content-type": "text/plain"}
    )
    assert r.status_code == 200 and r.json()["state"] == "rejected"


def test_a_risky_import_waits_for_approval_then_runs(tmp_path: Path, azurite: Azurite, hub: IoTHubEmulator) -> None:
    values = settings(
        azurite,
        hub,
        IOTHUB_DEVHUB_REQUIRE_PLAN="true",
        IOTHUB_DEVHUB_PLAN_MAX_UPDATES="50",
        IMPORT_SNAPSHOTS="explicit",
    )
    app = App(tmp_path, values)
    stack = Stack(azurite, hub, app)
    try:
        app.start()
        seed(stack)
        stack.drop("risky.jsonl", [{"id": f"f-{i}", "importMode": "delete"} for i in range(3)])
        held = until(stack, lambda j: j["kind"] == "plan" and j["state"] == "completed")
        (risky,) = [j for j in held if j["state"] == "awaiting_approval"]
        plan = next(j for j in held if j["kind"] == "plan")
        assert stack.app.job("devhub", plan["jobId"])["reports"]["plan"]
        assert count(stack) == 20  # held: nothing deleted
        # Approved with the command line, followed to its end (exit 0); approving again is refused (exit 1).
        env = {k: v for k, v in os.environ.items() if not k.startswith("IOTJOBS_")}
        env.update(IOTJOBS_URL=app.url, IOTJOBS_KEY=FUNCTION_KEY, PYTHONPATH=str(REPO))
        command = [str(Path(sys.executable).parent / "iotjobs"), "approve", risky["jobId"], "--hub", "devhub"]
        done = subprocess.run([*command, "--follow"], env=env, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"job {risky['jobId']} on devhub: completed" in done.stdout
        assert count(stack) == 17
        again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
        assert again.returncode == 1 and "NotAwaitingApproval" in again.stderr, again.stderr
        r = app.call("POST", f"jobs/devhub/{risky['jobId']}/approve")
        assert (r.status_code, r.json()["error"]["code"]) == (409, "NotAwaitingApproval")
    finally:
        app.stop()


def import_changes(stack: Stack) -> tuple[dict[str, tuple[Any, ...]], dict[str, Any], list[dict[str, Any]]]:
    """Seed the hub, then drop a file that deletes, updates, changes twins and creates (snapshotted first, on
    ``IMPORT_SNAPSHOTS=explicit``): the registry before, the import job once it ended, every job then."""
    seed(stack)
    before = state(stack)
    stack.drop(
        "change.jsonl",
        [
            *({"id": f"f-{i}", "importMode": "delete"} for i in range(4)),
            *(dev(f"f-{i}", "update", status="disabled") for i in range(4, 8)),
            *({"id": f"f-{i}", "importMode": "updateTwin", "tags": {"n": -1}} for i in range(8, 12)),
            *(dev(f"g-{i}", "create") for i in range(5)),
        ],
    )
    jobs = until(stack, lambda j: j["kind"] == "import" and j["source"].endswith("change.jsonl"))
    imported = next(j for j in jobs if j["kind"] == "import" and j["source"].endswith("change.jsonl"))
    assert any(j["kind"] == "plan" and j["planFor"] == imported["jobId"] for j in jobs)  # its snapshot, taken first
    return before, imported, jobs


def _rollback(stack: Stack, job_id: str, **body: Any) -> Any:
    return stack.app.call("POST", f"jobs/devhub/{job_id}/rollback", json=body)


def test_rollback_over_http_survives_a_crash_and_refuses_what_it_cannot_undo(stack: Stack) -> None:
    # snapshots on (the local stack turns them off); "explicit": the createOrUpdate seed is not snapshotted
    stack.app.values["IMPORT_SNAPSHOTS"] = "explicit"
    stack.app.start()
    before, imported, jobs = import_changes(stack)
    assert imported["state"] == "completed"
    assert state(stack) != before

    # cannot be rolled back: a rejected file, an export, a job that does not exist
    stack.drop("bad.jsonl", ["not json"])
    jobs = until(stack, lambda j: j["state"] == "rejected")
    rejected = next(j for j in jobs if j["state"] == "rejected")
    r = _rollback(stack, rejected["jobId"])
    assert (r.status_code, r.json()["error"]["code"]) == (409, "CannotRollBack") and "rejected" in r.text
    export = next(j for j in jobs if j["kind"] == "export")
    assert _rollback(stack, export["jobId"]).status_code == 409
    assert _rollback(stack, imported["jobId"], force="yes").status_code == 400
    assert _rollback(stack, "0000000000000-000000").status_code == 404

    # the host dies right after the rollback's end (the inverse import recorded, the rollback not yet closed)
    stack.app.stop()
    stack.app.start("--crash-at", "harvested")
    r = _rollback(stack, imported["jobId"])
    assert r.status_code == 202, r.text
    rollback_id = r.json()["jobId"]
    assert stack.app.wait_exit() == 86
    stack.app.start()
    until(stack, lambda j: j["rollbackOf"] == imported["jobId"] and j["kind"] == "import")
    rb = stack.app.job("devhub", rollback_id)
    assert rb["state"] == "completed", rb["failureReason"]
    undo = [j for j in stack.app.jobs() if j["rollbackOf"] == imported["jobId"] and j["kind"] == "import"]
    assert len(undo) == 1 and undo[0]["state"] == "completed"  # one inverse import, though the end ran twice
    assert state(stack) == before


# Where a crash hurts a job that exports the registry: its hub job created but not recorded (``submitted``: the
# restart must adopt it, not export twice), seen running (``running``), its end done but not recorded
# (``harvested``: the end runs again).
EXPORT_STEPS = ["submitted", "running", "harvested"]


def _crash_at(stack: Stack, step: str) -> None:
    """Restart the host so that it dies right after ``step``; at ``running`` the hub holds its jobs until the host
    has seen one running (released by ``_restart``)."""
    stack.app.stop()
    if step == "running":
        control(stack.hub, "jobs", {"paused": True})
    stack.app.start("--crash-at", step)


def _restart(stack: Stack) -> None:
    assert stack.app.wait_exit() == 86, stack.app.log()[-3000:]
    control(stack.hub, "jobs", {"paused": False})
    stack.app.start()


def _no_work_container_left(stack: Stack) -> None:
    wait_until(lambda: not [c.name for c in stack.blobs.list_containers() if c.name.startswith("job-")])


@pytest.mark.parametrize("step", EXPORT_STEPS)
def test_a_preview_killed_mid_way_gives_one_plan_and_changes_nothing(stack: Stack, step: str) -> None:
    stack.app.start()
    seed(stack)
    before = registry(stack)
    exports = len(hub_jobs(stack, "export"))
    _crash_at(stack, step)
    lines = [dev("f-1", "create"), dev("f-2", status="disabled"), {"id": "f-3", "importMode": "delete"}]
    with contextlib.suppress(requests.ConnectionError):  # at `submitted` the host dies inside the request
        r = stack.app.call(
            "POST", "imports/plan", params={"hub": "devhub"}, data=ndjson(lines), headers={"content-type": "text/plain"}
        )
        assert r.status_code == 202, r.text
    _restart(stack)
    jobs = until(stack, lambda j: j["kind"] == "plan")
    (plan,) = [j for j in jobs if j["kind"] == "plan"]
    full = stack.app.job("devhub", plan["jobId"])
    assert plan["state"] == "completed", full["failureReason"]
    assert len(hub_jobs(stack, "export")) == exports + 1  # one export of the registry: adopted, never redone
    container, _, name = full["reports"]["plan"].partition("/")
    totals = json.loads(stack.read(container, name))["totals"]
    assert totals == {"create": 0, "update": 1, "twin": 0, "delete": 1, "unchanged": 0, "refused": 1}
    _no_work_container_left(stack)
    assert registry(stack) == before  # nothing changed
    assert [j["kind"] for j in stack.app.jobs()].count("import") == 1  # the seed only: a plan imports nothing


@pytest.mark.parametrize("step", EXPORT_STEPS)
def test_an_import_killed_while_its_snapshot_is_taken_runs_once_and_rolls_back(stack: Stack, step: str) -> None:
    stack.app.values["IMPORT_SNAPSHOTS"] = "explicit"
    stack.app.start()
    seed(stack)
    before = state(stack)
    imports, exports = len(hub_jobs(stack, "import")), len(hub_jobs(stack, "export"))
    _crash_at(stack, step)  # the first hub job after the upload is the snapshot's export
    stack.drop(
        "risky.jsonl",
        [
            *({"id": f"f-{i}", "importMode": "delete"} for i in range(3)),
            dev("f-3", "update", status="disabled"),
            dev("g-0", "create"),
        ],
    )
    _restart(stack)
    jobs = until(stack, lambda j: j["kind"] == "import" and j["source"].endswith("risky.jsonl"))
    (imported,) = [j for j in jobs if j["kind"] == "import" and j["source"].endswith("risky.jsonl")]
    assert imported["state"] == "completed", stack.app.job("devhub", imported["jobId"])["failureReason"]
    (snapshot,) = [j for j in jobs if j["kind"] == "plan"]
    assert snapshot["planFor"] == imported["jobId"] and snapshot["state"] == "completed"
    assert stack.names("snapshots") == [f"{imported['jobId']}/devices.jsonl", f"{imported['jobId']}/manifest.json"]
    assert len(hub_jobs(stack, "import")) == imports + 1  # the hub ran the import once
    assert len(hub_jobs(stack, "export")) == exports + 1  # and the snapshot's export once
    assert count(stack) == 18
    _no_work_container_left(stack)

    r = _rollback(stack, imported["jobId"])
    assert r.status_code == 202, r.text
    until(stack, lambda j: j["rollbackOf"] == imported["jobId"] and j["kind"] == "import")
    assert stack.app.job("devhub", r.json()["jobId"])["state"] == "completed"
    (undo,) = [j for j in stack.app.jobs() if j["rollbackOf"] == imported["jobId"] and j["kind"] == "import"]
    assert undo["state"] == "completed"
    assert state(stack) == before


def test_act_on_a_query_over_http_plans_then_runs_and_refuses_bad_input(stack: Stack) -> None:
    stack.app.start()
    stack.drop("seed.jsonl", [dev(f"q-{i}", tags={"site": "a" if i < 6 else "b"}) for i in range(10)])
    stack.app.wait_jobs(1)
    query = "SELECT * FROM devices WHERE tags.site = 'a'"
    r = stack.app.call("POST", "bulk", json={"hub": "devhub", "query": query, "action": "disable"})
    assert r.status_code == 202, r.text
    made, plan = r.json()["bulk"], r.json()["plan"]
    assert plan["kind"] == "plan" and r.json()["run"].endswith("/run")
    until(stack, lambda j: j["jobId"] == plan["jobId"] and j["state"] in TERMINAL_STATES)
    assert {d["status"] for d in registry(stack).values()} == {"enabled"}  # a plan changes nothing
    run = stack.app.call("POST", r.json()["run"].removeprefix("/api/"))
    assert run.status_code == 202, run.text
    again = stack.app.call("POST", r.json()["run"].removeprefix("/api/"))
    assert again.json()["jobId"] == run.json()["jobId"]  # run twice: one import
    until(stack, lambda j: j["jobId"] == run.json()["jobId"] and j["state"] in TERMINAL_STATES)
    assert stack.app.job("devhub", run.json()["jobId"])["state"] == "completed"
    statuses = {k: d["status"] for k, d in registry(stack).items()}
    assert statuses == {f"q-{i}": ("disabled" if i < 6 else "enabled") for i in range(10)}, made
    for body, status, code in (
        ({"hub": "devhub", "query": "DELETE FROM devices", "action": "delete"}, 400, "InvalidQuery"),
        ({"hub": "devhub", "query": "SELECT * FROM devices WHERE", "action": "delete"}, 400, "InvalidQuery"),
        ({"hub": "nohub", "query": query, "action": "delete"}, 404, "UnknownHub"),
        ({"hub": "devhub", "query": query, "action": "explode"}, 400, "InvalidField"),
    ):
        bad = stack.app.call("POST", "bulk", json=body)
        assert (bad.status_code, bad.json()["error"]["code"]) == (status, code), bad.text
    missing = stack.app.call("POST", "bulk/nosuchbulk/run")
    assert missing.status_code in (400, 404) and missing.json()["error"]["code"] in ("BulkNotFound", "InvalidField")


def test_a_bulk_whose_host_is_killed_mid_query_goes_on_and_writes_each_device_once(stack: Stack) -> None:
    """Issue 20 item 3: the bulk's plan job reads its query in parts of 10 pages of 1,000 devices and saves where it
    got after each; the host killed right after the first part is saved, the restarted host reads on from there:
    the file holds every selected device once, and the plan counts them all."""
    stack.app.start()
    n = 10_500  # 11 pages: two parts
    stack.drop("many.jsonl", [dev(f"m-{i:05d}", tags={"site": "a"}) for i in range(n)])
    stack.app.wait_jobs(1)
    _crash_at(stack, "bulk_part")
    query = "SELECT * FROM devices WHERE tags.site = 'a'"
    r = stack.app.call("POST", "bulk", json={"hub": "devhub", "query": query, "action": "disable"})
    assert r.status_code == 202, r.text
    _restart(stack)
    until(stack, lambda j: j["jobId"] == r.json()["plan"]["jobId"] and j["state"] in TERMINAL_STATES)
    plan = stack.app.job("devhub", r.json()["plan"]["jobId"])
    assert plan["state"] == "completed", plan["failureReason"]
    container, _, name = plan["reports"]["plan"].partition("/")
    doc = json.loads(stack.read(container, name))
    assert doc["bulk"]["devices"] == n and doc["totals"]["update"] == n
    ids = [json.loads(x)["id"] for x in stack.read("bulk", f"{r.json()['bulk']['id']}/devices.txt").splitlines()]
    assert len(ids) == len(set(ids)) == n
    assert not [x for x in stack.names("bulk") if "/parts/" in x or x.endswith("/cursor.json")]


@pytest.mark.parametrize("step", ["harvested", "ended"])
def test_a_bulk_run_killed_at_its_end_imports_once_and_still_drops_the_keys_it_minted(stack: Stack, step: str) -> None:
    """regenerateKeys by query, its import killed after its end was read but before it was recorded (``harvested``),
    or after it was recorded but before the hub's slot was freed (``ended``): after the restart, one import and one
    hub job; the devices have new keys; the generated file (the only place the keys were written) is gone, no key
    reached the log, and the hub takes the next upload."""
    stack.app.start()
    stack.drop("seed.jsonl", [dev(f"k-{i}", tags={"rotate": i < 3}) for i in range(5)])
    stack.app.wait_jobs(1)

    def key(device_id: str) -> str:
        doc = hub_call(stack.hub, "GET", f"/devices/{device_id}").json()
        return str(doc["authentication"]["symmetricKey"]["primaryKey"])

    before = {f"k-{i}": key(f"k-{i}") for i in range(5)}
    query = "SELECT * FROM devices WHERE tags.rotate = true"
    r = stack.app.call("POST", "bulk", json={"hub": "devhub", "query": query, "action": "regenerateKeys"})
    assert r.status_code == 202, r.text
    until(stack, lambda j: j["jobId"] == r.json()["plan"]["jobId"] and j["state"] in TERMINAL_STATES)
    bulk_file = r.json()["bulk"]["file"]
    assert bulk_file in [f"bulk/{n}" for n in stack.names("bulk")]

    _crash_at(stack, step)
    run = stack.app.call("POST", r.json()["run"].removeprefix("/api/"))
    assert run.status_code == 202, run.text
    _restart(stack)
    until(stack, lambda j: j["jobId"] == run.json()["jobId"] and j["state"] in TERMINAL_STATES)

    imports = [j for j in stack.app.jobs() if j["kind"] == "import" and j["source"] == bulk_file]
    assert [j["state"] for j in imports] == ["completed"]
    assert len(hub_jobs(stack)) == 2  # the seed's and this one
    after = {device_id: key(device_id) for device_id in before}
    assert {d for d in before if after[d] != before[d]} == {"k-0", "k-1", "k-2"}
    assert bulk_file not in [f"bulk/{n}" for n in stack.names("bulk")]
    log = stack.app.log()
    assert not any(after[d] in log for d in ("k-0", "k-1", "k-2"))
    stack.drop("next.jsonl", [dev("k-next")])
    done = until(stack, lambda j: (j["source"] or "").endswith("next.jsonl") and j["state"] in TERMINAL_STATES)
    assert [j["state"] for j in done if (j["source"] or "").endswith("next.jsonl")] == ["completed"]
