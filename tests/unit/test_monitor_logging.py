"""A monitor pass logs a passing fault as one warning line, and anything else as an error with its traceback."""

from __future__ import annotations

import logging

import pytest

from shared.iothub import IoTHubServerError, IoTHubThrottled, IoTHubUnavailable
from shared.services import _pass
from shared.storage import StorageError


@pytest.mark.parametrize(
    "fault",
    [
        IoTHubServerError(
            "503 ServiceUnavailable", status=503, code=503001, code_name="ServiceUnavailable", request_id="r"
        ),
        IoTHubThrottled(
            "429 ThrottlingException", status=429, code=429001, code_name="ThrottlingException", request_id="r"
        ),
        IoTHubUnavailable("read timed out"),
        StorageError("storage failed on listing: 503 ServerBusy"),
    ],
)
def test_a_passing_fault_is_one_warning_line(fault: Exception, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="shared.services"), _pass("monitor pass over hub devhub"):
        raise fault
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert str(fault) in record.getMessage() and "next pass" in record.getMessage()


def test_an_unexpected_failure_is_an_error_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="shared.services"), _pass("monitor pass over hub devhub"):
        raise KeyError("bug")
    (record,) = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is not None
