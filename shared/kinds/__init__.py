"""The kinds of job the engine runs, each one module; ``registry`` is where a new kind is registered.

- ``imports``: ``ImportKind`` (a devices file) and ``RestoreKind`` (a backup folder, read in place)
- ``export``: ``ExportKind`` (a backup of a hub's registry)
- ``plan``: ``PlanKind`` (what an import would do; an import's snapshot)
- ``rollback``: ``RollbackKind`` (an import's inverse, queued as an import)
- ``central_apply``: ``CentralApplyKind`` (a data-export file applied to IoT Central, in the app)
- ``_hub``: what the kinds run as IoT Hub jobs share
"""

from ._hub import ERRORS_BLOB, WORK_DEVICES_BLOB, HubJobKind
from .central_apply import CentralApplyKind
from .export import ExportKind, nightly_key
from .imports import ImportKind, RestoreKind
from .plan import PlanKind
from .registry import registry
from .rollback import RollbackKind, rollback_refusal

__all__ = [
    "ERRORS_BLOB",
    "WORK_DEVICES_BLOB",
    "CentralApplyKind",
    "ExportKind",
    "HubJobKind",
    "ImportKind",
    "PlanKind",
    "RestoreKind",
    "RollbackKind",
    "nightly_key",
    "registry",
    "rollback_refusal",
]
