"""Fault injection: a share of API requests answered with 429/500/503, slowed-down jobs, and jobs that fail
because the hub cannot reach their storage yet (a role assignment not yet in effect after a deployment).

Set from the command line (``--fault-rate``), the environment (``IOTHUB_EMULATOR_FAULTS``) or at run time
through the control plane (``POST /_emulator/faults``). Randomness is seeded so a failing run can be replayed.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from .errors import ApiError

_BY_STATUS = {
    429: (429001, "Throttling: too many requests; retry after the Retry-After interval."),
    500: (500001, "Internal server error (injected by the emulator)."),
    503: (503001, "Service unavailable (injected by the emulator)."),
}


@dataclass(frozen=True, slots=True)
class FaultConfig:
    rate: float = 0.0  # share of API requests that fail
    statuses: tuple[int, ...] = (429, 500, 503)
    retry_after: int = 1  # seconds, sent with 429 and 503
    seed: int | None = None
    job_start_delay: float = 0.0  # seconds a job waits in `enqueued` before it runs
    job_step_delay: float = 0.0  # seconds added per batch of lines/devices, to slow jobs down
    # Jobs that fail as if the hub's identity had no role on their storage yet: the next N jobs to run, and every
    # job that starts within S seconds of the setting; then access "propagates" and jobs run again.
    storage_denied_jobs: int = 0
    storage_denied_seconds: float = 0.0

    @classmethod
    def parse(cls, text: str) -> FaultConfig:
        """Parse ``rate=0.2;statuses=429,503;seed=1;jobStartDelay=2;jobStepDelay=0.1;storageDeniedJobs=2``."""
        cfg = cls()
        for part in filter(None, (p.strip() for p in text.split(";"))):
            name, _, value = part.partition("=")
            cfg = cfg.updated({name.strip(): value.strip()})
        return cfg

    def updated(self, values: dict[str, Any]) -> FaultConfig:
        """A copy with ``values`` (wire names, as in the control plane's JSON) applied.

        Raises:
            ValueError: an unknown name or a value of the wrong kind.
        """
        changes: dict[str, Any] = {}
        for name, value in values.items():
            if name == "rate":
                rate = float(value)
                if not 0.0 <= rate <= 1.0:
                    raise ValueError("rate must be between 0 and 1")
                changes["rate"] = rate
            elif name == "statuses":
                items = value.split(",") if isinstance(value, str) else value
                statuses = tuple(int(s) for s in items)
                if not set(statuses) <= set(_BY_STATUS):
                    raise ValueError("statuses must be among 429, 500, 503")
                changes["statuses"] = statuses
            elif name == "retryAfter":
                changes["retry_after"] = int(value)
            elif name == "seed":
                changes["seed"] = None if value in (None, "") else int(value)
            elif name == "jobStartDelay":
                changes["job_start_delay"] = float(value)
            elif name == "jobStepDelay":
                changes["job_step_delay"] = float(value)
            elif name == "storageDeniedJobs":
                changes["storage_denied_jobs"] = int(value)
            elif name == "storageDeniedSeconds":
                changes["storage_denied_seconds"] = float(value)
            else:
                raise ValueError(f"unknown fault setting '{name}'")
        return replace(self, **changes)


@dataclass
class Faults:
    """The live fault settings of one emulator, safe to read from request threads."""

    config: FaultConfig = field(default_factory=FaultConfig)
    _rng: random.Random = field(default_factory=random.Random)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _denials_left: int = 0
    _denied_until: float = 0.0  # time.monotonic()

    def __post_init__(self) -> None:
        self._rng = random.Random(self.config.seed)
        self._arm(self.config)

    def set(self, config: FaultConfig) -> None:
        with self._lock:
            old, self.config = self.config, config
            self._rng = random.Random(config.seed)
            # Armed when set, not again when other settings change: N jobs, or S seconds from now.
            if (old.storage_denied_jobs, old.storage_denied_seconds) != (
                config.storage_denied_jobs,
                config.storage_denied_seconds,
            ):
                self._arm(config)

    def _arm(self, config: FaultConfig) -> None:
        self._denials_left = config.storage_denied_jobs
        self._denied_until = time.monotonic() + config.storage_denied_seconds

    def storage_denial(self) -> str | None:
        """The ``failureReason`` a job starting now fails with because its storage refuses the hub, or None.

        The text is the one the service gave for a job it could not reach storage for ("Unable to access blob ...
        errorcode: IH400007", Azure/azure-iot-cli-extension#93): no published text says which permission was
        missing, so none is invented here. Role assignments take minutes to take effect after a deployment
        (Azure/azure-dev#8026), which this fault stands for.
        """
        with self._lock:
            if self._denials_left > 0:
                self._denials_left -= 1
            elif time.monotonic() >= self._denied_until:
                return None
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        return (
            "Unable to access blob. If you contact a support representative please include this correlation "
            f"identifier: {uuid.uuid4()}, timestamp: {stamp}, errorcode: IH400007."
        )

    def draw(self) -> tuple[int, int] | None:
        """The (status, Retry-After seconds) this request should fail with, or None if it goes through."""
        with self._lock:
            cfg = self.config
            if cfg.rate <= 0 or self._rng.random() >= cfg.rate:
                return None
            return self._rng.choice(cfg.statuses), cfg.retry_after

    def maybe_fail(self) -> None:
        """Raise an injected IoT Hub error for this request, or return if it should go through."""
        drawn = self.draw()
        if drawn is None:
            return
        status, retry_after = drawn
        code, message = _BY_STATUS[status]
        headers = {"Retry-After": str(retry_after)} if status in (429, 503) else {}
        raise ApiError(code, message, headers=headers)
