"""Reading a prefetch value (CDS Hooks 2.0 §Prefetch): whether it can stand for
its query, and which of its resources are this patient's.

  null                              -> the client ran the query: no data (gather.py)
  Bundle (possibly empty)           -> use it; a next link -> fetch the next pages
  OperationOutcome, or a Bundle
  holding one, or not FHIR at all   -> not satisfied: fetch it
Resources about another patient are dropped and counted (ownership.py says whose a
resource is); the urn: fullUrls of those kept are kept for references between them.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from .bundles import patient_reference
from .ownership import FOREIGN, UNRESOLVED, whose
from .queries import Read

if TYPE_CHECKING:
    from .gather import KeyData



# Types a subject does not make this patient's: an error, and a Patient (checked by its id).
_NOT_BY_SUBJECT = frozenset({"OperationOutcome", "Patient"})

_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")


def _type_named(rtype: str) -> str:
    """'a Patient' for a resourceType shaped like one; anything else an EHR put there is not
    repeated (the audit keeps the service's words only)."""
    if not _RESOURCE_TYPE.fullmatch(rtype):
        return "a resource of another type"
    return f"{'an' if rtype[0] in 'AEIOU' else 'a'} {rtype}"


def usable_resources(value: Any, query: Any, patient_id: str, data: KeyData | None = None
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
        # The usual entry, a resource of any type whose subject is "Patient/<id>" as nearly every
        # EHR writes it (a Condition, an Observation, a Procedure, a MedicationRequest), is settled
        # by subscripts in a try block (free when nothing is raised); anything else (no subject,
        # another patient, odd shapes, an OperationOutcome or a Patient naming the patient) takes the
        # full checks.
        try:
            resource = entry["resource"]
            rtype = resource["resourceType"]
            if resource["subject"]["reference"] == own_key and resource.__class__ is dict \
                    and rtype.__class__ is str and rtype not in _NOT_BY_SUBJECT:
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
    verdicts = whose([(r, url) for _, r, url in odd], patient_id, own_key, full_urls, resources)
    dropped = {i for i, r, _ in odd if verdicts[id(r)] is FOREIGN}
    kept = [r for i, r in enumerate(resources) if i not in dropped] if dropped else resources
    if data is not None:
        data.unresolved += sum(1 for v in verdicts.values() if v is UNRESOLVED)
        if full_urls:
            dropped_ids = {id(resources[i]) for i in dropped}
            data.full_urls = {url: r for url, r in full_urls.items() if id(r) not in dropped_ids}
    return kept, len(dropped), None


def _urn_subject(resource: dict[str, Any]) -> bool:
    return (patient_reference(resource) or "").startswith("urn:")


def _urn_full_urls(entries: list[Any]) -> dict[str, dict[str, Any]]:
    """urn: fullUrl -> resource, for the entries of a Bundle that have one."""
    out = {}
    for entry in entries:
        if isinstance(entry, dict):
            url, resource = entry.get("fullUrl"), entry.get("resource")
            if isinstance(url, str) and url.startswith("urn:") and isinstance(resource, dict):
                out[url] = resource
    return out
