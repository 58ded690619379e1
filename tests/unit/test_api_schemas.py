"""The HTTP input checks: one schema per route, unknown fields refused with a did-you-mean, query values typed,
bodies capped, and every refusal a 4xx with a named field and a message, never an exception."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from shared import api
from shared import api_schemas as schemas
from shared.api_schemas import ApiError, Inputs, Request, Route, check
from shared.ledger import new_job_id

ROUTES = [v for v in vars(schemas).values() if isinstance(v, Route)]
JOB = "8234567890123-0a1b2c"


def refused(route: Route, **request: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        check(route, Request(**request))
    assert caught.value.message
    return caught.value


def body(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def test_every_route_declares_valid_schemas_and_function_app_uses_each() -> None:
    assert len(ROUTES) == 24
    assert set(map(id, schemas.ROUTES)) == set(map(id, ROUTES))  # the OpenAPI document lists every route
    for route in ROUTES:
        for schema in (route.query, route.body or schemas.NONE, route.path):
            assert schema["type"] == "object" and schema["additionalProperties"] is False, route.name
            for name, prop in schema["properties"].items():
                assert prop["description"].startswith("must "), (route.name, name)
    # Read from the source: get_functions() may run once per process (test_layout calls it).
    source = (Path(__file__).resolve().parents[2] / "function_app.py").read_text()
    routes = set(re.findall(r'@app\.route\(route="([^"]+)", methods=\["(\w+)"\]', source))
    assert {(r.name.split(" ")[1].removeprefix("/api/"), r.name.split(" ")[0]) for r in ROUTES} == routes


def test_job_ids_the_ledger_makes_pass_the_job_id_pattern() -> None:
    job_id = new_job_id(datetime.now(UTC))
    assert check(schemas.GET_JOB, Request(path={"hub": "devhub", "job_id": job_id})).path["job_id"] == job_id
    for bad in ("garbage", JOB + "0", JOB.upper(), "' or ''='"):
        e = refused(schemas.GET_JOB, path={"hub": "devhub", "job_id": bad})
        assert (e.status, e.code, e.extra["field"]) == (400, "InvalidField", "job_id")


@pytest.mark.parametrize(
    ("doc", "code", "field", "says"),
    [
        ({"hubb": "devhub"}, "UnknownField", "hubb", 'did you mean "hub"?'),
        ({"includekeys": True}, "UnknownField", "includekeys", 'did you mean "includeKeys"?'),
        ({"zzz": 1}, "UnknownField", "zzz", "the fields are hub, includeKeys"),
        ({"hub": ["devhub"]}, "InvalidField", "hub", "got an array"),
        ({"hub": {"a": 1}}, "InvalidField", "hub", "got an object"),
        ({"hub": "x" * 51}, "InvalidField", "hub", "1-50 characters"),
        ({"hub": "x" * 9000}, "InvalidField", "hub", "xxx...)"),
        ({"includeKeys": "yes"}, "InvalidField", "includeKeys", "must be true or false"),
    ],
)
def test_export_body_fields(doc: dict[str, Any], code: str, field: str, says: str) -> None:
    e = refused(schemas.EXPORTS, body=body(doc))
    assert (e.status, e.code, e.extra["field"]) == (400, code, field)
    assert says in e.message


@pytest.mark.parametrize(
    ("blob", "ok"),
    [
        ("uploads/x.jsonl", True),
        ("uploads/prodhub/march.jsonl", True),
        ("abc/" + "n" * 1024, True),
        ("uploads/", False),
        ("uploads/dir/", False),
        ("/x.jsonl", False),
        ("nothere.jsonl", False),
        ("Bad_Container!/x.jsonl", False),
        ("ab/x.jsonl", False),
        ("double--hyphen/x.jsonl", False),
        ("-uploads/x.jsonl", False),
        ("c" * 64 + "/x.jsonl", False),
        ("abc/" + "n" * 1025, False),
        ("uploads/x\n.jsonl", False),
    ],
)
def test_blob_is_container_slash_name(blob: str, ok: bool) -> None:
    if ok:
        assert check(schemas.IMPORTS, Request(body=body({"blob": blob}))).body == {"blob": blob}
        return
    e = refused(schemas.IMPORTS, body=body({"blob": blob}))
    assert (e.status, e.code, e.extra["field"]) == (400, "InvalidField", "blob")
    assert "<container>/<name>" in e.message and "container name is 3-63 lowercase letters" in e.message


def test_a_missing_field_is_named_and_a_typo_explains_it_first() -> None:
    e = refused(schemas.IMPORTS)
    assert (e.code, e.extra["field"]) == ("MissingField", "blob") and "<container>/<name>" in e.message
    e = refused(schemas.IMPORTS, body=body({"blobs": "uploads/x.jsonl"}))
    assert (e.code, e.message) == ("UnknownField", 'unknown field "blobs" in the body: did you mean "blob"?')


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"{not json", "not JSON"),
        (b"[1]", "must be a JSON object, not an array"),
        (b'"x"', "not a string"),
        (b"null", "not null"),
        (b"\xff\xfe\xfa", "not JSON"),
        (b"[" * 30_000 + b"]" * 30_000, "nested too deeply"),  # under the 64 KiB cap, past the parser's stack
        (b'{"hub": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", "nested too deeply"),
        (b'{"limit": ' + b"9" * 5000 + b"}", "not JSON"),  # int() refuses over 4300 digits
    ],
)
def test_bad_json_is_a_400(raw: bytes, says: str) -> None:
    e = refused(schemas.EXPORTS, body=raw)
    assert (e.status, e.code) == (400, "InvalidJson") and says in e.message


def test_bodies_are_capped_per_kind() -> None:
    e = refused(schemas.EXPORTS, body=b" " * (64 * 1024 + 1))
    assert (e.status, e.code, e.extra["limit"]) == (413, "BodyTooLarge", 64 * 1024)
    assert check(schemas.EXPORTS, Request(body=b" " * (64 * 1024))).body == {}
    ndjson = {"content_type": "application/x-ndjson; charset=utf-8"}
    e = refused(schemas.IMPORTS, body=b"\n" * (64 * 2**20 + 1), **ndjson)
    assert (e.status, e.code) == (413, "BodyTooLarge") and "uploads/ container" in e.message
    assert check(schemas.IMPORTS, Request(body=b'{"id": "d"}\n', **ndjson)).raw == b'{"id": "d"}\n'
    assert refused(schemas.IMPORTS, body=b" \n", **ndjson).code == "EmptyBody"
    # The data-export file at the document's own cap, whatever its content type.
    e = refused(schemas.CENTRAL_PLAN, body=b" " * (4 * 2**20 + 1), content_type="application/json")
    assert (e.status, e.code) == (413, "BodyTooLarge")
    assert check(schemas.CENTRAL_APPLY, Request(body=b"{}")).raw == b"{}"
    # A route that takes no body takes nothing in one either.
    assert check(schemas.CENTRAL_BACKUP, Request(body=b"{}")) == Inputs({}, {}, {})
    assert refused(schemas.CENTRAL_BACKUP, body=body({"x": 1})).message.endswith("it takes none")


def test_query_values_are_typed_by_their_schema() -> None:
    q = check(schemas.LIST_JOBS, Request(query={"limit": "7", "state": "queued, running", "after": JOB}))
    assert q.query == {"limit": 7, "state": ["queued", "running"], "after": JOB}
    assert check(schemas.EXPORTS, Request(query={"includeKeys": "TRUE"})).query == {"includeKeys": True}
    # blank values are no filter; the function key is not an input
    assert check(schemas.LIST_JOBS, Request(query={"hub": "", "after": "", "code": "k"})).query == {}
    cases: list[tuple[Mapping[str, str], str, str]] = [
        ({"after": "garbage"}, "after", "previous page gave as next"),
        ({"limit": "0"}, "limit", "from 1 to 200"),
        ({"limit": "201"}, "limit", "from 1 to 200"),
        ({"limit": "ten"}, "limit", "from 1 to 200"),
        ({"limit": "9" * 40}, "limit", "from 1 to 200"),
        ({"state": "done"}, "state", "comma-separated list of: queued"),
        ({"hub": "h" * 51}, "hub", "configured hub"),
    ]
    for query, field, says in cases:
        e = refused(schemas.LIST_JOBS, query=query)
        assert (e.code, e.extra["field"]) == ("InvalidField", field) and says in e.message, query
    e = refused(schemas.LIST_JOBS, query={"stat": "queued"})
    assert (e.code, e.message) == ("UnknownField", 'unknown field "stat" in the query: did you mean "state"?')
    assert refused(schemas.GET_JOB, path={"hub": "devhub", "job_id": JOB}, query={"x": "1"}).code == "UnknownField"


# --- the endpoints: checks before services, and the replies -----------------------------------------------


def never() -> Any:
    raise AssertionError("bad input must be refused before the services are built")


def test_refused_input_never_builds_the_services_and_is_answered_as_json() -> None:
    reply = api.start_export(never, Request(body=body({"hubb": "devhub"})))
    assert reply.status == 400
    assert reply.body["error"] == {
        "code": "UnknownField",
        "message": 'unknown field "hubb" in the body: did you mean "hub"?',
        "field": "hubb",
    }
    assert api.list_jobs(never, Request(query={"after": "garbage"})).status == 400
    assert api.central_plan(never, Request()).body["error"]["code"] == "EmptyBody"


def test_health_needs_no_services() -> None:
    assert api.health(Request()) == api.Reply(200, {"status": "ok"})
    assert api.health(Request(query={"x": "1"})).status == 400


def test_health_names_the_instance_that_answers() -> None:
    assert api.health(Request(), {"IOTJOBS_INSTANCE_ID": "stack-1"}).body == {"status": "ok", "instance": "stack-1"}
    assert api.health(Request(), {"WEBSITE_SITE_NAME": "func-abc"}).body == {"status": "ok", "instance": "func-abc"}
    assert api.health(Request(), {}).body == {"status": "ok"}


class _NoCentral:
    """Just enough of Services for the routes that read the ledger or need IoT Central."""

    central = None

    def __init__(self) -> None:
        self.read: list[tuple[str | None, str | None]] = []
        self.ledger = self
        self.storage = self

    def list_jobs(self, hub: str | None, **kw: Any) -> tuple[list[Any], None]:
        self.read.append((hub, None))
        return [], None

    def get(self, hub: str, job_id: str) -> Any:
        from shared.ledger import JobNotFound

        self.read.append((hub, job_id))
        raise JobNotFound(job_id)


def test_central_off_its_calls_are_404_with_the_setting_and_its_jobs_stay_readable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    svc = _NoCentral()
    monkeypatch.setattr(api, "Services", _NoCentral)  # the endpoints take an instance as the services
    for endpoint, req in [
        (api.central_plan, Request(body=b"{}")),
        (api.central_apply, Request(body=b"{}")),
        (api.central_backup, Request()),
    ]:
        reply = endpoint(svc, req)  # type: ignore[arg-type]
        assert reply.status == 404 and reply.body["error"]["code"] == "CentralNotConfigured"
        assert "IOTCENTRAL_APP_URL" in reply.body["error"]["message"]
    assert api.list_jobs(svc, Request(query={"hub": "central"})).status == 200  # type: ignore[arg-type]
    reply = api.get_job(svc, Request(path={"hub": "central", "job_id": JOB}))  # type: ignore[arg-type]
    assert reply.body["error"]["code"] == "JobNotFound"  # looked up, not refused as an unknown hub
    assert svc.read == [("central", None), ("central", JOB)]
