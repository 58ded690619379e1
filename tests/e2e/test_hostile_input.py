"""Hostile HTTP input, sent to the app under the real local host: every one gets a JSON 4xx with a named code and a
message saying what to change, never a 500, an HTML page or a dropped connection, and the host answers afterwards."""

from __future__ import annotations

import socket
from dataclasses import replace
from datetime import UTC, datetime

import requests

from emulators.functions_host import FUNCTION_KEY
from shared.ledger import Job, JobKind, JobState, Ledger, advance

from .app import Stack


def raw_request(stack: Stack, head: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Send bytes no well-behaved client would (a bad Content-Length, a body never sent) and read the reply."""
    with socket.create_connection(("127.0.0.1", stack.app.port), timeout=30) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head_bytes, _, payload = data.partition(b"\r\n\r\n")
    status_line, *lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}
    return int(status_line.split()[1]), headers, payload


def assert_error(r: requests.Response, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert error["code"] == code, r.text
    message: str = error["message"]
    assert message
    return message


def assert_alive(stack: Stack) -> None:
    r = stack.app.call("GET", "health", key=None)
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_the_host_refuses_bad_requests_as_azure_does(stack: Stack) -> None:
    stack.app.start()
    # A method no function takes, known or not, on a known route: 404 (Azure's answer), JSON, never 405 or HTML.
    for method in ("TRACE", "FOO", "DELETE", "PUT"):
        assert_error(stack.app.call(method, "jobs"), 404, "NotFound")
    assert_error(stack.app.call("POST", "health"), 404, "NotFound")
    assert_error(stack.app.call("GET", "nowhere"), 404, "NotFound")
    r = stack.app.call("HEAD", "jobs")
    assert r.status_code == 404 and r.content == b""
    # A missing key and a wrong key are told apart.
    assert "required" in assert_error(stack.app.call("GET", "jobs", key=None), 401, "MissingFunctionKey")
    assert_error(stack.app.call("GET", "jobs", key="wrong"), 401, "InvalidFunctionKey")
    # Framing the host must refuse before reading a body: the reply is JSON and the connection is closed.
    head = "POST /api/exports HTTP/1.1\nHost: x\nx-functions-key: " + FUNCTION_KEY + "\nContent-Length: "
    for length in ("-1", "abc", "1e3", "\u00b2"):
        status, headers, payload = raw_request(stack, head + length + "\n")
        assert (status, headers["connection"]) == (400, "close") and b"InvalidContentLength" in payload, length
    for length in (str(100 * 2**20 + 1), "9" * 5000):  # never read, never parsed past its size
        status, headers, payload = raw_request(stack, head + length + "\n")
        assert (status, headers["connection"]) == (413, "close") and b"BodyTooLarge" in payload
    status, _, payload = raw_request(stack, "GET /api/health HTTP/1.1\nHost: x\nConnection: close\n")
    assert status == 200
    # A chunked body reaches the function (it used to arrive empty).
    r = stack.app.call("POST", "exports", data=iter([b'{"hub"', b': "nohub"}']))
    assert "nohub" in assert_error(r, 404, "UnknownHub")
    assert_alive(stack)


def test_hostile_bodies_and_queries_are_refused_with_what_to_change(stack: Stack) -> None:
    stack.app.start()
    # Nested 100,000 deep: over the JSON body cap, never parsed; 30,000 deep fits the cap but not the parser's stack.
    r = stack.app.call("POST", "exports", data=b"[" * 100_000 + b"]" * 100_000)
    assert "64 KiB" in assert_error(r, 413, "BodyTooLarge")
    r = stack.app.call("POST", "exports", data=b'{"hub": ' + b"[" * 30_000 + b"]" * 30_000 + b"}")
    assert "nested too deeply" in assert_error(r, 400, "InvalidJson")
    assert_error(stack.app.call("POST", "exports", data=b"\0" * 20 * 2**20), 413, "BodyTooLarge")
    for hub in (["devhub"], {"name": "devhub"}, 7):
        r = stack.app.call("POST", "imports", json={"blob": "uploads/x.jsonl", "hub": hub})
        assert assert_error(r, 400, "InvalidField").startswith('"hub" in the body must be the name of a configured')
        assert r.json()["error"]["field"] == "hub"
        assert_error(stack.app.call("POST", "exports", json={"hub": hub}), 400, "InvalidField")
    for blob in ("uploads/", "/x.jsonl", "Bad_Container!/x.jsonl", "nothere.jsonl", "uploads/x\u0000.jsonl"):
        message = assert_error(stack.app.call("POST", "imports", json={"blob": blob}), 400, "InvalidField")
        assert '"<container>/<name>"' in message and "container name is 3-63 lowercase letters" in message, blob
    message = assert_error(stack.app.call("POST", "exports", json={"hubb": "devhub"}), 400, "UnknownField")
    assert message == 'unknown field "hubb" in the body: did you mean "hub"?'
    message = assert_error(stack.app.call("GET", "jobs", params={"after": "garbage"}), 400, "InvalidField")
    assert "after" in message
    assert_error(stack.app.call("GET", "jobs", params={"limt": "5"}), 400, "UnknownField")
    assert_error(stack.app.call("GET", "jobs/devhub/garbage"), 400, "InvalidField")
    assert_error(stack.app.call("POST", "jobs/devhub/garbage/cancel"), 400, "InvalidField")
    # The ndjson body has its own cap, below Azure's 100 MB, with the way around it.
    r = stack.app.call(
        "POST", "imports", data=b"\n" * (64 * 2**20 + 1), headers={"content-type": "application/x-ndjson"}
    )
    assert "uploads/ container" in assert_error(r, 413, "BodyTooLarge")
    assert stack.app.jobs() == [], "nothing refused started a job"
    assert "Traceback" not in stack.app.log()
    assert_alive(stack)


def test_iot_central_off_is_a_404_saying_how_to_turn_it_on_and_its_jobs_stay_readable(stack: Stack) -> None:
    stack.app.start()
    for path in ("central/plan", "central/apply", "central/backups"):
        message = assert_error(stack.app.call("POST", path, data=b"{}"), 404, "CentralNotConfigured")
        assert "IOTCENTRAL_APP_URL" in message
    # An upload under uploads/central/ while IoT Central is off is recorded as a rejected job in the central
    # partition: users read it like any other job.
    ledger = Ledger.from_service(stack.tables)
    draft = replace(Job.new("central", JobKind.CENTRAL_APPLY, datetime.now(UTC)), source="uploads/central/x.json")
    job, _ = ledger.create(advance(draft, JobState.REJECTED, now=draft.created))
    assert stack.app.job("central", job.job_id)["state"] == "rejected"
    assert [j["jobId"] for j in stack.app.jobs(hub="central")] == [job.job_id]
    assert_alive(stack)


def test_data_export_files_are_capped_and_a_deep_one_is_a_bad_document(central_stack: Stack) -> None:
    stack = central_stack
    stack.app.start()
    r = stack.app.call("POST", "central/plan", data=b"[" * 100_000 + b"]" * 100_000)
    assert "nested too deeply" in assert_error(r, 400, "InvalidDocument")
    r = stack.app.call(
        "POST", "central/plan", data=b" " * (4 * 2**20 + 1), headers={"content-type": "application/json"}
    )
    assert "4 MiB" in assert_error(r, 413, "BodyTooLarge")
    assert_error(stack.app.call("POST", "central/backups", json={"now": True}), 400, "UnknownField")
    assert_alive(stack)
