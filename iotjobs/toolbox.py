"""The everyday questions, without curl: ``iotjobs devices`` (list, show, count), ``iotjobs backups`` (list, show)
and ``iotjobs report`` (a job's reports, read or downloaded with the job's short-lived links: no SAS copied by hand).

Keys: the app's replies have every device key null; ``devices show --show-keys`` asks for them by name
(``?keys=true``) and prints them only to a terminal: piped or redirected, it refuses (exit 2), so a key never lands
in a file or a log by accident.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

import requests

from . import config as configuration
from .client import Api, ApiError
from .output import emit, out, shape, text

OK = 0
PAGE = 1000  # the most twins the app's one page (one hub query call) holds
MAIN_REPORTS = ("rejection", "errors", "plan", "migration", "result", "summary")  # the one printed, in this order
SHOWN_LINES = 40

Command = Callable[[Api, argparse.Namespace], int]


def _age(seconds: int | None) -> str:
    if seconds is None:
        return ""
    span = timedelta(seconds=max(seconds, 0))
    if span.days:
        return f"{span.days}d{span.seconds // 3600}h"
    return f"{span.seconds // 3600}h{span.seconds % 3600 // 60:02d}m"


# --- devices --------------------------------------------------------------------------------------------

DEVICE_COLUMNS = ("deviceId", "status", "connectionState", "authenticationType", "edge", "lastActivityTime", "tags")


def device_row(d: dict[str, Any]) -> list[str]:
    edge = (d.get("capabilities") or {}).get("iotEdge")
    return [
        text(d.get("deviceId")), text(d.get("status")), text(d.get("connectionState")),
        text(d.get("authenticationType")), text(bool(edge)), text(d.get("lastActivityTime")), text(d.get("tags")),
    ]  # fmt: skip


def _devices_path(hub: str) -> str:
    return f"hubs/{quote(hub, safe='')}/devices"


def cmd_devices(api: Api, args: argparse.Namespace) -> int:
    if args.action == "list":
        return _devices_list(api, args)
    if args.action == "count":
        params = {"count": "true", **({"query": args.query} if args.query else {})}
        doc = api.call("GET", _devices_path(args.hub), params=params)
        emit(args, doc, ("count", "query"), lambda d: [[text(d["count"]), d["query"]]])
        return OK
    if not args.device_id:
        raise configuration.ConfigError("iotjobs devices show needs a device id")
    if args.show_keys and not sys.stdout.isatty():
        raise configuration.ConfigError(
            "--show-keys prints keys only to a terminal, and stdout is a pipe or a file: run it in a terminal "
            "(keys never go to files or logs through this command)"
        )
    params = {"keys": "true"} if args.show_keys else {}
    doc = api.call("GET", f"{_devices_path(args.hub)}/{quote(args.device_id, safe='')}", params=params)
    if shape(args) != "table" or args.jmespath:  # piped: field<TAB>value lines, whole
        emit(args, doc, ("field", "value"), _device_fields)
        return OK
    for name, value in _device_fields(doc):
        out.print(f"{name:<22} {value}", markup=False)
    return OK


def _device_fields(doc: dict[str, Any]) -> list[list[str]]:
    ident, twin = doc["identity"], doc["twin"]
    auth = ident.get("authentication") or {}
    rows = [
        ["deviceId", doc["deviceId"]],
        ["hub", doc["hub"]],
        ["status", text(ident.get("status")) + (f" ({ident['statusReason']})" if ident.get("statusReason") else "")],
        ["connectionState", text(ident.get("connectionState"))],
        ["lastActivityTime", text(ident.get("lastActivityTime"))],
        ["authentication", text(auth.get("type"))],
        ["edge", text(bool((ident.get("capabilities") or {}).get("iotEdge")))],
        ["etag", text(ident.get("etag"))],
        ["tags", text(twin.get("tags"))],
        ["desired", text(twin.get("desired"))],
        ["reported", text(twin.get("reported"))],
    ]
    if doc.get("keysShown"):
        sym = auth.get("symmetricKey") or {}
        rows += [["primaryKey", text(sym.get("primaryKey"))], ["secondaryKey", text(sym.get("secondaryKey"))]]
    for m in doc.get("modules", []):
        rows.append([f"module {m.get('moduleId')}", f"{text((m.get('authentication') or {}).get('type'))}"])
    for j in doc.get("recentHubJobs", []):
        rows.append([f"job {j['jobId']}", f"{j['kind']} {j['state']} {j.get('source') or ''} {j['updated']}"])
    rows.append(["recentHubJobs", doc.get("recentHubJobsNote", "")])
    return rows


def _devices_list(api: Api, args: argparse.Namespace) -> int:
    """Pages of the query until ``--top`` devices (each page one call against the hub's query quota)."""
    devices: list[dict[str, Any]] = []
    token: str | None = None
    while len(devices) < args.top:
        params = {"top": str(min(PAGE, args.top - len(devices)))}
        if args.query:
            params["query"] = args.query
        if token:
            params["continuation"] = token
        page = api.call("GET", _devices_path(args.hub), params=params)
        devices += page["devices"]
        token = page.get("next")
        if not token:
            break
    emit(args, devices, DEVICE_COLUMNS, lambda ds: (device_row(d) for d in ds), empty="no devices")
    if token:
        print(f"(first {len(devices):,} shown: the query selects more; --top N for more)", file=sys.stderr)
    return OK


# --- backups --------------------------------------------------------------------------------------------

BACKUP_COLUMNS = ("hub", "stamp", "taken", "age", "devices", "modules", "keys", "bytes", "expires")


def backup_row(hub: str, b: dict[str, Any]) -> list[str]:
    expires = "kept (newest)" if b.get("keptAsNewest") else _age(b.get("expiresInSeconds"))
    if b.get("pastRetention") and not b.get("keptAsNewest"):
        expires = "past retention"
    return [
        hub, b["stamp"], b["taken"][:19] + "Z", _age(b.get("ageSeconds")), text(b.get("devices")),
        text(b.get("modules")), "with keys" if b.get("includesKeys") else "no keys", text(b.get("bytes")), expires,
    ]  # fmt: skip


def cmd_backups(api: Api, args: argparse.Namespace) -> int:
    if args.action == "list":
        doc = api.call("GET", "backups", params={"hub": args.hub} if args.hub else {})

        def rows(d: dict[str, Any]) -> list[list[str]]:
            return [backup_row(h["hub"], b) for h in d["hubs"] for b in h["backups"]]

        emit(args, doc, BACKUP_COLUMNS, rows, empty="no backups")
        for h in doc["hubs"]:
            if h.get("incomplete"):
                print(f"{h['hub']}: {len(h['incomplete'])} incomplete folder(s), not restorable: "
                      f"{', '.join(h['incomplete'][:5])}", file=sys.stderr)  # fmt: skip
        return OK
    if not args.stamp:
        raise configuration.ConfigError("iotjobs backups show needs a backup stamp (iotjobs backups list shows them)")
    hub = args.hub or _default_hub(api)
    doc = api.call("GET", f"backups/{quote(hub, safe='')}/{quote(args.stamp, safe='')}")
    emit(args, doc, ("file", "bytes"), lambda d: [[f["name"], text(f["bytes"])] for f in d["files"]])
    if args.output is None and not args.json and not args.jmespath and out.is_terminal:
        row = backup_row(hub, doc)
        out.print(
            f"{doc['folder']}: {row[4]} devices, {row[5]} modules, {row[6]}, taken {row[2]} ({row[3]} ago), "
            f"expires: {row[8]}; restore: iotjobs restore {args.stamp} --hub {hub}",
            markup=False,
        )
    return OK


def _default_hub(api: Api) -> str:
    """The app's first hub (the one a command without --hub acts on)."""
    hubs = api.call("GET", "status.json")["hubs"]
    if not hubs:
        raise configuration.ConfigError("the app has no hub configured")
    return str(hubs[0]["name"])


# --- reports --------------------------------------------------------------------------------------------


def _size(link: str, timeout: float) -> int | None:
    try:
        reply = requests.head(link, timeout=timeout)
    except requests.RequestException:
        return None
    length = reply.headers.get("Content-Length")
    return int(length) if reply.ok and length and length.isdigit() else None


def cmd_report(api: Api, args: argparse.Namespace) -> int:
    """A job's reports: the list (names, files, sizes) on stderr and the main one (or --name) on stdout, whole, so
    ``> errors.csv`` or ``| jq`` work; --download DIR writes them all; --list prints the list alone as a listing."""
    hub = args.hub or _default_hub(api)
    job = api.job(hub, args.job_id)
    links: dict[str, str] = job.get("links", {})
    files = [
        {"name": name, "file": PurePosixPath(path).name, "path": path, "bytes": _size(links[name], api.timeout)}
        for name, path in job.get("reports", {}).items()
        if name in links
    ]
    if args.list:
        emit(args, files, ("name", "file", "bytes", "path"), lambda fs: [
            [f["name"], f["file"], text(f["bytes"]), f["path"]] for f in fs
        ], empty="no reports")  # fmt: skip
        return OK
    if not files:
        print(f"job {job['jobId']} on {hub} ({job['state']}) has no report yet", file=sys.stderr)
        return OK
    if args.download:
        target: Path = args.download
        target.mkdir(parents=True, exist_ok=True)
        for f in files:
            data = _fetch(api, links[f["name"]], f["path"])
            (target / f["file"]).write_bytes(data)
            print(f"{target / f['file']}\t{len(data)}", flush=True)
        return OK
    for f in files:
        print(f"{f['name']:<12} {f['file']:<28} {text(f['bytes']):>10} bytes", file=sys.stderr)
    chosen = args.name or next((n for n in MAIN_REPORTS if n in links), files[0]["name"])
    if chosen not in links:
        raise configuration.ConfigError(f"job {job['jobId']} has no report '{chosen}': it has {', '.join(links)}")
    data = _fetch(api, links[chosen], chosen)
    sys.stdout.buffer.write(data if data.endswith(b"\n") or not data else data + b"\n")
    sys.stdout.flush()
    return OK


def _fetch(api: Api, link: str, what: str) -> bytes:
    try:
        reply = requests.get(link, timeout=api.timeout)
    except requests.RequestException as exc:
        raise ApiError(0, "", f"storage does not answer for report {what} ({type(exc).__name__})") from None
    if not reply.ok:
        raise ApiError(reply.status_code, "", f"storage refused report {what}: {reply.status_code} {reply.reason}")
    return reply.content


# --- parsing --------------------------------------------------------------------------------------------


def add_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    """The toolbox's commands, added to the ``iotjobs`` parser through its ``command`` factory."""
    devices = command(
        "devices",
        help="a hub's devices: list (a query), show one (identity, twin, modules, recent jobs), count",
        description="A hub's devices, read through the app (keys are never shown unless --show-keys, and then "
        'only to a terminal). Examples: iotjobs devices list --hub devhub --query "SELECT * FROM devices WHERE '
        "status = 'disabled'\" --top 500; iotjobs devices show sensor-001 --hub devhub; iotjobs devices count.",
    )
    devices.add_argument("action", choices=("list", "show", "count"))
    devices.add_argument("device_id", nargs="?", help="with show: the device id")
    devices.add_argument("--hub", required=True)
    devices.add_argument("--query", help="SELECT * FROM devices [WHERE ...] (count uses its WHERE)")
    devices.add_argument("--top", type=int, default=100, help="list: at most this many devices (default 100)")
    devices.add_argument("--show-keys", action="store_true", help="show: print the keys too (to a terminal only)")
    devices.set_defaults(run=cmd_devices)

    backups = command("backups", help="backups: list (stamps, counts, keys, age against retention), show one")
    backups.add_argument("action", choices=("list", "show"))
    backups.add_argument("stamp", nargs="?", help="with show: the backup's stamp (20261201T020000Z)")
    backups.add_argument("--hub", help="list: one hub (default every hub); show: the hub (default the first)")
    backups.set_defaults(run=cmd_backups)

    report = command(
        "report",
        help="a job's reports: list them, print the main one, or --download them",
        description="A job's reports (errors.csv, rejection.json, plan.json, migration.json, summary.json...), "
        "read with the job's 15-minute links. The list goes to stderr and the main report (or --name) to stdout, "
        "whole: iotjobs report <job> --hub devhub > errors.csv.",
    )
    report.add_argument("job_id")
    report.add_argument("--hub", help="the job's hub (default: the first)")
    report.add_argument("--name", help="the report to print: rejection, errors, plan, migration, summary...")
    report.add_argument("--download", type=Path, metavar="DIR", help="write every report into DIR")
    report.add_argument("--list", action="store_true", help="print the list of reports alone, as a listing")
    report.set_defaults(run=cmd_report)
