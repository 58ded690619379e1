"""The ledger's table client with storage that does not answer (connection refused, reset, timed out) turned into
``StorageUnavailable`` at this one boundary, for every call and every page of a query, as the blob calls are."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, cast

from azure.core.paging import ItemPaged
from azure.data.tables import TableClient

from ..storage import reachable


class _Guarded:
    def __init__(self, table: TableClient) -> None:
        self._table = table

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._table, name)
        if not callable(attr):
            return attr
        return _call(attr, f"the job ledger ({name})")


def _call(method: Callable[..., Any], what: str) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        with reachable(what):
            result = method(*args, **kwargs)
        return _pages(result, what) if isinstance(result, ItemPaged) else result

    return call


def _pages(items: ItemPaged[Any], what: str) -> Iterator[Any]:
    """A query's rows; the pages are fetched as they are read, so each fetch is guarded too."""
    rows = iter(items)
    while True:
        with reachable(what):
            try:
                row = next(rows)
            except StopIteration:
                return
        yield row


def guarded(table: TableClient) -> TableClient:
    """``table`` with its connection failures raised as ``StorageUnavailable`` (typed as the client it wraps)."""
    return table if isinstance(table, _Guarded) else cast(TableClient, _Guarded(table))
