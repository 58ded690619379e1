"""HTTPS front of the IoT Hub emulator: routes, auth, fault injection and the test control plane.

Routes follow the IoT Hub service API (api-version 2021-04-12). Every error is answered by ``ApiError`` with the
service's shape; handlers get an ``IoTHubEmulator`` and never reach state through globals.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import ssl
import threading
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ..serving import JsonHandler, RawRequest
from ..tls import TlsHTTPServer, ensure_certificates
from . import query
from .auth import Right, authorize, connection_string
from .blobs import StorageAccess
from .errors import CODE_NAMES, ApiError
from .faults import FaultConfig, Faults
from .jobs import JobRunner, iso
from .model import (
    LineError,
    apply_configuration,
    check_twin_section,
    device_json,
    merge_patch,
    module_json,
    strip_etag,
    twin_json,
)
from .quotas import Op, Profile, Throttle
from .registry import Registry
from .store import Store

logger = logging.getLogger(__name__)

API_VERSION = "2021-04-12"
# api-versions the service is known to answer: 2021-04-12 (the published swagger, the Python and C# SDKs),
# 2020-03-13 (azure-sdk-for-net's live recordings), 2020-05-31-preview (the REST reference's zh-cn page) and
# 2020-09-30 (the C# SDK's earlier default, inferred). Anything else gets 400001 InvalidProtocolVersion, as the
# service answers a missing or unsupported one.
API_VERSIONS = frozenset({"2020-03-13", "2020-05-31-preview", "2020-09-30", API_VERSION})
MAX_BULK = 100
MAX_CONFIGURATIONS = 100  # per standard-tier hub (quotas docs, "Other limits"); 10 on the free tier


@dataclass
class Request:
    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    body: Any
    match: re.Match[str] | None = None


@dataclass
class Response:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[["IoTHubEmulator", Request], Response]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    right: Right | None  # None: the control plane
    handler: Handler
    op: Op | None  # the throttle it counts against


_ROUTES: list[Route] = []


def route(method: str, pattern: str, right: Right | None, op: Op | None = None) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        _ROUTES.append(Route(method, re.compile(f"^{pattern}$"), right, fn, op))
        return fn

    return deco


def _device_id(req: Request) -> str:
    assert req.match is not None
    return unquote(req.match.group("id"))


def _module_id(req: Request) -> str:
    assert req.match is not None
    return unquote(req.match.group("mid"))


def _creates(if_match: str | None) -> bool:
    """A PUT that creates: no If-Match, or an empty one (the .NET SDK's recorded creates send ``If-Match: ""``)."""
    return if_match is None or strip_etag(if_match) == ""


def _unconditional(if_match: str | None) -> bool:
    return if_match is None or if_match.strip() in ("*", '"*"')


# --- devices --------------------------------------------------------------------------------------------


@route("GET", r"/devices/(?P<id>[^/]+)", Right.REGISTRY_READ, Op.REGISTRY)
def get_device(emu: IoTHubEmulator, req: Request) -> Response:
    record = emu.store.get_device(_device_id(req))
    if record is None:
        raise ApiError(404001, f"Device {_device_id(req)} not found.")
    return Response(body=device_json(record))


@route("PUT", r"/devices/(?P<id>[^/]+)", Right.REGISTRY_WRITE, Op.REGISTRY)
def put_device(emu: IoTHubEmulator, req: Request) -> Response:
    device_id = _device_id(req)
    body = req.body
    if not isinstance(body, dict):
        raise ApiError(400006, "The request body must be a Device JSON object.")
    if body.get("deviceId", device_id) != device_id:
        raise ApiError(400004, f"deviceId in the body ({body.get('deviceId')}) differs from the URL ({device_id}).")
    if_match = req.headers.get("if-match")
    line: dict[str, Any] = {
        "id": device_id,
        "status": body.get("status") or "enabled",
        "statusReason": body.get("statusReason"),
        "authentication": body.get("authentication"),
        "capabilities": body.get("capabilities"),
        "deviceScope": body.get("deviceScope"),
        "parentScopes": body.get("parentScopes"),
    }
    if _creates(if_match):
        line["importMode"] = "create"  # an existing device answers 409001
    elif _unconditional(if_match):
        line["importMode"] = "update"
    else:
        line.update(importMode="updateIfMatchETag", eTag=if_match)
    _apply_one(emu, line)
    record = emu.store.get_device(device_id)
    assert record is not None
    return Response(body=device_json(record))


@route("DELETE", r"/devices/(?P<id>[^/]+)", Right.REGISTRY_WRITE, Op.REGISTRY)
def delete_device(emu: IoTHubEmulator, req: Request) -> Response:
    if_match = (req.headers.get("if-match") or "*").strip()
    line: dict[str, Any] = {"id": _device_id(req), "importMode": "delete"}
    if if_match not in ("*", '"*"'):
        line.update(importMode="deleteIfMatchETag", eTag=if_match)
    _apply_one(emu, line)
    return Response(204)


def _apply_one(emu: IoTHubEmulator, line: dict[str, Any]) -> None:
    failures = emu.registry.apply_batch([line])
    if failures:
        err = failures[0].error
        raise ApiError(err.code, err.message)


@route("GET", r"/devices", Right.REGISTRY_READ, Op.REGISTRY)
def list_devices(emu: IoTHubEmulator, req: Request) -> Response:
    try:
        top = int(req.params.get("top", "1000"))
    except ValueError:
        top = 1000
    if not 1 <= top <= 1000:
        top = 1000  # "Any value outside the range of 1-1000 is considered to be 1000"
    return Response(body=[device_json(r) for r in emu.store.page_devices(None, top)])


@route("POST", r"/devices", Right.REGISTRY_WRITE, Op.REGISTRY)
def bulk(emu: IoTHubEmulator, req: Request) -> Response:
    items = req.body
    if not isinstance(items, list):
        raise ApiError(400006, "The request body must be a JSON array of ExportImportDevice.")
    if len(items) > MAX_BULK:
        raise ApiError(413002, f"Too many devices: at most {MAX_BULK} per bulk call, got {len(items)}.")
    seen: set[tuple[Any, Any]] = set()
    for n, item in enumerate(items):
        if isinstance(item, dict):
            for name in ("id", "moduleId"):
                if item.get(name) is not None and not isinstance(item[name], str):
                    raise ApiError(400012, f"Item {n}: '{name}' must be a string, not {json.dumps(item[name])[:100]}.")
        key = (item.get("id"), item.get("moduleId")) if isinstance(item, dict) else (None, None)
        if key in seen:
            raise ApiError(400011, f"Device {key[0]} is defined more than once in the request.")
        seen.add(key)
    lines = [i if isinstance(i, dict) else LineError(400012, "Each element must be an object.") for i in items]
    failures = emu.registry.apply_batch(lines)
    errors = [
        {
            "deviceId": f.device_id,
            "moduleId": f.module_id,
            "errorCode": CODE_NAMES.get(f.error.code, "GenericError"),
            "errorStatus": f.error.message,
            "operation": f.mode,
        }
        for f in failures
    ]
    result = {"isSuccessful": not errors, "errors": errors, "warnings": []}
    return Response(200 if not errors else 400, result)


@route("POST", r"/devices/query", Right.REGISTRY_READ, Op.QUERY)
def query_devices(emu: IoTHubEmulator, req: Request) -> Response:
    # Queries read the index, which lags behind writes in realistic mode (store.query_devices). One call is one
    # page, counted once against the query throttle (quotas.py), whatever the page holds.
    q = query.parse(req.body.get("query") if isinstance(req.body, dict) else None)
    if q.aggregate:
        return Response(body=_aggregate(emu, q), headers={"x-ms-item-type": "JSON"})
    try:
        limit = max(1, min(1000, int(req.headers.get("x-ms-max-item-count") or 100)))
    except ValueError:
        limit = 100
    cursor = _Cursor.decode(req.headers.get("x-ms-continuation"))
    if q.top is not None:
        limit = min(limit, q.top - cursor.returned)
    items: list[dict[str, Any]] = []
    more = False
    if limit > 0:
        rows = _query_rows(emu, q, cursor.after, limit + 1)
        for key, doc in rows:
            if len(items) == limit:
                more = True  # one more match exists: the page ends at the last one returned
                break
            items.append(q.project(doc))
            cursor = _Cursor(key, cursor.returned + 1)
        rows.close()
    if q.top is not None and cursor.returned >= q.top:
        more = False
    headers = {"x-ms-item-type": "Twin" if q.select is None else "JSON"}
    if more:
        headers["x-ms-continuation"] = cursor.encode()
    return Response(body=items, headers=headers)


@dataclass(frozen=True, slots=True)
class _Cursor:
    """A query's continuation: the key of the last twin returned (a keyset cursor, not an offset) and how many
    were returned in all (for TOP). Opaque to clients, as the service's token is."""

    after: list[str] | None = None
    returned: int = 0

    @staticmethod
    def decode(token: str | None) -> _Cursor:
        if not token:
            return _Cursor()
        try:
            raw = json.loads(base64.urlsafe_b64decode(token.encode()))
            after, returned = raw["k"], raw["n"]
            if not (isinstance(after, list) and all(isinstance(k, str) for k in after) and isinstance(returned, int)):
                raise ValueError(token)
        except (ValueError, KeyError, TypeError):
            raise ApiError(400004, "The x-ms-continuation header is not a token this hub returned.") from None
        return _Cursor(after, returned)

    def encode(self) -> str:
        return base64.urlsafe_b64encode(json.dumps({"k": self.after, "n": self.returned}).encode()).decode()


def _query_rows(
    emu: IoTHubEmulator, q: query.Query, after: list[str] | None, batch: int
) -> Generator[tuple[list[str], dict[str, Any]], None, None]:
    """The twins ``q`` selects after the cursor key, in key order, each with its key."""
    if q.collection == "devices.modules":
        # Module twins are read in (device id, module id) order and checked here (they are not indexed).
        start = (after[0], after[1]) if after and len(after) == 2 else None
        while page := emu.store.page_modules(start, batch):
            for r in page:
                start = (r["deviceId"], r["moduleId"])
                doc = twin_json(r)
                if q.matches(doc):
                    yield [r["deviceId"], r["moduleId"]], doc
            if len(page) < batch:
                return
        return
    where = q.filter()
    for r in emu.store.query_devices(where, query.seek_terms(where), after[0] if after else None, batch):
        doc = twin_json(r)
        if q.matches(doc):
            yield [r["deviceId"]], doc


def _aggregate(emu: IoTHubEmulator, q: query.Query) -> list[dict[str, Any]]:
    """Aggregate rows, all in one answer (inferred: the docs show a GROUP BY's rows as one array)."""
    assert q.select is not None
    if (
        q.where is None
        and not q.group_by
        and all(isinstance(p.expr, query.Call) and p.expr.name == "count" for p in q.select)
    ):
        n = emu.store.count_visible()  # SELECT COUNT() AS n FROM devices: the count the store keeps
        return [{p.alias: n for p in q.select}]
    rows = _query_rows(emu, q, None, 1000)
    try:
        return q.aggregate_rows(doc for _, doc in rows)
    finally:
        rows.close()


@route("GET", r"/statistics/devices", Right.REGISTRY_READ, Op.REGISTRY)
def statistics(emu: IoTHubEmulator, req: Request) -> Response:
    # Counted as a registry read, and lagging like queries (both inferred).
    return Response(body=emu.store.statistics_visible())


# --- twins ----------------------------------------------------------------------------------------------


def _twin_owner(emu: IoTHubEmulator, req: Request, *, module: bool) -> dict[str, Any]:
    """The device or module record a /twins route names."""
    device_id = _device_id(req)
    if module:
        record = emu.store.get_module(device_id, _module_id(req))
        if record is None:
            if emu.store.get_device(device_id) is None:
                raise ApiError(404001, f"Device {device_id} not found.")
            raise ApiError(404010, f"Module {device_id}/{_module_id(req)} not found.")
        return record
    record = emu.store.get_device(device_id)
    if record is None:
        raise ApiError(404001, f"Device {device_id} not found.")
    return record


@route("GET", r"/twins/(?P<id>[^/]+)", Right.REGISTRY_READ, Op.TWIN_READ)
def get_twin(emu: IoTHubEmulator, req: Request) -> Response:
    return Response(body=twin_json(_twin_owner(emu, req, module=False)))


@route("GET", r"/twins/(?P<id>[^/]+)/modules/(?P<mid>[^/]+)", Right.REGISTRY_READ, Op.TWIN_READ)
def get_module_twin(emu: IoTHubEmulator, req: Request) -> Response:
    return Response(body=twin_json(_twin_owner(emu, req, module=True)))


def _write_twin(emu: IoTHubEmulator, req: Request, *, module: bool, replace: bool) -> Response:
    """PATCH merges tags and desired properties (``null`` removes a key); PUT replaces both. Reported properties
    belong to the device and are ignored, as the service does."""
    body = req.body
    if not isinstance(body, dict):
        raise ApiError(400006, "The request body must be a Twin JSON object.")
    tags = body.get("tags")
    props = body.get("properties") or {}
    desired = props.get("desired") if isinstance(props, dict) else None
    for name, part in (("tags", tags), ("properties.desired", desired)):
        if part is not None and not isinstance(part, dict):
            raise ApiError(400004, f"'{name}' must be an object.")
    desired = {k: v for k, v in (desired or {}).items() if k not in ("$metadata", "$version")}
    try:
        check_twin_section(tags or {}, "tags", None)
        check_twin_section(desired, "properties.desired", None)
    except LineError as exc:
        raise ApiError(exc.code, exc.message) from None
    current = _twin_owner(emu, req, module=module)
    twin = current["twin"]
    if_match = req.headers.get("if-match")
    if not _unconditional(if_match) and strip_etag(if_match) != strip_etag(twin["etag"]):
        raise ApiError(412001, f"The twin ETag {if_match} does not match the current one ({twin['etag']}).")
    if replace:
        new_tags, new_desired = tags or {}, desired
    else:
        new_tags = merge_patch(twin["tags"], tags) if tags is not None else twin["tags"]
        new_desired = merge_patch(twin["desired"], desired)
    line: dict[str, Any] = {
        "id": current["deviceId"],
        # Conditional on the twin read above, so a change made meanwhile is never overwritten.
        "importMode": "updateTwinIfMatchETag",
        "twinETag": twin["etag"],
        "tags": new_tags,
        "properties": {"desired": new_desired},
    }
    if module:
        line["moduleId"] = current["moduleId"]
    _apply_one(emu, line)
    return Response(body=twin_json(_twin_owner(emu, req, module=module)))


@route("PATCH", r"/twins/(?P<id>[^/]+)", Right.REGISTRY_WRITE, Op.TWIN_UPDATE)
def patch_twin(emu: IoTHubEmulator, req: Request) -> Response:
    return _write_twin(emu, req, module=False, replace=False)


@route("PUT", r"/twins/(?P<id>[^/]+)", Right.REGISTRY_WRITE, Op.TWIN_UPDATE)
def replace_twin(emu: IoTHubEmulator, req: Request) -> Response:
    return _write_twin(emu, req, module=False, replace=True)


@route("PATCH", r"/twins/(?P<id>[^/]+)/modules/(?P<mid>[^/]+)", Right.REGISTRY_WRITE, Op.TWIN_UPDATE)
def patch_module_twin(emu: IoTHubEmulator, req: Request) -> Response:
    return _write_twin(emu, req, module=True, replace=False)


@route("PUT", r"/twins/(?P<id>[^/]+)/modules/(?P<mid>[^/]+)", Right.REGISTRY_WRITE, Op.TWIN_UPDATE)
def replace_module_twin(emu: IoTHubEmulator, req: Request) -> Response:
    return _write_twin(emu, req, module=True, replace=True)


# --- modules --------------------------------------------------------------------------------------------


@route("GET", r"/devices/(?P<id>[^/]+)/modules", Right.REGISTRY_READ, Op.REGISTRY)
def list_modules(emu: IoTHubEmulator, req: Request) -> Response:
    device_id = _device_id(req)
    if emu.store.get_device(device_id) is None:
        raise ApiError(404001, f"Device {device_id} not found.")
    return Response(body=[module_json(m) for m in emu.store.device_modules(device_id)])


@route("GET", r"/devices/(?P<id>[^/]+)/modules/(?P<mid>[^/]+)", Right.REGISTRY_READ, Op.REGISTRY)
def get_module(emu: IoTHubEmulator, req: Request) -> Response:
    return Response(body=module_json(_twin_owner(emu, req, module=True)))


@route("PUT", r"/devices/(?P<id>[^/]+)/modules/(?P<mid>[^/]+)", Right.REGISTRY_WRITE, Op.REGISTRY)
def put_module(emu: IoTHubEmulator, req: Request) -> Response:
    device_id, module_id = _device_id(req), _module_id(req)
    body = req.body
    if not isinstance(body, dict):
        raise ApiError(400006, "The request body must be a Module JSON object.")
    for name, value in (("deviceId", device_id), ("moduleId", module_id)):
        if body.get(name, value) != value:
            raise ApiError(400004, f"{name} in the body ({body.get(name)}) differs from the URL ({value}).")
    if_match = req.headers.get("if-match")
    line: dict[str, Any] = {
        "id": device_id,
        "moduleId": module_id,
        "authentication": body.get("authentication"),
        "managedBy": body.get("managedBy"),
    }
    if _creates(if_match):
        line["importMode"] = "create"  # an existing module answers 409301
    elif _unconditional(if_match):
        line["importMode"] = "update"
    else:
        line.update(importMode="updateIfMatchETag", eTag=if_match)
    _apply_one(emu, line)
    record = emu.store.get_module(device_id, module_id)
    assert record is not None
    return Response(body=module_json(record))


@route("DELETE", r"/devices/(?P<id>[^/]+)/modules/(?P<mid>[^/]+)", Right.REGISTRY_WRITE, Op.REGISTRY)
def delete_module(emu: IoTHubEmulator, req: Request) -> Response:
    if_match = (req.headers.get("if-match") or "*").strip()
    line: dict[str, Any] = {"id": _device_id(req), "moduleId": _module_id(req), "importMode": "delete"}
    if if_match not in ("*", '"*"'):
        line.update(importMode="deleteIfMatchETag", eTag=if_match)
    _apply_one(emu, line)
    return Response(204)


# --- configurations (automatic device management) -------------------------------------------------------


def _config_id(req: Request) -> str:
    return _device_id(req)


@route("GET", r"/configurations/(?P<id>[^/]+)", Right.REGISTRY_READ, Op.CONFIGURATIONS)
def get_configuration(emu: IoTHubEmulator, req: Request) -> Response:
    config = emu.store.get_configuration(_config_id(req))
    if config is None:
        raise ApiError(404901, f"Configuration {_config_id(req)} not found.")
    return Response(body=config)


@route("GET", r"/configurations", Right.REGISTRY_READ, Op.CONFIGURATIONS)
def list_configurations(emu: IoTHubEmulator, req: Request) -> Response:
    try:
        top = int(req.params.get("top", "-1"))
    except ValueError:
        top = -1
    return Response(body=emu.store.list_configurations(top if top > 0 else -1))


@route("PUT", r"/configurations/(?P<id>[^/]+)", Right.REGISTRY_WRITE, Op.CONFIGURATIONS)
def put_configuration(emu: IoTHubEmulator, req: Request) -> Response:
    config_id = _config_id(req)
    if_match = req.headers.get("if-match")
    with emu.store.write_lock:
        current = emu.store.get_configuration(config_id)
        if _creates(if_match):
            if current is not None:
                raise ApiError(409901, f"Configuration {config_id} already exists.")
            limit = 10 if emu.profile.sku == "F1" else MAX_CONFIGURATIONS
            if emu.store.count_configurations() >= limit:
                raise ApiError(403901, f"This hub already has {limit} configurations, its maximum.")
        elif current is None:
            raise ApiError(404901, f"Configuration {config_id} not found.")
        elif not _unconditional(if_match) and strip_etag(if_match) != current["etag"]:
            raise ApiError(412001, f"The ETag {if_match} of configuration {config_id} does not match.")
        try:
            config = apply_configuration(req.body, current, config_id=config_id, now=iso(emu.now()))
        except LineError as exc:
            raise ApiError(exc.code, exc.message) from None
        emu.store.put_configuration(config)
    return Response(body=config, headers={"ETag": f'"{config["etag"]}"'})


@route("DELETE", r"/configurations/(?P<id>[^/]+)", Right.REGISTRY_WRITE, Op.CONFIGURATIONS)
def delete_configuration(emu: IoTHubEmulator, req: Request) -> Response:
    config_id = _config_id(req)
    if_match = req.headers.get("if-match")
    with emu.store.write_lock:
        current = emu.store.get_configuration(config_id)
        if current is None:
            raise ApiError(404901, f"Configuration {config_id} not found.")
        if not _unconditional(if_match) and strip_etag(if_match) != current["etag"]:
            raise ApiError(412001, f"The ETag {if_match} of configuration {config_id} does not match.")
        emu.store.delete_configuration(config_id)
    return Response(204)


# --- jobs -----------------------------------------------------------------------------------------------


@route("POST", r"/jobs/create", Right.REGISTRY_WRITE, Op.JOBS)
def create_job(emu: IoTHubEmulator, req: Request) -> Response:
    return Response(body=emu.jobs.create_job(req.body))


@route("GET", r"/jobs", Right.REGISTRY_READ, Op.JOBS)
def list_jobs(emu: IoTHubEmulator, req: Request) -> Response:
    return Response(body=emu.jobs.list_jobs())


@route("GET", r"/jobs/(?P<id>[^/]+)", Right.REGISTRY_READ, Op.JOBS)
def get_job(emu: IoTHubEmulator, req: Request) -> Response:
    return Response(body=emu.jobs.get_job(_device_id(req)))


@route("DELETE", r"/jobs/(?P<id>[^/]+)", Right.REGISTRY_WRITE, Op.JOBS)
def cancel_job(emu: IoTHubEmulator, req: Request) -> Response:
    return Response(body=emu.jobs.cancel_job(_device_id(req)))


# --- control plane (only with control_plane=True) -------------------------------------------------------


@route("POST", r"/_emulator/reset", None)
def reset(emu: IoTHubEmulator, req: Request) -> Response:
    emu.store.reset()
    emu.faults.set(FaultConfig())
    emu.jobs.paused = False
    emu.clock_offset = timedelta()
    emu.throttle.reset()
    return Response(204)


@route("GET", r"/_emulator/usage", None)
def usage(emu: IoTHubEmulator, req: Request) -> Response:
    """The hub's profile and the operations it has served (and throttled) per throttle since the last reset."""
    return Response(
        body={
            "profile": emu.profile.describe(),
            "calls": dict(emu.throttle.calls),
            "throttled": dict(emu.throttle.throttled),
        }
    )


@route("POST", r"/_emulator/quotas", None)
def control_quotas(emu: IoTHubEmulator, req: Request) -> Response:
    """``{"refill": true}`` fills every throttle's bucket; ``{"shapingSeconds": s}`` changes the shaping hold."""
    body = req.body or {}
    if "shapingSeconds" in body:
        # The buckets keep their level: only how long a request may be held changes.
        emu.profile = replace(emu.profile, shaping_seconds=float(body["shapingSeconds"]))
        emu.throttle.profile = emu.profile
    if body.get("refill"):
        emu.throttle.refill()
    return Response(204)


@route("POST", r"/_emulator/faults", None)
def set_faults(emu: IoTHubEmulator, req: Request) -> Response:
    try:
        emu.faults.set(emu.faults.config.updated(req.body or {}))
    except (ValueError, TypeError, AttributeError) as exc:
        raise ApiError(400004, f"Bad fault settings: {exc}") from None
    return Response(204)


@route("POST", r"/_emulator/jobs", None)
def control_jobs(emu: IoTHubEmulator, req: Request) -> Response:
    emu.jobs.paused = bool((req.body or {}).get("paused", False))
    emu.jobs.wake()
    return Response(204)


@route("POST", r"/_emulator/clock", None)
def advance_clock(emu: IoTHubEmulator, req: Request) -> Response:
    emu.clock_offset += timedelta(seconds=float((req.body or {}).get("advanceSeconds", 0)))
    return Response(204)


# --- the server -----------------------------------------------------------------------------------------


class _Handler(JsonHandler):
    server: _Server

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.emulator.store.release()  # one thread per client connection: free its SQLite connection

    def __getattr__(self, name: str) -> Any:
        # Every HTTP method reaches dispatch, so an unknown one (TRACE, OPTIONS...) gets the service's JSON error
        # instead of http.server's HTML 501 page.
        if name.startswith("do_"):
            return self.dispatch
        raise AttributeError(name)

    def dispatch(self) -> None:
        tracking = uuid.uuid4().hex
        try:
            response = self._handle(self.server.emulator, self.read_request())
        except ApiError as exc:
            response = Response(exc.status, exc.body(tracking), {"iothub-errorcode": exc.name, **exc.headers})
        except Exception:
            logger.exception("unhandled error in %s %s", self.command, urlsplit(self.path).path)
            internal = ApiError(500001, "Internal error in the emulator.")
            response = Response(500, internal.body(tracking), {"iothub-errorcode": internal.name})
        body = None if self.command == "HEAD" else response.body  # HEAD answers carry no body
        self.send_json(response.status, body, response.headers, tracking)

    @staticmethod
    def _handle(emu: IoTHubEmulator, raw: RawRequest) -> Response:
        path, params, headers = raw.path, raw.params, raw.headers
        candidates = [r for r in _ROUTES if r.pattern.match(path)]
        if not candidates:
            raise ApiError(404001 if path.startswith("/devices") else 400004, f"No such resource: {path}.")
        matched = [r for r in candidates if r.method == raw.method]
        if not matched:
            raise ApiError(405001, f"{raw.method} is not allowed on {path}.")
        found = matched[0]
        if found.right is None:
            if not emu.control_plane:
                raise ApiError(404001, "The control plane is disabled (start the emulator with --control-plane).")
        else:
            version = params.get("api-version")
            if version not in API_VERSIONS:
                given = f"'{version}' is not a supported api-version" if version else "The api-version is missing"
                raise ApiError(400001, f"{given}; use api-version={API_VERSION}.")
            emu.faults.maybe_fail()
            authorize(
                headers.get("authorization"),
                host=headers.get("host", emu.host_name),
                path=path,
                needed=found.right,
                oauth=emu.oauth,
            )
        try:
            body = json.loads(raw.body) if raw.body.strip() else None
        except ValueError:
            raise ApiError(400006, "The request body is not valid JSON.") from None
        if found.op is not None:
            # A bulk call costs one registry operation per device (quotas docs, identity registry throttle).
            cost = len(body) if found.op is Op.REGISTRY and isinstance(body, list) and body else 1
            emu.throttle.charge(found.op, cost)
        return found.handler(emu, Request(raw.method, path, params, headers, body, found.pattern.match(path)))


class _Server(TlsHTTPServer):
    emulator: IoTHubEmulator

    def __init__(self, addr: tuple[str, int], ctx: ssl.SSLContext | None) -> None:
        super().__init__(addr, _Handler, ctx)


class IoTHubEmulator:
    """A local IoT hub: registry and import/export jobs over HTTPS.

    Example::

        emu = IoTHubEmulator(Path(".iothub"), port=0, storage_identity=azurite_connection_string)
        emu.start()
        conn_str = emu.connection_string()          # HostName=127.0.0.1:<port>;SharedAccessKeyName=...
        os.environ["REQUESTS_CA_BUNDLE"] = str(emu.ca_path)
        emu.stop()
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        hub_name: str = "devhub",
        storage_identity: str | None = None,
        faults: FaultConfig | None = None,
        control_plane: bool = False,
        oauth: bool = False,
        tls: bool = True,
        profile: Profile | None = None,
        tls_dir: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.bind_host = host
        self.hub_name = hub_name
        self.control_plane = control_plane
        self.oauth = oauth
        self.clock_offset = timedelta()
        self.faults = Faults(faults or FaultConfig())
        self.profile = profile or Profile()
        self.throttle = Throttle(self.profile)
        self.store = Store(self.data_dir / "registry.sqlite")
        self.registry = Registry(self.store, lambda: iso(self.now()), query_lag=lambda: self.profile.lag)
        self.jobs = JobRunner(
            self.store,
            self.registry,
            StorageAccess(storage_identity),
            self.faults,
            self.now,
            profile=lambda: self.profile,
        )
        # A second hub of one local stack passes the first's ``tls_dir``: one CA (REQUESTS_CA_BUNDLE) trusts both.
        self._tls = ensure_certificates(tls_dir or self.data_dir / "tls") if tls else None
        self._server = _Server((host, port), self._tls.server_context() if self._tls else None)
        self._server.emulator = self
        self.ready = threading.Event()

    def now(self) -> datetime:
        return datetime.now(UTC) + self.clock_offset

    def set_profile(self, profile: Profile) -> None:
        """Change how hard the hub is (tests): throttles start full and uncounted."""
        self.profile = profile
        self.throttle = Throttle(profile)

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def host_name(self) -> str:
        """The ``HostName`` clients use (host:port): the SAS audience of this hub."""
        return f"{self.bind_host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self._tls else 'http'}://{self.host_name}"

    @property
    def ca_path(self) -> Path | None:
        return self._tls.ca_path if self._tls else None

    def connection_string(self, policy: str = "iothubowner") -> str:
        return connection_string(self.host_name, policy)

    def start(self) -> None:
        self.jobs.start()
        self._server.serve_in_background("iothub-http")
        self.ready.set()

    def stop(self) -> None:
        self._server.close()
        self.jobs.close()
        self.store.close()
        self.ready.clear()
