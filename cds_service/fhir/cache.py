"""The short-lived cache of FHIR answers, bounded in bytes, its expired entries swept."""

from __future__ import annotations

import threading
import time
import weakref
from typing import Callable

from cachetools import TTLCache


CACHE_BYTES = 64 * 1024 * 1024  # CDS_FHIR_CACHE_BYTES


# What an entry costs besides its body: the key (base, token hash, URL) and the cache's bookkeeping.
CACHE_ENTRY_OVERHEAD = 1024


class ResponseCache:
    """FHIR answers (their bytes) by (base, token hash, URL), each kept `ttl` seconds,
    bounded in bytes: an entry counts its body plus CACHE_ENTRY_OVERHEAD, and an answer
    larger than the whole bound is not kept. Expired entries are dropped on every write
    and by a sweep every `ttl` seconds (a daemon thread holding the cache weakly), not
    only when next read: patient data is not held long after its time. `timer` is the
    TTL's clock (time.monotonic; tests pass a fake one); `sweep_every` overrides the
    sweep's interval."""

    def __init__(self, max_bytes: int, ttl: float, *, timer: Callable[[], float] = time.monotonic,
                 sweep_every: float | None = None) -> None:
        self.max_bytes = max_bytes
        self.ttl = ttl
        self._cache: TTLCache[tuple[str, str, str], bytes] = TTLCache(
            maxsize=max_bytes, ttl=ttl, timer=timer, getsizeof=lambda body: len(body) + CACHE_ENTRY_OVERHEAD)
        self._lock = threading.Lock()
        self._sweep_every = sweep_every if sweep_every is not None else max(ttl, 1.0)
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None

    def get(self, key: tuple[str, str, str]) -> bytes | None:
        with self._lock:
            return self._cache.get(key)

    def put(self, key: tuple[str, str, str], body: bytes) -> None:
        if self.ttl <= 0 or len(body) + CACHE_ENTRY_OVERHEAD > self.max_bytes:
            return
        with self._lock:
            self._cache.expire()
            self._cache[key] = body
            if self._sweeper is None:
                self._sweeper = threading.Thread(target=_sweep, args=(weakref.ref(self), self._sweep_every,
                                                                       self._stop),
                                                 name="fhir-cache-sweep", daemon=True)
                self._sweeper.start()

    def expire(self) -> None:
        with self._lock:
            self._cache.expire()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            self._cache.clear()

    @property
    def bytes(self) -> int:
        """What the entries count for, overhead included (never above max_bytes)."""
        with self._lock:
            return int(self._cache.currsize)

    def keys(self) -> list[tuple[str, str, str]]:
        with self._lock:
            return list(self._cache.keys())

    def __iter__(self):
        return iter(self.keys())

    def __len__(self) -> int:
        with self._lock:
            return len(self._cache)


def _sweep(cache_ref: "weakref.ref[ResponseCache]", every: float, stop: threading.Event) -> None:
    while not stop.wait(every):
        cache = cache_ref()
        if cache is None:  # the client is gone
            return
        cache.expire()
        del cache
