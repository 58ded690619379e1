"""The status page's essentials as HTML, rendered on the server into the page's ``<noscript>``: what a screenshot,
a text browser or a locked-down kiosk without JavaScript shows (the hubs, what runs, the backups, the failures).

Every value from the document is escaped (``html.escape``, quotes included): blob names, failure reasons and
sources are the uploader's text. Nothing here uses a ``style`` attribute or a script (the page's CSP allows only
its own hashed ``<style>`` and ``<script>``), and no link is rendered (report links are SAS; the page with
JavaScript shows them). Times are UTC and say so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from html import escape
from typing import Any

PLACEHOLDER = "<!--essentials-->"
RELOAD_SECONDS = 30  # the no-script page reloads itself (a <meta refresh> inside <noscript>) this often
_NEEDS_LOOK = ("failed", "rejected", "completed_with_errors")
SHOWN = 10


def utc(iso: str | None) -> str:
    """``2026-12-01T02:00:00.123+00:00`` -> ``2026-12-01 02:00:00 UTC`` (empty for none)."""
    if not iso:
        return ""
    try:
        return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return escape(iso)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = max(0, round(seconds))
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def _e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def _hub_row(hub: Mapping[str, Any], retention_days: int) -> str:
    run = hub.get("running")
    busy = f"running {_e(run['kind'])} {_e(run.get('progress', 0))}% ({_e(run.get('source') or '')})" if run else "idle"
    newest = (hub.get("backups") or {}).get("newest")
    if newest:
        old = " · older than retention" if newest.get("pastRetention") else ""
        keys = ", with keys" if newest.get("includesKeys") else ""
        backup = (
            f"{utc(newest.get('taken'))} · {_e(newest.get('devices'))} devices{keys} · "
            f"{_age(newest.get('ageSeconds'))} old (retention {retention_days} d){old}"
        )
    else:
        backup = "no complete backup yet"
    return (
        f'<tr data-hub="{_e(hub["name"])}"><th scope="row">{_e(hub["name"])}</th><td>{busy}</td>'
        f"<td>{len(hub.get('queue') or [])}</td><td>{backup}</td></tr>"
    )


def _plural(n: Any, word: str) -> str:
    return f"{_e(n)} {word}{'' if n == 1 else 's'}"


def _job_item(job: Mapping[str, Any]) -> str:
    why = f'<br><span class="bad">{_e(job.get("failureReason"))}</span>' if job.get("failureReason") else ""
    counts = [
        _plural(job.get(field), word) + rest
        for field, word, rest in (
            ("lines", "line", ""),
            ("failedDevices", "device", " refused by the hub"),
            ("validationErrors", "problem", " in the file"),
        )
        if job.get(field)
    ]
    said = f" · {' · '.join(counts)}" if counts else ""
    return (
        f'<li data-job="{_e(job["jobId"])}" data-state="{_e(job["state"])}"><b>{_e(job["state"])}</b> '
        f'{_e(job["hub"])} {_e(job["kind"])} <span class="src">{_e(job.get("source") or "")}</span>'
        f" · {utc(job.get('updated'))}{said} · job {_e(job['jobId'])}{why}</li>"
    )


def _jobs(jobs: Iterable[Mapping[str, Any]], empty: str) -> str:
    items = "".join(_job_item(j) for j in jobs)
    return f'<ul class="plain small">{items}</ul>' if items else f'<p class="empty">{escape(empty)}</p>'


def essentials(doc: Mapping[str, Any]) -> str:
    """The document's essentials as an HTML fragment (every value escaped)."""
    retention = int(doc.get("retentionDays", 0))
    hubs = "".join(_hub_row(h, retention) for h in doc.get("hubs", []))
    recent = list(doc.get("recent", []))
    failures = [j for j in recent if j.get("state") in _NEEDS_LOOK]
    others = [j for j in recent if j.get("state") not in _NEEDS_LOOK][:SHOWN]
    central = doc.get("central") or {}
    central_line = ""
    if central.get("configured"):
        run = central.get("running")
        central_line = (
            f'<p id="ns-central">IoT Central: {"applying " + _e(run.get("source") or "") if run else "idle"}, '
            f"{len(central.get('queue') or [])} queued</p>"
        )
    return (
        f'<section id="ns-essentials" class="card"><p class="small muted">Without JavaScript: a snapshot taken '
        f"{utc(doc.get('generatedAt'))}; the page reloads every {RELOAD_SECONDS} s. All times are UTC.</p>"
        f'<h2>Hubs</h2><table id="ns-hubs" class="small"><thead><tr><th scope="col">hub</th><th scope="col">now'
        f'</th><th scope="col">queued</th><th scope="col">newest backup</th></tr></thead><tbody>{hubs}</tbody>'
        f"</table>"
        f'<h2 id="ns-attention">Need a look ({len(failures)})</h2>{_jobs(failures, "no failures among recent jobs")}'
        f"<h2>Other recent jobs</h2>{_jobs(others, 'none')}{central_line}</section>"
    )


def unavailable(reason: str) -> str:
    """What the no-script page says when the essentials could not be read (the script may still succeed)."""
    return (
        f'<section id="ns-essentials" class="card"><p class="bad">The status could not be read now: '
        f"{escape(reason)}. Reload the page.</p></section>"
    )


def fill(page: str, fragment: str) -> str:
    """The page with the fragment in place of its placeholder."""
    return page.replace(PLACEHOLDER, fragment, 1)
