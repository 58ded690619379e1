"""Act on a query: the import file generated from a hub query, its plan, its run as a normal import job, and the
keys regenerateKeys mints never leaving the file the hub reads."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import pytest

from emulators.azurite import Azurite
from emulators.iothub import IoTHubEmulator
from emulators.iothub.quotas import Profile
from shared.fleet.bulk import (
    CURSOR,
    DEVICES,
    PARTS,
    QUERY_PAGE_SIZE,
    QUERY_PATIENCE,
    Bulk,
    Cursor,
    InvalidBulk,
    continue_bulk,
    new_request,
)
from shared.iothub import IoTHubClient, IoTHubHTTPError, IoTHubThrottled
from shared.ledger import Job, JobKind, JobState
from shared.retry import RetryPolicy
from shared.storage import BlobRef, Storage

from .conftest import engine_on
from .helpers import KEY, Clock, Jobs, hub_call, run_to_end, upload
from .test_realistic_jobs import usage

QUERY = "SELECT * FROM devices WHERE tags.site = 'a'"


def write_bulk(
    storage: Storage,
    container: str,
    client: IoTHubClient,
    hub: str,
    *,
    query: str,
    action: str,
    args: Mapping[str, Any],
    now: datetime | None = None,
    page_size: int = QUERY_PAGE_SIZE,
    patience: float = QUERY_PATIENCE,
) -> Bulk:
    """A bulk made in one go, as its plan job makes it in slices (``kinds/plan.py``): ``new_request``, then
    ``continue_bulk`` until its file is written."""
    bulk_id, _ = new_request(storage, container, hub, query=query, action=action, args=args, now=now)
    while True:
        made = continue_bulk(storage, container, client, bulk_id, page_size=page_size, patience=patience)
        if isinstance(made, Bulk):
            return made


def seed(p: Jobs, clock: Clock) -> None:
    auth = {"type": "sas", "symmetricKey": {"primaryKey": KEY, "secondaryKey": KEY}}
    lines: list[dict[str, Any] | str] = [
        {"id": f"q-{i}", "status": "enabled", "authentication": auth, "tags": {"site": "a" if i < 5 else "b"}}
        for i in range(8)
    ]
    lines.append(
        {
            "id": "q-x509",
            "status": "enabled",
            "authentication": {"type": "selfSigned", "x509Thumbprint": {"primaryThumbprint": "A" * 40}},
            "tags": {"site": "a"},
        }
    )
    lines.append({"id": "q-edge", "status": "enabled", "capabilities": {"iotEdge": True}, "tags": {"site": "a"}})
    done = run_to_end(p, p.accept_upload(upload(p, f"seed-{clock.now:%H%M%S}.jsonl", lines), "devhub"), clock)
    assert done.state is JobState.COMPLETED, done.failure_reason


def make(p: Jobs, action: str, args: dict[str, Any] | None = None, query: str = QUERY) -> Bulk:
    return write_bulk(
        p.storage, p.containers.bulk, p.hubs["devhub"], "devhub", query=query, action=action, args=args or {}
    )


def lines_of(p: Jobs, ref: BlobRef) -> list[dict[str, Any]]:
    data = b"".join(p.storage.open_read(BlobRef(ref.container, ref.name)))
    return [json.loads(x) for x in data.splitlines() if x.strip()]


def device(emu: IoTHubEmulator, device_id: str) -> dict[str, Any]:
    response = hub_call(emu, "GET", f"/devices/{device_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def run(p: Jobs, made: Bulk, clock: Clock) -> Job:
    plan = run_to_end(
        p, p.engine.accept(p.engine.draft(JobKind.PLAN, "devhub", source=made.ref, keyed_by_source=False)), clock
    )
    assert plan.state is JobState.COMPLETED, plan.failure_reason
    done = run_to_end(p, p.accept_upload(made.ref, "devhub"), clock)
    assert done.state is JobState.COMPLETED, done.failure_reason
    return done


def test_query_devices_pages_through_every_match(jobs: Jobs, clock: Clock) -> None:
    seed(jobs, clock)
    client = jobs.hubs["devhub"]
    ids = sorted(t["deviceId"] for t in client.query_devices(QUERY, page_size=2))
    assert ids == ["q-0", "q-1", "q-2", "q-3", "q-4", "q-edge", "q-x509"]
    assert {t["deviceId"] for t in client.query_devices("SELECT * FROM devices", page_size=3)} >= set(ids)


def test_query_devices_pages_through_the_hubs_query_language(jobs: Jobs, clock: Clock) -> None:
    seed(jobs, clock)
    client = jobs.hubs["devhub"]
    query = (
        "SELECT * FROM devices WHERE (tags.site IN ['b'] OR NOT STARTSWITH(deviceId, 'q-')) "
        "OR (capabilities.iotEdge = true AND status != 'disabled')"
    )
    assert [t["deviceId"] for t in client.query_devices(query, page_size=2)] == ["q-5", "q-6", "q-7", "q-edge"]


def test_an_invalid_query_is_refused(jobs: Jobs) -> None:
    with pytest.raises(InvalidBulk):
        make(jobs, "delete", query="SELECT COUNT() AS n FROM devices")
    with pytest.raises(InvalidBulk):
        make(jobs, "setTags", args={})
    with pytest.raises(IoTHubHTTPError) as caught:
        make(jobs, "delete", query="SELECT * FROM devices WHERE tags.site = ")  # malformed: the hub says 400
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("SELECT * FROM devices WHERE tags.site = 'b' OR deviceId = 'q-0'", ["q-0", "q-5", "q-6", "q-7"]),
        ("SELECT * FROM devices WHERE deviceId IN ['q-1', 'q-edge', 'nope']", ["q-1", "q-edge"]),
        ("SELECT * FROM devices WHERE NOT tags.site = 'a' AND STARTSWITH(deviceId, 'q-')", ["q-5", "q-6", "q-7"]),
        (
            "SELECT * FROM devices WHERE STARTSWITH(deviceId, 'q-x') OR capabilities.iotEdge = true",
            ["q-edge", "q-x509"],
        ),
    ],
)
def test_a_bulk_selects_with_the_hubs_query_language(jobs: Jobs, clock: Clock, query: str, expected: list[str]) -> None:
    seed(jobs, clock)
    made = make(jobs, "disable", query=query)
    assert made.result.devices == len(expected)
    assert sorted(x["id"] for x in lines_of(jobs, made.ref)) == expected


def test_a_bulk_from_an_or_in_not_query_runs_as_an_import(jobs: Jobs, iothub: IoTHubEmulator, clock: Clock) -> None:
    seed(jobs, clock)
    query = "SELECT * FROM devices WHERE (tags.site = 'b' OR deviceId IN ['q-0']) AND NOT deviceId = 'q-7'"
    run(jobs, make(jobs, "disable", query=query), clock)
    disabled = sorted(d for d in [f"q-{i}" for i in range(8)] if device(iothub, d)["status"] == "disabled")
    assert disabled == ["q-0", "q-5", "q-6"]


def test_disable_then_enable_changes_only_status(jobs: Jobs, iothub: IoTHubEmulator, clock: Clock) -> None:
    seed(jobs, clock)
    made = make(jobs, "disable")
    assert made.result.devices == 7
    lines = {x["id"]: x for x in lines_of(jobs, made.ref)}
    assert lines["q-0"] == {
        "id": "q-0",
        "importMode": "updateIfMatchETag",
        "eTag": device(iothub, "q-0")["etag"],
        "twinETag": hub_call(iothub, "GET", "/twins/q-0").json()["etag"],
        "status": "disabled",
        "capabilities": {"iotEdge": False},
    }
    assert lines["q-edge"]["capabilities"] == {"iotEdge": True}
    assert lines["q-x509"]["authentication"]["type"] == "selfSigned"
    run(jobs, made, clock)
    for i in range(8):
        d = device(iothub, f"q-{i}")
        assert d["status"] == ("disabled" if i < 5 else "enabled")
        assert d["authentication"]["symmetricKey"]["primaryKey"] == KEY  # keys kept
    assert device(iothub, "q-edge")["capabilities"]["iotEdge"] is True
    assert device(iothub, "q-x509")["authentication"]["x509Thumbprint"]["primaryThumbprint"] == "A" * 40
    run(jobs, make(jobs, "enable"), clock)
    assert all(device(iothub, f"q-{i}")["status"] == "enabled" for i in range(5))


def test_set_tags_and_delete(jobs: Jobs, iothub: IoTHubEmulator, clock: Clock) -> None:
    seed(jobs, clock)
    made = make(jobs, "setTags", {"tags": {"owner": "ops"}})
    assert lines_of(jobs, made.ref)[0] == {
        "id": "q-0",
        "importMode": "updateTwinIfMatchETag",
        "twinETag": hub_call(iothub, "GET", "/twins/q-0").json()["etag"],
        "tags": {"site": "a", "owner": "ops"},
    }
    run(jobs, made, clock)
    twin = hub_call(iothub, "GET", "/twins/q-0").json()
    assert twin["tags"]["owner"] == "ops" and twin["tags"]["site"] == "a"
    gone = make(jobs, "delete", query="SELECT * FROM devices WHERE tags.site = 'b'")
    assert {x["importMode"] for x in lines_of(jobs, gone.ref)} == {"deleteIfMatchETag"}
    assert all(x["eTag"] for x in lines_of(jobs, gone.ref))
    run(jobs, gone, clock)
    assert hub_call(iothub, "GET", "/devices/q-5").status_code == 404
    assert hub_call(iothub, "GET", "/devices/q-0").status_code == 200


def test_regenerate_keys_never_leaks_a_key(
    jobs: Jobs, iothub: IoTHubEmulator, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    seed(jobs, clock)
    caplog.set_level(logging.DEBUG)
    made = make(jobs, "regenerateKeys")
    assert (made.result.devices, made.result.skipped) == (6, 1)  # the X.509 device has no keys
    minted = {x["id"]: x["authentication"]["symmetricKey"]["primaryKey"] for x in lines_of(jobs, made.ref)}
    assert len(set(minted.values())) == 6 and KEY not in minted.values()
    done = run(jobs, made, clock)
    for device_id, key in minted.items():
        assert device(iothub, device_id)["authentication"]["symmetricKey"]["primaryKey"] == key
    assert jobs.storage.properties(BlobRef(made.ref.container, made.ref.name)) is None  # deleted after the job
    seen = [json.dumps(r.__dict__, default=str) for r in caplog.records]
    seen += [
        json.dumps(j.__dict__ if hasattr(j, "__dict__") else str(j), default=str)
        for j in jobs.ledger.list_jobs("devhub", limit=50)[0]
    ]
    seen.append(json.dumps(made.public()))
    for path in done.reports.values():
        container, _, name = path.partition("/")
        seen.append(b"".join(jobs.storage.open_read(BlobRef(container, name))).decode())
    blob = "\n".join(seen)
    assert not [k for k in minted.values() if k in blob]


def errors_of(p: Jobs, job: Job) -> list[dict[str, Any]]:
    container, _, name = job.reports["errors"].partition("/")
    data = b"".join(p.storage.open_read(BlobRef(container, name)))
    return [json.loads(x) for x in data.splitlines() if x.strip()]


@pytest.mark.parametrize(
    ("action", "args", "change"),
    [
        # another writer changes the identity (device ETag), or the twin (twin ETag), after the query
        ("disable", {}, ("PUT", "/devices/q-1", {"deviceId": "q-1", "status": "enabled", "statusReason": "moved"})),
        ("delete", {}, ("PUT", "/devices/q-1", {"deviceId": "q-1", "status": "enabled", "statusReason": "moved"})),
        ("setTags", {"tags": {"owner": "ops"}}, ("PATCH", "/twins/q-1", {"tags": {"site": "a", "room": "9"}})),
        # issue 20 item 3: moved out of the query (site a -> b) by a tag change, which moves the twin's ETag only
        ("disable", {}, ("PATCH", "/twins/q-1", {"tags": {"site": "b"}})),
        ("enable", {}, ("PATCH", "/twins/q-1", {"tags": {"site": "b"}})),
        ("regenerateKeys", {}, ("PATCH", "/twins/q-1", {"tags": {"site": "b"}})),
    ],
)
def test_a_device_changed_after_the_query_is_skipped_not_overwritten(
    jobs: Jobs,
    iothub: IoTHubEmulator,
    clock: Clock,
    *,
    action: str,
    args: dict[str, Any],
    change: tuple[str, str, Any],
) -> None:
    seed(jobs, clock)
    made = make(jobs, action, args)
    plan = run_to_end(
        jobs,
        jobs.engine.accept(jobs.engine.draft(JobKind.PLAN, "devhub", source=made.ref, keyed_by_source=False)),
        clock,
    )
    assert plan.state is JobState.COMPLETED, plan.failure_reason
    method, path, body = change
    if method == "PUT":
        current = device(iothub, "q-1")
        body = {**current, **body}
    changed = hub_call(iothub, method, path, body=body, extra={"If-Match": "*"})
    assert changed.status_code == 200, changed.text
    before = device(iothub, "q-1")
    twin_before = hub_call(iothub, "GET", "/twins/q-1").json()

    done = run_to_end(jobs, jobs.accept_upload(made.ref, "devhub"), clock)
    # not acted on, and reported as skipped with the reason: not a device error
    assert done.state is JobState.COMPLETED and done.failed_devices == 0, done.failure_reason
    assert "errors" not in done.reports
    skipped = report_lines(jobs, done.reports["skipped"])
    assert [(e["deviceId"], e["errorCode"]) for e in skipped] == [("q-1", 412001)]
    assert "changed since the plan" in skipped[0]["reason"]
    assert any(n.startswith("skipped 1 device(s): changed since the plan") for n in done.notes)
    after = device(iothub, "q-1")  # the other writer's change stands
    assert after["etag"] == before["etag"] and after["status"] == before["status"]
    assert after["authentication"] == before["authentication"]
    assert hub_call(iothub, "GET", "/twins/q-1").json()["tags"] == twin_before["tags"]
    for other in ("q-0", "q-2", "q-3", "q-4", "q-edge", "q-x509"):
        if action == "delete":
            assert hub_call(iothub, "GET", f"/devices/{other}").status_code == 404
        elif action == "disable":
            assert device(iothub, other)["status"] == "disabled"
        elif action == "setTags":
            assert hub_call(iothub, "GET", f"/twins/{other}").json()["tags"]["owner"] == "ops"
    if action == "regenerateKeys":
        assert device(iothub, "q-0")["authentication"]["symmetricKey"]["primaryKey"] != KEY


def report_lines(p: Jobs, path: str) -> list[dict[str, Any]]:
    container, _, name = path.partition("/")
    data = b"".join(p.storage.open_read(BlobRef(container, name)))
    return [json.loads(x) for x in data.splitlines() if x.strip()]


@pytest.mark.realistic
def test_paging_a_query_waits_out_the_hubs_query_quota(
    azurite: Azurite, realistic_hub: IoTHubEmulator, clock: Clock
) -> None:
    hands_back = RetryPolicy(
        max_retries=6, backoff_factor=0.01, backoff_max=0.05, total_timeout=30, max_retry_after=0.5
    )
    p = engine_on(azurite, realistic_hub, clock, retry=hands_back)
    wanted = {f"z-{i:02}" for i in range(50)}
    seeded = run_to_end(
        p,
        p.accept_upload(upload(p, "many.jsonl", [{"id": i, "status": "enabled"} for i in sorted(wanted)]), "devhub"),
        clock,
    )
    assert seeded.state is JobState.COMPLETED, seeded.failure_reason
    # Then an S1 unit answers 20 queries a (scaled) minute; nothing held back by traffic shaping, no query lag (not what
    # this is about). The client hands every Retry-After back to its caller, as it does one over 30 s. A minute
    # scaled to 15 s (refilling 1.3 queries a second): 25 pages outrun the quota even on a loaded machine (at 1/20,
    # 6.7 a second, a run slowed by parallel tests was not refused at all).
    realistic_hub.set_profile(Profile("S1", 1, time_scale=0.25, shaping_seconds=0, query_lag=0))
    query = "SELECT * FROM devices WHERE status = 'enabled'"

    def bulk(patience: float) -> Bulk:
        hub = p.hubs["devhub"]
        return write_bulk(
            p.storage,
            p.containers.bulk,
            hub,
            "devhub",
            query=query,
            action="disable",
            args={},
            page_size=2,
            patience=patience,
        )

    with pytest.raises(IoTHubThrottled):  # 25 pages of 2 are more than the quota holds
        bulk(patience=0)
    made = bulk(patience=60)
    assert made.result.devices == 50 and {x["id"] for x in lines_of(p, made.ref)} == wanted
    assert usage(realistic_hub)["throttled"]["query"] >= 2  # refused on both runs, and the second still completed


# --- a bulk as a queued job (issue 20 item 3): the plan job reads the query, writes the file and plans it ---------


def queued_bulk(p: Jobs, action: str, query: str = QUERY) -> tuple[str, Job]:
    bulk_id, ref = new_request(p.storage, p.containers.bulk, "devhub", query=query, action=action, args={})
    return bulk_id, p.engine.accept(p.engine.draft(JobKind.PLAN, "devhub", source=ref, key=f"bulk-{bulk_id}"))


def test_a_bulk_is_read_and_planned_by_its_queued_plan_job_in_slices(jobs: Jobs, clock: Clock) -> None:
    seed(jobs, clock)
    plan_kind = jobs.engine.kinds[JobKind.PLAN]
    plan_kind.bulk_page_size, plan_kind.bulk_slice = 2, 0.0  # type: ignore[attr-defined]  # a page per submission
    bulk_id, job = queued_bulk(jobs, "disable")
    assert job.state is JobState.QUEUED  # accepted without asking the hub
    seen: list[str] = []
    for _ in range(50):
        jobs.monitor_pass("devhub")
        job = jobs.ledger.get("devhub", job.job_id)
        seen.append(job.waiting_for or "")
        if job.state.is_terminal:
            break
        clock.advance(0.5)
    assert job.state is JobState.COMPLETED, job.failure_reason
    # it gave the monitor back after each slice, and said how far it got
    assert any("reading the query: 4 device(s) in 2 page(s) so far" in w for w in seen), seen
    doc = json.loads(b"".join(jobs.storage.open_read(BlobRef(*job.reports["plan"].split("/", 1)))))
    assert doc["bulk"]["devices"] == 7 and doc["totals"]["update"] == 7
    ids = [x["id"] for x in lines_of(jobs, BlobRef(jobs.containers.bulk, f"{bulk_id}/{DEVICES}"))]
    assert sorted(ids) == ["q-0", "q-1", "q-2", "q-3", "q-4", "q-edge", "q-x509"]  # each once
    assert jobs.storage.list_names(jobs.containers.bulk, f"{bulk_id}/{PARTS}/") == []  # the parts are dropped
    assert jobs.storage.properties(BlobRef(jobs.containers.bulk, f"{bulk_id}/{CURSOR}")) is None


def test_a_read_stopped_mid_query_goes_on_without_writing_a_line_twice(jobs: Jobs, clock: Clock) -> None:
    seed(jobs, clock)
    bulk_id, _ = new_request(jobs.storage, jobs.containers.bulk, "devhub", query=QUERY, action="delete", args={})
    client = jobs.hubs["devhub"]
    first = continue_bulk(jobs.storage, jobs.containers.bulk, client, bulk_id, page_size=3, budget=0)
    assert isinstance(first, Cursor) and (first.parts, first.devices) == (1, 3) and not first.done
    # the host was killed after it wrote the next part and before it saved the cursor: that part is written again
    jobs.storage.upload_bytes(
        jobs.containers.bulk, f"{bulk_id}/{PARTS}/{first.parts:05d}.txt", b'{"id":"q-0","importMode":"delete"}\n'
    )
    made = first
    while not isinstance(made, Bulk):
        made = continue_bulk(jobs.storage, jobs.containers.bulk, client, bulk_id, page_size=3, budget=0)
    ids = [x["id"] for x in lines_of(jobs, made.ref)]
    assert len(ids) == len(set(ids)) == made.result.devices == 7
    again = continue_bulk(jobs.storage, jobs.containers.bulk, client, bulk_id, page_size=3, budget=0)
    assert isinstance(again, Bulk) and again.ref.etag == made.ref.etag  # read once: a later call finds it


def test_a_query_the_hub_refuses_fails_the_bulks_plan_job_with_its_message(jobs: Jobs, clock: Clock) -> None:
    # Malformed (the hub refuses it); the app's own check only asks for SELECT * FROM devices.
    _, job = queued_bulk(jobs, "delete", query="SELECT * FROM devices WHERE tags.site = ")
    done = run_to_end(jobs, job, clock)
    assert done.state is JobState.FAILED and "the hub refused the query" in (done.failure_reason or "")
