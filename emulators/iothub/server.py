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
from collections.abc import Callable
from dataclasses import dataclass, field
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
from .model import LineError, device_json, twin_json
from .registry import Registry
from .store import Store

logger = logging.getLogger(__name__)

API_VERSION = "2021-04-12"
_API_VERSION_RE = re.compile(r"^\d{4}-\d{2}-\d{2}(-preview)?$")
MAX_BULK = 100


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
_ROUTES: list[tuple[str, re.Pattern[str], Right | None, Handler]] = []


def route(method: str, pattern: str, right: Right | None) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        _ROUTES.append((method, re.compile(f"^{pattern}$"), right, fn))
        return fn

    return deco


def _device_id(req: Request) -> str:
    assert req.match is not None
    return unquote(req.match.group("id"))


# --- devices --------------------------------------------------------------------------------------------


@route("GET", r"/devices/(?P<id>[^/]+)", Right.REGISTRY_READ)
def get_device(emu: IoTHubEmulator, req: Request) -> Response:
    record = emu.store.get_device(_device_id(req))
    if record is None:
        raise ApiError(404001, f"Device {_device_id(req)} not found.")
    return Response(body=device_json(record))


@route("GET", r"/twins/(?P<id>[^/]+)", Right.REGISTRY_READ)
def get_twin(emu: IoTHubEmulator, req: Request) -> Response:
    record = emu.store.get_device(_device_id(req))
    if record is None:
        raise ApiError(404001, f"Device {_device_id(req)} not found.")
    return Response(body=twin_json(record))


@route("PUT", r"/devices/(?P<id>[^/]+)", Right.REGISTRY_WRITE)
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
    if if_match is None:
        line["importMode"] = "create"  # PUT without If-Match creates; an existing device answers 409001
    elif if_match.strip() == "*" or if_match.strip() == '"*"':
        line["importMode"] = "update"
    else:
        line.update(importMode="updateIfMatchETag", eTag=if_match)
    _apply_one(emu, line)
    record = emu.store.get_device(device_id)
    assert record is not None
    return Response(body=device_json(record))


@route("DELETE", r"/devices/(?P<id>[^/]+)", Right.REGISTRY_WRITE)
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


@route("GET", r"/devices", Right.REGISTRY_READ)
def list_devices(emu: IoTHubEmulator, req: Request) -> Response:
    try:
        top = int(req.params.get("top", "1000"))
    except ValueError:
        top = 1000
    if not 1 <= top <= 1000:
        top = 1000  # "Any value outside the range of 1-1000 is considered to be 1000"
    return Response(body=[device_json(r) for r in emu.store.page_devices(None, top)])


@route("POST", r"/devices", Right.REGISTRY_WRITE)
def bulk(emu: IoTHubEmulator, req: Request) -> Response:
    items = req.body
    if not isinstance(items, list):
        raise ApiError(400006, "The request body must be a JSON array of ExportImportDevice.")
    if len(items) > MAX_BULK:
        raise ApiError(413002, f"Too many devices: at most {MAX_BULK} per bulk call, got {len(items)}.")
    seen: set[tuple[Any, Any]] = set()
    for item in items:
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


@route("POST", r"/devices/query", Right.REGISTRY_READ)
def query_devices(emu: IoTHubEmulator, req: Request) -> Response:
    q = query.parse(req.body.get("query") if isinstance(req.body, dict) else None)
    if q.count_alias:
        total, after = 0, None
        while page := emu.store.page_devices(after, 1000):
            total += sum(1 for r in page if q.predicate(twin_json(r)))
            after = page[-1]["deviceId"]
        return Response(body=[{q.count_alias: total}], headers={"x-ms-item-type": "JSON"})
    try:
        limit = max(1, min(1000, int(req.headers.get("x-ms-max-item-count") or 100)))
    except ValueError:
        limit = 100
    token = req.headers.get("x-ms-continuation")
    after = base64.urlsafe_b64decode(token.encode()).decode() if token else None
    items: list[dict[str, Any]] = []
    more = False
    while len(items) < limit:
        page = emu.store.page_devices(after, limit)
        if not page:
            break
        for r in page:
            twin = twin_json(r)
            after = r["deviceId"]
            if q.predicate(twin):
                items.append(twin)
                if len(items) == limit:
                    break
        more = bool(emu.store.page_devices(after, 1))
        if not more:
            break
    headers = {"x-ms-item-type": "Twin"}
    if more and after is not None:
        headers["x-ms-continuation"] = base64.urlsafe_b64encode(after.encode()).decode()
    return Response(body=items, headers=headers)


@route("GET", r"/statistics/devices", Right.REGISTRY_READ)
def statistics(emu: IoTHubEmulator, req: Request) -> Response:
    return Response(body=emu.store.statistics())


# --- jobs -----------------------------------------------------------------------------------------------


@route("POST", r"/jobs/create", Right.REGISTRY_WRITE)
def create_job(emu: IoTHubEmulator, req: Request) -> Response:
    return Response(body=emu.jobs.create_job(req.body))


@route("GET", r"/jobs", Right.REGISTRY_READ)
def list_jobs(emu: IoTHubEmulator, req: Request) -> Response:
    return Response(body=emu.jobs.list_jobs())


@route("GET", r"/jobs/(?P<id>[^/]+)", Right.REGISTRY_READ)
def get_job(emu: IoTHubEmulator, req: Request) -> Response:
    return Response(body=emu.jobs.get_job(_device_id(req)))


@route("DELETE", r"/jobs/(?P<id>[^/]+)", Right.REGISTRY_WRITE)
def cancel_job(emu: IoTHubEmulator, req: Request) -> Response:
    return Response(body=emu.jobs.cancel_job(_device_id(req)))


# --- control plane (only with control_plane=True) -------------------------------------------------------


@route("POST", r"/_emulator/reset", None)
def reset(emu: IoTHubEmulator, req: Request) -> Response:
    emu.store.reset()
    emu.faults.set(FaultConfig())
    emu.jobs.paused = False
    emu.clock_offset = timedelta()
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
        self.send_json(response.status, response.body, response.headers, tracking)

    @staticmethod
    def _handle(emu: IoTHubEmulator, raw: RawRequest) -> Response:
        path, params, headers = raw.path, raw.params, raw.headers
        candidates = [r for r in _ROUTES if r[1].match(path)]
        if not candidates:
            raise ApiError(404001 if path.startswith("/devices") else 400004, f"No such resource: {path}.")
        matched = [r for r in candidates if r[0] == raw.method]
        if not matched:
            raise ApiError(405001, f"{raw.method} is not allowed on {path}.")
        _, pattern, right, handler = matched[0]
        if right is None:
            if not emu.control_plane:
                raise ApiError(404001, "The control plane is disabled (start the emulator with --control-plane).")
        else:
            version = params.get("api-version")
            if not version or not _API_VERSION_RE.match(version):
                raise ApiError(400004, f"The api-version query parameter is required (use {API_VERSION}).")
            emu.faults.maybe_fail()
            authorize(
                headers.get("authorization"),
                host=headers.get("host", emu.host_name),
                path=path,
                needed=right,
                oauth=emu.oauth,
            )
        try:
            body = json.loads(raw.body) if raw.body.strip() else None
        except ValueError:
            raise ApiError(400006, "The request body is not valid JSON.") from None
        return handler(emu, Request(raw.method, path, params, headers, body, pattern.match(path)))


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
    ) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.bind_host = host
        self.hub_name = hub_name
        self.control_plane = control_plane
        self.oauth = oauth
        self.clock_offset = timedelta()
        self.faults = Faults(faults or FaultConfig())
        self.store = Store(self.data_dir / "registry.sqlite")
        self.registry = Registry(self.store, lambda: iso(self.now()))
        self.jobs = JobRunner(self.store, self.registry, StorageAccess(storage_identity), self.faults, self.now)
        self._tls = ensure_certificates(self.data_dir / "tls") if tls else None
        self._server = _Server((host, port), self._tls.server_context() if self._tls else None)
        self._server.emulator = self
        self.ready = threading.Event()

    def now(self) -> datetime:
        return datetime.now(UTC) + self.clock_offset

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
