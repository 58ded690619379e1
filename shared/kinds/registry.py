"""Which kinds this app runs: adding a kind is its module plus one line here."""

from __future__ import annotations

from ..central import NOT_CONFIGURED, Central
from ..engine import Kind
from ..ledger import JobKind
from .central_apply import CentralApplyKind
from .export import ExportKind
from .imports import ImportKind, RestoreKind


def registry(
    *, retention_days: int | None, central: Central | None, include_configurations: bool = False
) -> tuple[dict[JobKind, Kind], dict[JobKind, str]]:
    """The kinds to register, and the kinds turned off with why (their jobs are rejected with that reason).
    ``include_configurations``: backups hold the hubs' configurations too."""
    kinds: list[Kind] = [
        ImportKind(),
        RestoreKind(),
        ExportKind(retention_days, include_configurations=include_configurations),
    ]
    off: dict[JobKind, str] = {}
    if central is not None:
        kinds.append(CentralApplyKind(central))
    else:
        off[JobKind.CENTRAL_APPLY] = NOT_CONFIGURED
    return {k.name: k for k in kinds}, off
