"""The HTTP API (keys, JSON errors, paging, links, cancel, imports from a body), the poison queue, and a scan
of every log, ledger row and report for secrets."""

from __future__ import annotations

import base64
import json
import re

import requests
from azure.storage.queue import QueueClient

from emulators.azurite import ACCOUNT_KEY
from emulators.functions_host import POISON_QUEUE
from tests.integration.helpers import control, wait_until
from tests.integration.helpers import device_line as dev

from .app import Stack
from .test_imports import hub_jobs


def test_api_needs_a_key_and_answers_errors_as_json(stack: Stack) -> None:
    stack.app.start()
    assert stack.app.call("GET", "health", key=None).json() == {"status": "ok"}
    for key, code in ((None, "MissingFunctionKey"), ("wrong", "InvalidFunctionKey")):
        r = stack.app.call("GET", "jobs", key=key)
        assert (r.status_code, r.json()["error"]["code"]) == (401, code)
    cases = [
        ("GET", "jobs?state=done", 400, "InvalidField"),
        ("GET", "jobs?limit=0", 400, "InvalidField"),
        ("GET", "jobs?hub=nohub", 404, "UnknownHub"),
        ("GET", "jobs/devhub/0000000000000-000000", 404, "JobNotFound"),
        ("POST", "imports", 400, "MissingField"),
        ("POST", "exports?includeKeys=perhaps", 400, "InvalidField"),
    ]
    for method, path, status, code in cases:
        r = stack.app.call(method, path)
        assert r.status_code == status, (path, r.text)
        assert r.json()["error"]["code"] == code and r.json()["error"]["message"]
    r = stack.app.call("POST", "imports", data=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "InvalidJson"
    r = stack.app.call("POST", "imports", json={"blob": "uploads/missing.jsonl"})
    assert r.status_code == 404 and "upload it first" in r.json()["error"]["message"]


def test_import_from_body_list_filter_page_links_and_cancel(stack: Stack) -> None:
    stack.app.start()
    control(stack.hub, "jobs", {"paused": True})
    body = "\n".join(json.dumps(dev(f"api-{i}")) for i in range(10)).encode()
    r = stack.app.call("POST", "imports?hub=devhub", data=body, headers=NDJSON)
    assert r.status_code == 202, r.text
    first = r.json()
    # Started at once, by this call or by the blob trigger that saw the same upload meanwhile (then maybe still
    # being submitted); either way it ends up running, never waiting.
    assert first["state"] in ("submitting", "running") and first["lines"] == 10
    wait_until(lambda: stack.app.job("devhub", first["jobId"])["state"] == "running")
    r = stack.app.call("POST", "imports", data=body, headers=NDJSON)
    second = r.json()
    assert second["state"] == "queued"  # the hub is busy with the first: waits, never fails
    # newest first, filtered, paged
    assert [j["jobId"] for j in stack.app.jobs()] == [second["jobId"], first["jobId"]]
    assert [j["jobId"] for j in stack.app.jobs(state="queued")] == [second["jobId"]]
    page = stack.app.call("GET", "jobs", params={"limit": "1"}).json()
    assert [j["jobId"] for j in page["jobs"]] == [second["jobId"]] and page["next"]
    rest = stack.app.call("GET", "jobs", params={"limit": "1", "after": page["next"]}).json()
    assert [j["jobId"] for j in rest["jobs"]] == [first["jobId"]] and rest["next"] is None
    # cancel the queued one at once; the running one through the hub
    r = stack.app.call("POST", f"jobs/devhub/{second['jobId']}/cancel")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    assert stack.app.call("POST", f"jobs/devhub/{second['jobId']}/cancel").status_code == 409
    r = stack.app.call("POST", f"jobs/devhub/{first['jobId']}/cancel")
    assert r.status_code == 202, r.text
    control(stack.hub, "jobs", {"paused": False})
    jobs = stack.app.wait_jobs(2)
    assert {j["state"] for j in jobs} == {"cancelled"}
    assert {n.split("/")[0] for n in stack.names("archive")} == {"failed"}  # both uploads kept, as failed
    # report links are read-only and short-lived
    stack.drop("linked.jsonl", [dev("x", "create"), dev("x", "create")])
    (rejected,) = [j for j in stack.app.wait_jobs(3) if j["state"] == "rejected"]
    link = stack.app.job("devhub", rejected["jobId"])["links"]["rejection"]
    assert "DUPLICATE" in requests.get(link, timeout=10).text
    assert "se=" in link and "sp=r&" in link
    put = requests.put(link, data=b"x", headers={"x-ms-blob-type": "BlockBlob"}, timeout=10)
    assert put.status_code == 403


def test_a_function_failing_five_times_goes_to_the_poison_queue(stack: Stack) -> None:
    stack.app.values["IOTHUB_DEVHUB_CONNECTION_STRING"] = "HostName=nowhere"  # misconfigured: every run fails
    stack.app.start()
    stack.drop("poisoned.jsonl", [dev("p-1")])
    queue = QueueClient.from_connection_string(stack.azurite.connection_string, POISON_QUEUE)
    messages: list[dict[str, str]] = []
    wait_until(
        lambda: messages.extend(json.loads(base64.b64decode(m.content)) for m in queue.receive_messages()) or messages
    )
    assert messages[0]["BlobName"] == "poisoned.jsonl" and messages[0]["ContainerName"] == "uploads"
    assert stack.app.log().count("Failed, try") == 5
    assert stack.names("uploads") == ["poisoned.jsonl"]  # never lost
    r = stack.app.call("GET", "jobs")
    error = r.json()["error"]
    assert r.status_code == 500 and error["code"] == "Misconfigured"
    assert "IOTHUB_DEVHUB_CONNECTION_STRING" in error["message"] and "SharedAccessKey" in error["message"]


NDJSON = {"content-type": "application/x-ndjson"}
SECRET = re.compile(r"sig=|SharedAccessKey=|AccountKey=|SharedAccessSignature sr=")


def test_no_secret_reaches_logs_ledger_or_reports(stack: Stack) -> None:
    keys = [base64.b64encode(bytes([i]) * 32).decode() for i in range(1, 6)]
    stack.app.start()
    lines = [
        dev(f"k-{i}", authentication={"symmetricKey": {"primaryKey": k, "secondaryKey": k}}) for i, k in enumerate(keys)
    ]
    stack.drop("keys.jsonl", lines)
    stack.drop("keys-bad.jsonl", [*lines, {"id": "bad key", "authentication": {"symmetricKey": {"primaryKey": "x"}}}])
    stack.app.wait_jobs(2)
    r = stack.app.call("POST", "exports", json={"includeKeys": True})
    assert r.status_code == 202
    jobs = stack.app.wait_jobs(3)
    assert len(hub_jobs(stack, "export")) == 1
    hub_key = stack.hub.connection_string("iothubowner").split("SharedAccessKey=")[1]
    forbidden = [*keys, hub_key, ACCOUNT_KEY]
    texts = {"host log": stack.app.log()}
    table = stack.tables.get_table_client("jobledger")
    texts["ledger"] = json.dumps([dict(e) for e in table.list_entities()], default=str)
    # archive/ is left out on purpose: the archived uploads are the user's own files, keys and all.
    for name in stack.names("reports"):
        texts[f"reports/{name}"] = stack.read("reports", name).decode()
    for name in stack.names("backups"):
        if name.endswith("manifest.json"):
            texts[name] = stack.read("backups", name).decode()
    texts["api"] = json.dumps([stack.app.job(j["hub"], j["jobId"]) for j in jobs])
    for where, text in texts.items():
        for secret in forbidden:
            assert secret not in text, f"a secret leaked into {where}"
        hits = SECRET.findall(text) if where != "api" else []  # API replies carry SAS links by design
        assert not hits, f"{hits} in {where}"
    assert len(texts) > 5
