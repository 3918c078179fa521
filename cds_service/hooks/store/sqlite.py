"""The SQLite back end, the embedded default (CDS_DATABASE a file path): WAL mode,
one connection per thread and process kept open, so several threads and gunicorn
workers on one host can share the file."""

from __future__ import annotations

import os
import sqlite3
import threading
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from .migrations import Migrations, migrate


def open_database(path: Path) -> None:
    """Create the file in WAL mode, so workers can share it (migrations make the tables)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(connect(path)) as db:
        db.execute("PRAGMA journal_mode=WAL")


def connect(path: Path) -> sqlite3.Connection:
    """A short-lived connection in autocommit mode that waits on other writers."""
    db = sqlite3.connect(path, timeout=10, isolation_level=None)
    db.execute("PRAGMA busy_timeout=10000")
    return db


_inherited: list[Any] = []  # a parent process's connections, never used or closed in a child


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


class SqliteDatabase:
    """A SQLite file: a connection per thread and process for ordinary work at
    `synchronous` (None: SQLite's default), another for durable work at FULL."""

    types = {"id": "INTEGER PRIMARY KEY", "json": "TEXT"}
    errors: tuple[type[BaseException], ...] = (sqlite3.Error,)

    def __init__(self, path: str | Path, *, synchronous: str | None = None):
        self.path = Path(path)
        open_database(self.path)
        self.connections = Connections(self.path, synchronous=synchronous)
        self.durable_connections = Connections(self.path, synchronous="FULL")

    def _pick(self, durable: bool) -> Connections:
        return self.durable_connections if durable else self.connections

    @contextmanager
    def transaction(self, *, durable: bool = False, immediate: bool = False) -> Iterator[sqlite3.Connection]:
        """`immediate` takes the write lock at BEGIN (for read-then-write transactions)."""
        with self._pick(durable).transaction("BEGIN IMMEDIATE" if immediate else "BEGIN") as db:
            yield db

    def execute(self, sql: str, params: Sequence[Any] = (), *, durable: bool = False) -> int:
        """One statement in its own transaction; returns its rowcount."""
        return self._pick(durable).get().execute(sql, params).rowcount

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return self.connections.rows(sql, tuple(params))

    def migrate(self, component: str, migrations: Migrations) -> None:
        with self.transaction(durable=True, immediate=True) as db:  # the write lock: one migrator at a time
            migrate(db, self.types, component, migrations)
