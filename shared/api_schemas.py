"""What every HTTP route accepts, and the one place that checks it: a JSON Schema per route for its body, its query
string and its route parameters, and a size cap per body.

A route is declared once as a ``Route`` (below, with the others); ``check`` turns a raw request into checked,
typed ``Inputs`` or raises ``ApiError`` (a 4xx with a PascalCase code and a message saying what to change).
Unknown fields are refused with a did-you-mean, because a typo such as ``"hubb"`` silently ignored would start a
backup of every hub instead of one. Query values arrive as text and are converted to the type their schema names
(``integer``, ``boolean``, ``array`` as comma-separated words) before the same JSON Schema check as a body.

Checking happens before the app's services are built and before any I/O: hostile input costs a parse at most.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError

from . import names
from .dataexport.document import MAX_BYTES as DOCUMENT_MAX_BYTES
from .devices.rules import DEVICE_ID_RE
from .ledger import JobState

# A JSON control body is a few fields; anything larger is a mistake or an attack and is never parsed.
MAX_JSON_BYTES = 64 * 1024
# Below Azure's 100 MB request limit, so that the app (not the front end) answers, with advice.
MAX_NDJSON_BYTES = 64 * 1024 * 1024
MAX_PAGE = 200
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/jsonl", "text/plain"})
CSV_TYPE = "text/csv"  # a devices sheet as the body: read as CSV (docs/operations.md, "CSV uploads")

# Error codes the checking answers with (the handlers and ``guarded`` add the domain ones).
INVALID_JSON = "InvalidJson"
EMPTY_BODY = "EmptyBody"
BODY_TOO_LARGE = "BodyTooLarge"
UNKNOWN_FIELD = "UnknownField"
MISSING_FIELD = "MissingField"
INVALID_FIELD = "InvalidField"


class ApiError(Exception):
    """A request the app refuses: answered as ``{"error": {"code", "message", **extra}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


@dataclass(frozen=True, slots=True)
class RawBody:
    """A body taken as bytes (a file), not as a JSON object: its cap, and what to do instead when over it.
    ``content_types``: the types that select it (None: every request's body is this one)."""

    max_bytes: int
    too_large: str
    content_types: frozenset[str] | None = None


def fields(required: tuple[str, ...] = (), **properties: dict[str, Any]) -> dict[str, Any]:
    """An object schema with only these properties (unknown ones refused). Each property's ``description`` says
    what it must be; it is the message when a value is refused."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


NONE = fields()


@dataclass(frozen=True)
class Route:
    """What one route accepts. ``body``: the JSON object schema (None: the body must be empty or ``{}``);
    ``raw``: a body taken as bytes instead, for its content types; ``path``: the route parameters."""

    name: str  # "POST /api/exports", for messages (and the OpenAPI document's path)
    query: dict[str, Any] = field(default_factory=lambda: NONE)
    body: dict[str, Any] | None = None
    raw: RawBody | None = None
    path: dict[str, Any] = field(default_factory=lambda: NONE)
    summary: str = ""  # one line for the OpenAPI document
    ok: tuple[int, ...] = (200,)  # the statuses of a success
    produces: str = "application/json"
    anonymous: bool = False  # answers without a function key

    @property
    def method(self) -> str:
        return self.name.split(" ", 1)[0]

    @property
    def url_path(self) -> str:
        return self.name.split(" ", 1)[1]

    def __post_init__(self) -> None:
        # A schema with a mistake fails at import (and in the unit tests), not on a user's request.
        for schema in (self.query, self.body or NONE, self.path):
            Draft202012Validator.check_schema(schema)


@dataclass(frozen=True, slots=True)
class Request:
    """A request as a trigger hands it over (no ``azure.functions`` types here)."""

    body: bytes = b""
    content_type: str = ""
    query: Mapping[str, str] = field(default_factory=dict)
    path: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Inputs:
    """A request that passed its route's checks: typed values of the JSON body, query and path, or the raw body."""

    body: dict[str, Any]
    query: dict[str, Any]
    path: dict[str, Any]
    raw: bytes | None = None  # set when the route's RawBody took the body
    raw_type: str = ""  # the media type it came as (text/csv: a sheet)


# --- the schemas ----------------------------------------------------------------------------------------

JOB_ID = r"^[0-9]{13}-[0-9a-f]{6}$"  # ledger.new_job_id: inverted milliseconds, then 3 random bytes in hex
# A container name (3-63 lowercase letters, digits, single hyphens, starting and ending with a letter or digit),
# "/", then a blob name of 1-1024 characters that is not a folder.
BLOB = r"^(?![a-z0-9-]*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]/[^\x00-\x1f]{0,1023}[^/\x00-\x1f]$"

# Names checked by ``shared.names`` (no ./.. or empty segment, backslash or control character), as JSON Schema
# formats: the refusal names the field and the problem. A ``folder`` may end in one /.
FORMATS = FormatChecker(formats=())


def _blob_path(value: object) -> bool:
    if isinstance(value, str):
        names.checked(value, "path")
    return True


def _folder(value: object) -> bool:
    if isinstance(value, str):
        names.checked(value.removesuffix("/"), "folder")
    return True


FORMATS.checks("blob-path", raises=names.UnsafeName)(_blob_path)
FORMATS.checks("folder", raises=names.UnsafeName)(_folder)


HUB: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": 50,
    "description": "must be the name of a configured hub (1-50 characters)",
}
PARTITION: dict[str, Any] = {**HUB, "description": "must be the name of a configured hub, or central (1-50 characters)"}
INCLUDE_KEYS: dict[str, Any] = {"type": "boolean", "description": "must be true or false"}
BLOB_FIELD: dict[str, Any] = {
    "type": "string",
    "pattern": BLOB,
    "format": "blob-path",
    "description": 'must be "<container>/<name>" of a devices file in storage, e.g. "uploads/march.jsonl": the '
    "container name is 3-63 lowercase letters, digits and single hyphens, starting and ending with a letter or "
    "digit, and the name is 1-1024 characters with no . or .. or empty folder, backslash or control character",
}
JOB_PATH = fields(
    ("hub", "job_id"),
    hub=PARTITION,
    job_id={"type": "string", "pattern": JOB_ID, "description": "must be a job id such as 8234567890123-0a1b2c"},
)

IMPORTS = Route(
    "POST /api/imports",
    summary="Import a devices file: a blob already in storage, or the request body (application/x-ndjson, or "
    "text/csv for a sheet)",
    ok=(200, 202),
    query=fields(hub=HUB),
    body=fields(("blob",), blob=BLOB_FIELD, hub=HUB),
    raw=RawBody(
        MAX_NDJSON_BYTES,
        f"a devices file sent as the body may be at most {MAX_NDJSON_BYTES // 2**20} MiB: upload it to the "
        'uploads/ container instead (it is imported on arrival), or give its path as {"blob": "<container>/<name>"}',
        NDJSON_TYPES | {CSV_TYPE},
    ),
)
EXPORTS = Route(
    "POST /api/exports",
    summary="Back up now: an export job per hub (no hub: every hub)",
    ok=(202,),
    query=fields(hub=HUB, includeKeys=INCLUDE_KEYS),
    body=fields(hub=HUB, includeKeys=INCLUDE_KEYS),
)
RESTORES = Route(
    "POST /api/restores",
    summary="Restore a backup of a hub (a stamp, <hub>/<stamp>, or latest) as a restore job",
    ok=(200, 202),
    body=fields(
        ("backup",),
        hub=HUB,
        backup={
            "type": "string",
            "pattern": r"^[A-Za-z0-9/_.-]{1,200}$",
            "format": "folder",
            "description": "must name a backup folder of the hub: its UTC stamp (20261201T020000Z), "
            "<hub>/<stamp>, or latest (no . or .. or empty folder)",
        },
    ),
)
LIST_JOBS = Route(
    "GET /api/jobs",
    summary="List jobs, newest first, paged by next",
    query=fields(
        hub=PARTITION,
        state={
            "type": "array",
            "items": {"enum": [s.value for s in JobState]},
            "maxItems": len(JobState),
            "description": f"must be a comma-separated list of: {', '.join(s.value for s in JobState)}",
        },
        limit={
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_PAGE,
            "description": f"must be a number from 1 to {MAX_PAGE}",
        },
        after={
            "type": "string",
            "pattern": JOB_ID,
            "description": "must be the job id a previous page gave as next",
        },
        source={
            **BLOB_FIELD,
            "description": 'must be "<container>/<name>" of what the jobs read, e.g. '
            '"uploads/march.jsonl" (a client finds the job of its upload by this and the sourceEtag)',
        },
    ),
)
GET_JOB = Route(
    "GET /api/jobs/{hub}/{job_id}",
    path=JOB_PATH,
    summary="One job: counts, progress, reports and 15-minute read-only links to them",
)
CANCEL_JOB = Route(
    "POST /api/jobs/{hub}/{job_id}/cancel",
    path=JOB_PATH,
    summary="Cancel a queued job now, or ask the hub to cancel a running one",
    ok=(200, 202),
)
PLAN = Route(
    "POST /api/imports/plan",
    summary="What importing a devices file would do (same bodies as POST /api/imports); changes nothing",
    ok=(200, 202),
    query=fields(
        hub=HUB,
        wait={
            "type": "integer",
            "minimum": 0,
            "maximum": 120,
            "description": "must be the seconds (0-120) to wait for the plan before answering with the queued job",
        },
    ),
    body=fields(("blob",), blob=BLOB_FIELD, hub=HUB),
    raw=IMPORTS.raw,
)
APPROVE_JOB = Route(
    "POST /api/jobs/{hub}/{job_id}/approve",
    path=JOB_PATH,
    summary="Let an import held awaiting_approval run (hubs that require a plan)",
    ok=(200, 202),
)
ROLLBACK_JOB = Route(
    "POST /api/jobs/{hub}/{job_id}/rollback",
    path=JOB_PATH,
    summary="Undo an ended import from its snapshot: the inverse file runs as an import job with rollbackOf set",
    ok=(200, 202),
    body=fields(
        force={
            "type": "boolean",
            "description": "must be true or false (true: undo even devices changed since the import)",
        }
    ),
)
BULK = Route(
    "POST /api/bulk",
    summary="Act on a query: queue the job that reads the query, writes the import file of an action on every device "
    "it selects and plans it (202 at once)",
    ok=(202,),
    body=fields(
        ("query", "action"),
        hub=HUB,
        query={
            "type": "string",
            "minLength": 1,
            "maxLength": 8192,
            "description": "must be a device query: SELECT * FROM devices [WHERE ...] (at most 8192 characters)",
        },
        action={
            "enum": ["delete", "disable", "enable", "setTags", "regenerateKeys"],
            "description": "must be one of delete, disable, enable, setTags, regenerateKeys",
        },
        args={
            "type": "object",
            "description": 'must be an object: {"tags": {...}} for setTags, empty or absent otherwise',
        },
    ),
)
RUN_BULK = Route(
    "POST /api/bulk/{id}/run",
    path=fields(
        ("id",),
        id={
            "type": "string",
            "pattern": r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}$",
            "description": "must be a bulk id such as 20250101T020000Z-0a1b2c (POST /api/bulk answers it)",
        },
    ),
    summary="Import the file POST /api/bulk generated, as a normal import job (validated, snapshotted, undoable)",
    ok=(200, 202),
)
MIGRATIONS = Route(
    "POST /api/migrations",
    summary="Migrate a hub's registry to another hub: export, import, then verify device by device",
    ok=(202,),
    body=fields(
        ("from", "to"),
        **{
            "from": {**HUB, "description": "must be the name of the configured hub to migrate from"},
            "to": {**HUB, "description": "must be the name of the configured hub to migrate to (not the same)"},
        },
        includeKeys={
            "type": "boolean",
            "description": "must be true or false (true, the default: devices keep their keys in the new hub)",
        },
        configurations={
            "type": "boolean",
            "description": "must be true or false (true: the hub's configurations go too; default false)",
        },
        mode={
            "enum": ["create", "createOrUpdate"],
            "description": "must be create (the default: a device the target has already is refused, never "
            "overwritten) or createOrUpdate (it is replaced)",
        },
    ),
)
GET_MIGRATION = Route(
    "GET /api/migrations/{hub}/{job_id}",
    path=fields(
        ("hub", "job_id"),
        hub={**HUB, "description": "must be the name of the hub migrated from"},
        job_id={
            "type": "string",
            "pattern": JOB_ID,
            "description": "must be a migration id such as 8234567890123-0a1b2c (POST /api/migrations answers it)",
        },
    ),
    summary="A migration's stage, state, progress and its three jobs (export, import, verify)",
)
_DOCUMENT = RawBody(
    DOCUMENT_MAX_BYTES,
    f"a data-export file may be at most {DOCUMENT_MAX_BYTES // 2**20} MiB; is it the right one?",
)
CENTRAL_PLAN = Route(
    "POST /api/central/plan", raw=_DOCUMENT, summary="What applying an IoT Central data-export file would change"
)
CENTRAL_APPLY = Route(
    "POST /api/central/apply",
    raw=_DOCUMENT,
    summary="Apply an IoT Central data-export file (kept as an uploads/central/ upload, run as a job)",
    ok=(200, 202),
)
CENTRAL_BACKUP = Route("POST /api/central/backups", summary="Back up IoT Central's data export now")
HEALTH = Route("GET /api/health", summary="Liveness; touches nothing", anonymous=True)
STATUS_PAGE = Route(
    "GET /api/status",
    summary="The status page (HTML): hubs, running jobs, queues, recent jobs, backups; refreshes itself",
    produces="text/html",
)
STATUS = Route("GET /api/status.json", summary="What the status page shows, as JSON")
OPENAPI = Route("GET /api/openapi.json", summary="This document")

HUB_PATH = fields(("hub",), hub={**HUB, "description": "must be the name of a configured hub"})
DEVICE_QUERY: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": 8192,
    "description": "must be a device query: SELECT * FROM devices [WHERE ...] (at most 8192 characters)",
}
LIST_DEVICES = Route(
    "GET /api/hubs/{hub}/devices",
    path=HUB_PATH,
    query=fields(
        query=DEVICE_QUERY,
        top={"type": "integer", "minimum": 1, "maximum": 1000, "description": "must be a number from 1 to 1000"},
        continuation={
            "type": "string",
            "minLength": 1,
            "maxLength": 4096,
            "description": "must be the token a previous page gave as next",
        },
        count={
            "type": "boolean",
            "description": "must be true or false (true: only how many devices the query's WHERE selects)",
        },
    ),
    summary="A page of the devices a query selects (twins, keys never shown): one call against the hub's query "
    "quota, paged by next; ?count=true counts them instead",
)
GET_DEVICE = Route(
    "GET /api/hubs/{hub}/devices/{device_id}",
    path=fields(
        ("hub", "device_id"),
        hub=HUB_PATH["properties"]["hub"],
        device_id={
            "type": "string",
            "pattern": f"^{DEVICE_ID_RE.pattern}$",  # the validator's own rule
            "description": "must be a device id: 1-128 letters, digits and - . % _ * ? ! ( ) , : = @ $ '",
        },
    ),
    query=fields(
        keys={
            "type": "boolean",
            "description": "must be true or false (true: the device's and its modules' keys are in the reply; "
            "default false, keys null)",
        }
    ),
    summary="One device: identity, twin tags and properties, modules, and the hub's recent jobs that could have "
    "touched it; keys null unless ?keys=true",
)
LIST_BACKUPS = Route(
    "GET /api/backups",
    query=fields(
        hub=HUB,
        limit={
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_PAGE,
            "description": f"must be a number from 1 to {MAX_PAGE} (backups listed per hub, newest first)",
        },
    ),
    summary="Each hub's complete backups (newest first): stamp, counts, with or without keys, age against "
    "retention; and its incomplete folders",
)
GET_BACKUP = Route(
    "GET /api/backups/{hub}/{stamp}",
    path=fields(
        ("hub", "stamp"),
        hub=HUB_PATH["properties"]["hub"],
        stamp={
            "type": "string",
            "pattern": r"^[0-9]{8}T[0-9]{6}Z$",
            "description": "must be a backup's UTC stamp such as 20261201T020000Z",
        },
    ),
    summary="One backup: its manifest, its files with their sizes, its age against retention",
)

# Every route, in the order the OpenAPI document lists them (a test holds it equal to function_app's routes).
ROUTES = (
    IMPORTS,
    EXPORTS,
    RESTORES,
    LIST_JOBS,
    GET_JOB,
    CANCEL_JOB,
    PLAN,
    APPROVE_JOB,
    ROLLBACK_JOB,
    BULK,
    RUN_BULK,
    MIGRATIONS,
    GET_MIGRATION,
    CENTRAL_PLAN,
    CENTRAL_APPLY,
    CENTRAL_BACKUP,
    LIST_DEVICES,
    GET_DEVICE,
    LIST_BACKUPS,
    GET_BACKUP,
    STATUS_PAGE,
    STATUS,
    OPENAPI,
    HEALTH,
)


# --- the checking ---------------------------------------------------------------------------------------


def check(route: Route, request: Request) -> Inputs:
    """``request`` checked against ``route``: the path, then the query, then the body.

    Raises:
        ApiError: 400 (bad JSON or a field refused), or 413 (a body over its cap), naming the field.
    """
    path = _validated(route.path, dict(request.path), "path")
    query = _validated(route.query, _typed_query(route.query, request.query), "query")
    media = request.content_type.split(";", maxsplit=1)[0].strip().lower()
    raw = route.raw
    if raw is not None and (raw.content_types is None or media in raw.content_types):
        if len(request.body) > raw.max_bytes:
            raise ApiError(413, BODY_TOO_LARGE, raw.too_large, limit=raw.max_bytes)
        if not request.body.strip():
            raise ApiError(400, EMPTY_BODY, "the request body is empty: send the file as the body")
        return Inputs({}, query, path, request.body, media)
    if len(request.body) > MAX_JSON_BYTES:
        raise ApiError(
            413,
            BODY_TOO_LARGE,
            f"a JSON body for {route.name} may be at most {MAX_JSON_BYTES // 1024} KiB",
            limit=MAX_JSON_BYTES,
        )
    body = _validated(route.body or NONE, parse_object(request.body), "body")
    return Inputs(body, query, path)


def parse_object(raw: bytes) -> dict[str, Any]:
    """A JSON object body (an empty body is ``{}``).

    Raises:
        ApiError: 400 ``InvalidJson`` when it is not JSON, nested too deeply to parse, or not an object.
    """
    if not raw.strip():
        return {}
    try:
        doc = json.loads(raw)
    except RecursionError:  # a body nested thousands deep exhausts the parser's stack: refuse it as bad JSON
        raise ApiError(400, INVALID_JSON, "the request body is nested too deeply to be a request") from None
    except ValueError as exc:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not UTF-8/16/32
        raise ApiError(400, INVALID_JSON, f"the request body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ApiError(400, INVALID_JSON, f"the request body must be a JSON object, not {_json_type(doc)}")
    return doc


def _typed_query(schema: Mapping[str, Any], query: Mapping[str, str]) -> dict[str, Any]:
    """The query string with each value as the type its schema names. ``code`` (the function key, which Azure
    passes on to the function) is not the route's input; blank values are absent (``?hub=&after=``, as the
    README's own examples write them, means no filter)."""
    properties = schema.get("properties", {})
    typed: dict[str, Any] = {}
    for name, value in query.items():
        if name == "code" or value == "":
            continue
        kind = properties.get(name, {}).get("type")
        typed[name] = _typed(kind, value)
    return typed


def _typed(kind: str | None, value: str) -> Any:
    if kind == "integer" and re.fullmatch(r"-?[0-9]{1,18}", value):
        return int(value)
    if kind == "boolean" and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if kind == "array":
        return [part.strip() for part in value.split(",") if part.strip()]
    return value  # left as text: the schema check refuses it with the property's description


_VALIDATORS: dict[int, Draft202012Validator] = {}


def _validator(schema: dict[str, Any]) -> Draft202012Validator:
    key = id(schema)  # schemas are module constants, alive for the process
    if key not in _VALIDATORS:
        _VALIDATORS[key] = Draft202012Validator(schema, format_checker=FORMATS)
    return _VALIDATORS[key]


# Which failure to report first: a typo'd field name explains the "missing" one that follows from it.
_RANK = {"additionalProperties": 0, "required": 1}


def _validated(schema: dict[str, Any], instance: dict[str, Any], where: str) -> dict[str, Any]:
    errors = sorted(
        _validator(schema).iter_errors(instance),
        key=lambda e: (_RANK.get(str(e.validator), 2), [str(p) for p in e.path]),
    )
    if errors:
        raise _refusal(errors[0], schema, where)
    return instance


def _refusal(error: ValidationError, schema: Mapping[str, Any], where: str) -> ApiError:
    properties: Mapping[str, Any] = schema.get("properties", {})
    known = sorted(properties)
    if error.validator == "additionalProperties":
        unknown = sorted(k for k in error.instance if k not in properties)[0]
        close = difflib.get_close_matches(unknown, known, n=1, cutoff=0.6)
        hint = f'did you mean "{close[0]}"?' if close else _known(known)
        return ApiError(400, UNKNOWN_FIELD, f'unknown field "{_short(unknown)}" in the {where}: {hint}', field=unknown)
    if error.validator == "required":
        missing = next(str(r) for r in error.validator_value if r not in error.instance)
        return ApiError(
            400,
            MISSING_FIELD,
            f'"{missing}" is missing from the {where}: it {properties[missing]["description"]}',
            field=missing,
        )
    name = str(error.path[0]) if error.path else ""
    what = properties.get(name, {}).get("description", "is not valid")
    if error.validator == "format" and error.cause is not None:  # shared.names said what is wrong with it
        what = f"is refused: {str(error.cause).split(': ', 1)[-1]}"
    return ApiError(400, INVALID_FIELD, f'"{name}" in the {where} {what} (got {_got(error.instance)})', field=name)


def _known(names: list[str]) -> str:
    return f"the fields are {', '.join(names)}" if names else "it takes none"


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _got(value: Any) -> str:
    # Containers are named, not printed: one may be large or nested deep enough to exhaust json.dumps.
    if isinstance(value, (dict, list)):
        return "an object" if isinstance(value, dict) else "an array"
    return _short(json.dumps(value))


def _json_type(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")
