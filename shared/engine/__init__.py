"""The job engine: one lifecycle for every kind of job (``_engine``), and what a kind says about itself (``_kind``).

Errors a kind raises from ``submit``: ``SubmitFault`` > ``Busy``, ``Throttled``, ``Unanswered``, ``Refused``.
The engine raises ``CannotCancel`` for a job that cannot be cancelled now.
"""

from ._engine import (
    CHECKPOINTS,
    RETRY_BASE,
    SUBMIT_GRACE,
    TRANSIENT,
    CannotCancel,
    JobEngine,
    Refusal,
    checkpoint,
    utcnow,
)
from ._kind import Busy, Context, Ending, Kind, Refused, SubmitFault, Throttled, Unanswered

__all__ = [
    "CHECKPOINTS",
    "RETRY_BASE",
    "SUBMIT_GRACE",
    "TRANSIENT",
    "Busy",
    "CannotCancel",
    "Context",
    "Ending",
    "JobEngine",
    "Kind",
    "Refusal",
    "Refused",
    "SubmitFault",
    "Throttled",
    "Unanswered",
    "checkpoint",
    "utcnow",
]
