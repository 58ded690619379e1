"""The published IoT Central 2022-06-30-preview spec as JSON-schema validators, plus the 2022-10-31-preview additions.

Swagger 2.0 models polymorphism with ``discriminator`` and ``x-ms-discriminator-value``, which JSON Schema does
not know: each reference to a polymorphic base is replaced by a ``oneOf`` over its subtypes, each pinned to its
discriminator value, so a body must match exactly one concrete type. ``audit`` is added to the export source enum
(the 2022-10-31-preview API adds it). The spec and examples live in ``tests/data/iotcentral`` so the suite runs on a
clean checkout.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

import jsonschema

DATA = Path(__file__).resolve().parents[1] / "data" / "iotcentral"
SPEC = DATA / "iotcentral-2022-06-30-preview.json"
EXAMPLES = sorted((DATA / "iotcentral-examples-2022-06-30-preview").glob("*.json")) + sorted(
    (DATA / "iotcentral-examples-2022-10-31-preview").glob("*.json")
)


@functools.cache
def _definitions() -> dict[str, Any]:
    spec = json.loads(SPEC.read_text())
    defs: dict[str, Any] = copy.deepcopy(spec["definitions"])
    defs["Export"]["properties"]["source"]["enum"].append("audit")
    subtypes: dict[str, list[tuple[str, str]]] = {}
    for name, schema in defs.items():
        value = schema.get("x-ms-discriminator-value")
        for part in schema.get("allOf", []):
            base = part.get("$ref", "").rsplit("/", 1)[-1]
            if value and "discriminator" in defs.get(base, {}):
                subtypes.setdefault(base, []).append((name, value))

    def rewrite(node: Any, inside_subtype_allof: bool = False) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            base = ref.rsplit("/", 1)[-1]
            if ref and base in subtypes and not inside_subtype_allof:
                return {"$ref": f"#/definitions/{base}__any"}
            return {k: rewrite(v, k == "allOf") for k, v in node.items()}
        if isinstance(node, list):
            return [rewrite(v, inside_subtype_allof) for v in node]
        return node

    out = {name: rewrite(schema) for name, schema in defs.items()}
    for base, subs in subtypes.items():
        field = defs[base]["discriminator"]
        out[f"{base}__any"] = {
            "oneOf": [
                {"allOf": [{"$ref": f"#/definitions/{sub}"}], "properties": {field: {"enum": [value]}}}
                for sub, value in subs
            ]
        }
    return out


def validate(body: Any, definition: str) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``body`` is a valid ``definition`` (e.g. ``Destination``)."""
    defs = _definitions()
    target = f"{definition}__any" if f"{definition}__any" in defs else definition
    schema = {"definitions": defs, "$ref": f"#/definitions/{target}"}
    jsonschema.Draft4Validator(schema).validate(body)


def concrete_type(body: dict[str, Any], base: str) -> str:
    """The definition a body is an instance of: the subtype its discriminator names, or ``base`` itself."""
    if base != "Destination":
        return base
    return next(n for n, d in _definitions().items() if d.get("x-ms-discriminator-value") == body["type"])


def writable_properties(definition: str) -> set[str]:
    """Every property a concrete type declares (its own and its bases'), for "nothing unknown" checks."""
    defs = _definitions()
    schema = defs[definition]
    names = set(schema.get("properties", {}))
    for part in schema.get("allOf", []):
        base = part.get("$ref", "").rsplit("/", 1)[-1]
        if base:
            names |= writable_properties(base)
    return names
