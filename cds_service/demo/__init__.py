"""Demo patients and ready-made patient-view hook requests built from them.

The demo patients (patients.json) are gold-set patients recorded as of
2026-06-15. `hook_request(name, as_of)` shifts every full date in them so the
record looks the same on `as_of` (default: that day), and wraps the patient's
data in a CDS Hooks request with prefetch, as an EHR would send it: each
prefetch key holds what its query returns (by type and code), newest first where
the query asks for that.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import uuid
from importlib import resources
from typing import Any

import orjson

from ..engine import sorted_newest_first
from ..fhir.bundles import entries_of, group_by_patient
from ..fhir.needs import DataNeed, data_needs
from ..trials import load_trials

RECORDED_AS_OF = dt.date(2026, 6, 15)
DEMO_PATIENTS = {  # request name -> patient id in patients.json
    "eligible": "g001",
    "her2-equivocal": "g012",
    "stale-anc": "g066",
    "her2-positive": "g011",
    "her2-positive-eligible": "g201",
}
_DATE = re.compile(r"^(\d{4}-\d{2}-\d{2})(T.*)?$")


@functools.cache
def _data_needs() -> tuple[DataNeed, ...]:
    """The service's queries for every bundled trial (what the prefetch keys hold)."""
    return tuple(data_needs(load_trials().values()))


def demo_patients() -> dict[str, Any]:
    return orjson.loads(resources.files(__package__).joinpath("patients.json").read_bytes())


def _shift(value: Any, days: int) -> Any:
    if isinstance(value, dict):
        return {k: _shift(v, days) for k, v in value.items()}
    if isinstance(value, list):
        return [_shift(v, days) for v in value]
    if isinstance(value, str) and days:
        m = _DATE.match(value)
        if m:
            try:
                day = dt.date.fromisoformat(m.group(1)) + dt.timedelta(days=days)
            except ValueError:
                return value
            return day.isoformat() + (m.group(2) or "")
    return value


def hook_request(name: str, as_of: dt.date = RECORDED_AS_OF, *, fhir_server: str | None = None,
                 hook_instance: str | None = None) -> dict[str, Any]:
    """A patient-view request for a demo patient with full prefetch."""
    if name not in DEMO_PATIENTS:
        raise KeyError(f"unknown demo request {name!r}; choose from {', '.join(DEMO_PATIENTS)}")
    patient_id = DEMO_PATIENTS[name]
    days = (as_of - RECORDED_AS_OF).days
    groups = {g.patient_key: g for g in group_by_patient(entries_of(demo_patients()))}
    mine = _shift(groups[f"Patient/{patient_id}"].resources, days)
    prefetch: dict[str, Any] = {}
    for need in _data_needs():
        selected = [r for r in mine if need.selects(r)]
        if need.key == "patient":
            prefetch["patient"] = selected[0]
            continue
        if need.newest_first:
            selected = sorted_newest_first(selected)
        prefetch[need.key] = {"resourceType": "Bundle", "type": "searchset", "total": len(selected), "entry": [
            {"fullUrl": f"{fhir_server or 'https://ehr.example.org/fhir'}/{r['resourceType']}/{r['id']}",
             "resource": r, "search": {"mode": "match"}} for r in selected]}
    request: dict[str, Any] = {
        "hookInstance": hook_instance or str(uuid.uuid4()),
        "hook": "patient-view",
        "context": {"userId": "Practitioner/demo-oncologist", "patientId": patient_id},
        "prefetch": prefetch,
    }
    if fhir_server:
        request["fhirServer"] = fhir_server
    return request
