"""What ``iotjobs`` prints about an outcome is human wording: no Python reprs, each count once, a finding about the
whole file at no "line 0", an upload bar that ends with its time rather than a question mark."""

from __future__ import annotations

import io
import json
from typing import Any, cast

from rich.console import Console

from iotjobs import cli
from iotjobs.client import Api


class Reports:
    """The one thing ``outcome`` asks of the API client: a job's report, by name."""

    def __init__(self, **reports: Any) -> None:
        self.reports = {name: json.dumps(doc).encode() for name, doc in reports.items()}

    def report(self, job: dict[str, Any], name: str) -> bytes | None:
        return self.reports.get(name)


def outcome(job: dict[str, Any], **reports: Any) -> str:
    return "\n".join(cli.outcome(cast(Api, Reports(**reports)), job))


JOB = {"jobId": "8234567890123-0a1b2c", "hub": "devhub", "kind": "import", "source": "uploads/f.jsonl"}


def test_an_empty_file_is_a_finding_about_the_file_and_its_count_is_said_once() -> None:
    job = {
        **JOB,
        "state": "rejected",
        "validationErrors": 1,
        "failureReason": "1 problem in the file; nothing was imported",
        "reports": {"rejection": "reports/x/rejection.json"},
    }
    rejection = {"errorCount": 1, "errors": [{"line": 0, "code": "EMPTY_FILE", "message": "The file holds no devices"}]}
    text = outcome(job, rejection=rejection)
    assert "line     0" not in text and "line 0" not in text
    assert "file       EMPTY_FILE" in text
    assert text.count("problem") == 1, text


def test_a_completed_import_says_its_modes_and_what_it_applied_in_words() -> None:
    job = {**JOB, "state": "completed", "lines": 13, "modes": {"createOrUpdate": 10, "delete": 3}, "devices": 13}
    text = outcome(job)
    assert "13 lines (10 createOrUpdate, 3 delete); 13 applied" in text
    assert "{" not in text and "'" not in text


def test_kept_items_of_an_iot_central_plan_are_listed_not_a_dict() -> None:
    assert cli.kept_text({"destinations": ["blob-a", "hub-b"], "exports": []}) == "destinations blob-a, hub-b"
    assert cli.kept_text({"destinations": [], "exports": []}) == "nothing"
    assert cli.kept_text({}) == "nothing"


def test_a_migration_completed_with_errors_says_why() -> None:
    doc = {
        "migrationId": "m1",
        "from": "devhub",
        "to": "stagehub",
        "mode": "create",
        "includeKeys": True,
        "state": "completed_with_errors",
        "stage": "done",
        "failureReason": None,
        "why": "stagehub refused 1 line(s) of the import; in create mode ... (DeviceAlreadyExists)",
        "jobs": {},
    }
    assert "  why: stagehub refused 1 line(s) of the import" in "\n".join(cli.migration_lines(doc))


def test_the_upload_bar_ends_with_its_time_not_a_question_mark() -> None:
    screen = io.StringIO()
    console = Console(file=screen, width=120, force_terminal=False)
    with cli.upload_progress(console) as bar:
        task = bar.add_task("uploading uploads/f.jsonl", total=2048)
        bar.update(task, completed=2048)
    shown = screen.getvalue().strip().splitlines()[-1]
    assert "uploading uploads/f.jsonl" in shown and "2.0/2.0 kB" in shown
    assert not shown.rstrip().endswith("?") and "?" not in shown
