"""Realistic mode: the operation throttles of an IoT hub's tier (SKU) and unit count, and how time is scaled.

The rates are those of the IoT Hub quotas and throttling docs (``iot-hub-devguide-quotas-throttling``, "Operation
throttles"). Each throttle is a token bucket that holds one window of the rate (a minute for the per-minute
throttles, a second for the twin throttles): the docs' own example, "submit multiple bulk operations to create 50
devices each ... S1 with one unit, only two of these bulk requests are accepted per minute ... a third request ...
would be rejected", is exactly a bucket of 100 registry operations refilled at 100 per minute. Beyond the bucket the
docs describe *traffic shaping*: requests over the throttle are queued and served at the limit rate, and only when
the queue is full are they answered ``429 ThrottlingException``. The queue's length is not published; the emulator
holds a request at most ``shaping_seconds`` (inferred) before answering 429 with a ``Retry-After``.

``time_scale`` shrinks every realistic delay (refill windows, job times, query lag) so tests can run the same rules
in a fraction of the time; rates stay the same per scaled minute.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum

from .errors import ApiError

SKUS = ("F1", "S1", "S2", "S3")
# Units a hub of each tier may have (pricing and scaling docs: F1 one unit, S1/S2 up to 200, S3 up to 10).
MAX_UNITS = {"F1": 1, "S1": 200, "S2": 200, "S3": 10}


class Op(StrEnum):
    """The throttled operation classes of the quotas docs (the emulator's routes each belong to one)."""

    REGISTRY = (
        "registry"  # identity registry operations: create, retrieve, list, update, delete (also bulk, per device)
    )
    QUERY = "query"  # queries
    JOBS = "jobs"  # jobs operations: create, update, list, delete
    CONFIGURATIONS = "configurations"  # configurations and edge deployments
    TWIN_READ = "twinRead"  # twin (device and module) reads
    TWIN_UPDATE = "twinUpdate"  # twin updates (device and module)


def limits(sku: str, units: int) -> dict[Op, tuple[float, float]]:
    """(operations per window, window in seconds) of every throttle for ``sku`` with ``units`` units."""
    s3 = sku == "S3"
    per_min = 60.0
    twin_read = {"F1": 100.0, "S1": 100.0, "S2": max(100.0, 10.0 * units), "S3": 500.0 * units}[sku]
    twin_update = {"F1": 50.0, "S1": 50.0, "S2": max(50.0, 5.0 * units), "S3": 250.0 * units}[sku]
    return {
        Op.REGISTRY: ((5000.0 if s3 else 100.0) * units, per_min),
        Op.QUERY: ((1000.0 if s3 else 20.0) * units, per_min),
        Op.JOBS: ((5000.0 if s3 else 100.0) * units, per_min),
        Op.CONFIGURATIONS: (20.0 * units, per_min),
        Op.TWIN_READ: (twin_read, 1.0),
        Op.TWIN_UPDATE: (twin_update, 1.0),
    }


@dataclass(frozen=True, slots=True)
class Profile:
    """How hard the emulated hub is. ``sku`` None is fast mode: no throttles, no lag, jobs as fast as they go."""

    sku: str | None = None
    units: int = 1
    time_scale: float = 1.0
    query_lag: float | None = None  # seconds at time scale 1; None: 6 s in realistic mode, 0 in fast mode
    shaping_seconds: float = 5.0  # longest a throttled request is held (traffic shaping) before a 429 (inferred)

    def __post_init__(self) -> None:
        if self.sku is not None and self.sku not in SKUS:
            raise ValueError(f"--sku must be one of {', '.join(SKUS)}")
        if self.sku is not None and not 1 <= self.units <= MAX_UNITS[self.sku]:
            raise ValueError(f"a {self.sku} hub has 1 to {MAX_UNITS[self.sku]} units")
        if not 0 < self.time_scale <= 1000:
            raise ValueError("--time-scale must be above 0")
        if self.query_lag is not None and self.query_lag < 0:
            raise ValueError("--query-lag cannot be negative")

    @property
    def realistic(self) -> bool:
        return self.sku is not None

    def seconds(self, service_seconds: float) -> float:
        """A delay of the real service, as this emulator waits it."""
        return service_seconds * self.time_scale if self.realistic else 0.0

    @property
    def lag(self) -> float:
        """Effective read-after-write lag of queries, in seconds. The recorded service: about 6 s (a query right
        after a PUT returned nothing, the same query 6 s later the device; azure-sdk-for-net SessionRecords,
        QueryClient_GetAllDevicesTwinsWithTag)."""
        if self.query_lag is not None:
            return self.query_lag * self.time_scale
        return self.seconds(6.0)

    def describe(self) -> dict[str, object]:
        return {
            "sku": self.sku,
            "units": self.units,
            "timeScale": self.time_scale,
            "queryLagSeconds": self.lag,
            "shapingSeconds": self.shaping_seconds * self.time_scale if self.realistic else 0.0,
            "limits": (
                {op.value: {"operations": n, "perSeconds": w} for op, (n, w) in limits(self.sku, self.units).items()}
                if self.sku
                else None
            ),
        }


@dataclass
class _Bucket:
    capacity: float
    rate: float  # tokens per (scaled) second
    tokens: float
    stamp: float

    def refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now


@dataclass
class Throttle:
    """The hub's throttles, and a count of every operation (fast mode counts too, for benchmarks)."""

    profile: Profile = field(default_factory=Profile)
    calls: Counter[str] = field(default_factory=Counter)
    throttled: Counter[str] = field(default_factory=Counter)
    _buckets: dict[Op, _Bucket] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Full buckets and zero counts."""
        with self._lock:
            self.calls.clear()
            self.throttled.clear()
        self.refill()

    def refill(self) -> None:
        """Every bucket full, as after a quiet window."""
        with self._lock:
            self._buckets.clear()
            if self.profile.sku is None:
                return
            now = time.monotonic()
            for op, (n, window) in limits(self.profile.sku, self.profile.units).items():
                self._buckets[op] = _Bucket(n, n / (window * self.profile.time_scale), n, now)

    def charge(self, op: Op, cost: int = 1) -> None:
        """Take ``cost`` operations of ``op``: at once, after a short hold (traffic shaping), or not at all.

        Raises:
            ApiError: 429001 ThrottlingException with ``Retry-After`` when the request would wait longer than
                the shaping hold.
        """
        with self._lock:
            bucket = self._buckets.get(op)
            if bucket is None:
                self.calls[op.value] += cost
                return
            now = time.monotonic()
            bucket.refill(now)
            # A request larger than the bucket (a 100-device bulk call on a 50-operation throttle) can never fit: it
            # waits for a full bucket, as the docs' example of bulk calls implies.
            need = min(cost, bucket.capacity)
            wait = max(0.0, (need - bucket.tokens) / bucket.rate)
            if wait > self.profile.shaping_seconds * self.profile.time_scale:
                self.throttled[op.value] += 1
                raise ApiError(
                    429001,
                    f"Throttling: the {op.value} throttle of this {self.profile.sku} hub "
                    f"({self.profile.units} unit(s)) is exceeded; retry after the Retry-After interval.",
                    headers={"Retry-After": self._retry_after(wait)},
                )
            bucket.tokens -= need  # may go negative: the debt is what later requests wait for
            self.calls[op.value] += cost
        if wait > 0:
            time.sleep(wait)  # traffic shaping: served late rather than refused

    def _retry_after(self, wait: float) -> str:
        """Whole seconds, at least 1, as HTTP defines the header (also with a scaled clock, where it overstates the
        wait): urllib3, under Microsoft's SDK, retries a 429 after Retry-After and fails on a decimal value."""
        return str(max(1, math.ceil(wait)))


# How long jobs take on the service, in seconds at time scale 1: (enqueued, running at least, lines per second).
# Small files are from the live recordings (azure-sdk-for-net SessionRecords, Jobs_Export_Import_Lifecycle): an
# export of a handful of devices completed 3 s after it was created; a 5-device import was still enqueued after
# about 4 s and completed after 16.5 s. The per-line rates are inferred so that a million lines take minutes
# (import about 8.5, export about 3.5): no published figure exists (a C# sample's comment of "1 minute per 100
# devices" cites docs that do not say so).
JOB_TIMES: dict[str, tuple[float, float, float]] = {
    "import": (4.0, 12.0, 2000.0),
    "export": (1.0, 2.0, 5000.0),
}


def job_times(profile: Profile, kind: str) -> tuple[float, float, float] | None:
    """(enqueued seconds, minimum running seconds, lines per second) scaled, or None in fast mode."""
    if not profile.realistic:
        return None
    enqueued, running, rate = JOB_TIMES[kind]
    return profile.seconds(enqueued), profile.seconds(running), rate / profile.time_scale
