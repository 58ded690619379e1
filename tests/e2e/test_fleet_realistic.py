"""The fleet operations through the local host against a hub with the service's rules (the emulator in realistic
mode: S1, one unit, a short --time-scale, its throttles and its query lag): a preview, an import that deletes
(snapshotted first) and its rollback, and acting on a query planned then run. Waits are bounded only to stop a hung
test."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.helpers import control, hub_call
from tests.integration.helpers import device_line as dev
from tests.waiting import wait_until

from .app import Stack
from .test_fleet import PREVIEWED, import_changes, preview, seed, state, until

pytestmark = pytest.mark.realistic


@contextlib.contextmanager
def throttled(stack: Stack, seconds: float = 2.0) -> Iterator[None]:
    """Every hub call answered 429 (Retry-After: 1) for ``seconds`` from now, on top of the S1 quotas: what the app
    sends meanwhile must wait it out, not fail."""
    control(stack.hub, "faults", {"rate": 1.0, "statuses": [429], "retryAfter": 1})
    timer = threading.Timer(seconds, control, (stack.hub, "faults", {"rate": 0}))
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        control(stack.hub, "faults", {"rate": 0})


def test_a_preview_answers_what_an_import_would_do_and_changes_nothing(realistic_stack: Stack) -> None:
    stack = realistic_stack
    stack.app.start()
    seed(stack)
    before = state(stack)
    lines = PREVIEWED
    with throttled(stack):
        r = preview(stack, lines)
    assert r.status_code in (200, 202), r.text
    job = r.json()
    if job["state"] != "completed":  # the hub's export took longer than the request waits: the plan is its report
        until(stack, lambda j: j["jobId"] == job["jobId"])
    plan = r.json().get("plan") or _plan_report(stack, job["jobId"])
    assert plan["totals"] == {"create": 1, "update": 1, "twin": 0, "delete": 1, "unchanged": 0, "refused": 2}
    assert [(x["line"], x["deviceId"]) for x in plan["refused"]] == [(1, "f-1"), (4, "nobody")]
    assert state(stack) == before  # nothing changed
    assert not stack.names("uploads")


def _plan_report(stack: Stack, job_id: str) -> dict[str, Any]:
    full = stack.app.job("devhub", job_id)
    assert full["state"] == "completed", full["failureReason"]
    container, _, name = full["reports"]["plan"].partition("/")
    doc: dict[str, Any] = json.loads(stack.read(container, name))
    return doc


def test_an_import_that_deletes_is_snapshotted_then_rolled_back(realistic_stack: Stack) -> None:
    stack = realistic_stack
    # snapshots on (the local stack turns them off); "explicit": the createOrUpdate seed is not snapshotted
    stack.app.values["IMPORT_SNAPSHOTS"] = "explicit"
    stack.app.start()
    before, imported, _ = import_changes(stack)
    assert imported["state"] == "completed", stack.app.job("devhub", imported["jobId"])["failureReason"]
    assert state(stack) != before

    with throttled(stack):  # the rollback's export (and then its inverse import) start while the hub throttles
        r = stack.app.call("POST", f"jobs/devhub/{imported['jobId']}/rollback", json={})
    assert r.status_code == 202, r.text
    rollback_id = r.json()["jobId"]
    until(stack, lambda j: j["rollbackOf"] == imported["jobId"] and j["kind"] == "import")
    rb = stack.app.job("devhub", rollback_id)
    assert rb["state"] == "completed", rb["failureReason"]
    undo = [j for j in stack.app.jobs() if j["rollbackOf"] == imported["jobId"] and j["kind"] == "import"]
    assert len(undo) == 1 and undo[0]["state"] == "completed", undo
    assert state(stack) == before


def _visible(stack: Stack, query: str, n: int, deadline: float = 60) -> None:
    """Wait until the hub's queries see ``n`` devices for ``query``: they lag writes (6 s on the service), and a
    bulk made earlier would act on what the query saw then."""
    count_query = query.replace("SELECT *", "SELECT COUNT() AS n", 1)
    wait_until(
        lambda: hub_call(stack.hub, "POST", "/devices/query", body={"query": count_query}),
        lambda r: r.status_code == 200 and r.json() == [{"n": n}],
        deadline=deadline,
        interval=0.2,
        what=f"the query to see {n} device(s)",
    )


def status(stack: Stack, device_id: str) -> str:
    return str(hub_call(stack.hub, "GET", f"/devices/{device_id}").json()["status"])


def test_act_on_a_query_plans_then_runs_and_refuses_a_device_changed_since(realistic_stack: Stack) -> None:
    stack = realistic_stack
    stack.app.start()
    stack.drop("seed.jsonl", [dev(f"q-{i}", tags={"site": "a" if i < 6 else "b"}) for i in range(10)])
    stack.app.wait_jobs(1)
    query = "SELECT * FROM devices WHERE tags.site = 'a'"
    _visible(stack, query, 6)
    # Issue 20 item 3: the request asks the hub nothing (it used to page through the query while the request waited,
    # 21 minutes on a 200,000-device hub, and answer 503 after 120 s of throttling): 202 at once, the job queued.
    with throttled(stack, seconds=600):
        r = stack.app.call("POST", "bulk", json={"hub": "devhub", "query": query, "action": "disable"})
    assert r.status_code == 202, r.text
    assert r.json()["plan"]["state"] == "queued" and set(r.json()["bulk"]) == {"id", "hub", "query", "action", "file"}
    plan = r.json()["plan"]
    with throttled(stack):  # the query's pages are throttled: the plan job waits it out
        until(stack, lambda j: j["jobId"] == plan["jobId"])
    planned = _plan_report(stack, plan["jobId"])
    assert planned["bulk"]["devices"] == 6
    assert planned["totals"]["update"] == 6 and planned["totals"]["refused"] == 0, planned
    assert {status(stack, f"q-{i}") for i in range(10)} == {"enabled"}  # a plan changes nothing

    # someone else changes one selected device between the plan and the run
    current = hub_call(stack.hub, "GET", "/devices/q-2").json()
    moved = hub_call(
        stack.hub, "PUT", "/devices/q-2", body={**current, "statusReason": "moved"}, extra={"If-Match": "*"}
    )
    assert moved.status_code == 200, moved.text
    run = stack.app.call("POST", r.json()["run"].removeprefix("/api/"))
    assert run.status_code == 202, run.text
    until(stack, lambda j: j["jobId"] == run.json()["jobId"])
    done = stack.app.job("devhub", run.json()["jobId"])
    # not acted on, and reported as skipped with the reason (not a device error)
    assert done["state"] == "completed" and done["failedDevices"] == 0, done
    skipped = stack.read(*done["reports"]["skipped"].split("/", 1)).decode()
    assert '"deviceId": "q-2"' in skipped and "changed since the plan" in skipped
    statuses = {f"q-{i}": status(stack, f"q-{i}") for i in range(10)}
    assert statuses == {f"q-{i}": ("disabled" if i < 6 and i != 2 else "enabled") for i in range(10)}
