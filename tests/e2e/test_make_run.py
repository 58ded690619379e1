"""``make run``'s demo, as a newcomer runs it (``--demo-only`` so it exits), judged by what it left behind: the
ledger, the archive, the reports, the backups, the hub's registry and the IoT Central app, read from its state
folder after it stopped (not by the text it prints, much of which it prints whatever happened)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient

from emulators.azurite import REPO, Azurite
from emulators.iothub.store import Store
from shared.ledger import TERMINAL_STATES, Job, JobKind, JobState, Ledger
from tests.e2e.devstack_process import start_devstack
from tests.waiting import wait_until

# Runs on one worker with the other module of make run's stacks (tests/conftest.py ONE_WORKER).

SAMPLES = REPO / "samples"
# The jobs of one run: imports of two samples (steps 1-2), of the fleet-changes sample (10), of its inverse (11) and
# of a bulk file (12); a backup (4); an IoT Central apply (7); a rollback (11); plans: a preview (9), a bulk's (12)
# and a snapshot before each import that is not createOrUpdate only (1, 10, 11, 12); a migration's three jobs (13).
SNAPSHOTS = 4
PER_RUN = Counter(
    {
        JobKind.IMPORT: 5,
        JobKind.EXPORT: 1,
        JobKind.CENTRAL_APPLY: 1,
        JobKind.ROLLBACK: 1,
        JobKind.PLAN: 2 + SNAPSHOTS,
        JobKind.MIGRATION: 1,
        JobKind.MIGRATION_IMPORT: 1,
        JobKind.MIGRATION_VERIFY: 1,
    }
)
OSLO = {f"demo-thermostat-{i:02d}" for i in (3, 6, 9, 12)}  # tags.site = 'oslo' in devices-good.jsonl


def _demo(state: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("REQUESTS_CA_BUNDLE", None)
    out = subprocess.run(
        [sys.executable, "-m", "emulators.devstack", "--demo-only", "--state", str(state)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert "Traceback" not in (state / "functions" / "host.log").read_text()
    return out.stdout


@dataclass
class Runs:
    first: Path  # the state as the first run left it (a copy)
    second: Path  # the same state after a second run
    first_out: str
    second_out: str


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """``make run`` twice on one state folder, as a newcomer starts it again; the state after the first run is
    copied aside (every server is stopped by then) to be judged on its own."""
    state = tmp_path_factory.mktemp("devstack")
    first_out = _demo(state)
    first = tmp_path_factory.mktemp("devstack-first")
    shutil.copytree(state, first, dirs_exist_ok=True)
    return Runs(first, state, first_out, _demo(state))


# Every port make run prefers (emulators/devstack.py USUAL, Azurite's own): taken by another stack, each moves.
USUAL_PORTS = (7071, 8443, 8444, 8445, 10000, 10001, 10002)


@contextlib.contextmanager
def _ports_held(ports: tuple[int, ...] = USUAL_PORTS) -> Iterator[None]:
    """Listeners on the usual ports, as another stack on the same machine holds them (a port something already
    holds stays held by it)."""
    held = []
    try:
        for port in ports:
            listener = socket.socket()
            # As the servers (and devstack's probe) do: connections of a stack stopped just before (test_docs'
            # stack runs on this worker right before) lingering in TIME_WAIT must not make the port look held.
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                listener.bind(("127.0.0.1", port))
            except OSError:
                listener.close()
                continue
            listener.listen()
            held.append(listener)
        yield
    finally:
        for listener in held:
            listener.close()


@pytest.fixture(scope="module")
def runs_elsewhere(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """``make run`` twice on one state folder while another stack holds the usual ports: each run moves to free
    ports of its own, so the two runs' addresses differ."""
    state = tmp_path_factory.mktemp("devstack-elsewhere")
    with _ports_held():
        first_out = _demo(state)
        first_values = json.loads((state / "functions" / "local.settings.json").read_text())["Values"]
        second_out = _demo(state)
    return Runs(state, state, first_out, second_out + f"\n(first run at {first_values['IOTJOBS_URL']})")


def test_a_second_make_run_on_other_ports_finds_nothing_changed_in_iot_central(runs_elsewhere: Runs) -> None:
    first, second = runs_elsewhere.first_out, runs_elsewhere.second_out
    for out in (first, second):
        assert "!! PORT 7071 (Functions host) IS TAKEN" in out and "!! PORT 8444 (IoT Central emulator)" in out
    values = json.loads((runs_elsewhere.second / "functions" / "local.settings.json").read_text())["Values"]
    assert f"(first run at {values['IOTJOBS_URL']})" not in second  # the two runs had different addresses
    # The second run applies the same data-export file: nothing to change, as on the usual ports.
    assert "(no changes: the app already matches the file)" in _section(second, 7), _section(second, 7)
    assert "0 change(s)" in _section(second, 8)
    # one stack, one instance id, from run to run (iotjobs holds the address it finds to it)
    assert values["IOTJOBS_INSTANCE_ID"] == (runs_elsewhere.second / "instance-id").read_text().strip()


@pytest.fixture
def demo_state(runs: Runs) -> Path:
    return runs.first


@contextlib.contextmanager
def _started(state: Path) -> Iterator[Azurite]:
    azurite = Azurite(state / "azurite").start()
    try:
        yield azurite
    finally:
        azurite.stop(remove=False)


@pytest.fixture
def storage(demo_state: Path) -> Iterator[Azurite]:
    """The demo's Azurite started again on the state it left (as a second ``make run`` would)."""
    with _started(demo_state) as azurite:
        yield azurite


def _ledger(azurite: Azurite) -> Ledger:
    return Ledger(TableServiceClient.from_connection_string(azurite.connection_string).get_table_client("jobledger"))


def _section(out: str, step: int) -> str:
    return out.split(f"== {step}. ", 1)[1].split("\n== ", 1)[0]


JOB_ID = re.compile(r"job (\d{13}-[0-9a-f]{6}): ")


def lines(path: Path) -> list[dict[str, Any]]:
    return lines_of(path.read_bytes())


def lines_of(raw: bytes) -> list[dict[str, Any]]:
    return [json.loads(x) for x in raw.decode().splitlines() if x.strip()]


def test_make_run_demo_imports_rejects_backs_up_and_applies_central(demo_state: Path, storage: Azurite) -> None:
    blobs = BlobServiceClient.from_connection_string(storage.connection_string)
    ledger = Ledger(TableServiceClient.from_connection_string(storage.connection_string).get_table_client("jobledger"))

    def read(path: str) -> bytes:
        container, _, name = path.partition("/")
        return bytes(blobs.get_blob_client(container, name).download_blob().readall())

    def names(container: str) -> list[str]:
        return sorted(b.name for b in blobs.get_container_client(container).list_blobs())

    jobs, _ = ledger.list_jobs(limit=100)
    # steps 1-8: two imports, a backup, an IoT Central apply (steps 9-12 are judged on their own, below)
    by_source: dict[str | None, Job] = {
        j.source: j
        for j in jobs
        if j.kind in (JobKind.EXPORT, JobKind.CENTRAL_APPLY) or (j.source or "").startswith("uploads/devices-")
    }
    assert len(by_source) == 4, jobs
    assert Counter(j.kind for j in jobs) == PER_RUN, jobs

    # 1. The good file: imported, the hub's one refusal (a delete of a device it does not have) reported per device.
    good = by_source["uploads/devices-good.jsonl"]
    sample = lines(SAMPLES / "devices-good.jsonl")
    assert (good.kind, good.state, good.lines, good.failed_devices) == (
        JobKind.IMPORT, JobState.COMPLETED_WITH_ERRORS, len(sample), 1,
    )  # fmt: skip
    refused = [json.loads(x) for x in read(good.reports["errors"]).decode().splitlines()]
    assert [(r["deviceId"], r["errorName"]) for r in refused] == [("demo-retired-01", "DeviceNotFound")]
    assert good.archived == f"archive/processed/{good.job_id}/devices-good.jsonl"
    assert read(good.archived) == (SAMPLES / "devices-good.jsonl").read_bytes()

    # 2. The file with mistakes: rejected with line-numbered findings, nothing sent, archived as failed.
    bad = by_source["uploads/devices-with-mistakes.jsonl"]
    assert (bad.state, bad.hub_job_id) == (JobState.REJECTED, None) and bad.validation_errors > 0
    rejection = json.loads(read(bad.reports["rejection"]))
    assert rejection["errors"] and all(e["line"] >= 1 and e["code"] for e in rejection["errors"])
    assert bad.archived == f"archive/failed/{bad.job_id}/devices-with-mistakes.jsonl"

    # 4. The backup over HTTP: the registry as the demo left it (seeded devices + the good file less its refusal).
    export = by_source[None]  # an export reads nothing
    assert (export.kind, export.state) == (JobKind.EXPORT, JobState.COMPLETED)
    manifest = json.loads(read(export.reports["manifest"]))
    backed_up = {json.loads(x)["id"] for x in read(export.reports["backup"]).decode().splitlines()}
    expected = {f"demo-seed-{i:02d}" for i in range(5)} | {d["id"] for d in sample if d.get("importMode") != "delete"}
    assert backed_up == expected
    assert (manifest["devices"], manifest["includesKeys"], export.devices) == (len(expected), False, len(expected))
    # the Edge gateway's system modules ($edgeAgent, $edgeHub) are module lines: counted apart, not as devices
    assert manifest["modules"] == 2

    # 5.-7. IoT Central: backed up before the apply (the hand-made pair), then the sample applied step by step.
    apply = by_source["uploads/central/dataexport.json"]
    assert (apply.hub, apply.kind, apply.state) == ("central", JobKind.CENTRAL_APPLY, JobState.COMPLETED)
    result = json.loads(read(apply.reports["result"]))
    assert [r["outcome"] for r in result["results"]] == ["done"] * 7 and apply.steps["create"] == 7
    assert apply.archived == f"archive/processed/{apply.job_id}/central/dataexport.json"
    central_backups = [n for n in names("backups") if n.startswith("central/") and n.endswith("manifest.json")]
    assert len(central_backups) == 1
    assert {k: json.loads(read(f"backups/{central_backups[0]}"))[k] for k in ("destinations", "exports")} == {
        "destinations": 1, "exports": 1,
    }  # fmt: skip
    app = json.loads((demo_state / "iotcentral" / "dataexport.json").read_text())
    wanted = json.loads((SAMPLES / "central" / "dataexport.json").read_text())
    assert set(app["destinations"]) == {"legacy-webhook", *wanted["destinations"]}  # kept: no prune
    assert set(app["exports"]) == {"legacy-export", *wanted["exports"]}

    # Nothing left behind or lost: every upload was archived, exactly the four the demo dropped.
    assert names("uploads") == []
    assert names("archive") == sorted(j.archived.removeprefix("archive/") for j in jobs if j.archived)
    assert all(j.state.is_terminal for j in jobs)


def test_a_second_make_run_follows_its_own_jobs_and_prints_current_results(runs: Runs) -> None:
    out = runs.second_out
    for azurite_state, name in ((runs.first, "first"), (runs.second, "second")):
        assert (azurite_state / "functions" / "host.log").exists(), name
    first_ids = set(JOB_ID.findall(runs.first_out))
    second_ids = set(JOB_ID.findall(out))
    followed = sum(PER_RUN.values()) - SNAPSHOTS  # the snapshot plan jobs are waited for, not followed
    assert len(first_ids) == len(second_ids) == followed and not first_ids & second_ids
    with _started(runs.second) as azurite:
        jobs, _ = _ledger(azurite).list_jobs(limit=100)
        by_id = {j.job_id: j for j in jobs}
        assert len(jobs) == 2 * sum(PER_RUN.values()) and second_ids <= set(by_id) and first_ids <= set(by_id)
        mine = {by_id[i].source: by_id[i] for i in second_ids if by_id[i].kind in (JobKind.IMPORT, JobKind.EXPORT)}
        good, export = mine["uploads/devices-good.jsonl"], mine[None]
        # The backup of this run was taken after this run's import had ended, and printed as such.
        assert export.created >= good.updated and export.reports["backup"] in _section(out, 4)
        # This run's import: the device the sample creates exists since the first run, so the hub refuses it now;
        # both refusals are listed.
        assert (good.state, good.failed_devices) == (JobState.COMPLETED_WITH_ERRORS, 2)
        step1 = _section(out, 1)
        assert "refused 2 device(s)" in step1 and "DeviceAlreadyExists" in step1 and "DeviceNotFound" in step1
    # IoT Central: a new backup of what the app holds now (the first run applied 3 destinations and 4 exports
    # beside the hand-made pair), then nothing to change, then nothing left to change.
    assert "4 destination(s), 5 export(s)" in _section(out, 5)
    assert "0 change(s)" in _section(out, 8)
    assert "(no changes: the app already matches the file)" in _section(out, 7)


def test_the_demo_lists_every_problem_it_counts(runs: Runs) -> None:
    for out in (runs.first_out, runs.second_out):
        step = _section(out, 2)
        claimed = int(re.search(r"(\d+) problems? in the file", step).group(1))  # type: ignore[union-attr]
        listed = len(re.findall(r"^ +line +\d+ ", step, re.M))
        more = re.search(r"… and (\d+) more", step)
        assert listed + (int(more.group(1)) if more else 0) == claimed and listed >= 1
        findings = [line for line in step.splitlines() if re.match(r" +line +\d+ ", line)]
        assert all(len(line) <= 120 for line in findings)  # long messages are cut, with an ellipsis
        assert "…" in step


def test_the_demo_words_its_outcomes_without_python_reprs(runs: Runs) -> None:
    """Counts and kept items in words ("13 createOrUpdate", "destinations legacy-webhook"), never a dict's repr."""
    for out in (runs.first_out, runs.second_out):
        assert "{'" not in out and "['" not in out
        assert re.search(r"\d+ lines \(\d+ createOrUpdate, \d+ create, \d+ delete\)", _section(out, 1))
        assert "kept, not in the file (no prune): destinations legacy-webhook" in _section(out, 6)


def test_make_run_prints_iotjobs_commands_not_az(runs: Runs) -> None:
    banner = runs.second_out.split("== The local stack is up", 1)[1]
    assert "iotjobs upload" in banner and "iotjobs jobs" in banner and "/api/status?code=" in banner
    assert "az storage" not in runs.second_out


def test_ctrl_c_stops_the_stack_cleanly_without_tracebacks(tmp_path: Path) -> None:
    """Ctrl-C in a terminal signals the whole foreground process group; make run must stop everything it started
    and leave no KeyboardInterrupt traceback in its output or in the host's log."""
    proc = start_devstack(tmp_path)
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("Serving until Ctrl-C"):
            break
    try:
        _second_hub_answers_through_the_app(tmp_path)
    finally:  # stopped whatever that found: a stack left running would hold the usual ports
        os.killpg(proc.pid, signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    out = "".join(seen) + rest
    assert proc.returncode == 0, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    log = (tmp_path / "functions" / "host.log").read_text()
    assert "stopping (SIGTERM)" in log and "stopped" in log
    assert "Traceback" not in log and "KeyboardInterrupt" not in log


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None and not k.startswith("$")}
    return value


def _what_matters(status: Any, auth: Any, tags: Any, desired: Any) -> dict[str, Any]:
    """What a rollback must put back of a device: status, type and keys or thumbprints, tags, desired properties."""
    matters: dict[str, Any] = _without_nulls({"status": status, "auth": auth, "tags": tags, "desired": desired})
    return {"tags": {}, "desired": {}, "auth": {}, **matters}


def _registry(state: Path, hub: str = "iothub") -> dict[str, dict[str, Any]]:
    """A hub's devices as the run left them, read from the emulator's own store (no server needed): the demo hub's,
    or (``iothub-stagehub``) the second hub's."""
    store = Store(state / hub / "registry.sqlite")
    try:
        devices = store.page_devices(None, 1000)
    finally:
        store.close()
    return {
        d["deviceId"]: _what_matters(d["status"], d["authentication"], d["twin"]["tags"], d["twin"]["desired"])
        for d in devices
    }


@pytest.mark.parametrize("run", ["first", "second"])
def test_each_run_previews_imports_rolls_back_and_disables_by_query(runs: Runs, run: str) -> None:
    """Steps 9-12 of each run, judged by the jobs that run followed (and the snapshot plans taken before them) and by
    the hub's registry: the second run starts from what the first left (the oslo devices disabled, enabled again by
    its step 1) and must leave the same."""
    state, out = (runs.first, runs.first_out) if run == "first" else (runs.second, runs.second_out)
    followed = set(JOB_ID.findall(out))
    with _started(state) as azurite:
        blobs = BlobServiceClient.from_connection_string(azurite.connection_string)

        def read(path: str) -> bytes:
            container, _, name = path.partition("/")
            return bytes(blobs.get_blob_client(container, name).download_blob().readall())

        everything, _ = _ledger(azurite).list_jobs(limit=100)
        jobs = [j for j in everything if j.job_id in followed or j.plan_for in followed]
        assert Counter(j.kind for j in jobs) == PER_RUN, jobs

        # 9. The preview: what the file would do, the two lines the hub would refuse; nothing imported by it.
        (preview,) = [j for j in jobs if j.kind is JobKind.PLAN and (j.source or "").startswith("plans/devhub/")]
        plan = json.loads(read(preview.reports["plan"]))
        assert preview.state is JobState.COMPLETED
        assert plan["totals"] == {"create": 1, "update": 1, "twin": 1, "delete": 2, "unchanged": 0, "refused": 2}
        assert [(r["line"], r["deviceId"], r["code"]) for r in plan["refused"]] == [
            (6, "demo-thermostat-05", "DeviceAlreadyExists"), (7, "demo-retired-01", "DeviceNotFound"),
        ]  # fmt: skip

        # 10. The import: snapshotted first by a plan job, then applied but for the two refused lines.
        (changes,) = [j for j in jobs if j.source == "uploads/fleet-changes.jsonl"]
        assert (changes.state, changes.failed_devices) == (JobState.COMPLETED_WITH_ERRORS, 2)
        (snapshot,) = [j for j in jobs if j.plan_for == changes.job_id]
        assert (
            changes.started is not None and snapshot.state is JobState.COMPLETED and snapshot.created < changes.started
        )

        # 11. Its rollback: a rollback job, then the inverse file imported with rollbackOf set.
        (rollback,) = [j for j in jobs if j.kind is JobKind.ROLLBACK]
        assert (rollback.rollback_of, rollback.state) == (changes.job_id, JobState.COMPLETED)
        (undo,) = [j for j in jobs if j.kind is JobKind.IMPORT and j.rollback_of == changes.job_id]
        assert undo.state is JobState.COMPLETED and (undo.source or "").startswith(
            f"snapshots/{changes.job_id}/rollback-"
        )
        assert json.loads(read(rollback.reports["rollback"]))["importJobId"] == undo.job_id

        # 12. Act on a query: a bulk file of the oslo devices, its plan (4 updates), then its import.
        (bulk,) = [j for j in jobs if j.kind is JobKind.IMPORT and (j.source or "").startswith("bulk/")]
        assert (bulk.state, bulk.lines, bulk.modes) == (JobState.COMPLETED, 4, {"updateIfMatchETag": 4})
        (bulk_plan,) = [j for j in jobs if j.kind is JobKind.PLAN and j.source == bulk.source]
        assert json.loads(read(bulk_plan.reports["plan"]))["totals"]["update"] == 4

        # The registry: every device the fleet-changes file touched is back as it was before it (keys included:
        # the deleted ones were created again with theirs; the one it created is gone), and only the oslo devices
        # are disabled. Everything else is as this run's backup (step 4) saw it.
        before: dict[str, dict[str, Any] | None] = {}
        for record in lines_of(read(f"snapshots/{changes.job_id}/devices.jsonl")):
            device = [d for d in record["before"] if not d.get("moduleId")]  # [] : it did not exist
            before[record["id"]] = next(
                (
                    _what_matters(d["status"], d["authentication"], d["tags"], d["properties"]["desired"])
                    for d in device
                ),
                None,
            )
        (export,) = [j for j in jobs if j.kind is JobKind.EXPORT]
        backup = {d["id"]: d for d in lines_of(read(export.reports["backup"]))}
    now = _registry(state)
    assert set(before) == {
        "demo-seed-03", "demo-seed-04", "demo-camera-01", "demo-thermostat-02", "demo-sensor-01",
        "demo-thermostat-05", "demo-retired-01",
    }  # fmt: skip
    assert {device: now.get(device) for device in before} == before
    seed = before["demo-seed-03"]
    assert seed is not None and seed["auth"]["symmetricKey"]["primaryKey"]  # a device deleted, then put back
    assert {device for device, d in now.items() if d["status"] == "disabled"} == OSLO
    assert set(now) == set(backup)
    assert {k: d["tags"] for k, d in now.items()} == {k: d.get("tags") or {} for k, d in backup.items()}
    assert "(as the plan said)" in _section(out, 10) and "the registry is as before the import" in _section(out, 11)

    # 13. The migration: its three jobs completed, and the second hub now holds what the first holds, keys included.
    with _started(state) as azurite:
        everything, _ = _ledger(azurite).list_jobs(limit=100)
    steps = {j.kind: j for j in everything if j.job_id in followed and j.kind.value.startswith("migration")}
    assert {k: j.state for k, j in steps.items()} == {
        JobKind.MIGRATION: JobState.COMPLETED,
        JobKind.MIGRATION_IMPORT: JobState.COMPLETED,
        JobKind.MIGRATION_VERIFY: JobState.COMPLETED,
    }
    assert steps[JobKind.MIGRATION_VERIFY].migration_of == steps[JobKind.MIGRATION].job_id
    assert _registry(state, "iothub-stagehub") == now
    assert f"verified: all {len(now)} device(s) of devhub are in stagehub alike" in _section(out, 13)


def _second_hub_answers_through_the_app(state: Path) -> None:
    """The stack serves a second hub, stagehub (the demo's migration target), configured in the app after devhub,
    which stays the default: a backup of it through the app completes (its TLS under the first hub's CA, its SAS,
    its jobs writing to the stack's storage) with the devices step 13 migrated into it."""
    values = json.loads((state / "functions" / "local.settings.json").read_text())["Values"]
    assert values["IOTHUB_HUBS"] == "devhub,stagehub" and values["IOTHUB_STAGEHUB_CONNECTION_STRING"]
    session = requests.Session()
    session.headers["x-functions-key"] = values["IOTJOBS_KEY"]
    api = f"{values['IOTJOBS_URL']}/api"
    job = session.post(f"{api}/exports", json={"hub": "stagehub"}, timeout=30).json()["jobs"][0]
    if job["state"] not in TERMINAL_STATES:
        job = wait_until(
            lambda: session.get(f"{api}/jobs/stagehub/{job['jobId']}", timeout=30).json(),
            lambda doc: doc["state"] in TERMINAL_STATES,
            deadline=120,
            interval=0.3,
            what="the stagehub backup to end",
        )
    assert (job["hub"], job["state"]) == ("stagehub", "completed") and job["devices"] > 0, job
