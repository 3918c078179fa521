"""Reading FHIR files (a Bundle of any type, a single resource, or NDJSON) and
splitting what they hold into one group of resources per patient."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import orjson


class InputError(ValueError):
    """Input that is not FHIR JSON the service can read. The message is one line."""


@dataclass
class Entry:
    resource: dict[str, Any]
    full_url: str | None = None


@dataclass
class PatientGroup:
    """One patient's resources, and the fullUrls that resolve references among them."""

    patient_key: str  # "Patient/123"
    resources: list[dict[str, Any]] = field(default_factory=list)
    full_urls: dict[str, dict[str, Any]] = field(default_factory=dict)


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
            entries.append(Entry(resource, full_url))
    return entries


def reference_key(reference: Any) -> str | None:
    """'Patient/123' for 'Patient/123', 'Patient/123/_history/2' and
    'https://host/fhir/Patient/123'; other references (urn:uuid:…) unchanged."""
    if not isinstance(reference, str) or not reference:
        return None
    ref = reference.split("/_history/")[0].rstrip("/")
    if ref.startswith("urn:"):
        return ref
    parts = ref.split("/")
    if len(parts) >= 2:
        return f"{parts[-2]}/{parts[-1]}"
    return ref


# Where each resource type keeps the patient it is about.
_PATIENT_FIELDS = ("subject", "patient")


def patient_reference(resource: dict[str, Any]) -> str | None:
    for name in _PATIENT_FIELDS:
        value = resource.get(name)
        if isinstance(value, dict):
            return value.get("reference") if isinstance(value.get("reference"), str) else None
    return None


def group_by_patient(entries: Iterable[Entry]) -> list[PatientGroup]:
    """One group per patient, in the order patients first appear. A resource
    that names no patient joins the only patient when there is exactly one;
    with several it is dropped (it cannot be attributed)."""
    entries = list(entries)
    aliases: dict[str, str] = {}  # any way of referring to a patient -> its key
    groups: dict[str, PatientGroup] = {}
    for e in entries:
        if e.resource.get("resourceType") != "Patient":
            continue
        rid = e.resource.get("id")
        key = f"Patient/{rid}" if isinstance(rid, str) and rid else (e.full_url or f"Patient/#{len(groups) + 1}")
        if key not in groups:
            groups[key] = PatientGroup(key)
        aliases[key] = key
        if e.full_url:
            aliases[e.full_url] = key
            aliases[reference_key(e.full_url) or e.full_url] = key
    unattributed: list[Entry] = []
    for e in entries:
        if e.resource.get("resourceType") == "Patient":
            rid = e.resource.get("id")
            key = f"Patient/{rid}" if isinstance(rid, str) and rid else aliases.get(e.full_url or "", None)
            group = groups.get(key) if key else None
        else:
            ref = patient_reference(e.resource)
            if ref is None:
                unattributed.append(e)
                continue
            key = aliases.get(ref) or aliases.get(reference_key(ref) or "")
            if key is None:  # a patient with no Patient resource in the input
                key = reference_key(ref) or ref
                aliases[ref] = key
                groups.setdefault(key, PatientGroup(key))
            group = groups[key]
        if group is not None:
            _add(group, e)
    if len(groups) == 1:
        only = next(iter(groups.values()))
        for e in unattributed:
            _add(only, e)
    return list(groups.values())


def _add(group: PatientGroup, entry: Entry) -> None:
    group.resources.append(entry.resource)
    if entry.full_url:
        group.full_urls[entry.full_url] = entry.resource


def patient_groups_from_bytes(data: bytes) -> list[PatientGroup]:
    groups = group_by_patient(parse_fhir_json(data))
    if not groups:
        raise InputError("no patient found in the input (no Patient resource and no resource naming one)")
    return groups
