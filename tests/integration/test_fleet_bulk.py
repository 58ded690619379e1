"""Act on a query: the import file generated from a hub query, its plan, its run as a normal import job, and the
keys regenerateKeys mints never leaving the file the hub reads."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from emulators.azurite import Azurite
from emulators.iothub import IoTHubEmulator
from emulators.iothub.quotas import Profile
from shared.fleet.bulk import Bulk, InvalidBulk, write_bulk
from shared.iothub import IoTHubHTTPError, IoTHubThrottled
from shared.ledger import Job, JobKind, JobState
from shared.retry import RetryPolicy
from shared.storage import BlobRef

from .conftest import engine_on
from .helpers import KEY, Clock, Jobs, hub_call, run_to_end, upload
from .test_realistic_jobs import usage

QUERY = "SELECT * FROM devices WHERE tags.site = 'a'"


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


def test_an_invalid_query_is_refused(jobs: Jobs) -> None:
    with pytest.raises(InvalidBulk):
        make(jobs, "delete", query="SELECT COUNT() AS n FROM devices")
    with pytest.raises(InvalidBulk):
        make(jobs, "setTags", args={})
    with pytest.raises(IoTHubHTTPError) as caught:
        make(jobs, "delete", query="SELECT * FROM devices WHERE tags.site > 'a'")
    assert caught.value.status == 400


def test_disable_then_enable_changes_only_status(jobs: Jobs, iothub: IoTHubEmulator, clock: Clock) -> None:
    seed(jobs, clock)
    made = make(jobs, "disable")
    assert made.result.devices == 7
    lines = {x["id"]: x for x in lines_of(jobs, made.ref)}
    assert lines["q-0"] == {
        "id": "q-0",
        "importMode": "updateIfMatchETag",
        "eTag": device(iothub, "q-0")["etag"],
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
    ],
)
def test_a_device_changed_after_the_query_is_refused_not_overwritten(
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
    assert done.state is JobState.COMPLETED_WITH_ERRORS and done.failed_devices == 1, done.failure_reason
    refused = errors_of(jobs, done)
    assert [(e["deviceId"], e["errorCode"], e["errorName"]) for e in refused] == [("q-1", 412001, "PreconditionFailed")]
    after = device(iothub, "q-1")  # the other writer's change stands
    assert after["etag"] == before["etag"] and after["status"] == before["status"]
    assert hub_call(iothub, "GET", "/twins/q-1").json()["tags"] == twin_before["tags"]
    for other in ("q-0", "q-2", "q-3", "q-4", "q-edge", "q-x509"):
        if action == "delete":
            assert hub_call(iothub, "GET", f"/devices/{other}").status_code == 404
        elif action == "disable":
            assert device(iothub, other)["status"] == "disabled"
        else:
            assert hub_call(iothub, "GET", f"/twins/{other}").json()["tags"]["owner"] == "ops"


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
