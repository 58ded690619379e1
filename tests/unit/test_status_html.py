"""The status page's server-rendered essentials (what a browser without JavaScript shows): every value escaped,
times in UTC, no link, and the page served with them even when the services fail."""

from __future__ import annotations

from typing import Any

from shared.api import Request, status_page
from shared.config import ConfigError
from shared.status_html import PLACEHOLDER, essentials, utc

HOSTILE = '"><img src=x onerror=alert(1)><script>alert(2)</script>'


def _doc(**over: Any) -> dict[str, Any]:
    job = {"jobId": "8234567890123-0a1b2c", "hub": "devhub", "kind": "import", "state": "rejected",
           "source": f"uploads/{HOSTILE}.jsonl", "updated": "2026-12-01T02:00:00+00:00", "failureReason": HOSTILE,
           "validationErrors": 3, "links": {"summary": "https://x/reports/s.json?sig=secret"}}  # fmt: skip
    hub = {"name": "devhub", "running": None, "queue": [], "backups": {"newest": None}}
    return {"generatedAt": "2026-12-01T02:00:05+00:00", "retentionDays": 30, "hubs": [hub], "recent": [job],
            "central": {"configured": False}, **over}  # fmt: skip


def test_every_value_is_escaped_and_no_link_is_rendered() -> None:
    html = essentials(_doc())
    assert "<img" not in html and "<script" not in html and "sig=secret" not in html and "href" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "&quot;&gt;" in html
    assert "Need a look (1)" in html and "3 problems in the file" in html
    assert "1 line ·" in essentials(_doc(recent=[{**_doc()["recent"][0], "lines": 1}]))


def test_times_are_utc_and_say_so() -> None:
    assert utc("2026-12-01T03:04:05.678+00:00") == "2026-12-01 03:04:05 UTC"
    assert "snapshot taken 2026-12-01 02:00:05 UTC" in essentials(_doc())


def test_the_page_is_served_with_the_essentials_or_with_why_they_are_missing() -> None:
    def broken() -> Any:
        raise ConfigError("no hub")

    page = status_page(Request(), broken)
    assert page.status == 200 and "The status could not be read now" in page.content()
    assert PLACEHOLDER not in page.content() and "no hub" not in page.content()
    assert PLACEHOLDER in status_page(Request()).content()  # no services: the page alone
