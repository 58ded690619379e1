"""The app under the local runner against a hub with the service's rules (the emulator in realistic mode: S1, one
unit, a short --time-scale): imports one after another, a crash mid-job, cancel (also while the hub throttles the
call), and a nightly backup with configurations restored through the API. Waits are bounded only to stop a hung
test."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import requests

from emulators.iothub import IoTHubEmulator
from emulators.iothub.quotas import Profile
from tests.integration.helpers import control, hub_call
from tests.integration.helpers import device_line as dev
from tests.waiting import wait_until

from .app import Stack
from .test_imports import hub_jobs, registry

pytestmark = pytest.mark.realistic


def configuration_call(hub: IoTHubEmulator, method: str, config_id: str, body: Any = None) -> requests.Response:
    extra = {"If-Match": "*"} if method == "DELETE" else None
    return hub_call(hub, method, f"/configurations/{config_id}", body=body, extra=extra)


FIRMWARE = {
    "id": "fw-oslo",
    "labels": {"team": "ops"},
    "content": {"deviceContent": {"properties.desired.fw": {"version": "1.0"}}},
    "targetCondition": "tags.site='oslo'",
    "priority": 10,
}


def test_files_are_imported_one_after_another(realistic_stack: Stack) -> None:
    stack = realistic_stack
    stack.app.start()
    for f in range(3):
        stack.drop(f"r-{f}.jsonl", [dev(f"r{f}-{i}") for i in range(200)])
    jobs = stack.app.wait_jobs(3)
    assert [j["state"] for j in jobs] == ["completed"] * 3, jobs
    ran = hub_jobs(stack)
    assert len(ran) == 3 and {j["status"] for j in ran} == {"completed"}
    assert len(registry(stack)) == 600


@pytest.mark.parametrize("step", ["submitted", "running"])
def test_killed_mid_job_converges_without_running_twice(realistic_stack: Stack, step: str) -> None:
    stack = realistic_stack
    if step == "running":
        # The monitor must see the hub job running before it ends: a short job could finish between two passes.
        control(stack.hub, "jobs", {"paused": True})
    stack.app.start("--crash-at", step)
    stack.drop("crash.jsonl", [dev(f"c-{i}") for i in range(300)])
    assert stack.app.wait_exit() == 86, stack.app.log()[-3000:]
    control(stack.hub, "jobs", {"paused": False})
    stack.app.start()
    (job,) = stack.app.wait_jobs(1)
    assert job["state"] == "completed", stack.app.job("devhub", job["jobId"])["failureReason"]
    assert len(hub_jobs(stack)) == 1
    assert stack.names("archive") == [f"processed/{job['jobId']}/crash.jsonl"]
    assert len(registry(stack)) == 300


def test_a_cancel_the_throttling_hub_does_not_take_is_remembered_and_sent_again(realistic_stack: Stack) -> None:
    stack = realistic_stack
    control(stack.hub, "jobs", {"paused": True})  # the hub job stays enqueued until cancelled
    stack.app.start()
    stack.drop("cancel.jsonl", [dev(f"x-{i}") for i in range(50)])
    (job,) = stack.app.wait_jobs(1, states={"running"})
    # Every hub call refused for longer than the app sleeps through in a request: the hub does not take the cancel.
    control(stack.hub, "faults", {"rate": 1.0, "statuses": [429], "retryAfter": 40})
    asked = stack.app.call("POST", f"jobs/devhub/{job['jobId']}/cancel")
    assert asked.status_code == 202, asked.text
    assert asked.json()["cancelPending"] is True and "the monitor sends it again" in asked.json()["waitingFor"]
    time.sleep(2)  # monitor passes while the hub still throttles: the job stays running, the cancel pending
    seen = stack.app.job("devhub", job["jobId"])
    assert (seen["state"], seen["cancelPending"]) == ("running", True)
    control(stack.hub, "faults", {"rate": 0})
    # No second request: the monitor sends it once the hub answers, and the job ends cancelled.
    wait_until(
        lambda: stack.app.job("devhub", job["jobId"]),
        lambda doc: not doc["cancelPending"],
        deadline=120,
        interval=0.3,
        what="the cancel to reach the hub",
    )
    control(stack.hub, "jobs", {"paused": False})
    (done,) = stack.app.wait_jobs(1)
    assert done["state"] == "cancelled"
    ended = stack.app.job("devhub", job["jobId"])
    assert "any part of the file may have been applied" in ended["failureReason"] and not ended["cancelPending"]


def test_a_nightly_backup_with_configurations_restores_them(realistic_stack: Stack) -> None:
    stack = realistic_stack
    stack.app.start()
    stack.drop("seed.jsonl", [dev(f"n-{i}", tags={"site": "oslo"}) for i in range(40)])
    stack.app.wait_jobs(1)
    assert configuration_call(stack.hub, "PUT", "fw-oslo", FIRMWARE).status_code == 200
    stack.app.fire("nightly_backup")
    jobs = stack.app.wait_jobs(2)
    (export,) = [j for j in jobs if j["kind"] == "export"]
    assert export["state"] == "completed", export
    full = stack.app.job("devhub", export["jobId"])
    folder = full["reports"]["backup"].removeprefix("backups/").removesuffix("/devices.txt")
    manifest = json.loads(stack.read("backups", f"{folder}/manifest.json"))
    assert (manifest["devices"], manifest["configurations"]) == (40, 1)
    saved = json.loads(stack.read("backups", f"{folder}/configurations.txt"))
    assert saved["id"] == "fw-oslo" and saved["priority"] == 10

    assert configuration_call(stack.hub, "DELETE", "fw-oslo").status_code == 204
    r = stack.app.call("POST", "restores", json={"hub": "devhub", "backup": "latest"})
    assert r.status_code == 202, r.text
    jobs = stack.app.wait_jobs(3)
    (restore,) = [j for j in jobs if j["kind"] == "restore"]
    assert restore["state"] == "completed", stack.app.job("devhub", restore["jobId"])["failureReason"]
    back = configuration_call(stack.hub, "GET", "fw-oslo")
    assert back.status_code == 200
    assert {k: back.json()[k] for k in FIRMWARE} == FIRMWARE


def test_the_hub_is_realistic(realistic_stack: Stack) -> None:
    profile = requests.get(
        f"{realistic_stack.hub.url}/_emulator/usage", verify=str(realistic_stack.hub.ca_path), timeout=10
    ).json()["profile"]
    assert Profile(profile["sku"], profile["units"], profile["timeScale"]).realistic
