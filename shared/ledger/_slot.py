"""Each hub's single import/export slot: a distributed lock in the ledger table, taken with If-Match.

A hub runs one import/export job at a time (403003 JobQuotaExceeded otherwise), so the app runs one job per hub
at a time, whichever instance submits it: the ``~slot`` row of the hub's partition names the job holding it, and
every change of holder is a conditional write on the row's ETag, so two instances can never both take it.
"""

from __future__ import annotations

from datetime import datetime

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

from ._guard import guarded

SLOT_ROW = "~slot"


class HubSlot:
    """Claim, release and read the slot rows of one ledger table."""

    def __init__(self, table: TableClient) -> None:
        self.table = guarded(table)

    def holder(self, hub: str) -> str | None:
        try:
            return self.table.get_entity(hub, SLOT_ROW).get("Holder") or None
        except ResourceNotFoundError:
            return None

    def claim(self, hub: str, job_id: str, *, now: datetime) -> bool:
        """Take the hub's slot for ``job_id``. True if it holds it now (also if it already did)."""
        try:
            row = self.table.get_entity(hub, SLOT_ROW)
        except ResourceNotFoundError:
            try:
                self.table.create_entity(_row(hub, job_id, now))
                return True
            except ResourceExistsError:
                row = self.table.get_entity(hub, SLOT_ROW)
        holder = row.get("Holder") or None
        if holder == job_id:
            return True
        if holder is not None:
            return False
        return self._swap(hub, row.metadata["etag"], job_id, now)

    def release(self, hub: str, job_id: str, *, now: datetime) -> bool:
        """Free the slot if ``job_id`` holds it. True if this call released it; False if the job did not hold it
        (someone else does, or no one), or another instance changed the row first."""
        try:
            row = self.table.get_entity(hub, SLOT_ROW)
        except ResourceNotFoundError:
            return False
        if (row.get("Holder") or None) != job_id:
            return False
        return self._swap(hub, row.metadata["etag"], "", now)

    def _swap(self, hub: str, etag: str | None, holder: str, now: datetime) -> bool:
        """Set the holder if the row is still as read (If-Match); False if another instance got there first."""
        try:
            self.table.update_entity(
                _row(hub, holder, now),
                mode=UpdateMode.REPLACE,
                etag=etag,
                match_condition=MatchConditions.IfNotModified,
            )
        except HttpResponseError as exc:
            if exc.status_code == 412:
                return False
            raise
        return True


def _row(hub: str, holder: str, now: datetime) -> dict[str, object]:
    return {"PartitionKey": hub, "RowKey": SLOT_ROW, "Type": "slot", "Holder": holder, "Since": now}
