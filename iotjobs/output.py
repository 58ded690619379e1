"""How a listing prints, one way for every command: ``--output table|json|tsv`` (a table on a terminal, tab-separated
whole values when stdout is a pipe or a file, as ``az`` chooses), and ``--jmespath EXPR`` applied to the JSON before
it is printed (the JMESPath library the Azure CLI's ``--query`` uses; here ``--query`` already means a device query
on ``bulk`` and ``devices``).

A JMESPath result prints as JSON with ``-o json``; otherwise as ``az`` prints one: a list of objects as rows (their
keys the columns), a list of scalars one per line, an object as one row, a scalar alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jmespath
from jmespath.exceptions import JMESPathError
from rich.console import Console
from rich.table import Table

from .config import ConfigError

out = Console(highlight=False, soft_wrap=True)

Rows = Callable[[Any], Iterable[Sequence[str]]]


def shape(args: argparse.Namespace) -> str:
    """``--output`` (or ``--json``), else ``table`` on a terminal and ``tsv`` when piped."""
    if getattr(args, "json", False):
        return "json"
    chosen: str | None = getattr(args, "output", None)
    return chosen or ("table" if out.is_terminal else "tsv")


def search(expression: str | None, data: Any) -> Any:
    """``data`` through a JMESPath ``expression`` (None: unchanged).

    Raises:
        ConfigError: the expression does not parse (exit code 2, with the parser's message).
    """
    if not expression:
        return data
    try:
        return jmespath.search(expression, data)
    except JMESPathError as exc:
        raise ConfigError(f"--jmespath '{expression}' is not a JMESPath expression: {exc}") from None


def text(value: Any) -> str:
    """A cell: text as it is, null empty, anything else as compact JSON (whole: never cut)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def write_tsv(columns: Sequence[str] | None, rows: Iterable[Sequence[str]]) -> None:
    """A header line (when ``columns``), then a line per row; a tab or newline inside a value becomes a space."""
    lines = ([list(columns)] if columns else []) + [list(r) for r in rows]
    for values in lines:
        sys.stdout.write("\t".join(" ".join(v.split("\t")).replace("\r", " ").replace("\n", " ") for v in values))
        sys.stdout.write("\n")
    sys.stdout.flush()


def _table(columns: Sequence[str], rows: Iterable[Sequence[str]], width: int | None) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold", max_width=width)
    for row in rows:
        table.add_row(*row)
    return table


def _generic(data: Any) -> tuple[list[str] | None, list[list[str]]]:
    """Columns and rows of any JSON value, as ``az`` lays out a ``--query`` result."""
    if isinstance(data, dict):
        return list(data), [[text(v) for v in data.values()]]
    if isinstance(data, list):
        if data and all(isinstance(d, dict) for d in data):
            columns: list[str] = []
            for d in data:
                columns += [k for k in d if k not in columns]
            return columns, [[text(d.get(c)) for c in columns] for d in data]
        return None, [[text(d)] for d in data]
    return None, [[text(data)]]


def emit(
    args: argparse.Namespace,
    data: Any,
    columns: Sequence[str],
    rows: Rows,
    *,
    empty: str = "none",
    width: int | None = 60,
) -> None:
    """Print a listing: ``data`` is its JSON; ``rows(data)`` its rows under ``columns`` for a table or TSV."""
    how = shape(args)
    expression = getattr(args, "jmespath", None)
    found = search(expression, data)
    if how == "json":
        sys.stdout.write(json.dumps(found, indent=2, ensure_ascii=False) + "\n")
        sys.stdout.flush()
        return
    if expression:
        generic_columns, generic_rows = _generic(found)
        if how == "tsv":
            write_tsv(None, generic_rows)
        elif generic_columns is None:
            for row in generic_rows:
                out.print(row[0], markup=False)
        else:
            out.print(_table(generic_columns, generic_rows, width))
        return
    listed = [list(r) for r in rows(data)]
    if how == "tsv":
        write_tsv(columns, listed)  # nothing listed: the header alone
    elif not listed:
        out.print(empty, markup=False)
    else:
        out.print(_table(columns, listed, width))


def add_options(p: argparse.ArgumentParser, default: Any) -> None:
    """``--jmespath`` for every command (``--output`` is among the common options already)."""
    p.add_argument(
        "--jmespath",
        metavar="EXPR",
        default=default,
        help="a JMESPath expression applied to the JSON of a listing before it prints, as az's --query "
        "(e.g. \"[?state=='failed'].jobId\")",
    )
