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
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from .bundles import patient_reference, reference_key
from .client import LOOK_BACK, Enough, FetchResult, FhirClient, FhirError, FhirNotAllowed
from .queries import Read
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
    repeated: int = 0  # resources another key of the same type already holds, dropped
    requests: int = 0
    cut: str | None = None  # why a search was cut short: client.LOOK_BACK, PAGE_LIMIT or DEADLINE
    elapsed_ms: float = 0.0

    @property
    def truncated(self) -> bool:
        """A search cut short: more of its resources may exist."""
        return self.cut is not None

    def audit(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source, "resources": len(self.resources)}
        for name in ("detail", "foreign", "repeated", "requests", "truncated", "cut"):
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
        resources, foreign, why = _usable_resources(value, query, patient_id)
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


# Searched types whose `subject` names the patient (AllergyIntolerance has `patient`; the
# Patient is checked by its id): the fast path of _usable_resources.
_SUBJECT_TYPES = frozenset({"Observation", "Condition", "DiagnosticReport", "Specimen"})


def _usable_resources(value: Any, query: Any, patient_id: str) -> tuple[list[dict[str, Any]] | None, int, str | None]:
    """(this patient's resources of a prefetch value, how many were another
    patient's, None), or (None, 0, why it cannot be used). One pass over a
    Bundle's entries: this runs for every resource of every call."""
    if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
        return None, 0, "prefetch value is not a FHIR resource"
    rtype = value["resourceType"]
    if rtype == "OperationOutcome":
        return None, 0, "prefetch reported an error (OperationOutcome)"
    if isinstance(query, Read):
        if rtype != query.resource_type:
            return None, 0, f"prefetch holds a {rtype}, not a {query.resource_type}"
        if value.get("id") != patient_id:
            return None, 0, "prefetch holds another patient's record"
        return [value], 0, None
    if rtype != "Bundle":
        return None, 0, f"prefetch holds a {rtype}, not a search Bundle"
    entries = value.get("entry", [])
    if not isinstance(entries, list):
        return None, 0, "prefetch Bundle.entry is not a list"
    own_key = f"Patient/{patient_id}"
    resources, foreign = [], 0
    keep = resources.append
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
                if _is_own(resource, entry_type, patient_id, own_key):
                    keep(resource)
                else:
                    foreign += 1
    return resources, foreign, None


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
    with ThreadPoolExecutor(max_workers=1 + len(to_page)) as pool:
        searches = pool.submit(access.client.fetch, access.base, access.token, to_fetch, patient_id, deadline,
                               enough=enough) if to_fetch else None
        pages = {key: pool.submit(access.client.follow_next, access.base, access.token, bundle, key, deadline,
                                  enough=enough.get(key)) for key, bundle in to_page.items()}
        fetched: dict[str, FetchResult] = searches.result() if searches else {}
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
            data.resources, data.foreign = _own(result.resources, patient_id)
    for key, result in paged.items():
        data = keys[key]
        _account(data, result)
        if result.error is not None:  # the first page alone would be silently incomplete
            _missing(data, f"prefetch has more pages; fetching them failed: {_why(result.error)}")
        else:
            data.source = PREFETCH_PAGED
            kept, foreign = _own(result.resources, patient_id)
            data.resources, data.foreign = data.resources + kept, data.foreign + foreign
    elapsed = (time.monotonic() - started) * 1000
    for key in list(to_fetch) + list(to_page):
        keys[key].elapsed_ms = keys[key].elapsed_ms or elapsed


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


def _own(resources: Iterable[dict[str, Any]], patient_id: str) -> tuple[list[dict[str, Any]], int]:
    """(the resources about this patient, how many were about another)."""
    own_key = f"Patient/{patient_id}"
    kept, foreign = [], 0
    for resource in resources:
        if _is_own(resource, resource.get("resourceType"), patient_id, own_key):
            kept.append(resource)
        else:
            foreign += 1
    return kept, foreign


def _is_own(resource: dict[str, Any], resource_type: Any, patient_id: str, own_key: str) -> bool:
    """The Patient itself, or a resource whose subject/patient reference names it."""
    if resource_type == "Patient":
        return resource.get("id") == patient_id
    subject = resource.get("subject")
    if isinstance(subject, dict) and subject.get("reference") == own_key:
        return True  # "Patient/<id>" as nearly every EHR writes it: no parsing (runs for every resource)
    reference = patient_reference(resource)  # absolute URL, _history, or `patient` instead of `subject`
    return reference_key(reference) == own_key
