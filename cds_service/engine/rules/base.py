"""What every rule kind shares: the evaluation context, the outcome type, the
definition base model, and the readers of FHIR statuses, dates and concepts.
The safety net is in mentions.py, the readers of results in readers.py."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, ClassVar, Iterable, Mapping, NamedTuple, Sequence, get_args

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from ..codes import CodeSet, coding_key, union
from ..dates import FhirDate, age_range, age_range_at_death, parse_fhir_date
from ..model import Evidence, Result, Why
from ..quantities import UnitTable
from ..record import PatientRecord, index_codes_at
from ..validation import InvalidResource, read_also


# The registry of rule kinds: each kind's name (its model's `type` literal) -> its model. A kind
# is one module in this package holding a RuleModel with a `type` field; defining the class
# registers it (rules/__init__.py imports every module), and definition.py's Rule union is
# built from here. Nothing else names a kind.
RULE_KIND_MODELS: dict[str, type["RuleModel"]] = {}


class DefinitionModel(BaseModel):
    """Base of everything read from a trial file: camelCase keys, nothing unknown, frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel,
                              populate_by_name=True)


class RuleModel(DefinitionModel):
    """Base of every rule definition and its parts. A model with a `type` field (a one-value
    Literal) is a rule kind; the methods below are what the layers around the engine ask of
    every kind (data to fetch, orders, units, labels), so none of them needs to know the kinds."""

    # Elements of a resource type the kind reads beyond those every kind reads (engine/validation.py
    # _READ_ELEMENTS: ids, statuses, codes, dates, the usual value[x]): validated for it.
    elements_read: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    # Where a type the kind reads keeps its classifying code, when not in `code` (Specimen: `type`).
    code_elements: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        field = cls.model_fields.get("type")
        if field is None:
            return  # a part of a rule (an analyte, a scale, text mentions), not a kind
        (kind,) = get_args(field.annotation)
        if RULE_KIND_MODELS.get(kind, cls) is not cls:
            raise TypeError(f"rule kind '{kind}' is defined twice: {RULE_KIND_MODELS[kind].__name__}, {cls.__name__}")
        RULE_KIND_MODELS[kind] = cls
        for resource_type, elements in cls.elements_read.items():
            read_also(resource_type, elements)
        for resource_type, element in cls.code_elements.items():
            index_codes_at(resource_type, element)
            read_also(resource_type, (element,))

    def latest_within_days(self) -> int | None:
        """For a rule decided by the latest result of each of its tests, within a
        look-back: how many days back a result can still decide (an older one is stale
        whatever it says). Its results' query may then ask for the newest first and be
        cut short without harm (see fhir/needs.py). None: results of any age count."""
        return None

    def evaluate(self, ctx: "Context") -> "Outcome":  # pragma: no cover - abstract
        raise NotImplementedError

    def reads(self) -> dict[str, list[str]]:
        """What the rule reads, for building FHIR queries: resource type -> names of
        the code sets that select its resources (an empty list: all of that type)."""
        return {}

    def includes(self) -> dict[str, tuple[str, ...]]:
        """What a search of each type the rule reads should bring with it (FHIR `_include`
        values): resources its readings follow references to, which the search's own codes
        cannot select (a report's results and specimen, a prescription's Medication)."""
        return {}

    def result_mentions(self) -> list[Any]:
        """The names (TextMentions) the rule looks for among Observations coded in no set
        of the trial (mentions.unrecognised_results): none unless a kind reads them."""
        return []

    def default_order(self) -> str | None:
        """The order an orderable unknown suggests unless the outcome names another (Outcome.order)."""
        return None

    def orders(self) -> list[str]:
        """Keys of the trial's `orders` this rule may suggest (checked when the trial loads):
        its default order; a kind whose outcomes name others adds them."""
        default = self.default_order()
        return [default] if default else []

    def units_used(self) -> list[str]:
        """UCUM units the rule's definition writes (checked when the trial loads)."""
        return []

    def unit_bridges(self) -> list[str]:
        """Names of the unit table's conversions the rule uses (checked when the trial loads)."""
        return []

    def evidence_labels(self) -> list[tuple[str, list[str]]]:
        """(a short name, code-set names): cards label a piece of evidence coded in one
        of the sets by that name ("ANC"), where a rule reads several tests."""
        return []

    def codeset_names(self) -> Iterable[str]:
        """Every code-set name the rule refers to. By convention these are the
        fields named `codes` or ending in `Codes` (lists of names), at any depth."""
        yield from _codeset_names(self)


def _codeset_names(model: BaseModel) -> Iterable[str]:
    return (name for _, name in codeset_fields(model))


def codeset_fields(model: BaseModel) -> Iterable[tuple[str, str]]:
    """(field alias, code-set name) for every code-set name a rule refers to: the
    fields named `codes` or ending in `Codes` (lists of names), at any depth."""
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        alias = info.alias or name
        if alias == "codes" or alias.endswith("Codes"):
            if isinstance(value, (list, tuple)):
                yield from ((alias, n) for n in value)
        elif isinstance(value, BaseModel):
            yield from codeset_fields(value)
        elif isinstance(value, (list, tuple)):
            for item in value:
                if isinstance(item, BaseModel):
                    yield from codeset_fields(item)


@dataclass(slots=True)
class Outcome:
    result: Result
    reason: str
    evidence: list[Evidence] = field(default_factory=list)
    why: Why | None = None
    orderable: bool = False  # an order (the criterion's `order`) would settle this unknown
    order: str | None = None  # which of the trial's orders, when not the criterion's `order`
    not_read: int = 0  # matching records left unread: they cannot change the outcome
    # What the outcome rests on, for data cut short (see evaluate._cut_short): types of which it
    # found nothing ("no HIV diagnosis recorded"), and types whose newest result decided it.
    absence_of: tuple[str, ...] = ()
    newest_of: tuple[str, ...] = ()
    decided_at: FhirDate | None = None  # the date of the deciding result, when one decided


class CodeLibrary:
    """Named code sets, with unions of several names built once."""

    def __init__(self, sets: Mapping[str, CodeSet]):
        self.sets = dict(sets)
        self._unions: dict[tuple[str, ...], CodeSet] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.sets

    def get(self, names: Sequence[str] | str) -> CodeSet:
        """The union of the named sets, built on first use: the names come from the trial's
        definitions, so there is at most one union per list of names they hold."""
        key = (names,) if isinstance(names, str) else tuple(names)
        found = self._unions.get(key)
        if found is None:
            found = self.sets[key[0]] if len(key) == 1 else union("+".join(key), (self.sets[n] for n in key))
            self._unions[key] = found
        return found

    def everything(self) -> CodeSet:
        """Every code the library knows: a record coded in none of them is unrecognised."""
        return self.get(tuple(sorted(self.sets)))


FEMALE, MALE = "female", "male"
_BIRTHSEX_URL = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex"


@dataclass
class Context:
    record: PatientRecord
    as_of: dt.date
    library: CodeLibrary
    units: UnitTable
    memo: dict[str, Any] = field(default_factory=dict)  # what several criteria read of this record, read once
    # Whether a text may be a name criteria look for among results coded in none of the trial's
    # sets (any_of_names of those criteria's mentions): a result none of whose texts it accepts is
    # never kept (unrecognised_results). None keeps them all.
    result_names: Callable[[str], bool] | None = None

    def codes(self, names: Sequence[str] | str) -> CodeSet:
        return self.library.get(names)

    def names(self, mentions: Any) -> Callable[[str], bool]:
        """`mentions.names` (a TextMentions), each distinct text searched once per evaluation: a
        chart repeats its texts (one with 128 Procedures holds 39 distinct ones), and each search
        tries every pattern."""
        key = ("names", id(mentions))
        named = self.memo.get(key)
        if named is None:
            answers: dict[str, bool] = {}
            search = mentions.names

            def named(text: str) -> bool:
                answer = answers.get(text)
                if answer is None:
                    answer = answers[text] = search(text)
                return answer

            self.memo[key] = named
        return named

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
    def age(self) -> "Age | None":
        """The patient's possible age (youngest, oldest) in completed years on the
        evaluation date, or, for a deceased patient, on the date of death: an age is
        never counted past death. deceasedBoolean true without a date: death may have
        come on any day from birth to the evaluation date, so the age is 0 to the age
        today, and decides only what that whole range decides (see
        dates.age_range_at_death). None without a (readable) birth date. Read once per
        evaluation: the age criterion, appliesTo and the pregnancy rule all ask."""
        birth, p = self.birth_date, self.patient
        if birth is None or p is None:
            return None
        if p.deceasedDateTime is not None:
            death = parse_fhir_date(p.deceasedDateTime)
            if death is not None:
                return Age(*age_range_at_death(birth, death, self.as_of), True)
        if p.deceasedDateTime is not None or p.deceasedBoolean:
            return Age(*age_range_at_death(birth, None, self.as_of), True)
        return Age(*age_range(birth, self.as_of), False)


class Age(NamedTuple):
    youngest: int
    oldest: int
    deceased: bool  # counted to the date of death (or unknown for want of one): never shown


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
        if codes.contains(coding_key(coding.system, coding.code)):
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


# -- qualitative results sent as text ----------------------------------------

POSITIVE, NEGATIVE = "positive", "negative"
# Whole-string answers a lab interface sends for a qualitative test (valueString), after
# normalising case, spacing, hyphens and a trailing full stop. Anything else is not read:
# "POSITIVE - see note", "weakly positive", "neg?" stay unknown (the decisions'
# "exact normalised words").
_QUALITATIVE_WORDS = {
    "positive": POSITIVE, "pos": POSITIVE, "detected": POSITIVE, "reactive": POSITIVE,
    "negative": NEGATIVE, "neg": NEGATIVE, "not detected": NEGATIVE, "non reactive": NEGATIVE,
    "nonreactive": NEGATIVE, "undetected": NEGATIVE,
}


def qualitative_word(text: Any) -> str | None:
    """POSITIVE or NEGATIVE when the whole text, normalised, is one of the exact
    qualitative answers; None for anything else (never a guess from part of it)."""
    if not isinstance(text, str):
        return None
    words = " ".join(text.strip().rstrip(".").replace("-", " ").replace("_", " ").lower().split())
    return _QUALITATIVE_WORDS.get(words)


# -- the safety net: records named by text, not by a code the criterion reads ---
