"""The e2e harness itself: the host stops cleanly even when started with SIGINT ignored, and a blob listing that
fails raises instead of reading as an empty container."""

from __future__ import annotations

import signal
import socket
import struct

import pytest
import requests
from azure.core.exceptions import HttpResponseError

from emulators.functions_host import FUNCTION_KEY, MASTER_KEY
from tests.integration.helpers import control
from tests.integration.helpers import device_line as dev
from tests.waiting import wait_until

from .app import Stack


def test_stop_ends_a_host_that_ignores_sigint_cleanly(stack: Stack) -> None:
    # As under nohup or a CI runner: the child inherits SIGINT ignored, so Python never raises KeyboardInterrupt.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        stack.app.start()
    finally:
        signal.signal(signal.SIGINT, previous)
    stack.app.stop()
    assert stack.app.proc is not None
    assert stack.app.proc.returncode == 0, stack.app.log()[-2000:]  # not -9: it was not killed after the timeout
    log = stack.app.log()
    assert "stopping (SIGTERM)" in log and "stopped" in log
    assert "Traceback" not in log


def test_names_of_a_missing_container_is_empty_but_a_failed_listing_raises(stack: Stack) -> None:
    assert stack.names("no-such-container") == []
    with pytest.raises(HttpResponseError):
        stack.names("Not_A_Container_Name")  # refused by the service: not "nothing there"


def test_the_admin_endpoint_answers_at_once_for_timers_and_the_blob_trigger(stack: Stack) -> None:
    # As Azure: 202 at once for any non-HTTP function; callers wait on what it does.
    stack.app.start()
    control(stack.hub, "jobs", {"paused": True})  # the export the timer queues cannot finish yet
    r = requests.post(
        f"{stack.app.url}/admin/functions/nightly_backup", headers={"x-functions-key": MASTER_KEY}, json={}, timeout=10
    )
    assert r.status_code == 202 and r.json()["status"] == "accepted"
    (job,) = stack.app.wait_jobs(1, states={"running", "submitting", "queued"})
    assert job["kind"] == "export"  # it ran, and the call did not wait for its end
    control(stack.hub, "jobs", {"paused": False})
    stack.app.wait_jobs(1)
    # The blob trigger, on a blob of its container; a wrong input is refused.
    stack.drop("by-admin.jsonl", [dev("admin-1")])
    url = f"{stack.app.url}/admin/functions/import_on_upload"
    bad = requests.post(url, headers={"x-functions-key": MASTER_KEY}, json={"input": "reports/x"}, timeout=10)
    assert bad.status_code == 400
    ok = requests.post(
        url, headers={"x-functions-key": MASTER_KEY}, json={"input": "uploads/by-admin.jsonl"}, timeout=10
    )
    assert ok.status_code == 202
    jobs = stack.app.wait_jobs(2)
    assert [j["source"] for j in jobs if j["kind"] == "import"] == ["uploads/by-admin.jsonl"]


def test_a_client_that_goes_away_mid_reply_is_one_line_in_the_host_log_not_a_traceback(stack: Stack) -> None:
    app = stack.app.start()
    went_away = "went away before its reply was written"
    # Each request sent, then its socket reset at once (SO_LINGER 0: an RST, as a killed client leaves): the host
    # reads or writes a connection that is gone. One asks for a reply the app takes a while to make (the write
    # fails), one for a reply made at once (the read may fail first).
    for path in ("status.json", "health"):
        request = f"GET /api/{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nx-functions-key: {FUNCTION_KEY}\r\n\r\n"
        with socket.create_connection(("127.0.0.1", app.port), timeout=10) as client:
            client.sendall(request.encode())
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # the host logs each in its own thread
    wait_until(lambda: stack.app.log().count(went_away) >= 2, interval=0.1, what="both resets logged")
    assert requests.get(f"{app.url}/api/health", timeout=10).status_code == 200  # the host serves on
    log = stack.app.log()
    assert log.count(went_away) == 2, log[-3000:]
    assert "Traceback" not in log and "Exception occurred during processing" not in log, log[-3000:]
