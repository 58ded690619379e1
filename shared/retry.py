"""How the service clients (IoT Hub, IoT Central) send: ``Transport`` (credential, timeouts, session) and the retry
loop under it, with when and how long to wait. The only place retry rules live.

Retried: 408, 429, 500, 502, 503, 504 and connection failures, with exponential backoff and jitter, capped, and
``Retry-After`` honoured (never retried sooner; a little later, at random, so that instances throttled together do
not all come back in the same instant), all under an overall deadline. A ``Retry-After`` longer than
``max_retry_after`` is not slept through: the response goes back to the caller, whose typed error carries the wait
(the job engine requeues a job for at least that long; the HTTP API answers 503 with it), so no worker sits idle
through a long throttle. Requests that are not idempotent (``POST /jobs/create``)
are retried only where the service cannot have acted: 429, 503 and failures to connect; a 500 or a read timeout
after such a POST is left to the caller, who reconciles against ``GET /jobs``.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import requests
from urllib3.exceptions import NewConnectionError

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
SAFE_FOR_NON_IDEMPOTENT = frozenset({429, 503})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 5
    backoff_factor: float = 0.8
    backoff_max: float = 60.0
    total_timeout: float = 300.0  # seconds for one operation, all tries included
    max_retry_after: float = 30.0  # a longer Retry-After is handed back to the caller rather than slept through
    retry_after_spread: float = 0.2  # up to this share is added to a Retry-After wait, at random

    def retries_status(self, status: int, *, idempotent: bool) -> bool:
        allowed = RETRY_STATUSES if idempotent else SAFE_FOR_NON_IDEMPOTENT
        return status in allowed

    def delay(self, attempt: int, retry_after: str | None = None, *, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based): at least what ``Retry-After`` asks (never
        capped: retrying sooner only earns another refusal), else the capped exponential backoff with jitter."""
        rng = rng or random.Random()
        asked = parse_retry_after(retry_after)
        if asked is not None:
            return asked * (1 + self.retry_after_spread * rng.random())
        base = min(self.backoff_factor * (2 ** (attempt - 1)), self.backoff_max)
        return float(base * (0.5 + rng.random() / 2))  # 50-100 % of the backoff


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for: delta-seconds or an HTTP date (RFC 9110); None if absent or
    unreadable."""
    if not value or not value.strip():
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


class Credential(Protocol):
    def authorization(self) -> str:
        """The value of the Authorization header for the next request."""
        ...


@dataclass
class Transport:
    """What a service client sends with: its credential, timeouts, retry policy and pooled session."""

    credential: Credential
    timeout: tuple[float, float] = (10.0, 60.0)  # (connect, read) seconds, for every request
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    session: requests.Session = field(default_factory=requests.Session)

    def send(
        self,
        method: str,
        url: str,
        *,
        params: dict[str, str],
        body: Any = None,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
        idempotent: bool,
        label: str,
    ) -> requests.Response:
        """``body`` as JSON, a fresh Authorization header on every try; see ``send_with_retries``."""
        data = None if body is None else json.dumps(body).encode()

        def all_headers() -> dict[str, str]:
            h = {"Authorization": self.credential.authorization(), "Accept": "application/json", **(headers or {})}
            if data is not None:
                h["Content-Type"] = content_type
            return h

        return send_with_retries(
            self.session,
            method,
            url,
            policy=self.retry,
            timeout=self.timeout,
            headers=all_headers,
            params=params,
            data=data,
            idempotent=idempotent,
            label=label,
        )


class Unreachable(Exception):
    """No usable response: the connection failed or timed out, retries included. ``str`` says which."""


def send_with_retries(
    session: requests.Session,
    method: str,
    url: str,
    *,
    policy: RetryPolicy,
    timeout: tuple[float, float],
    headers: Callable[[], dict[str, str]],
    params: dict[str, str] | None = None,
    data: bytes | None = None,
    idempotent: bool,
    label: str,
) -> requests.Response:
    """One logical call: send, and retry per ``policy``; returns the last response, whatever its status.

    ``headers`` is called before every try, so a renewed token is used. ``label`` names the call in logs (never a
    URL with a query). Raises ``Unreachable`` when no response came back within the retries.
    """
    deadline = time.monotonic() + policy.total_timeout
    attempt = 0
    while True:
        attempt += 1
        try:
            response = session.request(method, url, params=params, data=data, headers=headers(), timeout=timeout)
        except requests.ConnectionError as exc:
            # A connect failure means the service never saw the request; a read failure after a POST might not.
            safe = idempotent or isinstance(exc, requests.ConnectTimeout) or _never_sent(exc)
            if safe and attempt <= policy.max_retries and time.monotonic() < deadline:
                wait = policy.delay(attempt)
                logger.debug("%s: connection failed, retry %d in %.1fs", label, attempt, wait)
                time.sleep(min(wait, max(0.0, deadline - time.monotonic())))
                continue
            logger.warning("%s: unreachable after %d tries", label, attempt)
            raise Unreachable(f"unreachable ({type(exc).__name__})") from exc
        except requests.Timeout as exc:
            if idempotent and attempt <= policy.max_retries and time.monotonic() < deadline:
                time.sleep(policy.delay(attempt))
                continue
            raise Unreachable("did not answer in time") from exc
        if policy.retries_status(response.status_code, idempotent=idempotent) and attempt <= policy.max_retries:
            asked = parse_retry_after(response.headers.get("Retry-After"))
            wait = policy.delay(attempt, response.headers.get("Retry-After"))
            if asked is not None and asked > policy.max_retry_after:
                logger.info("%s: %d, Retry-After %.0fs: left to the caller", label, response.status_code, asked)
            elif time.monotonic() + wait < deadline:
                logger.debug("%s: %d, retry %d in %.1fs", label, response.status_code, attempt, wait)
                time.sleep(wait)
                continue
        return response


def _never_sent(exc: requests.ConnectionError) -> bool:
    """True when no connection was made (refused, unresolvable): the service cannot have seen the request."""
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, NewConnectionError)
