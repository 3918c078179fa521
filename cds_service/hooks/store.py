"""Durable records: the audit of every hook call and the feedback on cards.

SQLite in WAL mode, one connection per thread and process kept open, so
several threads and gunicorn workers on one host can share the file. Nothing here
holds PHI or tokens: hook calls are keyed by hookInstance, cards by uuid, and
free-text feedback comments are not kept (only whether there was one).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import threading
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

_SCHEMA = """
CREATE TABLE IF NOT EXISTS hook_call (
    id INTEGER PRIMARY KEY,
    hook_instance TEXT NOT NULL,
    service TEXT NOT NULL,
    received_at TEXT NOT NULL,
    status_code INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    latency_ms REAL NOT NULL,
    data_sources TEXT,  -- JSON: prefetch key -> source, counts, why
    trials TEXT,        -- JSON: [{trial, definitionVersion, status, card}]
    timings TEXT        -- JSON: phase -> ms
);
CREATE INDEX IF NOT EXISTS hook_call_instance ON hook_call (hook_instance);
CREATE TABLE IF NOT EXISTS card (
    uuid TEXT PRIMARY KEY,
    hook_instance TEXT NOT NULL,
    trial TEXT NOT NULL,
    definition_version TEXT NOT NULL,
    status TEXT NOT NULL,
    suggestions TEXT,   -- JSON list of suggestion uuids
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY,
    service TEXT NOT NULL,
    card TEXT NOT NULL,
    outcome TEXT NOT NULL,
    outcome_timestamp TEXT NOT NULL,
    accepted_suggestions TEXT,
    override_system TEXT,
    override_code TEXT,
    has_comment INTEGER NOT NULL DEFAULT 0,
    known_card INTEGER NOT NULL,
    received_at TEXT NOT NULL,
    UNIQUE (service, card, outcome, outcome_timestamp)
);
"""


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def _json(value: Any) -> str | None:
    return json.dumps(value, separators=(",", ":"), sort_keys=True) if value else None


def open_database(path: Path, schema: str) -> None:
    """Create the file and its tables, in WAL mode so workers can share it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(connect(path)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(schema)


def connect(path: Path) -> sqlite3.Connection:
    """A short-lived connection in autocommit mode that waits on other writers."""
    db = sqlite3.connect(path, timeout=10, isolation_level=None)
    db.execute("PRAGMA busy_timeout=10000")
    return db


_inherited: list[sqlite3.Connection] = []  # a parent process's connections, never used or closed in a child


class Connections:
    """One open connection per thread and process to a SQLite file. Opening and
    closing one per operation cost about 1 ms a hook call (closing the last
    connection checkpoints the WAL), and left the worker's caches cold for the next
    request. A connection is never shared across threads, nor used in a forked child."""

    def __init__(self, path: Path, *, synchronous: str | None = None):
        self.path = path
        self.synchronous = synchronous  # PRAGMA synchronous of every connection; None: SQLite's default
        self._local = threading.local()

    def get(self) -> sqlite3.Connection:
        local = self._local
        db = getattr(local, "db", None)
        if db is None or local.pid != os.getpid():
            if db is not None:
                _inherited.append(db)  # closing it here could disturb the parent's use of the file
            db = local.db = connect(self.path)
            if self.synchronous is not None:
                db.execute(f"PRAGMA synchronous={self.synchronous}")
            local.pid = os.getpid()
        return db

    @contextmanager
    def transaction(self, begin: str = "BEGIN") -> Iterator[sqlite3.Connection]:
        """BEGIN ... COMMIT; rolled back on any error, so the kept connection is clean."""
        db = self.get()
        db.execute(begin)
        try:
            yield db
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def rows(self, sql: str, params: tuple = ()) -> list[dict[str, Any]]:
        cursor = self.get().cursor()
        cursor.row_factory = sqlite3.Row
        return [dict(r) for r in cursor.execute(sql, params)]


class Store:
    def __init__(self, path: Path):
        self.path = Path(path)
        open_database(self.path, _SCHEMA)
        # WAL + NORMAL survives a crash of the process: enough for the audit. Feedback is
        # acknowledged to the EHR, so it is written with FULL (synced before the 200).
        self._db = Connections(self.path, synchronous="NORMAL")
        self._durable = Connections(self.path, synchronous="FULL")

    def ping(self) -> None:
        self._db.get().execute("SELECT 1 FROM hook_call LIMIT 1").fetchall()

    def record_hook_call(self, *, hook_instance: str, service: str, status_code: int, outcome: str,
                         latency_ms: float, data_sources: dict[str, Any] | None = None,
                         trials: list[dict[str, Any]] | None = None, timings: dict[str, float] | None = None,
                         cards: Iterable[dict[str, Any]] = ()) -> None:
        now = _now()
        with self._db.transaction() as db:
            db.execute("INSERT INTO hook_call (hook_instance, service, received_at, status_code, outcome, "
                       "latency_ms, data_sources, trials, timings) VALUES (?,?,?,?,?,?,?,?,?)",
                       (hook_instance, service, now, status_code, outcome, round(latency_ms, 2),
                        _json(data_sources), _json(trials), _json(timings)))
            for card in cards:
                db.execute("INSERT OR IGNORE INTO card (uuid, hook_instance, trial, definition_version, status, "
                           "suggestions, created_at) VALUES (?,?,?,?,?,?,?)",
                           (card["uuid"], hook_instance, card["trial"], card["definitionVersion"], card["status"],
                            _json(card.get("suggestions")), now))

    def record_feedback(self, service: str, items: list[dict[str, Any]]) -> int:
        """Store feedback entries; repeats of the same entry are stored once.
        Returns how many were new. Committed (fsync) before returning."""
        now = _now()
        new = 0
        with self._durable.transaction("BEGIN IMMEDIATE") as db:
            for item in items:
                known = db.execute("SELECT 1 FROM card WHERE uuid = ?", (item["card"],)).fetchone() is not None
                reason = (item.get("overrideReason") or {}).get("reason") or {}
                cursor = db.execute(
                    "INSERT OR IGNORE INTO feedback (service, card, outcome, outcome_timestamp, "
                    "accepted_suggestions, override_system, override_code, has_comment, known_card, received_at) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (service, item["card"], item["outcome"], item["outcomeTimestamp"],
                     _json([s["id"] for s in item.get("acceptedSuggestions", [])]), reason.get("system"),
                     reason.get("code"), int(bool((item.get("overrideReason") or {}).get("userComment"))),
                     int(known), now))
                new += cursor.rowcount
        return new

    def feedback(self) -> list[dict[str, Any]]:
        return self._db.rows("SELECT * FROM feedback ORDER BY id")

    def hook_calls(self) -> list[dict[str, Any]]:
        rows = self._db.rows("SELECT * FROM hook_call ORDER BY id")
        for row in rows:
            for name in ("data_sources", "trials", "timings"):
                row[name] = json.loads(row[name]) if row[name] else None
        return rows
