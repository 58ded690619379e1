"""The data-export resources of the IoT Central emulator: validation per type, merge-patch, masking on read.

Shapes follow ``iotcentral-2022-06-30-preview.json`` plus the 2022-10-31-preview ``audit`` source. Deliberately
not shared with ``shared/`` (the app's own checks): the emulator plays the service, and a mistake in the app's
rules must show up as a test failure rather than be mirrored by the service it is tested against.

Where the published spec and docs are silent the emulator picks the strict reading and says so (see its
README, "unverified"): unknown properties are refused rather than dropped, an export naming a
missing destination is a 400 ``DestinationNotFound``, deleting a destination still in use is a 409
``DestinationInUse``, and a webhook's header authorization value is masked like the other secrets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

READ_ONLY = ("id", "status", "errors", "lastExportTime")
MASK = "*****"
SOURCES_2022_06 = ("telemetry", "properties", "deviceLifecycle", "deviceTemplateLifecycle", "deviceConnectivity")
AUDIT_VERSIONS = frozenset({"2022-10-31-preview"})
_SECRET_CONN_PARTS = re.compile(r"(?i)((?:^|;)\s*(?:AccountKey|SharedAccessKey|SharedAccessSignature)\s*=)[^;]*")


class ApiError(Exception):
    """Answered with the service's error shape ``{"error": {"code", "message", "requestId", "time"}}``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


def invalid(message: str) -> ApiError:
    return ApiError(400, "InvalidBody", message)


@dataclass(frozen=True, slots=True)
class AuthRule:
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    secrets: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TypeRule:
    required: tuple[str, ...]
    optional: tuple[str, ...]
    auth: dict[str, AuthRule]
    auth_required: bool = True


_CONN = AuthRule(("connectionString",), secrets=("connectionString",))
_MI = AuthRule(())
DESTINATION_TYPES: dict[str, TypeRule] = {
    "blobstorage@v1": TypeRule(
        (),
        (),
        {
            "connectionString": AuthRule(("connectionString", "containerName"), secrets=("connectionString",)),
            "systemAssignedManagedIdentity": AuthRule(("endpointUri", "containerName")),
        },
    ),
    "dataexplorer@v1": TypeRule(
        ("clusterUrl", "database", "table"),
        (),
        {
            "servicePrincipal": AuthRule(("clientId", "tenantId", "clientSecret"), secrets=("clientSecret",)),
            "systemAssignedManagedIdentity": _MI,
        },
    ),
    "eventhubs@v1": TypeRule(
        (), (), {"connectionString": _CONN, "systemAssignedManagedIdentity": AuthRule(("hostName", "eventHubName"))}
    ),
    "servicebusqueue@v1": TypeRule(
        (), (), {"connectionString": _CONN, "systemAssignedManagedIdentity": AuthRule(("hostName", "queueName"))}
    ),
    "servicebustopic@v1": TypeRule(
        (), (), {"connectionString": _CONN, "systemAssignedManagedIdentity": AuthRule(("hostName", "topicName"))}
    ),
    "webhook@v1": TypeRule(
        ("url",),
        ("queryCustomizations", "headerCustomizations"),
        {
            "header": AuthRule(("value",), secrets=("value",)),
            "oauth": AuthRule(
                ("tokenUrl", "clientId", "clientSecret"),
                ("audience", "scope", "requestType"),
                secrets=("clientSecret",),
            ),
        },
        auth_required=False,
    ),
}
_ENTITY_PATH_TYPES = ("eventhubs@v1", "servicebusqueue@v1", "servicebustopic@v1")


def sources(api_version: str) -> tuple[str, ...]:
    return SOURCES_2022_06 + (("audit",) if api_version in AUDIT_VERSIONS else ())


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch: objects merge, ``null`` removes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _writable(body: Any, what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise invalid(f"The {what} body must be a JSON object.")
    return {k: v for k, v in body.items() if k not in READ_ONLY}


def _string(doc: dict[str, Any], name: str, where: str, *, required: bool = True) -> None:
    if name not in doc:
        if required:
            raise invalid(f"'{where}{name}' is required.")
        return
    value = doc[name]
    if not isinstance(value, str) or not value.strip():
        raise invalid(f"'{where}{name}' must be a non-empty string.")


def _only(doc: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(doc) - allowed)
    if extra:
        raise invalid(f"Unknown property '{where}{extra[0]}'.")


def validate_destination(body: Any) -> dict[str, Any]:
    """The stored form of a destination body (read-only fields dropped), or ``ApiError`` 400."""
    doc = _writable(body, "destination")
    _string(doc, "displayName", "")
    kind = doc.get("type")
    rule = DESTINATION_TYPES.get(kind) if isinstance(kind, str) else None
    if rule is None:
        raise invalid(f"'type' must be one of {', '.join(DESTINATION_TYPES)}.")
    _only(doc, {"displayName", "type", "authorization", *rule.required, *rule.optional}, "")
    for name in rule.required:
        _string(doc, name, "")
    if kind == "webhook@v1":
        if not re.match(r"^https?://[^/\s]+", doc["url"]):
            raise invalid("'url' must be an http(s) URL.")
        for name in ("queryCustomizations", "headerCustomizations"):
            _customizations(doc.get(name), name)
    auth = doc.get("authorization")
    if auth is None:
        if rule.auth_required:
            raise invalid("'authorization' is required.")
        return doc
    if not isinstance(auth, dict):
        raise invalid("'authorization' must be an object.")
    auth_type = auth.get("type")
    auth_rule = rule.auth.get(auth_type) if isinstance(auth_type, str) else None
    if auth_rule is None:
        raise invalid(f"'authorization.type' must be one of {', '.join(rule.auth)} for {kind}.")
    _only(auth, {"type", *auth_rule.required, *auth_rule.optional}, "authorization.")
    for name in auth_rule.required:
        _string(auth, name, "authorization.")
    for name in auth_rule.optional:
        _string(auth, name, "authorization.", required=False)
    if auth.get("requestType") not in (None, "auto", "json", "urlencoded"):
        raise invalid("'authorization.requestType' must be auto, json or urlencoded.")
    if "connectionString" in auth_rule.required:
        _check_connection_string(kind, auth["connectionString"])
    return doc


def _check_connection_string(kind: object, text: str) -> None:
    """INFERRED (README): the service's 400 for a connection string it cannot use quotes the value it was sent, key
    and all, as Azure services commonly do ("The value '...' of property ... is not valid"). The app must keep
    such text out of its reports, ledger and log; echoing it here is what lets the tests see whether it does."""

    def refuse(why: str) -> ApiError:
        return invalid(f"The value '{text}' of property 'authorization.connectionString' is not valid: {why}.")

    parts = {}
    for piece in filter(None, (p.strip() for p in text.split(";"))):
        name, sep, value = piece.partition("=")
        if not sep:
            raise refuse("it is not a connection string (Name=value;...)")
        parts[name.strip().lower()] = value.strip()
    if kind in _ENTITY_PATH_TYPES:
        if not parts.get("endpoint", "").startswith("sb://"):
            raise refuse("it must start with Endpoint=sb://<namespace>.servicebus.windows.net/")
        if not parts.get("entitypath"):
            raise refuse("it must include the EntityPath of the entity")
    elif kind == "blobstorage@v1" and not (parts.get("accountname") or parts.get("blobendpoint")):
        raise refuse("it names no storage account (AccountName or BlobEndpoint)")


def _customizations(value: Any, name: str) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise invalid(f"'{name}' must be an object of name -> {{value, secret}}.")
    for key, item in value.items():
        if not isinstance(item, dict) or not isinstance(item.get("value"), str):
            raise invalid(f"'{name}.{key}.value' is required and must be a string.")
        _only(item, {"value", "secret"}, f"{name}.{key}.")
        if not isinstance(item.get("secret", False), bool):
            raise invalid(f"'{name}.{key}.secret' must be true or false.")


def validate_export(body: Any, api_version: str, destinations: set[str]) -> dict[str, Any]:
    """The stored form of an export body, or ``ApiError`` (400; a missing destination is its own code)."""
    doc = _writable(body, "export")
    _only(doc, {"displayName", "enabled", "source", "filter", "enrichments", "destinations"}, "")
    _string(doc, "displayName", "")
    if not isinstance(doc.get("enabled"), bool):
        raise invalid("'enabled' is required and must be true or false.")
    allowed = sources(api_version)
    if doc.get("source") not in allowed:
        raise invalid(f"'source' must be one of {', '.join(allowed)} (api-version {api_version}).")
    if "filter" in doc and not isinstance(doc["filter"], str):
        raise invalid("'filter' must be a string.")
    enrichments = doc.get("enrichments", {})
    if not isinstance(enrichments, dict):
        raise invalid("'enrichments' must be an object of name -> enrichment.")
    for name, item in enrichments.items():
        if not isinstance(item, dict):
            raise invalid(f"'enrichments.{name}' must be an object.")
        _only(item, {"target", "path", "value"}, f"enrichments.{name}.")
        if "path" not in item and "value" not in item:
            raise invalid(f"'enrichments.{name}' needs a 'value' or a 'path'.")
        if "target" in item and "path" not in item:
            raise invalid(f"'enrichments.{name}.target' needs a 'path' within the target.")
    refs = doc.get("destinations")
    if not isinstance(refs, list):
        raise invalid("'destinations' is required and must be an array of {id, transform}.")
    seen: set[str] = set()
    for i, ref in enumerate(refs):
        if not isinstance(ref, dict) or not isinstance(ref.get("id"), str) or not ref["id"]:
            raise invalid(f"'destinations[{i}].id' is required.")
        _only(ref, {"id", "transform"}, f"destinations[{i}].")
        if "transform" in ref and not isinstance(ref["transform"], str):
            raise invalid(f"'destinations[{i}].transform' must be a string.")
        if ref["id"] in seen:
            raise invalid(f"Destination '{ref['id']}' is listed twice.")
        seen.add(ref["id"])
        if ref["id"] not in destinations:
            raise ApiError(400, "DestinationNotFound", f"Destination '{ref['id']}' does not exist in the application.")
    return doc


def mask_destination(doc: dict[str, Any]) -> dict[str, Any]:
    """A destination as the service shows it: key parts of connection strings and every secret as ``*****``."""
    out = dict(doc)
    auth = out.get("authorization")
    if isinstance(auth, dict):
        auth = dict(auth)
        rule = DESTINATION_TYPES[out["type"]].auth.get(auth.get("type", ""))
        for name in rule.secrets if rule else ():
            if name == "connectionString" and isinstance(auth.get(name), str):
                auth[name] = _SECRET_CONN_PARTS.sub(lambda m: m.group(1) + MASK, auth[name])
            elif name in auth:
                auth[name] = MASK
        out["authorization"] = auth
    for name in ("queryCustomizations", "headerCustomizations"):
        if isinstance(out.get(name), dict):
            out[name] = {k: ({**v, "value": MASK} if v.get("secret") else v) for k, v in out[name].items()}
    return out
