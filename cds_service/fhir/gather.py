"""Gathering one patient's data for a hook call: prefetch first, the EHR's
FHIR server for whatever prefetch did not satisfy.

Prefetch is never trusted to be complete (CDS Hooks 2.0 §Prefetch):
  key absent                        -> fetch it
  null                              -> the client ran the query: no data
  Bundle (possibly empty)           -> use it; a next link -> fetch the next pages
  OperationOutcome, or a Bundle
  holding one, or not FHIR at all   -> not satisfied: fetch it
Resources about another patient are dropped and counted, wherever they came from,
and so is a resource a second query of the same type returned again (an EHR that
ignores the code filter sends every Observation under both Observation keys).
Whose a resource is, is read from its subject (or patient) reference in any form:
"Patient/<id>", an absolute URL, a version, or a urn: fullUrl resolved in its Bundle.
One that names no patient (a Specimen without subject, a result a server included
with `_include`) is kept when a resource kept from the same response references it.
One whose reference cannot be checked (a urn: not in its Bundle, an identifier only)
is kept and counted as `unresolved`: the query asked for this patient's resources and
nothing in it names another; dropping it could let a missing diagnosis pass an
exclusion. Contained resources go with their container, whatever they say.
"""

from __future__ import annotations

import contextvars
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from .bundles import reference_key
from .client import FhirClient
from .results import LOOK_BACK, Enough, FetchResult
from .errors import FhirBadResponse, FhirError, FhirNotAllowed
from .queries import Read, Search
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
        resources, foreign, why = _usable_resources(value, query, patient_id, data)
        if resources is None:
            data.detail = why
            to_fetch[key] = query
            continue
        data.source = PREFETCH
        data.resources, data.foreign = resources, foreign
        if isinstance(value, dict) and value.get("resourceType") == "Bundle" and _next_link(value):
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


# Searched types whose `subject` names the patient (AllergyIntolerance has `patient`; the
# Patient is checked by its id): the fast path of _usable_resources.
_SUBJECT_TYPES = frozenset({"Observation", "Condition", "DiagnosticReport", "Specimen"})


_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")


def _type_named(rtype: str) -> str:
    """'a Patient' for a resourceType shaped like one; anything else an EHR put there is not
    repeated (the audit keeps the service's words only)."""
    if not _RESOURCE_TYPE.fullmatch(rtype):
        return "a resource of another type"
    return f"{'an' if rtype[0] in 'AEIOU' else 'a'} {rtype}"


def _usable_resources(value: Any, query: Any, patient_id: str, data: KeyData | None = None
                      ) -> tuple[list[dict[str, Any]] | None, int, str | None]:
    """(this patient's resources of a prefetch value, how many were another
    patient's, None), or (None, 0, why it cannot be used). One pass over a
    Bundle's entries: this runs for every resource of every call. `data` gets
    the count of resources kept unresolved and the urn: fullUrls of those kept."""
    if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
        return None, 0, "prefetch value is not a FHIR resource"
    rtype = value["resourceType"]
    if rtype == "OperationOutcome":
        return None, 0, "prefetch reported an error (OperationOutcome)"
    if isinstance(query, Read):
        if rtype != query.resource_type:
            return None, 0, f"prefetch holds {_type_named(rtype)}, not a {query.resource_type}"
        if value.get("id") != patient_id:
            return None, 0, "prefetch holds another patient's record"
        return [value], 0, None
    if rtype != "Bundle":
        return None, 0, f"prefetch holds {_type_named(rtype)}, not a search Bundle"
    entries = value.get("entry", [])
    if not isinstance(entries, list):
        return None, 0, "prefetch Bundle.entry is not a list"
    own_key = f"Patient/{patient_id}"
    resources = []
    keep = resources.append
    # (place in `resources`, resource, fullUrl) of the entries whose patient needs a closer look
    odd: list[tuple[int, dict[str, Any], str | None]] = []
    for entry in entries:
        # The usual entry, a Condition or Observation whose subject is "Patient/<id>" as nearly
        # every EHR writes it, is settled by subscripts in a try block (free when nothing is
        # raised); anything else (no subject, another patient, odd shapes, an OperationOutcome)
        # takes the full checks.
        try:
            resource = entry["resource"]
            if resource["subject"]["reference"] == own_key and resource.__class__ is dict \
                    and resource["resourceType"] in _SUBJECT_TYPES:
                keep(resource)
                continue
        except (KeyError, TypeError, IndexError):
            pass
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict):
            entry_type = resource.get("resourceType")
            if entry_type == "OperationOutcome":
                return None, 0, "prefetch Bundle holds an OperationOutcome"
            if isinstance(entry_type, str):
                full_url = entry.get("fullUrl")
                odd.append((len(resources), resource, full_url if isinstance(full_url, str) else None))
                keep(resource)  # in its place; taken out below if it is not this patient's
    # urn: fullUrls (references between a Bundle's entries) are looked for only where a Bundle
    # uses them: its first entry, or an entry that took the full checks (one pass more then).
    first = entries[0].get("fullUrl") if entries and isinstance(entries[0], dict) else None
    urns = (isinstance(first, str) and first.startswith("urn:")) or \
        any(url is not None and url.startswith("urn:") for _, _, url in odd) or \
        any(_urn_subject(r) for _, r, _ in odd)
    full_urls = _urn_full_urls(entries) if urns else {}
    if not odd:
        if data is not None and full_urls:
            data.full_urls = full_urls
        return resources, 0, None
    verdicts = _whose([(r, url) for _, r, url in odd], patient_id, own_key, full_urls, resources)
    dropped = {i for i, r, _ in odd if verdicts[id(r)] is _FOREIGN}
    kept = [r for i, r in enumerate(resources) if i not in dropped] if dropped else resources
    if data is not None:
        data.unresolved += sum(1 for v in verdicts.values() if v is _UNRESOLVED)
        if full_urls:
            dropped_ids = {id(resources[i]) for i in dropped}
            data.full_urls = {url: r for url, r in full_urls.items() if id(r) not in dropped_ids}
    return kept, len(dropped), None


def _urn_subject(resource: dict[str, Any]) -> bool:
    for name in _PATIENT_FIELDS:
        value = resource.get(name)
        if isinstance(value, dict):
            ref = value.get("reference")
            return isinstance(ref, str) and ref.startswith("urn:")
    return False


# Whose a resource is (_whose): this patient's, another's, this patient's as far as can be told
# (the reference cannot be checked: kept and counted), or nobody's (it names no patient).
_OWN, _FOREIGN, _UNRESOLVED, _NOBODY = "own", "foreign", "unresolved", "nobody"


def _urn_full_urls(entries: list[Any]) -> dict[str, dict[str, Any]]:
    """urn: fullUrl -> resource, for the entries of a Bundle that have one."""
    out = {}
    for entry in entries:
        if isinstance(entry, dict):
            url, resource = entry.get("fullUrl"), entry.get("resource")
            if isinstance(url, str) and url.startswith("urn:") and isinstance(resource, dict):
                out[url] = resource
    return out


def _whose(odd: list[tuple[dict[str, Any], str | None]], patient_id: str, own_key: str,
           full_urls: dict[str, dict[str, Any]], kept: list[dict[str, Any]]) -> dict[int, str]:
    """id(resource) -> _OWN, _FOREIGN or _UNRESOLVED for the resources the fast path could
    not settle. One naming no patient is this patient's when a resource kept from the same
    response references it (a report's specimen or result, a panel's member), else another's."""
    verdicts: dict[int, str] = {}
    nobody: list[tuple[dict[str, Any], str | None]] = []
    for resource, full_url in odd:
        verdict = _patient_of(resource, patient_id, own_key, full_urls)
        if verdict is _NOBODY:
            nobody.append((resource, full_url))
        else:
            verdicts[id(resource)] = verdict
    if nobody:
        unnamed = {id(r) for r, _ in nobody}
        linked = _linked(r for r in kept if id(r) not in unnamed and verdicts.get(id(r), _OWN) is not _FOREIGN)
        for resource, full_url in nobody:
            rid = resource.get("id")
            names = {full_url, reference_key(full_url)} if full_url else set()
            if isinstance(rid, str) and rid:
                names.add(f"{resource['resourceType']}/{rid}")
            verdicts[id(resource)] = _OWN if names & linked else _FOREIGN
    return verdicts


def _patient_of(resource: dict[str, Any], patient_id: str, own_key: str,
                full_urls: dict[str, dict[str, Any]]) -> str:
    resource_type = resource.get("resourceType")
    if resource_type == "Patient":
        return _OWN if resource.get("id") == patient_id else _FOREIGN
    for name in _PATIENT_FIELDS:
        value = resource.get(name)
        if value is None:
            continue
        reference = value.get("reference") if isinstance(value, dict) else None
        if not isinstance(reference, str) or not reference:  # an identifier or display only
            return _UNRESOLVED if isinstance(value, dict) else _FOREIGN
        if reference.startswith("urn:"):
            target = full_urls.get(reference)
            if target is None:
                return _UNRESOLVED
            return _OWN if target.get("resourceType") == "Patient" and target.get("id") == patient_id \
                else _FOREIGN
        return _OWN if reference_key(reference) == own_key else _FOREIGN
    return _NOBODY


_PATIENT_FIELDS = ("subject", "patient")
# Where a kept resource links to others that may name no patient of their own.
_LINKS = ("result", "specimen", "hasMember", "derivedFrom")


def _linked(resources: Iterable[dict[str, Any]]) -> set[str]:
    """The references (as written, and as Type/id) that resources make through _LINKS."""
    out: set[str] = set()
    for resource in resources:
        for name in _LINKS:
            value = resource.get(name)
            if value is None:
                continue
            for ref in value if isinstance(value, list) else (value,):
                target = ref.get("reference") if isinstance(ref, dict) else None
                if isinstance(target, str) and target and target[0] != "#":
                    out.add(target)
                    key = reference_key(target)
                    if key:
                        out.add(key)
    return out


def _next_link(bundle: dict[str, Any]) -> str | None:
    links = bundle.get("link")
    if not isinstance(links, list):
        return None
    for link in links:
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return link["url"]
    return None


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
            data.resources, data.foreign, data.unresolved = _own(result.resources, patient_id)
    for key, result in paged.items():
        data = keys[key]
        _account(data, result)
        if result.error is not None:  # the first page alone would be silently incomplete
            _missing(data, f"prefetch has more pages; fetching them failed: {_why(result.error)}")
        else:
            data.source = PREFETCH_PAGED
            kept, foreign, unresolved = _own(result.resources, patient_id)
            data.resources, data.foreign = data.resources + kept, data.foreign + foreign
            data.unresolved += unresolved
    elapsed = (time.monotonic() - started) * 1000
    for key in list(to_fetch) + list(to_page):
        keys[key].elapsed_ms = keys[key].elapsed_ms or elapsed


# FHIR servers that answered a search with _include by 400 or 422 (not supported there): searched
# without it from then on. Bounded: a service talks to a few servers.
_REFUSES_INCLUDES: set[str] = set()
_REFUSALS_KEPT = 64


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
    if len(_REFUSES_INCLUDES) >= _REFUSALS_KEPT:
        _REFUSES_INCLUDES.clear()
    _REFUSES_INCLUDES.add(access.base)
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


def _own(resources: Iterable[dict[str, Any]], patient_id: str) -> tuple[list[dict[str, Any]], int, int]:
    """(the resources about this patient, how many were about another, how many of those
    kept could not be checked): the same reading as a prefetch Bundle's (_whose), for a
    fetched search's resources (no fullUrls: a urn: reference cannot be resolved)."""
    own_key = f"Patient/{patient_id}"
    resources = list(resources)
    odd = []
    for resource in resources:
        subject = resource.get("subject")
        if not (isinstance(subject, dict) and subject.get("reference") == own_key):  # as nearly every EHR writes it
            odd.append((resource, None))
    if not odd:
        return resources, 0, 0
    verdicts = _whose(odd, patient_id, own_key, {}, resources)
    kept = [r for r in resources if verdicts.get(id(r), _OWN) in (_OWN, _UNRESOLVED)]
    return kept, len(resources) - len(kept), sum(1 for v in verdicts.values() if v is _UNRESOLVED)
