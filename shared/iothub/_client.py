"""``IoTHubClient``: the IoT Hub service REST API calls this app needs (jobs, statistics, bulk registry)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import requests

from ..retry import Credential, RetryPolicy, Transport, Unreachable, parse_retry_after
from ._auth import EntraCredential, SasCredential, parse_connection_string
from ._errors import (
    IoTHubAuthError,
    IoTHubError,
    IoTHubHTTPError,
    IoTHubNotFound,
    IoTHubPreconditionFailed,
    IoTHubServerError,
    IoTHubThrottled,
    IoTHubUnavailable,
    JobQuotaExceeded,
    error_name,
)
from ._models import Job, RegistryStatistics

logger = logging.getLogger(__name__)

API_VERSION = "2021-04-12"
CONFIGURATIONS_BLOB = "configurations.txt"  # the service's default name for a job's configurations blob


class IoTHubClient:
    """A client for one hub's service API.

    Example::

        hub = IoTHubClient.from_connection_string(os.environ["IOTHUB_CONNECTION_STRING"])
        job = hub.create_import_job(input_sas_url, output_sas_url)
        while not hub.get_job(job.job_id).status.is_terminal: ...

    Args:
        endpoint: ``https://<hub>.azure-devices.net`` (or the emulator's ``https://127.0.0.1:<port>``).
        credential: a ``SasCredential`` or ``EntraCredential``.
        timeout: (connect, read) seconds, applied to every request.
        retry: the retry policy (see ``shared/retry.py``).
        session: a ``requests.Session`` to reuse (connection pooling); one is made if omitted.
    """

    def __init__(
        self,
        endpoint: str,
        credential: Credential,
        *,
        timeout: tuple[float, float] = (10.0, 60.0),
        retry: RetryPolicy | None = None,
        session: requests.Session | None = None,
        api_version: str = API_VERSION,
    ) -> None:
        if not endpoint.startswith("https://"):
            raise ValueError("the IoT Hub endpoint must be an https:// URL")
        self.endpoint = endpoint.rstrip("/")
        self._transport = Transport(credential, timeout, retry or RetryPolicy(), session or requests.Session())
        self._api_version = api_version

    @classmethod
    def from_connection_string(cls, conn_str: str, **kwargs: Any) -> IoTHubClient:
        """Build a client from ``HostName=...;SharedAccessKeyName=...;SharedAccessKey=...``.

        Raises:
            ValueError: the connection string is incomplete (the message names the missing part).
        """
        parts = parse_connection_string(conn_str)
        host = parts["HostName"]
        return cls(
            f"https://{host}", SasCredential(host, parts["SharedAccessKeyName"], parts["SharedAccessKey"]), **kwargs
        )

    @classmethod
    def from_token_credential(cls, host: str, credential: Any, **kwargs: Any) -> IoTHubClient:
        """Build a client that authenticates with Entra ID (e.g. ``ManagedIdentityCredential``)."""
        return cls(f"https://{host}", EntraCredential(credential), **kwargs)

    @property
    def host(self) -> str:
        return self.endpoint.removeprefix("https://")

    # --- jobs ---------------------------------------------------------------------------------------

    def create_import_job(
        self,
        input_container_uri: str,
        output_container_uri: str,
        *,
        input_blob_name: str = "devices.txt",
        identity_based: bool = False,
        user_assigned_identity: str | None = None,
        include_configurations: bool = False,
        configurations_blob_name: str = CONFIGURATIONS_BLOB,
    ) -> Job:
        """Start an import job; ``include_configurations``: also apply the automatic device management
        configurations in ``configurations_blob_name`` of the input container (after the devices).
        Raises ``JobQuotaExceeded`` when another import/export job is active."""
        body: dict[str, Any] = {
            "type": "import",
            "inputBlobContainerUri": input_container_uri,
            "outputBlobContainerUri": output_container_uri,
            "inputBlobName": input_blob_name,
        }
        _configurations(body, include_configurations, configurations_blob_name)
        return self._create_job(body, identity_based, user_assigned_identity)

    def create_export_job(
        self,
        output_container_uri: str,
        *,
        output_blob_name: str = "devices.txt",
        exclude_keys: bool = True,
        identity_based: bool = False,
        user_assigned_identity: str | None = None,
        include_configurations: bool = False,
        configurations_blob_name: str = CONFIGURATIONS_BLOB,
    ) -> Job:
        """Start an export job (keys excluded unless asked); ``include_configurations``: also write the hub's
        automatic device management configurations to ``configurations_blob_name``, one per line.
        Raises ``JobQuotaExceeded`` when the hub is busy."""
        body: dict[str, Any] = {
            "type": "export",
            "outputBlobContainerUri": output_container_uri,
            "outputBlobName": output_blob_name,
            "excludeKeysInExport": exclude_keys,
        }
        _configurations(body, include_configurations, configurations_blob_name)
        return self._create_job(body, identity_based, user_assigned_identity)

    def _create_job(self, body: dict[str, Any], identity_based: bool, identity: str | None) -> Job:
        body["storageAuthenticationType"] = "identityBased" if identity_based else "keyBased"
        if identity:
            body["identity"] = {"userAssignedIdentity": identity}
        return Job.from_wire(self._send("POST", "/jobs/create", body=body, idempotent=False).json())

    def get_job(self, job_id: str) -> Job:
        """Raises ``IoTHubNotFound`` if the hub does not know the job (jobs are kept 30 days)."""
        _check_id(job_id, "job_id")
        return Job.from_wire(self._send("GET", f"/jobs/{job_id}").json())

    def list_jobs(self) -> list[Job]:
        """Every import/export job the hub remembers (30 days), oldest first."""
        return [Job.from_wire(j) for j in self._send("GET", "/jobs").json()]

    def cancel_job(self, job_id: str) -> Job | None:
        """Cancel a job; returns its state when the hub says it, None when it answers 204."""
        _check_id(job_id, "job_id")
        response = self._send("DELETE", f"/jobs/{job_id}")
        return Job.from_wire(response.json()) if response.content else None

    # --- registry -----------------------------------------------------------------------------------

    def get_registry_statistics(self) -> RegistryStatistics:
        body = self._send("GET", "/statistics/devices").json()
        return RegistryStatistics(
            int(body.get("totalDeviceCount", 0)),
            int(body.get("enabledDeviceCount", 0)),
            int(body.get("disabledDeviceCount", 0)),
        )

    def get_device(self, device_id: str) -> dict[str, Any]:
        """A device identity (``GET /devices/{id}``), keys included as the hub gives them: the caller redacts.

        Raises:
            IoTHubNotFound: no such device.
        """
        body: dict[str, Any] = self._send("GET", f"/devices/{_quoted(device_id)}").json()
        return body

    def get_twin(self, device_id: str) -> dict[str, Any]:
        """A device twin (``GET /twins/{id}``): tags, desired and reported properties."""
        body: dict[str, Any] = self._send("GET", f"/twins/{_quoted(device_id)}").json()
        return body

    def list_modules(self, device_id: str) -> list[dict[str, Any]]:
        """A device's module identities (``GET /devices/{id}/modules``), keys included as the hub gives them."""
        body = self._send("GET", f"/devices/{_quoted(device_id)}/modules").json()
        return [m for m in body if isinstance(m, dict)] if isinstance(body, list) else []

    def bulk_update(self, devices: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Apply up to 100 ExportImportDevice entries at once; returns the per-device errors (empty: all done)."""
        if not 0 < len(devices) <= 100:
            raise ValueError("bulk_update takes 1 to 100 devices")
        response = self._send("POST", "/devices", body=devices, idempotent=False, accept=(400,))
        errors: list[dict[str, Any]] = response.json().get("errors") or []
        return errors

    def query_devices(
        self,
        query: str,
        *,
        page_size: int = 100,
        patience: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Iterator[dict[str, Any]]:
        """The twins a query selects (``SELECT * FROM devices WHERE ...``), page by page as the hub answers them:
        ``POST /devices/query`` with ``x-ms-max-item-count``, following the ``x-ms-continuation`` header until the
        hub sends none. Each page is one call, counted against the hub's query quota (20 a minute per S1 unit), so
        a caller reading a whole registry asks for big pages.

        A passing fault on a page (429 with a ``Retry-After`` the retry policy hands back, a 5xx or no answer after
        its retries) is waited out and the same page asked again from its continuation token, as long as the waits
        for one page add up to at most ``patience`` seconds (0: raised at once); the pages already yielded stay valid.

        Raises:
            IoTHubHTTPError: the hub refused the query (400 with its message for one it cannot parse), or a passing
                fault outlasted ``patience`` (``passing`` is true, ``retry_after`` says how long the hub asked).
            IoTHubUnavailable: no answer, retries and ``patience`` included.
        """
        token: str | None = None
        while True:
            page, token = self.query_page(query, token, page_size=page_size, patience=patience, sleep=sleep)
            yield from page
            if not token:
                return

    def query_page(
        self,
        query: str,
        token: str | None,
        *,
        page_size: int = 100,
        patience: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of a query from its continuation ``token`` (None: the first), and the token of the next page
        (None: it was the last). A caller that reads a query over several sessions keeps the token between them.
        Passing faults are waited out as in ``query_devices``, up to ``patience`` seconds for this page.

        Raises:
            IoTHubHTTPError, IoTHubUnavailable: as ``query_devices``.
        """
        if not 1 <= page_size <= 1000:
            raise ValueError("page_size must be 1 to 1000")
        waited = 0.0
        faults = 0
        while True:
            headers = {"x-ms-max-item-count": str(page_size)}
            if token:
                headers["x-ms-continuation"] = token
            try:
                # A query only reads: safe to send again after a lost answer.
                response = self._send("POST", "/devices/query", body={"query": query}, idempotent=True, headers=headers)
            except (IoTHubHTTPError, IoTHubUnavailable) as exc:
                if isinstance(exc, IoTHubHTTPError) and not exc.passing and not isinstance(exc, IoTHubServerError):
                    raise
                faults += 1
                asked = exc.retry_after if isinstance(exc, IoTHubHTTPError) else None
                wait = asked if asked is not None else self._transport.retry.delay(faults)
                if waited + wait > patience:
                    raise
                logger.warning("IoT Hub %s: query page throttled or unanswered: again in %.1fs", self.host, wait)
                sleep(wait)
                waited += wait
                continue
            page = response.json()
            if not isinstance(page, list):
                raise IoTHubError(f"IoT Hub {self.host}: a query page was not a JSON array")
            return [item for item in page if isinstance(item, dict)], response.headers.get("x-ms-continuation") or None

    # --- transport ----------------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        idempotent: bool | None = None,
        accept: tuple[int, ...] = (),
        headers: dict[str, str] | None = None,
    ) -> requests.Response:
        """One logical call: retries per the policy, then maps the outcome to a typed error."""
        idempotent = method in ("GET", "PUT", "DELETE") if idempotent is None else idempotent
        try:
            response = self._transport.send(
                method,
                f"{self.endpoint}{path}",
                params={"api-version": self._api_version},
                body=body,
                content_type="application/json; charset=utf-8",
                idempotent=idempotent,
                headers=headers,
                label=f"IoT Hub {method} {path}",
            )
        except Unreachable as exc:
            raise IoTHubUnavailable(f"IoT Hub {self.host}: {exc}") from exc
        if response.status_code < 400 or response.status_code in accept:
            return response
        error = _http_error(response)
        logger.warning(
            "IoT Hub %s %s failed: %d %s (request %s)", method, path, error.status, error.code_name, error.request_id
        )
        raise error


def _configurations(body: dict[str, Any], include: bool, blob_name: str) -> None:
    """The job fields that carry configurations; left out when not asked, so a hub (or api-version) that predates
    them sees the request it always did."""
    if include:
        body["includeConfigurations"] = True
        body["configurationsBlobName"] = blob_name


def _quoted(device_id: str) -> str:
    """A device id as one path segment: ids may hold characters a URL path reserves (``#``, ``%``, ``?``...)."""
    _check_id(device_id, "device id")
    return quote(device_id, safe="")


def _check_id(value: str, name: str) -> None:
    if not value or "/" in value:
        raise ValueError(f"{name} must be a non-empty id without '/'")


def _http_error(response: requests.Response) -> IoTHubHTTPError:
    """Read the IoT Hub error shape: ``{"Message": "<json with errorCode>"|"ErrorCode:Name;...", ...}``."""
    status = response.status_code
    name = response.headers.get("iothub-errorcode")
    code: int | None = None
    message = response.reason or "error"
    request_id = response.headers.get("x-ms-request-id")
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        text = body.get("Message") or body.get("message") or ""
        try:
            inner = json.loads(text) if isinstance(text, str) and text.startswith("{") else None
        except ValueError:
            inner = None
        if isinstance(inner, dict):
            code = inner.get("errorCode") if isinstance(inner.get("errorCode"), int) else None
            message = str(inner.get("message") or message)
            request_id = request_id or inner.get("trackingId")
        elif isinstance(text, str) and text:
            message = text
            if text.startswith("ErrorCode:"):
                name = name or text.removeprefix("ErrorCode:").split(";")[0]
    if name is None and code is not None:
        name = error_name(code)
    if code is None and name == "JobQuotaExceeded":
        code = 403003
    kind: type[IoTHubHTTPError]
    if code == 403003 or name == "JobQuotaExceeded":
        kind = JobQuotaExceeded
    elif status in (401, 403):
        kind = IoTHubAuthError
    elif status == 404:
        kind = IoTHubNotFound
    elif status == 412:
        kind = IoTHubPreconditionFailed
    elif status == 429:
        kind = IoTHubThrottled
    elif status >= 500:
        kind = IoTHubServerError
    else:
        kind = IoTHubHTTPError
    label = f"{name} ({code})" if code else (name or str(status))
    return kind(
        f"IoT Hub answered {status} {label}: {message}",
        status=status,
        code=code,
        code_name=name,
        request_id=request_id,
        retry_after=parse_retry_after(response.headers.get("Retry-After")),
    )


__all__ = ["API_VERSION", "CONFIGURATIONS_BLOB", "IoTHubClient", "IoTHubError"]
