"""Small builders for FHIR R4 JSON shaped like EHR output, for focused tests.
(The gold set under tests/gold/ holds complete, hand-written patients.)"""

from __future__ import annotations

import itertools
from typing import Any

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
PATIENT_REF = {"reference": "Patient/p1"}

_ids = itertools.count(1)


def patient(birth_date: str | None = "1975-04-02", gender: str | None = "female", **extra: Any) -> dict:
    p = {"resourceType": "Patient", "id": "p1", "meta": {"lastUpdated": "2026-06-01T08:00:00Z"},
         "identifier": [{"system": "http://hospital.example.org/mrn", "value": "MRN-001"}],
         "name": [{"family": "Testpatient", "given": ["Ada"]}]}
    if gender:
        p["gender"] = gender
    if birth_date:
        p["birthDate"] = birth_date
    p.update(extra)
    return p


def concept(*codings: tuple[str, str, str] | tuple[str, str], text: str | None = None) -> dict:
    c: dict[str, Any] = {"coding": [dict(zip(("system", "code", "display"), cd)) for cd in codings]}
    if text:
        c["text"] = text
    return c


def lab(code: str, value: Any = None, unit: str | None = None, date: str | None = "2026-06-01T09:30:00-04:00",
        *, ucum: bool = True, status: str = "final", high: Any = None, high_unit: str | None = "same",
        comparator: str | None = None, system: str = LOINC, **extra: Any) -> dict:
    obs: dict[str, Any] = {
        "resourceType": "Observation", "id": f"obs-{next(_ids)}", "status": status,
        "category": [concept(("http://terminology.hl7.org/CodeSystem/observation-category", "laboratory"))],
        "code": concept((system, code)), "subject": PATIENT_REF}
    if date:
        obs["effectiveDateTime"] = date
    if value is not None:
        q: dict[str, Any] = {"value": value}
        if comparator:
            q["comparator"] = comparator
        if unit:
            q["unit"] = unit
            if ucum:
                q["system"], q["code"] = UCUM, unit
        obs["valueQuantity"] = q
    if high is not None:
        h: dict[str, Any] = {"value": high}
        hu = unit if high_unit == "same" else high_unit
        if hu:
            h.update({"unit": hu, "system": UCUM, "code": hu})
        obs["referenceRange"] = [{"high": h}]
    obs.update(extra)
    return obs


def coded_obs(code: str, value: tuple[str, str, str] | tuple[str, str] | None, date: str | None = "2025-03-02",
              status: str = "final", **extra: Any) -> dict:
    obs: dict[str, Any] = {"resourceType": "Observation", "id": f"obs-{next(_ids)}", "status": status,
                           "code": concept((LOINC, code)), "subject": PATIENT_REF}
    if date:
        obs["effectiveDateTime"] = date
    if value is not None:
        obs["valueCodeableConcept"] = concept(value)
    obs.update(extra)
    return obs


def condition(system: str, code: str, *, clinical: str | None = "active", verification: str | None = "confirmed",
              onset: str | None = "2025-01-10", **extra: Any) -> dict:
    c: dict[str, Any] = {"resourceType": "Condition", "id": f"cond-{next(_ids)}", "code": concept((system, code)),
                         "subject": PATIENT_REF}
    if clinical:
        c["clinicalStatus"] = concept(("http://terminology.hl7.org/CodeSystem/condition-clinical", clinical))
    if verification:
        c["verificationStatus"] = concept(("http://terminology.hl7.org/CodeSystem/condition-ver-status",
                                           verification))
    if onset:
        c["onsetDateTime"] = onset
    c.update(extra)
    return c


def allergy(system: str | None, code: str | None, *, clinical: str | None = "active",
            verification: str | None = "confirmed", text: str | None = None) -> dict:
    a: dict[str, Any] = {"resourceType": "AllergyIntolerance", "id": f"alg-{next(_ids)}", "patient": PATIENT_REF}
    if code:
        a["code"] = concept((system, code))
    if text:
        a.setdefault("code", {})["text"] = text
    if clinical:
        a["clinicalStatus"] = concept(
            ("http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", clinical))
    if verification:
        a["verificationStatus"] = concept(
            ("http://terminology.hl7.org/CodeSystem/allergyintolerance-verification", verification))
    return a
