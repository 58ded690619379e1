"""The ``iotjobs`` command: drop devices files, follow jobs to their end, list, cancel, back up and restore, preview
and undo imports, act on a query (``iotjobs bulk``).

Exit codes, for scripts: 0 the job completed (or the command did what it says), 3 rejected (nothing reached the
hub), 4 failed, 5 completed with errors (some devices refused), 6 cancelled, 1 the app or storage refused or did
not answer, 2 a usage or configuration error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from . import completion, output, sheet, toolbox
from . import config as configuration
from .client import CENTRAL, TERMINAL, UPLOADS, Api, ApiError, Backup, upload

OK, ERROR, USAGE, REJECTED, FAILED, COMPLETED_WITH_ERRORS, CANCELLED, INTERRUPTED = 0, 1, 2, 3, 4, 5, 6, 130
EXIT_BY_STATE = {
    "completed": OK,
    "completed_with_errors": COMPLETED_WITH_ERRORS,
    "failed": FAILED,
    "cancelled": CANCELLED,
    "rejected": REJECTED,
}
SHOWN = 10  # findings or refused devices listed in an outcome; the report has them all
WIDTH = 100  # a message longer than this is cut, with an ellipsis

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)


def cut(text: str, width: int = WIDTH) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def exit_code(job: dict[str, Any]) -> int:
    return EXIT_BY_STATE.get(job["state"], OK)


def hint(job: dict[str, Any]) -> str:
    where = f"{job['hub']} {job['jobId']}"
    return f"job {job['jobId']} on {job['hub']} is {job['state']}; follow it: iotjobs job {where} --follow"


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


# --- showing jobs ---------------------------------------------------------------------------------------


def listing(found: Iterable[str], total: int, more: str) -> list[str]:
    """Lines as listed plus, when the report has more than those, one that says how many more."""
    lines = list(found)
    if total > len(lines):
        lines.append(f"… and {total - len(lines):,} more {more}")
    return lines


def outcome(api: Api, job: dict[str, Any]) -> list[str]:
    """What a person needs to know about a job that has ended: counts, why, the first findings, the reports."""
    what = f"{job['kind']} of {job['source']}" if job.get("source") else job["kind"]
    lines = [f"job {job['jobId']} on {job['hub']}: {job['state']} ({what})"]
    counts = []
    if job.get("lines"):
        counts.append(_plural(job["lines"], "line") + modes_text(job.get("modes") or {}))
    if job["kind"] == "export" and job["state"] == "completed":
        counts.append(_plural(job.get("devices", 0), "device") + " backed up")
    elif job["kind"] in IMPORTS and job["state"] in ("completed", "completed_with_errors"):
        counts.append(f"{job.get('devices', 0):,} applied")
    if job.get("failedDevices"):
        counts.append(_plural(job["failedDevices"], "device") + " refused by the hub")
    if job.get("validationErrors") and job["state"] != "rejected":  # a rejection's reason gives the count
        counts.append(_plural(job["validationErrors"], "problem") + " in the file")
    if counts:
        lines.append("  " + "; ".join(counts))
    if job.get("failureReason"):
        lines.append("  " + cut(job["failureReason"], 300))
    lines += ["  note: " + cut(n, 300) for n in job.get("notes", [])]
    lines += ["  " + x for x in _findings(api, job)]
    if job.get("reports"):
        lines.append("  reports: " + ", ".join(job["reports"].values()))
    return lines


IMPORTS = ("import", "restore", "migration_import")


def modes_text(modes: dict[str, int]) -> str:
    """`` (13 createOrUpdate)``, `` (10 create, 3 delete)``: a file's lines per import mode, in words."""
    if not modes:
        return ""
    return " (" + ", ".join(f"{n:,} {mode}" for mode, n in sorted(modes.items(), key=lambda kv: -kv[1])) + ")"


def where(finding: dict[str, Any]) -> str:
    """Where a finding is: ``line 12``, or ``file`` for one about the whole file (an empty or compressed file)."""
    line = finding.get("line")
    return f"line {line:>5}" if isinstance(line, int) and line > 0 else "file      "


def kept_text(unmanaged: dict[str, list[str]]) -> str:
    """What an IoT Central apply keeps that the file does not name: ``destinations a, b; exports c`` or nothing."""
    parts = [f"{kind} {', '.join(ids)}" for kind, ids in unmanaged.items() if ids]
    return "; ".join(parts) if parts else "nothing"


def _findings(api: Api, job: dict[str, Any]) -> list[str]:
    try:
        if "rejection" in job.get("reports", {}):
            doc = json.loads(api.report(job, "rejection") or b"{}")
            errors = doc.get("errors", [])
            found = (f"{where(e)} {e.get('code', ''):<22} {cut(e.get('message', ''))}" for e in errors)
            total = int(doc.get("errorCount", len(errors)))
            return listing(list(found)[:SHOWN], total, "(see the rejection report)")
        if "errors" in job.get("reports", {}):
            raw = (api.report(job, "errors") or b"").decode()
            rows = [json.loads(x) for x in raw.splitlines()[:SHOWN] if x.strip()]
            found = (
                f"{r.get('deviceId', '?'):<24} {r.get('errorName', '')}: {cut(r.get('message', ''), 70)}" for r in rows
            )
            return listing(found, int(job.get("failedDevices", len(rows))), "(see errors.csv)")
        if "skipped" in job.get("reports", {}):  # a bulk's run: the devices changed since its plan, not acted on
            raw = (api.report(job, "skipped") or b"").decode()
            rows = [json.loads(x) for x in raw.splitlines() if x.strip()]
            found = (f"{r.get('deviceId', '?'):<24} skipped: {cut(r.get('reason', ''), 70)}" for r in rows[:SHOWN])
            return listing(found, len(rows), "(see skipped.jsonl)")
        if "result" in job.get("reports", {}):
            doc = json.loads(api.report(job, "result") or b"{}")
            return [
                f"{r.get('action', ''):<8} {r.get('kind', ''):<11} {r.get('id', '')} -> {r.get('outcome', '')}"
                for r in doc.get("results", [])
            ]
    except (ValueError, OSError) as exc:  # a report that cannot be read is mentioned, not fatal
        return [f"(the report could not be read: {type(exc).__name__})"]
    return []


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[state]}"),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )


def follow(api: Api, job: dict[str, Any]) -> dict[str, Any]:
    """Follow a job to its end with a progress bar; returns it as it ended."""
    with _progress() as bar:
        task = bar.add_task(f"job {job['jobId']}", total=100, state=job["state"])

        def show(now: dict[str, Any]) -> None:
            state = now["state"] + (f" ({cut(now['waitingFor'], 60)})" if now.get("waitingFor") else "")
            bar.update(task, completed=now.get("progress") or 0, state=state)

        return api.follow(job, show)


def follow_through(api: Api, job: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Follow a job to its end, then the job its work goes on in (``followUp``: a rollback's inverse import), and
    so on; returns the last one as it ended, whose outcome is the work's. Each job ended before it is shown."""
    job = follow(api, job) if job["state"] not in TERMINAL else job
    while job["state"] == "completed" and job.get("followUp"):
        if not args.json:
            for line in outcome(api, api.job(job["hub"], job["jobId"])):
                out.print(line, markup=False)
        err.print(f"following job {job['followUp']} on {job['hub']}, where the work goes on", markup=False)
        job = api.job(job["hub"], job["followUp"])
        if job["state"] not in TERMINAL:
            job = follow(api, job)
    return job


def finish(api: Api, job: dict[str, Any], args: argparse.Namespace) -> int:
    if "links" not in job:  # a job as listed: read it whole, with its report links
        job = api.job(job["hub"], job["jobId"])
    if args.json:
        out.print_json(data=job)
    else:
        for line in outcome(api, job):
            out.print(line, markup=False)
    return exit_code(job)


JOB_COLUMNS = ("job", "hub", "kind", "state", "progress", "lines", "refused", "source", "updated")


def job_row(j: dict[str, Any]) -> list[str]:
    """A listed job's values, whole (a table cuts the long ones itself)."""
    return [
        j["jobId"], j["hub"], j["kind"], j["state"], f"{j.get('progress', 0)}%", str(j.get("lines") or ""),
        str(j.get("failedDevices") or ""), j.get("source") or "", j["updated"],
    ]  # fmt: skip


def jobs_table(jobs: list[dict[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in JOB_COLUMNS:
        table.add_column(column, no_wrap=column in ("job", "state"))
    for j in jobs:
        row = job_row(j)
        table.add_row(*row[:7], cut(row[7], 50), row[8][:19])
    return table


def output_format(args: argparse.Namespace) -> str:
    """How a listing is printed: ``--output`` (or ``--json``), else a table on a terminal and tab-separated values,
    whole, when stdout is a pipe or a file (as ``az`` chooses ``-o``)."""
    if args.json:
        return "json"
    chosen: str | None = getattr(args, "output", None)
    return chosen or ("table" if out.is_terminal else "tsv")


def print_tsv(columns: Iterable[str], rows: Iterable[list[str]]) -> None:
    """One header line, then one line per row: values whole, tab-separated (a tab or newline inside a value
    becomes a space), written as they are (no wrapping, no markup), for grep, cut and spreadsheets."""
    for values in [list(columns), *rows]:
        sys.stdout.write("\t".join(" ".join(v.split("\t")).replace("\n", " ") for v in values) + "\n")
    sys.stdout.flush()


# --- commands -------------------------------------------------------------------------------------------


def upload_progress(console: Console = err) -> Progress:
    """The bar of an upload: bytes sent of the size, and the time it took. (No transfer speed: rich shows '?' until
    it has measured one, which a small or quick upload never gets, so the line ended with a question mark.)"""
    return Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeElapsedColumn(), console=console
    )


def cmd_upload(api: Api, args: argparse.Namespace) -> int:
    path: Path = args.file
    if not path.is_file():
        raise configuration.ConfigError(f"no file at {path}")
    name = args.name or path.name
    if args.hub:
        name = f"{args.hub}/{name}"  # a first folder that names a hub (or central) selects it
    # One call before anything is uploaded, checked by the app as it checks every upload: the key, the name (no ./..
    # or empty folder, backslash or control character) and the hub the first folder names (a file at the root is for
    # the default hub). The app would reject such an upload after the fact; this keeps it out of storage.
    folder, nested, _ = name.partition("/")
    try:
        api.jobs(hub=folder if nested else None, source=f"{UPLOADS}/{name}", limit=1)
    except ApiError as exc:
        if exc.status in (400, 404):
            raise ApiError(exc.status, exc.code, f"{exc.message}; nothing was uploaded") from None
        raise
    size = path.stat().st_size
    with upload_progress() as bar:
        task = bar.add_task(f"uploading {UPLOADS}/{name}", total=size)
        etag = upload(api.config, path, name, lambda done, _total: bar.update(task, completed=done))
    err.print(f"uploaded {UPLOADS}/{name} ({size:,} bytes); waiting for the app to record its job …", markup=False)
    partition = CENTRAL if name.startswith(f"{CENTRAL}/") else args.hub
    job = api.job_of_upload(name, etag, hub=partition, wait=args.wait)
    if args.follow:
        job = follow_through(api, job, args)
    elif job["state"] not in TERMINAL:
        err.print(hint(job), markup=False)
        if args.json:
            out.print_json(data=job)
        return OK
    return finish(api, job, args)


def cmd_jobs(api: Api, args: argparse.Namespace) -> int:
    jobs = api.jobs(hub=args.hub, states=args.state, limit=args.limit)
    if output_format(args) == "table" and not args.jmespath:
        out.print(jobs_table(jobs) if jobs else "no jobs")
    else:  # json, tsv (no jobs: the header alone), or a --jmespath result
        output.emit(args, jobs, JOB_COLUMNS, lambda js: (job_row(j) for j in js))
    return OK


def cmd_job(api: Api, args: argparse.Namespace) -> int:
    job = api.job(args.hub, args.job_id)
    if args.follow:
        job = follow_through(api, job, args)
    if job["state"] not in TERMINAL and not args.json:
        out.print(f"job {job['jobId']} on {job['hub']}: {job['state']} {job.get('progress', 0)}%", markup=False)
        if job.get("waitingFor"):
            out.print("  waiting: " + cut(job["waitingFor"], 300), markup=False)
        return OK
    return finish(api, job, args) if job["state"] in TERMINAL or args.json else OK


def cmd_cancel(api: Api, args: argparse.Namespace) -> int:
    job = api.call("POST", f"jobs/{args.hub}/{args.job_id}/cancel")
    if args.json:
        out.print_json(data=job)
    elif job["state"] == "cancelled":
        out.print(f"job {job['jobId']} cancelled", markup=False)
    else:
        out.print(
            f"job {job['jobId']}: {job.get('waitingFor') or job['state']} (the hub stops it shortly)", markup=False
        )
    return OK


def _started(api: Api, jobs: list[dict[str, Any]], args: argparse.Namespace) -> int:
    """Report jobs just started; with --follow, follow each to its end (exit code: the worst outcome)."""
    code = OK
    for started in jobs:
        job = follow_through(api, started, args) if args.follow else started
        if job["state"] in TERMINAL:
            code = max(code, finish(api, job, args), key=_severity)
        elif args.json:
            out.print_json(data=job)
        else:
            out.print(hint(job), markup=False)
    return code


def _severity(code: int) -> int:
    return (
        [OK, COMPLETED_WITH_ERRORS, CANCELLED, REJECTED, FAILED, ERROR].index(code) if code in (0, 1, 3, 4, 5, 6) else 9
    )


def cmd_export(api: Api, args: argparse.Namespace) -> int:
    if args.csv is not None:
        return export_csv(api, args)
    body: dict[str, Any] = {"includeKeys": args.include_keys}
    if args.hub:
        body["hub"] = args.hub
    return _started(api, api.call("POST", "exports", json=body)["jobs"], args)


def export_csv(api: Api, args: argparse.Namespace) -> int:
    """A backup's devices as a CSV sheet in a local file (read twice from storage: once for the twin columns, once
    for the rows; never held whole). Keys only with --keys, and only where the backup has them."""
    backup = Backup(api.config, args.hub, args.stamp)
    if args.keys and not backup.includes_keys:
        err.print(f"note: backup {backup.hub}/{backup.stamp} was taken without keys: the sheet has none", markup=False)
    twin = sheet.twin_columns(backup.lines())
    target: Path = args.csv
    # utf-8-sig: the BOM is how Excel knows a CSV file is UTF-8 (the app's reader, and LibreOffice, skip it)
    with target.open("w", encoding="utf-8-sig", newline="") as stream:
        rows = sheet.write(stream, sheet.rows(backup.lines(), twin, keys=args.keys and backup.includes_keys))
    keys = "with keys" if args.keys and backup.includes_keys else "without keys"
    err.print(f"wrote {target}: {rows:,} rows of backup {backup.hub}/{backup.stamp} ({keys})", markup=False)
    if args.json:
        out.print_json(data={"file": str(target), "rows": rows, "hub": backup.hub, "stamp": backup.stamp})
    return OK


def cmd_template(args: argparse.Namespace) -> int:
    sys.stdout.write(sheet.template())
    sys.stdout.flush()
    return OK


def cmd_restore(api: Api, args: argparse.Namespace) -> int:
    body = {"backup": args.backup, **({"hub": args.hub} if args.hub else {})}
    return _started(api, [api.call("POST", "restores", json=body)], args)


STATUS_COLUMNS = ("hub", "running", "progress", "queued", "newestBackup", "backupDevices", "pastRetention")


def status_rows(doc: dict[str, Any]) -> list[list[str]]:
    """One row per hub (and IoT Central when configured), whole values, for ``-o tsv``."""
    hubs = [*doc["hubs"], *([{"name": "central", **doc["central"]}] if doc["central"]["configured"] else [])]
    rows = []
    for hub in hubs:
        run = hub.get("running") or {}
        newest = (hub.get("backups") or {}).get("newest") or {}
        rows.append([
            hub["name"], run.get("jobId", ""), output.text(run.get("progress")), str(len(hub.get("queue", []))),
            newest.get("taken", ""), output.text(newest.get("devices")), output.text(newest.get("pastRetention")),
        ])  # fmt: skip
    return rows


def cmd_completion(args: argparse.Namespace) -> int:
    """Print the completion script (no app needed)."""
    script = completion.bash(parser()) if args.shell == "bash" else completion.zsh(parser())
    sys.stdout.write(script)
    return OK


def cmd_status(api: Api, args: argparse.Namespace) -> int:
    doc = api.call("GET", "status.json")
    if args.json or args.jmespath or args.output == "tsv":  # the summary stays the default, even piped
        output.emit(args, doc, STATUS_COLUMNS, status_rows)
        return OK
    for hub in [*doc["hubs"], {"name": "central", **doc["central"]}]:
        if hub["name"] == "central" and not doc["central"]["configured"]:
            continue
        run = hub.get("running")
        busy = f"running {run['kind']} {run['jobId']} {run['progress']}%" if run else "idle"
        newest = (hub.get("backups") or {}).get("newest")
        backup = f"newest backup {newest['taken'][:16]}" if newest else "no backup yet"
        out.print(f"{hub['name']:<16} {busy}; {len(hub.get('queue', []))} queued; {backup}", markup=False)
    if doc["attention"]:
        out.print(f"{doc['attention']} recent job(s) need a look:", markup=False)
        for j in doc["recent"][: doc["attention"]]:
            why = cut(j.get("failureReason") or j.get("source") or "", 60)
            out.print(f"  {j['state']:<22} {j['hub']:<12} {j['jobId']}  {why}", markup=False)
    out.print(f"status page: {api.config.api}/status?code=<function key>", markup=False)
    return OK


def cmd_central(api: Api, args: argparse.Namespace) -> int:
    if args.action == "backup":
        manifest = api.call("POST", "central/backups")
        if args.json:
            out.print_json(data=manifest)
        else:
            taken = manifest["created"][:19]
            out.print(f"{manifest['destinations']} destination(s), {manifest['exports']} export(s) ({taken})")
        return OK
    if args.file is None:
        raise configuration.ConfigError(f"iotjobs central {args.action} needs a data-export file")
    data = args.file.read_bytes()
    if args.action == "plan":
        plan = api.call("POST", "central/plan", data=data)
        if args.json:
            out.print_json(data=plan)
            return OK
        for step in plan.get("steps", []):
            changes = f" [{', '.join(step['changes'])}]" if step.get("changes") else ""
            out.print(f"{step['action']:<8} {step['kind']:<11} {step['id']}{changes}", markup=False)
        out.print(
            f"{plan.get('changes', 0)} change(s); kept, not in the file: {kept_text(plan.get('unmanaged') or {})}",
            markup=False,
        )
        return OK
    job = api.call("POST", "central/apply", data=data)
    return _started(api, [job], args)


def cmd_plan(api: Api, args: argparse.Namespace) -> int:
    """Preview an import: the plan is waited for (--wait seconds, then followed as a job) and summed up."""
    params = {"wait": str(min(int(args.wait), 120)), **({"hub": args.hub} if args.hub else {})}
    job = api.call(
        "POST",
        "imports/plan",
        params=params,
        data=args.file.read_bytes(),
        # a sheet is read as CSV by its type, as an upload is by its name
        headers={"content-type": "text/csv" if args.file.name.lower().endswith(".csv") else "text/plain"},
    )
    if job["state"] not in TERMINAL:
        job = follow(api, job)
    if job["state"] != "completed":
        return finish(api, job, args)
    plan = job.get("plan") or json.loads(api.report(api.job(job["hub"], job["jobId"]), "plan") or b"{}")
    if args.json:
        out.print_json(data=plan)
        return OK
    totals = plan.get("totals", {})
    out.print(", ".join(f"{n} {k}" for k, n in totals.items()) + f" (registry: {plan['registry']['from']})")
    for mode, counts in sorted(plan.get("byMode", {}).items()):
        out.print(f"  {mode:<26} " + ", ".join(f"{n} {k}" for k, n in counts.items() if n), markup=False)
    for r in plan.get("refused", [])[:20]:
        out.print(f"  line {r['line']}: {r['deviceId']} {r['code']}: {r['message']}", markup=False)
    return OK


def cmd_approve(api: Api, args: argparse.Namespace) -> int:
    """Let an import held awaiting_approval run (read its plan first: the job's waitingFor names the plan job)."""
    return _started(api, [api.call("POST", f"jobs/{args.hub}/{args.job_id}/approve")], args)


def cmd_rollback(api: Api, args: argparse.Namespace) -> int:
    job = api.call("POST", f"jobs/{args.hub}/{args.job_id}/rollback", json={"force": args.force})
    return _started(api, [job], args)


def _tags(pairs: list[str]) -> dict[str, Any]:
    """``--tag k=v`` as tags: ``v`` read as JSON when it is JSON (numbers, true, null removes the tag), else text."""
    tags: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise configuration.ConfigError(f"--tag takes name=value, not '{pair}'")
        try:
            tags[name] = json.loads(raw)
        except ValueError:
            tags[name] = raw
    return tags


def _bulk_body(args: argparse.Namespace) -> dict[str, Any]:
    if not args.query or not args.action:
        raise configuration.ConfigError("iotjobs bulk needs --query and --action (or: iotjobs bulk run <id>)")
    body_args: dict[str, Any] = {}
    if args.args:
        try:
            body_args = json.loads(args.args)
        except ValueError:
            raise configuration.ConfigError('--args must be a JSON object, e.g. \'{"tags": {"site": "a"}}\'') from None
        if not isinstance(body_args, dict):
            raise configuration.ConfigError("--args must be a JSON object")
    if args.tag:
        if args.action != "setTags":
            raise configuration.ConfigError("--tag goes with --action setTags")
        body_args = {"tags": {**(body_args.get("tags") or {}), **_tags(args.tag)}}
    body: dict[str, Any] = {"query": args.query, "action": args.action, "args": body_args}
    if args.hub:
        body["hub"] = args.hub
    return body


def _plan_lines(made: dict[str, Any], plan: dict[str, Any]) -> list[str]:
    """A bulk's plan for a person: what the query selected, what the import would do, a sample of the changes."""
    lines = [
        f"bulk {made['id']} on {made['hub']}: {made['action']} {_plural(made['devices'], 'device')}"
        + (f" ({made['skipped']:,} skipped: the action does not apply to them)" if made.get("skipped") else ""),
        f"  query: {cut(made['query'], 200)}",
        "  plan: "
        + ", ".join(f"{n:,} {k}" for k, n in plan.get("totals", {}).items() if n)
        + "  (changes nothing yet)",
    ]
    for d in plan.get("diffSample", [])[:SHOWN]:
        shown = d.get("changes") or {k: v for k, v in d.items() if k not in ("line", "deviceId", "moduleId")}
        lines.append(f"  {d.get('deviceId', '?'):<24} {cut(json.dumps(shown, separators=(',', ':')), 70)}")
    for r in plan.get("refused", [])[:SHOWN]:
        lines.append(f"  {r['deviceId']:<24} refused: {r['code']}: {cut(r['message'], 60)}")
    return lines


def cmd_bulk(api: Api, args: argparse.Namespace) -> int:
    """Act on a query: make the file and its plan (changes nothing) and print it; --run imports it (or
    ``iotjobs bulk run <id>`` later), --follow follows the import (the exit code is its outcome)."""
    if args.operation == "run":
        if not args.bulk_id:
            raise configuration.ConfigError("iotjobs bulk run needs the bulk id that iotjobs bulk printed")
        return _started(api, [api.call("POST", f"bulk/{args.bulk_id}/run")], args)
    if args.bulk_id:
        raise configuration.ConfigError(f"unexpected '{args.bulk_id}': iotjobs bulk run <id>, or --query and --action")
    # The reply comes at once: the plan job reads the query (paced under the hub's quota), writes the file and plans it.
    reply = api.call("POST", "bulk", json=_bulk_body(args))
    made, job = reply["bulk"], reply["plan"]
    if job["state"] not in TERMINAL:
        job = follow(api, job)
    if job["state"] != "completed":
        return finish(api, job, args)
    plan = json.loads(api.report(api.job(job["hub"], job["jobId"]), "plan") or b"{}")
    made = {**made, **(plan.get("bulk") or {})}  # what the query selected: known once the plan job has read it
    if not made.get("devices"):  # nothing selected: nothing to run
        message = plan.get("message") or "the query selects no device the action applies to: nothing to plan or run"
        if args.json:
            out.print_json(data={"bulk": made, "plan": None, "run": None, "message": message})
        else:
            out.print(f"bulk {made['id']} on {made['hub']}: {message}", markup=False)
        return OK
    if args.json:
        if not args.run_now:  # with --run, the JSON printed is the import's, as for every started job
            out.print_json(data={"bulk": made, "plan": plan})
    else:
        for line in _plan_lines(made, plan):
            out.print(line, markup=False)
    if not args.run_now:
        if not args.json:
            out.print(f"run it: iotjobs bulk run {made['id']} --follow", markup=False)
        return OK
    return _started(api, [api.call("POST", f"bulk/{made['id']}/run")], args)


def follow_migration(api: Api, doc: dict[str, Any]) -> dict[str, Any]:
    """Follow a migration to its end with one bar over its three steps; returns it as it ended."""
    path = f"migrations/{doc['from']}/{doc['migrationId']}"
    with _progress() as bar:
        task = bar.add_task(f"migration {doc['migrationId']}", total=100, state=doc["state"])
        while True:
            bar.update(task, completed=doc["progress"], state=f"{doc['stage']}: {doc['state']}")
            if doc["state"] in TERMINAL:
                return doc
            time.sleep(1.0)
            doc = api.call("GET", path)


def migration_lines(doc: dict[str, Any]) -> list[str]:
    """What a person needs to know about a migration: its state and step, why it stopped, what the verification
    found (counts, the first differences), and its jobs."""
    lines = [
        f"migration {doc['migrationId']} {doc['from']} -> {doc['to']} ({doc['mode']}, keys "
        f"{'included' if doc['includeKeys'] else 'not included'}): {doc['state']} at {doc['stage']}"
    ]
    if doc.get("failureReason") or doc.get("why"):
        lines.append(f"  why: {cut(doc.get('failureReason') or doc['why'], 300)}")
    for step, job in doc["jobs"].items():
        if job is not None:
            lines.append(f"  {step}: job {job['jobId']} on {job['hub']} {job['state']} ({job['progress']}%)")
    found = doc.get("verification")
    if found:
        lines.append(f"  {cut(found['verdict'], 200)}")
        src, dst = found["counts"]["source"], found["counts"]["target"]
        lines.append(
            f"  devices {src['devices']:,} -> {dst['devices']:,}, Edge devices {src['edgeDevices']:,} -> "
            f"{dst['edgeDevices']:,}, modules {src['modules']:,} -> {dst['modules']:,}"
        )
        shown = [
            f"  {d['deviceId']}{'/' + d['moduleId'] if d.get('moduleId') else ''}: {', '.join(d['fields'])} "
            f"({cut(d['why'], 80)})"
            for d in found["differences"][:SHOWN]
        ]
        lines += listing(shown, found["missing"] + found["different"], "devices that differ (see migration.json)")
    if doc.get("links", {}).get("verify.migration"):
        lines.append(f"  report: {doc['links']['verify.migration']}")
    return lines


def cmd_migrate(api: Api, args: argparse.Namespace) -> int:
    """Migrate a hub to another (or, with --id, read a migration); --follow follows it to its end."""
    if args.migration_id:
        doc = api.call("GET", f"migrations/{args.source}/{args.migration_id}")
    else:
        if not args.target:
            raise configuration.ConfigError("iotjobs migrate needs --to (the hub to migrate to), or --id to read one")
        body = {
            "from": args.source,
            "to": args.target,
            "includeKeys": not args.no_keys,
            "configurations": args.configurations,
            "mode": args.mode,
        }
        doc = api.call("POST", "migrations", json=body)
    if args.follow and doc["state"] not in TERMINAL:
        doc = follow_migration(api, doc)
    if args.json:
        out.print_json(data=doc)
    else:
        for line in migration_lines(doc):
            out.print(line, markup=False)
        if doc["state"] not in TERMINAL:
            out.print(f"follow it: iotjobs migrate --from {doc['from']} --id {doc['migrationId']} --follow")
    return EXIT_BY_STATE.get(doc["state"], OK) if doc["state"] in TERMINAL else OK


# --- parsing --------------------------------------------------------------------------------------------


def _common(p: argparse.ArgumentParser, default: Any) -> None:
    p.add_argument("--url", default=default, help="the app's address (default: IOTJOBS_URL or local.settings.json)")
    p.add_argument("--key", default=default, help="a function key (default: IOTJOBS_KEY)")
    p.add_argument(
        "--settings", type=Path, default=default, help="a local.settings.json (default: ./ or .devstack/functions/)"
    )
    p.add_argument("--json", action="store_true", default=False if default is None else default, help="print JSON")
    p.add_argument(
        "--output",
        "-o",
        choices=("table", "json", "tsv"),
        default=default,
        help="how listings print: table (the default on a terminal), tsv (tab-separated, whole values: the default "
        "when stdout is a pipe or a file), json (as --json)",
    )
    output.add_options(p, default)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="iotjobs",
        description="Drop devices files and follow IoT Registry Jobs from the command line.",
        epilog=__doc__.split("\n\n", 1)[1] + "\n" + configuration.__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p, None)
    # The same options after the command (`iotjobs jobs --json`); SUPPRESS keeps a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    _common(common, argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kw)

    up = command("upload", help="drop a devices file (JSON lines, or a .csv sheet) into uploads/ (and follow its job)")
    up.add_argument("file", type=Path)
    up.add_argument("--hub", help="the hub to import into (uploads/<hub>/...), or central for a data-export file")
    up.add_argument("--name", help="the blob name under uploads/ (default: the file's name)")
    up.add_argument("--follow", action="store_true", help="follow the job to its end; the exit code is its outcome")
    up.add_argument("--wait", type=float, default=600, help="seconds to wait for the app to record the job")
    up.set_defaults(run=cmd_upload)

    ls = command("jobs", help="list jobs, newest first")
    ls.add_argument("--hub")
    ls.add_argument("--state", help="comma-separated states, e.g. queued,running")
    ls.add_argument("--limit", type=int, default=50)
    ls.set_defaults(run=cmd_jobs)

    one = command("job", help="one job (with --follow: to its end)")
    one.add_argument("hub")
    one.add_argument("job_id")
    one.add_argument("--follow", action="store_true")
    one.set_defaults(run=cmd_job)

    cancel = command("cancel", help="cancel a queued or running job")
    cancel.add_argument("hub")
    cancel.add_argument("job_id")
    cancel.set_defaults(run=cmd_cancel)

    export = command("export", help="back up now (every hub, or --hub)")
    export.add_argument("--hub")
    export.add_argument("--include-keys", action="store_true", help="keep the devices' keys in the backup")
    export.add_argument("--follow", action="store_true")
    export.add_argument(
        "--csv",
        type=Path,
        metavar="FILE",
        help="instead of backing up: write an existing backup (--stamp) as a CSV sheet to FILE, keys left out",
    )
    export.add_argument("--stamp", default="latest", help="with --csv: the backup's stamp, or latest (the default)")
    export.add_argument("--keys", action="store_true", help="with --csv: keep the keys (if the backup has them)")
    export.set_defaults(run=cmd_export)

    template = sub.add_parser("template", help="print an empty devices sheet: the header and two example rows")
    template.add_argument("format", choices=("csv",))
    template.set_defaults(run=None, template=cmd_template)

    restore = command("restore", help="restore a backup: its stamp (20261201T020000Z) or latest")
    restore.add_argument("backup")
    restore.add_argument("--hub")
    restore.add_argument("--follow", action="store_true")
    restore.set_defaults(run=cmd_restore)

    plan = command("plan", help="what importing a devices file would do (changes nothing)")
    plan.add_argument("file", type=Path)
    plan.add_argument("--hub")
    plan.add_argument("--wait", type=float, default=60, help="seconds the app waits for the plan (at most 120)")
    plan.set_defaults(run=cmd_plan)

    approve = command("approve", help="let an import held awaiting_approval run (read its plan first)")
    approve.add_argument("job_id")
    approve.add_argument("--hub", required=True)
    approve.add_argument("--follow", action="store_true", help="follow it; the exit code is its outcome")
    approve.set_defaults(run=cmd_approve)

    rollback = command("rollback", help="undo an ended import from its snapshot")
    rollback.add_argument("job_id")
    rollback.add_argument("--hub", required=True)
    rollback.add_argument("--force", action="store_true", help="undo even devices changed since the import")
    rollback.add_argument(
        "--follow",
        action="store_true",
        help="follow it, then the import of the inverse file; the exit code is its outcome",
    )
    rollback.set_defaults(run=cmd_rollback)

    bulk = command(
        "bulk",
        help="act on a query: plan an action on every device it selects (changes nothing), then --run it",
        description="Act on a query: POST /api/bulk queues a job that makes one import line per device the query "
        "selects (bulk/<id>/devices.txt, each line conditional on the device as queried: a device changed since is "
        "skipped) and plans it; nothing "
        "changes until it is run (--run now, or `iotjobs bulk run <id>` later), as a normal import job. Examples: "
        "iotjobs bulk --hub prodhub --query \"SELECT * FROM devices WHERE tags.site = 'a'\" --action disable; "
        "iotjobs bulk --query \"SELECT * FROM devices WHERE status = 'disabled'\" --action setTags --tag owner=ops "
        "--run --follow.",
    )
    bulk.add_argument("operation", nargs="?", choices=("run",), help="run: import a bulk made before")
    bulk.add_argument("bulk_id", nargs="?", help="with run: the bulk id (20261201T020000Z-0a1b2c)")
    bulk.add_argument("--hub")
    bulk.add_argument("--query", help="SELECT * FROM devices [WHERE ...]")
    bulk.add_argument("--action", choices=("delete", "disable", "enable", "setTags", "regenerateKeys"))
    bulk.add_argument("--args", help='the action\'s arguments as JSON, e.g. \'{"tags": {"site": "b"}}\'')
    bulk.add_argument(
        "--tag", action="append", metavar="NAME=VALUE", help="setTags: a tag to set (repeatable; =null removes it)"
    )
    bulk.add_argument("--run", dest="run_now", action="store_true", help="import it once planned")
    bulk.add_argument("--follow", action="store_true", help="follow the import; the exit code is its outcome")
    bulk.set_defaults(run=cmd_bulk)

    migrate = command("migrate", help="migrate a hub's registry to another hub, verified device by device")
    migrate.add_argument("--from", dest="source", required=True, help="the hub to migrate from")
    migrate.add_argument("--to", dest="target", help="the hub to migrate to")
    migrate.add_argument("--id", dest="migration_id", help="read (and with --follow, follow) a migration instead")
    migrate.add_argument("--mode", choices=("create", "createOrUpdate"), default="create")
    migrate.add_argument("--no-keys", action="store_true", help="leave the keys behind (the devices get new ones)")
    migrate.add_argument("--configurations", action="store_true", help="the hub's configurations go too")
    migrate.add_argument("--follow", action="store_true", help="follow it; the exit code is its outcome")
    migrate.set_defaults(run=cmd_migrate)

    status = command("status", help="hubs, running jobs, queues, backups and what needs a look")
    status.set_defaults(run=cmd_status)

    central = command("central", help="IoT Central data export: plan or apply a file, back up")
    central.add_argument("action", choices=("plan", "apply", "backup"))
    central.add_argument("file", type=Path, nargs="?")
    central.add_argument("--follow", action="store_true")
    central.set_defaults(run=cmd_central)
    toolbox.add_commands(command)

    complete = command(
        "completion",
        help='print a shell completion script: eval "$(iotjobs completion bash)" (or zsh) in your shell\'s rc file',
    )
    complete.add_argument("shell", choices=("bash", "zsh"))
    complete.set_defaults(run=None, offline=cmd_completion)
    return p


# The commands whose output is a listing: --jmespath applies to their JSON (elsewhere it is refused, never ignored).
LISTINGS = frozenset({"jobs", "status", "devices", "backups", "report"})


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "template", None) is not None:
        return int(args.template(args))  # needs no app and no storage
    if getattr(args, "output", None) == "json":
        args.json = True
    run: Callable[[Api, argparse.Namespace], int] = args.run
    try:
        if getattr(args, "offline", None):
            offline: Callable[[argparse.Namespace], int] = args.offline
            return offline(args)
        if args.jmespath and args.command not in LISTINGS:
            raise configuration.ConfigError(
                f"--jmespath applies to listings ({', '.join(sorted(LISTINGS))}); for `{args.command}`, use --json"
            )
        config = configuration.load(url=args.url, key=args.key, settings=args.settings)
        api = Api(config)
        api.check_instance()
        return run(api, args)
    except configuration.ConfigError as exc:
        err.print(f"iotjobs: {exc}", markup=False)
        return USAGE
    except ApiError as exc:
        err.print(f"iotjobs: {exc}", markup=False)
        return ERROR
    except TimeoutError as exc:
        err.print(f"iotjobs: {exc}", markup=False)
        return ERROR
    except KeyboardInterrupt:
        err.print("iotjobs: interrupted (the job goes on in the app)")
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
