"""The replay (jti) stores: where the authenticator remembers each token's jti
until the token expires, so that a token cannot be replayed (CDS Hooks 2.0
§Trusting CDS Clients; moved here from auth.py, which still re-exports them)."""

from __future__ import annotations

import hashlib
import math
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Protocol

from .store import Connections, open_database


class ReplayStoreUnavailable(Exception):
    """The jti store cannot be read or written: callers must fail closed."""


class JtiStore(Protocol):
    def remember(self, iss: str, jti: str, exp: int) -> bool:
        """Record that (iss, jti) was used by a token valid until `exp`.
        True if it is new, False if it was seen before (a replay)."""


# --------------------------------------------------------------------------- replay store

_JTI_SCHEMA = """
CREATE TABLE IF NOT EXISTS jti (
    iss TEXT NOT NULL,
    jti TEXT NOT NULL,
    exp INTEGER NOT NULL,
    PRIMARY KEY (iss, jti)
);
CREATE INDEX IF NOT EXISTS jti_exp ON jti (exp);
"""


class SqliteJtiStore:
    """The jti replay cache, shared by every worker on a host through one SQLite
    file (WAL, a connection per thread and process, like store.Store).

    A row lives until its token's `exp` plus the leeway (the longest the token
    is accepted); expired rows are purged every `purge_every` new entries."""

    def __init__(self, path: str | Path, *, leeway: float = 60.0, clock: Callable[[], float] = time.time,
                 purge_every: int = 100):
        self.path = Path(path)
        self.leeway = float(leeway)
        self._clock = clock
        self._purge_every = max(1, int(purge_every))
        self._inserts = 0
        self._lock = threading.Lock()
        open_database(self.path, _JTI_SCHEMA)
        self._db = Connections(self.path)

    def remember(self, iss: str, jti: str, exp: int) -> bool:
        try:
            return self._remember(iss, jti, exp)
        except sqlite3.Error as exc:
            raise ReplayStoreUnavailable(type(exc).__name__) from None

    def _remember(self, iss: str, jti: str, exp: int) -> bool:
        cutoff = self._clock() - self.leeway
        with self._db.transaction("BEGIN IMMEDIATE") as db:
            # A row whose token has expired no longer protects anything: do not let it
            # turn a later, legitimate reuse of the value into a false replay.
            db.execute("DELETE FROM jti WHERE iss = ? AND jti = ? AND exp < ?", (iss, jti, cutoff))
            new = db.execute("INSERT OR IGNORE INTO jti (iss, jti, exp) VALUES (?,?,?)",
                             (iss, jti, int(math.ceil(exp)))).rowcount == 1
        if new:
            with self._lock:
                self._inserts += 1
                due = self._inserts % self._purge_every == 0
            if due:
                self.purge()
        return new

    def purge(self) -> int:
        """Delete the rows of tokens that expired more than the leeway ago; returns how many."""
        return self._db.get().execute("DELETE FROM jti WHERE exp < ?", (self._clock() - self.leeway,)).rowcount


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
    """The replay store named by CDS_JTI_STORE: "sqlite" (a file beside the
    service database, shared by the workers of one host) or a redis:// URL."""
    if setting == "sqlite":
        return SqliteJtiStore(sqlite_path, leeway=leeway)
    return RedisJtiStore(setting, leeway=leeway)
