"""The device documents' key redaction and the count query made from a device query."""

from __future__ import annotations

from shared.inventory import count_query, redact


def test_every_symmetric_key_is_nulled_however_deep_and_the_input_is_untouched() -> None:
    identity = {
        "deviceId": "d",
        "authentication": {"type": "sas", "symmetricKey": {"primaryKey": "p==", "secondaryKey": "s=="}},
        "modules": [{"authentication": {"symmetricKey": {"primaryKey": "m=="}}}],
    }
    shown = redact(identity)
    assert shown["authentication"]["symmetricKey"] == {"primaryKey": None, "secondaryKey": None}
    assert shown["modules"][0]["authentication"]["symmetricKey"] == {"primaryKey": None}
    assert "==" not in str(shown) and identity["authentication"]["symmetricKey"]["primaryKey"] == "p=="


def test_a_count_keeps_the_query_s_where_clause() -> None:
    assert count_query(None) == "SELECT COUNT() AS numberOfDevices FROM devices"
    where = "SELECT * FROM devices WHERE tags.site = 'a' AND status = 'enabled'"
    assert (
        count_query(where)
        == "SELECT COUNT() AS numberOfDevices FROM devices WHERE tags.site = 'a' AND status = 'enabled'"
    )
    assert count_query("select *\nfrom devices\nwhere status = 'disabled'").endswith(
        "devices where status = 'disabled'"
    )
