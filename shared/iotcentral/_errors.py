"""Errors raised by ``IoTCentralClient``.

Tree::

    IoTCentralError                   base for everything the client raises
      IoTCentralUnavailable           no usable response: connect/read failure or timeout, retries exhausted
      IoTCentralHTTPError             the app answered an error: status, code (``error.code``), request id
        IoTCentralAuthError           401/403: token wrong or expired, or the role lacks "Data export"
        IoTCentralNotFound            404: no such destination or export
        IoTCentralRejected            400/409/422: the request itself is wrong (body, missing or in-use destination)
        IoTCentralThrottled           429 after retries
        IoTCentralServerError         5xx after retries
"""

from __future__ import annotations


class IoTCentralError(Exception):
    """Base for everything ``IoTCentralClient`` raises."""


class IoTCentralUnavailable(IoTCentralError):
    """No usable response: connection failure or timeout, after retries."""


class IoTCentralHTTPError(IoTCentralError):
    """The app answered with an error status; ``code`` is the service's ``error.code`` (or ``x-ms-error-code``)."""

    def __init__(self, message: str, *, status: int, code: str, request_id: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.request_id = request_id


class IoTCentralAuthError(IoTCentralHTTPError):
    """401 or 403: fix the token or credential, or give its role the Data export permission."""


class IoTCentralNotFound(IoTCentralHTTPError):
    """404: the destination or export does not exist."""


class IoTCentralRejected(IoTCentralHTTPError):
    """400, 409 or 422: the request is wrong as sent; retrying it unchanged will not help."""


class IoTCentralThrottled(IoTCentralHTTPError):
    """429, still after the retries."""


class IoTCentralServerError(IoTCentralHTTPError):
    """5xx, still after the retries."""


def error_class(status: int) -> type[IoTCentralHTTPError]:
    if status in (401, 403):
        return IoTCentralAuthError
    if status == 404:
        return IoTCentralNotFound
    if status in (400, 409, 422):
        return IoTCentralRejected
    if status == 429:
        return IoTCentralThrottled
    if status >= 500:
        return IoTCentralServerError
    return IoTCentralHTTPError
