"""The declarative file: every destination and export of an IoT Central app, with secrets as app-setting references.

Format (JSON)::

    {
      "prune": false,                        # true: delete what the app has and the file does not
      "rotateSecrets": false,                # true: send every secret again (masked values cannot be compared)
      "destinations": {
        "archive": {"displayName": "Archive", "type": "blobstorage@v1",
                    "authorization": {"type": "connectionString", "containerName": "telemetry",
                                      "connectionString": {"appSetting": "ARCHIVE_STORAGE"}}}
      },
      "exports": {
        "all-telemetry": {"displayName": "All telemetry", "enabled": true, "source": "telemetry",
                          "destinations": [{"id": "archive"}]}
      }
    }

Read-only fields (``id``, ``status``, ``errors``, ``lastExportTime``) and the metadata of a backup (``app``,
``apiVersion``, ``takenAt``) are ignored, so a backup's ``dataexport.json`` is a valid starting point once its
masked secrets are replaced by references. Every problem names where it is (a JSON path and the line) and what to
change; a file with any problem is applied not at all.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .rules import (
    CUSTOMIZATIONS,
    DESTINATION_TYPES,
    EXPORT_FIELDS,
    ID_RE,
    MASK,
    READ_ONLY,
    SETTING_RE,
    SOURCES,
    SYSTEM_ENRICHMENTS,
    connection_parts,
    secret_paths,
)

IGNORED_TOP = frozenset({"$schema", "app", "apiVersion", "takenAt"})
MAX_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Problem:
    where: str  # a JSON path such as destinations.archive.authorization.connectionString
    message: str
    line: int | None = None

    def public(self) -> dict[str, Any]:
        return {"where": self.where, "line": self.line, "message": self.message}

    def __str__(self) -> str:
        at = f" (line {self.line})" if self.line else ""
        return f"{self.where}{at}: {self.message}"


@dataclass
class Document:
    """A checked file. Secret fields still hold ``{"appSetting": NAME}``; ``resolve`` fills them in."""

    destinations: dict[str, dict[str, Any]] = field(default_factory=dict)
    exports: dict[str, dict[str, Any]] = field(default_factory=dict)
    prune: bool = False
    rotate_secrets: bool = False

    def settings(self) -> set[str]:
        """The names of every app setting the file refers to."""
        names = set()
        for body in self.destinations.values():
            for path in secret_paths(body):
                ref = _get(body, path)
                if isinstance(ref, dict):
                    names.add(ref["appSetting"])
        return names


class DocumentError(Exception):
    """The file cannot be applied; ``problems`` says every reason found."""

    def __init__(self, problems: list[Problem]) -> None:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"{len(problems)} problem(s) in the data-export file: {problems[0]}{more}")
        self.problems = problems


def parse(raw: bytes) -> Document:
    """Read and check a declarative file.

    Raises:
        DocumentError: with every problem found (not only the first).
    """
    if len(raw) > MAX_BYTES:
        raise DocumentError(
            [Problem("(file)", f"the file is over {MAX_BYTES // 1024 // 1024} MiB; is it the right one?")]
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DocumentError([Problem("(file)", f"not UTF-8 (byte {exc.start}); save the file as UTF-8")]) from None
    try:
        top = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DocumentError(
            [Problem("(file)", f"not valid JSON: {exc.msg} (column {exc.colno})", exc.lineno)]
        ) from None
    except RecursionError:  # nested thousands deep: the parser's stack runs out long before the size cap
        raise DocumentError([Problem("(file)", "nested too deeply to be a data-export file")]) from None
    checker = _Checker(text)
    doc = checker.document(top)
    if checker.problems:
        raise DocumentError(checker.problems)
    return doc


class _Checker:
    def __init__(self, text: str) -> None:
        self.text = text
        self.problems: list[Problem] = []

    def problem(self, where: str, message: str) -> None:
        self.problems.append(Problem(where, message, self._line(where)))

    def _line(self, where: str) -> int | None:
        """Best effort: the line of the resource's key in the text (JSON parsers keep no positions)."""
        parts = where.split(".")
        if len(parts) < 2 or parts[0] not in ("destinations", "exports"):
            return None
        section = re.search(rf'"{parts[0]}"\s*:', self.text)
        name = re.compile(rf'"{re.escape(parts[1].split("[")[0])}"\s*:')
        found = name.search(self.text, section.end() if section else 0)
        return self.text.count("\n", 0, found.start()) + 1 if found else None

    def unknown(self, body: Mapping[str, Any], allowed: set[str], where: str) -> None:
        for key in sorted(set(body) - allowed):
            hint = difflib.get_close_matches(key, sorted(allowed), n=1)
            extra = f"; did you mean '{hint[0]}'?" if hint else f"; allowed: {', '.join(sorted(allowed))}"
            self.problem(f"{where}.{key}" if where else key, f"unknown field{extra}")

    def text_field(self, body: Mapping[str, Any], name: str, where: str, *, required: bool = True) -> None:
        if name not in body:
            if required:
                self.problem(f"{where}.{name}", "required: add it")
            return
        if not isinstance(body[name], str) or not body[name].strip():
            self.problem(f"{where}.{name}", "must be a non-empty string")

    def secret(self, body: Mapping[str, Any], name: str, where: str) -> None:
        value = body.get(name)
        path = f"{where}.{name}"
        if isinstance(value, str):
            what = "a masked value read back from IoT Central" if MASK in value else "a literal secret"
            self.problem(
                path,
                f'holds {what}; put the secret in an app setting and write {{"appSetting": "<SETTING NAME>"}} here',
            )
        elif not isinstance(value, dict) or set(value) != {"appSetting"} or not isinstance(value["appSetting"], str):
            self.problem(path, 'must be {"appSetting": "<SETTING NAME>"}, naming the app setting that holds the secret')
        elif not SETTING_RE.match(value["appSetting"]):
            self.problem(path, f"'{value['appSetting']}' is not a valid app setting name")

    def document(self, top: Any) -> Document:
        if not isinstance(top, dict):
            self.problem("(file)", 'must be a JSON object with "destinations" and "exports"')
            return Document()
        self.unknown(top, {"destinations", "exports", "prune", "rotateSecrets"} | IGNORED_TOP, "")
        doc = Document()
        for flag in ("prune", "rotateSecrets"):
            if not isinstance(top.get(flag, False), bool):
                self.problem(flag, "must be true or false")
        doc.prune = top.get("prune") is True
        doc.rotate_secrets = top.get("rotateSecrets") is True
        for section in ("destinations", "exports"):
            items = top.get(section, {})
            if not isinstance(items, dict):
                self.problem(section, f'must be an object of id -> {section[:-1]} (e.g. {{"my-id": {{...}}}})')
                continue
            for item_id, given in items.items():
                where = f"{section}.{item_id}"
                if not ID_RE.match(item_id):
                    self.problem(where, "the id may hold only letters, digits, '-' and '_' (1 to 128)")
                if not isinstance(given, dict):
                    self.problem(where, "must be an object")
                    continue
                body = {k: v for k, v in given.items() if k not in READ_ONLY}
                if section == "destinations":
                    self.destination(body, where)
                    doc.destinations[item_id] = body
                else:
                    self.export(body, where, top.get("destinations") or {})
                    doc.exports[item_id] = body
        return doc

    def destination(self, body: dict[str, Any], where: str) -> None:
        self.text_field(body, "displayName", where)
        kind = DESTINATION_TYPES.get(str(body.get("type")))
        if kind is None:
            self.problem(f"{where}.type", f"must be one of {', '.join(DESTINATION_TYPES)}")
            return
        self.unknown(body, {"displayName", "type", "authorization", *kind.fields, *kind.optional}, where)
        for name in kind.fields:
            self.text_field(body, name, where)
        if isinstance(body.get("url"), str) and not body["url"].startswith("https://"):
            self.problem(f"{where}.url", "must be an https:// URL")
        for group in CUSTOMIZATIONS:
            self.customizations(body.get(group), f"{where}.{group}")
        auth = body.get("authorization")
        if auth is None:
            if kind.auth_required:
                self.problem(f"{where}.authorization", f"required: one of {', '.join(kind.auth)}")
            return
        rule = kind.auth.get(str(auth.get("type"))) if isinstance(auth, dict) else None
        if not isinstance(auth, dict) or rule is None:
            self.problem(f"{where}.authorization.type", f"must be one of {', '.join(kind.auth)} for {body['type']}")
            return
        at = f"{where}.authorization"
        self.unknown(auth, {"type", *rule.required, *rule.optional}, at)
        for name in rule.required:
            if name in rule.secrets:
                self.secret(auth, name, at)
            else:
                self.text_field(auth, name, at)
        for name in rule.optional:
            self.text_field(auth, name, at, required=False)
        if auth.get("requestType") not in (None, "auto", "json", "urlencoded"):
            self.problem(f"{at}.requestType", "must be auto, json or urlencoded")

    def customizations(self, items: Any, where: str) -> None:
        if items is None:
            return
        if not isinstance(items, dict):
            self.problem(where, 'must be an object of name -> {"value": ..., "secret": false}')
            return
        for name, item in items.items():
            at = f"{where}.{name}"
            if not isinstance(item, dict):
                self.problem(at, 'must be {"value": ..., "secret": true|false}')
                continue
            self.unknown(item, {"value", "secret"}, at)
            if not isinstance(item.get("secret", False), bool):
                self.problem(f"{at}.secret", "must be true or false")
            if item.get("secret") is True:
                self.secret(item, "value", at)
            elif not isinstance(item.get("value"), str):
                self.problem(f"{at}.value", "required: a string (or set secret: true and refer to an app setting)")

    def export(self, body: dict[str, Any], where: str, destinations: Any) -> None:
        self.unknown(body, set(EXPORT_FIELDS), where)
        self.text_field(body, "displayName", where)
        if not isinstance(body.get("enabled"), bool):
            self.problem(f"{where}.enabled", "required: true or false")
        if body.get("source") not in SOURCES:
            self.problem(f"{where}.source", f"must be one of {', '.join(SOURCES)}")
        if "filter" in body and not isinstance(body["filter"], str):
            self.problem(f"{where}.filter", "must be a query string, e.g. SELECT * FROM devices WHERE ...")
        enrichments = body.get("enrichments", {})
        if not isinstance(enrichments, dict):
            self.problem(f"{where}.enrichments", "must be an object of output name -> enrichment")
            enrichments = {}
        for name, item in enrichments.items():
            at = f"{where}.enrichments.{name}"
            if not isinstance(item, dict) or ("value" not in item and "path" not in item):
                self.problem(at, 'must be {"value": ...}, {"path": "$displayName"} or {"target": ..., "path": ...}')
                continue
            self.unknown(item, {"target", "path", "value"}, at)
            path = item.get("path")
            if (
                "target" not in item
                and isinstance(path, str)
                and path.startswith("$")
                and path not in SYSTEM_ENRICHMENTS
            ):
                hint = difflib.get_close_matches(path, SYSTEM_ENRICHMENTS, n=1)
                self.problem(f"{at}.path", f"unknown system property{f'; did you mean {hint[0]}?' if hint else ''}")
        refs = body.get("destinations")
        if not isinstance(refs, list):
            self.problem(f"{where}.destinations", 'required: a list of {"id": "<destination id>", "transform"?: ...}')
            return
        seen: set[str] = set()
        for i, ref in enumerate(refs):
            at = f"{where}.destinations[{i}]"
            if not isinstance(ref, dict) or not isinstance(ref.get("id"), str):
                self.problem(at, 'must be {"id": "<destination id>"} with an optional "transform"')
                continue
            self.unknown(ref, {"id", "transform"}, at)
            if "transform" in ref and not isinstance(ref["transform"], str):
                self.problem(f"{at}.transform", "must be a string")
            if ref["id"] in seen:
                self.problem(f"{at}.id", f"destination '{ref['id']}' is listed twice")
            seen.add(ref["id"])


def resolve(doc: Document, env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """The destination bodies as sent to IoT Central: each ``{"appSetting": NAME}`` replaced by the setting's value.

    Raises:
        DocumentError: a setting is missing or empty, or its value does not fit (never echoing the value).
    """
    problems: list[Problem] = []
    resolved: dict[str, dict[str, Any]] = {}
    for item_id, body in doc.destinations.items():
        out = copy.deepcopy(body)
        for path in sorted(secret_paths(body)):
            ref = _get(body, path)
            name = ref["appSetting"] if isinstance(ref, dict) else ""
            value = env.get(name, "")
            where = "destinations." + ".".join((item_id, *path))
            if not value.strip():
                problems.append(
                    Problem(where, f"app setting '{name}' is not set (or empty): add it to the app's settings")
                )
                continue
            if path[-1] == "connectionString":
                parts = connection_parts(value)
                if parts is None:
                    problems.append(
                        Problem(where, f"app setting '{name}' does not hold a connection string (Name=value;...)")
                    )
                elif DESTINATION_TYPES[body["type"]].entity_path and not parts.get("entitypath"):
                    problems.append(
                        Problem(
                            where, f"the connection string in '{name}' lacks EntityPath=<name of the hub/queue/topic>"
                        )
                    )
            _set(out, path, value)
        resolved[item_id] = out
    if problems:
        raise DocumentError(problems)
    return resolved


def _get(body: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = body
    for key in path:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value


def _set(body: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        body = body[key]
    body[path[-1]] = value
