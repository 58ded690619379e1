"""Repeated ids found with bounded memory: across buckets, in any order, and when a bucket must be spread again."""

from __future__ import annotations

import random

import pytest

from shared.devices.seen import SeenIds


def duplicates(ids: list[str], *, batch: int = 1000, max_distinct: int = 100_000) -> tuple[dict[str, list[int]], int]:
    seen = SeenIds(max_distinct=max_distinct)
    try:
        for start in range(0, len(ids), batch):
            keys = ids[start : start + batch]
            seen.extend(keys, list(range(start + 1, start + 1 + len(keys))))
        return dict(seen.duplicates()), seen.respread
    finally:
        seen.close()


@pytest.mark.parametrize("shuffle", [False, True])
def test_every_repeat_is_found_with_all_its_lines_in_order(shuffle: bool) -> None:
    ids = [f"dev-{i:05d}" for i in range(20_000)]
    if shuffle:
        random.Random(3).shuffle(ids)
    ids[15_000] = ids[10]  # across batches
    ids[11] = ids[10]  # within one batch
    ids.append(ids[10])
    ids.append("dev-x\x00telemetry")  # a module is its own id
    ids.append("dev-x")
    found, respread = duplicates(ids)
    assert found == {ids[10]: [11, 12, 15_001, 20_001]}
    assert respread == 0


def test_a_bucket_with_too_many_ids_is_spread_again_and_nothing_is_missed() -> None:
    ids = [f"d{i}" for i in range(5_000)] + ["d7", "d4999", "d7"]
    found, respread = duplicates(ids, max_distinct=20)  # ~78 distinct ids per bucket: every bucket is spread again
    assert found == {"d7": [8, 5_001, 5_003], "d4999": [5_000, 5_002]}
    assert respread >= 64


def test_one_id_repeated_cannot_be_spread_and_is_still_counted() -> None:
    found, _ = duplicates(["same"] * 3_000, max_distinct=1)
    assert found == {"same": list(range(1, 3_001))}


def test_nothing_seen_nothing_found() -> None:
    assert duplicates([]) == ({}, 0)
