"""The job ledger on Azurite's Table Storage: idempotency, ETags, the hub slot under concurrency."""

from __future__ import annotations

import threading
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from azure.data.tables import TableServiceClient

from emulators.azurite import Azurite
from shared.ledger import (
    HubSlot,
    InvalidTransition,
    Job,
    JobKind,
    JobState,
    Ledger,
    LedgerConflict,
    idempotency_key,
    new_job_id,
)

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


@pytest.fixture
def ledger(azurite: Azurite) -> Ledger:
    service = TableServiceClient.from_connection_string(azurite.connection_string)
    return Ledger.from_service(service, f"ledger{uuid.uuid4().hex[:10]}")


def fresh_ledger(azurite: Azurite, table: str) -> Ledger:
    return Ledger(TableServiceClient.from_connection_string(azurite.connection_string).get_table_client(table))


def job(hub: str = "hub1", *, key: str | None = None, at: datetime = NOW) -> Job:
    return Job(
        hub, new_job_id(at), JobKind.IMPORT, JobState.QUEUED, at, at, source="uploads/a.txt", idempotency_key=key
    )


def test_round_trip_and_transitions(ledger: Ledger) -> None:
    created, new = ledger.create(job())
    assert new and created.state is JobState.QUEUED and created.etag
    submitting = ledger.move(created, JobState.SUBMITTING, now=NOW)
    running = ledger.move(replace(submitting, hub_job_id="h1"), JobState.RUNNING, now=NOW)
    again = ledger.get("hub1", created.job_id)
    assert (again.state, again.hub_job_id) == (JobState.RUNNING, "h1")
    with pytest.raises(InvalidTransition):
        ledger.move(running, JobState.AWAITING_APPROVAL, now=NOW)
    done = ledger.move(
        replace(again, failed_devices=3, modes={"create": 5}, denied_since=NOW), JobState.COMPLETED_WITH_ERRORS, now=NOW
    )
    assert ledger.get("hub1", done.job_id).modes == {"create": 5}
    assert ledger.get("hub1", done.job_id) == done  # every field survives the row (etags aside)
    with pytest.raises(InvalidTransition):
        ledger.move(done, JobState.RUNNING, now=NOW)


def test_stale_etag_is_a_conflict(ledger: Ledger) -> None:
    created, _ = ledger.create(job())
    ledger.move(created, JobState.SUBMITTING, now=NOW)
    with pytest.raises(LedgerConflict):
        ledger.move(created, JobState.CANCELLED, now=NOW)  # still holds the old ETag


def test_duplicate_delivery_finds_the_same_job(ledger: Ledger) -> None:
    key = idempotency_key("uploads", "a.txt", '"0x8DC"')
    first, new1 = ledger.create(job(key=key))
    second, new2 = ledger.create(job(key=key))
    assert (new1, new2) == (True, False) and second.job_id == first.job_id
    assert len(ledger.list_jobs("hub1")[0]) == 1
    other, new3 = ledger.create(job(key=idempotency_key("uploads", "a.txt", '"0x8DD"')))  # a new upload version
    assert new3 and other.job_id != first.job_id


def test_concurrent_creators_of_one_upload_make_one_job(azurite: Azurite, ledger: Ledger) -> None:
    key = idempotency_key("uploads", "race.txt", "etag-1")
    results: list[str] = []
    barrier = threading.Barrier(20)

    def create() -> None:
        mine = fresh_ledger(azurite, ledger.table.table_name)
        barrier.wait()
        created, _ = mine.create(job(key=key))
        results.append(created.job_id)

    threads = [threading.Thread(target=create) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 20 and len(set(results)) == 1
    assert len(ledger.list_jobs("hub1")[0]) == 1


def test_twenty_concurrent_claimers_one_winner(azurite: Azurite, ledger: Ledger) -> None:
    winners: list[str] = []
    barrier = threading.Barrier(20)
    slots = HubSlot(ledger.table)

    def claim(n: int) -> None:
        mine = HubSlot(fresh_ledger(azurite, ledger.table.table_name).table)
        barrier.wait()
        if mine.claim("hub1", f"job-{n}", now=NOW):
            winners.append(f"job-{n}")

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    assert slots.holder("hub1") == winners[0]
    assert slots.claim("hub1", winners[0], now=NOW)  # re-claiming is idempotent
    assert not slots.claim("hub1", "someone-else", now=NOW)
    assert not slots.release("hub1", "someone-else", now=NOW)  # not the holder: nothing released
    assert slots.holder("hub1") == winners[0]
    assert slots.release("hub1", winners[0], now=NOW)  # released by this call
    assert not slots.release("hub1", winners[0], now=NOW)  # again: nothing left to release
    assert slots.holder("hub1") is None
    assert slots.claim("hub1", "next", now=NOW)


def test_listing_newest_first_filtered_and_paged(ledger: Ledger) -> None:
    made = [ledger.create(job(at=NOW + timedelta(minutes=i)))[0] for i in range(5)]
    ledger.move(made[1], JobState.CANCELLED, now=NOW)
    ledger.create(job("hub2"))
    page, after = ledger.list_jobs("hub1", limit=3)
    assert [j.job_id for j in page] == [m.job_id for m in reversed(made)][:3]
    rest, end = ledger.list_jobs("hub1", limit=3, after=after)
    assert [j.job_id for j in rest] == [made[1].job_id, made[0].job_id] and end is None
    cancelled, _ = ledger.list_jobs("hub1", states={JobState.CANCELLED})
    assert [j.job_id for j in cancelled] == [made[1].job_id]
    assert len(ledger.list_jobs()[0]) == 6
    assert [j.job_id for j in ledger.iter_active("hub1")] == [made[i].job_id for i in (0, 2, 3, 4)]


def test_claimers_racing_on_a_released_slot_one_winner_per_round(azurite: Azurite, ledger: Ledger) -> None:
    """The slot row exists and is free: every claimer reads the same ETag, so only If-Match on the swap can keep the
    others out (the creation race above never reaches the swap)."""
    claimers, rounds = 12, 15
    slots = HubSlot(ledger.table)
    assert slots.claim("hub1", "first", now=NOW) and slots.release("hub1", "first", now=NOW)
    mine = [HubSlot(fresh_ledger(azurite, ledger.table.table_name).table) for _ in range(claimers)]
    barrier = threading.Barrier(claimers)
    winners: list[list[str]] = [[] for _ in range(rounds)]
    holders: list[str | None] = []
    errors: list[BaseException] = []

    def claim(n: int) -> None:
        try:
            for r in range(rounds):
                barrier.wait()  # all read the released row's ETag together
                if mine[n].claim("hub1", f"job-{r}-{n}", now=NOW):
                    winners[r].append(f"job-{r}-{n}")
                barrier.wait()  # everyone is done with this round
                if n == 0:
                    # the row's holder, not the claimers' say-so: release it for the next round
                    holder = slots.holder("hub1")
                    holders.append(holder)
                    if holder is not None:
                        slots.release("hub1", holder, now=NOW)
                barrier.wait()
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(claimers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert [len(w) for w in winners] == [1] * rounds, winners
    assert holders == [w[0] for w in winners], "the one winner is the one the row names"
    assert slots.holder("hub1") is None
