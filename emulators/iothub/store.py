"""SQLite persistence of the emulated hub: devices, modules and jobs. The only module that imports sqlite3.

Each thread gets its own connection (sqlite3 connections are not shared across threads); WAL mode lets the job
runner stream an export while request threads keep reading and writing.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .model import Record

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
"""
# A device as queries see it at :now: its stored data, or the data from before a change that is not due yet.
_VISIBLE = """
SELECT id, v FROM (
    SELECT d.id AS id, CASE WHEN l.due > :now THEN l.before ELSE d.data END AS v
    FROM devices d LEFT JOIN lagged l ON l.id = d.id WHERE d.id > :after
    UNION ALL
    SELECT l.id AS id, l.before AS v FROM lagged l
    WHERE l.due > :now AND l.id > :after AND NOT EXISTS (SELECT 1 FROM devices d WHERE d.id = l.id)
) WHERE v IS NOT NULL ORDER BY id LIMIT :limit
"""
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

    def page_visible(self, after: str | None, limit: int) -> list[Record]:
        """Devices in id order as queries see them now (see ``write``'s ``query_lag``)."""
        rows = self._conn().execute(_VISIBLE, {"now": time.time(), "after": after or "", "limit": limit})
        return [json.loads(v) for _, v in rows]

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
