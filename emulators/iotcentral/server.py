"""HTTPS front of the IoT Central emulator: the data-export API, auth, paging, faults and a test control plane.

Paths are those of the data-plane API under ``/api/dataExport`` (api-versions 2022-06-30-preview and
2022-10-31-preview). State lives in one JSON file in the data dir, rewritten atomically on every change, so the
app survives restarts. Every error has the service's shape and the ``x-ms-error-code`` header.
"""

from __future__ import annotations

import json
import logging
import os
import re
import ssl
import threading
import uuid
from collections import deque
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from ..iothub.faults import FaultConfig, Faults
from ..serving import JsonHandler
from ..tls import TlsHTTPServer, ensure_certificates
from .auth import api_token, authorize
from .model import ApiError, mask_destination, merge_patch, validate_destination, validate_export

logger = logging.getLogger(__name__)

API_VERSIONS = frozenset({"1.1-preview", "1.2-preview", "2022-06-30-preview", "2022-10-31-preview"})
_FAULT_CODES = {429: "TooManyRequests", 500: "InternalServerError", 503: "ServiceUnavailable"}
_KINDS = ("destinations", "exports")


@dataclass
class Request:
    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    body: Any


class AppState:
    """Destinations and exports of the app, in insertion order, persisted to ``path`` after every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.RLock()
        self.data: dict[str, dict[str, dict[str, Any]]] = {"destinations": {}, "exports": {}}
        if path.exists():
            self.data = json.loads(path.read_text())

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)

    def reset(self) -> None:
        with self.lock:
            self.data = {"destinations": {}, "exports": {}}
            self.save()

    def users_of(self, destination_id: str) -> list[str]:
        return [
            eid
            for eid, e in self.data["exports"].items()
            if any(r["id"] == destination_id for r in e.get("destinations", []))
        ]


class IoTCentralEmulator:
    """A local IoT Central application's data-export API over HTTPS.

    Example::

        emu = IoTCentralEmulator(Path(".iotcentral"), port=0)
        emu.start()
        client = IoTCentralClient(emu.url, ApiTokenCredential(emu.api_token()))
        emu.stop()
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        page_size: int = 25,
        faults: FaultConfig | None = None,
        control_plane: bool = False,
        oauth: bool = False,
        tls_dir: Path | None = None,
    ) -> None:
        """``tls_dir``: where the CA and server certificate live (default ``<data_dir>/tls``); give the IoT Hub
        emulator's so one CA bundle (REQUESTS_CA_BUNDLE) trusts both."""
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.bind_host = host
        self.page_size = self.default_page_size = page_size
        self.control_plane = control_plane
        self.oauth = oauth
        self.faults = Faults(faults or FaultConfig())
        self.state = AppState(self.data_dir / "dataexport.json")
        self.requests: deque[dict[str, Any]] = deque(maxlen=2000)  # for tests, through the control plane
        self._tls = ensure_certificates(tls_dir or self.data_dir / "tls")
        self._server = _Server((host, port), self._tls.server_context())
        self._server.emulator = self

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def url(self) -> str:
        """The app URL clients are configured with (the service's ``https://<subdomain>.azureiotcentral.com``)."""
        return f"https://{self.bind_host}:{self.port}"

    @property
    def ca_path(self) -> Path:
        return self._tls.ca_path

    @staticmethod
    def api_token(name: str = "operator-token") -> str:
        return api_token(name)

    def start(self) -> None:
        self._server.serve_in_background("iotcentral-http")

    def stop(self) -> None:
        self._server.close()

    # --- the API ------------------------------------------------------------------------------------------

    def handle(self, req: Request) -> tuple[int, Any]:
        if req.path.startswith("/_emulator/"):
            return self._control(req)
        match = re.fullmatch(
            r"/api/dataExport/(destinations|exports)(?:/([^/]+)(?:/(exports|destinations))?)?", req.path
        )
        if match is None:
            raise ApiError(404, "NotFound", f"No such resource: {req.path}.")
        version = req.params.get("api-version")
        if not version:
            raise ApiError(400, "MissingApiVersion", "The api-version query parameter is required.")
        if version not in API_VERSIONS:
            raise ApiError(
                404, "NotFound", f"dataExport is not available in api-version {version}; use 2022-10-31-preview."
            )
        drawn = self.faults.draw()
        if drawn is not None:
            status, retry_after = drawn
            headers = {"Retry-After": str(retry_after)} if status in (429, 503) else {}
            raise ApiError(status, _FAULT_CODES[status], "Injected by the emulator.", headers)
        authorize(req.headers.get("authorization"), oauth=self.oauth)
        kind, raw_id, related = match.group(1), match.group(2), match.group(3)
        with self.state.lock:
            if raw_id is None:
                if req.method != "GET":
                    raise ApiError(405, "MethodNotAllowed", f"{req.method} is not allowed on {req.path}.")
                return 200, self._page(kind, list(self.state.data[kind].items()), req)
            item_id = unquote(raw_id)
            if related is not None:
                if req.method != "GET":
                    raise ApiError(405, "MethodNotAllowed", f"{req.method} is not allowed on {req.path}.")
                return 200, self._page(related, self._related(kind, item_id), req)
            return self._item(kind, item_id, req, version)

    def _item(self, kind: str, item_id: str, req: Request, version: str) -> tuple[int, Any]:
        items = self.state.data[kind]
        current = items.get(item_id)
        if req.method == "GET":
            return 200, self._show(kind, item_id, self._existing(kind, item_id, current))
        if req.method == "DELETE":
            self._existing(kind, item_id, current)
            users = self.state.users_of(item_id) if kind == "destinations" else []
            if users:
                raise ApiError(
                    409,
                    "DestinationInUse",
                    f"Destination '{item_id}' is used by export(s) {', '.join(users)}; remove it from them first.",
                )
            del items[item_id]
            self.state.save()
            return 204, None
        if req.method == "PUT":
            body = req.body
        elif req.method == "PATCH":
            if not isinstance(req.body, dict):
                raise ApiError(400, "InvalidBody", "The patch body must be a JSON object.")
            body = merge_patch(self._existing(kind, item_id, current), req.body)
        else:
            raise ApiError(405, "MethodNotAllowed", f"{req.method} is not allowed on {req.path}.")
        immutable = "type" if kind == "destinations" else "source"
        if current is not None and isinstance(body, dict) and body.get(immutable) != current[immutable]:
            raise ApiError(
                400,
                "ImmutableProperty",
                f"'{immutable}' cannot change ({current[immutable]} -> {body.get(immutable)}); "
                "delete it and create it again.",
            )
        if kind == "destinations":
            doc = validate_destination(body)
        else:
            doc = validate_export(body, version, set(self.state.data["destinations"]))
        items[item_id] = doc
        self.state.save()
        return 200, self._show(kind, item_id, doc)

    def _existing(self, kind: str, item_id: str, current: dict[str, Any] | None) -> dict[str, Any]:
        if current is None:
            raise ApiError(404, "NotFound", f"The {kind[:-1]} '{item_id}' does not exist.")
        return current

    def _related(self, kind: str, item_id: str) -> list[tuple[str, dict[str, Any]]]:
        current = self._existing(kind, item_id, self.state.data[kind].get(item_id))
        if kind == "destinations":
            return [(e, self.state.data["exports"][e]) for e in self.state.users_of(item_id)]
        dests = self.state.data["destinations"]
        return [(r["id"], dests[r["id"]]) for r in current["destinations"] if r["id"] in dests]

    def _show(self, kind: str, item_id: str, doc: dict[str, Any]) -> dict[str, Any]:
        """The read form: id first, secrets masked, a status derived from the configuration."""
        if kind == "destinations":
            used = any(self.state.data["exports"][e]["enabled"] for e in self.state.users_of(item_id))
            return {"id": item_id, **mask_destination(doc), "status": "healthy" if used else "waiting"}
        return {"id": item_id, **doc, "status": "healthy" if doc["enabled"] else "notStarted"}

    def _page(self, kind: str, items: list[tuple[str, dict[str, Any]]], req: Request) -> dict[str, Any]:
        try:
            skip = int(req.params.get("$skiptoken", "0"))
        except ValueError:
            raise ApiError(400, "InvalidSkipToken", "The $skiptoken is not one this server issued.") from None
        window = items[skip : skip + self.page_size]
        page: dict[str, Any] = {"value": [self._show(kind, i, d) for i, d in window]}
        if skip + self.page_size < len(items):
            # Like the service's, the link carries no api-version: clients add theirs again (as the CLI does).
            host = req.headers.get("host", f"{self.bind_host}:{self.port}")
            page["nextLink"] = f"https://{host}{quote(req.path)}?$skiptoken={skip + self.page_size}"
        return page

    # --- control plane (tests only) -----------------------------------------------------------------------

    def _control(self, req: Request) -> tuple[int, Any]:
        if not self.control_plane:
            raise ApiError(404, "NotFound", "The control plane is disabled (start with --control-plane).")
        if req.path == "/_emulator/reset" and req.method == "POST":
            self.state.reset()
            self.faults.set(FaultConfig())
            self.page_size = self.default_page_size
            self.requests.clear()
            return 204, None
        if req.path == "/_emulator/faults" and req.method == "POST":
            try:
                self.faults.set(self.faults.config.updated(req.body or {}))
            except (ValueError, TypeError, AttributeError) as exc:
                raise ApiError(400, "InvalidBody", f"Bad fault settings: {exc}") from None
            return 204, None
        if req.path == "/_emulator/requests" and req.method == "GET":
            return 200, list(self.requests)
        if req.path == "/_emulator/pageSize" and req.method == "POST":
            self.page_size = int((req.body or {}).get("pageSize", 25))
            return 204, None
        raise ApiError(404, "NotFound", f"No such control: {req.method} {req.path}.")


def error_body(exc: ApiError, request_id: str) -> dict[str, Any]:
    return {
        "error": {
            "code": exc.code,
            "message": exc.message,
            "requestId": request_id,
            "time": formatdate(usegmt=True),
        }
    }


class _Handler(JsonHandler):
    server: _Server

    def dispatch(self) -> None:
        emu = self.server.emulator
        request_id = str(uuid.uuid4())
        raw = self.read_request()
        req = Request(raw.method, raw.path, raw.params, raw.headers, None)
        headers: dict[str, str] = {}
        try:
            try:
                req.body = json.loads(raw.body) if raw.body.strip() else None
            except ValueError:
                raise ApiError(400, "InvalidBody", "The request body is not valid JSON.") from None
            status, body = emu.handle(req)
        except ApiError as exc:
            status, body, headers = (
                exc.status,
                error_body(exc, request_id),
                {"x-ms-error-code": exc.code, **exc.headers},
            )
        except Exception:
            logger.exception("unhandled error in %s %s", raw.method, raw.path)
            internal = ApiError(500, "InternalServerError", "Internal error in the emulator.")
            status, body, headers = 500, error_body(internal, request_id), {"x-ms-error-code": internal.code}
        if not req.path.startswith("/_emulator/"):
            emu.requests.append(
                {"method": req.method, "path": req.path, "query": req.params, "body": req.body}
                | {"status": status, "response": body}
            )
        self.send_json(status, body, headers, request_id)


class _Server(TlsHTTPServer):
    emulator: IoTCentralEmulator

    def __init__(self, addr: tuple[str, int], ctx: ssl.SSLContext | None) -> None:
        super().__init__(addr, _Handler, ctx)
