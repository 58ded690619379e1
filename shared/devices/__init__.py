"""The ExportImportDevice JSON-lines format: its rules, and a streaming validator of files of any size.

``rules`` holds the format and the full check that explains every finding; ``fields`` the keys of each object of
the format and what an unknown one is a slip of; ``fast`` proves the usual lines valid cheaply; ``seen`` finds
repeated ids with bounded memory, in spool folders that ``spool`` keeps and removes once their process is gone
(``sweep_dead_spools``); ``sniff`` tells a compressed or UTF-16 file from its first bytes; ``stream`` reads
a file in chunks and ties them together; ``csvfile`` reads a CSV sheet's rows as the lines ``stream`` validates.
"""

from .csvfile import is_csv_name, validate_csv_stream
from .rules import (
    AUTH_TYPES,
    DEFAULT_MODE,
    EDGE_SYSTEM_MODULES,
    IMPORT_MODES,
    MAX_LINE_BYTES,
    STATUSES,
    Code,
    Finding,
    LineChecker,
    ValidationReport,
)
from .spool import sweep_dead_spools
from .stream import iter_batches, validate_stream

__all__ = [
    "AUTH_TYPES",
    "DEFAULT_MODE",
    "EDGE_SYSTEM_MODULES",
    "IMPORT_MODES",
    "MAX_LINE_BYTES",
    "STATUSES",
    "Code",
    "Finding",
    "LineChecker",
    "ValidationReport",
    "is_csv_name",
    "iter_batches",
    "sweep_dead_spools",
    "validate_csv_stream",
    "validate_stream",
]
