"""Which kinds this app runs: adding a kind is its module plus one line here."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta

from ..central import NOT_CONFIGURED, Central
from ..config import Snapshots
from ..engine import Kind
from ..ledger import JobKind
from .central_apply import CentralApplyKind
from .export import ExportKind
from .imports import ImportKind, RestoreKind
from .migration import MigrationImportKind, MigrationKind, MigrationVerifyKind
from .plan import PlanKind
from .rollback import RollbackKind


def registry(
    *,
    retention_days: int | None,
    central: Central | None,
    include_configurations: bool = False,
    snapshots: Snapshots = Snapshots.CHANGES,
    approval: Mapping[str, int] | None = None,
    plan_backup_max_age: timedelta = timedelta(0),
) -> tuple[dict[JobKind, Kind], dict[JobKind, str]]:
    """The kinds to register, and the kinds turned off with why (their jobs are rejected with that reason).
    ``include_configurations``: backups hold the hubs' configurations too. ``approval``: hub -> update lines an
    import may make before it waits for approval (hubs that require a plan)."""
    importer = ImportKind(snapshots, approval)
    kinds: list[Kind] = [
        importer,
        RestoreKind(),
        ExportKind(retention_days, include_configurations=include_configurations),
    ]
    kinds += [PlanKind(plan_backup_max_age), RollbackKind(importer)]
    migration_import = MigrationImportKind(MigrationVerifyKind())
    kinds += [MigrationKind(migration_import), migration_import, migration_import.verifier]
    off: dict[JobKind, str] = {}
    if central is not None:
        kinds.append(CentralApplyKind(central))
    else:
        off[JobKind.CENTRAL_APPLY] = NOT_CONFIGURED
    return {k.name: k for k in kinds}, off
