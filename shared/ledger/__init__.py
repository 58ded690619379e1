"""The job ledger in Azure Table Storage: one row per job, the single source of truth.

Layout (one table): PartitionKey = hub name (or ``central``). RowKey = job id, which sorts newest first (inverted
time). Two kinds of helper rows share the partition: ``~key-<sha256>`` maps an upload version to its job
(idempotency) and ``~slot`` names the job that holds the hub's single import/export slot.

- ``_model``: ``Job``, its states and kinds, and ``advance``, the state machine.
- ``_entity``: the Table row of a job (the only place that knows the column names).
- ``_store``: ``Ledger``, the job store; every update uses the row's ETag (If-Match).
- ``_slot``: ``HubSlot``, each hub's slot, claimed with If-Match so one instance submits to a hub at a time.

Rows never hold secrets: URLs are stored without queries.
"""

from ._entity import from_entity, to_entity
from ._model import (
    TERMINAL_STATES,
    TRANSITIONS,
    InvalidTransition,
    Job,
    JobKind,
    JobNotFound,
    JobState,
    LedgerConflict,
    LedgerError,
    advance,
    idempotency_key,
    new_job_id,
)
from ._slot import HubSlot
from ._store import Ledger

__all__ = [
    "TERMINAL_STATES",
    "TRANSITIONS",
    "HubSlot",
    "InvalidTransition",
    "Job",
    "JobKind",
    "JobNotFound",
    "JobState",
    "Ledger",
    "LedgerConflict",
    "LedgerError",
    "advance",
    "from_entity",
    "idempotency_key",
    "new_job_id",
    "to_entity",
]
