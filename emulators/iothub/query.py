"""The subset of the IoT Hub query language the emulator answers.

Supported: ``SELECT * FROM devices`` with an optional ``WHERE`` of ``path = value`` comparisons joined by
``AND`` (paths into the twin: ``deviceId``, ``status``, ``tags.site``, ``properties.desired.x``,
``capabilities.iotEdge``), and ``SELECT COUNT() AS name FROM devices`` with the same filters.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import ApiError

_SELECT = re.compile(
    r"^\s*SELECT\s+(?P<what>\*|COUNT\(\)\s+AS\s+(?P<alias>\w+))\s+FROM\s+devices(?:\s+WHERE\s+(?P<where>.+?))?\s*$",
    re.IGNORECASE | re.DOTALL,
)
_COND = re.compile(r"^\s*(?P<path>[A-Za-z$][\w$.]*)\s*=\s*(?P<value>'(?:[^']|'')*'|\S+)\s*$")


@dataclass(frozen=True, slots=True)
class Query:
    count_alias: str | None
    predicate: Callable[[dict[str, Any]], bool]


def _literal(text: str) -> Any:
    if text.startswith("'"):
        return text[1:-1].replace("''", "'")
    try:
        return json.loads(text.lower() if text.lower() in ("true", "false", "null") else text)
    except ValueError:
        raise ApiError(400004, f"Query value {text} is not a quoted string, a number or true/false.") from None


def _get(doc: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(doc, dict) or part not in doc:
            return None
        doc = doc[part]
    return doc


def parse(text: Any) -> Query:
    """Parse a query string.

    Raises:
        ApiError: 400004 for anything outside the supported subset (the message says what is supported).
    """
    m = _SELECT.match(text) if isinstance(text, str) else None
    if m is None:
        raise ApiError(
            400004,
            "The emulator answers only 'SELECT * FROM devices [WHERE a = v AND ...]' and "
            "'SELECT COUNT() AS n FROM devices [WHERE ...]'.",
        )
    conds: list[tuple[str, Any]] = []
    if m.group("where"):
        for part in re.split(r"\s+AND\s+", m.group("where"), flags=re.IGNORECASE):
            c = _COND.match(part)
            if c is None:
                raise ApiError(400004, f"Unsupported WHERE condition '{part.strip()}': use path = value.")
            conds.append((c.group("path"), _literal(c.group("value"))))

    def predicate(twin: dict[str, Any]) -> bool:
        return all(_get(twin, path) == value for path, value in conds)

    return Query(m.group("alias"), predicate)
