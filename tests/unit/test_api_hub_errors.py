"""How the HTTP API answers when the IoT hub does: a throttled or briefly unavailable hub is 503 with a Retry-After
(send it again later), a refusal 502."""

from __future__ import annotations

import pytest

from shared import api
from shared import api_schemas as schemas
from shared.api_schemas import Inputs, Request
from shared.iothub import IoTHubAuthError, IoTHubError, IoTHubServerError, IoTHubThrottled, IoTHubUnavailable

JOB = "8234567890123-0a1b2c"


def answer(exc: IoTHubError) -> api.Reply:
    def work(_: Inputs) -> api.Reply:
        raise exc

    return api.guarded(schemas.CANCEL_JOB, Request(path={"hub": "devhub", "job_id": JOB}), work, "cancel_job")


def hub_error(
    kind: type[IoTHubThrottled | IoTHubServerError | IoTHubAuthError], status: int, **kw: object
) -> IoTHubError:
    return kind(f"IoT Hub answered {status}", status=status, code=None, code_name=None, request_id=None, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("retry_after", "header"), [(7.0, "7"), (0.4, "1"), (None, str(api.HUB_BUSY_RETRY))])
def test_a_throttled_call_is_503_with_retry_after(retry_after: float | None, header: str) -> None:
    reply = answer(hub_error(IoTHubThrottled, 429, retry_after=retry_after))
    assert reply.status == 503 and reply.body["error"]["code"] == "IoTHubBusy"
    assert reply.headers["Retry-After"] == header and f"{header} s" in reply.body["error"]["message"]


def test_a_hub_503_is_503_and_a_refusal_or_500_stays_502() -> None:
    assert answer(hub_error(IoTHubServerError, 503, retry_after=2.0)).headers["Retry-After"] == "2"
    for exc in (hub_error(IoTHubServerError, 500), hub_error(IoTHubAuthError, 401), IoTHubUnavailable("no answer")):
        reply = answer(exc)
        assert (
            reply.status == 502 and reply.body["error"]["code"] == "IoTHubError" and "Retry-After" not in reply.headers
        )
