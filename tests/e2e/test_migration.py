"""Migrate a hub over HTTP through the local host, with two IoT Hub emulators (``devhub`` -> ``stagehub``), in fast
and in realistic mode: the target ends equal to the source, the migration is followed by its stage and progress,
a host killed mid-way resumes it without repeating a step, and bad requests are refused with what to change."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from emulators.azurite import REPO, Azurite
from emulators.functions_host import FUNCTION_KEY
from emulators.iothub import IoTHubEmulator
from shared.ledger import TERMINAL_STATES
from tests.integration.helpers import emptied, hub_call, running_emulator
from tests.waiting import wait_until

from .app import App, Stack, settings
from .conftest import REALISTIC

KEY = "c2VjcmV0LWRldmljZS1rZXktMDEyMzQ1Njc4OWFiY2Q="
SCRIPT = Path(sys.executable).parent / "iotjobs"


def _second(tmp: Path, first: IoTHubEmulator, **options: Any) -> Iterator[IoTHubEmulator]:
    assert first.ca_path is not None
    with running_emulator(tmp, tls_dir=first.ca_path.parent, **options) as emu:
        yield emu


@pytest.fixture(scope="session")
def stage_server(tmp_path_factory: pytest.TempPathFactory, hub_server: IoTHubEmulator) -> Iterator[IoTHubEmulator]:
    yield from _second(tmp_path_factory.mktemp("stagehub-e2e"), hub_server)


@pytest.fixture(scope="session")
def realistic_stage_server(
    tmp_path_factory: pytest.TempPathFactory, realistic_hub_server: IoTHubEmulator
) -> Iterator[IoTHubEmulator]:
    yield from _second(tmp_path_factory.mktemp("stagehub-e2e-realistic"), realistic_hub_server, profile=REALISTIC)


@pytest.fixture(params=["fast", pytest.param("realistic", marks=pytest.mark.realistic)])
def two_hubs(
    request: pytest.FixtureRequest, tmp_path: Path, azurite: Azurite, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Stack, IoTHubEmulator]]:
    """The app with two hubs: ``devhub`` (the stack's hub) and ``stagehub``; realistic: both throttle as S1 hubs
    with one unit, every delay at 1/20."""
    yield from _two_hubs(request, request.param, tmp_path, azurite, monkeypatch)


@pytest.fixture
def fast_two_hubs(
    request: pytest.FixtureRequest, tmp_path: Path, azurite: Azurite, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Stack, IoTHubEmulator]]:
    yield from _two_hubs(request, "fast", tmp_path, azurite, monkeypatch)


def _two_hubs(
    request: pytest.FixtureRequest, mode: str, tmp_path: Path, azurite: Azurite, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Stack, IoTHubEmulator]]:
    if mode == "realistic":
        source: IoTHubEmulator = request.getfixturevalue("realistic_hub_server")
        target: IoTHubEmulator = request.getfixturevalue("realistic_stage_server")
        for emu in (source, target):
            emu.set_profile(REALISTIC)
    else:
        source = request.getfixturevalue("hub_server")
        target = request.getfixturevalue("stage_server")
    emptied(target, monkeypatch)
    emptied(source, monkeypatch)  # last: REQUESTS_CA_BUNDLE is the one CA of both
    values = settings(
        azurite,
        source,
        IOTHUB_HUBS="devhub,stagehub",
        IOTHUB_STAGEHUB_CONNECTION_STRING=target.connection_string("iothubowner"),
    )
    app = App(tmp_path, values)
    yield Stack(azurite, source, app), target
    app.stop()


def auth(key: str = KEY) -> dict[str, Any]:
    return {"type": "sas", "symmetricKey": {"primaryKey": key, "secondaryKey": key}}


def fleet(n: int) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    for i in range(n):
        lines.append({"id": f"m-{i}", "status": "enabled", "authentication": auth(), "tags": {"site": f"s{i % 3}"}})
        if i % 5 == 0:
            lines.append({"id": f"m-{i}", "moduleId": "sensor", "authentication": auth()})
    lines.append({"id": "gw", "status": "enabled", "capabilities": {"iotEdge": True}, "authentication": auth()})
    return lines


def registry(emu: IoTHubEmulator) -> dict[str, dict[str, Any]]:
    """The hub's devices as an operator reads them: status and tags (twin), primary key (identity)."""
    out = {}
    for twin in _ok(hub_call(emu, "GET", "/devices", extra={"x-ms-max-item-count": "1000"})):
        device = _ok(hub_call(emu, "GET", f"/devices/{twin['deviceId']}"))
        tags = _ok(hub_call(emu, "GET", f"/twins/{twin['deviceId']}")).get("tags") or {}
        out[twin["deviceId"]] = {
            "status": device.get("status"),
            "tags": tags,
            "key": ((device.get("authentication") or {}).get("symmetricKey") or {}).get("primaryKey"),
        }
    return out


def _ok(r: requests.Response) -> Any:
    assert r.status_code == 200, r.text
    return r.json()


def follow(stack: Stack, migration: dict[str, Any], until: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """GET the migration until ``until`` holds; the timeout only stops a hung test."""
    if until(migration):
        return migration

    def get() -> dict[str, Any]:
        r = stack.app.call("GET", f"migrations/{migration['from']}/{migration['migrationId']}")
        assert r.status_code == 200, r.text
        seen: dict[str, Any] = r.json()
        return seen

    return wait_until(
        get, until, deadline=240, interval=0.3, what=lambda: f"migration stuck\n{stack.app.log()[-3000:]}"
    )


def ended(doc: dict[str, Any]) -> bool:
    return doc["state"] in TERMINAL_STATES


def test_a_hub_migrated_over_http_is_verified_device_by_device(two_hubs: tuple[Stack, IoTHubEmulator]) -> None:
    stack, target = two_hubs
    stack.app.start()
    stack.drop("seed.jsonl", fleet(12))
    stack.app.wait_jobs(1)

    r = stack.app.call("POST", "migrations", json={"from": "devhub", "to": "stagehub", "mode": "create"})
    assert r.status_code == 202, r.text
    started = r.json()
    assert (started["from"], started["to"], started["includeKeys"], started["stage"]) == (
        "devhub",
        "stagehub",
        True,
        "export",
    )
    again = stack.app.call("POST", "migrations", json={"from": "devhub", "to": "stagehub"})
    assert again.json()["migrationId"] == started["migrationId"]  # sent twice while under way: one migration

    seen: list[tuple[str, int]] = []

    def record(doc: dict[str, Any]) -> bool:
        seen.append((doc["stage"], doc["progress"]))
        return ended(doc)

    done = follow(stack, started, record)
    assert done["state"] == "completed", json.dumps(done)[:3000]
    assert done["stage"] == "done" and done["progress"] == 100
    # Followed step by step: the stages come in order and the progress never goes back.
    order = ["export", "import", "verify", "done"]
    assert [order.index(stage) for stage, _ in seen] == sorted(order.index(stage) for stage, _ in seen), seen
    assert [progress for _, progress in seen] == sorted(progress for _, progress in seen), seen
    verification = done["verification"]
    assert (verification["compared"], verification["equal"], verification["missing"]) == (13, 12, 0)
    assert verification["counts"]["source"] == verification["counts"]["target"]
    assert {d["moduleId"] for d in verification["explainedDifferences"]} == {"$edgeAgent", "$edgeHub"}
    assert set(done["links"]) >= {"verify.migration", "export.manifest", "import.summary"}

    moved = registry(target)
    assert set(moved) == {f"m-{i}" for i in range(12)} | {"gw"}
    assert moved["m-4"] == {"status": "enabled", "tags": {"site": "s1"}, "key": KEY}  # keys came along
    # No key in any reply, the ledger, the reports or the log.
    jobs = [j for j in stack.app.jobs() if j["kind"].startswith("migration")]
    assert len(jobs) == 3
    assert KEY not in json.dumps(done) + json.dumps(jobs) + stack.app.log()
    for link in done["links"].values():
        assert KEY not in requests.get(link, timeout=10).text


def test_a_host_killed_mid_migration_resumes_it_without_repeating_a_step(
    two_hubs: tuple[Stack, IoTHubEmulator],
) -> None:
    stack, target = two_hubs
    stack.app.start()
    stack.drop("seed.jsonl", fleet(8))
    stack.app.wait_jobs(1)
    stack.app.stop()
    # Killed right after the export's end queued the import, before the export's job recorded its end.
    stack.app.start("--crash-at", "harvested")
    r = stack.app.call("POST", "migrations", json={"from": "devhub", "to": "stagehub", "mode": "createOrUpdate"})
    assert r.status_code == 202, r.text
    assert stack.app.wait_exit() == 86
    stack.app.start()

    done = follow(stack, r.json(), ended)

    assert done["state"] == "completed", json.dumps(done)[:3000]
    kinds = [j["kind"] for j in stack.app.jobs() if j["kind"].startswith("migration")]
    assert sorted(kinds) == ["migration", "migration_import", "migration_verify"]  # each step once
    assert len(registry(target)) == 9


def test_bad_migration_requests_are_refused_with_what_to_change(
    fast_two_hubs: tuple[Stack, IoTHubEmulator],
) -> None:
    stack, _ = fast_two_hubs
    stack.app.start()
    for body, status, code, says in (
        ({"from": "devhub", "to": "devhub"}, 400, "SameHub", "two different hubs"),
        ({"from": "devhub", "to": "nohub"}, 404, "UnknownHub", "stagehub"),
        ({"from": "nohub", "to": "stagehub"}, 404, "UnknownHub", "not configured"),
        ({"from": "devhub", "to": "stagehub", "mode": "merge"}, 400, "InvalidField", "createOrUpdate"),
        ({"from": "devhub", "to": "stagehub", "includeKeys": "yes"}, 400, "InvalidField", "true or false"),
        ({"from": "devhub", "too": "stagehub"}, 400, "UnknownField", "to"),
        ({"from": "devhub"}, 400, "MissingField", "to"),
    ):
        r = stack.app.call("POST", "migrations", json=body)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text
        assert says in r.json()["error"]["message"], r.text
    missing = stack.app.call("GET", "migrations/devhub/0000000000000-000000")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "JobNotFound")
    # An ordinary job is not a migration.
    stack.drop("one.jsonl", fleet(1))
    [job] = stack.app.wait_jobs(1)
    other = stack.app.call("GET", f"migrations/devhub/{job['jobId']}")
    assert other.status_code == 404, other.text
    assert not [j for j in stack.app.jobs() if j["kind"].startswith("migration")]


def test_iotjobs_migrate_follows_a_migration_and_exits_with_its_outcome(
    fast_two_hubs: tuple[Stack, IoTHubEmulator], tmp_path: Path
) -> None:
    stack, target = fast_two_hubs
    stack.app.start()
    stack.drop("seed.jsonl", fleet(5))
    stack.app.wait_jobs(1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTJOBS_")}
    env.update(IOTJOBS_URL=stack.app.url, IOTJOBS_KEY=FUNCTION_KEY, PYTHONPATH=str(REPO))

    def iotjobs(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SCRIPT), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
        )

    done = iotjobs("migrate", "--from", "devhub", "--to", "stagehub", "--follow")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "devhub -> stagehub (create, keys included): completed at done" in done.stdout
    assert "verified: all 6 device(s) of devhub are in stagehub alike" in done.stdout
    assert "devices 6 -> 6, Edge devices 1 -> 1, modules 3 -> 3" in done.stdout, done.stdout
    assert KEY not in done.stdout + done.stderr
    migration_id = done.stdout.split("migration ", 1)[1].split()[0]

    # Again with create: every device is there already, so each create is refused and reported (exit 5).
    again = iotjobs("migrate", "--from", "devhub", "--to", "stagehub", "--follow")
    assert again.returncode == 5, again.stdout + again.stderr
    assert "completed_with_errors" in again.stdout
    read = iotjobs("--json", "migrate", "--from", "devhub", "--id", migration_id)
    assert read.returncode == 0 and json.loads(read.stdout)["state"] == "completed", read.stderr
    # What the app refuses exits 1 with its message; a usage error exits 2.
    same = iotjobs("migrate", "--from", "devhub", "--to", "devhub")
    assert same.returncode == 1 and "SameHub" in same.stderr, same.stderr
    assert iotjobs("migrate", "--from", "devhub").returncode == 2
    assert iotjobs("migrate", "--to", "stagehub").returncode == 2
    assert len(registry(target)) == 6
