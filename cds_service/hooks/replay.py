"""The replay (jti) stores: where the authenticator remembers each token's jti
until the token expires, so that a token cannot be replayed (CDS Hooks 2.0
§Trusting CDS Clients).

CDS_JTI_STORE chooses one (config.py resolves "database"):

- "sqlite": a SQLite file beside the service database, shared by the workers of one host;
- a postgresql:// URL (by default the service's own PostgreSQL database): shared by every host;
- a redis:// URL: shared by every host.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from pathlib import Path
from typing import Any, Callable, Protocol

from .store import Database, SqliteDatabase, is_postgres_url, postgres_database
from .store.migrations import Migrations


class ReplayStoreUnavailable(Exception):
    """The jti store cannot be read or written: callers must fail closed."""


class JtiStore(Protocol):
    def remember(self, iss: str, jti: str, exp: int) -> bool:
        """Record that (iss, jti) was used by a token valid until `exp`.
        True if it is new, False if it was seen before (a replay)."""


# --------------------------------------------------------------------------- in a SQL database

JTI_MIGRATIONS: Migrations = (
    (1, (
        """CREATE TABLE IF NOT EXISTS jti (
            iss TEXT NOT NULL,
            jti TEXT NOT NULL,
            exp BIGINT NOT NULL,
            PRIMARY KEY (iss, jti)
        )""",
        "CREATE INDEX IF NOT EXISTS jti_exp ON jti (exp)",
    )),
)

# New, or the row of a token that expired (more than the leeway ago) and no longer
# protects anything: taken over, so that a later legitimate reuse of the value is
# not a false replay. A live row is left alone and nothing is written: rowcount 0.
# One statement, atomic on both databases: of two workers or hosts that present the
# same jti at once, exactly one gets rowcount 1.
_REMEMBER = ("INSERT INTO jti (iss, jti, exp) VALUES (?, ?, ?) "
             "ON CONFLICT (iss, jti) DO UPDATE SET exp = excluded.exp WHERE jti.exp < ?")


class DatabaseJtiStore:
    """The jti replay cache in a SQL database (the store package's SQLite or PostgreSQL).

    A row lives until its token's `exp` plus the leeway (the longest the token
    is accepted); expired rows are purged every `purge_every` new entries."""

    def __init__(self, db: Database, *, leeway: float = 60.0, clock: Callable[[], float] = time.time,
                 purge_every: int = 100):
        self.db = db
        self.leeway = float(leeway)
        self._clock = clock
        self._purge_every = max(1, int(purge_every))
        self._inserts = 0
        self._lock = threading.Lock()
        db.migrate("jti", JTI_MIGRATIONS)

    def _cutoff(self) -> int:
        # exp is a whole second: exp < now − leeway exactly when exp < ceil(now − leeway).
        return int(math.ceil(self._clock() - self.leeway))

    def remember(self, iss: str, jti: str, exp: int) -> bool:
        try:
            new = self.db.execute(_REMEMBER, (iss, jti, int(math.ceil(exp)), self._cutoff()), durable=True) == 1
        except self.db.errors as exc:
            raise ReplayStoreUnavailable(type(exc).__name__) from None
        if new:
            with self._lock:
                self._inserts += 1
                due = self._inserts % self._purge_every == 0
            if due:
                try:
                    self.purge()
                except self.db.errors:
                    pass  # the jti is recorded; the next purge removes what this one could not
        return new

    def purge(self) -> int:
        """Delete the rows of tokens that expired more than the leeway ago; returns how many."""
        return self.db.execute("DELETE FROM jti WHERE exp < ?", (self._cutoff(),))


class SqliteJtiStore(DatabaseJtiStore):
    """The replay cache shared by every worker on a host through one SQLite file
    (WAL, a connection per thread and process, like store.Store)."""

    def __init__(self, path: str | Path, *, leeway: float = 60.0, clock: Callable[[], float] = time.time,
                 purge_every: int = 100):
        self.path = Path(path)
        super().__init__(SqliteDatabase(self.path), leeway=leeway, clock=clock, purge_every=purge_every)


class PostgresJtiStore(DatabaseJtiStore):
    """The replay cache in PostgreSQL, shared by every worker and host: a jti
    inserted once (INSERT ... ON CONFLICT), refused while its token lives."""

    def __init__(self, url: str, *, leeway: float = 60.0, clock: Callable[[], float] = time.time,
                 purge_every: int = 100):
        super().__init__(postgres_database(url), leeway=leeway, clock=clock, purge_every=purge_every)


# --------------------------------------------------------------------------- in Redis

class RedisJtiStore:
    """The jti replay cache in Redis, for a service running on several hosts:
    one key per (iss, jti) set only if absent, expiring with the token (plus the
    leeway). Needs the `redis` package (`pip install 'cds-service[redis]'`)."""

    def __init__(self, url: str, *, leeway: float = 60.0, clock: Callable[[], float] = time.time,
                 client: Any = None):
        if client is None:
            import redis  # optional dependency, only for this store

            client = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self._redis = client
        self.leeway = float(leeway)
        self._clock = clock

    def remember(self, iss: str, jti: str, exp: int) -> bool:
        # Hashed: the key length is bounded and no client-chosen text reaches Redis as a key.
        key = "cds-service:jti:" + hashlib.sha256(f"{iss}\x00{jti}".encode()).hexdigest()
        ttl = max(1, int(math.ceil(exp + self.leeway - self._clock())))
        try:
            return bool(self._redis.set(key, b"1", nx=True, ex=ttl))
        except Exception as exc:  # redis-py raises its own RedisError family (connection, timeout, ...)
            raise ReplayStoreUnavailable(type(exc).__name__) from None


def jti_store_for(setting: str, sqlite_path: Path, *, leeway: float) -> JtiStore:
    """The replay store named by CDS_JTI_STORE: "sqlite" (a file at `sqlite_path`,
    beside the service database, shared by the workers of one host), a postgresql://
    URL or a redis:// URL (shared by every host)."""
    if setting == "sqlite":
        return SqliteJtiStore(sqlite_path, leeway=leeway)
    if is_postgres_url(setting):
        return PostgresJtiStore(setting, leeway=leeway)
    return RedisJtiStore(setting, leeway=leeway)
