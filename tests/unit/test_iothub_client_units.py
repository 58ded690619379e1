"""Pieces of shared.iothub that need no hub: connection strings, SAS renewal, retry delays, error parsing."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
import requests

from shared.iothub import RetryPolicy, SasCredential, parse_connection_string
from shared.iothub._client import _http_error
from shared.iothub._errors import IoTHubNotFound, IoTHubServerError, IoTHubThrottled, JobQuotaExceeded
from shared.retry import parse_retry_after

KEY = "EtFfipxWXHC/EsQvFkvCMtUEqKf29XjHDRGXo+ytfm0="


def test_connection_string_errors_name_the_missing_part_without_the_key() -> None:
    with pytest.raises(ValueError, match="SharedAccessKeyName") as e:
        parse_connection_string(f"HostName=h;SharedAccessKey={KEY}")
    assert KEY not in str(e.value)
    with pytest.raises(ValueError, match="not base64"):
        parse_connection_string("HostName=h;SharedAccessKeyName=p;SharedAccessKey=!!!")


def test_sas_token_is_renewed_before_expiry() -> None:
    now = [1_000_000.0]
    cred = SasCredential("hub.example", "iothubowner", KEY, ttl=3600, margin=300, clock=lambda: now[0])
    first = cred.authorization()
    assert "se=1003600" in first and "skn=iothubowner" in first
    now[0] += 3000
    assert cred.authorization() == first
    now[0] += 400  # inside the renewal margin
    assert cred.authorization() != first
    assert KEY not in repr(cred)


def test_retry_delay_honours_retry_after_and_caps() -> None:
    policy = RetryPolicy(backoff_factor=1, backoff_max=10)
    rng = random.Random(1)
    # Never sooner than the hub asked (the backoff cap does not shorten it), a little later at random: instances
    # throttled in the same instant come back spread out.
    waits = [policy.delay(1, "3", rng=rng) for _ in range(50)]
    assert all(3 <= w <= 3 * 1.2 for w in waits) and len(set(waits)) > 1
    assert policy.delay(1, "600") >= 600
    assert policy.delay(1, "0") == 0
    assert all(0.5 * min(2 ** (n - 1), 10) <= policy.delay(n, rng=rng) <= min(2 ** (n - 1), 10) for n in range(1, 8))
    assert policy.retries_status(500, idempotent=True) and not policy.retries_status(500, idempotent=False)
    assert policy.retries_status(429, idempotent=False)


def test_retry_after_as_seconds_or_an_http_date() -> None:
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert parse_retry_after("7") == 7 and parse_retry_after("1.5") == 1.5 and parse_retry_after("-3") == 0
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:42 GMT", now=now) == 42
    assert parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now=now) == 0  # already past: at once
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None and parse_retry_after(" ") is None


def test_throttling_errors_carry_the_wait_the_hub_asked_for() -> None:
    body = b'{"Message":"{\\"errorCode\\":429001,\\"message\\":\\"slow down\\"}"}'
    throttled = _http_error(_response(429, body, {"Retry-After": "12"}))
    assert isinstance(throttled, IoTHubThrottled) and throttled.retry_after == 12 and throttled.passing
    busy = _http_error(_response(503, b"{}", {}))
    assert isinstance(busy, IoTHubServerError) and busy.passing and busy.retry_after is None
    assert not _http_error(_response(500, b"{}")).passing
    assert not _http_error(_response(404, b"{}")).passing


def _response(status: int, body: bytes, headers: dict[str, str] | None = None) -> requests.Response:
    r = requests.Response()
    r.status_code = status
    r._content = body
    r.headers.update(headers or {})
    return r


def test_error_parsing_of_both_message_shapes() -> None:
    e = _http_error(
        _response(404, b'{"Message":"{\\"errorCode\\":404001,\\"trackingId\\":\\"t1\\",\\"message\\":\\"gone\\"}"}')
    )
    assert isinstance(e, IoTHubNotFound) and (e.code, e.code_name, e.request_id) == (404001, "DeviceNotFound", "t1")
    q = _http_error(_response(403, b'{"Message":"ErrorCode:JobQuotaExceeded;Job quota has been exceeded"}'))
    assert isinstance(q, JobQuotaExceeded) and q.code == 403003


def test_never_sent_tells_a_refused_connection_from_a_broken_one() -> None:
    from emulators.azurite import free_port
    from shared.retry import _never_sent

    with pytest.raises(requests.ConnectionError) as refused:
        requests.get(f"http://127.0.0.1:{free_port()}/", timeout=2)
    assert _never_sent(refused.value)  # no connection: a POST can be retried safely
    assert not _never_sent(requests.ConnectionError("Connection reset by peer"))  # it may have been received
