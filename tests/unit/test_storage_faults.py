"""Which storage faults pass: a hub job that could not reach its storage, storage refusing the app (403), storage
not answering; and how the HTTP API answers them (503 with a Retry-After, never a 500)."""

from __future__ import annotations

import pytest
from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

from shared import api
from shared import api_schemas as schemas
from shared.api_schemas import Inputs, Request
from shared.iothub import Job
from shared.storage import StorageDenied, StorageError, StorageUnavailable, _explain


def hub_job(status: str, reason: str | None) -> Job:
    return Job.from_wire({"jobId": "j", "type": "import", "status": status, "failureReason": reason})


@pytest.mark.parametrize(
    "reason",
    [
        "Unable to access blob. If you contact a support representative please include this correlation identifier: "
        "98677835-c20b-4bf4-84b2-7824fd78f4f9, timestamp: 2019-09-12 18:15:32Z, errorcode: IH400007.",
        "Storage refused access to the input container (403 AuthorizationPermissionMismatch). Check that ...",
        "The hub's identity has no role on the storage account of https://a.blob.core.windows.net/c; grant it ...",
    ],
)
def test_a_hub_job_that_could_not_reach_its_storage_is_a_storage_denial(reason: str) -> None:
    assert hub_job("failed", reason).storage_denied


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        ("failed", "The hub was restarted while this job was running; part of its changes may have been applied."),
        ("failed", None),
        ("completed", None),
        ("running", "Unable to access blob"),  # only a failed job failed for it
    ],
)
def test_other_endings_are_not(status: str, reason: str | None) -> None:
    assert not hub_job(status, reason).storage_denied


def http_error(status: int, code: str) -> HttpResponseError:
    exc = HttpResponseError(message=f"{status} {code}")
    exc.status_code, exc.error_code = status, code
    return exc


def test_storage_faults_map_to_what_passes() -> None:
    assert isinstance(_explain(http_error(403, "AuthorizationPermissionMismatch"), "x"), StorageDenied)
    assert isinstance(_explain(http_error(403, "AuthorizationFailure"), "x"), StorageDenied)
    wrong_key = _explain(http_error(403, "AuthenticationFailed"), "x")  # waiting never heals a bad key
    assert type(wrong_key) is StorageError
    for exc in (ServiceRequestError("refused"), ServiceResponseError("reset")):
        assert isinstance(_explain(exc, "reading uploads/f"), StorageUnavailable)


@pytest.mark.parametrize(
    "fault",
    [StorageUnavailable("storage is not answering (reading x: ServiceRequestError)"), StorageDenied("403 ...")],
)
def test_the_api_answers_503_with_retry_after(fault: StorageError) -> None:
    def work(_: Inputs) -> api.Reply:
        raise fault

    reply = api.guarded(schemas.LIST_JOBS, Request(), work, "list_jobs")
    assert reply.status == 503 and reply.body["error"]["code"] == "StorageUnavailable"
    assert int(reply.headers["Retry-After"]) > 0
