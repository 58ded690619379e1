"""Rules of the IoT Hub emulator that need no server: line application, parsing, auth, queries."""

from __future__ import annotations

import base64
import time

import pytest

from emulators.iothub import model
from emulators.iothub.auth import POLICIES, Right, authorize, sign
from emulators.iothub.errors import AuthError
from emulators.iothub.jobs import _lines
from emulators.iothub.model import DELETE, LineError, apply

NOW = "2026-01-01T00:00:00.0000000Z"
KEY16 = base64.b64encode(b"k" * 16).decode()
KEY64 = base64.b64encode(b"k" * 64).decode()


def err(line: dict[str, object], current: model.Record | None = None) -> int:
    with pytest.raises(LineError) as e:
        apply(line, current, now=NOW)
    return e.value.code


def test_create_generates_keys_and_twin() -> None:
    rec = apply({"id": "d", "status": "enabled"}, None, now=NOW)
    assert isinstance(rec, dict)
    keys = rec["authentication"]["symmetricKey"]
    assert len(base64.b64decode(keys["primaryKey"])) == 32 and keys["primaryKey"] != keys["secondaryKey"]
    assert rec["twin"]["version"] == 1 and rec["twin"]["tags"] == {}


def test_key_rules() -> None:
    assert isinstance(
        apply(
            {
                "id": "d",
                "status": "enabled",
                "authentication": {"symmetricKey": {"primaryKey": KEY16, "secondaryKey": KEY64}},
            },
            None,
            now=NOW,
        ),
        dict,
    )
    one_key = {"symmetricKey": {"primaryKey": KEY16}}
    assert err({"id": "d", "status": "enabled", "authentication": one_key}) == 400004
    too_short = base64.b64encode(b"k" * 15).decode()
    short = {"symmetricKey": {"primaryKey": too_short, "secondaryKey": too_short}}
    assert err({"id": "d", "status": "enabled", "authentication": short}) == 400004
    too_long = base64.b64encode(b"k" * 65).decode()
    long_ = {"symmetricKey": {"primaryKey": too_long, "secondaryKey": KEY16}}
    assert err({"id": "d", "status": "enabled", "authentication": long_}) == 400004
    both = {
        "symmetricKey": {"primaryKey": KEY16, "secondaryKey": KEY16},
        "x509Thumbprint": {"primaryThumbprint": "A" * 40},
    }
    assert err({"id": "d", "status": "enabled", "authentication": both}) == 400004


def test_thumbprint_and_auth_type_rules() -> None:
    ok = apply(
        {"id": "d", "status": "enabled", "authentication": {"x509Thumbprint": {"primaryThumbprint": "ab" * 32}}},
        None,
        now=NOW,
    )
    assert isinstance(ok, dict) and ok["authentication"]["type"] == "selfSigned"
    assert err({"id": "d", "status": "enabled", "authentication": {"type": "selfSigned"}}) == 400004
    assert (
        err({"id": "d", "status": "enabled", "authentication": {"x509Thumbprint": {"primaryThumbprint": "xyz"}}})
        == 400004
    )
    assert err({"id": "d", "status": "enabled", "authentication": {"type": "SELF_SIGNED"}}) == 400012
    ca = apply({"id": "d", "status": "enabled", "authentication": {"type": "certificateAuthority"}}, None, now=NOW)
    assert isinstance(ca, dict) and ca["authentication"]["symmetricKey"]["primaryKey"] is None


def test_line_identity_rules() -> None:
    assert err({"status": "enabled"}) == 400005
    assert err({"id": "has space", "status": "enabled"}) == 400004
    assert err({"id": "x" * 129, "status": "enabled"}) == 400004
    assert err({"id": "d", "status": "enabled", "importMode": "upsert"}) == 400012
    assert err({"id": "d"}) == 400012  # status is required on device lines
    assert err({"id": "d", "moduleId": "$edgeHub"}) == 400004
    # Enum names match case-insensitively, as the service's JSON deserializer does.
    rec = apply({"id": "d", "status": "Enabled", "importMode": "CreateOrUpdate"}, None, now=NOW)
    assert isinstance(rec, dict) and rec["status"] == "enabled"


def test_update_keeps_keys_when_none_given_and_delete() -> None:
    rec = apply({"id": "d", "status": "enabled"}, None, now=NOW)
    assert isinstance(rec, dict)
    updated = apply({"id": "d", "status": "disabled", "importMode": "update"}, rec, now=NOW)
    assert isinstance(updated, dict)
    assert updated["authentication"] == rec["authentication"] and updated["etag"] != rec["etag"]
    assert apply({"id": "d", "importMode": "delete"}, rec, now=NOW) is DELETE


def test_twin_limits() -> None:
    assert err({"id": "d", "status": "enabled", "tags": {"t": "x" * 9000}}) == 400004
    deep: dict[str, object] = {"v": 1}
    for _ in range(11):
        deep = {"n": deep}
    assert err({"id": "d", "status": "enabled", "properties": {"desired": deep}}) == 400004


def test_export_line_shapes_follow_the_service() -> None:
    rec = apply({"id": "d", "status": "enabled", "properties": {"desired": {"a": 1}}}, None, now=NOW)
    assert isinstance(rec, dict)
    line = model.export_line(rec, exclude_keys=True)
    # As quoted in Azure/azure-iot-sdk-csharp#1146: null authentication, "" statusReason, bare properties.
    assert line["authentication"] is None and line["statusReason"] == ""
    assert line["properties"] == {"desired": {"a": 1}, "reported": {}}
    assert model.export_line(rec, exclude_keys=False)["authentication"] == rec["authentication"]
    mod = apply({"id": "d", "moduleId": "m"}, None, now=NOW, module=True)
    assert isinstance(mod, dict)
    mline = model.export_line({**mod, "deviceId": "d"}, exclude_keys=True)
    assert mline["moduleId"] == "m" and mline["authentication"] is None
    assert mline["capabilities"] == {"iotEdge": False} and "statusReason" not in mline


@pytest.mark.parametrize("key", ["a.b", "$x", "with space", "ctl\x01", "c1\x85", ""])
def test_twin_keys_refused(key: str) -> None:
    assert err({"id": "d", "status": "enabled", "tags": {"ok": {key: 1}}}) == 400004
    assert err({"id": "d", "status": "enabled", "properties": {"desired": {key: 1}}}) == 400004


def test_twin_values_up_to_4_kb() -> None:
    fits = apply({"id": "d", "status": "enabled", "tags": {"v": "x" * 4000}}, None, now=NOW)
    assert isinstance(fits, dict)
    assert err({"id": "d", "status": "enabled", "properties": {"desired": {"v": "x" * 4200}}}) == 400004
    assert err({"id": "d", "status": "enabled", "properties": {"reported": {"k" * 1025: 1}}}) == 400004


def test_if_match_modes_without_an_etag_are_unconditional() -> None:
    current = apply({"id": "d", "status": "enabled"}, None, now=NOW)
    assert isinstance(current, dict)
    assert apply({"id": "d", "importMode": "deleteIfMatchETag"}, current, now=NOW) is DELETE
    updated = apply({"id": "d", "importMode": "updateIfMatchETag", "status": "disabled"}, current, now=NOW)
    assert isinstance(updated, dict) and updated["status"] == "disabled"
    assert err({"id": "d", "importMode": "updateIfMatchETag", "status": "enabled", "eTag": "c3RhbGU="}, current) == (
        412001
    )


def test_module_lines_use_module_codes() -> None:
    mod = apply({"id": "d", "moduleId": "m"}, None, now=NOW, module=True)
    with pytest.raises(LineError) as dup:
        apply({"id": "d", "moduleId": "m", "importMode": "create"}, mod, now=NOW, module=True)
    with pytest.raises(LineError) as missing:
        apply({"id": "d", "moduleId": "m", "importMode": "update"}, None, now=NOW, module=True)
    assert (dup.value.code, missing.value.code) == (409301, 404010)


def test_edge_devices_get_a_scope_that_stays() -> None:
    edge = apply({"id": "gw", "status": "enabled", "capabilities": {"iotEdge": True}}, None, now=NOW)
    assert isinstance(edge, dict)
    assert edge["deviceScope"] == f"ms-azure-iot-edge://gw-{edge['generationId']}"
    again = apply({"id": "gw", "status": "disabled", "capabilities": {"iotEdge": True}}, edge, now=NOW)
    assert isinstance(again, dict) and again["deviceScope"] == edge["deviceScope"]
    leaf = apply({"id": "leaf", "status": "enabled", "deviceScope": edge["deviceScope"]}, None, now=NOW)
    assert isinstance(leaf, dict) and leaf["deviceScope"] == edge["deviceScope"]


def test_configuration_rules_and_etags() -> None:
    body = {"content": {"deviceContent": {"properties.desired.x": 1}}, "targetCondition": "*", "priority": 2}
    first = model.apply_configuration(body, None, config_id="cfg-1", now=NOW)
    assert first["etag"] == "MQ==" and first["createdTimeUtc"] == NOW  # recorded: "MQ==" then "Mg=="
    second = model.apply_configuration({**body, "priority": 3}, first, config_id="cfg-1", now="later")
    assert second["etag"] == "Mg==" and second["createdTimeUtc"] == NOW and second["priority"] == 3
    with pytest.raises(LineError) as upper:
        model.apply_configuration(body, None, config_id="Cfg", now=NOW)
    with pytest.raises(LineError) as changed:
        model.apply_configuration({**body, "content": {"deviceContent": {"y": 2}}}, first, config_id="cfg-1", now=NOW)
    with pytest.raises(LineError) as two:
        two_kinds = {"deviceContent": {"a": 1}, "moduleContent": {"b": 1}}
        model.apply_configuration({"content": two_kinds}, None, config_id="cfg-2", now=NOW)
    assert (upper.value.code, changed.value.code, two.value.code) == (400004, 400901, 400901)


def test_lines_split_across_chunks_with_bom_and_crlf() -> None:
    chunks = [b'\xef\xbb\xbf{"a":1}\r\n{"b', b'":2}\n\n{"c":3}']
    assert [raw for raw, _ in _lines(iter(chunks))] == [b'{"a":1}\r', b'{"b":2}', b"", b'{"c":3}']


def test_strip_etag() -> None:
    assert model.strip_etag('W/"abc"') == model.strip_etag('"abc"') == model.strip_etag("abc") == "abc"


def test_authorize_round_trip_and_rights() -> None:
    host = "127.0.0.1:9999"
    tok = sign(host, POLICIES["registryRead"].key, int(time.time()) + 60, "registryRead")
    assert authorize(tok, host=host, path="/devices", needed=Right.REGISTRY_READ) == "registryRead"
    with pytest.raises(AuthError) as denied:
        authorize(tok, host=host, path="/devices", needed=Right.REGISTRY_WRITE)
    assert denied.value.code == 401003
    scoped = sign(f"{host}/devices/a", POLICIES["iothubowner"].key, int(time.time()) + 60, "iothubowner")
    assert authorize(scoped, host=host, path="/devices/a", needed=Right.REGISTRY_READ)
    with pytest.raises(AuthError):
        authorize(scoped, host=host, path="/devices/b", needed=Right.REGISTRY_READ)
