"""Repeated ids found with bounded memory: across buckets, in any order, and when a bucket must be spread again."""

from __future__ import annotations

import random

import pytest

from shared.devices.seen import MAX_DEPTH, SeenIds


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


def test_a_bucket_that_spreading_cannot_shrink_is_checked_past_the_depth_limit() -> None:
    # One id repeated always hashes to one bucket: with no distinct id allowed, each level spreads it again until
    # the depth limit, where it is checked whatever its size (without the limit this would never end).
    found, respread = duplicates(["same"] * 3_000 + ["other"], max_distinct=0)
    assert found == {"same": list(range(1, 3_001))}
    # the bucket of "same" at every level, and that of "other" too unless the (per-process) hash put them together
    assert MAX_DEPTH <= respread <= 2 * MAX_DEPTH


def test_nothing_seen_nothing_found() -> None:
    assert duplicates([]) == ({}, 0)
