"""When and how long to wait before retrying a request to the hub. The only place retry rules live.

Retried: 408, 429, 500, 502, 503, 504 and connection failures, with exponential backoff and jitter, capped, and
``Retry-After`` honoured, all under an overall deadline. Requests that are not idempotent (``POST /jobs/create``)
are retried only where the hub cannot have acted: 429, 503 and failures to connect; a 500 or a read timeout
after such a POST is left to the caller, who reconciles against ``GET /jobs``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
SAFE_FOR_NON_IDEMPOTENT = frozenset({429, 503})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 5
    backoff_factor: float = 0.8
    backoff_max: float = 60.0
    total_timeout: float = 300.0  # seconds for one operation, all tries included

    def retries_status(self, status: int, *, idempotent: bool) -> bool:
        allowed = RETRY_STATUSES if idempotent else SAFE_FOR_NON_IDEMPOTENT
        return status in allowed

    def delay(self, attempt: int, retry_after: str | None = None, *, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        if retry_after:
            try:
                return min(max(float(retry_after), 0.0), self.backoff_max)
            except ValueError:
                pass  # an HTTP date: fall back to backoff
        base = min(self.backoff_factor * (2 ** (attempt - 1)), self.backoff_max)
        jitter: float = (rng or random.Random()).random()
        return float(base * (0.5 + jitter / 2))  # 50-100 % of the backoff
