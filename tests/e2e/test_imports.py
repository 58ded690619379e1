"""Drop-a-file imports through the runner: completed, rejected, duplicates, queues, per-device errors."""

from __future__ import annotations

import json
from typing import Any

from .app import Stack


def dev(device_id: str, mode: str = "createOrUpdate", **extra: Any) -> dict[str, Any]:
    return {"id": device_id, "importMode": mode, "status": "enabled", **extra}


def registry(stack: Stack) -> dict[str, dict[str, Any]]:
    """The hub's registry, read back through an export run by the app itself."""
    r = stack.app.call("POST", "exports", json={"hub": "devhub"})
    assert r.status_code == 202, r.text
    job_id = r.json()["jobs"][0]["jobId"]
    jobs = stack.app.wait_jobs(len(stack.app.jobs()))
    job = next(j for j in jobs if j["jobId"] == job_id)
    full = stack.app.job("devhub", job_id)
    assert job["state"] == "completed", full["failureReason"]
    container, _, name = full["reports"]["backup"].partition("/")
    lines = stack.read(container, name).decode().splitlines()
    return {d["id"]: d for d in map(json.loads, lines)}


def test_good_file_is_imported_and_archived(stack: Stack) -> None:
    stack.app.start()
    stack.drop("good.jsonl", [dev(f"d-{i}") for i in range(50)])
    (job,) = stack.app.wait_jobs(1)
    assert job["state"] == "completed", job
    assert job["lines"] == 50
    assert stack.names("uploads") == []
    assert stack.names("archive") == [f"processed/{job['jobId']}/good.jsonl"]
    assert sorted(registry(stack)) == sorted(f"d-{i}" for i in range(50))
