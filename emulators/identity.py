"""A local managed identity endpoint, as App Service and Azure Functions give an app (``IDENTITY_ENDPOINT`` and
``IDENTITY_HEADER``), minting tokens that Azurite's ``--oauth basic`` accepts: so that the app's identity-based
storage (``DEVICE_STORAGE__blobServiceUri`` with ``ManagedIdentityCredential``/``DefaultAzureCredential``, as in
production) runs locally, unchanged, with no network beyond loopback.

The protocol (learn.microsoft.com, "How to use managed identities for App Service and Azure Functions", REST
endpoint reference): ``GET {IDENTITY_ENDPOINT}?resource=<resource>&api-version=2019-08-01[&client_id=...]`` with the
header ``X-IDENTITY-HEADER: {IDENTITY_HEADER}``; a 200 answers ``access_token``, ``expires_on`` (epoch seconds),
``resource`` and ``token_type``. A request without the header is refused (400), as the real endpoint does.

The tokens are unsigned JWTs: Azurite's basic OAuth mode checks a bearer token's audience, issuer and lifetime, not
its signature (Azurite README, "OAuth authentication": "Azurite will do basic authentication, like validating
incoming bearer token, checking issuer, audience, expiry. But Azurite will NOT check token signature or
permission"). They are worthless anywhere else.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

TENANT = "00000000-0000-0000-0000-000000000001"
OBJECT_ID = "11111111-1111-1111-1111-111111111111"  # the identity's object id (a user delegation SAS names it)
LIFETIME = 3600


def _b64(doc: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")


def mint_token(resource: str, *, lifetime: int = LIFETIME, now: float | None = None) -> tuple[str, int]:
    """An unsigned Entra-shaped access token for ``resource`` (a scope's ``/.default`` is dropped), and its expiry."""
    issued = int(now if now is not None else time.time())
    expires = issued + lifetime
    claims = {
        "aud": resource.removesuffix("/.default"),
        "iss": f"https://sts.windows.net/{TENANT}/",
        "iat": issued - 300,
        "nbf": issued - 300,
        "exp": expires,
        "oid": OBJECT_ID,
        "tid": TENANT,
        "sub": OBJECT_ID,
    }
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}.c2ln", expires


class IdentityEndpoint:
    """The endpoint on a free loopback port; ``environment`` is what to put in the app's environment."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.header = secrets.token_hex(16)
        self.requests = 0
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                resource = (query.get("resource") or [""])[0]
                if self.headers.get("X-IDENTITY-HEADER") != endpoint.header or not resource:
                    why = "X-IDENTITY-HEADER or resource is missing or wrong"
                    self._answer(400, {"error": "invalid_request", "error_description": why})
                    return
                endpoint.requests += 1
                token, expires = mint_token(resource)
                self._answer(
                    200,
                    {
                        "access_token": token,
                        "expires_on": str(expires),
                        "resource": resource,
                        "token_type": "Bearer",
                        "client_id": (query.get("client_id") or [OBJECT_ID])[0],
                    },
                )

            def _answer(self, status: int, doc: dict[str, Any]) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer((host, 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://{host}:{self._server.server_address[1]}/msi/token"
        self._thread = threading.Thread(target=self._server.serve_forever, name="identity-endpoint", daemon=True)

    @property
    def environment(self) -> dict[str, str]:
        return {"IDENTITY_ENDPOINT": self.url, "IDENTITY_HEADER": self.header}

    def start(self) -> IdentityEndpoint:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> IdentityEndpoint:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
