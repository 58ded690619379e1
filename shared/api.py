"""The HTTP API's logic, free of ``azure.functions``: each handler takes plain values and returns ``Reply``.

Each handler is declared with its route's schemas (``@handles(schemas.EXPORTS)``, see ``api_schemas``): it runs
only with inputs that passed them. Adding a route: a ``Route`` in ``api_schemas``, a handler here, a trigger in
``function_app.py`` that hands over ``Request`` and answers the ``Reply``.

Errors are JSON ``{"error": {"code": ..., "message": ...}}`` with a message that says what to change; nothing
internal (stack traces, keys, SAS) ever reaches a reply. Report links are read-only SAS links valid 15 minutes.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import math
import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from . import api_schemas as schemas
from . import inventory, status_html
from .api_schemas import ApiError, Inputs, Request, Route
from .backups import NotABackup
from .central import PARTITION as CENTRAL
from .central import Central, is_central_upload
from .config import ConfigError, instance_id
from .dataexport import DocumentError
from .engine import CannotCancel
from .fleet.bulk import InvalidBulk
from .iotcentral import IoTCentralError
from .iothub import IoTHubError, IoTHubHTTPError, IoTHubNotFound
from .ledger import Job, JobNotFound, JobState, LedgerConflict, LedgerError
from .names import UnsafeName
from .openapi import document as openapi_document
from .services import CannotApprove, CannotMigrate, CannotRollBack, NotABulk, NothingToRun, Services
from .status import status_document
from .storage import BlobRef, StorageDenied, StorageError, StorageUnavailable, UploadChanged
from .views import job_view, migration_view

__all__ = ["ApiError", "Reply", "Request", "error"]

logger = logging.getLogger(__name__)

APPLY_WAIT = timedelta(seconds=60)
DENIED_RETRY = 60  # seconds a client is told to wait when storage refused the app (a role not yet in effect)
HUB_BUSY_RETRY = 10  # seconds a client is told to wait when a throttling hub gave no Retry-After of its own
CENTRAL_SETTING = "IOTCENTRAL_APP_URL"


@dataclass(frozen=True, slots=True)
class Reply:
    """A JSON reply (``body``), or a page (``text`` of ``media``) with its own headers."""

    status: int
    body: dict[str, Any]
    text: str | None = None
    media: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)

    def json(self) -> str:
        return json.dumps(self.body, indent=2)

    def content(self) -> str:
        return self.json() if self.text is None else self.text


def error(status: int, code: str, message: str, **extra: Any) -> Reply:
    return Reply(status, {"error": {"code": code, "message": message, **extra}})


Handler = Callable[[Services, Inputs], Reply]
Endpoint = Callable[[Services | Callable[[], Services], Request], Reply]


def handles(route: Route) -> Callable[[Handler], Endpoint]:
    """Make ``handler`` the endpoint of ``route``: its request is checked against the route's schemas, then the
    handler runs with the services and the checked inputs, all under ``guarded``.

    The endpoint's first argument may be the ``services`` factory itself: it is called only once the request has
    passed its checks (bad input is a 4xx whatever the configuration), and a configuration error met while
    building the services is answered as JSON too.
    """

    def wrap(handler: Handler) -> Endpoint:
        def run(svc: Services | Callable[[], Services], request: Request, /) -> Reply:
            def work(inputs: Inputs) -> Reply:
                return handler(svc if isinstance(svc, Services) else svc(), inputs)

            return guarded(route, request, work, handler.__name__)

        run.__name__ = handler.__name__
        run.__doc__ = handler.__doc__
        return run

    return wrap


def guarded(route: Route, request: Request, work: Callable[[Inputs], Reply], where: str) -> Reply:
    """``work`` on the request's checked inputs; every failure becomes a JSON error reply: the domain errors their
    4xx/5xx, anything unexpected a 500 that is logged and shows nothing."""
    try:
        return work(schemas.check(route, request))
    except ApiError as exc:
        return error(exc.status, exc.code, exc.message, **exc.extra)
    except ConfigError as exc:
        logger.error("configuration: %s", exc)
        return error(500, "Misconfigured", f"the app is misconfigured: {exc}")
    except JobNotFound:
        return error(404, "JobNotFound", "no such job: check the hub name and job id (GET /api/jobs lists them)")
    except (CannotCancel, LedgerConflict) as exc:
        return error(409, "Conflict", str(exc) or "the job changed meanwhile; read it again and retry")
    except NotABackup as exc:
        return error(404, "NotABackup", str(exc))
    except UnsafeName as exc:  # the schemas refuse these first; a name that gets past them still never reaches storage
        return error(400, "InvalidName", str(exc))
    except UploadChanged:
        return error(409, "BlobChanged", "the blob was replaced while it was being read: send the request again")
    except DocumentError as exc:
        reply = error(400, "InvalidDocument", f"{exc}; nothing was changed (see problems)")
        reply.body["error"]["problems"] = [p.public() for p in exc.problems]
        return reply
    except IoTHubError as exc:
        return _hub_error(exc)
    except IoTCentralError as exc:
        return error(502, "IoTCentralError", f"IoT Central refused the request: {exc}")
    except StorageUnavailable as exc:
        reply = error(503, "StorageUnavailable", f"{exc}: send the request again in {exc.retry_after} s")
        return replace(reply, headers={"Retry-After": str(exc.retry_after)})
    except StorageDenied as exc:
        # Right after a deployment the app's role on storage may not be in effect yet: it heals in minutes.
        reply = error(503, "StorageUnavailable", f"{exc}; send the request again in {DENIED_RETRY} s")
        return replace(reply, headers={"Retry-After": str(DENIED_RETRY)})
    except (StorageError, LedgerError) as exc:
        return error(503, "StorageUnavailable", f"storage is not answering: {exc}; retry shortly")
    except RecursionError:  # input nested deeper than a parser past the schema check could follow
        logger.warning("input nested too deeply in %s", where)
        return error(400, "InvalidJson", "the request is nested too deeply to be read")
    except Exception:
        logger.exception("unexpected error in %s", where)
        return error(500, "InternalError", "unexpected error; the app's log has the details")


def _hub_error(exc: IoTHubError) -> Reply:
    """A hub throttling or briefly unavailable (429, 503 after the client's own retries) is 503 with a Retry-After:
    the same call will work later, so the caller should wait and send it again, never read it as a refusal (502)."""
    if isinstance(exc, IoTHubHTTPError) and exc.passing:
        wait = max(1, math.ceil(exc.retry_after)) if exc.retry_after else HUB_BUSY_RETRY
        reply = error(
            503,
            "IoTHubBusy",
            f"the IoT hub is throttling or busy ({exc.code_name or exc.status}); nothing was changed: send the "
            f"request again in {wait} s",
        )
        return replace(reply, headers={"Retry-After": str(wait)})
    return error(502, "IoTHubError", f"the IoT hub refused the request: {exc}")


def _hub(svc: Services, name: str | None) -> str:
    """A configured IoT hub (default: the first), for the calls that start hub jobs."""
    hub = name or svc.settings.default_hub
    if hub not in svc.settings.hubs:
        raise ApiError(404, "UnknownHub", svc.unknown_hub(hub), field="hub")
    return hub


def _hub_of_blob(svc: Services, inp: Inputs, named: BlobRef) -> str:
    """The hub a blob is imported into: the one the request names, else the one its first folder names. A file in
    uploads/ is for the default hub only at the root: a first folder that names no hub is refused (it would never be
    imported into another hub); elsewhere the default hub takes what no folder claims."""
    given = inp.body.get("hub") or inp.query.get("hub")
    if given:
        return _hub(svc, given)
    hub = svc.hub_for_upload(named.name)
    if hub is None and named.container == svc.settings.containers.uploads:
        raise ApiError(404, "UnknownHub", svc.unknown_hub(named.name.partition("/")[0], folder=True), field="blob")
    return _hub(svc, hub)


def _partition(svc: Services, name: str) -> str:
    """A ledger partition to read jobs from: a hub, or ``central`` (IoT Central applies). ``central`` is readable
    also while IoT Central is not configured: a data-export upload is then recorded there as a rejected job."""
    return CENTRAL if name == CENTRAL else _hub(svc, name)


def _central(svc: Services) -> Central:
    """IoT Central, for the calls that use it; an optional feature that is off is a 404 saying how to turn it on."""
    if svc.central is None:
        raise ApiError(
            404,
            "CentralNotConfigured",
            f"IoT Central data export is not configured in this app: set {CENTRAL_SETTING} to the IoT Central "
            "app's URL (and IOTCENTRAL_API_TOKEN, or give the app's managed identity access) to use it",
        )
    return svc.central


def _links(svc: Services, reports: Mapping[str, str]) -> dict[str, str]:
    refs = {name: BlobRef.parse(path) for name, path in reports.items()}
    return {name: svc.storage.sas.read_link(ref.container, ref.name) for name, ref in refs.items()}


def _job_reply(svc: Services, job: Job, status: int = 200) -> Reply:
    body = job_view(job)
    body["reports"] = dict(job.reports)
    body["links"] = _links(svc, job.reports)
    return Reply(status, body)


# --- handlers: one per route, each declared with its schemas (api_schemas) -------------------------------


def _suffix(inp: Inputs) -> str:
    """The name ending of a file sent as the body: what the import reads it as (a sheet is named .csv)."""
    return ".csv" if inp.raw_type == schemas.CSV_TYPE else ".jsonl"


@handles(schemas.IMPORTS)
def start_import(svc: Services, inp: Inputs) -> Reply:
    """Start an import from a blob already in storage (JSON ``{"blob": "container/name", "hub": ...}``), or from
    the request body itself (``Content-Type: application/x-ndjson``, or ``text/csv`` for a sheet; ``?hub=``)."""
    uploads = svc.settings.containers.uploads
    if inp.raw is not None:
        hub = _hub(svc, inp.query.get("hub"))
        name = f"{hub}/api-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}{_suffix(inp)}"
        etag = svc.storage.upload_bytes(uploads, name, inp.raw, overwrite=False)
        ref = BlobRef(uploads, name, etag)
    else:
        blob: str = inp.body["blob"]
        named = BlobRef.parse(blob)  # the schema holds it to <container>/<name>
        container, name = named.container, named.name
        if is_central_upload(name):
            raise ApiError(
                400,
                "NotADevicesFile",
                f"'{blob}' is under central/, where IoT Central data-export files go: use POST /api/central/apply",
            )
        hub = _hub_of_blob(svc, inp, named)
        props = svc.storage.properties(BlobRef(container, name))
        if props is None:
            raise ApiError(404, "BlobNotFound", f"no blob '{blob}' in storage: upload it first or fix the path")
        ref = BlobRef(container, name, props.etag)
    job = svc.on_upload(ref.container, ref.name, str(ref.etag), hub)
    return _job_reply(svc, job, 202 if not job.state.is_terminal else 200)


@handles(schemas.EXPORTS)
def start_export(svc: Services, inp: Inputs) -> Reply:
    """Queue an export now: ``{"hub": ..., "includeKeys": false}``; no hub means every configured hub."""
    keys: bool = inp.body.get("includeKeys", inp.query.get("includeKeys", False))
    name = inp.body.get("hub") or inp.query.get("hub")
    hubs = [_hub(svc, name)] if name else list(svc.settings.hubs)
    jobs = [job_view(svc.export(hub, include_keys=keys)) for hub in hubs]
    return Reply(202, {"jobs": jobs})


@handles(schemas.RESTORES)
def start_restore(svc: Services, inp: Inputs) -> Reply:
    """Restore a backup of a hub: ``{"hub": ..., "backup": "<stamp>" | "latest"}`` (no hub: the default one)."""
    job = svc.restore(_hub(svc, inp.body.get("hub")), inp.body["backup"])
    return _job_reply(svc, job, 202 if not job.state.is_terminal else 200)


@handles(schemas.LIST_JOBS)
def list_jobs(svc: Services, inp: Inputs) -> Reply:
    """``?hub=&state=running,queued&limit=50&after=<job id>&source=uploads/x.jsonl``: newest first; ``next`` is the
    next page's after."""
    hub = _partition(svc, inp.query["hub"]) if "hub" in inp.query else None
    states = {JobState(s) for s in inp.query["state"]} if inp.query.get("state") else None
    page, after = svc.ledger.list_jobs(
        hub,
        states=states,
        limit=inp.query.get("limit", 50),
        after=inp.query.get("after"),
        source=inp.query.get("source"),
    )
    return Reply(200, {"jobs": [job_view(j) for j in page], "next": after})


@handles(schemas.GET_JOB)
def get_job(svc: Services, inp: Inputs) -> Reply:
    return _job_reply(svc, svc.ledger.get(_partition(svc, inp.path["hub"]), inp.path["job_id"]))


@handles(schemas.CANCEL_JOB)
def cancel_job(svc: Services, inp: Inputs) -> Reply:
    job = svc.engine.cancel(svc.ledger.get(_partition(svc, inp.path["hub"]), inp.path["job_id"]))
    return _job_reply(svc, job, 202 if not job.state.is_terminal else 200)


# --- fleet operations: preview, approval, rollback ------------------------------------------------------


@handles(schemas.PLAN)
def plan_import(svc: Services, inp: Inputs) -> Reply:
    """What importing a file would do: the same bodies as ``POST /api/imports`` (a blob, or the file as the body,
    kept under ``plans/<hub>/``). A plan job is queued on the hub (a fresh export joined with the file); with
    ``?wait=N`` the reply waits up to N seconds and carries the plan (``plan``) when it is ready."""
    if inp.raw is not None:
        hub = _hub(svc, inp.query.get("hub"))
        container = svc.settings.containers.plans
        svc.storage.ensure_container(container)
        name = f"{hub}/api-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}{_suffix(inp)}"
        ref = BlobRef(container, name, svc.storage.upload_bytes(container, name, inp.raw, overwrite=False))
    else:
        named = BlobRef.parse(inp.body["blob"])
        hub = _hub_of_blob(svc, inp, named)
        if named.container == svc.settings.containers.uploads:
            raise ApiError(
                400,
                "IsAnUpload",
                f"'{named.path}' is in uploads/, where every file is imported on arrival: plan it before uploading "
                "(send it as the body, or name a copy in another container)",
            )
        props = svc.storage.properties(named)
        if props is None:
            raise ApiError(404, "BlobNotFound", f"no blob '{named.path}' in storage: upload it first or fix the path")
        ref = BlobRef(named.container, named.name, props.etag)
    job = svc.plan(hub, ref)
    if inp.query.get("wait"):
        job = svc.wait(job, timedelta(seconds=inp.query["wait"]))
    reply = _job_reply(svc, job, 200 if job.state.is_terminal else 202)
    if job.state.is_terminal and "plan" in job.reports:
        reply.body["plan"] = _report(svc, job.reports["plan"])
    return reply


def _report(svc: Services, path: str) -> Any:
    ref = BlobRef.parse(path)
    return json.loads(b"".join(svc.storage.open_read(ref)))


@handles(schemas.APPROVE_JOB)
def approve_job(svc: Services, inp: Inputs) -> Reply:
    """Let an import held ``awaiting_approval`` run."""
    job = svc.ledger.get(_hub(svc, inp.path["hub"]), inp.path["job_id"])
    try:
        job = svc.approve(job)
    except CannotApprove as exc:
        raise ApiError(409, "NotAwaitingApproval", str(exc)) from None
    return _job_reply(svc, job, 202 if not job.state.is_terminal else 200)


@handles(schemas.ROLLBACK_JOB)
def rollback_job(svc: Services, inp: Inputs) -> Reply:
    """Queue the rollback of an ended import: ``{"force": false}``. The reply is the rollback job; when it ends,
    its notes name the import job that runs the inverse file (``rollbackOf`` set)."""
    target = svc.ledger.get(_hub(svc, inp.path["hub"]), inp.path["job_id"])
    try:
        job = svc.rollback(target, force=bool(inp.body.get("force", False)))
    except CannotRollBack as exc:
        raise ApiError(409, "CannotRollBack", str(exc)) from None
    return _job_reply(svc, job, 202 if not job.state.is_terminal else 200)


@handles(schemas.BULK)
def start_bulk(svc: Services, inp: Inputs) -> Reply:
    """Act on a query: ``{"hub", "query", "action", "args"}``. Answers 202 at once with the bulk id and its plan
    job, queued: the engine pages through the query (paced under the hub's query quota), writes
    ``bulk/<id>/devices.txt`` and plans it (changes nothing); ``GET`` the job for its progress, and its plan report
    (``bulk``: the devices selected) once it ends. ``POST /api/bulk/{id}/run`` imports the file. A query the hub
    refuses fails the plan job with the hub's message; one that selects no device ends it with nothing to run."""
    hub = _hub(svc, inp.body.get("hub"))
    try:
        made, job = svc.bulk(hub, inp.body["query"], inp.body["action"], inp.body.get("args") or {})
    except InvalidBulk as exc:
        raise ApiError(400, "InvalidQuery", str(exc)) from None
    body = {"bulk": made, "plan": _job_reply(svc, job).body, "run": f"/api/bulk/{made['id']}/run"}
    return Reply(202, body)


@handles(schemas.RUN_BULK)
def run_bulk(svc: Services, inp: Inputs) -> Reply:
    """Import the file a bulk generated, as a normal import job."""
    try:
        job = svc.run_bulk(inp.path["id"])
    except NotABulk as exc:
        raise ApiError(404, "BulkNotFound", str(exc)) from None
    except NothingToRun as exc:
        raise ApiError(409, "NothingToRun", str(exc)) from None
    return _job_reply(svc, job, 202 if not job.state.is_terminal else 200)


@handles(schemas.MIGRATIONS)
def start_migration(svc: Services, inp: Inputs) -> Reply:
    """Migrate a hub: ``{"from", "to", "includeKeys": true, "configurations": false, "mode": "create"}``. The
    reply is the migration (``GET /api/migrations/{from}/{migrationId}`` follows it)."""
    source, target = _hub(svc, inp.body["from"]), _hub(svc, inp.body["to"])
    if source == target:
        raise ApiError(400, "SameHub", f"'from' and 'to' are both '{source}': a migration needs two different hubs")
    try:
        job = svc.migrate(
            source,
            target,
            include_keys=bool(inp.body.get("includeKeys", True)),
            configurations=bool(inp.body.get("configurations", False)),
            mode=str(inp.body.get("mode", "create")),
        )
    except CannotMigrate as exc:
        raise ApiError(400, "CannotMigrate", str(exc)) from None
    return _migration_reply(svc, svc.migration_steps(job), 202)


@handles(schemas.GET_MIGRATION)
def get_migration(svc: Services, inp: Inputs) -> Reply:
    return _migration_reply(svc, svc.migration(_hub(svc, inp.path["hub"]), inp.path["job_id"]))


def _migration_reply(svc: Services, steps: tuple[Job, Job | None, Job | None], status: int = 200) -> Reply:
    exported, imported, verified = steps
    body = migration_view(exported, imported, verified)
    reports = {
        f"{step}.{name}": path
        for step, step_job in zip(("export", "import", "verify"), (exported, imported, verified), strict=True)
        if step_job is not None
        for name, path in step_job.reports.items()
    }
    body["links"] = _links(svc, reports)
    if verified is not None and "migration" in verified.reports and verified.state.is_terminal:
        body["verification"] = _report(svc, verified.reports["migration"])
    return Reply(status, body)


# --- at hand: devices and backups (read only) -----------------------------------------------------------


@handles(schemas.LIST_DEVICES)
def list_devices(svc: Services, inp: Inputs) -> Reply:
    """``?query=SELECT * FROM devices WHERE ...&top=100&continuation=<next>``: one page of twins (one call against
    the hub's query quota; a throttled hub is a 503 with Retry-After); ``?count=true``: how many it selects."""
    client = svc.engine.ctx.hubs[_hub(svc, inp.path["hub"])]
    query = inp.query.get("query")
    try:
        if inp.query.get("count"):
            return Reply(200, inventory.device_count(client, query))
        page = inventory.device_page(
            client, query, top=inp.query.get("top", 100), continuation=inp.query.get("continuation")
        )
    except IoTHubHTTPError as exc:
        if exc.status != 400:
            raise
        raise ApiError(400, "InvalidQuery", f"the hub refused the query: {exc}") from None
    return Reply(200, page, headers={"Cache-Control": "no-store"})


@handles(schemas.GET_DEVICE)
def get_device(svc: Services, inp: Inputs) -> Reply:
    """One device in full; keys are null unless ``?keys=true`` (the reply is then never cached)."""
    hub = _hub(svc, inp.path["hub"])
    device_id = inp.path["device_id"]
    try:
        doc = inventory.device_document(
            svc.engine.ctx.hubs[hub], svc.ledger, hub, device_id, keys=bool(inp.query.get("keys"))
        )
    except IoTHubNotFound:
        raise ApiError(404, "DeviceNotFound", f"hub '{hub}' has no device '{device_id}'") from None
    return Reply(200, doc, headers={"Cache-Control": "no-store"})


@handles(schemas.LIST_BACKUPS)
def list_backups(svc: Services, inp: Inputs) -> Reply:
    """``?hub=&limit=``: each hub's complete backups, newest first, and its incomplete folders."""
    hubs = [_hub(svc, inp.query["hub"])] if "hub" in inp.query else list(svc.settings.hubs)
    doc = inventory.backups_document(
        svc.storage,
        svc.settings.containers.backups,
        hubs,
        now=datetime.now(UTC),
        retention_days=svc.settings.backup_retention_days,
        limit=inp.query.get("limit", inventory.BACKUPS_LISTED),
    )
    return Reply(200, doc)


@handles(schemas.GET_BACKUP)
def get_backup(svc: Services, inp: Inputs) -> Reply:
    hub = _hub(svc, inp.path["hub"])
    doc = inventory.backup_document(
        svc.storage,
        svc.settings.containers.backups,
        hub,
        inp.path["stamp"],
        now=datetime.now(UTC),
        retention_days=svc.settings.backup_retention_days,
    )
    return Reply(200, doc)


def health(request: Request, env: Mapping[str, str] | None = None) -> Reply:
    """Liveness: answers without building the services (no settings, storage or hub needed); ``instance`` names
    the deployment that answers (``config.instance_id``), so a client can tell it is talking to the stack it means."""
    found = instance_id(os.environ if env is None else env)
    body = {"status": "ok", **({"instance": found} if found else {})}
    return guarded(schemas.HEALTH, request, lambda _: Reply(200, body), "health")


# --- the status page and the API's description ----------------------------------------------------------

STATUS_HTML = Path(__file__).parent / "web" / "status.html"


@functools.cache
def _page() -> tuple[str, dict[str, str]]:
    """The status page and its headers. Its inline style and script are allowed by their hashes and nothing else
    runs; no referrer ever leaves it (its URL carries the function key as ?code=, and its report links go to
    storage); it is never cached or framed."""
    html = STATUS_HTML.read_text(encoding="utf-8")
    hashes = {tag: _csp_hash(html, tag) for tag in ("script", "style")}
    csp = (
        "default-src 'none'; connect-src 'self'; img-src 'self' data:; "
        f"script-src {hashes['script']}; style-src {hashes['style']}; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    headers = {
        "Content-Security-Policy": csp,
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
    }
    return html, headers


def _csp_hash(html: str, tag: str) -> str:
    match = re.search(rf"<{tag}>(.*?)</{tag}>", html, re.S)
    assert match is not None, f"the status page has no <{tag}>"
    digest = base64.b64encode(hashlib.sha256(match.group(1).encode()).digest()).decode()
    return f"'sha256-{digest}'"


def status_page(request: Request, svc: Services | Callable[[], Services] | None = None) -> Reply:
    """The status page: HTML whose script reads ``status.json`` itself, with the essentials rendered here into its
    ``<noscript>`` for a browser without JavaScript (``svc`` None: no essentials, the page alone). The page is
    served even when they cannot be read: it then says why, and its script keeps trying."""

    def page(_: Inputs) -> Reply:
        html, headers = _page()
        if svc is not None:
            html = status_html.fill(html, _essentials(svc))
        return Reply(200, {}, text=html, media="text/html", headers=headers)

    return guarded(schemas.STATUS_PAGE, request, page, "status_page")


def _essentials(svc: Services | Callable[[], Services]) -> str:
    try:
        services = svc if isinstance(svc, Services) else svc()
        # No links: report links are SAS, and the script-less page shows none (status_html's note).
        return status_html.essentials(_status_document(services, lambda _container, _name: ""))
    except ConfigError as exc:
        logger.error("configuration: %s", exc)
        return status_html.unavailable("the app is misconfigured (its log says how)")
    except (StorageError, LedgerError):
        return status_html.unavailable("storage is not answering")
    except Exception:
        logger.exception("unexpected error rendering the status page's essentials")
        return status_html.unavailable("unexpected error (the app's log has the details)")


def _status_document(svc: Services, link: Callable[[str, str], str]) -> dict[str, Any]:
    settings = svc.settings
    return status_document(
        ledger=svc.ledger,
        storage=svc.storage,
        hubs=settings.hubs,
        backups_container=settings.containers.backups,
        retention_days=settings.backup_retention_days,
        central_configured=svc.central is not None,
        now=datetime.now(UTC),
        link=link,
    )


@handles(schemas.STATUS)
def status(svc: Services, inp: Inputs) -> Reply:
    """What the status page shows: hubs, running jobs and queues, recent jobs with report links, backups."""
    doc = _status_document(svc, svc.storage.sas.read_link)
    return Reply(200, doc, headers={"Cache-Control": "no-store"})


def openapi(request: Request) -> Reply:
    """The HTTP API as an OpenAPI 3.1 document (generated from the routes' schemas)."""
    return guarded(schemas.OPENAPI, request, lambda _: Reply(200, openapi_document()), "openapi")


# --- IoT Central data export ----------------------------------------------------------------------------


@handles(schemas.CENTRAL_PLAN)
def central_plan(svc: Services, inp: Inputs) -> Reply:
    """What applying the file in the body would change; changes nothing and records no job."""
    assert inp.raw is not None  # the route takes every body as the file
    _, _, plan = _central(svc).plan(inp.raw)
    return Reply(200, plan.public())


@handles(schemas.CENTRAL_APPLY)
def central_apply(svc: Services, inp: Inputs) -> Reply:
    """Apply the file in the body: it is kept as ``uploads/central/api-<time>.json`` and applied as that upload
    would be (one ledger job with a report); the reply is the finished job (202 with the running one if it takes
    longer than ``APPLY_WAIT``)."""
    assert inp.raw is not None
    _central(svc)
    name = f"central/api-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}.json"
    uploads = svc.settings.containers.uploads
    etag = svc.storage.upload_bytes(uploads, name, inp.raw, overwrite=False)
    # The blob trigger sees the same upload and may be applying it already: then wait for that instance to finish.
    job = svc.wait(svc.on_upload(uploads, name, etag), APPLY_WAIT)
    return _job_reply(svc, job, 200 if job.state.is_terminal else 202)


@handles(schemas.CENTRAL_BACKUP)
def central_backup(svc: Services, inp: Inputs) -> Reply:
    """Back up the app's data-export configuration now: always a new backup of what the app holds now (its manifest,
    with the ``folder`` it went to)."""
    return Reply(200, _central(svc).backup(retention_days=svc.settings.backup_retention_days, manual=True))
