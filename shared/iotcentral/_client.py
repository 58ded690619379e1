"""``IoTCentralClient``: the data-export part of the IoT Central REST API (destinations and exports)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import requests

from ..retry import Credential, RetryPolicy, Transport, Unreachable
from ._auth import ApiTokenCredential, entra_credential
from ._errors import IoTCentralHTTPError, IoTCentralUnavailable, error_class

logger = logging.getLogger(__name__)

# dataExport exists only in preview api-versions; this one adds the `audit` source (the published specs' diff).
API_VERSION = "2022-10-31-preview"
DESTINATIONS = "destinations"
EXPORTS = "exports"


class IoTCentralClient:
    """A client for one IoT Central application's data-export API.

    Example::

        central = IoTCentralClient.from_api_token("https://myapp.azureiotcentral.com", token)
        for destination in central.list(DESTINATIONS): ...
        central.put(EXPORTS, "telemetry-all", {"displayName": ..., "source": "telemetry", ...})

    Resources are plain JSON objects, as the service defines them; ``kind`` is ``DESTINATIONS`` or ``EXPORTS``.

    Args:
        app_url: ``https://<subdomain>.azureiotcentral.com`` (or the emulator's ``https://127.0.0.1:<port>``).
        credential: an ``ApiTokenCredential`` or the Entra credential from ``from_token_credential``.
        timeout: (connect, read) seconds, applied to every request.
        retry: the retry policy (see ``shared/retry.py``).
    """

    def __init__(
        self,
        app_url: str,
        credential: Credential,
        *,
        timeout: tuple[float, float] = (10.0, 60.0),
        retry: RetryPolicy | None = None,
        session: requests.Session | None = None,
        api_version: str = API_VERSION,
    ) -> None:
        if not app_url.startswith("https://"):
            raise ValueError("the IoT Central app URL must be an https:// URL")
        self.app_url = app_url.rstrip("/").removesuffix("/api")
        self._transport = Transport(credential, timeout, retry or RetryPolicy(), session or requests.Session())
        self.api_version = api_version

    @classmethod
    def from_api_token(cls, app_url: str, token: str, **kwargs: Any) -> IoTCentralClient:
        return cls(app_url, ApiTokenCredential(token), **kwargs)

    @classmethod
    def from_token_credential(cls, app_url: str, credential: Any, **kwargs: Any) -> IoTCentralClient:
        """Authenticate with Entra ID (e.g. ``ManagedIdentityCredential``); the identity must be an app user."""
        return cls(app_url, entra_credential(credential), **kwargs)

    # --- resources ----------------------------------------------------------------------------------

    def list(self, kind: str) -> Iterator[dict[str, Any]]:
        """Every destination or export of the app, following ``nextLink``."""
        return self._pages(f"/api/dataExport/{_kind(kind)}")

    def list_related(self, kind: str, item_id: str) -> Iterator[dict[str, Any]]:
        """The exports that use a destination, or the destinations an export sends to."""
        other = EXPORTS if _kind(kind) == DESTINATIONS else DESTINATIONS
        return self._pages(f"{_path(kind, item_id)}/{other}")

    def get(self, kind: str, item_id: str) -> dict[str, Any]:
        """Raises ``IoTCentralNotFound`` when it does not exist."""
        return self._json(self._send("GET", _path(kind, item_id)))

    def find(self, kind: str, item_id: str) -> dict[str, Any] | None:
        """None when it does not exist (an answer, not an error: nothing is logged)."""
        response = self._send("GET", _path(kind, item_id), accept=(404,))
        return None if response.status_code == 404 else self._json(response)

    def put(self, kind: str, item_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create or replace (the service answers 200 for both)."""
        return self._json(self._send("PUT", _path(kind, item_id), body=body))

    def patch(self, kind: str, item_id: str, patch: dict[str, Any], *, if_match: str | None = None) -> dict[str, Any]:
        """Incremental update as a JSON merge patch (``null`` removes a property)."""
        headers = {"If-Match": if_match} if if_match else {}
        return self._json(
            self._send(
                "PATCH", _path(kind, item_id), body=patch, content_type="application/merge-patch+json", headers=headers
            )
        )

    def delete(self, kind: str, item_id: str) -> bool:
        """Delete; False if it did not exist (so a retried or repeated delete is not an error)."""
        return self._send("DELETE", _path(kind, item_id), accept=(404,)).status_code != 404

    # --- transport ----------------------------------------------------------------------------------

    def _pages(self, path: str) -> Iterator[dict[str, Any]]:
        url: str | None = f"{self.app_url}{path}"
        while url is not None:
            page = self._json(self._send("GET", url))
            if not isinstance(page.get("value"), list):
                raise IoTCentralUnavailable(f"IoT Central answered a list without 'value' for {path}")
            yield from page["value"]
            url = page.get("nextLink") or None

    def _json(self, response: requests.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            raise IoTCentralUnavailable(f"IoT Central answered {response.status_code} without JSON") from None
        if not isinstance(body, dict):
            raise IoTCentralUnavailable("IoT Central answered JSON that is not an object")
        return body

    def _send(
        self,
        method: str,
        target: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        accept: tuple[int, ...] = (),
        headers: dict[str, str] | None = None,
    ) -> requests.Response:
        """``target`` is a path under the app, or a full ``nextLink`` (whose own query is kept, api-version added).

        A status in ``accept`` is an answer the caller expects: returned, not raised nor logged.
        """
        url = target if target.startswith("https://") else f"{self.app_url}{target}"
        parts = urlsplit(url)
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        params["api-version"] = self.api_version
        url = parts._replace(query="").geturl()
        label = f"IoT Central {method} {parts.path}"
        try:
            response = self._transport.send(
                method,
                url,
                params=params,
                body=body,
                content_type=content_type,
                headers=headers,
                # PUT, PATCH (a merge patch) and DELETE give the same end state when repeated.
                idempotent=True,
                label=label,
            )
        except Unreachable as exc:
            raise IoTCentralUnavailable(f"IoT Central {urlsplit(self.app_url).netloc}: {exc}") from exc
        if response.status_code < 400 or response.status_code in accept:
            return response
        error = _http_error(response)
        logger.warning("%s failed: %d %s (request %s)", label, error.status, error.code, error.request_id)
        raise error


def _kind(kind: str) -> str:
    if kind not in (DESTINATIONS, EXPORTS):
        raise ValueError(f"kind must be '{DESTINATIONS}' or '{EXPORTS}'")
    return kind


def _path(kind: str, item_id: str) -> str:
    if not item_id:
        raise ValueError("an id must not be empty")
    return f"/api/dataExport/{_kind(kind)}/{quote(item_id, safe='')}"


def _http_error(response: requests.Response) -> IoTCentralHTTPError:
    """Read ``{"error": {"code", "message", "requestId", "time"}}`` and the ``x-ms-error-code`` header."""
    code = response.headers.get("x-ms-error-code") or str(response.status_code)
    message = response.reason or "error"
    request_id = response.headers.get("x-ms-request-id")
    try:
        body = response.json()
    except ValueError:
        body = None
    detail = body.get("error") if isinstance(body, dict) else None
    if isinstance(detail, dict):
        code = str(detail.get("code") or code)
        message = str(detail.get("message") or message)
        request_id = detail.get("requestId") or request_id
    kind = error_class(response.status_code)
    return kind(
        f"IoT Central answered {response.status_code} {code}: {message}",
        status=response.status_code,
        code=code,
        request_id=request_id,
    )
