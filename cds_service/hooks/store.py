"""Durable records: the audit of every hook call and the feedback on cards.

Two back ends behind one set of queries (a small dialect layer: placeholders,
two column types, how a transaction is made durable):

- SQLite, the embedded default (CDS_DATABASE a file path): WAL mode, one
  connection per thread and process kept open, so several threads and gunicorn
  workers on one host can share the file.
- PostgreSQL (CDS_DATABASE=postgresql://...), for a service on several hosts:
  one bounded psycopg connection pool per worker process.

The schema is created on start by numbered migrations recorded in a
schema_version table; on PostgreSQL under an advisory lock, so that workers and
hosts starting at once do not race. Nothing here holds PHI or tokens: hook calls
are keyed by hookInstance, cards by uuid, and free-text feedback comments are
not kept (only whether there was one).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sqlite3
import threading
import urllib.parse
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from werkzeug.exceptions import ServiceUnavailable

log = logging.getLogger("cds_service.store")

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
DEFAULT_POOL_SIZE = 8  # PostgreSQL connections per worker process, at most (CDS_DATABASE_POOL_SIZE)
POOL_TIMEOUT = 3.0  # seconds a request waits for a pooled connection before failing
CONNECT_TIMEOUT = 5  # seconds to open a connection to PostgreSQL
STATEMENT_TIMEOUT_MS = 5000  # longest a statement may run (or wait on a lock) on PostgreSQL
MIGRATION_TIMEOUT_MS = 60000  # longest a start-up waits for another process's migration
#: Key of the PostgreSQL advisory lock held while the schema is created or migrated.
MIGRATION_LOCK = 0x6364_735F_7363_686D  # "cds_schm"

# --------------------------------------------------------------------------- the schema

#: Migrations per component: (version, statements). {id} and {json} are the dialect's
#: column types. A version once released is never edited: a change is a new version.
STORE_MIGRATIONS: Sequence[tuple[int, Sequence[str]]] = (
    (1, (
        """CREATE TABLE IF NOT EXISTS hook_call (
            id {id},
            hook_instance TEXT NOT NULL,
            service TEXT NOT NULL,
            received_at TEXT NOT NULL,
            status_code INTEGER NOT NULL,
            outcome TEXT NOT NULL,
            latency_ms DOUBLE PRECISION NOT NULL,
            data_sources {json},  -- prefetch key -> source, counts, why
            trials {json},        -- [{{trial, definitionVersion, status, card}}]
            timings {json}        -- phase -> ms
        )""",
        "CREATE INDEX IF NOT EXISTS hook_call_instance ON hook_call (hook_instance)",
        """CREATE TABLE IF NOT EXISTS card (
            uuid TEXT PRIMARY KEY,
            hook_instance TEXT NOT NULL,
            trial TEXT NOT NULL,
            definition_version TEXT NOT NULL,
            status TEXT NOT NULL,
            suggestions {json},   -- list of suggestion uuids
            created_at TEXT NOT NULL
        )""",
        """CREATE TABLE IF NOT EXISTS feedback (
            id {id},
            service TEXT NOT NULL,
            card TEXT NOT NULL,
            outcome TEXT NOT NULL,
            outcome_timestamp TEXT NOT NULL,
            accepted_suggestions {json},
            override_system TEXT,
            override_code TEXT,
            has_comment INTEGER NOT NULL DEFAULT 0,
            known_card INTEGER NOT NULL,
            received_at TEXT NOT NULL,
            UNIQUE (service, card, outcome, outcome_timestamp)
        )""",
    )),
)

_JSON_COLUMNS = ("data_sources", "trials", "timings", "suggestions", "accepted_suggestions")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def _json(value: Any) -> str | None:
    return json.dumps(value, separators=(",", ":"), sort_keys=True) if value else None


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    """A row with its JSON columns as Python values: SQLite keeps them as text,
    PostgreSQL (JSONB) hands them over parsed."""
    for name in _JSON_COLUMNS:
        if isinstance(row.get(name), str):
            row[name] = json.loads(row[name])
    return row


# --------------------------------------------------------------------------- where the database is

def is_postgres_url(value: object) -> bool:
    return isinstance(value, str) and value[:13].lower().startswith(POSTGRES_SCHEMES)


class DatabaseUrl(str):
    """A PostgreSQL URL (libpq syntax) where the service expects its database, with
    what each host keeps for itself: `local_dir`, where per-host files go
    (`with_name`, as for a SQLite path: a replay store kept per host), and
    `pool_size`, the connections each worker process may open. Its repr hides the
    password; prefer PGPASSWORD or a ~/.pgpass file to a password in the URL."""

    local_dir: Path
    pool_size: int

    def __new__(cls, url: str, *, local_dir: str | Path = Path(".cds-data"), pool_size: int = DEFAULT_POOL_SIZE):
        if not is_postgres_url(url):
            raise ValueError("not a postgresql:// URL")
        self = super().__new__(cls, url)
        self.local_dir = Path(local_dir)
        self.pool_size = max(1, int(pool_size))
        return self

    def __reduce__(self):
        return (_database_url, (str(self), str(self.local_dir), self.pool_size))

    def redacted(self) -> str:
        """The URL without its password (in the authority or a password= parameter)."""
        parts = urllib.parse.urlsplit(str(self))
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            if ":" in userinfo:
                netloc = userinfo.split(":", 1)[0] + ":***@" + host
        query = "&".join("password=***" if p.lower().startswith("password=") else p
                         for p in parts.query.split("&")) if parts.query else ""
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))

    def __repr__(self) -> str:
        return f"DatabaseUrl({self.redacted()!r})"

    def with_name(self, name: str) -> Path:
        """A per-host file: `name` in the local directory (a remote database has no folder)."""
        return self.local_dir / name


def _database_url(url: str, local_dir: str, pool_size: int) -> DatabaseUrl:
    return DatabaseUrl(url, local_dir=local_dir, pool_size=pool_size)


# --------------------------------------------------------------------------- SQLite

def open_database(path: Path, schema: str = "") -> None:
    """Create the file (and the tables of `schema`, if any), in WAL mode so workers can share it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(connect(path)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        if schema:
            db.executescript(schema)


def connect(path: Path) -> sqlite3.Connection:
    """A short-lived connection in autocommit mode that waits on other writers."""
    db = sqlite3.connect(path, timeout=10, isolation_level=None)
    db.execute("PRAGMA busy_timeout=10000")
    return db


_inherited: list[Any] = []  # a parent process's connections and pools, never used or closed in a child


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


# --------------------------------------------------------------------------- one interface, two dialects
#
# Both databases take the same SQL: `?` placeholders (turned into psycopg's %s),
# INSERT ... ON CONFLICT (SQLite >= 3.24), and the column types {id} and {json}.
# A transaction yields an object with execute(sql, params) -> cursor (rowcount,
# fetchone, fetchall). `durable` marks what the caller acknowledges to a client:
# synced before the commit returns (SQLite synchronous=FULL; PostgreSQL
# synchronous_commit=on); the rest may lose its last commits in a crash of the
# host (SQLite NORMAL; PostgreSQL synchronous_commit=off), never its consistency.

def _migrate(tx: Any, types: dict[str, str], component: str,
             migrations: Sequence[tuple[int, Sequence[str]]]) -> None:
    tx.execute("CREATE TABLE IF NOT EXISTS schema_version (component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
    row = tx.execute("SELECT version FROM schema_version WHERE component = ?", (component,)).fetchone()
    current = row[0] if row else 0
    latest = current
    for version, statements in migrations:
        if version > current:
            for statement in statements:
                tx.execute(statement.format(**types))
            latest = max(latest, version)
    if latest != current or row is None:
        tx.execute("INSERT INTO schema_version (component, version) VALUES (?, ?) "
                   "ON CONFLICT (component) DO UPDATE SET version = excluded.version", (component, latest))


class SqliteDatabase:
    """A SQLite file: a connection per thread and process for ordinary work at
    `synchronous` (None: SQLite's default), another for durable work at FULL."""

    dialect = "sqlite"
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

    def migrate(self, component: str, migrations: Sequence[tuple[int, Sequence[str]]]) -> None:
        with self.transaction(durable=True, immediate=True) as db:  # the write lock: one migrator at a time
            _migrate(db, self.types, component, migrations)


class _PgTransaction:
    """A psycopg connection that takes SQLite's `?` placeholders."""

    __slots__ = ("conn",)

    def __init__(self, conn: Any):
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.conn.execute(sql.replace("?", "%s"), params)


class PostgresDatabase:
    """A PostgreSQL database through a bounded psycopg connection pool (one per
    process: a pool opened before a fork is left to the parent, never used or closed
    in the child). Connections are in autocommit mode; transactions are explicit."""

    dialect = "postgresql"
    types = {"id": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", "json": "JSONB"}

    def __init__(self, url: str, *, pool_size: int = DEFAULT_POOL_SIZE):
        import psycopg  # only needed with a PostgreSQL database

        self.url = url if isinstance(url, DatabaseUrl) else DatabaseUrl(url, pool_size=pool_size)
        self.pool_size = max(1, int(pool_size))
        self.errors: tuple[type[BaseException], ...] = (psycopg.Error,)  # psycopg_pool's errors are among them
        self._pool: Any = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"PostgresDatabase({self.url.redacted()!r}, pool_size={self.pool_size})"

    def _connect_kwargs(self) -> dict[str, Any]:
        from psycopg.conninfo import conninfo_to_dict

        # A timeout written in the URL wins over ours.
        return {} if "connect_timeout" in conninfo_to_dict(str(self.url)) else {"connect_timeout": CONNECT_TIMEOUT}

    @staticmethod
    def _configure(conn: Any) -> None:
        # Every wait bounded; commits synced unless a transaction says otherwise (audit).
        conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
        conn.execute("SET synchronous_commit = on")

    def pool(self) -> Any:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    from psycopg_pool import ConnectionPool

                    if self._pool is not None:
                        _inherited.append(self._pool)  # the parent's: its sockets are the parent's sessions
                    # check: a connection the server dropped (restart, failover, idle timeout) is
                    # replaced before use, at the cost of an empty query per checkout (~0.1 ms).
                    self._pool = ConnectionPool(
                        str(self.url), min_size=1, max_size=self.pool_size, timeout=POOL_TIMEOUT,
                        kwargs={"autocommit": True, **self._connect_kwargs()}, configure=self._configure,
                        check=ConnectionPool.check_connection, name="cds-service", open=True)
                    self._pid = os.getpid()
        return self._pool

    def close(self) -> None:
        """Close this process's pool (tests; a worker's pool lives as long as the worker)."""
        with self._lock:
            if self._pool is not None and self._pid == os.getpid():
                self._pool.close()
            self._pool, self._pid = None, None

    @contextmanager
    def transaction(self, *, durable: bool = False, immediate: bool = False) -> Iterator[_PgTransaction]:
        """`immediate` needs nothing here: PostgreSQL locks rows, not the database."""
        with self.pool().connection() as conn, conn.transaction():
            if not durable:
                conn.execute("SET LOCAL synchronous_commit = off")
            yield _PgTransaction(conn)

    def execute(self, sql: str, params: Sequence[Any] = (), *, durable: bool = False) -> int:
        """One statement in its own (synced) transaction; returns its rowcount."""
        with self.pool().connection() as conn:
            return conn.execute(sql.replace("?", "%s"), params).rowcount

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        from psycopg.rows import dict_row

        with self.pool().connection() as conn:
            return conn.cursor(row_factory=dict_row).execute(sql.replace("?", "%s"), params).fetchall()

    def migrate(self, component: str, migrations: Sequence[tuple[int, Sequence[str]]]) -> None:
        """Create or migrate the schema, one process at a time (an advisory lock held
        until the commit). On its own connection, so that a failure to connect says why."""
        import psycopg

        with psycopg.connect(str(self.url), autocommit=True, **self._connect_kwargs()) as conn:
            conn.execute(f"SET statement_timeout = {MIGRATION_TIMEOUT_MS}")
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                _migrate(_PgTransaction(conn), self.types, component, migrations)


_postgres: dict[tuple[str, int], PostgresDatabase] = {}  # one per URL and pool size: a handful at most
_postgres_lock = threading.Lock()


def postgres_database(url: str) -> PostgresDatabase:
    """The PostgresDatabase for a URL, shared within the process: the store and the
    replay store on one database draw on one pool."""
    pool_size = url.pool_size if isinstance(url, DatabaseUrl) else DEFAULT_POOL_SIZE
    key = (str(url), pool_size)
    with _postgres_lock:
        database = _postgres.get(key)
        if database is None:
            database = _postgres[key] = PostgresDatabase(url, pool_size=pool_size)
        return database


def close_databases() -> None:
    """Close this process's PostgreSQL pools and forget them (tests; a worker keeps its pools)."""
    with _postgres_lock:
        databases = list(_postgres.values())
        _postgres.clear()
    for database in databases:
        database.close()


Database = SqliteDatabase | PostgresDatabase


def database_for(target: str | Path, *, synchronous: str | None = None) -> Database:
    """A postgresql:// URL's shared PostgresDatabase, else a SQLite file at `target`."""
    if is_postgres_url(target):
        return postgres_database(str(target) if not isinstance(target, DatabaseUrl) else target)
    return SqliteDatabase(Path(target), synchronous=synchronous)


# --------------------------------------------------------------------------- the records

class StoreUnavailable(ServiceUnavailable):
    """Feedback could not be stored (the database is unreachable, or failed): the
    client gets a 503 OperationOutcome instead of its 200, and sends it again."""

    description = "the feedback could not be stored now; send it again"


def _unavailable(operation: str, exc: BaseException) -> None:
    # The class only: a database error's message may quote the values it was given.
    log.error(json.dumps({"event": "store", "outcome": "unavailable", "operation": operation,
                          "error": type(exc).__name__}, separators=(",", ":")))


class Store:
    """Feedback and the audit, in a SQLite file (a path) or PostgreSQL (a postgresql:// URL)."""

    def __init__(self, target: str | Path):
        # SQLite: WAL + NORMAL survives a crash of the process: enough for the audit. Feedback is
        # acknowledged to the EHR, so it is written durably (FULL; synced before the 200).
        self.db = database_for(target, synchronous="NORMAL")
        self.path = self.db.path if isinstance(self.db, SqliteDatabase) else None
        self.db.migrate("store", STORE_MIGRATIONS)

    def ping(self) -> None:
        self.db.rows("SELECT 1 FROM hook_call LIMIT 1")

    def record_hook_call(self, *, hook_instance: str, service: str, status_code: int, outcome: str,
                         latency_ms: float, data_sources: dict[str, Any] | None = None,
                         trials: list[dict[str, Any]] | None = None, timings: dict[str, float] | None = None,
                         cards: Iterable[dict[str, Any]] = ()) -> None:
        """Written after the response has gone out: a failure is logged, not raised."""
        try:
            self._record_hook_call(hook_instance, service, status_code, outcome, latency_ms, data_sources, trials,
                                   timings, cards)
        except self.db.errors as exc:
            _unavailable("audit", exc)

    def _record_hook_call(self, hook_instance, service, status_code, outcome, latency_ms, data_sources, trials,
                          timings, cards) -> None:
        now = _now()
        with self.db.transaction() as db:
            db.execute("INSERT INTO hook_call (hook_instance, service, received_at, status_code, outcome, "
                       "latency_ms, data_sources, trials, timings) VALUES (?,?,?,?,?,?,?,?,?)",
                       (hook_instance, service, now, status_code, outcome, round(latency_ms, 2),
                        _json(data_sources), _json(trials), _json(timings)))
            for card in cards:
                db.execute("INSERT INTO card (uuid, hook_instance, trial, definition_version, status, "
                           "suggestions, created_at) VALUES (?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                           (card["uuid"], hook_instance, card["trial"], card["definitionVersion"], card["status"],
                            _json(card.get("suggestions")), now))

    def record_feedback(self, service: str, items: list[dict[str, Any]]) -> int:
        """Store feedback entries; repeats of the same entry are stored once.
        Returns how many were new. Committed durably before returning; StoreUnavailable
        (a 503) when it could not be."""
        try:
            return self._record_feedback(service, items)
        except self.db.errors as exc:
            _unavailable("feedback", exc)
            raise StoreUnavailable() from None

    def _record_feedback(self, service: str, items: list[dict[str, Any]]) -> int:
        now = _now()
        new = 0
        with self.db.transaction(durable=True, immediate=True) as db:
            for item in items:
                known = db.execute("SELECT 1 FROM card WHERE uuid = ?", (item["card"],)).fetchone() is not None
                reason = (item.get("overrideReason") or {}).get("reason") or {}
                cursor = db.execute(
                    "INSERT INTO feedback (service, card, outcome, outcome_timestamp, "
                    "accepted_suggestions, override_system, override_code, has_comment, known_card, received_at) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                    (service, item["card"], item["outcome"], item["outcomeTimestamp"],
                     _json([s["id"] for s in item.get("acceptedSuggestions", [])]), reason.get("system"),
                     reason.get("code"), int(bool((item.get("overrideReason") or {}).get("userComment"))),
                     int(known), now))
                new += cursor.rowcount
        return new

    def feedback(self) -> list[dict[str, Any]]:
        return [_decoded(r) for r in self.db.rows("SELECT * FROM feedback ORDER BY id")]

    def hook_calls(self) -> list[dict[str, Any]]:
        return [_decoded(r) for r in self.db.rows("SELECT * FROM hook_call ORDER BY id")]
