"""Errors raised by ``IoTHubClient``.

Tree::

    IoTHubError                       base for everything the client raises
      IoTHubUnavailable               no usable response: connect/read failure or timeout, retries exhausted
      IoTHubHTTPError                 the hub answered with an error (status, code, code name, request id)
        IoTHubAuthError               401/403 credentials wrong, expired or lacking a right: fix the settings
        JobQuotaExceeded              403003: another import/export job is active; the hub is busy, retry later
        IoTHubNotFound                404: device or job does not exist
        IoTHubPreconditionFailed      412: ETag mismatch
        IoTHubThrottled               429 after retries
        IoTHubServerError             5xx after retries
"""

from __future__ import annotations

# Numeric IoT Hub error codes and their names (docs: troubleshoot-error-codes; C# SDK ErrorCode.cs).
ERROR_NAMES: dict[int, str] = {
    400004: "ArgumentInvalid",
    400005: "ArgumentNull",
    400006: "IotHubFormatError",
    400008: "BlobContainerValidationError",
    400009: "ImportWarningExistsError",
    400011: "DeviceDefinedMultipleTimes",
    400012: "DeserializationError",
    400013: "BulkRegistryOperationFailure",
    400023: "EtagDoesNotMatch",
    401002: "IotHubUnauthorizedAccess",
    401003: "IotHubUnauthorized",
    403001: "IotHubSuspended",
    403002: "IotHubQuotaExceeded",
    403003: "JobQuotaExceeded",
    404001: "DeviceNotFound",
    404002: "JobNotFound",
    404010: "ModuleNotFound",
    405103: "ImportDevicesNotSupported",
    405104: "BulkAddDevicesNotSupported",
    409001: "DeviceAlreadyExists",
    409104: "JobAlreadyExists",
    409301: "ModuleAlreadyExistsOnDevice",
    412001: "PreconditionFailed",
    412003: "JobRunPreconditionFailed",
    413002: "TooManyDevices",
    429001: "ThrottlingException",
    429002: "ThrottleBacklogLimitExceeded",
    429003: "ThrottlingBacklogTimeout",
    429004: "ThrottlingMaxActiveJobCountExceeded",
    500001: "ServerError",
    500002: "JobCancelled",
    503001: "ServiceUnavailable",
}


def error_name(code: int | None) -> str:
    """The name of a numeric IoT Hub error code, or ``Unknown`` (so a report never shows a bare number)."""
    return ERROR_NAMES.get(code or 0, "Unknown")


class IoTHubError(Exception):
    """Base for everything ``IoTHubClient`` raises."""


class IoTHubUnavailable(IoTHubError):
    """No usable response: connection failure or timeout, after retries."""


class IoTHubHTTPError(IoTHubError):
    """The hub answered with an error status."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: int | None,
        code_name: str | None,
        request_id: str | None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.code_name = code_name
        self.request_id = request_id
        self.retry_after = retry_after  # seconds the hub asked the caller to wait (its Retry-After), if it said

    @property
    def passing(self) -> bool:
        """Throttled or unavailable for now (429, 503): the same request will be served later."""
        return self.status in (429, 503)


class IoTHubAuthError(IoTHubHTTPError):
    """401 or 403 (other than the job quota): the credentials are wrong, expired or lack a right."""


class JobQuotaExceeded(IoTHubHTTPError):
    """403003: an import/export job is already active on the hub. Not a failure: retry when it has finished."""


class IoTHubNotFound(IoTHubHTTPError):
    """404: the device or job does not exist."""


class IoTHubPreconditionFailed(IoTHubHTTPError):
    """412: the ETag did not match."""


class IoTHubThrottled(IoTHubHTTPError):
    """429, still after the retries."""


class IoTHubServerError(IoTHubHTTPError):
    """5xx, still after the retries."""
