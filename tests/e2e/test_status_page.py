"""The status page in a real headless Chromium against the local stack: refused without the key, served with it,
a running job's bar moving, a finished job's report link opening; screenshots saved for people to look at."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from emulators.azurite import ACCOUNT_KEY
from emulators.functions_host import FUNCTION_KEY
from tests.integration.helpers import control, device_line

from .app import Stack
from .browser import FLAGS, chromium_executable

BAR = '[data-hub="devhub"] [role="progressbar"]'


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = chromium_executable()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=list(FLAGS))
        yield browser
        browser.close()


def _bar_value(page: Page) -> int:
    return int(page.locator(BAR).get_attribute("aria-valuenow") or "0")


def test_status_page_in_chromium(stack: Stack, browser: Browser, tmp_path: Path) -> None:
    app = stack.app.start()
    # A finished import with one device the hub refused (a delete of a device it does not have), and a rejected file.
    stack.drop("fleet.jsonl", [device_line(f"fleet-{i:05d}") for i in range(10_000)] + [device_line("ghost", "delete")])
    stack.drop("typo.jsonl", [{"id": "bad-1", "status": "enabled", "authentication": {"type": "SELF_SIGNED"}}])
    imported, rejected = sorted(app.wait_jobs(2), key=lambda j: j["source"])
    assert (imported["state"], rejected["state"]) == ("completed_with_errors", "rejected")

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()

    refused = page.goto(f"{app.url}/api/status")
    assert refused is not None and refused.status == 401
    wrong = page.goto(f"{app.url}/api/status?code=not-the-key")
    assert wrong is not None and wrong.status == 401

    served = page.goto(f"{app.url}/api/status?code={FUNCTION_KEY}")
    assert served is not None and served.status == 200
    page.locator('[data-hub="devhub"]').wait_for()
    # Failures first: the rejected file above the import that completed with errors.
    page.locator(f'article[data-job="{imported["jobId"]}"]').wait_for()
    order = page.locator("#recent article").evaluate_all("rows => rows.map(r => r.dataset.state)")
    assert order == ["rejected", "completed_with_errors"]

    # A backup of the 10,000 devices, slowed down by the emulator (1 s per 1,000): the bar moves as it runs.
    control(stack.hub, "faults", {"jobStepDelay": 1.0})
    started = app.call("POST", "exports", json={"hub": "devhub"})
    assert started.status_code == 202, started.text
    page.locator(BAR).wait_for(timeout=60_000)
    first = _bar_value(page)
    page.wait_for_function(
        "([selector, first]) => { const bar = document.querySelector(selector);"
        " return bar !== null && Number(bar.getAttribute('aria-valuenow')) > first; }",
        arg=[BAR, first],
        timeout=60_000,
    )
    moved = _bar_value(page)
    assert 0 <= first < moved <= 100
    running = page.locator('[data-hub="devhub"] .running').inner_text()
    assert "elapsed" in running and "ETA" in running
    page.screenshot(path=str(tmp_path / "status-running.png"), full_page=True)
    control(stack.hub, "faults", {"jobStepDelay": 0})
    app.wait_jobs(3)

    # The finished import's summary link opens the report, read straight from storage with the 15-minute link.
    link = page.locator(f'article[data-job="{imported["jobId"]}"] a[data-report="summary"]')
    link.wait_for()
    with context.expect_page() as opened:
        link.click()
    report = opened.value
    report.wait_for_load_state()
    summary = json.loads(report.locator("body").inner_text())
    assert summary["job"]["jobId"] == imported["jobId"] and summary["job"]["failedDevices"] == 1
    report.close()
    errors = page.locator(f'article[data-job="{imported["jobId"]}"] a[data-report="errors"]')
    assert errors.count() == 1

    # The backup appears with its device count once the export has ended.
    page.locator('[data-hub="devhub"]').get_by_text("10,000 devices").first.wait_for()
    page.screenshot(path=str(tmp_path / "status.png"), full_page=True)

    # What the page shows never includes a key or a connection string (links are in hrefs, never in the text).
    text = page.locator("body").inner_text()
    for secret in (FUNCTION_KEY, ACCOUNT_KEY, "SharedAccessKey", "AccountKey=", "sig="):
        assert secret not in text

    phone = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True)
    small = phone.new_page()
    small.goto(f"{app.url}/api/status?code={FUNCTION_KEY}")
    small.locator('[data-hub="devhub"]').wait_for()
    # Readable on a phone: nothing wider than the screen.
    assert small.evaluate("document.documentElement.scrollWidth") <= 390
    small.screenshot(path=str(tmp_path / "status-phone.png"), full_page=True)
    phone.close()
    context.close()
    for name in ("status-running.png", "status.png", "status-phone.png"):
        assert (tmp_path / name).stat().st_size > 10_000


def test_without_javascript_the_page_shows_the_hubs_and_failures_rendered_by_the_server(
    stack: Stack, browser: Browser, tmp_path: Path
) -> None:
    app = stack.app.start()
    hostile = 'x"><img src=x onerror=alert(1)>.jsonl'
    stack.drop("fleet.jsonl", [device_line(f"ns-{i}") for i in range(3)])
    stack.drop(hostile, [{"id": "bad-1", "status": "SELF_SIGNED"}])
    jobs = app.wait_jobs(2)
    rejected = next(j for j in jobs if j["state"] == "rejected")

    # A text browser or a script reading the HTML: the essentials are in the page itself, every value escaped.
    html = app.call("GET", "status").text
    assert '<tr data-hub="devhub">' in html and f'data-job="{rejected["jobId"]}"' in html
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "UTC" in html and "sig=" not in html.split("<noscript>", 2)[2]  # no report link in the essentials

    context = browser.new_context(java_script_enabled=False, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    served = page.goto(f"{app.url}/api/status?code={FUNCTION_KEY}")
    assert served is not None and served.status == 200
    essentials = page.locator("#ns-essentials")
    assert essentials.is_visible()
    assert page.locator("#ns-hubs tr[data-hub='devhub']").inner_text().startswith("devhub")
    failure = page.locator(f"#ns-essentials li[data-job='{rejected['jobId']}']")
    assert failure.is_visible() and hostile.removesuffix(".jsonl") in failure.inner_text()
    assert "need a look (1)" in essentials.inner_text().lower() and " UTC" in failure.inner_text()
    assert page.locator("img").count() == 0 and not page.locator("#live").is_visible()
    page.screenshot(path=str(tmp_path / "status-noscript.png"), full_page=True)
    assert (tmp_path / "status-noscript.png").stat().st_size > 10_000
    context.close()

    # With JavaScript, the live page alone: the <noscript> essentials are not part of its document.
    live = browser.new_page()
    live.goto(f"{app.url}/api/status?code={FUNCTION_KEY}")
    live.locator('[data-hub="devhub"]').wait_for()
    assert live.locator("#ns-essentials").count() == 0 and "UTC" in live.locator("#updated").inner_text()
    live.close()
