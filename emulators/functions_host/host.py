"""A local Functions host for development and tests (the Core Tools cannot be installed offline).

It reads the app's own metadata (``app.get_functions()``) and calls the user functions with the real
``azure.functions`` input types, as the Python worker does:

- HTTP triggers under ``/api/<route>``; ``function`` and ``admin`` auth levels need a key (``x-functions-key``
  header or ``?code=``); ``POST /admin/functions/<name>`` (master key) fires any non-HTTP function now.
- Timer triggers on their NCRONTAB (six-field) schedules, ``%SETTING%`` resolved, with the schedule monitor
  (``timers``: a missed occurrence fires once, past due, after a restart).
- Blob triggers from the source their binding names (``blobs``): polling with receipts, or Event Grid events
  posted to the blob extension's webhook ``POST /runtime/webhooks/blobs?functionName=Host.Functions.<name>&code=``
  (the ``blobs_extension`` system key), with the subscription validation handshake; five failures and the blob goes
  to the ``webjobs-blobtrigger-poison`` queue on the trigger's storage account.

Requests are refused as the real host refuses them: a method no function takes on a route (TRACE, FOO, HEAD on
a GET route, GET on a POST route) is 404, not 405; a bad Content-Length is 400 and a body over Azure's 100 MB limit
413, both without reading the body; the admin endpoint answers 202 at once for any non-HTTP function (a blob
trigger takes ``{"input": "<container>/<blob>"}``) and the function runs in the background. Differences on
purpose: errors are JSON ``{"error": {"code", "message"}}`` (PascalCase codes, as the app's; the real host answers
401/404 with an empty body); keys are fixed development keys unless given.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import azure.functions as func

from .blobs import Binding, BlobTrigger
from .timers import Timer

logger = logging.getLogger("functions_host")

# Well-known development keys of this runner (never used outside it), like Azurite's account key.
FUNCTION_KEY = "local-dev-function-key-0000000000000000000000"
MASTER_KEY = "local-dev-master-key-00000000000000000000000000"
BLOBS_EXTENSION_KEY = "local-dev-blobs-extension-key-000000000000000"  # the system key Event Grid posts with
# Azure's limit on an HTTP request to a function app; a larger body is refused before it is read.
MAX_REQUEST_BYTES = 100 * 1024 * 1024
TOO_LARGE = "the request body is over Azure's 100 MB limit for HTTP requests; upload large files to storage instead"
READ_TIMEOUT_SECONDS = 60
WEBHOOK = "/runtime/webhooks/blobs"
_SETTING = re.compile(r"%([^%]+)%")


def load_settings(path: str | None) -> dict[str, str]:
    """``Values`` of a ``local.settings.json``; empty when there is none."""
    if not path or not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    return {k: str(v) for k, v in (doc.get("Values") or {}).items()}


def resolve(text: str) -> str:
    """``%NAME%`` -> the app setting NAME, as the host resolves binding expressions."""

    def setting(m: re.Match[str]) -> str:
        value = os.environ.get(m.group(1))
        if value is None:
            raise ValueError(f"app setting {m.group(1)} is not set")
        return value

    return _SETTING.sub(setting, text)


class FunctionsHost:
    def __init__(
        self,
        *,
        app_module: str = "function_app",
        host: str = "127.0.0.1",
        port: int = 7071,
        function_key: str = FUNCTION_KEY,
        master_key: str = MASTER_KEY,
        blob_poll_seconds: float = 2.0,
        host_id: str = "localhost",
        timers: bool = True,
    ) -> None:
        self.function_key, self.master_key = function_key, master_key
        self.blob_poll_seconds = blob_poll_seconds
        self.host_id = host_id
        self.run_timers = timers
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pool = ThreadPoolExecutor(4, thread_name_prefix="blob-trigger")  # host.json maxDegreeOfParallelism
        app = importlib.import_module(app_module).app
        self.http: list[tuple[re.Pattern[str], set[str], str, Binding]] = []
        self.timers: dict[str, Timer] = {}
        self.blobs: dict[str, BlobTrigger] = {}
        self.functions: dict[str, Binding] = {}
        for fn in app.get_functions():
            name = fn.get_function_name()
            raw = [json.loads(b) for b in fn.get_raw_bindings()]
            trigger = next(b for b in raw if b["type"].endswith("Trigger"))
            binding = Binding(name, trigger, fn.get_user_function())
            self.functions[name] = binding
            if trigger["type"] == "httpTrigger":
                pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(trigger.get("route") or name))
                methods = {m.upper() for m in trigger.get("methods") or ["GET", "POST"]}
                self.http.append((re.compile(f"^{pattern}$"), methods, str(trigger["authLevel"]).lower(), binding))
            elif trigger["type"] == "timerTrigger":
                self.timers[name] = Timer(binding, resolve(trigger["schedule"]), host_id)
            elif trigger["type"] == "blobTrigger":
                self.blobs[name] = BlobTrigger(binding, host_id=host_id, pool=self._pool, stop=self._stop)
            else:
                raise ValueError(f"{name}: trigger {trigger['type']} is not supported by the local runner")
        self.server = _Server((host, port), self._handler())
        self.server.daemon_threads = True

    # --- lifecycle --------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FunctionsHost:
        self._spawn(self.server.serve_forever, "http")
        if self.run_timers:
            for timer in self.timers.values():
                self._spawn(lambda t=timer: t.run_forever(self._stop), f"timer-{timer.binding.function}")  # type: ignore[misc]
        for trigger in self.blobs.values():
            trigger.prepare()
            if not trigger.event_grid:  # an Event Grid trigger waits for deliveries at the webhook instead
                self._spawn(
                    lambda t=trigger: t.scan_forever(self.blob_poll_seconds),  # type: ignore[misc]
                    f"blob-{trigger.binding.function}",
                )
        return self

    def stop(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def describe(self) -> Iterable[str]:
        for _, methods, auth, binding in self.http:
            route = binding.trigger.get("route") or binding.function
            yield f"{binding.function}: [{','.join(sorted(methods))}] {self.url}/api/{route} ({auth})"
        for name, timer in self.timers.items():
            yield f"{name}: timerTrigger '{timer.schedule}'"
        for name, trigger in self.blobs.items():
            how = f"Event Grid at {self.url}{WEBHOOK}" if trigger.event_grid else "polling"
            yield f"{name}: blobTrigger {trigger.binding.trigger['path']} ({how})"

    def route(self, method: str, route: str) -> tuple[re.Match[str], str, Binding] | None:
        """The HTTP function taking ``method`` on ``route`` (under /api/): its match, auth level and binding."""
        for pattern, methods, auth, binding in self.http:
            match = pattern.match(route)
            if match and method in methods:
                return match, auth, binding
        return None

    # --- invoking -------------------------------------------------------------------------------------

    def invoke(self, name: str, blob_input: str | None = None) -> None:
        """Run a non-HTTP function now, in the background, as the admin endpoint does: a timer with the schedule
        status the host would pass, a blob trigger on ``blob_input`` (``<container>/<blob>``).

        Raises:
            KeyError: no such timer or blob trigger.
            ValueError: a blob trigger without an input in its container.
        """
        timer = self.timers.get(name)
        if timer is not None:
            self._spawn(lambda: timer.run_once(past_due=False), f"admin-{name}")
            return
        trigger = self.blobs[name]
        container, _, blob = str(blob_input or "").partition("/")
        if container != trigger.container or not blob:
            raise ValueError(f"give the blob as {trigger.container}/<name>")
        trigger.deliver(blob, "")

    def event_grid(self, function: str, events: list[dict[str, Any]]) -> dict[str, Any] | None:
        """Take a batch of Event Grid events for a blob trigger, as the blob extension's webhook does: answer the
        subscription validation handshake, and run the function for each BlobCreated event in its path.

        Raises:
            KeyError: no Event Grid blob trigger of that name.
        """
        trigger = self.blobs[function]
        if not trigger.event_grid:
            raise KeyError(function)
        for event in events:
            kind = event.get("eventType")
            data = event.get("data") or {}
            if kind == "Microsoft.EventGrid.SubscriptionValidationEvent":
                logger.info("Event Grid subscription validated for %s", function)
                return {"validationResponse": data.get("validationCode")}
            if kind == "Microsoft.Storage.BlobCreated" and (name := trigger.accepts(str(data.get("url", "")))):
                trigger.deliver(name, str(data.get("eTag", "")))
        return None

    # --- HTTP -----------------------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        host = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # A client that stops sending mid-request must not hold a thread forever.
            timeout = READ_TIMEOUT_SECONDS

            def log_message(self, format: str, *args: Any) -> None:
                # The query string may carry ?code=<key>: log the path only.
                # A request line too bad to parse leaves no path.
                logger.debug("%s %s", self.command, urlsplit(getattr(self, "path", "")).path)

            def __getattr__(self, name: str) -> Any:
                # Every method, known or not (TRACE, FOO), reaches the router, which answers a method no function
                # takes as the real host does (404), instead of http.server's HTML 501 page.
                if name.startswith("do_"):
                    return self._dispatch
                raise AttributeError(name)

            def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
                # http.server's own refusals (a bad request line, headers too large) as JSON, never its HTML page.
                self.close_connection = True
                self._error(code, _code_name(code), message or HTTPStatus(code).phrase)

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                headers = {"Content-Type": "application/json", **(headers or {})}
                for k, v in headers.items():
                    self.send_header(k, v)
                if self.close_connection:  # a refused request's body is left unread: the connection cannot go on
                    self.send_header("Connection", "close")
                if self.command == "HEAD":  # a HEAD reply has headers only
                    body = b""
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _error(self, status: int, code: str, message: str) -> None:
                self._send(status, json.dumps({"error": {"code": code, "message": message}}).encode())

            def _body_length(self) -> int | None:
                """The declared body size, or None once a refusal is sent (a bad or negative Content-Length, or a
                body over Azure's 100 MB limit: refused before reading it)."""
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    return -1
                raw = (self.headers.get("Content-Length") or "0").strip()
                if not (raw.isascii() and raw.isdigit()):  # isdigit alone takes '²', and int() refuses it
                    self.close_connection = True
                    self._error(400, "InvalidContentLength", f"Content-Length '{raw[:40]}' is not a byte count")
                    return None
                # Compared as text first: int() refuses over 4300 digits.
                if len(raw.lstrip("0")) > 12 or int(raw) > MAX_REQUEST_BYTES:
                    self.close_connection = True
                    self._error(413, "BodyTooLarge", TOO_LARGE)
                    return None
                return int(raw)

            def _read_body(self, length: int) -> bytes | None:
                """The body (``length`` -1: chunked), or None once a refusal is sent."""
                try:
                    return self._read_chunked() if length < 0 else self.rfile.read(length)
                except _Refused as exc:
                    self.close_connection = True
                    self._error(exc.status, exc.code, exc.message)
                except TimeoutError:
                    self.close_connection = True
                    self._error(408, "RequestTimeout", f"the body did not arrive within {READ_TIMEOUT_SECONDS} s")
                return None

            def _read_chunked(self) -> bytes:
                chunks: list[bytes] = []
                size = 0
                while True:
                    line = self.rfile.readline(1024).split(b";", 1)[0].strip()
                    try:
                        n = int(line, 16)
                    except ValueError:
                        raise _Refused(400, "InvalidChunk", "the chunked body is malformed") from None
                    if n < 0:
                        raise _Refused(400, "InvalidChunk", "the chunked body is malformed")
                    size += n
                    if size > MAX_REQUEST_BYTES:
                        raise _Refused(413, "BodyTooLarge", TOO_LARGE)
                    if n == 0:
                        while self.rfile.readline(8192).strip():  # trailers, up to the blank line
                            pass
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(n))
                    self.rfile.readline(8)  # the CRLF after the chunk

            def _dispatch(self) -> None:
                parts = urlsplit(self.path)
                query = dict(parse_qsl(parts.query))
                length = self._body_length()
                if length is None:
                    return
                # Until the body is read, a refusal leaves it on the wire: close the connection after it.
                self.close_connection = length != 0
                key = self.headers.get("x-functions-key") or query.get("code")
                if parts.path == WEBHOOK and self.command == "POST":
                    body = self._read_body(length)
                    if body is not None:
                        self.close_connection = False
                        self._webhook(query.get("functionName", ""), key, body)
                    return
                if parts.path.startswith("/admin/functions/"):
                    body = self._read_body(length)
                    if body is not None:
                        self.close_connection = False
                        self._admin(parts.path.removeprefix("/admin/functions/"), key, body)
                    return
                route = parts.path.removeprefix("/api/").rstrip("/") if parts.path.startswith("/api/") else None
                # As the real host: a route no function takes with this method (or at all) is 404, never 405.
                found = host.route(self.command, route) if route is not None else None
                if found is None:
                    self._error(404, "NotFound", f"no function takes {self.command} {parts.path}")
                    return
                match, auth, binding = found
                if auth != "anonymous":
                    keys = (host.master_key,) if auth == "admin" else (host.function_key, host.master_key)
                    if not key:
                        self._error(401, "MissingFunctionKey", "a function key is required: x-functions-key or ?code=")
                        return
                    if key not in keys:
                        self._error(401, "InvalidFunctionKey", "the function key is not valid for this function")
                        return
                body = self._read_body(length)
                if body is None:
                    return
                self.close_connection = False
                request = func.HttpRequest(
                    self.command,
                    f"{host.url}{parts.path}",
                    headers=dict(self.headers.items()),
                    params={k: v for k, v in query.items() if k != "code"},
                    # As ASP.NET Core routing, which the real host uses: route values arrive percent-decoded
                    # (a device id with % or ? in it is sent encoded).
                    route_params={k: unquote(v) for k, v in match.groupdict().items()},
                    body=body,
                )
                try:
                    response = binding.call(**{binding.trigger["name"]: request})
                except Exception:
                    logger.exception("Executed 'Functions.%s' (Failed)", binding.function)
                    self._error(500, "InternalError", "the function failed; see the host log")
                    return
                headers = dict(response.headers.items())
                headers["Content-Type"] = response.mimetype or headers.get("Content-Type", "text/plain")
                self._send(response.status_code, response.get_body(), headers)

            def _webhook(self, function_name: str, key: str | None, body: bytes) -> None:
                if not key:
                    self._error(401, "MissingSystemKey", "the blobs_extension system key is required: ?code=")
                    return
                if key not in (BLOBS_EXTENSION_KEY, host.master_key):
                    self._error(401, "InvalidSystemKey", "the key given is not the blobs_extension system key")
                    return
                try:
                    events = json.loads(body)
                    if not isinstance(events, list):
                        raise ValueError("not a list")
                    answer = host.event_grid(function_name.removeprefix("Host.Functions."), events)
                except KeyError:
                    self._error(404, "NotFound", f"no Event Grid blob trigger named {function_name}")
                    return
                except ValueError:
                    self._error(400, "InvalidEvents", "the body must be a JSON array of Event Grid events")
                    return
                if answer is not None:
                    self._send(200, json.dumps(answer).encode())
                else:
                    self._send(202, b"")

            def _admin(self, name: str, key: str | None, body: bytes) -> None:
                # As Azure: 202 at once for any non-HTTP function, which runs in the background (a caller waits on
                # what it does, never on this call). A blob trigger takes {"input": "<container>/<blob>"}.
                if self.command != "POST":
                    self._error(404, "NotFound", "POST /admin/functions/<name> fires a function")
                elif not key:
                    self._error(401, "MissingMasterKey", "the master key is required: x-functions-key or ?code=")
                elif key != host.master_key:
                    self._error(401, "InvalidMasterKey", "the key given is not the master key")
                elif name not in host.timers and name not in host.blobs:
                    self._error(404, "NotFound", f"no timer or blob trigger function named {name}")
                else:
                    try:
                        host.invoke(name, json.loads(body or b"{}").get("input"))
                    except (ValueError, AttributeError):
                        self._error(400, "InvalidInput", 'the body must be {"input": "<container>/<blob>"}')
                        return
                    self._send(202, json.dumps({"function": name, "status": "accepted"}).encode())

        return Handler


class _Server(ThreadingHTTPServer):
    # A client that goes away before its reply is written (a closed script, a Ctrl-C'd curl) is the client's
    # business, not a host fault: one line, where socketserver would print a traceback.
    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)):
            why = type(exc).__name__
            logger.info("the client %s went away before its reply was written (%s)", client_address[0], why)
            return
        super().handle_error(request, client_address)


class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _code_name(status: int) -> str:
    """A status as a PascalCase error code, as the app names its own (414 -> UriTooLong)."""
    return "".join(word.capitalize() for word in HTTPStatus(status).phrase.replace("-", " ").split())


@dataclass
class StopSignal:
    """SIGTERM (and Ctrl-C) turned into an event, installed before the host starts serving: a stop that arrives
    while it starts up is not lost (nor does it kill the process without a clean shutdown)."""

    event: threading.Event = field(default_factory=threading.Event)
    received: list[str] = field(default_factory=list)

    def install(self) -> StopSignal:
        def on_sigterm(signum: int, _frame: object) -> None:
            self.received.append(signal.Signals(signum).name)
            self.event.set()

        signal.signal(signal.SIGTERM, on_sigterm)
        return self


def wait_forever(host: FunctionsHost, stop: StopSignal | None = None) -> None:
    """Serve until Ctrl-C (SIGINT) or SIGTERM, then stop cleanly. SIGTERM is what ``HostProcess.stop`` sends: a
    shell that ignores SIGINT (nohup, some CI runners) passes that ignoring on to its children, and Python then
    never turns SIGINT into KeyboardInterrupt."""
    stop = stop or StopSignal().install()
    try:
        stop.event.wait()
    except KeyboardInterrupt:
        stop.received.append("SIGINT")
    logger.info("stopping (%s)", stop.received[0] if stop.received else "unknown")
    host.stop()
    logger.info("stopped")
