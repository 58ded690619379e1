"""Fleet operations built on the job engine: preview an import, undo it (snapshot, inverse file).

- ``join``: a devices file joined with a registry export by device id, through hash-partitioned spools (memory
  stays flat as both grow)
- ``plan``: what each line would do (create, update, twin, delete, unchanged, refused), counted per import mode
- ``undo``: the snapshot of what an import touches, and the inverse file that puts it back
"""

from .join import BUCKETS, Device, Join
from .plan import OUTCOMES, Plan, Refusal, decide, field_diff
from .undo import Inverse, fingerprint, restore_line, snapshot_record

__all__ = [
    "BUCKETS",
    "OUTCOMES",
    "Device",
    "Inverse",
    "Join",
    "Plan",
    "Refusal",
    "decide",
    "field_diff",
    "fingerprint",
    "restore_line",
    "snapshot_record",
]
