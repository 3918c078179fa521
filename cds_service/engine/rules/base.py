"""What every rule kind shares: the evaluation context, the outcome type, the
definition base model, and the readers for FHIR statuses and dates."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Iterable, Mapping, Sequence

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from ..codes import CodeSet, memo_coding_key, union
from ..dates import FhirDate, age_range, parse_fhir_date
from ..model import Evidence, Result, Role, Why
from ..quantities import UnitTable
from ..record import InvalidResource, PatientRecord


class RuleModel(BaseModel):
    """Base of every rule definition read from a trial file (camelCase keys)."""

    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel,
                              populate_by_name=True)

    def evaluate(self, ctx: "Context") -> "Outcome":  # pragma: no cover - abstract
        raise NotImplementedError

    def reads(self) -> dict[str, list[str]]:
        """What the rule reads, for building FHIR queries: resource type -> names of
        the code sets that select its resources (an empty list: all of that type)."""
        return {}

    def codeset_names(self) -> Iterable[str]:
        """Every code-set name the rule refers to. By convention these are the
        fields named `codes` or ending in `Codes` (lists of names), at any depth."""
        yield from _codeset_names(self)


def _codeset_names(model: BaseModel) -> Iterable[str]:
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        alias = info.alias or name
        if alias == "codes" or alias.endswith("Codes"):
            if isinstance(value, (list, tuple)):
                yield from value
        elif isinstance(value, BaseModel):
            yield from _codeset_names(value)
        elif isinstance(value, (list, tuple)):
            for item in value:
                if isinstance(item, BaseModel):
                    yield from _codeset_names(item)


@dataclass(slots=True)
class Outcome:
    result: Result
    reason: str
    evidence: list[Evidence] = field(default_factory=list)
    why: Why | None = None
    orderable: bool = False  # an order (the criterion's `order`) would settle this unknown


class CodeLibrary:
    """Named code sets, with unions of several names built once."""

    def __init__(self, sets: Mapping[str, CodeSet]):
        self.sets = dict(sets)
        self._unions: dict[tuple[str, ...], CodeSet] = {}
        # By the identity of a rule's list of names (rules are frozen definitions, their lists
        # never change and live as long as the trial): every criterion asks on every call.
        self._by_list: dict[int, tuple[Sequence[str], CodeSet]] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.sets

    def get(self, names: Sequence[str] | str) -> CodeSet:
        kept = self._by_list.get(id(names))
        if kept is not None and kept[0] is names:
            return kept[1]
        key = (names,) if isinstance(names, str) else tuple(names)
        found = self._unions.get(key)
        if found is None:
            found = self.sets[key[0]] if len(key) == 1 else union("+".join(key), (self.sets[n] for n in key))
            self._unions[key] = found
        if len(self._by_list) < 4096:  # the rules' lists: a few dozen per trial
            self._by_list[id(names)] = (names, found)  # holding `names` keeps its id from being reused
        return found


FEMALE, MALE = "female", "male"
_BIRTHSEX_URL = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex"


@dataclass
class Context:
    record: PatientRecord
    as_of: dt.date
    library: CodeLibrary
    units: UnitTable

    def codes(self, names: Sequence[str] | str) -> CodeSet:
        return self.library.get(names)

    @cached_property
    def patient(self) -> Any | None:
        try:
            return self.record.patient()
        except InvalidResource:
            return None

    @cached_property
    def sex(self) -> str | None:
        """Sex for pregnancy rules: the US Core birth-sex extension when present,
        else administrative gender; None when neither says female or male."""
        p = self.patient
        if p is None:
            return None
        for ext in p.extension or ():
            if ext.url == _BIRTHSEX_URL and ext.valueCode in ("F", "M"):
                return FEMALE if ext.valueCode == "F" else MALE
        if p.gender in (FEMALE, MALE):
            return p.gender
        return None

    @cached_property
    def birth_date(self) -> FhirDate | None:
        p = self.patient
        return parse_fhir_date(p.birthDate) if p is not None else None

    @cached_property
    def age(self) -> tuple[int, int] | None:
        """(youngest, oldest) possible age on the evaluation date."""
        return age_range(self.birth_date, self.as_of) if self.birth_date else None


# -- statuses -------------------------------------------------------------

VALID_OBSERVATION_STATUSES = frozenset({"final", "amended", "corrected", "preliminary"})

_VER_SYSTEMS = {"http://terminology.hl7.org/CodeSystem/condition-ver-status",
                "http://hl7.org/fhir/condition-ver-status"}
_CLIN_SYSTEMS = {"http://terminology.hl7.org/CodeSystem/condition-clinical",
                 "http://hl7.org/fhir/condition-clinical"}
_ALLERGY_VER_SYSTEMS = {"http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"}
_ALLERGY_CLIN_SYSTEMS = {"http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"}

CONFIRMED, UNCONFIRMED, EXCLUDED = "confirmed", "unconfirmed", "excluded"


def _status_code(concept: Any, systems: set[str]) -> str | None:
    if concept is None:
        return None
    for coding in concept.coding or ():
        if coding.system in systems and coding.code:
            return coding.code
    return None


def verification(resource: Any) -> str:
    """confirmed / unconfirmed / excluded (refuted or entered-in-error).
    A Condition or AllergyIntolerance without a verification status counts as
    confirmed: problem lists and allergy lists in US Core often omit it."""
    if resource.get_resource_type() == "AllergyIntolerance":
        code = _status_code(resource.verificationStatus, _ALLERGY_VER_SYSTEMS)
    else:
        code = _status_code(resource.verificationStatus, _VER_SYSTEMS)
    if code in ("refuted", "entered-in-error"):
        return EXCLUDED
    if code in ("unconfirmed", "provisional", "differential"):
        return UNCONFIRMED
    return CONFIRMED


ACTIVE_CLINICAL = frozenset({"active", "recurrence", "relapse"})


def clinical_status(resource: Any) -> str:
    """The clinical status code; a resource without one is taken as active."""
    systems = _ALLERGY_CLIN_SYSTEMS if resource.get_resource_type() == "AllergyIntolerance" else _CLIN_SYSTEMS
    return _status_code(resource.clinicalStatus, systems) or "active"


# -- dates ----------------------------------------------------------------

def observation_date(obs: Any) -> FhirDate | None:
    """effective[x] of an Observation or DiagnosticReport (Period: its start)."""
    if obs.effectiveDateTime is not None:
        return parse_fhir_date(obs.effectiveDateTime)
    if getattr(obs, "effectiveInstant", None) is not None:
        return parse_fhir_date(obs.effectiveInstant)
    period = obs.effectivePeriod
    if period is not None:
        return parse_fhir_date(period.start or period.end)
    return None


def condition_date(cond: Any) -> FhirDate | None:
    if cond.onsetDateTime is not None:
        return parse_fhir_date(cond.onsetDateTime)
    if cond.onsetPeriod is not None and (cond.onsetPeriod.start or cond.onsetPeriod.end):
        return parse_fhir_date(cond.onsetPeriod.start or cond.onsetPeriod.end)
    return parse_fhir_date(cond.recordedDate)


# -- evidence helpers -----------------------------------------------------

def matching_coding(concept: Any, codes: CodeSet) -> Any | None:
    """The first coding of a (validated) CodeableConcept that is in `codes`."""
    if concept is None:
        return None
    for coding in concept.coding or ():
        if codes.contains(memo_coding_key(coding.system, coding.code)):
            return coding
    return None


def concept_in(concept: Any, codes: CodeSet) -> bool:
    return matching_coding(concept, codes) is not None


def coding_text(coding: Any) -> str:
    return f"{coding.system}|{coding.code}"


def concept_label(concept: Any, coding: Any | None = None) -> str | None:
    """A human label for display only (never used for matching)."""
    if coding is not None and coding.display:
        return coding.display
    if concept is not None:
        if concept.text:
            return concept.text
        for c in concept.coding or ():
            if c.display:
                return c.display
    return None


INVALID_NOTE = "not valid FHIR, skipped"


def invalid_evidence(ctx: Context, raw: dict[str, Any], exc: InvalidResource) -> Evidence:
    return Evidence(reference=ctx.record.reference(raw), role=Role.IGNORED, note=f"{INVALID_NOTE}: {exc}")


def has_invalid(evidence: Iterable[Evidence]) -> bool:
    return any(e.role is Role.IGNORED and (e.note or "").startswith(INVALID_NOTE) for e in evidence)


@dataclass(slots=True)
class Reading:
    """One valid result whose code matched: the resource, the part carrying the
    value (the resource or one of its components), its date, and the evidence
    entry started for it."""

    resource: Any
    source: Any
    date: FhirDate | None
    evidence: Evidence


def read_results(ctx: Context, codes: CodeSet, resource_type: str = "Observation",
                 components: bool = True) -> tuple[list[Reading], list[Evidence]]:
    """Results coded in `codes` that are valid FHIR, have a valid status and are
    not dated after the evaluation date. Everything else comes back as ignored
    evidence saying why."""
    readings: list[Reading] = []
    ignored: list[Evidence] = []
    for hit in ctx.record.find(resource_type, codes):
        if hit.component is not None and not components:
            continue
        try:
            resource = ctx.record.model(hit.raw)
        except InvalidResource as exc:
            ignored.append(invalid_evidence(ctx, hit.raw, exc))
            continue
        source = resource.component[hit.component] if hit.component is not None else resource
        coding = matching_coding(source.code, codes)
        date = observation_date(resource)
        ev = Evidence(reference=ctx.record.reference(hit.raw), code=coding_text(coding) if coding else None,
                      display=concept_label(source.code, coding), status=resource.status,
                      date=date.text if date else None)
        if resource.status not in VALID_OBSERVATION_STATUSES:
            ev.role, ev.note = Role.IGNORED, f"status '{resource.status}' is not a valid result; ignored"
            ignored.append(ev)
        elif date is not None and date.first_day > ctx.as_of:
            ev.role, ev.note = Role.IGNORED, "dated after the evaluation date; ignored"
            ignored.append(ev)
        else:
            readings.append(Reading(resource, source, date, ev))
    return readings, ignored
