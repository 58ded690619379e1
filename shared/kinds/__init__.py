"""The kinds of job the engine runs, each one module; ``registry`` is where a new kind is registered.

- ``imports``: ``ImportKind`` (a devices file) and ``RestoreKind`` (a backup folder, read in place)
- ``export``: ``ExportKind`` (a backup of a hub's registry)
- ``central_apply``: ``CentralApplyKind`` (a data-export file applied to IoT Central, in the app)
- ``_hub``: what the kinds run as IoT Hub jobs share
"""

from ._hub import ERRORS_BLOB, WORK_DEVICES_BLOB, HubJobKind
from .central_apply import CentralApplyKind
from .export import ExportKind, nightly_key
from .imports import ImportKind, RestoreKind
from .registry import registry

__all__ = [
    "ERRORS_BLOB",
    "WORK_DEVICES_BLOB",
    "CentralApplyKind",
    "ExportKind",
    "HubJobKind",
    "ImportKind",
    "RestoreKind",
    "nightly_key",
    "registry",
]
