"""Errors of the IoT Hub emulator, each carrying its HTTP status and IoT Hub error code.

Tree::

    ApiError                      (status from the numeric code: 404001 -> 404)
      AuthError                   401 IotHubUnauthorizedAccess / 401003 IotHubUnauthorized

One class shapes every error body (see ``body``), as the service does: a JSON object whose ``Message`` is itself
a JSON string carrying the numeric ``errorCode``, plus the ``iothub-errorcode`` header with the code name.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

# Numeric code -> name, as in the IoT Hub docs (troubleshoot-error-codes) and the C# SDK's ErrorCode.cs.
# Deliberately not imported from shared.iothub: the emulator stands in for the service, and a mistake in the
# app's table must show up as a test failure, not be mirrored by the service it is tested against.
CODE_NAMES: dict[int, str] = {
    400001: "InvalidProtocolVersion",
    400004: "ArgumentInvalid",
    400005: "ArgumentNull",
    400006: "IotHubFormatError",
    400008: "BlobContainerValidationError",
    400011: "DeviceDefinedMultipleTimes",
    400012: "DeserializationError",
    400013: "BulkRegistryOperationFailure",
    400023: "EtagDoesNotMatch",
    401002: "IotHubUnauthorizedAccess",
    401003: "IotHubUnauthorized",
    403002: "IotHubQuotaExceeded",
    403003: "JobQuotaExceeded",
    404001: "DeviceNotFound",
    404002: "JobNotFound",
    404010: "ModuleNotFound",
    405001: "MethodNotAllowed",
    409001: "DeviceAlreadyExists",
    409301: "ModuleAlreadyExistsOnDevice",
    412001: "PreconditionFailed",
    # Names from the service's swagger (ErrorDetails enum); their numbers are not published, so these are the
    # emulator's own (clients go by the iothub-errorcode header).
    400901: "InvalidConfigurationContent",
    403901: "ConfigurationCountLimitExceeded",
    404901: "ConfigurationNotFound",
    409901: "ConfigurationAlreadyExists",
    413002: "TooManyDevices",
    429001: "ThrottlingException",
    500001: "ServerError",
    503001: "ServiceUnavailable",
}


class ApiError(Exception):
    """An error answered to the client with the IoT Hub error shape."""

    def __init__(self, code: int, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers or {}

    @property
    def status(self) -> int:
        return self.code // 1000

    @property
    def name(self) -> str:
        return CODE_NAMES.get(self.code, "GenericError")

    def body(self, tracking_id: str) -> dict[str, str]:
        now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        inner = {
            "errorCode": self.code,
            "trackingId": tracking_id,
            "message": self.message,
            "timestampUtc": now,
        }
        return {
            "Message": json.dumps(inner),
            "ExceptionMessage": f"Tracking ID:{tracking_id}-TimeStamp:{now}",
        }


class AuthError(ApiError):
    """The request's credentials are missing, invalid, expired or lack a right."""

    def __init__(self, message: str, *, code: int = 401002) -> None:
        super().__init__(code, message)
