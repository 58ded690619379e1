"""The status page's arithmetic (elapsed, ETA, devices done, failures first) and how the page itself is served."""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from shared.api import Request, status_page
from shared.ledger import Job, JobKind, JobState
from shared.status import _attention_order, devices_done, timing

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _job(kind: JobKind = JobKind.IMPORT, state: JobState = JobState.RUNNING, **fields: object) -> Job:
    job = Job.new("devhub", kind, T0)
    return replace(replace(job, **fields), state=state)  # test data: any state, without the ledger's moves


def test_a_running_job_has_elapsed_time_from_its_start_and_an_eta_from_its_pace() -> None:
    job = _job(started=T0 + timedelta(seconds=30), progress=25, lines=1000)
    now = T0 + timedelta(seconds=90)
    assert timing(job, now) == {"elapsedSeconds": 60.0, "etaSeconds": 180.0}  # 25% in 60 s: 75% in 180 s
    assert devices_done(job) == 250


def test_no_eta_before_a_job_has_moved_and_a_finished_job_has_its_duration() -> None:
    assert timing(_job(started=T0, progress=0), T0 + timedelta(seconds=5))["etaSeconds"] is None
    queued = _job(state=JobState.QUEUED)
    assert timing(queued, T0 + timedelta(seconds=7)) == {"elapsedSeconds": 7.0, "etaSeconds": None}
    done = _job(state=JobState.COMPLETED, started=T0, updated=T0 + timedelta(seconds=42), progress=100, lines=9)
    assert timing(done, T0 + timedelta(hours=3)) == {"elapsedSeconds": 42.0, "etaSeconds": None}
    assert devices_done(done) == 9


def test_an_export_tells_its_devices_only_once_it_has_ended() -> None:
    assert devices_done(_job(JobKind.EXPORT, progress=50)) is None
    assert devices_done(_job(JobKind.EXPORT, JobState.COMPLETED, devices=120, progress=100)) == 120


def test_failures_are_listed_first_and_newest_first_within_an_outcome() -> None:
    jobs = [
        {"jobId": "1", "state": "completed"},
        {"jobId": "2", "state": "failed"},
        {"jobId": "3", "state": "completed_with_errors"},
        {"jobId": "4", "state": "rejected"},
        {"jobId": "5", "state": "failed"},
        {"jobId": "0", "state": "cancelled"},
    ]
    assert [j["jobId"] for j in _attention_order(jobs)] == ["2", "5", "4", "3", "0", "1"]


def test_the_page_is_html_whose_own_script_and_style_alone_may_run() -> None:
    reply = status_page(Request())
    assert (reply.status, reply.media) == (200, "text/html")
    html = reply.content()
    csp = reply.headers["Content-Security-Policy"]
    for tag in ("script", "style"):
        body = re.search(rf"<{tag}>(.*?)</{tag}>", html, re.S)
        assert body is not None
        digest = base64.b64encode(hashlib.sha256(body.group(1).encode()).digest()).decode()
        assert f"{tag}-src 'sha256-{digest}'" in csp
    assert "unsafe-inline" not in csp and "default-src 'none'" in csp
    # The page's URL carries the function key (?code=): no referrer may take it to storage or anywhere else.
    assert reply.headers["Referrer-Policy"] == "no-referrer"
    assert "fetch(dataUrl" in html and "status.json" in html


def test_the_page_takes_no_query_but_the_key() -> None:
    assert status_page(Request(query={"code": "k"})).status == 200
    refused = status_page(Request(query={"hub": "devhub"}))
    assert refused.status == 400 and refused.body["error"]["code"] == "UnknownField"


def test_a_migration_s_steps_tell_their_devices_as_an_export_and_an_import_do() -> None:
    exported = _job(JobKind.MIGRATION, state=JobState.COMPLETED, progress=100, devices=12)
    assert devices_done(exported) == 12
    assert devices_done(_job(JobKind.MIGRATION, progress=50, devices=0)) is None
    assert devices_done(_job(JobKind.MIGRATION_IMPORT, progress=50, lines=12)) == 6
