"""Verifying a migration, device by device (``shared.fleet.compare``): what counts as a difference, what the
service explains, and Edge hierarchies compared by parent device, not by each hub's scopes."""

from __future__ import annotations

from typing import Any

from shared.fleet import Device
from shared.fleet.compare import Census, Verification

KEY = {"type": "sas", "symmetricKey": {"primaryKey": "a2V5", "secondaryKey": "a2V5"}}


def device(device_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": device_id, "status": "enabled", "authentication": KEY, "tags": {}, **fields}


def joined(source: list[dict[str, Any]], target: list[dict[str, Any]]) -> Device:
    d = Device(source[0]["id"] if source else target[0]["id"])
    d.lines = [(n, doc) for n, doc in enumerate(source, 1)]
    d.current = {doc.get("moduleId"): doc for doc in target}
    return d


def verify(pairs: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]]) -> Verification:
    src, dst = Census(), Census()
    for source, target in pairs:
        for doc in source:
            src.see(doc)
        for doc in target:
            dst.see(doc)
    v = Verification("stagehub", src, dst)
    for source, target in pairs:
        v.add(joined(source, target))
    return v


def test_alike_devices_are_equal_whatever_each_hub_generates() -> None:
    a = device("d", eTag="AAA", generationId="1", tags={"x": 1})
    b = device("d", eTag="BBB", generationId="2", tags={"x": 1}, connectionState="Connected")
    v = verify([([a], [b])])
    assert (v.equal, v.different, v.missing, v.clean) == (1, 0, 0, True)


def test_a_changed_field_a_missing_device_and_a_missing_module_need_a_look() -> None:
    v = verify(
        [
            ([device("a", status="disabled")], [device("a")]),
            ([device("b")], []),
            ([device("c"), {"id": "c", "moduleId": "m", "authentication": KEY}], [device("c")]),
        ]
    )
    assert (v.equal, v.different, v.missing, v.clean) == (0, 2, 1, False)
    found = {(d.device_id, d.module_id): d.fields for d in v.shown}
    assert found == {("a", None): ("status",), ("b", None): ("missing",), ("c", "m"): ("missing",)}


def test_edge_system_modules_with_keys_of_their_own_are_explained_not_different() -> None:
    edge = {"capabilities": {"iotEdge": True}, "deviceScope": "ms-azure-iot-edge://gw-1"}
    other = {"capabilities": {"iotEdge": True}, "deviceScope": "ms-azure-iot-edge://gw-2"}
    agent = {"id": "gw", "moduleId": "$edgeAgent", "authentication": KEY}
    theirs = {**agent, "authentication": {"type": "sas", "symmetricKey": {"primaryKey": "b3Ro", "secondaryKey": "x"}}}
    v = verify([([device("gw", **edge), agent], [device("gw", **other), theirs])])
    assert (v.equal, v.explained, v.different) == (0, 1, 0)
    assert v.explained_shown[0].module_id == "$edgeAgent" and "IoT Edge system module" in v.explained_shown[0].why


def test_a_hierarchy_is_compared_by_parent_device_not_by_scope() -> None:
    gw_src = device("gw", capabilities={"iotEdge": True}, deviceScope="ms-azure-iot-edge://gw-1")
    gw_dst = device("gw", capabilities={"iotEdge": True}, deviceScope="ms-azure-iot-edge://gw-9")
    leaf_src = device("leaf", deviceScope="ms-azure-iot-edge://gw-1")
    same_parent = device("leaf", deviceScope="ms-azure-iot-edge://gw-9")  # another scope, the same parent
    v = verify([([gw_src], [gw_dst]), ([leaf_src], [same_parent])])
    assert (v.equal, v.different) == (2, 0)

    orphan = device("leaf")  # the hierarchy did not come along
    v = verify([([gw_src], [gw_dst]), ([leaf_src], [orphan])])
    assert v.different == 1
    [diff] = v.shown
    assert diff.fields == ("parent",) and diff.why == "its parent Edge device is gw in the source and none in stagehub"


def test_devices_only_the_target_has_are_counted_apart() -> None:
    v = verify([([device("a")], [device("a")])])
    assert v.only_in_target(5) == 4
