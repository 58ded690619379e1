"""What a destination and an export may hold, per type: the app's own reading of the 2022-10-31-preview spec.

Used to check a declarative file before anything is sent, to find its secret fields, and to compare it with what
the app reads back. The emulator keeps its own copy of these rules on purpose (it plays the service).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

READ_ONLY = frozenset({"id", "status", "errors", "lastExportTime"})
MASK = "*****"
SOURCES = ("telemetry", "properties", "deviceLifecycle", "deviceTemplateLifecycle", "deviceConnectivity", "audit")
# The data-export API documents no rule for ids; this is the safe subset: letters, digits, _ and -, 1-128 long.
ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
SETTING_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,127}$")
SYSTEM_ENRICHMENTS = (
    "$enabled",
    "$displayName",
    "$templateDisplayName",
    "$organizations",
    "$provisioned",
    "$simulated",
)


@dataclass(frozen=True, slots=True)
class Auth:
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    secrets: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DestinationType:
    fields: tuple[str, ...]  # required, besides displayName/type/authorization
    optional: tuple[str, ...]
    auth: dict[str, Auth]
    auth_required: bool = True
    entity_path: bool = False  # the connection string must name the entity (EntityPath=...)


_CONNECTION = Auth(("connectionString",), secrets=("connectionString",))
DESTINATION_TYPES: dict[str, DestinationType] = {
    "blobstorage@v1": DestinationType(
        (),
        (),
        {
            "connectionString": Auth(("connectionString", "containerName"), secrets=("connectionString",)),
            "systemAssignedManagedIdentity": Auth(("endpointUri", "containerName")),
        },
    ),
    "dataexplorer@v1": DestinationType(
        ("clusterUrl", "database", "table"),
        (),
        {
            "servicePrincipal": Auth(("clientId", "tenantId", "clientSecret"), secrets=("clientSecret",)),
            "systemAssignedManagedIdentity": Auth(()),
        },
    ),
    "eventhubs@v1": DestinationType(
        (),
        (),
        {"connectionString": _CONNECTION, "systemAssignedManagedIdentity": Auth(("hostName", "eventHubName"))},
        entity_path=True,
    ),
    "servicebusqueue@v1": DestinationType(
        (),
        (),
        {"connectionString": _CONNECTION, "systemAssignedManagedIdentity": Auth(("hostName", "queueName"))},
        entity_path=True,
    ),
    "servicebustopic@v1": DestinationType(
        (),
        (),
        {"connectionString": _CONNECTION, "systemAssignedManagedIdentity": Auth(("hostName", "topicName"))},
        entity_path=True,
    ),
    "webhook@v1": DestinationType(
        ("url",),
        ("queryCustomizations", "headerCustomizations"),
        {
            "header": Auth(("value",), secrets=("value",)),
            "oauth": Auth(
                ("tokenUrl", "clientId", "clientSecret"), ("audience", "scope", "requestType"), ("clientSecret",)
            ),
        },
        auth_required=False,
    ),
}
CUSTOMIZATIONS = ("queryCustomizations", "headerCustomizations")
EXPORT_FIELDS = ("displayName", "enabled", "source", "filter", "enrichments", "destinations")


def secret_paths(destination: dict[str, object]) -> set[tuple[str, ...]]:
    """The paths of the secret fields of a destination body (whatever the type of the values there)."""
    paths: set[tuple[str, ...]] = set()
    kind = DESTINATION_TYPES.get(str(destination.get("type")))
    auth = destination.get("authorization")
    if kind is not None and isinstance(auth, dict):
        rule = kind.auth.get(str(auth.get("type")))
        paths.update(("authorization", name) for name in (rule.secrets if rule else ()))
    for group in CUSTOMIZATIONS:
        items = destination.get(group)
        if isinstance(items, dict):
            paths.update(
                (group, name, "value") for name, item in items.items() if isinstance(item, dict) and item.get("secret")
            )
    return paths


def connection_parts(text: str) -> dict[str, str] | None:
    """``Name=value;...`` as a dict with lower-cased names, or None when it is not a connection string."""
    parts = {}
    for piece in filter(None, (p.strip() for p in text.split(";"))):
        name, sep, value = piece.partition("=")
        if not sep or not name.strip():
            return None
        parts[name.strip().lower()] = value.strip()
    return parts


def same_secret(desired: object, current: object) -> bool:
    """Whether a secret read back (masked) can be the one we hold: masked parts match anything, the rest must be
    equal. So a changed endpoint or entity path is a change; a masked key never is."""
    if current in (MASK, desired):
        return True
    if not isinstance(desired, str) or not isinstance(current, str):
        return False
    mine, theirs = connection_parts(desired), connection_parts(current)
    if mine is None or theirs is None or set(mine) != set(theirs):
        return False
    return all(theirs[k] == MASK or theirs[k] == v for k, v in mine.items())
