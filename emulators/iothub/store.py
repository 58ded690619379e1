"""SQLite persistence of the emulated hub: devices, modules and jobs. The only module that imports sqlite3.

Each thread gets its own connection (sqlite3 connections are not shared across threads); WAL mode lets the job
runner stream an export while request threads keep reading and writing.

Queries read an index kept beside the devices, ``twin_index`` (path, value, device id): the device's status and
connection state and every leaf of its tags and desired and reported properties, written in the same transaction
as the device. A page of a query then costs the page: an equality (or IN) is a seek in (path, value, id) order,
continued after the last device id of the previous page (a keyset cursor, not an offset); other conditions on
those paths are checked in SQL (``json_extract`` of the row) while walking the devices in id order, and the query
module checks every row again with the language's full semantics (``query.py``).
"""

from __future__ import annotations

import heapq
import json
import math
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .model import Record
from .query import AllOf, AnyOf, Cmp, Filter

_SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (id TEXT PRIMARY KEY, status TEXT NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS modules (
    device_id TEXT NOT NULL, module_id TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (device_id, module_id));
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, created TEXT NOT NULL, status TEXT NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS configurations (id TEXT PRIMARY KEY, data TEXT NOT NULL);
-- Read-after-write lag of queries: a device changed less than the lag ago is seen by queries as it was before
-- (`before`, NULL if it did not exist) until `due` (Unix seconds).
CREATE TABLE IF NOT EXISTS lagged (id TEXT PRIMARY KEY, before TEXT, due REAL NOT NULL);
-- What queries filter on (see the module's docstring); `value` has no type affinity, so numbers stay numbers and
-- sort before text (SQLite's order: numbers < text), and Booleans are stored as 1/0.
CREATE TABLE IF NOT EXISTS twin_index (
    path TEXT NOT NULL, value NOT NULL, id TEXT NOT NULL, PRIMARY KEY (path, value, id)) WITHOUT ROWID;
"""
_SCHEMA_VERSION = 1  # PRAGMA user_version: 1 = twin_index built (older data directories are indexed on open)
ACTIVE_JOB_STATES = ("enqueued", "running")
_dumps = json.JSONEncoder(separators=(",", ":")).encode


class Store:
    """The hub's registry and job table in one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self.write_lock = threading.Lock()  # one writer at a time: keeps read-modify-write batches atomic
        with self._conn() as c:
            c.executescript(_SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        c = self._conn()
        if c.execute("PRAGMA user_version").fetchone()[0] >= _SCHEMA_VERSION:
            return
        with c:
            c.execute("DELETE FROM twin_index")
            after = ""
            while rows := c.execute(
                "SELECT id, data FROM devices WHERE id > ? ORDER BY id LIMIT 5000", (after,)
            ).fetchall():
                c.executemany(
                    "INSERT OR IGNORE INTO twin_index (path, value, id) VALUES (?, ?, ?)",
                    [r for _, data in rows for r in index_rows(json.loads(data))],
                )
                after = rows[-1][0]
            c.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def release(self) -> None:
        """Close the calling thread's connection: request threads come and go, their connections must too."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            return
        with self._lock:
            if conn in self._all:
                self._all.remove(conn)
        conn.close()
        self._local.conn = None

    def close(self) -> None:
        with self._lock:
            for c in self._all:
                c.close()
            self._all.clear()
        self._local = threading.local()

    # --- devices and modules -------------------------------------------------------------------------

    def get_device(self, device_id: str) -> Record | None:
        row = self._conn().execute("SELECT data FROM devices WHERE id = ?", (device_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def get_devices(self, ids: Iterable[str]) -> dict[str, Record]:
        ids = list(ids)
        out: dict[str, Record] = {}
        c = self._conn()
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            marks = ",".join("?" * len(part))
            for did, data in c.execute(f"SELECT id, data FROM devices WHERE id IN ({marks})", part):  # noqa: S608
                out[did] = json.loads(data)
        return out

    def get_modules(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Record]:
        c = self._conn()
        out: dict[tuple[str, str], Record] = {}
        for dev, mod in keys:
            row = c.execute("SELECT data FROM modules WHERE device_id = ? AND module_id = ?", (dev, mod)).fetchone()
            if row:
                out[(dev, mod)] = json.loads(row[0])
        return out

    def write(
        self,
        devices: dict[str, Record | None],
        modules: dict[tuple[str, str], Record | None] | None = None,
        *,
        query_lag: float | None = None,
    ) -> None:
        """Upsert (record) or delete (None) devices and modules in one transaction.

        With ``query_lag`` (seconds), queries keep seeing each changed device as it was until the lag has passed.
        """
        c = self._conn()
        with c:
            if query_lag is not None and devices:
                now = time.time()
                c.execute("DELETE FROM lagged WHERE due <= ?", (now,))
                # The oldest state queries still see is kept; the newest change becomes visible a lag after it.
                c.executemany(
                    "INSERT INTO lagged (id, before, due) SELECT :id, (SELECT data FROM devices WHERE id = :id), :due "
                    "WHERE true ON CONFLICT(id) DO UPDATE SET due = excluded.due",
                    [{"id": k, "due": now + query_lag} for k in devices],
                )
            ups = [(k, v["status"], _dumps(v)) for k, v in devices.items() if v is not None]
            dels = [(k,) for k, v in devices.items() if v is None]
            self._reindex(c, devices)
            if ups:
                c.executemany("INSERT OR REPLACE INTO devices (id, status, data) VALUES (?, ?, ?)", ups)
            if dels:
                c.executemany("DELETE FROM devices WHERE id = ?", dels)
                c.executemany("DELETE FROM modules WHERE device_id = ?", dels)
            for (dev, mod), rec in (modules or {}).items():
                if rec is None:
                    c.execute("DELETE FROM modules WHERE device_id = ? AND module_id = ?", (dev, mod))
                else:
                    c.execute(
                        "INSERT OR REPLACE INTO modules (device_id, module_id, data) VALUES (?, ?, ?)",
                        (dev, mod, _dumps(rec)),
                    )

    @staticmethod
    def _reindex(c: sqlite3.Connection, devices: dict[str, Record | None]) -> None:
        """Bring ``twin_index`` from the stored devices to ``devices`` (before they are written): only the rows
        that change are deleted and inserted (an update that keeps the twin writes none; a new device reads
        nothing but its id)."""
        ids = list(devices)
        before: dict[str, set[tuple[str, Any, str]]] = {}
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            marks = ",".join("?" * len(part))
            for did, data in c.execute(f"SELECT id, data FROM devices WHERE id IN ({marks})", part):  # noqa: S608
                before[did] = set(index_rows(json.loads(data)))
        gone: list[tuple[str, Any, str]] = []
        new: list[tuple[str, Any, str]] = []
        for did, record in devices.items():
            old = before.get(did, set())
            now = set(index_rows(record)) if record is not None else set()
            gone.extend(old - now)
            new.extend(now - old)
        c.executemany("DELETE FROM twin_index WHERE path = ? AND value = ? AND id = ?", gone)
        c.executemany("INSERT OR IGNORE INTO twin_index (path, value, id) VALUES (?, ?, ?)", new)

    def page_devices(self, after: str | None, limit: int) -> list[Record]:
        c = self._conn()
        if after is None:
            rows = c.execute("SELECT data FROM devices ORDER BY id LIMIT ?", (limit,))
        else:
            rows = c.execute("SELECT data FROM devices WHERE id > ? ORDER BY id LIMIT ?", (after, limit))
        return [json.loads(r[0]) for r in rows]

    def iter_registry(self) -> Iterator[Record]:
        """Every device followed by its modules, in id order, streamed (never all in memory)."""
        conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        try:
            devs = conn.execute("SELECT id, data FROM devices ORDER BY id")
            mods = conn.cursor().execute("SELECT device_id, data FROM modules ORDER BY device_id, module_id")
            pending = mods.fetchone()
            for did, data in devs:
                yield json.loads(data)
                while pending is not None and pending[0] <= did:
                    if pending[0] == did:
                        yield json.loads(pending[1])
                    pending = mods.fetchone()
        finally:
            conn.close()

    def query_devices(
        self, where: Filter | None, seeks: list[Cmp] | None, after: str | None, batch: int
    ) -> Iterator[Record]:
        """Devices as queries see them now (see ``write``'s ``query_lag``), in id order after ``after``, that may
        match ``where`` (a superset: the caller checks each one): read by seeking ``seeks`` (equalities whose
        union holds every match) in the index, or else by walking the devices in id order, ``batch`` rows per
        statement, so a page reads about a page."""
        c = self._conn()
        now = time.time()
        lagging = c.execute("SELECT EXISTS (SELECT 1 FROM lagged WHERE due > ?)", (now,)).fetchone()[0] == 1
        params: dict[str, Any] = {"now": now, "limit": batch}
        cond = _sql(where, params) if where is not None else "1"
        if lagging:  # devices changed within the lag are read from `lagged` below, as they were
            cond += " AND NOT EXISTS (SELECT 1 FROM lagged l WHERE l.id = d.id AND l.due > :now)"
        streams: list[Iterator[tuple[str, str | None]]] = []
        if seeks is None:
            sql = f"SELECT d.id, d.data FROM devices d WHERE d.id > :after AND {cond} ORDER BY d.id LIMIT :limit"  # noqa: S608
            streams.append(self._batches(sql, params, after))
        else:
            for term in seeks:
                p = {**params, "sv": _sql_value(term.value)}
                if term.path == "deviceId":
                    sql = (
                        f"SELECT d.id, d.data FROM devices d WHERE d.id = :sv AND d.id > :after AND {cond} LIMIT :limit"  # noqa: S608
                    )
                else:
                    p["sp"] = term.path
                    sql = (
                        "SELECT d.id, d.data FROM twin_index s CROSS JOIN devices d ON d.id = s.id "  # noqa: S608
                        f"WHERE s.path = :sp AND s.value = :sv AND s.id > :after AND {cond} ORDER BY s.id LIMIT :limit"
                    )
                streams.append(self._batches(sql, p, after))
        if lagging:
            sql = "SELECT id, before FROM lagged WHERE due > :now AND id > :after ORDER BY id LIMIT :limit"
            streams.append(self._batches(sql, {"now": now, "limit": batch}, after))
        if not streams:  # `IN []`: nothing to seek
            return
        last = None
        for did, data in heapq.merge(*streams, key=lambda r: r[0]) if len(streams) > 1 else streams[0]:
            if did == last or data is None:
                continue
            last = did
            yield json.loads(data)

    def _batches(self, sql: str, params: dict[str, Any], after: str | None) -> Iterator[tuple[str, str | None]]:
        """Rows of ``sql`` (id first, ``:after`` and ``:limit`` bound) batch by batch, each after the last id."""
        c = self._conn()
        last = after or ""
        while True:
            rows = c.execute(sql, {**params, "after": last}).fetchall()
            yield from rows
            if len(rows) < params["limit"]:
                return
            last = rows[-1][0]

    def page_modules(self, after: tuple[str, str] | None, limit: int) -> list[Record]:
        """Module identities in (device id, module id) order after ``after`` (queries ``FROM devices.modules``)."""
        dev, mod = after or ("", "")
        rows = self._conn().execute(
            "SELECT data FROM modules WHERE (device_id, module_id) > (?, ?) ORDER BY device_id, module_id LIMIT ?",
            (dev, mod, limit),
        )
        return [json.loads(r[0]) for r in rows]

    def count_visible(self) -> int:
        """How many devices queries see now."""
        return self.statistics_visible()["totalDeviceCount"]

    def statistics_visible(self) -> dict[str, int]:
        """``statistics`` as queries see the registry now (inferred: statistics come from the same index): the
        stored counts, corrected by the changes not yet due."""
        c = self._conn()
        counts = dict(c.execute("SELECT status, COUNT(*) FROM devices GROUP BY status").fetchall())
        pending = c.execute(
            "SELECT l.before, d.status FROM lagged l LEFT JOIN devices d ON d.id = l.id WHERE l.due > ?",
            (time.time(),),
        )
        for before, status in pending:
            if status is not None:
                counts[status] -= 1
            if before is not None:
                was = json.loads(before)["status"]
                counts[was] = counts.get(was, 0) + 1
        enabled, disabled = counts.get("enabled", 0), counts.get("disabled", 0)
        return {
            "totalDeviceCount": enabled + disabled,
            "enabledDeviceCount": enabled,
            "disabledDeviceCount": disabled,
        }

    def get_module(self, device_id: str, module_id: str) -> Record | None:
        return self.get_modules([(device_id, module_id)]).get((device_id, module_id))

    def device_modules(self, device_id: str) -> list[Record]:
        rows = (
            self._conn()
            .execute("SELECT data FROM modules WHERE device_id = ? ORDER BY module_id", (device_id,))
            .fetchall()
        )
        return [json.loads(r[0]) for r in rows]

    # --- configurations ------------------------------------------------------------------------------

    def get_configuration(self, config_id: str) -> dict[str, Any] | None:
        row = self._conn().execute("SELECT data FROM configurations WHERE id = ?", (config_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def list_configurations(self, limit: int = -1) -> list[dict[str, Any]]:
        rows = self._conn().execute("SELECT data FROM configurations ORDER BY id LIMIT ?", (limit,))
        return [json.loads(r[0]) for r in rows]

    def count_configurations(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM configurations").fetchone()[0])

    def put_configuration(self, config: dict[str, Any]) -> None:
        with self._conn() as c:
            c.execute("INSERT OR REPLACE INTO configurations (id, data) VALUES (?, ?)", (config["id"], _dumps(config)))

    def delete_configuration(self, config_id: str) -> bool:
        with self._conn() as c:
            return c.execute("DELETE FROM configurations WHERE id = ?", (config_id,)).rowcount == 1

    def statistics(self) -> dict[str, int]:
        rows = dict(self._conn().execute("SELECT status, COUNT(*) FROM devices GROUP BY status").fetchall())
        enabled, disabled = rows.get("enabled", 0), rows.get("disabled", 0)
        return {
            "totalDeviceCount": enabled + disabled,
            "enabledDeviceCount": enabled,
            "disabledDeviceCount": disabled,
        }

    def count_registry(self) -> int:
        c = self._conn()
        return int(c.execute("SELECT (SELECT COUNT(*) FROM devices) + (SELECT COUNT(*) FROM modules)").fetchone()[0])

    # --- jobs ----------------------------------------------------------------------------------------

    def insert_job(self, job: dict[str, Any], *, created: str) -> None:
        with self._conn() as c:
            c.execute(
                "INSERT INTO jobs (id, created, status, data) VALUES (?, ?, ?, ?)",
                (job["jobId"], created, job["status"], _dumps(job)),
            )

    def update_job(self, job: dict[str, Any], *, only_if_active: bool = True) -> bool:
        """Save ``job``; with ``only_if_active`` only while the stored job is still enqueued or running."""
        sql = "UPDATE jobs SET status = ?, data = ? WHERE id = ?"
        if only_if_active:
            sql += " AND status IN ('enqueued', 'running')"
        with self._conn() as c:
            cur = c.execute(sql, (job["status"], _dumps(job), job["jobId"]))
            return cur.rowcount == 1

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        row = self._conn().execute("SELECT data FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def list_jobs(self) -> list[dict[str, Any]]:
        return [json.loads(r[0]) for r in self._conn().execute("SELECT data FROM jobs ORDER BY created, id")]

    def active_jobs(self) -> list[dict[str, Any]]:
        rows = self._conn().execute(
            "SELECT data FROM jobs WHERE status IN ('enqueued', 'running') ORDER BY created, id"
        )
        return [json.loads(r[0]) for r in rows]

    def delete_jobs_ended_before(self, cutoff_iso: str) -> int:
        with self._conn() as c:
            rows = c.execute("SELECT id, data FROM jobs WHERE status NOT IN ('enqueued', 'running')").fetchall()
            old = [(jid,) for jid, data in rows if (json.loads(data).get("endTimeUtc") or "9999") < cutoff_iso]
            c.executemany("DELETE FROM jobs WHERE id = ?", old)
            return len(old)

    def reset(self) -> None:
        with self._conn() as c:
            c.execute("DELETE FROM devices")
            c.execute("DELETE FROM modules")
            c.execute("DELETE FROM jobs")
            c.execute("DELETE FROM configurations")
            c.execute("DELETE FROM lagged")
            c.execute("DELETE FROM twin_index")


# --- the query index ------------------------------------------------------------------------------------

_INT64 = 2**63


def _sql_value(v: Any) -> Any:
    """A JSON scalar as the index stores it: Booleans 1/0 (SQLite has no Boolean), integers beyond 64 bits as
    floats (SQLite's integers are 64-bit)."""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int) and not -_INT64 <= v < _INT64:
        return float(v)
    return v


def _leaves(prefix: str, node: Any, device_id: str, out: list[tuple[str, Any, str]]) -> None:
    for key, value in node.items():
        path = f"{prefix}.{key}"
        if isinstance(value, dict):
            _leaves(path, value, device_id, out)
        elif isinstance(value, bool | int | str) or (isinstance(value, float) and math.isfinite(value)):
            out.append((path, _sql_value(value), device_id))
        # null and arrays are not indexed: no indexed condition (=, IN, <, STARTSWITH...) is true of them


def index_rows(record: Record) -> list[tuple[str, Any, str]]:
    """The ``twin_index`` rows of a device (``query.indexed`` says which paths)."""
    did = record["deviceId"]
    out: list[tuple[str, Any, str]] = [
        ("status", record["status"], did),
        ("connectionState", record["connectionState"], did),
    ]
    twin = record["twin"]
    _leaves("tags", twin.get("tags") or {}, did, out)
    _leaves("properties.desired", twin.get("desired") or {}, did, out)
    _leaves("properties.reported", twin.get("reported") or {}, did, out)
    return out


def _next_prefix(prefix: str) -> str | None:
    """The smallest string above every string starting with ``prefix`` (None: no bound)."""
    while prefix and ord(prefix[-1]) == 0x10FFFF:
        prefix = prefix[:-1]
    return prefix[:-1] + chr(ord(prefix[-1]) + 1) if prefix else None


def _range(column: str, op: str, value: Any, name: str, params: dict[str, Any]) -> str:
    """``column op value`` for the index's untyped column, bounded to the value's type (numbers sort before
    text, so a numeric lower bound stops at the first text and a text upper bound starts at the first text)."""
    params[name] = _sql_value(value)
    if op in ("=", "!="):
        return f"{column} {op} :{name}"
    if op == "suffix":  # the last characters (substr counts characters); a number never ends a match (rechecked)
        return f"substr({column}, -length(:{name})) = :{name}" if value else f"{column} >= ''"
    if op == "prefix":
        upper = _next_prefix(value)
        if upper is None:
            return f"{column} >= ''"
        params[name + "u"] = upper
        return f"{column} >= :{name} AND {column} < :{name}u"
    cond = f"{column} {op} :{name}"
    if isinstance(value, str):
        return cond + f" AND {column} >= ''"
    return cond + f" AND {column} < ''"


# Where a twin path lives in a stored device record (model.py's record, not the twin JSON queries see).
_RECORD_PATHS = {
    "tags": "$.twin.tags",
    "properties.desired": "$.twin.desired",
    "properties.reported": "$.twin.reported",
}


def _json_path(path: str) -> str | None:
    """The SQLite JSON path of an indexed twin path in the stored record, keys quoted (None: not expressible)."""
    if path in ("status", "connectionState"):
        return f"$.{path}"
    for prefix, stored in _RECORD_PATHS.items():
        if path.startswith(prefix + "."):
            keys = path[len(prefix) + 1 :].split(".")
            if any('"' in k or "\\" in k for k in keys):
                return None
            return stored + "".join(f'."{k}"' for k in keys)
    return None


def _sql(f: Filter, params: dict[str, Any]) -> str:
    """A query filter as an SQL condition over ``devices d``; bind values are added to ``params``."""
    if isinstance(f, AllOf):
        return "(" + " AND ".join(_sql(p, params) for p in f.parts) + ")"
    if isinstance(f, AnyOf):
        return "(" + " OR ".join(_sql(p, params) for p in f.parts) + ")" if f.parts else "0"
    name = f"p{len(params)}"
    if f.path == "deviceId":
        if not isinstance(f.value, str):
            return "0"  # ids are strings: nothing else compares to them
        return "(" + _range("d.id", f.op, f.value, name, params) + ")"
    where = _json_path(f.path)
    if where is None:
        return "1"  # a key SQLite's JSON paths cannot name: left to the row-by-row check
    # Checked on the row being read (its JSON), not through the index: a probe of the index per row would seek
    # (path, value) ranges, and a second index by id would cost every write.
    params[name + "p"] = where
    return "(" + _range(f"json_extract(d.data, :{name}p)", f.op, f.value, name, params) + ")"
