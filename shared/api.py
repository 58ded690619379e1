"""The HTTP API's logic, free of ``azure.functions``: each handler takes plain values and returns ``Reply``.

Errors are JSON ``{"error": {"code": ..., "message": ...}}`` with a message that says what to change; nothing
internal (stack traces, keys, SAS) ever reaches a reply. Report links are read-only SAS links valid 15 minutes.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from .central import PARTITION as CENTRAL
from .central import is_central_upload
from .config import ConfigError
from .dataexport import DocumentError
from .iotcentral import IoTCentralError
from .iothub import IoTHubError
from .ledger import Job, JobNotFound, JobState, LedgerConflict, LedgerError
from .pipeline import CannotCancel
from .services import Services
from .storage import BlobRef, StorageError

logger = logging.getLogger(__name__)

MAX_PAGE = 200
APPLY_WAIT = timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: dict[str, Any]

    def json(self) -> str:
        return json.dumps(self.body, indent=2)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error(status: int, code: str, message: str) -> Reply:
    return Reply(status, {"error": {"code": code, "message": message}})


def guarded(handler: Callable[..., Reply]) -> Callable[..., Reply]:
    """Turn every failure into a JSON error reply; unexpected ones are logged, never shown.

    The first argument may be the ``services`` factory itself, so that a configuration error met while building
    the services is answered as JSON too.
    """

    def run(svc: Services | Callable[[], Services], /, **kwargs: Any) -> Reply:
        try:
            return handler(svc if isinstance(svc, Services) else svc(), **kwargs)
        except ApiError as exc:
            return error(exc.status, exc.code, exc.message)
        except ConfigError as exc:
            logger.error("configuration: %s", exc)
            return error(500, "Misconfigured", f"the app is misconfigured: {exc}")
        except JobNotFound:
            return error(404, "JobNotFound", "no such job: check the hub name and job id (GET /api/jobs lists them)")
        except (CannotCancel, LedgerConflict) as exc:
            return error(409, "Conflict", str(exc) or "the job changed meanwhile; read it again and retry")
        except DocumentError as exc:
            reply = error(400, "InvalidDocument", f"{exc}; nothing was changed (see problems)")
            reply.body["error"]["problems"] = [p.public() for p in exc.problems]
            return reply
        except IoTHubError as exc:
            return error(502, "IoTHubError", f"the IoT hub refused the request: {exc}")
        except IoTCentralError as exc:
            return error(502, "IoTCentralError", f"IoT Central refused the request: {exc}")
        except (StorageError, LedgerError) as exc:
            return error(503, "StorageUnavailable", f"storage is not answering: {exc}; retry shortly")
        except Exception:
            logger.exception("unexpected error in %s", handler.__name__)
            return error(500, "InternalError", "unexpected error; the app's log has the details")

    run.__name__ = handler.__name__
    return run


def _body(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, "InvalidJson", f"the request body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ApiError(400, "InvalidJson", "the request body must be a JSON object")
    return doc


def _hub(svc: Services, name: str | None) -> str:
    """A configured IoT hub (default: the first), for the calls that start hub jobs."""
    hub = name or svc.settings.default_hub
    if hub not in svc.settings.hubs:
        raise ApiError(
            404, "UnknownHub", f"hub '{hub}' is not configured; configured hubs: {', '.join(svc.settings.hubs)}"
        )
    return hub


def _partition(svc: Services, name: str) -> str:
    """A ledger partition to read jobs from: a hub, or ``central`` (IoT Central applies) when it is configured."""
    return CENTRAL if name == CENTRAL and svc.central is not None else _hub(svc, name)


def _links(svc: Services, reports: Mapping[str, str]) -> dict[str, str]:
    links = {}
    for name, path in reports.items():
        container, _, blob = path.partition("/")
        links[name] = svc.storage.read_link(BlobRef(container, blob))
    return links


def _job_reply(svc: Services, job: Job, status: int = 200) -> Reply:
    body = job.public()
    body["reports"] = dict(job.reports)
    body["links"] = _links(svc, job.reports)
    return Reply(status, body)


# --- handlers -------------------------------------------------------------------------------------------


@guarded
def start_import(svc: Services, *, body: bytes, content_type: str, query: Mapping[str, str]) -> Reply:
    """Start an import from a blob already in storage (JSON ``{"blob": "container/name", "hub": ...}``), or from
    the request body itself (``Content-Type: application/x-ndjson``, ``?hub=``)."""
    uploads = svc.settings.containers.uploads
    if content_type.split(";", maxsplit=1)[0].strip() in ("application/x-ndjson", "application/jsonl", "text/plain"):
        if not body.strip():
            raise ApiError(400, "EmptyBody", "the request body holds no devices: send one JSON object per line")
        hub = _hub(svc, query.get("hub"))
        name = f"{hub}/api-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}.jsonl"
        etag = svc.storage.upload_bytes(uploads, name, body, overwrite=False)
        ref = BlobRef(uploads, name, etag)
    else:
        doc = _body(body)
        blob = doc.get("blob")
        if not isinstance(blob, str) or "/" not in blob:
            raise ApiError(
                400,
                "MissingBlob",
                'give "blob": "<container>/<name>" of a devices file in storage, or send the file itself '
                "with Content-Type: application/x-ndjson",
            )
        container, _, name = blob.partition("/")
        if is_central_upload(name):
            raise ApiError(
                400,
                "NotADevicesFile",
                f"'{blob}' is under central/, where IoT Central data-export files go: use POST /api/central/apply",
            )
        hub = _hub(svc, doc.get("hub") or query.get("hub") or svc.hub_for_upload(name))
        props = svc.storage.properties(BlobRef(container, name))
        if props is None:
            raise ApiError(404, "BlobNotFound", f"no blob '{blob}' in storage: upload it first or fix the path")
        ref = BlobRef(container, name, props["etag"])
    job = svc.on_upload(ref.container, ref.name, str(ref.etag), hub)
    return _job_reply(svc, job, 202 if not job.state.is_terminal else 200)


@guarded
def start_export(svc: Services, *, body: bytes, query: Mapping[str, str]) -> Reply:
    """Queue an export now: ``{"hub": ..., "includeKeys": false}``; no hub means every configured hub."""
    doc = _body(body)
    keys = doc.get("includeKeys", query.get("includeKeys", False))
    if isinstance(keys, str):  # from the query string: only the two words, never a guess
        keys = {"true": True, "false": False}.get(keys.lower(), keys)
    if not isinstance(keys, bool):
        raise ApiError(400, "InvalidField", '"includeKeys" must be true or false')
    name = doc.get("hub") or query.get("hub")
    hubs = [_hub(svc, name)] if name else list(svc.settings.hubs)
    jobs = [svc.export(hub, include_keys=keys, source="http").public() for hub in hubs]
    return Reply(202, {"jobs": jobs})


@guarded
def list_jobs(svc: Services, *, query: Mapping[str, str]) -> Reply:
    """``?hub=&state=running,queued&limit=50&after=<job id>``: newest first; ``next`` is the next page's after."""
    hub = _partition(svc, query["hub"]) if query.get("hub") else None
    states: set[JobState] | None = None
    if query.get("state"):
        try:
            states = {JobState(s.strip()) for s in query["state"].split(",") if s.strip()}
        except ValueError:
            raise ApiError(
                400, "InvalidState", f"state must be among: {', '.join(s.value for s in JobState)}"
            ) from None
    try:
        limit = int(query.get("limit", "50"))
    except ValueError:
        raise ApiError(400, "InvalidLimit", f"limit must be a number from 1 to {MAX_PAGE}") from None
    if not 1 <= limit <= MAX_PAGE:
        raise ApiError(400, "InvalidLimit", f"limit must be a number from 1 to {MAX_PAGE}")
    page, after = svc.ledger.list_jobs(hub, states=states, limit=limit, after=query.get("after") or None)
    return Reply(200, {"jobs": [j.public() for j in page], "next": after})


@guarded
def get_job(svc: Services, *, hub: str, job_id: str) -> Reply:
    return _job_reply(svc, svc.ledger.get(_partition(svc, hub), job_id))


@guarded
def cancel_job(svc: Services, *, hub: str, job_id: str) -> Reply:
    if _partition(svc, hub) == CENTRAL:
        raise ApiError(409, "Conflict", "an IoT Central apply runs to its end once started; it cannot be cancelled")
    job = svc.pipeline.cancel(svc.ledger.get(_hub(svc, hub), job_id))
    return _job_reply(svc, job, 202 if not job.state.is_terminal else 200)


# --- IoT Central data export ----------------------------------------------------------------------------


def _document(body: bytes) -> bytes:
    if not body.strip():
        raise ApiError(400, "EmptyBody", "send the data-export file (JSON) as the request body")
    return body


@guarded
def central_plan(svc: Services, *, body: bytes) -> Reply:
    """What applying the file in the body would change; changes nothing and records no job."""
    _, _, plan = svc.require_central().plan(_document(body))
    return Reply(200, plan.public())


@guarded
def central_apply(svc: Services, *, body: bytes) -> Reply:
    """Apply the file in the body: it is kept as ``uploads/central/api-<time>.json`` and applied as that upload
    would be (one ledger job with a report); the reply is the finished job (202 with the running one if it takes
    longer than ``APPLY_WAIT``)."""
    central = svc.require_central()
    name = f"central/api-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}.json"
    uploads = svc.settings.containers.uploads
    etag = svc.storage.upload_bytes(uploads, name, _document(body), overwrite=False)
    # The blob trigger sees the same upload and may be applying it already: then wait for that instance to finish.
    job = central.wait(svc.on_upload(uploads, name, etag), APPLY_WAIT)
    return _job_reply(svc, job, 200 if job.state.is_terminal else 202)


@guarded
def central_backup(svc: Services) -> Reply:
    """Back up the app's data-export configuration now (one folder per hour: a repeat finds the same one)."""
    return Reply(200, svc.require_central().backup(retention_days=svc.settings.backup_retention_days))
