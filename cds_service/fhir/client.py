"""Fetching a patient's data from the EHR's FHIR server (CDS Hooks `fhirServer`
with `fhirAuthorization`): allowlisted servers only, one overall deadline,
paging, retries of transient failures, and a short-lived cache.

Every wait and every byte is bounded: each request, headers and body together,
ends by the hook's deadline (transport.py: the body read in pieces against the
deadline, a watchdog for a socket still busy at it), so no fetch thread outlives
its hook call; each call's queries run on threads of their own, so a stuck server
never delays another call; an answer over `max_response_bytes` is refused
(`too-large`) as soon as that is known; the cache is bounded in bytes.

The access token is transient (CDS Hooks best practice: never store, share or
log it): it goes into the Authorization header and nowhere else; the cache is
keyed by its SHA-256. Logs name the query key, status and error class, never a
URL, since search URLs carry the patient id. Nothing a FHIR server writes (an
OperationOutcome's diagnostics, which may repeat the patient's name, birth date
or the request path; a resource type; an error page) reaches an error, a log or
the audit: a failure is told by its HTTP status and an error class (FhirError).

Here: the client, its parallel queries and their deadline, one GET (cache,
retries, status). Beside it: results.py (what a fetch gives back), paging.py
(a search page by page), answers.py (reading a server's answer)."""

from __future__ import annotations

import contextvars
import hashlib
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from functools import partial
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import urljoin, urlsplit

import orjson
import requests

from cds_service.engine import is_fhir_id
from cds_service.fhir.allowlist import is_under, normalise_base, normalise_url
from cds_service.fhir.answers import link_url, parse_answer, retry_after_seconds
from cds_service.fhir.cache import CACHE_BYTES, ResponseCache
from cds_service.fhir.errors import (FhirAccessDenied, FhirBadResponse, FhirError, FhirNotAllowed, FhirOutOfTime,
                                    FhirUnavailable)
from cds_service.fhir.paging import NextPageGone, read_pages, resolve_link
from cds_service.fhir.queries import Query, Read
from cds_service.fhir.results import DEADLINE, Call, Enough, FetchResult
from cds_service.fhir.transport import OutOfTime, TooLarge, bounded_get, bounded_session, read_body

log = logging.getLogger(__name__)
# urllib3 logs each request line, search URLs and so patient ids included, at DEBUG: kept
# out of a log that someone turns to DEBUG, unless its level was set on purpose.
if logging.getLogger("urllib3.connectionpool").level == logging.NOTSET:
    logging.getLogger("urllib3.connectionpool").setLevel(logging.INFO)

_RETRY_STATUSES = frozenset({429, 502, 503, 504})
_BACKOFF_SECONDS = 0.1
MAX_RESPONSE_BYTES = 20 * 1024 * 1024  # CDS_FHIR_MAX_RESPONSE_BYTES


def new_session(max_workers: int) -> requests.Session:
    """A requests session for `max_workers` threads at a time: keeps no cookie (it is
    shared across patients and users, and a server's cookie must not ride along on
    someone else's requests), and its requests are bounded in total (transport.py)."""
    return bounded_session(max_workers * 2)


class FhirClient:
    """Shared by all requests of the process: the session and cache are thread-safe,
    and per-fetch state lives in `Call` objects. Each fetch runs its queries on
    threads of its own, which end by its deadline: no call waits for a thread another
    call holds. `max_workers` sizes the connection pool (connections kept per host).
    `clock` is the deadlines' clock (time.monotonic, the hook's), `sleep` the wait
    before a retry: tests pass fake ones instead of spending wall time."""

    def __init__(self, allowed_servers: Iterable[str], *, page_limit: int = 20, retries: int = 2,
                 cache_ttl: float = 60.0, cache_bytes: int = CACHE_BYTES,
                 max_response_bytes: int = MAX_RESPONSE_BYTES, max_workers: int = 8,
                 session: requests.Session | None = None, user_agent: str = "cds-service",
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
        self._sleep = sleep
        self._clock = clock
        self._allowed = tuple(self._allowed_entry(server) for server in allowed_servers if server.strip())
        self._page_limit = page_limit
        self._retries = retries
        self._user_agent = user_agent
        self._max_response_bytes = max_response_bytes
        self._cache = ResponseCache(cache_bytes, cache_ttl)
        self._owns_session = session is None
        self._session = session if session is not None else new_session(max_workers)

    @staticmethod
    def _allowed_entry(server: str) -> str:
        base = normalise_base(server.strip())
        if base is None:
            raise ValueError("an allowed FHIR server is not a plain http(s) base URL")
        return base

    def is_allowed(self, url: str) -> bool:
        normal = normalise_url(url)
        return normal is not None and any(is_under(normal, base) for base in self._allowed)

    def fetch(self, base: str, token: str | None, queries: Mapping[str, Query], patient_id: str,
              deadline: float, *, no_cache: bool = False, enough: Mapping[str, Enough] | None = None
              ) -> dict[str, FetchResult]:
        """Run the queries in parallel; returns by `deadline` (a value of the client's
        clock, time.monotonic by default) with one result per key, in the order of
        `queries`. `enough[key]`, asked after each page that has a next one, may stop
        a search's paging."""
        if not is_fhir_id(patient_id):
            # An empty patient parameter would make some servers search all patients.
            raise ValueError("patient_id is not a FHIR id")
        call_base = self._call_base(base)
        if call_base is None:
            return {key: _refused(key) for key in queries}
        if not queries:
            return {}
        calls = {key: self._new_call(key, call_base, token, deadline, no_cache) for key in queries}
        enough = enough or {}
        pool = ThreadPoolExecutor(max_workers=len(queries), thread_name_prefix="fhir-fetch")
        try:
            # Each thread runs in a copy of the caller's context, so what it logs names the hook call.
            futures = {key: pool.submit(contextvars.copy_context().run, self._run, calls[key],
                                        partial(self._query, query=query, patient_id=patient_id,
                                                enough=enough.get(key)))
                       for key, query in queries.items()}
            return self._results_by_deadline(calls, futures, deadline)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def follow_next(self, base: str, token: str | None, bundle: dict, key: str, deadline: float,
                    *, no_cache: bool = False, enough: Enough | None = None) -> FetchResult:
        """The resources of the pages after a prefetched search Bundle (the caller
        has its first page); an empty result when it has no next link. `enough` is
        asked with the resources of the pages fetched, as in fetch()."""
        next_href = link_url(bundle, "next")
        if next_href is None:
            return FetchResult(key, [])
        call_base = self._call_base(base)
        if call_base is None:
            return _refused(key)
        call = self._new_call(key, call_base, token, deadline, no_cache)
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fhir-fetch")
        try:
            future = pool.submit(contextvars.copy_context().run, self._run, call,
                                 partial(self._next_pages, next_href=next_href, self_href=link_url(bundle, "self"),
                                         enough=enough))
            return self._results_by_deadline({key: call}, {key: future}, deadline)[key]
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self._cache.close()
        if self._owns_session:
            self._session.close()

    def _call_base(self, base: str) -> str | None:
        normal = normalise_base(base) if isinstance(base, str) else None
        if normal is None or not any(is_under(normal, allowed) for allowed in self._allowed):
            host = urlsplit(normal).hostname if normal else "invalid URL"
            log.warning("FHIR server not on the allowlist: %r", host)
            return None
        return normal

    def _new_call(self, key: str, base: str, token: str | None, deadline: float, no_cache: bool) -> Call:
        # Always fresh from the server (HAPI reuses identical searches for a minute by
        # default): a lab resulted a moment ago must count. Our own short cache, keyed
        # by token, is what absorbs repeated calls for one chart; no_cache skips it too.
        headers = {"Accept": "application/fhir+json", "User-Agent": self._user_agent, "Cache-Control": "no-cache"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        token_hash = hashlib.sha256(token.encode()).hexdigest() if token else ""
        return Call(key, base, headers, token_hash, deadline, read_cache=not no_cache, started=self._clock())

    def _results_by_deadline(self, calls: Mapping[str, Call], futures: Mapping[str, Future[FetchResult]],
                             deadline: float) -> dict[str, FetchResult]:
        # Never wait past the deadline. Late workers end at it too (their requests are bounded
        # in total); their results are dropped.
        done, _ = wait(futures.values(), timeout=max(0.0, deadline - self._clock()))
        results = {}
        for key, future in futures.items():
            if future in done:
                results[key] = future.result()
                continue
            future.cancel()
            call = calls[key]
            elapsed_ms = (self._clock() - call.started) * 1000
            held = call.read_so_far
            if held is not None:  # a later page was still loading: the pages read are the newest
                log.warning("FHIR %s: deadline reached while paging; %d pages used", key, call.pages)
                results[key] = FetchResult(key, list(held), pages=call.pages, requests=call.requests,
                                           cut=DEADLINE, elapsed_ms=elapsed_ms)
                continue
            log.warning("FHIR %s: deadline exceeded", key)
            results[key] = FetchResult(key, [], pages=call.pages, requests=call.requests, elapsed_ms=elapsed_ms,
                                       error=FhirOutOfTime("deadline exceeded", key=key))
        return results

    def _run(self, call: Call, work: Callable[[Call, FetchResult], None]) -> FetchResult:
        result = FetchResult(call.key, [])
        try:
            work(call, result)
        except FhirError as error:
            error.key = call.key
            result.resources, result.not_found, result.cut, result.error = [], False, None, error
            log.warning("FHIR %s: %s, %s (status %s)", call.key, type(error).__name__, error.error_class,
                        error.status)
        result.pages, result.requests = call.pages, call.requests
        result.elapsed_ms = (self._clock() - call.started) * 1000
        return result

    def _query(self, call: Call, result: FetchResult, *, query: Query, patient_id: str,
               enough: Enough | None) -> None:
        url = f"{call.base}/{query.relative_url(patient_id)}"
        if isinstance(query, Read):
            resource = self._get(call, url, expect=query.resource_type, is_read=True)
            result.resources = [] if resource is None else [resource]
            result.not_found = resource is None
        else:
            result.resources, result.cut = self._pages(call, url, restart_url=url, first_page_held=False,
                                                       enough=enough)

    def _next_pages(self, call: Call, result: FetchResult, *, next_href: str, self_href: str | None,
                    enough: Enough | None) -> None:
        next_url = resolve_link(call, next_href)
        # The self link re-runs the search if HAPI has expired the paged results.
        restart_url = normalise_url(urljoin(call.base + "/", self_href)) if self_href else None
        if restart_url is not None and not is_under(restart_url, call.base):
            restart_url = None
        result.resources, result.cut = self._pages(call, next_url, restart_url=restart_url, first_page_held=True,
                                                   enough=enough)

    def _pages(self, call: Call, url: str, *, restart_url: str | None, first_page_held: bool,
               enough: Enough | None) -> tuple[list[dict[str, Any]], str | None]:
        return read_pages(call, url, self._get, page_limit=self._page_limit, clock=self._clock,
                          restart_url=restart_url, first_page_held=first_page_held, enough=enough)

    def _get(self, call: Call, url: str, *, expect: str, is_read: bool = False,
             is_next_page: bool = False) -> dict[str, Any] | None:
        """The parsed 200 body, checked to be an `expect` resource; None for a
        read that found nothing."""
        cache_key = (call.base, call.token_hash, url)
        if call.read_cache:
            cached = self._cache.get(cache_key)
            if cached is not None:
                call.pages += 1
                return orjson.loads(cached)
        status, content = self._request(call, url)
        if status == 200:
            body = parse_answer(content, expect)
            # Bytes, not the parsed body: each hit gets its own objects, so no
            # caller can alter what another request reads.
            self._cache.put(cache_key, content)
            call.pages += 1
            return body
        if status in (401, 403):
            raise FhirAccessDenied(f"the FHIR server refused access ({status})", status=status)
        if is_read and status in (404, 410):
            return None
        if is_next_page and status == 410:
            raise NextPageGone
        words = f"the FHIR server answered {status}"
        if status >= 500:  # not 502/503/504 (retried in _request): 500 and the like rarely heal on retry
            raise FhirUnavailable(words, error_class=f"fhir-{status}", status=status)
        raise FhirBadResponse(words, error_class=f"fhir-{status}", status=status)

    def _request(self, call: Call, url: str) -> tuple[int, bytes]:
        """One GET, retried on 429/502/503/504 and connection failures within the
        deadline: (status, body), the body read (bounded in time and size) for a 200
        only; no other answer's body is read, since the service never uses a server's text."""
        status: int | None = None
        error_class = "connection"
        for attempt in range(self._retries + 1):
            remaining = call.deadline - self._clock()
            if remaining <= 0:
                raise FhirOutOfTime("deadline exceeded", status=status)
            call.requests += 1
            retry_after = None
            # The request's own deadline is on time.monotonic (transport.py), the call's on this client's clock.
            ends = call.deadline if self._clock is time.monotonic else time.monotonic() + remaining
            try:
                # Redirects are not followed: the target would escape the allowlist check.
                with bounded_get(self._session, url, deadline=ends, headers=call.headers) as response:
                    log.debug("FHIR %s: GET -> %s", call.key, response.status_code)
                    if response.status_code == 200:
                        return 200, read_body(response, ends, self._max_response_bytes)
                    if response.status_code not in _RETRY_STATUSES:
                        return response.status_code, b""
                    status = response.status_code
                    retry_after = retry_after_seconds(response)
            except TooLarge:
                raise FhirBadResponse(f"the FHIR server's answer is larger than the service accepts "
                                      f"({self._max_response_bytes} bytes)", error_class="too-large",
                                      status=200) from None
            except OutOfTime:
                # The request had all the time left, so there is none to retry in.
                raise FhirOutOfTime("the FHIR server did not answer in time") from None
            except requests.ConnectionError:
                problem, error_class = "connection to the FHIR server failed", "connection"
            except requests.RequestException:
                # The exception's own text holds the URL (and so the patient id).
                raise FhirUnavailable("request failed", error_class="request-failed") from None
            else:
                problem, error_class = f"the FHIR server answered {status}", f"fhir-{status}"
            if attempt == self._retries:
                break
            pause = retry_after if retry_after is not None else _BACKOFF_SECONDS * 2 ** attempt
            if self._clock() + pause >= call.deadline:
                raise FhirOutOfTime(f"{problem}; retrying would pass the deadline", error_class=error_class,
                                    status=status)
            log.info("FHIR %s: %s; retrying in %.2f s", call.key, error_class, pause)
            self._sleep(pause)
        raise FhirUnavailable(f"{problem} after {self._retries + 1} attempts", error_class=error_class,
                              status=status)


def _refused(key: str) -> FetchResult:
    return FetchResult(key, [], error=FhirNotAllowed("FHIR server is not on the allowlist", key=key))

