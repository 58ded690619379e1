"""What the emulators share to serve: their HTTP request handling, and serving until Ctrl-C or SIGTERM."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

logger = logging.getLogger("emulators.http")


def wait_until_stopped() -> None:
    """Block until Ctrl-C (KeyboardInterrupt) or SIGTERM; the caller then stops its servers."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()


@dataclass(slots=True)
class RawRequest:
    """An HTTP request as the emulators see it: path without trailing slash, last value per query key, headers
    lower-cased, and the body unparsed (each emulator answers bad JSON with its own service's error)."""

    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    body: bytes


class JsonHandler(BaseHTTPRequestHandler):
    """The emulators' HTTP plumbing: every method goes to ``dispatch``; reading a request and writing a JSON reply
    are here, the API is in each emulator."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self.dispatch()

    do_PUT = do_PATCH = do_DELETE = do_POST = do_GET

    def dispatch(self) -> None:
        raise NotImplementedError

    def read_request(self) -> RawRequest:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        return RawRequest(
            self.command,
            parts.path.rstrip("/") or "/",
            {k: v[-1] for k, v in parse_qs(parts.query).items()},
            {k.lower(): v for k, v in self.headers.items()},
            self.rfile.read(length) if length else b"",
        )

    def send_json(self, status: int, body: Any, headers: dict[str, str], request_id: str) -> None:
        payload = b"" if body is None else json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("x-ms-request-id", request_id)
            for k, v in headers.items():
                self.send_header(k, v)
            if payload:
                self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if payload:
                self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.close_connection = True
