"""The iotjobs command against the local stack, run as a user runs it (the script ``make setup`` installs into the
virtualenv): uploads followed to their end, with the exit codes a script relies on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from emulators.azurite import REPO
from emulators.functions_host import FUNCTION_KEY
from tests.integration.helpers import device_line, hub_call

from .app import Stack

SCRIPT = Path(sys.executable).parent / "iotjobs"


def _lines(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def iotjobs(stack: Stack, tmp_path: Path):  # type: ignore[no-untyped-def]
    return runner(stack, tmp_path)


def runner(stack: Stack, tmp_path: Path):  # type: ignore[no-untyped-def]
    """The iotjobs command against the stack's app (started now, with the settings it has)."""
    assert SCRIPT.exists(), "the iotjobs command is not installed: run `make setup`"
    app = stack.app.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTJOBS_")}
    env.update(IOTJOBS_URL=app.url, IOTJOBS_KEY=FUNCTION_KEY, IOTJOBS_STORAGE=stack.azurite.connection_string)
    # The installed script imports `iotjobs` from this checkout, not from wherever the virtualenv was installed.
    env["PYTHONPATH"] = str(REPO)

    def run(*args: str, cwd: Path = tmp_path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
        )

    return run


def test_upload_follow_exits_0_when_completed_and_names_the_job_of_this_upload(
    iotjobs, stack: Stack, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    good = _lines(tmp_path / "fleet.jsonl", [device_line(f"cli-{i:03d}") for i in range(50)])
    first = iotjobs("upload", str(good), "--follow")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "completed (import of uploads/fleet.jsonl)" in first.stdout and "50 lines" in first.stdout
    assert "uploading uploads/fleet.jsonl" in first.stderr  # the upload's progress bar

    # The same name again: the command follows the job of its own upload, never the earlier one.
    _lines(good, [device_line(f"cli-{i:03d}") for i in range(7)])
    second = iotjobs("--json", "upload", str(good), "--follow")
    assert second.returncode == 0, second.stderr
    job = json.loads(second.stdout)
    jobs = stack.app.jobs()
    assert len(jobs) == 2 and job["jobId"] == jobs[0]["jobId"] and job["lines"] == 7

    listed = iotjobs("jobs", "--json", "--state", "completed")
    assert listed.returncode == 0 and {j["jobId"] for j in json.loads(listed.stdout)} == {j["jobId"] for j in jobs}


def test_upload_exit_codes_for_a_rejected_file_and_refused_devices(iotjobs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rows = [{"id": f"bad-{i:02d}", "status": "SELF_SIGNED"} for i in range(12)]
    rejected = iotjobs("upload", str(_lines(tmp_path / "typos.jsonl", rows)), "--hub", "devhub", "--follow")
    assert rejected.returncode == 3, rejected.stdout + rejected.stderr
    out = rejected.stdout
    assert "rejected (import of uploads/devhub/typos.jsonl)" in out and out.count("12 problems in the file") == 1
    assert "problem(s)" not in out and "{" not in out
    # Every count it claims is shown or said: ten findings listed, then how many more the report has.
    assert sum(f"line {n:>5} " in out for n in range(1, 13)) == 10
    assert "… and 2 more (see the rejection report)" in out

    ghost = iotjobs("upload", str(_lines(tmp_path / "ghost.jsonl", [device_line("ghost-1", "delete")])), "--follow")
    assert ghost.returncode == 5, ghost.stdout + ghost.stderr
    assert "1 device refused by the hub" in ghost.stdout and "ghost-1" in ghost.stdout


def test_backup_and_restore_follow_to_completion_and_usage_errors_exit_2(iotjobs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fleet = _lines(tmp_path / "fleet.jsonl", [device_line(f"kept-{i}") for i in range(5)])
    assert iotjobs("upload", str(fleet), "--follow").returncode == 0
    backup = iotjobs("export", "--hub", "devhub", "--follow")
    assert backup.returncode == 0, backup.stdout + backup.stderr
    assert "completed (export)" in backup.stdout and "5 devices backed up" in backup.stdout
    restore = iotjobs("restore", "latest", "--follow")
    assert restore.returncode == 0, restore.stdout + restore.stderr
    assert "completed (restore of backups/devhub/" in restore.stdout

    missing = iotjobs("upload", str(tmp_path / "nowhere.jsonl"))
    assert missing.returncode == 2 and "no file at" in missing.stderr
    assert iotjobs("upload").returncode == 2  # argparse: the file is required
    unknown = iotjobs("job", "devhub", "8234567890123-0a1b2c")
    assert unknown.returncode == 1 and "JobNotFound" in unknown.stderr


def test_the_command_finds_the_local_stack_from_a_settings_file(stack: Stack, tmp_path: Path) -> None:
    app = stack.app.start()
    settings = {"Values": {"DEVICE_STORAGE": stack.azurite.connection_string, "IOTJOBS_KEY": FUNCTION_KEY}}
    settings["Host"] = {"LocalHttpPort": app.port}  # type: ignore[dict-item]
    (tmp_path / "local.settings.json").write_text(json.dumps(settings))
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTJOBS_")}
    done = subprocess.run(
        [sys.executable, "-m", "iotjobs", "status"], cwd=tmp_path, env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("devhub") and "idle; 0 queued; no backup yet" in done.stdout
    assert FUNCTION_KEY not in done.stdout  # the status page's address is printed without the key


def test_bulk_plans_a_query_then_runs_and_follows_it_with_the_usual_exit_codes(
    iotjobs, stack: Stack, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    fleet = [device_line(f"b-{i}", tags={"site": "a" if i < 4 else "b"}) for i in range(6)]
    assert iotjobs("upload", str(_lines(tmp_path / "fleet.jsonl", fleet)), "--follow").returncode == 0

    def status(device_id: str) -> str:
        return str(hub_call(stack.hub, "GET", f"/devices/{device_id}").json()["status"])

    query = "SELECT * FROM devices WHERE tags.site = 'a'"
    planned = iotjobs("bulk", "--hub", "devhub", "--query", query, "--action", "disable")
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert "disable 4 devices" in planned.stdout and "4 update" in planned.stdout, planned.stdout
    assert "b-0" in planned.stdout and '"status":{"from":"enabled","to":"disabled"}' in planned.stdout  # a sample
    assert {status(f"b-{i}") for i in range(6)} == {"enabled"}  # a plan changes nothing
    bulk_id = planned.stdout.split("iotjobs bulk run ", 1)[1].split()[0]
    ran = iotjobs("bulk", "run", bulk_id, "--follow")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert f"completed (import of bulk/{bulk_id}/devices.txt)" in ran.stdout
    assert [status(f"b-{i}") for i in range(6)] == ["disabled"] * 4 + ["enabled"] * 2

    # Planned and run in one go; one selected device changed by someone else between the two: refused (exit 5).
    made = iotjobs("--json", "bulk", "--query", query, "--action", "setTags", "--tag", "owner=ops")
    assert made.returncode == 0, made.stderr
    bulk_id = json.loads(made.stdout)["bulk"]["id"]
    moved = hub_call(stack.hub, "PATCH", "/twins/b-1", body={"tags": {"room": 7}}, extra={"If-Match": "*"})
    assert moved.status_code == 200, moved.text
    refused = iotjobs("bulk", "run", bulk_id, "--follow")
    assert refused.returncode == 5, refused.stdout + refused.stderr
    assert "1 device refused by the hub" in refused.stdout and "b-1" in refused.stdout
    assert "PreconditionFailed" in refused.stdout
    at_once = iotjobs("bulk", "--query", query, "--action", "enable", "--run", "--follow")
    assert at_once.returncode == 0, at_once.stdout + at_once.stderr
    assert "enable 4 devices" in at_once.stdout and "completed (import of bulk/" in at_once.stdout
    assert {status(f"b-{i}") for i in range(6)} == {"enabled"}

    # a query that selects nothing: no plan, nothing to run
    none = iotjobs("--json", "bulk", "--query", "SELECT * FROM devices WHERE tags.site = 'x'", "--action", "delete")
    assert none.returncode == 0, none.stdout + none.stderr
    empty = json.loads(none.stdout)
    assert empty["plan"] is None and empty["bulk"]["devices"] == 0 and "nothing to plan or run" in empty["message"]
    nothing = iotjobs("bulk", "run", empty["bulk"]["id"], "--follow")
    assert nothing.returncode == 1 and "NothingToRun" in nothing.stderr, nothing.stderr
    # usage errors exit 2; what the app refuses exits 1
    assert iotjobs("bulk", "--query", query).returncode == 2
    assert iotjobs("bulk", "--query", query, "--action", "disable", "--tag", "a=b").returncode == 2
    assert iotjobs("bulk", "--query", query, "--action", "setTags", "--args", "[1]").returncode == 2
    assert iotjobs("bulk", "run").returncode == 2
    bad = iotjobs("bulk", "--query", "DELETE FROM devices", "--action", "delete")
    assert bad.returncode == 1 and "InvalidQuery" in bad.stderr, bad.stderr
    unknown = iotjobs("bulk", "run", "20260101T000000Z-0a1b2c")
    assert unknown.returncode == 1 and "BulkNotFound" in unknown.stderr, unknown.stderr


def test_rollback_follow_follows_the_inverse_import_to_its_end_and_exits_with_its_outcome(
    stack: Stack, tmp_path: Path
) -> None:
    stack.app.values["IMPORT_SNAPSHOTS"] = "explicit"  # the app's default (the local stack turns it off)
    iotjobs = runner(stack, tmp_path)
    fleet = _lines(tmp_path / "fleet.jsonl", [device_line(f"rb-{i}", "create") for i in range(4)])
    imported = iotjobs("--json", "upload", str(fleet), "--follow")
    assert imported.returncode == 0, imported.stdout + imported.stderr
    import_id = json.loads(imported.stdout)["jobId"]

    undone = iotjobs("rollback", import_id, "--hub", "devhub", "--follow")
    assert undone.returncode == 0, undone.stdout + undone.stderr
    jobs = stack.app.jobs()
    (rollback,) = [j for j in jobs if j["kind"] == "rollback"]
    (inverse,) = [j for j in jobs if j["kind"] == "import" and j["rollbackOf"] == import_id]
    # The rollback names the import its work goes on in; when the command returned, that import had ended too.
    assert stack.app.job("devhub", rollback["jobId"])["followUp"] == inverse["jobId"]
    assert inverse["state"] == "completed"
    assert [hub_call(stack.hub, "GET", f"/devices/rb-{i}").status_code for i in range(4)] == [404] * 4
    # Both outcomes shown, the rollback's first, then the import's, whose outcome is the exit code.
    out = undone.stdout
    at_rollback = out.index(f"job {rollback['jobId']} on devhub: completed (rollback)")
    at_import = out.index(f"job {inverse['jobId']} on devhub: completed (import of snapshots/")
    assert at_rollback < at_import, out
    assert f"following job {inverse['jobId']} on devhub" in undone.stderr

    # As JSON: the job printed, whose state is the exit code, is the inverse import, ended.
    again = iotjobs("--json", "upload", str(fleet), "--follow")
    assert again.returncode == 0, again.stderr
    second = iotjobs("--json", "rollback", json.loads(again.stdout)["jobId"], "--hub", "devhub", "--follow")
    assert second.returncode == 0, second.stdout + second.stderr
    last = json.loads(second.stdout)
    assert (last["kind"], last["rollbackOf"], last["state"]) == (
        "import",
        json.loads(again.stdout)["jobId"],
        "completed",
    )
    # and `iotjobs job <rollback> --follow` follows through the same way
    followed = iotjobs("--json", "job", "devhub", rollback["jobId"], "--follow")
    assert followed.returncode == 0 and json.loads(followed.stdout)["jobId"] == inverse["jobId"], followed.stdout


def test_piped_listings_print_whole_values_tab_separated_and_output_chooses_the_shape(
    iotjobs, stack: Stack, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    long_name = "site-oslo-building-7-floor-3-" + "thermostats-replaced-in-december-" * 3 + "batch-1.jsonl"
    assert len(f"uploads/{long_name}") > 100
    fleet = _lines(tmp_path / long_name, [device_line(f"tsv-{i}") for i in range(3)])
    assert iotjobs("upload", str(fleet), "--follow").returncode == 0
    assert iotjobs("upload", str(_lines(tmp_path / "short.jsonl", [device_line("tsv-9")])), "--follow").returncode == 0

    # stdout is a pipe here, as in `iotjobs jobs | grep ...` or `> file`: tab-separated, one job a line, whole values
    piped = iotjobs("jobs")
    assert piped.returncode == 0, piped.stderr
    header, *rows = [line.split("\t") for line in piped.stdout.splitlines()]
    assert header == ["job", "hub", "kind", "state", "progress", "lines", "refused", "source", "updated"]
    listed = {row[0]: dict(zip(header, row, strict=True)) for row in rows}
    jobs = {j["jobId"]: j for j in stack.app.jobs()}
    assert set(listed) == set(jobs) and len(rows) == 2
    for job_id, row in listed.items():
        assert row["source"] == jobs[job_id]["source"] and row["updated"] == jobs[job_id]["updated"]
        assert (row["state"], row["lines"]) == (jobs[job_id]["state"], str(jobs[job_id]["lines"]))
    assert f"uploads/{long_name}" in {row["source"] for row in listed.values()}
    grepped = [line for line in piped.stdout.splitlines() if "thermostats-replaced" in line]
    assert len(grepped) == 1 and grepped[0].endswith(jobs[grepped[0].split("\t")[0]]["updated"])

    # --output picks the shape whatever stdout is: json as --json, table as on a terminal (long values cut)
    as_json = iotjobs("jobs", "--output", "json")
    assert as_json.returncode == 0 and {j["jobId"] for j in json.loads(as_json.stdout)} == set(jobs)
    table = iotjobs("jobs", "-o", "table")
    assert table.returncode == 0 and table.stdout.split()[:3] == ["job", "hub", "kind"] and "\t" not in table.stdout
    assert f"uploads/{long_name}" not in table.stdout
    assert iotjobs("jobs", "--output", "csv").returncode == 2


def test_the_command_refuses_a_local_stack_other_than_the_one_its_settings_name(stack: Stack, tmp_path: Path) -> None:
    stack.app.values["IOTJOBS_INSTANCE_ID"] = "devstack-this-one"
    app = stack.app.start()
    assert requests.get(f"{app.url}/api/health", timeout=10).json() == {
        "status": "ok", "instance": "devstack-this-one",
    }  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTJOBS_")}

    def jobs_with(instance: str) -> subprocess.CompletedProcess[str]:
        values = {"IOTJOBS_URL": app.url, "IOTJOBS_KEY": FUNCTION_KEY, "IOTJOBS_INSTANCE_ID": instance}
        (tmp_path / "local.settings.json").write_text(json.dumps({"Values": values}))
        return subprocess.run(
            [str(SCRIPT), "jobs"], cwd=tmp_path, env={**env, "PYTHONPATH": str(REPO)},
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    ours = jobs_with("devstack-this-one")
    assert ours.returncode == 0, ours.stderr
    other = jobs_with("devstack-another-one")  # the settings name a stack; another one holds its port
    assert other.returncode == 2 and other.stdout == "", other.stdout + other.stderr
    assert "is not the local stack" in other.stderr and "instance devstack-another-one" in other.stderr
    assert "Traceback" not in other.stderr
