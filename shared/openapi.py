"""The HTTP API as an OpenAPI 3.1 document, generated from the routes' own schemas (``api_schemas.ROUTES``), so
that it says exactly what the checks accept: the same JSON Schemas (OpenAPI 3.1 speaks JSON Schema 2020-12).
Served at ``GET /api/openapi.json``; a test holds its paths equal to the routes ``function_app.py`` registers."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from .api_schemas import ROUTES, Route

VERSION = "0.1.0"
ERROR_REF = {"$ref": "#/components/schemas/Error"}
_ERRORS = {
    "400": "the request was refused: bad JSON, an unknown, missing or invalid field (the error names it)",
    "401": "no function key, or a wrong one (x-functions-key header or ?code=)",
    "404": "no such job, hub, blob or backup, or a feature not configured (the code says which)",
    "409": "the job or blob changed meanwhile, or the job cannot be cancelled now",
    "413": "the body is over the route's cap",
    "500": "the app is misconfigured or failed; its log has the details",
    "502": "the IoT hub or IoT Central refused the request",
    "503": "storage is not answering, or the IoT hub is throttling: retry after the Retry-After header's seconds",
}


def operation_id(route: Route) -> str:
    """``GET /api/jobs/{hub}/{job_id}`` -> ``get_jobs_hub_job_id``."""
    words = re.sub(r"[^a-z0-9]+", "_", route.url_path.removeprefix("/api/").lower()).strip("_")
    return f"{route.method.lower()}_{words}"


def _parameters(schema: dict[str, Any], where: str) -> list[dict[str, Any]]:
    required = set(schema.get("required", []))
    params = []
    for name, prop in schema.get("properties", {}).items():
        param_schema = {k: v for k, v in prop.items() if k != "description"}
        param: dict[str, Any] = {
            "name": name,
            "in": where,
            "required": where == "path" or name in required,
            "description": f"It {prop.get('description', 'is free-form')}.",
            "schema": param_schema,
        }
        if prop.get("type") == "array":
            param.update(style="form", explode=False)  # comma-separated, as the checks read it
        params.append(param)
    return params


def _request_body(route: Route) -> dict[str, Any] | None:
    content: dict[str, Any] = {}
    if route.raw is not None:
        if route.raw.content_types is None:  # the whole body is a file (a data-export document)
            content["application/json"] = {"schema": {"type": "object", "description": route.raw.too_large}}
        else:
            for media in sorted(route.raw.content_types):
                content[media] = {"schema": {"type": "string", "maxLength": route.raw.max_bytes}}
    if route.body is not None:
        content["application/json"] = {"schema": route.body}
    if not content:
        return None
    return {"required": route.raw is not None and route.body is None, "content": content}


def _responses(route: Route) -> dict[str, Any]:
    media = route.produces
    ok_schema: dict[str, Any] = {"type": "string"} if media.startswith("text/") else {"type": "object"}
    responses: dict[str, Any] = {
        str(status): {"description": "accepted" if status == 202 else "OK", "content": {media: {"schema": ok_schema}}}
        for status in route.ok
    }
    for status, why in _ERRORS.items():
        if status == "401" and route.anonymous:
            continue
        if status == "413" and route.body is None and route.raw is None:
            continue
        responses[status] = {"description": why, "content": {"application/json": {"schema": ERROR_REF}}}
    return responses


def document(routes: Iterable[Route] = ROUTES) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes``."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        op: dict[str, Any] = {
            "operationId": operation_id(route),
            "summary": route.summary,
            "parameters": _parameters(route.path, "path") + _parameters(route.query, "query"),
            "responses": _responses(route),
            "security": [] if route.anonymous else [{"functionKeyHeader": []}, {"functionKeyQuery": []}],
        }
        body = _request_body(route)
        if body is not None:
            op["requestBody"] = body
        paths.setdefault(route.url_path, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "IoT Registry Jobs",
            "version": VERSION,
            "description": "Bulk IoT Hub registry jobs (imports, backups, restores) and IoT Central data export "
            "as code. Every route checks its inputs against the schemas below and answers errors as "
            '{"error": {"code", "message"}}.',
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "functionKeyHeader": {"type": "apiKey", "in": "header", "name": "x-functions-key"},
                "functionKeyQuery": {"type": "apiKey", "in": "query", "name": "code"},
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": {"type": "string", "description": "PascalCase, e.g. UnknownField"},
                                "message": {"type": "string", "description": "what to change"},
                                "field": {"type": "string", "description": "the field refused, when one was"},
                            },
                        }
                    },
                }
            },
        },
    }
