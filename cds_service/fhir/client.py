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
the audit: a failure is told by its HTTP status and an error class (FhirError)."""

from __future__ import annotations

import contextvars
import hashlib
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from functools import partial
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import urljoin, urlsplit

import orjson
import requests

from cds_service.engine import is_fhir_id
from cds_service.fhir.allowlist import is_under, normalise_base, normalise_url
from cds_service.fhir.cache import CACHE_BYTES, ResponseCache
from cds_service.fhir.errors import (FhirAccessDenied, FhirBadResponse, FhirError, FhirNotAllowed, FhirOutOfTime,
                                    FhirUnavailable)
from cds_service.fhir.queries import Query, Read
from cds_service.fhir.transport import OutOfTime, TooLarge, bounded_get, bounded_session, read_body

log = logging.getLogger(__name__)
# urllib3 logs each request line, search URLs and so patient ids included, at DEBUG: kept
# out of a log that someone turns to DEBUG, unless its level was set on purpose.
if logging.getLogger("urllib3.connectionpool").level == logging.NOTSET:
    logging.getLogger("urllib3.connectionpool").setLevel(logging.INFO)

_RETRY_STATUSES = frozenset({429, 502, 503, 504})
_BACKOFF_SECONDS = 0.1
MAX_RESPONSE_BYTES = 20 * 1024 * 1024  # CDS_FHIR_MAX_RESPONSE_BYTES


# Why paging stopped before the last page (FetchResult.cut).
PAGE_LIMIT = "page-limit"
DEADLINE = "deadline"
LOOK_BACK = "look-back"  # the caller's `enough` said the rest cannot matter (older than any look-back)


# Asked with a search's resources so far: True when the caller needs no further page.
Enough = Callable[[list[dict[str, Any]]], bool]


class _NextPageGone(Exception):
    """410 on a next-page link: HAPI has expired the paged search."""


@dataclass
class FetchResult:
    key: str
    resources: list[dict] = field(repr=False)  # patient data: kept out of logs that print a result
    not_found: bool = False
    pages: int = 0
    requests: int = 0
    cut: str | None = None  # why paging stopped before the last page: PAGE_LIMIT, DEADLINE or LOOK_BACK
    elapsed_ms: float = 0.0
    error: FhirError | None = None

    @property
    def truncated(self) -> bool:
        """Paging stopped before the last page: more may exist."""
        return self.cut is not None


@dataclass
class _Call:
    """One key's work against one server: what every request needs, and counters
    the waiting thread can read if the deadline passes first."""

    key: str
    base: str
    headers: dict[str, str] = field(repr=False)
    token_hash: str
    deadline: float
    read_cache: bool
    started: float = field(default_factory=time.monotonic)
    pages: int = 0
    requests: int = 0
    # A search's resources from the pages read so far, once one is (None before): what the
    # waiting thread returns, marked cut short, if the deadline passes while a later page loads.
    read_so_far: list[dict[str, Any]] | None = field(default=None, repr=False)


def new_session(max_workers: int) -> requests.Session:
    """A requests session for `max_workers` threads at a time: keeps no cookie (it is
    shared across patients and users, and a server's cookie must not ride along on
    someone else's requests), and its requests are bounded in total (transport.py)."""
    return bounded_session(max_workers * 2)


class FhirClient:
    """Shared by all requests of the process: the session and cache are thread-safe,
    and per-fetch state lives in `_Call` objects. Each fetch runs its queries on
    threads of its own, which end by its deadline: no call waits for a thread another
    call holds. `max_workers` sizes the connection pool (connections kept per host)."""

    def __init__(self, allowed_servers: Iterable[str], *, page_limit: int = 20, retries: int = 2,
                 cache_ttl: float = 60.0, cache_bytes: int = CACHE_BYTES,
                 max_response_bytes: int = MAX_RESPONSE_BYTES, max_workers: int = 8,
                 session: requests.Session | None = None, user_agent: str = "cds-service",
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._sleep = sleep  # the wait before a retry (tests pass a recording one, not wall time)
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
        """Run the queries in parallel; returns by `deadline` (a time.monotonic()
        value) with one result per key, in the order of `queries`. `enough[key]`,
        asked after each page that has a next one, may stop a search's paging."""
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
        next_href = _link_url(bundle, "next")
        if next_href is None:
            return FetchResult(key, [])
        call_base = self._call_base(base)
        if call_base is None:
            return _refused(key)
        call = self._new_call(key, call_base, token, deadline, no_cache)
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fhir-fetch")
        try:
            future = pool.submit(contextvars.copy_context().run, self._run, call,
                                 partial(self._next_pages, next_href=next_href, self_href=_link_url(bundle, "self"),
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

    def _new_call(self, key: str, base: str, token: str | None, deadline: float, no_cache: bool) -> _Call:
        # Always fresh from the server (HAPI reuses identical searches for a minute by
        # default): a lab resulted a moment ago must count. Our own short cache, keyed
        # by token, is what absorbs repeated calls for one chart; no_cache skips it too.
        headers = {"Accept": "application/fhir+json", "User-Agent": self._user_agent, "Cache-Control": "no-cache"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        token_hash = hashlib.sha256(token.encode()).hexdigest() if token else ""
        return _Call(key, base, headers, token_hash, deadline, read_cache=not no_cache)

    def _results_by_deadline(self, calls: Mapping[str, _Call], futures: Mapping[str, Future[FetchResult]],
                             deadline: float) -> dict[str, FetchResult]:
        # Never wait past the deadline. Late workers end at it too (their requests are bounded
        # in total); their results are dropped.
        done, _ = wait(futures.values(), timeout=max(0.0, deadline - time.monotonic()))
        results = {}
        for key, future in futures.items():
            if future in done:
                results[key] = future.result()
                continue
            future.cancel()
            call = calls[key]
            elapsed_ms = (time.monotonic() - call.started) * 1000
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

    def _run(self, call: _Call, work: Callable[[_Call, FetchResult], None]) -> FetchResult:
        result = FetchResult(call.key, [])
        try:
            work(call, result)
        except FhirError as error:
            error.key = call.key
            result.resources, result.not_found, result.cut, result.error = [], False, None, error
            log.warning("FHIR %s: %s, %s (status %s)", call.key, type(error).__name__, error.error_class,
                        error.status)
        result.pages, result.requests = call.pages, call.requests
        result.elapsed_ms = (time.monotonic() - call.started) * 1000
        return result

    def _query(self, call: _Call, result: FetchResult, *, query: Query, patient_id: str,
               enough: Enough | None) -> None:
        url = f"{call.base}/{query.relative_url(patient_id)}"
        if isinstance(query, Read):
            resource = self._get(call, url, expect=query.resource_type, is_read=True)
            result.resources = [] if resource is None else [resource]
            result.not_found = resource is None
        else:
            result.resources, result.cut = self._pages(call, url, restart_url=url, first_page_held=False,
                                                       enough=enough)

    def _next_pages(self, call: _Call, result: FetchResult, *, next_href: str, self_href: str | None,
                    enough: Enough | None) -> None:
        next_url = self._resolve_link(call, next_href)
        # The self link re-runs the search if HAPI has expired the paged results.
        restart_url = normalise_url(urljoin(call.base + "/", self_href)) if self_href else None
        if restart_url is not None and not is_under(restart_url, call.base):
            restart_url = None
        result.resources, result.cut = self._pages(call, next_url, restart_url=restart_url, first_page_held=True,
                                                   enough=enough)

    def _pages(self, call: _Call, url: str, *, restart_url: str | None, first_page_held: bool,
               enough: Enough | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """Resources of the pages from `url` on, and why paging stopped before the
        last page (LOOK_BACK, PAGE_LIMIT, DEADLINE) or None. `first_page_held`: the
        caller has the search's first page, so it counts towards page_limit and,
        after a restart, is not returned again. `enough(resources)`, asked when
        there is a next page, stops paging when the caller needs no more.

        Once a page is in, running out of time cuts the search short instead of
        failing it: a page that would not arrive in the time left (judged by the
        slowest page so far) is not asked for, and one still loading at the
        deadline is left to the waiting thread, which takes the pages read. The
        caller treats a cut as it treats the page limit; searches sorted newest
        first lose only older results."""
        resources: list[dict[str, Any]] = []
        call.read_so_far = resources if first_page_held else None
        fetched = {restart_url} if first_page_held and restart_url else set()
        page_number = 1 if first_page_held else 0  # pages of the search read so far, held one included
        slowest = 0.0  # seconds the slowest page took to arrive
        restarted = False
        next_url: str | None = url
        while next_url is not None:
            if next_url in fetched:
                log.warning("FHIR %s: next link repeats a page already read; paging stopped", call.key)
                break
            if page_number >= self._page_limit:  # the caller's page alone reaches the limit
                return resources, PAGE_LIMIT
            if page_number > 0 and time.monotonic() + slowest >= call.deadline:
                log.warning("FHIR %s: paging stopped after %d pages: the next would not arrive before the "
                            "deadline", call.key, page_number)
                return resources, DEADLINE
            fetched.add(next_url)
            started = time.monotonic()
            try:
                bundle = self._get(call, next_url, expect="Bundle", is_next_page=page_number > 0)
            except _NextPageGone:
                if restarted or restart_url is None:
                    again = " again after re-running it" if restarted else ""
                    raise FhirUnavailable(f"paged search expired (410 Gone){again}", error_class="fhir-410",
                                          status=410) from None
                log.info("FHIR %s: paged search expired; re-running it", call.key)
                restarted = True
                call.read_cache = False  # a cached first page would hand back the same expired link
                resources = []
                call.read_so_far = None
                fetched.clear()
                page_number = 0
                next_url = restart_url
                continue
            except FhirOutOfTime:
                if page_number > 0:  # a later page: the pages read stand, cut short
                    log.warning("FHIR %s: out of time on page %d; paging stopped", call.key, page_number + 1)
                    return resources, DEADLINE
                raise
            slowest = max(slowest, time.monotonic() - started)
            page_number += 1
            if not (first_page_held and page_number == 1):
                resources.extend(_resources_of(bundle))  # one step: the waiting thread may copy the list
            call.read_so_far = resources
            next_href = _link_url(bundle, "next")
            if next_href is None:
                break
            if enough is not None and enough(resources):
                return resources, LOOK_BACK
            if page_number >= self._page_limit:
                return resources, PAGE_LIMIT
            next_url = self._resolve_link(call, next_href)
        return resources, None

    def _resolve_link(self, call: _Call, href: str) -> str:
        # A next link must stay on the server the token was issued for, not just
        # on the allowlist: the token goes with it.
        url = normalise_url(urljoin(call.base + "/", href))
        if url is None or not is_under(url, call.base):
            raise FhirNotAllowed("next-page link leaves the allowed FHIR server")
        return url

    def _get(self, call: _Call, url: str, *, expect: str, is_read: bool = False,
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
            body = _parse(content, expect)
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
            raise _NextPageGone
        words = f"the FHIR server answered {status}"
        if status >= 500:  # not 502/503/504 (retried in _request): 500 and the like rarely heal on retry
            raise FhirUnavailable(words, error_class=f"fhir-{status}", status=status)
        raise FhirBadResponse(words, error_class=f"fhir-{status}", status=status)

    def _request(self, call: _Call, url: str) -> tuple[int, bytes]:
        """One GET, retried on 429/502/503/504 and connection failures within the
        deadline: (status, body), the body read (bounded in time and size) for a 200
        only; no other answer's body is read, since the service never uses a server's text."""
        status: int | None = None
        error_class = "connection"
        for attempt in range(self._retries + 1):
            remaining = call.deadline - time.monotonic()
            if remaining <= 0:
                raise FhirOutOfTime("deadline exceeded", status=status)
            call.requests += 1
            retry_after = None
            try:
                # Redirects are not followed: the target would escape the allowlist check.
                with bounded_get(self._session, url, deadline=call.deadline, headers=call.headers) as response:
                    log.debug("FHIR %s: GET -> %s", call.key, response.status_code)
                    if response.status_code == 200:
                        return 200, read_body(response, call.deadline, self._max_response_bytes)
                    if response.status_code not in _RETRY_STATUSES:
                        return response.status_code, b""
                    status = response.status_code
                    retry_after = _retry_after_seconds(response)
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
            if time.monotonic() + pause >= call.deadline:
                raise FhirOutOfTime(f"{problem}; retrying would pass the deadline", error_class=error_class,
                                    status=status)
            log.info("FHIR %s: %s; retrying in %.2f s", call.key, error_class, pause)
            self._sleep(pause)
        raise FhirUnavailable(f"{problem} after {self._retries + 1} attempts", error_class=error_class,
                              status=status)


def _refused(key: str) -> FetchResult:
    return FetchResult(key, [], error=FhirNotAllowed("FHIR server is not on the allowlist", key=key))


def _parse(content: bytes, expect: str) -> dict[str, Any]:
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        raise FhirBadResponse("the FHIR server answered with something that is not JSON", error_class="not-json",
                              status=200) from None
    resource_type = body.get("resourceType") if isinstance(body, dict) else None
    if resource_type == "OperationOutcome":
        raise FhirBadResponse("the FHIR server answered with an OperationOutcome", error_class="operation-outcome",
                              status=200)
    if resource_type != expect:
        raise FhirBadResponse(f"the FHIR server's answer is not a {expect}", error_class="wrong-type", status=200)
    if expect == "Bundle" and not isinstance(body.get("entry", []), list):
        raise FhirBadResponse("the FHIR server's Bundle.entry is not a list", error_class="wrong-type", status=200)
    return body


def _link_url(bundle: dict[str, Any], relation: str) -> str | None:
    links = bundle.get("link") if isinstance(bundle, dict) else None
    for link in links if isinstance(links, list) else []:
        url = link.get("url") if isinstance(link, dict) and link.get("relation") == relation else None
        if isinstance(url, str) and url.strip():
            return url
    return None


def _resources_of(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """The entries' resources, without OperationOutcomes: a search reports
    warnings as entries (search.mode "outcome") that are not patient data."""
    resources = []
    for entry in bundle.get("entry", []):
        if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
            continue
        search = entry.get("search")
        if entry["resource"].get("resourceType") == "OperationOutcome" or \
                (isinstance(search, dict) and search.get("mode") == "outcome"):
            continue
        resources.append(entry["resource"])
    return resources


def _retry_after_seconds(response: requests.Response) -> float | None:
    """Retry-After in seconds: either delay-seconds or an HTTP date."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
