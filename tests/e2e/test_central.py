"""IoT Central data export through the app: a dropped file planned, applied and recorded; the HTTP plan and apply;
a rejected file; a crash mid-apply; the nightly backup; and no secret anywhere it should not be."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

from emulators.azurite import ACCOUNT_KEY
from tests.integration.helpers import request_log, wait_until, writes

from .app import Stack, ensure

SAMPLE = (Path(__file__).resolve().parents[2] / "samples/central/dataexport.json").read_bytes()
ALERTS_KEY = "local-dev-alerts-api-key-0000"
NDJSON = {"content-type": "application/x-ndjson"}  # CENTRAL_ALERTS_API_KEY in stack_settings


def drop(stack: Stack, name: str, data: bytes) -> None:
    blobs = stack.blobs
    ensure(blobs, "uploads")
    blobs.get_blob_client("uploads", name).upload_blob(data, overwrite=True)


def central_state(stack: Stack) -> tuple[set[str], set[str]]:
    assert stack.central is not None
    log = request_log(stack.central)
    gets = [e for e in log if e["method"] == "GET" and e["status"] == 200]
    dests = next(e for e in reversed(gets) if e["path"].endswith("/destinations"))["response"]["value"]
    exps = next(e for e in reversed(gets) if e["path"].endswith("/exports"))["response"]["value"]
    return {d["id"] for d in dests}, {e["id"] for e in exps}


def report(stack: Stack, job: dict[str, Any], name: str) -> dict[str, Any]:
    container, _, blob = stack.app.job(job["hub"], job["jobId"])["reports"][name].partition("/")
    doc: dict[str, Any] = json.loads(stack.read(container, blob))
    return doc


def test_a_dropped_file_is_applied_once_recorded_and_archived(central_stack: Stack) -> None:
    stack = central_stack
    assert stack.central is not None
    stack.app.start()
    drop(stack, "central/dataexport.json", SAMPLE)
    (job,) = stack.app.wait_jobs(1)
    assert (job["hub"], job["kind"], job["state"]) == ("central", "central_apply", "completed"), job
    assert job["steps"] == {"create": 7, "update": 0, "replace": 0, "delete": 0}
    result = report(stack, job, "result")
    assert [r["outcome"] for r in result["results"]] == ["done"] * 7
    assert [(r["kind"], r["id"]) for r in result["results"]][:3] == [
        ("destination", "archive-blob"),
        ("destination", "alerts-webhook"),
        ("destination", "lifecycle-hub"),
    ]
    assert stack.names("archive") == [f"processed/{job['jobId']}/central/dataexport.json"]
    assert stack.names("uploads", "central/") == []
    creates = [w for w in writes(request_log(stack.central)) if w[0] == "PUT"]
    assert len(creates) == 7, "applied once"
    # The same file again (a new upload version) is a new job that changes nothing.
    drop(stack, "central/dataexport.json", SAMPLE)
    jobs = stack.app.wait_jobs(2)
    assert jobs[0]["state"] == "completed" and jobs[0]["steps"] == {"create": 0, "update": 0, "replace": 0, "delete": 0}
    assert len([w for w in writes(request_log(stack.central)) if w[0] == "PUT"]) == 7


def test_http_plan_apply_and_a_rejected_file(central_stack: Stack) -> None:
    stack = central_stack
    assert stack.central is not None
    stack.app.start()
    r = stack.app.call("POST", "central/plan", data=SAMPLE)
    assert r.status_code == 200, r.text
    assert r.json()["summary"] == {"create": 7, "update": 0, "replace": 0, "delete": 0}
    assert [s["action"] for s in r.json()["steps"]] == ["create"] * 7
    assert writes(request_log(stack.central)) == [], "a plan changes nothing"
    assert stack.app.jobs() == [], "a plan records no job"

    bad = json.loads(SAMPLE)
    bad["destinations"]["alerts-webhook"]["headerCustomizations"]["x-api-key"]["value"] = "literal-key"
    r = stack.app.call("POST", "central/plan", data=json.dumps(bad).encode())
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "InvalidDocument"
    assert error["problems"][0]["where"] == "destinations.alerts-webhook.headerCustomizations.x-api-key.value"
    assert "literal-key" not in r.text

    r = stack.app.call("POST", "central/apply", data=json.dumps(bad).encode())
    assert r.status_code == 200, r.text
    rejected = r.json()
    assert rejected["state"] == "rejected" and rejected["validationErrors"] == 1
    assert report(stack, rejected, "rejection")["applied"] == "nothing"
    assert writes(request_log(stack.central)) == []
    assert stack.names("archive", "failed/") == [f"failed/{rejected['jobId']}/{rejected['source'].split('/', 1)[1]}"]

    r = stack.app.call("POST", "central/apply", data=SAMPLE)
    assert r.status_code == 200 and r.json()["state"] == "completed", r.text
    r = stack.app.call("POST", "central/plan", data=SAMPLE)
    assert r.json()["changes"] == 0 and r.json()["steps"] == []
    r = stack.app.call("POST", f"jobs/central/{rejected['jobId']}/cancel")
    assert r.status_code == 409
    # "central" names the ledger partition of applies, never a hub to import into or export from.
    r = stack.app.call("POST", "exports", json={"hub": "central"})
    assert (r.status_code, r.json()["error"]["code"]) == (404, "UnknownHub"), r.text
    r = stack.app.call("POST", "imports?hub=central", data=b'{"id":"d1"}\n', headers=NDJSON)
    assert (r.status_code, r.json()["error"]["code"]) == (404, "UnknownHub"), r.text
    drop(stack, "central/kept.json", SAMPLE)
    r = stack.app.call("POST", "imports", json={"blob": "uploads/central/kept.json", "hub": "devhub"})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "NotADevicesFile"), r.text


def test_killed_mid_apply_the_job_resumes_and_converges(central_stack: Stack) -> None:
    stack = central_stack
    assert stack.central is not None
    stack.app.start("--crash-at", "central_step")
    drop(stack, "central/dataexport.json", SAMPLE)
    assert stack.app.wait_exit() == 86, stack.app.log()[-3000:]
    assert len(writes(request_log(stack.central))) == 1  # one destination made, then the process died
    stack.app.start()
    (job,) = stack.app.wait_jobs(1)
    assert job["state"] == "completed" and job["attempts"] == 2, stack.app.job("central", job["jobId"])
    assert central_state_after_plan(stack) == (3, 4)
    assert len([w for w in writes(request_log(stack.central)) if w[0] == "PUT"]) == 7, "nothing applied twice"


def central_state_after_plan(stack: Stack) -> tuple[int, int]:
    r = stack.app.call("POST", "central/plan", data=SAMPLE)
    assert r.json()["changes"] == 0, r.text
    dests, exps = central_state(stack)
    return len(dests), len(exps)


def test_nightly_backup_of_central_and_no_secret_leaks(central_stack: Stack) -> None:
    stack = central_stack
    stack.app.start()
    changed = copy.deepcopy(json.loads(SAMPLE))
    changed["exports"]["hot-alerts"]["enabled"] = False
    assert stack.app.call("POST", "central/apply", data=SAMPLE).json()["state"] == "completed"
    stack.app.fire("nightly_backup")
    stack.app.fire("nightly_backup")  # fired twice: one folder
    wait_until(lambda: [n for n in stack.names("backups", "central/") if n.endswith("manifest.json")])
    names = stack.names("backups", "central/")
    assert len(names) == 2, names
    folder = names[0].rsplit("/", 1)[0]
    data = stack.read("backups", f"{folder}/dataexport.json")
    manifest = json.loads(stack.read("backups", f"{folder}/manifest.json"))
    assert (manifest["destinations"], manifest["exports"]) == (3, 4)
    assert manifest["sha256"] == hashlib.sha256(data).hexdigest() and manifest["bytes"] == len(data)
    backup = json.loads(data)
    assert backup["destinations"]["alerts-webhook"]["headerCustomizations"]["x-api-key"]["value"] == "*****"
    assert set(backup["exports"]) == {"all-telemetry", "hot-alerts", "lifecycle", "audit-log"}
    # An apply of a changed file, then every place the app writes is scanned for the secrets it handled.
    r = stack.app.call("POST", "central/apply", data=json.dumps(changed).encode())
    assert r.json()["state"] == "completed"
    texts = {"host log": stack.app.log(), "backup": data.decode(), "api": r.text}
    table = stack.tables.get_table_client("jobledger")
    texts["ledger"] = json.dumps([dict(e) for e in table.list_entities()], default=str)
    for name in stack.names("reports"):
        texts[f"reports/{name}"] = stack.read("reports", name).decode()
    for where, text in texts.items():
        for secret in (ALERTS_KEY, ACCOUNT_KEY):
            assert secret not in text, f"a secret leaked into {where}"
    assert any(name.endswith("central-apply.json") for name in texts)
