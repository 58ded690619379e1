"""IoT Hub service API client: import/export jobs (with configurations), statistics, bulk registry; typed errors
(see ``_errors``)."""

from ..retry import Credential, RetryPolicy
from ._auth import EntraCredential, SasCredential, parse_connection_string, sign_sas
from ._client import API_VERSION, CONFIGURATIONS_BLOB, IoTHubClient
from ._errors import (
    ERROR_NAMES,
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
from ._models import Job, JobStatus, JobType, RegistryStatistics, strip_query

__all__ = [
    "API_VERSION",
    "CONFIGURATIONS_BLOB",
    "ERROR_NAMES",
    "Credential",
    "EntraCredential",
    "IoTHubAuthError",
    "IoTHubClient",
    "IoTHubError",
    "IoTHubHTTPError",
    "IoTHubNotFound",
    "IoTHubPreconditionFailed",
    "IoTHubServerError",
    "IoTHubThrottled",
    "IoTHubUnavailable",
    "Job",
    "JobQuotaExceeded",
    "JobStatus",
    "JobType",
    "RegistryStatistics",
    "RetryPolicy",
    "SasCredential",
    "error_name",
    "parse_connection_string",
    "sign_sas",
    "strip_query",
]
