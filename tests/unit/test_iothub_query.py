"""The hub emulator's query language (emulators/iothub/query.py) and the store's query index (store.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from emulators.iothub import query
from emulators.iothub.errors import ApiError
from emulators.iothub.model import apply, twin_json
from emulators.iothub.query import AllOf, AnyOf, Cmp, parse
from emulators.iothub.store import Store

TWIN: dict[str, Any] = {
    "deviceId": "d-1",
    "status": "enabled",
    "connectionState": "Disconnected",
    "lastActivityTime": "2026-03-01T10:00:00Z",
    "tags": {"site": "oslo", "floor": 3, "ok": True, "none": None, "list": [1, 2], "loc": {"region": "EU"}},
    "properties": {"desired": {"interval": 30, "$version": 4}, "reported": {"fw": "1.2.3"}},
    "capabilities": {"iotEdge": False},
}


def where(condition: str, doc: dict[str, Any] = TWIN) -> bool:
    return parse(f"SELECT * FROM devices WHERE {condition}").matches(doc)  # noqa: S608 (IoT Hub query text)


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("tags.site = 'oslo'", True),
        ('tags.site = "oslo"', True),
        ("tags.site != 'lyon'", True),
        ("tags.site <> 'oslo'", False),
        ("tags.floor < 4", True),
        ("tags.floor > 3", False),
        ("tags.floor <= 3", True),
        ("tags.floor >= 3.5", False),
        ("3 = tags.floor", True),
        ("4 > tags.floor", True),
        ("tags.floor = '3'", False),  # a string is not a number
        ("tags.floor != '3'", False),  # mismatched types: undefined, so not selected
        ("tags.site < 'p'", True),
        ("tags.site > 4", False),
        ("tags.ok = true", True),
        ("tags.ok = 1", False),
        ("tags.none = null", True),
        ("tags.missing = null", False),
        ("tags.missing != 'x'", False),  # undefined
        ("tags.loc = 'EU'", False),  # objects compare to nothing
        ("tags.loc.region = 'EU'", True),
        ("tags.site = 'oslo' OR tags.site = 'lyon'", True),
        ("tags.site = 'lyon' OR tags.floor = 9", False),
        ("tags.site = 'oslo' AND tags.floor = 9", False),
        ("NOT tags.site = 'lyon'", True),
        ("NOT tags.missing = 'x'", False),  # NOT undefined is undefined
        ("NOT (tags.site = 'lyon' OR tags.floor = 9)", True),
        ("(tags.site = 'lyon' OR tags.floor = 3) AND status = 'enabled'", True),
        ("tags.site = 'lyon' OR tags.floor = 3 AND status = 'disabled'", False),  # AND binds tighter than OR
        ("tags.site IN ['lyon', 'oslo']", True),
        ("tags.site IN ['lyon', 3]", False),
        ("tags.site NIN ['lyon', 'porto']", True),
        ("tags.site NIN ['oslo']", False),
        ("tags.missing NIN ['oslo']", False),
        ("tags.floor IN [-1, 3]", True),
        ("tags.none IN ['x', null]", True),
        ("tags.site IN []", False),
        ("IS_DEFINED(tags.site)", True),
        ("IS_DEFINED(tags.none)", True),  # assigned a value, null included (the docs)
        ("is_defined(tags.missing)", False),
        ("NOT IS_DEFINED(tags.missing)", True),
        ("STARTSWITH(tags.site, 'os')", True),
        ("STARTS_WITH(tags.site, 'lo')", False),
        ("ENDSWITH(deviceId, '-1')", True),
        ("ENDS_WITH(tags.floor, '3')", False),
        ("lastActivityTime > '2026-01-01'", True),
        ("lastActivityTime < '2026-01-01'", False),
        ("connectionState = 'Disconnected'", True),
        ("ConnectionState = 'Disconnected'", True),  # the twin's own properties: any case (inferred)
        ("DEVICEID = 'd-1'", True),
        ("tags.Site = 'oslo'", False),  # tags keep their case
        ("tags.floor + 1 = 4", True),
        ("tags.floor * 2 - 1 = 5", True),
        ("tags.floor / 0 = 1", False),
        ("tags.floor % 2 = 1", True),
        ("-tags.floor = -3", True),
        ("tags.floor = 0x3", True),
        ("properties.desired.interval = 30", True),
        ("properties.desired.$version = 4", True),
        ("properties.reported.fw = '1.2.3'", True),
        ("capabilities.iotEdge = false", True),
        ("tags.site = 'o\\'slo'", False),
        ("true", True),
        ("'yes'", False),  # only Boolean true selects
        ("tags.list = 1", False),
    ],
)
def test_conditions(condition: str, expected: bool) -> None:
    assert where(condition) is expected


def test_string_escapes() -> None:
    doc = {**TWIN, "tags": {"q": 'it\'s "x" \\ é'}}
    assert where("tags.q = 'it\\'s \"x\" \\\\ \\u00e9'", doc)
    assert where('tags.q = "it\'s \\"x\\" \\\\ é"', doc)


def test_select_star_keywords_any_case_and_top() -> None:
    q = parse("select top 5 * from DEVICES where status = 'enabled'")
    assert (q.collection, q.select, q.top, q.aggregate) == ("devices", None, 5, False)
    assert q.project(TWIN) is TWIN


def test_projections_name_by_last_segment_or_alias_and_leave_out_undefined() -> None:
    q = parse("SELECT deviceId, tags.site, tags.loc.region AS region, tags.missing FROM devices")
    assert q.project(TWIN) == {"deviceId": "d-1", "site": "oslo", "region": "EU"}


def test_group_by_with_count_as_the_docs_show() -> None:
    q = parse(
        "SELECT properties.reported.telemetryConfig.status AS status, COUNT() AS numberOfDevices FROM devices "
        "GROUP BY properties.reported.telemetryConfig.status"
    )
    docs = [
        {"properties": {"reported": {"telemetryConfig": {"status": s}}}}
        for s in ["Success"] * 3 + ["Pending"] * 2 + ["Error"]
    ]
    rows = q.aggregate_rows(docs)
    assert sorted(rows, key=lambda r: -r["numberOfDevices"]) == [
        {"status": "Success", "numberOfDevices": 3},
        {"status": "Pending", "numberOfDevices": 2},
        {"status": "Error", "numberOfDevices": 1},
    ]


def test_aggregates_without_group_by_make_one_row() -> None:
    q = parse(
        "SELECT COUNT() AS n, SUM(tags.floor) AS s, AVG(tags.floor) AS a, MIN(tags.floor) AS lo, "
        "MAX(tags.site) AS hi FROM devices"
    )
    docs = [{"tags": {"floor": f, "site": s}} for f, s in [(1, "a"), (3, "c"), (None, "b")]]
    assert q.aggregate_rows(docs) == [{"n": 3, "s": 4, "a": 2, "lo": 1, "hi": "c"}]
    assert q.aggregate_rows([]) == [{"n": 0}]


def test_modules_collection_and_its_path_prefix() -> None:
    q = parse("SELECT * FROM devices.modules WHERE devices.modules.moduleId = 'm' AND deviceId IN ['d-1']")
    assert q.collection == "devices.modules"
    assert q.matches({"deviceId": "d-1", "moduleId": "m"})
    assert not q.matches({"deviceId": "d-1", "moduleId": "n"})


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (None, "request body"),
        ("", "request body"),
        ("SELECT", "ends too early"),
        ("SELECT * FROM devices WHERE tags.a =", "ends too early"),
        ("SELECT * FROM devices WHERE tags.a = 'x", "line 1, column 38"),
        ("SELECT * FROM devices WHERE tags.a == 'x'", "Syntax error"),
        ("SELECT * devices", "Syntax error"),
        ("SELECT * FROM devices WHERE tags.a IN ('x')", "Syntax error"),  # arrays are [...]
        ("SELECT * FROM devices WHERE CONTAINS(tags.a, 'x')", "'CONTAINS' is not supported"),
        ("SELECT * FROM devices WHERE IS_DEFINED(tags.a, tags.b)", "takes 1 argument"),
        ("SELECT * FROM devices WHERE STARTSWITH(tags.a)", "takes 2 arguments"),
        ("SELECT * FROM devices WHERE COUNT() = 1", "only allowed in the SELECT list"),
        ("SELECT * FROM devices.jobs", "devices.jobs"),
        ("SELECT * FROM twins", "Unknown collection"),
        ("SELECT COUNT() FROM devices", "AS"),
        ("SELECT COUNT(tags.a) AS n FROM devices", "takes no argument"),
        ("SELECT deviceId, COUNT() AS n FROM devices", "GROUP BY"),
        ("SELECT deviceId FROM devices GROUP BY deviceId", "needs an aggregate"),
        ("SELECT COUNT() AS n FROM devices.modules", "only on device twins"),
        ("SELECT TOP 0 * FROM devices", "TOP"),
        ("SELECT 'x' AS y FROM devices", "SELECT takes"),
        ("SELECT * FROM devices WHERE tags.a = 'x\\q'", "escape"),
        ("SELECT * FROM devices WHERE tags.a = '\\u00zz'", "escape"),
    ],
)
def test_refusals_are_400004_with_what_is_wrong(text: Any, says: str) -> None:
    with pytest.raises(ApiError) as refused:
        parse(text)
    assert refused.value.code == 400004 and refused.value.status == 400
    assert says in refused.value.message


# --- what the index answers ----------------------------------------------------------------------------


def flt(condition: str) -> Any:
    return parse(f"SELECT * FROM devices WHERE {condition}").filter()  # noqa: S608 (IoT Hub query text)


def test_filters_push_comparisons_and_their_combinations() -> None:
    assert flt("tags.site = 'a'") == Cmp("tags.site", "=", "a")
    assert flt("'a' = tags.site") == Cmp("tags.site", "=", "a")
    assert flt("5 < properties.desired.x") == Cmp("properties.desired.x", ">", 5)
    assert flt("status IN ['enabled', 'disabled']") == AnyOf(
        (Cmp("status", "=", "enabled"), Cmp("status", "=", "disabled"))
    )
    assert flt("STARTSWITH(deviceId, 'q-')") == Cmp("deviceId", "prefix", "q-")
    assert flt("connectionState = 'Connected' AND tags.x >= 'm'") == AllOf(
        (Cmp("connectionState", "=", "Connected"), Cmp("tags.x", ">=", "m"))
    )
    assert flt("tags.a = 1 OR properties.reported.b = true") == AnyOf(
        (Cmp("tags.a", "=", 1), Cmp("properties.reported.b", "=", True))
    )
    assert flt("tags.a != 'x' AND 2 != deviceId") == AllOf((Cmp("tags.a", "!=", "x"), Cmp("deviceId", "!=", 2)))
    assert flt("ENDSWITH(tags.a, 'x')") == Cmp("tags.a", "suffix", "x")
    # An AND keeps what the index answers; the rest is checked row by row.
    assert flt("tags.a = 1 AND NOT tags.b = 2") == Cmp("tags.a", "=", 1)
    assert flt("tags.a = 1 AND IS_DEFINED(tags.x)") == Cmp("tags.a", "=", 1)


@pytest.mark.parametrize(
    "condition",
    [
        "NOT tags.a = 1",  # the index cannot say what is not there
        "tags.a NIN [1]",
        "tags.a = 1 OR IS_DEFINED(tags.b)",  # one side of an OR outside the index: every twin may match
        "lastActivityTime > '2020'",  # not indexed
        "properties.desired.$version = 3",  # the twin's metadata, not a leaf the index holds
        "tags.a = null",
        "tags.a < true",
        "tags.a = tags.b",
        "tags.a IN ['x', null]",  # null is not in the index, and null IN [null] is true
    ],
)
def test_filters_leave_what_the_index_cannot_answer(condition: str) -> None:
    assert flt(condition) is None


def test_seek_terms_are_equalities_covering_every_match() -> None:
    assert query.seek_terms(flt("tags.a = 1 AND tags.b > 2")) == [Cmp("tags.a", "=", 1)]
    assert query.seek_terms(flt("tags.a IN [1, 2] AND status = 'disabled'")) == [Cmp("status", "=", "disabled")]
    assert query.seek_terms(flt("tags.a = 1 OR deviceId = 'x'")) == [Cmp("tags.a", "=", 1), Cmp("deviceId", "=", "x")]
    assert query.seek_terms(flt("tags.a = 1 OR tags.b > 2")) is None  # a range: walk the ids, checked in SQL
    assert query.seek_terms(None) is None


# --- the store's index ----------------------------------------------------------------------------------


def device(did: str, **twin: Any) -> dict[str, Any]:
    line = {"id": did, "status": twin.pop("status", "enabled"), "importMode": "create", **twin}
    record = apply(line, None, now="2026-01-01T00:00:00Z")
    assert isinstance(record, dict)
    return record


def run(store: Store, text: str, after: str | None = None) -> tuple[list[str], list[str]]:
    """(ids the store read, ids the query selects)."""
    q = parse(text)
    f = q.filter()
    read = list(store.query_devices(f, query.seek_terms(f), after, 50))
    return [r["deviceId"] for r in read], [r["deviceId"] for r in read if q.matches(twin_json(r))]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "registry.sqlite")
    devices: dict[str, dict[str, Any] | None] = {
        f"d-{i:04d}": device(
            f"d-{i:04d}",
            status="disabled" if i % 10 == 0 else "enabled",
            tags={"lot": f"lot-{i % 100:02d}", "floor": i % 7, "big": 2**70, "flag": i % 2 == 0},
            properties={"desired": {"interval": 30 if i % 3 else 60}},
        )
        for i in range(1000)
    }
    s.write(devices)
    return s


def test_an_equality_reads_only_its_twins(store: Store) -> None:
    read, selected = run(store, "SELECT * FROM devices WHERE tags.lot = 'lot-07'")
    assert read == selected == [f"d-{i:04d}" for i in range(7, 1000, 100)]


def test_in_and_or_merge_their_seeks_in_id_order_once_each(store: Store) -> None:
    read, selected = run(store, "SELECT * FROM devices WHERE tags.lot IN ['lot-07', 'lot-03'] OR deviceId = 'd-0007'")
    assert read == selected == sorted({f"d-{i:04d}" for i in range(1000) if i % 100 in (3, 7)})


def test_conditions_outside_the_seek_are_checked_in_sql(store: Store) -> None:
    read, selected = run(store, "SELECT * FROM devices WHERE tags.floor >= 6 AND properties.desired.interval = 60")
    assert read == selected == [f"d-{i:04d}" for i in range(1000) if i % 7 == 6 and i % 3 == 0]


def test_a_prefix_range_and_type_bounds(store: Store) -> None:
    assert run(store, "SELECT * FROM devices WHERE STARTSWITH(deviceId, 'd-099')")[0] == [
        f"d-{i:04d}" for i in range(990, 1000)
    ]
    assert run(store, "SELECT * FROM devices WHERE STARTSWITH(tags.lot, 'lot-9') AND tags.floor = 0")[1] == [
        f"d-{i:04d}" for i in range(1000) if i % 100 >= 90 and i % 7 == 0
    ]
    assert run(store, "SELECT * FROM devices WHERE tags.lot > 5")[0] == []  # no text is a number
    assert run(store, "SELECT * FROM devices WHERE tags.floor > 'a'")[0] == []
    assert len(run(store, "SELECT * FROM devices WHERE tags.big > 2")[1]) == 1000  # beyond 64 bits
    flags = run(store, "SELECT * FROM devices WHERE tags.flag = true")
    assert flags[0] == flags[1] and len(flags[1]) == 500


def test_not_equal_and_endswith_are_checked_in_sql(store: Store) -> None:
    read, selected = run(store, "SELECT * FROM devices WHERE ENDSWITH(deviceId, '99') AND tags.lot != 'lot-99'")
    assert read == selected == []
    read, selected = run(store, "SELECT * FROM devices WHERE ENDSWITH(tags.lot, '-42') OR ENDSWITH(deviceId, '')")
    assert len(read) == 1000  # every id ends with ''
    read, selected = run(store, "SELECT * FROM devices WHERE ENDSWITH(deviceId, '77') AND status != 'disabled'")
    assert read == selected == [f"d-{i:04d}" for i in range(77, 1000, 100) if i % 10]
    read, selected = run(store, "SELECT * FROM devices WHERE tags.floor != 0 AND tags.lot = 'lot-07'")
    assert read == selected == [f"d-{i:04d}" for i in range(7, 1000, 100) if i % 7]


def test_an_empty_in_selects_nothing(store: Store) -> None:
    assert run(store, "SELECT * FROM devices WHERE tags.lot IN [] OR deviceId IN []") == ([], [])


def test_a_walk_continues_after_the_cursor(store: Store) -> None:
    read, selected = run(store, "SELECT * FROM devices WHERE status = 'disabled'", after="d-0500")
    assert read == selected == [f"d-{i:04d}" for i in range(510, 1000, 10)]
    read, _ = run(store, "SELECT * FROM devices WHERE NOT tags.floor = 1", after="d-0990")
    assert read == [f"d-{i:04d}" for i in range(991, 1000)]  # walked: every twin after the cursor


def test_the_index_follows_updates_and_deletes(store: Store) -> None:
    changed = device("d-0007", tags={"lot": "moved"})
    store.write({"d-0007": changed, "d-0107": None})
    assert run(store, "SELECT * FROM devices WHERE tags.lot = 'lot-07'")[0] == [
        f"d-{i:04d}" for i in range(207, 1000, 100)
    ]
    assert run(store, "SELECT * FROM devices WHERE tags.lot = 'moved'")[0] == ["d-0007"]
    store.reset()
    assert run(store, "SELECT * FROM devices WHERE tags.lot = 'moved'")[0] == []


def test_lagged_twins_are_seen_as_they_were(store: Store) -> None:
    store.write(
        {"d-0007": device("d-0007", tags={"lot": "moved"}), "new": device("new", tags={"lot": "lot-07"})}, query_lag=60
    )
    # Until the lag passes, queries see d-0007 with its old tag and do not see the new device.
    assert run(store, "SELECT * FROM devices WHERE tags.lot = 'lot-07'")[1] == [
        f"d-{i:04d}" for i in range(7, 1000, 100)
    ]
    assert run(store, "SELECT * FROM devices WHERE tags.lot = 'moved'")[1] == []


def test_an_older_data_directory_is_indexed_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite"
    old = Store(path)
    old.write({"a": device("a", tags={"x": 1})})
    with old._conn() as c:  # as a data directory from before the index
        c.execute("DELETE FROM twin_index")
        c.execute("PRAGMA user_version = 0")
    old.close()
    assert run(Store(path), "SELECT * FROM devices WHERE tags.x = 1")[0] == ["a"]
