"""Gathering one patient's data for a hook call: prefetch first, the EHR's
FHIR server for whatever prefetch did not satisfy.

Prefetch is never trusted to be complete (CDS Hooks 2.0 §Prefetch):
  key absent                        -> fetch it
  null                              -> the client ran the query: no data
  Bundle (possibly empty)           -> use it; a next link -> fetch the next pages
  OperationOutcome, or a Bundle
  holding one, or not FHIR at all   -> not satisfied: fetch it
(prefetch.py reads a prefetch value). Resources about another patient are dropped
and counted, wherever they came from (ownership.py says whose a resource is), and so
is a resource a second query of the same type returned again (an EHR that ignores
the code filter sends every Observation under both Observation keys).
"""

from __future__ import annotations

import contextvars
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Mapping

from cachetools import LRUCache

from .client import FhirClient
from .errors import FhirBadResponse, FhirError, FhirNotAllowed
from .ownership import own_resources
from .answers import link_url
from .prefetch import usable_resources
from .queries import Read, Search
from .results import LOOK_BACK, Enough, FetchResult
from .scopes import can_read

PREFETCH = "prefetch"  # satisfied by prefetch
PREFETCH_PAGED = "prefetch+fetched"  # first page prefetched, the rest fetched
FETCHED = "fetched"
NO_DATA = "null"  # the client said there is no data
MISSING = "missing"


@dataclass
class KeyData:
    """What became of one prefetch key (the audit records this, never the data)."""

    key: str
    source: str = MISSING
    resources: list[dict[str, Any]] = field(default_factory=list)
    detail: str | None = None  # why prefetch was not used, or why it is missing
    foreign: int = 0  # resources about another patient, dropped
    unresolved: int = 0  # resources whose patient reference could not be checked, kept
    repeated: int = 0  # resources another key of the same type already holds, dropped
    # The urn: fullUrls of a prefetch Bundle's resources kept, for references between them.
    full_urls: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    requests: int = 0
    cut: str | None = None  # why a search was cut short: results.LOOK_BACK, PAGE_LIMIT or DEADLINE
    elapsed_ms: float = 0.0

    @property
    def truncated(self) -> bool:
        """A search cut short: more of its resources may exist."""
        return self.cut is not None

    def audit(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source, "resources": len(self.resources)}
        for name in ("detail", "foreign", "unresolved", "repeated", "requests", "truncated", "cut"):
            value = getattr(self, name)
            if value:
                out[name] = value
        if self.elapsed_ms:
            out["ms"] = round(self.elapsed_ms, 1)
        return out


@dataclass(frozen=True)
class FhirAccess:
    """Where and how to fetch: the request's fhirServer, bearer token and its
    SMART scopes (token and scope None for an open server)."""

    client: FhirClient
    base: str
    token: str | None = field(repr=False, default=None)
    scope: str | None = None


@dataclass
class Gathered:
    keys: dict[str, KeyData]

    def resources(self) -> list[dict[str, Any]]:
        return [r for k in self.keys.values() for r in k.resources]

    def full_urls(self) -> dict[str, dict[str, Any]]:
        """The urn: fullUrls prefetch Bundles gave the resources kept (see PatientRecord)."""
        return {url: r for k in self.keys.values() for url, r in k.full_urls.items()}

    def missing(self, required: set[str]) -> list[KeyData]:
        return [k for name, k in self.keys.items() if name in required and k.source == MISSING]


def gather(needs: Mapping[str, Read | Any], required: set[str], prefetch: Mapping[str, Any] | None,
           patient_id: str, access: FhirAccess | None, deadline: float,
           enough: Mapping[str, Enough] | None = None) -> Gathered:
    """Resources for every needed key. `needs` maps prefetch keys to queries;
    `enough[key](resources)` says a search has read all that can matter (a
    prefetched first page included), so its further pages are not fetched."""
    enough = enough or {}
    keys = {key: KeyData(key) for key in needs}
    to_fetch: dict[str, Any] = {}
    to_page: dict[str, dict[str, Any]] = {}
    prefetch = prefetch or {}
    for key, query in needs.items():
        data = keys[key]
        if key not in prefetch:
            data.detail = "not in prefetch"
            to_fetch[key] = query
            continue
        value = prefetch[key]
        if value is None:
            data.source = NO_DATA
            continue
        resources, foreign, why = usable_resources(value, query, patient_id, data)
        if resources is None:
            data.detail = why
            to_fetch[key] = query
            continue
        data.source = PREFETCH
        data.resources, data.foreign = resources, foreign
        if value.get("resourceType") == "Bundle" and link_url(value, "next"):  # value: usable, so a resource
            if key in enough and enough[key](resources):  # the first page reaches far enough back
                data.cut = LOOK_BACK
            else:
                to_page[key] = value
    if to_fetch or to_page:
        _fetch(keys, to_fetch, to_page, patient_id, access, deadline, required, enough)
    _drop_repeats(keys, needs)
    return Gathered(keys)


def _drop_repeats(keys: dict[str, KeyData], needs: Mapping[str, Any]) -> None:
    """Where several keys search one resource type, a resource a larger key holds is
    dropped from the smaller ones (counted as `repeated`): the record gets it once.
    Resources without a string id are kept."""
    _drop_included_repeats(keys, needs)
    by_type: dict[str, list[KeyData]] = {}
    for key, query in needs.items():
        by_type.setdefault(query.resource_type, []).append(keys[key])
    for group in by_type.values():
        if len(group) < 2:
            continue
        group = sorted(group, key=lambda d: len(d.resources), reverse=True)
        largest, smaller = group[0], [d for d in group[1:] if d.resources]
        if not smaller:
            continue
        # The usual case, nothing in common, settled at C speed: the smaller keys hold a few resources.
        ids = {i for i in (r.get("id") for d in smaller for r in d.resources) if type(i) is str}  # noqa: E721
        try:
            if ids.isdisjoint([r.get("id") for r in largest.resources]):
                continue
        except TypeError:  # an id that is not a string (nor hashable): compared one by one below
            pass
        seen = {(r.get("resourceType"), r["id"]) for r in largest.resources if type(r.get("id")) is str}  # noqa: E721
        for data in smaller:
            kept = []
            for r in data.resources:
                if type(r.get("id")) is str:  # noqa: E721 - an id-less resource cannot be matched
                    identity = (r.get("resourceType"), r["id"])
                    if identity in seen:
                        data.repeated += 1
                        continue
                    seen.add(identity)
                kept.append(r)
            data.resources = kept


def _drop_included_repeats(keys: dict[str, KeyData], needs: Mapping[str, Any]) -> None:
    """Resources a search with _include brought along (of another type than the search's)
    that a key searching their type also holds are dropped from the including key."""
    for key, query in needs.items():
        data = keys[key]
        if not (isinstance(query, Search) and query.includes and data.resources):
            continue
        others = [r for r in data.resources if r.get("resourceType") != query.resource_type]
        if not others:
            continue
        held = {(r.get("resourceType"), r.get("id")) for other, q in needs.items() if other != key
                for r in keys[other].resources if type(r.get("id")) is str}  # noqa: E721
        kept = [r for r in data.resources if r.get("resourceType") == query.resource_type
                or type(r.get("id")) is not str or (r.get("resourceType"), r["id"]) not in held]  # noqa: E721
        data.repeated += len(data.resources) - len(kept)
        data.resources = kept


def _fetch(keys: dict[str, KeyData], to_fetch: dict[str, Any], to_page: dict[str, dict[str, Any]],
           patient_id: str, access: FhirAccess | None, deadline: float, required: set[str],
           enough: Mapping[str, Enough]) -> None:
    if access is None:
        for key in to_fetch:
            keys[key].detail = (keys[key].detail or "") + "; no FHIR server to fetch from"
        for key in to_page:
            _missing(keys[key], "prefetch has more pages and there is no FHIR server to fetch them from")
        return
    for key, query in list(to_fetch.items()):
        if not can_read(access.scope, query.resource_type, search=not isinstance(query, Read)):
            keys[key].detail = f"{keys[key].detail}; the access token's scope does not allow reading " \
                               f"{query.resource_type}"
            del to_fetch[key]
    for key, bundle in list(to_page.items()):
        rtype = next((r.get("resourceType") for r in keys[key].resources), None)
        if rtype and not can_read(access.scope, rtype, search=True):
            _missing(keys[key], f"prefetch has more pages and the access token's scope does not allow "
                                f"searching {rtype}")
            del to_page[key]
    unreadable = [k for k in required if keys[k].source == MISSING and k not in to_fetch and k not in to_page]
    if unreadable:  # the answer will be 412 whatever else is fetched: spare the EHR the calls
        for key in list(to_fetch) + list(to_page):
            _missing(keys[key], f"{keys[key].detail or 'needed'}; not fetched: required data cannot be read")
        return
    if not to_fetch and not to_page:
        return
    started = time.monotonic()
    if access.base in _REFUSES_INCLUDES:
        to_fetch = {key: _without_includes(query) for key, query in to_fetch.items()}
    with ThreadPoolExecutor(max_workers=1 + len(to_page)) as pool:
        # In copies of the caller's context: what the threads log names the hook call.
        searches = pool.submit(contextvars.copy_context().run, access.client.fetch, access.base, access.token,
                               to_fetch, patient_id, deadline, enough=enough) if to_fetch else None
        pages = {key: pool.submit(contextvars.copy_context().run, access.client.follow_next, access.base,
                                  access.token, bundle, key, deadline, enough=enough.get(key))
                 for key, bundle in to_page.items()}
        fetched: dict[str, FetchResult] = searches.result() if searches else {}
        fetched = _again_without_includes(fetched, to_fetch, patient_id, access, deadline, enough)
        paged = {key: future.result() for key, future in pages.items()}
    for key, result in fetched.items():
        data = keys[key]
        _account(data, result)
        if result.error is not None:
            data.detail = f"{data.detail}; fetch failed: {_why(result.error)}"
        elif result.not_found:  # a read (the patient) that the server does not have
            data.detail = f"{data.detail}; not found on the FHIR server"
        else:
            data.source = FETCHED
            data.resources, data.foreign, data.unresolved = own_resources(result.resources, patient_id)
    for key, result in paged.items():
        data = keys[key]
        _account(data, result)
        if result.error is not None:  # the first page alone would be silently incomplete
            _missing(data, f"prefetch has more pages; fetching them failed: {_why(result.error)}")
        else:
            data.source = PREFETCH_PAGED
            kept, foreign, unresolved = own_resources(result.resources, patient_id)
            data.resources, data.foreign = data.resources + kept, data.foreign + foreign
            data.unresolved += unresolved
    elapsed = (time.monotonic() - started) * 1000
    for key in list(to_fetch) + list(to_page):
        keys[key].elapsed_ms = keys[key].elapsed_ms or elapsed


# FHIR servers that answered a search with _include by 400 or 422 (not supported there): searched
# without it from then on (keys; the values mean nothing). Bounded: a service talks to a few servers.
_REFUSES_INCLUDES: LRUCache[str, bool] = LRUCache(maxsize=64)


def _without_includes(query: Any) -> Any:
    return query.without_includes() if isinstance(query, Search) else query


def _again_without_includes(fetched: dict[str, FetchResult], queries: Mapping[str, Any], patient_id: str,
                            access: FhirAccess, deadline: float, enough: Mapping[str, Enough]
                            ) -> dict[str, FetchResult]:
    """A search with _include that the server refused as a bad request is run once more
    without it: its results then come without what they link to (the engine says what it
    cannot read), rather than not at all."""
    refused = {key: queries[key].without_includes() for key, result in fetched.items()
               if isinstance(queries.get(key), Search) and queries[key].includes
               and isinstance(result.error, FhirBadResponse) and result.error.status in (400, 422)}
    if not refused:
        return fetched
    _REFUSES_INCLUDES[access.base] = True
    again = access.client.fetch(access.base, access.token, refused, patient_id, deadline, enough=enough)
    out = dict(fetched)
    for key, result in again.items():
        result.requests += fetched[key].requests
        out[key] = result
    return out


def _account(data: KeyData, result: FetchResult) -> None:
    data.requests += result.requests
    data.cut = data.cut or result.cut
    data.elapsed_ms = result.elapsed_ms


def _missing(data: KeyData, why: str) -> None:
    data.source, data.resources, data.detail = MISSING, [], why


def _why(error: FhirError) -> str:
    if isinstance(error, FhirNotAllowed):
        return "the FHIR server is not on the service's allowlist"
    return error.reason

