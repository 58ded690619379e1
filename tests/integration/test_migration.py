"""Migrating a hub to another (two IoT Hub emulators sharing one CA): export, import, verify, each a job on the slot
of its hub; the target ends equal to the source by export; the report lists what differs and why; a crash between
steps never queues a step twice."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from emulators.azurite import Azurite
from emulators.iothub import IoTHubEmulator
from shared.kinds.migration import import_key, verify_key
from shared.ledger import Job, JobKind, JobState
from shared.storage import BlobRef
from shared.views import migration_view

from .conftest import engine_on
from .helpers import KEY, Clock, Jobs, emptied, hub_call, run_to_end, running_emulator, upload, wait_for, wait_until
from .test_realistic_jobs import config_call, configuration, configurations
from .test_safety import _stable, read

OTHER = "b3RoZXIta2V5LW90aGVyLWtleS1vdGhlci1rZXktMTIz"
THUMB = "A" * 40


@pytest.fixture(scope="session")
def stage_server(
    tmp_path_factory: pytest.TempPathFactory, azurite: Azurite, iothub_server: IoTHubEmulator
) -> Iterator[IoTHubEmulator]:
    """A second hub, trusted through the first one's CA (one REQUESTS_CA_BUNDLE for both)."""
    assert iothub_server.ca_path is not None
    with running_emulator(
        tmp_path_factory.mktemp("stagehub"),
        storage_identity=azurite.connection_string,
        tls_dir=iothub_server.ca_path.parent,
    ) as emu:
        yield emu


@pytest.fixture
def pair(
    azurite: Azurite, iothub: IoTHubEmulator, stage_server: IoTHubEmulator, clock: Clock, monkeypatch: Any
) -> Jobs:
    """The job engine with two hubs: ``devhub`` (the source) and ``stagehub`` (the target), both emptied."""
    stage = emptied(stage_server, monkeypatch)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(iothub.ca_path))
    return engine_on(azurite, iothub, clock, more_hubs={"stagehub": stage})


def auth(key: str = KEY) -> dict[str, Any]:
    return {"type": "sas", "symmetricKey": {"primaryKey": key, "secondaryKey": key}}


def fleet(n: int = 40) -> list[dict[str, Any] | str]:
    """Devices with keys, tags and desired properties, some disabled, some with modules; an x509 device; an Edge
    gateway with a child."""
    lines: list[dict[str, Any] | str] = []
    for i in range(n):
        lines.append(
            {
                "id": f"d-{i}",
                "status": "disabled" if i % 9 == 0 else "enabled",
                "authentication": auth(),
                "tags": {"site": f"s{i % 3}", "n": i},
                "properties": {"desired": {"interval": i}},
            }
        )
        if i % 4 == 0:
            lines.append({"id": f"d-{i}", "moduleId": "sensor", "authentication": auth(OTHER), "tags": {"m": i}})
    lines.append(
        {
            "id": "cam-x509",
            "status": "enabled",
            "authentication": {"type": "selfSigned", "x509Thumbprint": {"primaryThumbprint": THUMB}},
        }
    )
    lines.append(
        {
            "id": "gw",
            "status": "enabled",
            "capabilities": {"iotEdge": True},
            "authentication": auth(),
            "tags": {"role": "gw"},
        }
    )
    return lines


def seed(p: Jobs, clock: Clock, hub: str, lines: list[dict[str, Any] | str]) -> None:
    done = run_to_end(p, p.accept_upload(upload(p, f"seed-{hub}-{uuid.uuid4().hex[:4]}.jsonl", lines), hub), clock)
    assert done.state is JobState.COMPLETED, done.failure_reason


def registry_of(p: Jobs, clock: Clock, hub: str) -> dict[Any, Any]:
    """A hub's registry as a fresh export with keys shows it, without service-generated fields (and without the
    Edge system modules' keys and each hub's device scopes, which every hub makes its own)."""
    done = run_to_end(p, p.engine.accept(replace(p.engine.draft(JobKind.EXPORT, hub), include_keys=True)), clock)
    assert done.state is JobState.COMPLETED, done.failure_reason
    out = {}
    for raw in read(p, done.reports["backup"]).splitlines():
        if not raw.strip():
            continue
        doc = _stable(json.loads(raw))
        for scope in ("deviceScope", "parentScopes"):
            doc.pop(scope, None)
        if doc.get("moduleId") in ("$edgeAgent", "$edgeHub"):
            doc.pop("authentication", None)
        out[(doc["id"], doc.get("moduleId"))] = doc
    return out


def migrate(p: Jobs, clock: Clock, **options: Any) -> Job:
    """Queue a migration devhub -> stagehub and run its three jobs to their ends; the verification job."""
    draft = replace(
        p.engine.draft(JobKind.MIGRATION, "devhub"),
        peer_hub="stagehub",
        import_mode=options.get("mode", "create"),
        include_keys=options.get("include_keys", True),
        include_configurations=options.get("configurations", False),
    )
    exported = run_to_end(p, p.engine.accept(draft), clock)
    assert exported.state is JobState.COMPLETED, exported.failure_reason
    imported = p.ledger.find_by_key("stagehub", import_key(exported.job_id))
    assert imported is not None
    imported = run_to_end(p, imported, clock)
    verified = p.ledger.find_by_key("stagehub", verify_key(exported.job_id))
    assert verified is not None, imported.failure_reason
    return run_to_end(p, verified, clock)


def report(p: Jobs, job: Job) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(read(p, job.reports["migration"]))
    return doc


def scope_of(emu: IoTHubEmulator, device_id: str) -> str:
    r = hub_call(emu, "GET", f"/devices/{device_id}")
    assert r.status_code == 200, r.text
    return str(r.json()["deviceScope"])


def test_a_migration_leaves_the_target_equal_to_the_source_and_verifies_every_device(
    pair: Jobs, clock: Clock, iothub: IoTHubEmulator, stage_server: IoTHubEmulator
) -> None:
    seed(pair, clock, "devhub", fleet())
    scope = scope_of(iothub, "gw")  # an Edge hierarchy: gw -> gw2 (Edge) and gw -> leaf
    edge = {"iotEdge": True}
    below = [
        {"id": "gw2", "status": "enabled", "capabilities": edge, "parentScopes": [scope], "authentication": auth()},
        {"id": "leaf", "status": "enabled", "deviceScope": scope, "authentication": auth()},
    ]
    seed(pair, clock, "devhub", below)
    before = registry_of(pair, clock, "devhub")

    verified = migrate(pair, clock)

    assert verified.state is JobState.COMPLETED, verified.notes
    assert registry_of(pair, clock, "stagehub") == before  # keys, twins, modules, x509, Edge flag: all alike
    # The hierarchy came along: in the target, gw2 and leaf hang under the target's gw.
    moved = scope_of(stage_server, "gw")
    assert _ok(hub_call(stage_server, "GET", "/devices/leaf"))["deviceScope"] == moved
    assert _ok(hub_call(stage_server, "GET", "/devices/gw2"))["parentScopes"] == [moved]
    doc = report(pair, verified)
    assert doc["counts"]["source"] == {"devices": 44, "edgeDevices": 2, "modules": 14}
    assert doc["counts"]["target"] == doc["counts"]["source"]
    assert (doc["compared"], doc["equal"], doc["missing"], doc["different"]) == (44, 42, 0, 0)
    # The gateways' system modules: made by each hub with keys of its own, explained, not a difference.
    assert doc["explained"] == 2
    assert {d["moduleId"] for d in doc["explainedDifferences"]} == {"$edgeAgent", "$edgeHub"}
    assert all("IoT Edge system module" in d["why"] for d in doc["explainedDifferences"])
    # The export held keys: gone once verified; its manifest stays. No key anywhere in the ledger or the reports.
    migration_id = verified.migration_of
    assert migration_id is not None
    names = pair.storage.list_names(pair.containers.migrations, migration_id)
    assert names == [f"{migration_id}/manifest.json"]
    rows = [*pair.ledger.list_jobs("devhub")[0], *pair.ledger.list_jobs("stagehub")[0]]
    rows = [job for job in rows if job.migration_of or job.kind is JobKind.MIGRATION]
    assert len(rows) == 3
    assert KEY not in repr(rows) and OTHER not in repr(rows)
    for job in rows:
        for path in job.reports.values():
            assert KEY.encode() not in read(pair, path), path


def test_create_mode_never_overwrites_a_device_the_target_has_and_the_report_says_why(pair: Jobs, clock: Clock) -> None:
    seed(pair, clock, "devhub", fleet(10))
    seed(
        pair,
        clock,
        "stagehub",
        [{"id": "d-3", "status": "enabled", "tags": {"site": "theirs"}}, {"id": "t-only", "status": "enabled"}],
    )

    verified = migrate(pair, clock)

    imported = pair.ledger.find_by_key("stagehub", import_key(verified.migration_of or ""))
    assert imported is not None and imported.state is JobState.COMPLETED_WITH_ERRORS
    assert imported.failed_devices == 1  # the create of d-3 refused: it exists
    assert verified.state is JobState.COMPLETED_WITH_ERRORS
    doc = report(pair, verified)
    assert (doc["missing"], doc["different"], doc["onlyInTarget"]) == (0, 1, 1)
    [diff] = doc["differences"]
    assert diff["deviceId"] == "d-3" and "tags" in diff["fields"] and "authType" not in diff["fields"]
    assert "stagehub" in diff["why"]
    assert "1 device(s) stagehub also holds" not in doc["verdict"] and "also holds 1 device(s)" in doc["verdict"]
    target = registry_of(pair, clock, "stagehub")
    assert target[("d-3", None)]["tags"] == {"site": "theirs"}  # untouched
    # The outcome says why it completed with errors, and no note of a step says a state it has left.
    imported = pair.ledger.get("stagehub", imported.job_id)
    (refused,) = [n for n in imported.notes if "refused" in n]
    assert "1 DeviceAlreadyExists" in refused and "in create mode" in refused and "createOrUpdate" in refused
    assert not any("(queued)" in n for n in imported.notes)
    view = migration_view(*pair_steps(pair, verified))
    assert view["state"] == "completed_with_errors" and view["failureReason"] is None
    assert "stagehub refused 1 line(s)" in view["why"] and "DeviceAlreadyExists" in view["why"]
    assert "1 device(s) are missing in stagehub or differ" in view["why"]


def pair_steps(p: Jobs, verified: Job) -> tuple[Job, Job | None, Job | None]:
    exported = p.ledger.get("devhub", verified.migration_of or "")
    return exported, p.ledger.find_by_key("stagehub", import_key(exported.job_id)), verified


def test_create_or_update_mode_replaces_them(pair: Jobs, clock: Clock) -> None:
    seed(pair, clock, "devhub", fleet(10))
    seed(pair, clock, "stagehub", [{"id": "d-3", "status": "enabled", "tags": {"site": "theirs"}}])
    before = registry_of(pair, clock, "devhub")

    verified = migrate(pair, clock, mode="createOrUpdate")

    assert verified.state is JobState.COMPLETED, report(pair, verified)["differences"]
    assert registry_of(pair, clock, "stagehub") == before


def test_without_keys_the_devices_get_new_ones_and_the_notes_say_so(pair: Jobs, clock: Clock) -> None:
    seed(pair, clock, "devhub", fleet(6))

    verified = migrate(pair, clock, include_keys=False)

    assert verified.state is JobState.COMPLETED
    imported = pair.ledger.find_by_key("stagehub", import_key(verified.migration_of or ""))
    assert imported is not None and any("holds no keys" in n for n in imported.notes)
    target = registry_of(pair, clock, "stagehub")
    key = target[("d-1", None)]["authentication"]["symmetricKey"]["primaryKey"]
    assert key and key != KEY
    assert not report(pair, verified)["keysCompared"]


def test_configurations_go_too_when_asked(
    pair: Jobs, clock: Clock, iothub: IoTHubEmulator, stage_server: IoTHubEmulator
) -> None:
    seed(pair, clock, "devhub", fleet(4))
    for config_id, site in (("fw-s0", "s0"), ("fw-s1", "s1")):
        r = config_call(iothub, "PUT", f"/configurations/{config_id}", configuration(config_id, site, 1))
        assert r.status_code == 200, r.text

    verified = migrate(pair, clock, configurations=True)

    assert verified.state is JobState.COMPLETED
    doc = report(pair, verified)
    assert doc["counts"]["configurations"] == {"source": 2, "target": 2, "missingInTarget": []}
    assert configurations(stage_server) == configurations(iothub)


def test_a_step_ended_twice_queues_the_next_step_once(pair: Jobs, clock: Clock) -> None:
    """A process that dies after a step queued the next one but before it recorded its own end: the monitor ends
    the step again; the next step is found by its key, not queued again."""
    seed(pair, clock, "devhub", fleet(5))
    draft = replace(pair.engine.draft(JobKind.MIGRATION, "devhub"), peer_hub="stagehub", import_mode="create")
    job = pair.engine.accept(draft)

    def running() -> Job:
        current = pair.ledger.get("devhub", job.job_id)
        if current.state is not JobState.RUNNING:
            pair.monitor_pass("devhub")
        return current

    job = wait_until(running, lambda j: j.state is JobState.RUNNING, interval=0, what="the migration to run")
    kind = pair.engine.kinds[JobKind.MIGRATION]
    hub_job = wait_for(lambda: pair.hubs["devhub"].get_job(job.hub_job_id or ""))
    first = kind.end(job, hub_job, pair.engine.ctx)
    second = kind.end(job, hub_job, pair.engine.ctx)  # the crash: ended again by the next pass
    assert first.job.notes == second.job.notes
    imports = [j for j in pair.ledger.list_jobs("stagehub")[0] if j.kind is JobKind.MIGRATION_IMPORT]
    assert len(imports) == 1
    done = run_to_end(pair, job, clock)
    assert done.state is JobState.COMPLETED
    imported = run_to_end(pair, imports[0], clock)
    verified = pair.ledger.find_by_key("stagehub", verify_key(job.job_id))
    assert verified is not None
    assert imported.state is JobState.COMPLETED
    assert len([j for j in pair.ledger.list_jobs("stagehub")[0] if j.kind is JobKind.MIGRATION_VERIFY]) == 1
    assert run_to_end(pair, verified, clock).state is JobState.COMPLETED


def test_a_damaged_export_is_never_imported(pair: Jobs, clock: Clock) -> None:
    """The export is checked against its manifest before its import: a changed file is refused, nothing sent."""
    seed(pair, clock, "devhub", fleet(5))
    draft = replace(pair.engine.draft(JobKind.MIGRATION, "devhub"), peer_hub="stagehub", import_mode="create")
    exported = run_to_end(pair, pair.engine.accept(draft), clock)
    imported = pair.ledger.find_by_key("stagehub", import_key(exported.job_id))
    assert imported is not None and imported.state is JobState.QUEUED
    # Tampered with before its import ran: the import reads it by its ETag and refuses.
    ref = BlobRef(pair.containers.migrations, f"{exported.job_id}/devices.txt")
    pair.storage.upload_bytes(ref.container, ref.name, b'{"id": "intruder"}\n')
    kind = pair.engine.kinds[JobKind.MIGRATION_IMPORT]
    again = kind.prepare(replace(imported, source_etag=pair.storage.properties(ref).etag), pair.engine.ctx)  # type: ignore[union-attr]
    assert again.failure_reason and "manifest" in again.failure_reason


def test_a_migration_cancelled_at_its_import_stops_there_and_its_view_says_so(pair: Jobs, clock: Clock) -> None:
    seed(pair, clock, "devhub", fleet(5))
    draft = replace(
        pair.engine.draft(JobKind.MIGRATION, "devhub"), peer_hub="stagehub", import_mode="create", include_keys=True
    )
    exported = run_to_end(pair, pair.engine.accept(draft), clock)
    imported = pair.ledger.find_by_key("stagehub", import_key(exported.job_id))
    assert imported is not None
    view = migration_view(exported, imported, None)
    assert (view["stage"], view["state"], view["progress"]) == ("import", "running", 33)

    cancelled = pair.engine.cancel(imported)
    for _ in range(3):
        pair.monitor_pass("stagehub")

    assert cancelled.state is JobState.CANCELLED
    assert pair.ledger.find_by_key("stagehub", verify_key(exported.job_id)) is None  # no later step
    # The migration ended here: its export, which held keys, went with it; its manifest stays.
    names = pair.storage.list_names(pair.containers.migrations, exported.job_id)
    assert names == [f"{exported.job_id}/manifest.json"]
    assert pair.hubs["stagehub"].get_registry_statistics().total == 0
    view = migration_view(exported, cancelled, None)
    assert (view["stage"], view["state"]) == ("import", "cancelled")
    assert view["failureReason"] == "cancelled by request"


def _ok(r: Any) -> Any:
    assert r.status_code == 200, r.text
    return r.json()


def test_a_configuration_missing_from_the_target_is_a_difference(
    pair: Jobs, clock: Clock, iothub: IoTHubEmulator, stage_server: IoTHubEmulator
) -> None:
    seed(pair, clock, "devhub", fleet(3))
    for config_id in ("fw-a", "fw-b"):
        assert config_call(iothub, "PUT", f"/configurations/{config_id}", configuration(config_id, "s0", 1)).ok
    draft = replace(
        pair.engine.draft(JobKind.MIGRATION, "devhub"),
        peer_hub="stagehub",
        import_mode="create",
        include_configurations=True,
    )
    exported = run_to_end(pair, pair.engine.accept(draft), clock)
    pair.monitor_pass("stagehub")  # the import's hub job starts
    imported = pair.ledger.find_by_key("stagehub", import_key(exported.job_id))
    assert imported is not None and imported.hub_job_id is not None
    stage = pair.hubs["stagehub"]
    wait_for(lambda: stage.get_job(imported.hub_job_id or ""))
    # Someone removes one from the target after the import put it there, before the verification looks.
    assert config_call(stage_server, "DELETE", "/configurations/fw-b", if_match="*").status_code == 204
    assert run_to_end(pair, imported, clock).state is JobState.COMPLETED
    verified = pair.ledger.find_by_key("stagehub", verify_key(exported.job_id))
    assert verified is not None
    verified = run_to_end(pair, verified, clock)

    doc = report(pair, verified)
    assert verified.state is JobState.COMPLETED_WITH_ERRORS, json.dumps(doc)
    assert doc["counts"]["configurations"] == {"source": 2, "target": 1, "missingInTarget": ["fw-b"]}
    assert (
        doc["missingConfigurations"] == 1 and "1 configuration(s) are not in stagehub (first: fw-b)" in doc["verdict"]
    )
