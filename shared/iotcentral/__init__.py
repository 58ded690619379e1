"""IoT Central data-export REST client (destinations and exports) with typed errors (see ``_errors``)."""

from ._auth import ENTRA_SCOPE, ApiTokenCredential, entra_credential
from ._client import API_VERSION, DESTINATIONS, EXPORTS, IoTCentralClient
from ._errors import (
    IoTCentralAuthError,
    IoTCentralError,
    IoTCentralHTTPError,
    IoTCentralNotFound,
    IoTCentralRejected,
    IoTCentralServerError,
    IoTCentralThrottled,
    IoTCentralUnavailable,
)

__all__ = [
    "API_VERSION",
    "DESTINATIONS",
    "ENTRA_SCOPE",
    "EXPORTS",
    "ApiTokenCredential",
    "IoTCentralAuthError",
    "IoTCentralClient",
    "IoTCentralError",
    "IoTCentralHTTPError",
    "IoTCentralNotFound",
    "IoTCentralRejected",
    "IoTCentralServerError",
    "IoTCentralThrottled",
    "IoTCentralUnavailable",
    "entra_credential",
]
