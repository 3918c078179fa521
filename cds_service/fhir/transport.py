"""HTTP GETs bounded in total, for the FHIR client, the terminology client and the
JWK Set fetch: one deadline for the whole exchange (connecting, the status line
and headers, every byte of the body), and a limit on the body's size.

A socket timeout bounds one read, not a response: a server that sends a byte
every half second never trips it, and holds the thread that reads as long as it
likes. Here:

- the body is read in pieces (`read1`: whatever has arrived, at most 64 KiB), the
  deadline checked between them, and before each read the socket's timeout is
  set to the time left;
- a watchdog thread shuts down the socket of a request still under way at its
  deadline, which ends a read blocked anywhere (the TLS handshake, the headers,
  a chunk header) — for sessions made by `bounded_session`;
- the body stops at `max_bytes`: a Content-Length above it is refused before any
  of the body is read, and a body without one is counted as it arrives.

    session = bounded_session(8)
    with bounded_get(session, url, deadline=time.monotonic() + 2.0, headers=...) as response:
        if response.status_code == 200:
            body = read_body(response, deadline, max_bytes=1 << 20)

Deadlines are time.monotonic() values. `OutOfTime` and `TooLarge` are requests
exceptions (a Timeout and a RequestException), so callers that already catch
those keep working; neither's text holds a URL.
"""

from __future__ import annotations

import heapq
import itertools
import os
import socket
import threading
import time
from contextlib import contextmanager
from http.cookiejar import DefaultCookiePolicy
from typing import Any, Iterator

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

CHUNK_BYTES = 64 * 1024


class OutOfTime(requests.Timeout):
    """The deadline passed before the whole response was in."""


class TooLarge(requests.RequestException):
    """The response body is larger than allowed (declared or counted)."""


# --------------------------------------------------------------------------- the watchdog

class _Watchdog:
    """One daemon thread per process that shuts down the sockets of requests still
    under way at their deadline. A request's entry is released when it is done;
    shutting down and releasing take the same lock, so a socket released (and
    perhaps back in the pool for another request) is never touched."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, list[Any]]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        self.shut_down = 0  # sockets shut down at their deadline (for tests and the curious)

    def watch(self, sock: socket.socket, deadline: float) -> list[Any]:
        entry: list[Any] = [sock]
        with self._cond:
            heapq.heappush(self._heap, (deadline, next(self._order), entry))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="http-watchdog", daemon=True)
                self._thread.start()
            if self._heap[0][2] is entry:  # sooner than what the thread is waiting for
                self._cond.notify()
        return entry

    def release(self, entry: list[Any]) -> None:
        with self._cond:
            entry[0] = None

    def _run(self) -> None:
        with self._cond:
            while True:
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, _, entry = self._heap[0]
                wait = deadline - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                sock, entry[0] = entry[0], None
                if sock is not None:
                    try:
                        sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked read; close() would not
                        self.shut_down += 1
                    except OSError:  # already closed
                        pass

    def _after_fork(self) -> None:
        # A forked child has no watchdog thread, and the lock may have been held at the fork.
        self._cond = threading.Condition(threading.Lock())
        self._heap = []
        self._thread = None


WATCHDOG = _Watchdog()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=WATCHDOG._after_fork)

# The deadline of the bounded GET this thread is making, and its watchdog entries.
_current = threading.local()


def _watch(sock: socket.socket | None) -> None:
    deadline = getattr(_current, "deadline", None)
    if deadline is not None and sock is not None:
        _current.entries.append(WATCHDOG.watch(sock, deadline))


class _WatchedMixin:
    """A urllib3 connection whose socket is watched while a bounded GET uses it:
    from its creation (so the TLS handshake is covered) or, reused from the pool,
    from the moment a request is sent on it."""

    def _new_conn(self):  # type: ignore[no-untyped-def]
        sock = super()._new_conn()  # type: ignore[misc]
        _watch(sock)
        return sock

    def request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        _watch(self.sock)  # type: ignore[attr-defined]  # None for a new plain-HTTP connection: see _new_conn
        return super().request(*args, **kwargs)  # type: ignore[misc]


class _WatchedHTTPConnection(_WatchedMixin, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_WatchedMixin, HTTPSConnection):
    pass


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_WATCHED_POOLS = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class WatchedAdapter(HTTPAdapter):
    """An HTTPAdapter whose connections the watchdog shuts down at a bounded GET's deadline."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_WATCHED_POOLS)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = dict(_WATCHED_POOLS)
        return manager


def bounded_session(pool_size: int) -> requests.Session:
    """A requests session whose requests the watchdog bounds, keeping up to
    `pool_size` connections per host, and no cookie: it is shared across patients
    and users, and a server's cookie must not ride along on someone else's requests."""
    session = requests.Session()
    adapter = WatchedAdapter(pool_maxsize=max(1, pool_size))
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    return session


# --------------------------------------------------------------------------- the GET

@contextmanager
def bounded_get(session: requests.Session, url: str, *, deadline: float, **kwargs: Any
                ) -> Iterator[requests.Response]:
    """A streamed GET (redirects not followed) whose headers are in by `deadline`;
    read its body with read_body(). On leaving, the connection goes back to the pool
    if the body was read to its end, and is closed otherwise. Raises OutOfTime when
    the deadline passes first (a watchdog shut-down included), else the requests
    exception of the failure."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise OutOfTime("deadline exceeded")
    _current.deadline, _current.entries = deadline, []
    response = None
    try:
        try:
            response = session.get(url, timeout=(remaining, remaining), stream=True, allow_redirects=False,
                                   **kwargs)
        except requests.Timeout:
            raise OutOfTime("timed out") from None
        except requests.RequestException:
            if time.monotonic() >= deadline:  # the watchdog's doing: a read cut at the deadline
                raise OutOfTime("deadline exceeded") from None
            raise
        yield response
    finally:
        for entry in _current.entries:
            WATCHDOG.release(entry)
        _current.deadline, _current.entries = None, []
        if response is not None:
            # After a whole body the connection is back in the pool already; otherwise this closes it.
            response.close()


def read_body(response: requests.Response, deadline: float, max_bytes: int) -> bytes:
    """The whole (decoded) body, read by `deadline` and at most `max_bytes` long,
    else OutOfTime or TooLarge (with nothing more read)."""
    declared = response.headers.get("Content-Length", "").strip()
    if declared.isdigit() and int(declared) > max_bytes:
        raise TooLarge(f"Content-Length above {max_bytes} bytes")
    raw = response.raw
    connection = getattr(raw, "connection", None)
    sock = getattr(connection, "sock", None)
    body = bytearray()
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise OutOfTime("deadline exceeded")
            if sock is not None:
                try:
                    sock.settimeout(remaining)
                except OSError:  # shut down or closed: the read below says how
                    pass
            chunk = raw.read1(CHUNK_BYTES, decode_content=True)
            if not chunk:
                break
            body += chunk
            if len(body) > max_bytes:
                raise TooLarge(f"body above {max_bytes} bytes")
    except urllib3.exceptions.ReadTimeoutError:
        raise OutOfTime("timed out") from None
    except urllib3.exceptions.DecodeError:
        raise requests.exceptions.ContentDecodingError("body could not be decoded") from None
    except urllib3.exceptions.HTTPError:  # ProtocolError, IncompleteRead, SSLError ...: the text may hold the URL
        if time.monotonic() >= deadline:
            raise OutOfTime("deadline exceeded") from None
        raise requests.ConnectionError("connection broken while reading the body") from None
    if time.monotonic() >= deadline:  # a body the watchdog cut short may look complete
        raise OutOfTime("deadline exceeded")
    return bytes(body)
