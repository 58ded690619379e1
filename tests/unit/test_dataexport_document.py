"""The declarative data-export file: every problem located and explained, secrets only as references, and the
comparison rules that keep masked secrets from looking like changes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.dataexport import Action, DocumentError, make_plan, parse, resolve
from shared.dataexport.plan import merge_diff
from shared.dataexport.rules import same_secret


def problems(doc: Any) -> list[str]:
    raw = doc if isinstance(doc, bytes) else json.dumps(doc, indent=2).encode()
    with pytest.raises(DocumentError) as caught:
        parse(raw)
    return [str(p) for p in caught.value.problems]


def webhook(**extra: Any) -> dict[str, Any]:
    return {"displayName": "w", "type": "webhook@v1", "url": "https://example.com/h", **extra}


def test_syntax_errors_give_the_line() -> None:
    assert problems(b'{\n  "destinations": {\n    "a": {,}\n  }\n}') == [
        "(file) (line 3): not valid JSON: Expecting property name enclosed in double quotes (column 11)"
    ]
    assert problems(b"\xff\xfe") == ["(file): not UTF-8 (byte 0); save the file as UTF-8"]
    assert problems([]) == ['(file): must be a JSON object with "destinations" and "exports"']
    # Under the size cap but deeper than the parser's stack (a RecursionError, once a 500 from the API and a
    # failing blob trigger): a problem like any other.
    assert problems(b"[" * 100_000 + b"]" * 100_000) == ["(file): nested too deeply to be a data-export file"]


def test_literal_and_masked_secrets_are_refused_without_echoing_them() -> None:
    doc = {
        "destinations": {
            "blob": {
                "displayName": "b",
                "type": "blobstorage@v1",
                "authorization": {
                    "type": "connectionString",
                    "connectionString": "AccountName=a;AccountKey=TOPSECRET",
                    "containerName": "c",
                },
            },
            "hook": webhook(headerCustomizations={"k": {"value": "*****", "secret": True}}),
        }
    }
    found = problems(doc)
    assert found == [
        "destinations.blob.authorization.connectionString (line 3): holds a literal secret; put the secret in an "
        'app setting and write {"appSetting": "<SETTING NAME>"} here',
        "destinations.hook.headerCustomizations.k.value (line 12): holds a masked value read back from IoT Central; "
        'put the secret in an app setting and write {"appSetting": "<SETTING NAME>"} here',
    ]
    assert "TOPSECRET" not in "".join(found)


def test_unknown_fields_get_a_hint_and_every_problem_is_listed() -> None:
    doc = {
        "prune": "yes",
        "destinations": {
            "bad id!": webhook(url="http://plain.example.com"),
            "x": {"displayName": "x", "type": "blobstorage@v1", "authorizaton": {}},
            "y": {"displayName": "y", "type": "kafka@v1"},
        },
        "exports": {
            "e": {
                "displayName": "e",
                "enabled": "true",
                "source": "telemtry",
                "enrichments": {"t": {"path": "$templateName"}},
                "destinations": [{"id": "x"}, {"id": "x"}],
            }
        },
    }
    found = "\n".join(problems(doc))
    for expected in (
        "prune: must be true or false",
        "destinations.bad id! (line 4): the id may hold only letters, digits",
        "destinations.bad id!.url (line 4): must be an https:// URL",
        "destinations.x.authorizaton (line 9): unknown field; did you mean 'authorization'?",
        "destinations.y.type (line 14): must be one of blobstorage@v1",
        "exports.e.enabled (line 20): required: true or false",
        "exports.e.source (line 20): must be one of telemetry",
        "exports.e.enrichments.t.path (line 20): unknown system property; did you mean $templateDisplayName?",
        "exports.e.destinations[1].id (line 20): destination 'x' is listed twice",
    ):
        assert expected in found, expected


def test_backups_read_only_fields_are_ignored() -> None:
    doc = parse(
        json.dumps(
            {
                "app": "https://x.azureiotcentral.com",
                "takenAt": "2026-11-21T02:00:00+00:00",
                "destinations": {"w": {**webhook(), "id": "w", "status": "healthy", "errors": []}},
                "exports": {},
            }
        ).encode()
    )
    assert doc.destinations["w"] == webhook()


def test_resolve_names_missing_settings_and_bad_values_without_showing_them() -> None:
    doc = parse(
        json.dumps(
            {
                "destinations": {
                    "eh": {
                        "displayName": "e",
                        "type": "eventhubs@v1",
                        "authorization": {"type": "connectionString", "connectionString": {"appSetting": "EH"}},
                    },
                    "hook": webhook(authorization={"type": "header", "value": {"appSetting": "HOOK_AUTH"}}),
                }
            }
        ).encode()
    )
    assert doc.settings() == {"EH", "HOOK_AUTH"}
    with pytest.raises(DocumentError) as caught:
        resolve(doc, {"EH": "Endpoint=sb://n/;SharedAccessKeyName=k;SharedAccessKey=SECRETKEY"})
    text = [str(p) for p in caught.value.problems]
    assert text == [
        "destinations.eh.authorization.connectionString: the connection string in 'EH' lacks "
        "EntityPath=<name of the hub/queue/topic>",
        "destinations.hook.authorization.value: app setting 'HOOK_AUTH' is not set (or empty): add it to the app's "
        "settings",
    ]
    assert "SECRETKEY" not in "".join(text)
    resolved = resolve(doc, {"EH": "Endpoint=sb://n/;SharedAccessKey=k;EntityPath=e", "HOOK_AUTH": "Bearer t"})
    assert resolved["hook"]["authorization"] == {"type": "header", "value": "Bearer t"}


def test_a_reference_to_a_destination_that_would_not_exist_is_refused() -> None:
    doc = parse(
        json.dumps(
            {
                "prune": True,
                "exports": {
                    "e": {"displayName": "e", "enabled": True, "source": "audit", "destinations": [{"id": "d"}]}
                },
            }
        ).encode()
    )
    current = {"d": {"id": "d", **webhook()}}
    with pytest.raises(DocumentError, match="prune is on and it is not in the file"):
        make_plan(doc, {}, current, {})
    doc.prune = False
    plan = make_plan(doc, {}, current, {})
    assert [(s.action, s.item_id) for s in plan.steps] == [(Action.CREATE, "e")]
    assert plan.unmanaged == {"destinations": ["d"], "exports": []}


@pytest.mark.parametrize(
    ("desired", "current", "same"),
    [
        ("AccountName=a;AccountKey=k1", "AccountName=a;AccountKey=*****", True),
        ("AccountName=b;AccountKey=k1", "AccountName=a;AccountKey=*****", False),
        ("AccountName=a;AccountKey=k1;EndpointSuffix=x", "AccountName=a;AccountKey=*****", False),
        ("anything", "*****", True),
        ("s1", "s2", False),
        ("s1", None, False),
    ],
)
def test_same_secret(desired: str, current: str | None, same: bool) -> None:
    assert same_secret(desired, current) is same


def test_merge_diff_is_a_merge_patch() -> None:
    current = {"a": 1, "gone": 2, "auth": {"type": "x", "key": "*****", "old": 1}}
    desired = {"a": 1, "new": 3, "auth": {"type": "y", "key": "k"}}
    assert merge_diff(current, desired, {("auth", "key")}, False) == {
        "gone": None,
        "new": 3,
        "auth": {"old": None, "type": "y"},
    }
    assert merge_diff(current, desired, {("auth", "key")}, True)["auth"]["key"] == "k"


def test_everything_under_central_is_a_data_export_file() -> None:
    from shared.central import is_central_upload

    assert is_central_upload("central/dataexport.json") and is_central_upload("central/notes.txt")
    assert not is_central_upload("devhub/central/x.json") and not is_central_upload("central.jsonl")
    with pytest.raises(DocumentError, match="not valid JSON"):
        parse(b"id,status\nsensor-1,enabled\n")
