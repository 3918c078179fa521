"""One patient's FHIR resources, indexed by code before anything is validated.

Validating a resource with fhir.resources costs ~100-300 µs; reading its
codes from the parsed JSON costs about a microsecond. So the record indexes
the raw JSON by (resource type, system, code) and builds a validated model
only for the resources a criterion actually reads. A resource that fails
validation is reported by the criterion that wanted it, never fatal.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, NamedTuple

import orjson

from .codes import CodeSet, coding_key
from .validation import InvalidResource, read_elements, validate, validate_serialized

# Where a resource type keeps the code that classifies it, when not in `code` (Specimen.type,
# MedicationRequest.medicationCodeableConcept): declared by the rule kinds that read such a
# type (RuleModel.code_elements -> index_codes_at). Every type is indexed by it.
_CODE_ELEMENTS: dict[str, str] = {}


def index_codes_at(resource_type: str, element: str) -> None:
    """Index resources of `resource_type` by the codes of `element` (a CodeableConcept)."""
    if _CODE_ELEMENTS.get(resource_type, element) != element:
        raise ValueError(f"{resource_type} is already indexed by {_CODE_ELEMENTS[resource_type]}, not {element}")
    if element != "code":
        _CODE_ELEMENTS[resource_type] = element


def code_element(resource_type: str) -> str:
    """The element whose codes classify a resource of this type (find() looks them up)."""
    return _CODE_ELEMENTS.get(resource_type, "code")


class Hit(NamedTuple):
    """A resource (or one component of an Observation) whose code matched.
    A named tuple: made for every match of every look-up, and cheap to make."""

    raw: dict[str, Any]
    component: int | None  # index into Observation.component, None for the resource itself
    # Order of the resource in the input, to keep results stable: its index, or for a contained
    # resource a fraction between its container's and the next resource's.
    position: float = 0


def reference_of(raw: dict[str, Any], full_url: str | None = None) -> str:
    rid = raw.get("id")
    rtype = raw.get("resourceType", "Resource")
    if isinstance(rid, str) and rid:
        return f"{rtype}/{rid}"
    return full_url or f"{rtype}/(no id)"


def type_and_id(reference: str) -> str | None:
    """"Type/id" of a literal reference: relative ("Observation/1"), absolute
    ("https://ehr/fhir/Observation/1") or versioned (".../Observation/1/_history/2");
    None for anything else (urn:uuid:, "#id", a search URL)."""
    parts = reference.split("?", 1)[0].rstrip("/").split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) < 2 or not parts[-2][:1].isupper() or not parts[-2].isalpha() or not parts[-1]:
        return None
    return f"{parts[-2]}/{parts[-1]}"


# What a contained resource without its own takes from its container (FHIR: a contained resource
# has no existence apart from its container; it is about what the container is about). The
# element naming the patient, by type, and for a result the time it was taken.
_PATIENT_ELEMENT = {"Observation": "subject", "Condition": "subject", "DiagnosticReport": "subject",
                    "Specimen": "subject", "AllergyIntolerance": "patient"}
_EFFECTIVE = ("effectiveDateTime", "effectiveInstant", "effectivePeriod")
_TAKES_EFFECTIVE = frozenset({"Observation", "DiagnosticReport"})


def _as_contained(item: dict[str, Any], container: dict[str, Any]) -> dict[str, Any]:
    """A contained resource as the record reads it: with its container's patient when it
    names none, and (an Observation in a DiagnosticReport or panel Observation) the
    container's effective time when it has none. A copy when anything is added: the
    input is never changed."""
    rtype = item["resourceType"]
    added: dict[str, Any] = {}
    mine = _PATIENT_ELEMENT.get(rtype)
    if mine is not None and mine not in item:
        theirs = container.get(_PATIENT_ELEMENT.get(container.get("resourceType")) or "subject")
        if isinstance(theirs, dict):
            added[mine] = theirs
    if rtype == "Observation" and container.get("resourceType") in _TAKES_EFFECTIVE \
            and not any(e in item for e in _EFFECTIVE):
        for e in _EFFECTIVE:
            if e in container:
                added[e] = container[e]
                break
    return {**item, **added} if added else item


@dataclass(frozen=True)
class Cut:
    """What a FHIR search cut short (page limit, deadline, look-back) may have left out:
    resources of `resource_type` coded in `codes` (coding keys, as the search
    asked for them), or any of that type when `codes` is None. Nothing found
    among those does not show there is nothing. `newest_first`: the pages came
    newest first, so only results older than those received are missing."""

    resource_type: str
    codes: frozenset[tuple[str, str]] | None = None
    newest_first: bool = False
    # Not cut but never made: the data was neither prefetched nor fetched (an optional query
    # with no FHIR server to ask, a scope that does not allow it, a failed request).
    not_obtained: bool = False

    def covers(self, resource_type: str, codes: CodeSet | None) -> bool:
        """Whether resources of `resource_type` in `codes` (None: any) may be among the missing."""
        if resource_type != self.resource_type:
            return False
        return self.codes is None or codes is None or any(codes.contains(key) for key in self.codes)


def _index_codings(index: dict[tuple[str, str], list[tuple[dict[str, Any], int | None, int]]], codings: Any,
                   entry: tuple[dict[str, Any], int | None, int], keys: dict[tuple[str, str], Any]) -> None:
    """Add `entry` (resource, component, position) under each coding's key, once per key.
    `keys`: the record's codings as sent -> their keys, so that each distinct one is
    normalised once (a chart repeats a few dozen codes over its results)."""
    if not isinstance(codings, list):
        return
    for coding in codings:
        try:
            pair = (coding["system"], coding["code"])
            key = keys.get(pair, pair)  # pair: not seen before in this record
        except (KeyError, TypeError, IndexError):  # incomplete, or not a Coding
            key = coding_key(coding.get("system"), coding.get("code")) if isinstance(coding, dict) else None
        else:
            if key is pair:
                key = keys[pair] = coding_key(*pair)
        if key is not None:
            bucket = index.get(key)
            if bucket is None:
                index[key] = [entry]
            elif bucket[-1] is not entry:  # not twice for one concept coded twice alike
                bucket.append(entry)


class PatientRecord:
    """Everything the engine knows about one patient."""

    def __init__(self, resources: Iterable[dict[str, Any]], full_urls: dict[str, dict[str, Any]] | None = None,
                 cuts: Iterable[Cut] = ()):
        self.patient_raw: dict[str, Any] | None = None
        self.cuts = tuple(cuts)  # searches cut short: what they may have left out
        self.by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
        # resource type -> (system, code) -> (resource, component index or None, position)
        self._index: dict[str, dict[tuple[str, str], list[tuple[dict[str, Any], int | None, int]]]] = {}
        self._keys: dict[tuple[str, str], tuple[str, str] | None] = {}  # see _index_codings
        self._full_urls = dict(full_urls or {})
        self._by_reference: dict[str, dict[str, Any]] | None = None  # built on first resolve()
        self._models: dict[int, Any] = {}
        self._full_url_of = {id(raw): url for url, raw in self._full_urls.items()}
        # Contained resources: each one's container, and each container's by local id (see _index_contained).
        self._container_of: dict[int, dict[str, Any]] = {}
        self._contained: dict[int, dict[str, dict[str, Any]]] = {}
        self._listed_by: dict[int, list[dict[str, Any]]] | None = None  # built on first reports_listing()
        self._index_all(resources)

    def _index_all(self, resources: Iterable[dict[str, Any]]) -> None:
        # The hot path: runs for every resource of every chart, so plain dict and tuple work
        # (Hit objects are made in find(), for the few resources a criterion asks for),
        # reading by subscript in try blocks (free when nothing is raised) rather than by
        # .get() and isinstance() calls. Indexed: the resource's code and, for an Observation
        # that has components, each component's code (with the component's position).
        # A resource with `contained` is set aside (one key look-up a resource) and its contained
        # resources indexed after the loop: only charts that send them pay for them.
        by_type, indexes, elsewhere, keys = self.by_type, self._index, _CODE_ELEMENTS, self._keys
        containers: list[tuple[int, dict[str, Any]]] = []
        for position, raw in enumerate(resources):
            try:
                rtype = raw["resourceType"]
                index = indexes[rtype]  # a type seen before in this record: the usual case
            except (KeyError, TypeError, IndexError):  # a type first seen here, or not a resource
                if not (isinstance(raw, dict) and isinstance(rtype := raw.get("resourceType"), str)):
                    continue
                index = indexes[rtype] = {}
                if rtype == "Patient":
                    self.patient_raw = raw  # the first Patient: later ones find the index made
            by_type[rtype].append(raw)
            if "contained" in raw:
                containers.append((position, raw))
            try:
                codings = raw[elsewhere[rtype] if elsewhere and rtype in elsewhere else "code"]["coding"]
            except (KeyError, TypeError, IndexError):  # no code, or not a CodeableConcept
                pass
            else:
                _index_codings(index, codings, (raw, None, position), keys)
            if rtype == "Observation" and "component" in raw:  # a panel's parts (blood pressure, ISH ratio)
                components = raw["component"]
                if isinstance(components, list):
                    for i, part in enumerate(components):
                        try:
                            codings = part["code"]["coding"]
                        except (KeyError, TypeError, IndexError):
                            continue
                        _index_codings(index, codings, (raw, i, position), keys)
        if containers:
            self._index_contained(containers)

    def _index_contained(self, containers: list[tuple[int, dict[str, Any]]]) -> None:
        """Index the resources inside each container's `contained` like any other: by
        type and code, found by find() and all_of(), validated on their own when read,
        named "Container/id#local-id" in evidence, resolved from "#local-id" only within
        their container (their ids are local to it), never by "Type/id". Each takes its
        container's patient (and a result its time) when it names none (_as_contained).
        Contained resources may not themselves contain any (FHIR): nested ones are not read."""
        by_type, indexes = self.by_type, self._index
        for position, container in containers:
            items = container["contained"]
            if not isinstance(items, list) or not items:
                continue
            local: dict[str, dict[str, Any]] = {}
            step = 1 / (len(items) + 1)
            for k, item in enumerate(items, 1):
                if not isinstance(item, dict) or not isinstance(rtype := item.get("resourceType"), str):
                    continue
                raw = _as_contained(item, container)
                rid = raw.get("id")
                if isinstance(rid, str) and rid and rid not in local:
                    local[rid] = raw
                self._container_of[id(raw)] = container
                by_type[rtype].append(raw)  # a contained Patient is never the record's patient
                self._index_codes(indexes.setdefault(rtype, {}), raw, position + k * step)
            self._contained[id(container)] = local

    def _index_codes(self, index: dict[tuple[str, str], list[tuple[dict[str, Any], int | None, float]]],
                     raw: dict[str, Any], position: float) -> None:
        """What the loop of _index_all does for one resource: its code and its components' codes."""
        code = raw.get(code_element(raw["resourceType"]))
        if isinstance(code, dict):
            _index_codings(index, code.get("coding"), (raw, None, position), self._keys)
        components = raw.get("component") if raw.get("resourceType") == "Observation" else None
        if isinstance(components, list):
            for i, part in enumerate(components):
                concept = part.get("code") if isinstance(part, dict) else None
                if isinstance(concept, dict):
                    _index_codings(index, concept.get("coding"), (raw, i, position), self._keys)

    # -- look-ups -----------------------------------------------------------

    def find(self, resource_type: str, codes: CodeSet) -> list[Hit]:
        """Resources of a type (and Observation components) coded in `codes`,
        each once, in record order."""
        index = self._index.get(resource_type) or {}
        entries: list[tuple[dict[str, Any], int | None, int]] = []
        buckets = 0
        if codes.prefixes or len(codes.exact) > len(index):
            for key, bucket in index.items():  # the record's codes: fewer than the set's
                if codes.contains(key):
                    entries.extend(bucket)
                    buckets += 1
        else:
            for key in codes.exact:
                bucket = index.get(key)
                if bucket is not None:
                    entries.extend(bucket)
                    buckets += 1
        if buckets > 1:  # a resource may sit in several buckets; one bucket is in order, each entry once
            unique = {(position, -1 if component is None else component): (raw, component)
                      for raw, component, position in entries}
            return [Hit(raw, component, order[0]) for order, (raw, component) in sorted(unique.items())]
        return [Hit(*entry) for entry in entries]  # the index's entries are (raw, component, position)

    def resolve(self, reference: str | None, within: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The resource of this record a literal reference names: "Type/id", an
        absolute URL ending in Type/id (a version, "/_history/n", ignored), a fullUrl
        (urn:uuid:...), or "#id": a resource contained in `within` (the resource that
        holds the reference) or in `within`'s container ("#" alone: the container)."""
        if not reference or not isinstance(reference, str):
            return None
        if reference[0] == "#":
            if within is None:
                return None
            container = self._container_of.get(id(within), within)
            if reference == "#":
                return container
            return self._contained.get(id(container), {}).get(reference[1:])
        if self._by_reference is None:
            self._by_reference = dict(self._full_urls)
            contained = self._container_of
            for rtype, items in self.by_type.items():
                for raw in items:
                    if isinstance(raw.get("id"), str) and id(raw) not in contained:
                        self._by_reference[f"{rtype}/{raw['id']}"] = raw
        found = self._by_reference.get(reference)
        if found is not None:
            return found
        key = type_and_id(reference)
        return self._by_reference.get(key) if key is not None else None

    def container(self, raw: dict[str, Any]) -> dict[str, Any] | None:
        """The resource whose `contained` holds `raw`; None for a resource of its own."""
        return self._container_of.get(id(raw))

    def reports_listing(self, raw: dict[str, Any]) -> list[dict[str, Any]]:
        """The DiagnosticReports whose `result` references `raw` (in any form resolve() reads)."""
        if self._listed_by is None:
            listed: dict[int, list[dict[str, Any]]] = {}
            for report in self.by_type.get("DiagnosticReport", ()):
                results = report.get("result")
                for ref in results if isinstance(results, list) else ():
                    target = self.resolve(ref.get("reference") if isinstance(ref, dict) else None, report)
                    if target is not None:
                        reports = listed.setdefault(id(target), [])
                        if not reports or reports[-1] is not report:  # listed twice by one report
                            reports.append(report)
            self._listed_by = listed
        return self._listed_by.get(id(raw), [])

    def referenced(self, raw: dict[str, Any], element: str) -> list[dict[str, Any]]:
        """The resources of this record that `raw`'s element (a Reference or a list of
        them: `result`, `hasMember`, `specimen`) references; those not in the record are left out."""
        value = raw.get(element)
        refs = value if isinstance(value, list) else [value]
        found = []
        for ref in refs:
            target = self.resolve(ref.get("reference") if isinstance(ref, dict) else None, raw)
            if target is not None:
                found.append(target)
        return found

    def reference(self, raw: dict[str, Any]) -> str:
        """How evidence names a resource: "Type/id", else its fullUrl; a contained
        resource by its container's reference and its local id ("DiagnosticReport/r1#obs1")."""
        container = self._container_of.get(id(raw))
        if container is not None:
            rid = raw.get("id")
            return f"{reference_of(container, self._full_url_of.get(id(container)))}#" \
                   f"{rid if isinstance(rid, str) and rid else '(no id)'}"
        return reference_of(raw, self._full_url_of.get(id(raw)))

    def model(self, raw: dict[str, Any]) -> Any:
        """The validated fhir.resources model of a raw resource. Raises InvalidResource."""
        key = id(raw)
        cached = self._models.get(key)
        if cached is None:
            try:
                serialized = orjson.dumps(raw)
            except (TypeError, orjson.JSONEncodeError):  # not plain JSON data: validate directly
                cached = validate(raw["resourceType"], read_elements(raw))
            else:
                cached = validate_serialized(raw["resourceType"], serialized)
            self._models[key] = cached
        if isinstance(cached, InvalidResource):
            raise InvalidResource(str(cached))
        return cached

    def patient(self) -> Any | None:
        if self.patient_raw is None:
            return None
        return self.model(self.patient_raw)

    def not_coded_in(self, resource_type: str, codes: CodeSet) -> list[dict[str, Any]]:
        """Resources of an indexed type none of whose codes (nor their components') is in
        `codes`, in record order: read from the index by its distinct codes, so a chart
        whose codes are all known costs a look-up per code, not per resource."""
        index = self._index.get(resource_type) or {}
        everything = self.by_type.get(resource_type, ())
        known = set(codes.exact.intersection(index))  # walks the record's codes; prefixes: their systems only
        if codes.prefixes:
            systems = {system for system, _ in codes.prefixes}
            known.update(key for key in index if key[0] in systems and key not in known and codes.contains(key))
        recognised = {id(entry[0]) for key in known for entry in index[key]}
        if len(recognised) == len(everything):
            return []  # every resource is filed under a known code
        return [raw for raw in everything if id(raw) not in recognised]

    def all_of(self, resource_type: str) -> Iterator[dict[str, Any]]:
        return iter(self.by_type.get(resource_type, ()))
