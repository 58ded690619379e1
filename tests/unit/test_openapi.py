"""The OpenAPI document says what the app serves: the same paths and methods as function_app's HTTP routes, the
same key requirement, and the schemas the checks use; and it is a valid OpenAPI 3.1 document."""

from __future__ import annotations

import json
from typing import Any

from openapi_spec_validator import validate

from shared import api_schemas
from shared.api import Request, openapi
from shared.openapi import document

from . import registered


def _served() -> dict[tuple[str, str], str]:
    """(METHOD, /api/route) -> auth level, for every HTTP function the app registers."""
    served = {}
    for fn in registered.functions().values():
        trigger = fn.get_trigger().get_dict_repr()
        if trigger["type"] != "httpTrigger":
            continue
        for method in trigger["methods"]:
            served[(str(method).upper(), f"/api/{trigger['route']}")] = str(trigger["authLevel"]).lower()
    return served


def _documented(doc: dict[str, Any]) -> dict[tuple[str, str], list[Any]]:
    return {(m.upper(), path): op["security"] for path, ops in doc["paths"].items() for m, op in ops.items()}


def test_the_document_lists_exactly_the_routes_the_app_serves() -> None:
    served = _served()
    documented = _documented(document())
    assert set(documented) == set(served)
    assert len(served) >= 13  # every route, the status page and this document among them
    for route, auth in served.items():
        # An anonymous function is documented without a key requirement, every other with one.
        assert (documented[route] == []) == (auth == "anonymous"), route


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = document()
    assert doc["openapi"] == "3.1.0"
    validate(doc)  # raises on an invalid document


def test_parameters_and_bodies_are_the_routes_own_schemas() -> None:
    doc = document()
    jobs = doc["paths"]["/api/jobs"]["get"]
    params = {p["name"]: p for p in jobs["parameters"]}
    assert set(params) == set(api_schemas.LIST_JOBS.query["properties"])
    assert (
        params["state"]["schema"]["items"]["enum"]
        == api_schemas.LIST_JOBS.query["properties"]["state"]["items"]["enum"]
    )
    assert params["state"]["explode"] is False  # comma-separated, as the checks read it
    job = doc["paths"]["/api/jobs/{hub}/{job_id}"]["get"]
    assert {p["name"]: p["in"] for p in job["parameters"]} == {"hub": "path", "job_id": "path"}
    exports = doc["paths"]["/api/exports"]["post"]
    assert exports["requestBody"]["content"]["application/json"]["schema"] is api_schemas.EXPORTS.body
    imports = doc["paths"]["/api/imports"]["post"]["requestBody"]["content"]
    assert {"application/json", "application/x-ndjson"} <= set(imports)
    assert "text/html" in doc["paths"]["/api/status"]["get"]["responses"]["200"]["content"]


def test_the_route_serves_the_document_as_json() -> None:
    reply = openapi(Request())
    assert reply.status == 200 and reply.media == "application/json"
    assert json.loads(reply.content()) == document()
    refused = openapi(Request(query={"verbose": "1"}))
    assert refused.status == 400 and refused.body["error"]["code"] == "UnknownField"
