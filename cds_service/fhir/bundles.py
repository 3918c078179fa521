"""Reading FHIR files (a Bundle of any type, a single resource, or NDJSON) and
splitting what they hold into one group of resources per patient."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Iterable

import orjson

from ..engine import type_and_id


class InputError(ValueError):
    """Input that is not FHIR JSON the service can read. The message is one line."""


@dataclass
class Entry:
    resource: dict[str, Any]
    full_url: str | None = None
    bundle: int | None = None  # which Bundle of the input holds it (urn: references resolve only there)


@dataclass
class PatientGroup:
    """One patient's resources, and the fullUrls that resolve references among them."""

    patient_key: str  # "Patient/123"; for a Patient without id its fullUrl, else "Patient/#n"
    resources: list[dict[str, Any]] = field(default_factory=list)
    full_urls: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """What names the patient in an evaluation: the Patient's id, else its fullUrl, else "#n"
        (its place among the input's patients)."""
        return self.patient_key.removeprefix("Patient/")


@dataclass
class Grouping:
    """The input split by patient, and what could not be given to a patient in it."""

    groups: list[PatientGroup]
    # Why -> how many resources: fixed texts with counts only, never an identifier (references
    # name patients), so that they can be shown on stderr.
    skipped: dict[str, int] = field(default_factory=dict)

    def skipped_lines(self) -> list[str]:
        return [f"skipped {n} resource{'s' if n != 1 else ''}: {why}" for why, n in self.skipped.items()]


def parse_fhir_json(data: bytes) -> list[Entry]:
    """Entries of a FHIR JSON document or of NDJSON (one resource per line)."""
    text = data.strip()
    if not text:
        raise InputError("input is empty")
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError:
        return _parse_ndjson(text)
    return entries_of(document, where="input")


def _parse_ndjson(text: bytes) -> list[Entry]:
    entries: list[Entry] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            document = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise InputError(f"not JSON or NDJSON (line {number}: {exc.args[0] if exc.args else 'invalid'})") \
                from None
        entries.extend(entries_of(document, where=f"line {number}"))
    return entries


def entries_of(document: Any, where: str = "input") -> list[Entry]:
    """Entries of a parsed FHIR JSON document: a Bundle's resources (nested Bundles
    flattened) or the single resource itself."""
    if not isinstance(document, dict) or not isinstance(document.get("resourceType"), str):
        raise InputError(f"{where} is not a FHIR resource (no resourceType)")
    if document["resourceType"] != "Bundle":
        return [Entry(document)]
    raw_entries = document.get("entry", [])
    if not isinstance(raw_entries, list):
        raise InputError(f"{where}: Bundle.entry is not a list")
    entries = []
    bundle = next(_BUNDLE_NUMBERS)
    for item in raw_entries:
        if not isinstance(item, dict):
            continue
        resource = item.get("resource")
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            continue  # a transaction entry without a resource (DELETE) or junk
        full_url = item.get("fullUrl") if isinstance(item.get("fullUrl"), str) else None
        if resource["resourceType"] == "Bundle":
            entries.extend(entries_of(resource, where))
        else:
            entries.append(Entry(resource, full_url, bundle))
    return entries


_BUNDLE_NUMBERS = itertools.count(1)  # tells the Bundles of an input apart (never reused in a process)


def reference_key(reference: Any) -> str | None:
    """'Patient/123' for 'Patient/123', 'Patient/123/_history/2' and
    'https://host/fhir/Patient/123'; other references (urn:uuid:…) unchanged."""
    if not isinstance(reference, str) or not reference:
        return None
    ref = reference.split("/_history/")[0].rstrip("/")
    if ref.startswith("urn:"):
        return ref
    return type_and_id(ref) or ref  # the engine's reading of a literal reference (engine/record.py)


# Where each resource type keeps the patient it is about.
# The elements by which a resource names its patient (AllergyIntolerance: patient; most: subject).
PATIENT_FIELDS = ("subject", "patient")


def patient_reference(resource: dict[str, Any]) -> str | None:
    for name in PATIENT_FIELDS:
        value = resource.get(name)
        if isinstance(value, dict):
            return value.get("reference") if isinstance(value.get("reference"), str) else None
    return None


def references_in(resource: Any) -> Iterable[str]:
    """Every literal reference a resource makes, at any depth (its contained resources'
    included), except "#id" ones (those point inside the resource itself)."""
    stack = [resource]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            ref = value.get("reference")
            if isinstance(ref, str) and ref and ref[0] != "#":
                yield ref
            stack.extend(v for v in value.values() if isinstance(v, (dict, list)))
        elif isinstance(value, list):
            stack.extend(v for v in value if isinstance(v, (dict, list)))


def group_by_patient(entries: Iterable[Entry]) -> list[PatientGroup]:
    """One group per Patient resource, in the order patients first appear (see split_by_patient)."""
    return split_by_patient(entries).groups


# Why a resource is given to no patient (texts for stderr: counts and reasons, no identifiers).
SKIP_URN = "their subject is a urn: reference that resolves to no Patient in their Bundle"
SKIP_ABSENT = "their subject names a Patient that is not in this input"
SKIP_NOT_PATIENT = "their subject is not a Patient (a Group, Device, Location... or an unreadable reference)"
SKIP_NO_REFERENCE = "their subject has no reference (an identifier or display only)"
SKIP_NO_PATIENT_SEVERAL = "they name no patient and the input holds several patients"
SKIP_NO_PATIENT_NONE = "they name no patient and the input holds no Patient"


def split_by_patient(entries: Iterable[Entry]) -> Grouping:
    """One group per Patient resource, in the order patients first appear.

    A resource joins the patient its subject (or patient) references: by id
    (`Patient/123`, an absolute URL, `_history` ignored) anywhere in the input, or
    by a `urn:` fullUrl only within its own Bundle (FHIR resolves those in the
    Bundle that holds them: concatenated Bundles do not resolve each other's).
    Resources whose patient is not in the input are not evaluated as a patient:
    they are counted in `skipped`, by reason. A resource that names no patient
    (a Medication, an Organization, a Specimen without subject) joins the only
    patient when there is exactly one; with several, the patient whose resources
    reference it (a report's specimen, a panel's member) when they are all one
    patient's, else it cannot be attributed and is counted too. Contained
    resources go with their container, whatever they say."""
    entries = list(entries)
    aliases: dict[Any, PatientGroup] = {}  # any way of referring to a patient -> its group
    groups: list[PatientGroup] = []
    owner: dict[int, PatientGroup] = {}  # id(entry) -> its patient's group
    named: set[str] = set()  # the fullUrls naming patients without an id
    for e in entries:
        if e.resource.get("resourceType") != "Patient":
            continue
        rid = e.resource.get("id")
        key = f"Patient/{rid}" if isinstance(rid, str) and rid else None
        group = aliases.get(key) if key else None  # the same patient listed again
        if group is None:
            if key is None:  # no id: named by its fullUrl when no other patient is, else by its place
                key = e.full_url if e.full_url and e.full_url not in named else f"Patient/#{len(groups) + 1}"
                named.add(key)
            group = PatientGroup(key)
            groups.append(group)
            if key.startswith("Patient/") and "#" not in key:
                aliases[key] = group
        if e.full_url:
            aliases.setdefault(_alias(e.full_url, e.bundle), group)
            if not e.full_url.startswith("urn:"):
                aliases.setdefault(reference_key(e.full_url) or e.full_url, group)
        owner[id(e)] = group
    skipped: dict[str, int] = {}
    unattributed: list[Entry] = []
    for e in entries:
        if e.resource.get("resourceType") == "Patient":
            continue
        ref = patient_reference(e.resource)
        if ref is None:
            if _names_a_subject(e.resource):
                skipped[SKIP_NO_REFERENCE] = skipped.get(SKIP_NO_REFERENCE, 0) + 1
            else:
                unattributed.append(e)
            continue
        group, why = _resolve(ref, e.bundle, aliases)
        if group is None:
            skipped[why] = skipped.get(why, 0) + 1
        else:
            owner[id(e)] = group
    if len(groups) == 1:
        for e in unattributed:
            owner[id(e)] = groups[0]
    elif unattributed and groups:
        unattributed = _claim_by_reference(entries, unattributed, owner)
        if unattributed:
            skipped[SKIP_NO_PATIENT_SEVERAL] = len(unattributed)
    elif unattributed:
        skipped[SKIP_NO_PATIENT_NONE] = len(unattributed)
    for e in entries:  # each group's resources in input order
        group = owner.get(id(e))
        if group is not None:
            _add(group, e)
    return Grouping(groups, skipped)


def _claim_by_reference(entries: list[Entry], unattributed: list[Entry], owner: dict[int, PatientGroup]
                        ) -> list[Entry]:
    """Give each resource that names no patient to the patient whose resources reference it,
    when they are one patient's (in `owner`); return those left unattributed."""
    known: dict[Any, Entry] = {}  # every way of referring to an unattributed resource -> it
    for e in unattributed:
        rid, rtype = e.resource.get("id"), e.resource.get("resourceType")
        if isinstance(rid, str) and rid and isinstance(rtype, str):
            known[f"{rtype}/{rid}"] = e
        if e.full_url:
            known[_alias(e.full_url, e.bundle)] = e
            if not e.full_url.startswith("urn:"):
                known.setdefault(reference_key(e.full_url) or e.full_url, e)
    claims: dict[int, set[int]] = {}  # id(entry) -> ids of the groups referencing it
    groups = {}
    for e in entries:
        group = owner.get(id(e))
        if group is None:
            continue
        for ref in references_in(e.resource):
            target = known.get((e.bundle, ref)) if ref.startswith("urn:") else \
                known.get(ref) or known.get(reference_key(ref))
            if target is not None:
                claims.setdefault(id(target), set()).add(id(group))
                groups[id(group)] = group
    left = []
    for e in unattributed:
        claimed = claims.get(id(e), ())
        if len(claimed) == 1:
            owner[id(e)] = groups[next(iter(claimed))]
        else:
            left.append(e)
    return left


def _alias(full_url: str, bundle: int | None) -> Any:
    return (bundle, full_url) if full_url.startswith("urn:") else full_url


def _resolve(ref: str, bundle: int | None, aliases: dict[Any, PatientGroup]) -> tuple[PatientGroup | None, str]:
    if ref.startswith("urn:"):
        return aliases.get((bundle, ref)), SKIP_URN
    group = aliases.get(ref)
    if group is not None:
        return group, ""
    key = reference_key(ref) or ""
    group = aliases.get(key)
    if group is not None:
        return group, ""
    return None, SKIP_ABSENT if key.startswith(("Patient/", "Patient?")) else SKIP_NOT_PATIENT


def _names_a_subject(resource: dict[str, Any]) -> bool:
    return any(isinstance(resource.get(name), dict) for name in PATIENT_FIELDS)


def _add(group: PatientGroup, entry: Entry) -> None:
    group.resources.append(entry.resource)
    if entry.full_url:
        group.full_urls[entry.full_url] = entry.resource


def patient_groups_from_bytes(data: bytes) -> list[PatientGroup]:
    return read_patient_file(data).groups


def read_patient_file(data: bytes) -> Grouping:
    """The patients of a FHIR file, and what was skipped; InputError when it holds no Patient."""
    grouping = split_by_patient(parse_fhir_json(data))
    if not grouping.groups:
        raise InputError("; ".join(["no patient found in the input: it holds no Patient resource",
                                    *grouping.skipped_lines()]))
    return grouping
