"""Whose a resource is: this patient's, another's, or this patient's as far as can
be told.

Whose a resource is, is read from its subject (or patient) reference in any form:
"Patient/<id>", an absolute URL, a version, or a urn: fullUrl resolved in its Bundle.
One that names no patient (a Specimen without subject, a result a server included
with `_include`, a Medication a prescription references) is this patient's when a resource kept from the same response
references it. One whose reference cannot be checked (a urn: not in its Bundle, an
identifier only) is kept and counted as `unresolved`: the query asked for this
patient's resources and nothing in it names another; dropping it could let a missing
diagnosis pass an exclusion. Contained resources go with their container.
"""

from __future__ import annotations

from typing import Any, Iterable

from .bundles import PATIENT_FIELDS, reference_key

# Whose a resource is (whose): this patient's, another's, this patient's as far as can be told
# (the reference cannot be checked: kept and counted), or nobody's (it names no patient).
OWN, FOREIGN, UNRESOLVED, NOBODY = "own", "foreign", "unresolved", "nobody"

# Where a kept resource links to others that may name no patient of their own.
_LINKS = ("result", "specimen", "hasMember", "derivedFrom", "medicationReference")


def whose(odd: list[tuple[dict[str, Any], str | None]], patient_id: str, own_key: str,
          full_urls: dict[str, dict[str, Any]], kept: list[dict[str, Any]]) -> dict[int, str]:
    """id(resource) -> OWN, FOREIGN or UNRESOLVED for the (resource, fullUrl) pairs a
    fast path could not settle. One naming no patient is this patient's when a resource
    kept from the same response references it (a report's specimen or result, a panel's
    member), else another's."""
    verdicts: dict[int, str] = {}
    nobody: list[tuple[dict[str, Any], str | None]] = []
    for resource, full_url in odd:
        verdict = _patient_of(resource, patient_id, own_key, full_urls)
        if verdict is NOBODY:
            nobody.append((resource, full_url))
        else:
            verdicts[id(resource)] = verdict
    if nobody:
        unnamed = {id(r) for r, _ in nobody}
        linked = _linked(r for r in kept if id(r) not in unnamed and verdicts.get(id(r), OWN) is not FOREIGN)
        for resource, full_url in nobody:
            rid = resource.get("id")
            names = {full_url, reference_key(full_url)} if full_url else set()
            if isinstance(rid, str) and rid:
                names.add(f"{resource['resourceType']}/{rid}")
            verdicts[id(resource)] = OWN if names & linked else FOREIGN
    return verdicts


def _patient_of(resource: dict[str, Any], patient_id: str, own_key: str,
                full_urls: dict[str, dict[str, Any]]) -> str:
    resource_type = resource.get("resourceType")
    if resource_type == "Patient":
        return OWN if resource.get("id") == patient_id else FOREIGN
    for name in PATIENT_FIELDS:
        value = resource.get(name)
        if value is None:
            continue
        reference = value.get("reference") if isinstance(value, dict) else None
        if not isinstance(reference, str) or not reference:  # an identifier or display only
            return UNRESOLVED if isinstance(value, dict) else FOREIGN
        if reference.startswith("urn:"):
            target = full_urls.get(reference)
            if target is None:
                return UNRESOLVED
            return OWN if target.get("resourceType") == "Patient" and target.get("id") == patient_id \
                else FOREIGN
        return OWN if reference_key(reference) == own_key else FOREIGN
    return NOBODY


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


def own_resources(resources: Iterable[dict[str, Any]], patient_id: str) -> tuple[list[dict[str, Any]], int, int]:
    """(the resources about this patient, how many were about another, how many of those
    kept could not be checked): the same reading as a prefetch Bundle's, for a fetched
    search's resources (no fullUrls: a urn: reference cannot be resolved)."""
    own_key = f"Patient/{patient_id}"
    resources = list(resources)
    odd = []
    for resource in resources:
        subject = resource.get("subject")
        if not (isinstance(subject, dict) and subject.get("reference") == own_key):  # as nearly every EHR writes it
            odd.append((resource, None))
    if not odd:
        return resources, 0, 0
    verdicts = whose(odd, patient_id, own_key, {}, resources)
    kept = [r for r in resources if verdicts.get(id(r), OWN) in (OWN, UNRESOLVED)]
    return kept, len(resources) - len(kept), sum(1 for v in verdicts.values() if v is UNRESOLVED)
