"""What every rule kind shares: the evaluation context, the outcome type, the
definition base model, and the readers for FHIR statuses and dates."""

from __future__ import annotations

import datetime as dt
import functools
import re
from dataclasses import dataclass, field
from functools import cached_property
from operator import itemgetter
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from ..codes import CodeSet, memo_coding_key, union
from ..dates import FhirDate, age_range, age_range_at_death, parse_fhir_date
from ..memo import remembered_by_identity
from ..model import Evidence, Result, Role, Why
from ..quantities import UnitTable
from ..record import InvalidResource, PatientRecord


class RuleModel(BaseModel):
    """Base of every rule definition read from a trial file (camelCase keys)."""

    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel,
                              populate_by_name=True)

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


class CodeLibrary:
    """Named code sets, with unions of several names built once."""

    def __init__(self, sets: Mapping[str, CodeSet]):
        self.sets = dict(sets)
        self._unions: dict[tuple[str, ...], CodeSet] = {}
        # By the identity of a rule's list of names (rules are frozen definitions, their lists
        # never change and live as long as the trial): every criterion asks on every call.
        self._by_list: dict[int, tuple[Sequence[str], CodeSet]] = {}
        self._everything: CodeSet | None = None

    def __contains__(self, name: str) -> bool:
        return name in self.sets

    def get(self, names: Sequence[str] | str) -> CodeSet:
        """The union of the named sets; for a rule's own list of names (asked on every call)."""
        kept = self._by_list.get(id(names))
        if kept is not None and kept[0] is names:
            return kept[1]
        found = self.union_of(names)
        if len(self._by_list) < 4096:  # the rules' lists: a few dozen per trial
            self._by_list[id(names)] = (names, found)  # holding `names` keeps its id from being reused
        return found

    def everything(self) -> CodeSet:
        """Every code the library knows: a record coded in none of them is unrecognised."""
        if self._everything is None:
            self._everything = self.union_of(tuple(sorted(self.sets)))
        return self._everything

    def union_of(self, names: Sequence[str] | str) -> CodeSet:
        """The union of the named sets, for names not held by a rule (nothing kept by identity)."""
        key = (names,) if isinstance(names, str) else tuple(names)
        found = self._unions.get(key)
        if found is None:
            found = self.sets[key[0]] if len(key) == 1 else union("+".join(key), (self.sets[n] for n in key))
            self._unions[key] = found
        return found


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


@remembered_by_identity
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


@remembered_by_identity
def clinical_status(resource: Any) -> str:
    """The clinical status code; a resource without one is taken as active."""
    systems = _ALLERGY_CLIN_SYSTEMS if resource.get_resource_type() == "AllergyIntolerance" else _CLIN_SYSTEMS
    return _status_code(resource.clinicalStatus, systems) or "active"


# -- dates ----------------------------------------------------------------

@remembered_by_identity
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


@remembered_by_identity
def condition_date(cond: Any) -> FhirDate | None:
    if cond.onsetDateTime is not None:
        return parse_fhir_date(cond.onsetDateTime)
    if cond.onsetPeriod is not None and (cond.onsetPeriod.start or cond.onsetPeriod.end):
        return parse_fhir_date(cond.onsetPeriod.start or cond.onsetPeriod.end)
    return parse_fhir_date(cond.recordedDate)


# -- evidence helpers -----------------------------------------------------

@remembered_by_identity
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

class TextMentions(RuleModel):
    """Words that name a criterion's concept, for records whose codes the engine
    cannot match: a local code beside no standard one, a standard code missing from
    the shipped set, or text alone. Such a record may be the concept, so it must not
    be passed over silently; it never decides either (an inclusion becomes unknown,
    an exclusion review). Text is read only here, never to pass or fail."""

    patterns: list[str] = Field(min_length=1)  # regular expressions, case-insensitive: any match names it
    except_patterns: list[str] = []  # a text matching one of these names something else ("family history")
    # Code sets of codes the criterion knows and deliberately does not count (secondary neoplasm
    # of the breast, family history of breast cancer): recognised, so their text is not read.
    other_codes: list[str] = []

    @model_validator(mode="after")
    def _compiles(self) -> "TextMentions":
        for p in self.patterns + self.except_patterns:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"pattern {p!r}: {exc}") from None
        return self


@functools.lru_cache(maxsize=256)
def _compiled(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE) if patterns else None


_EXCLUDED_STATUSES = {"entered-in-error", "refuted", "cancelled"}


def _raw_excluded(raw: dict[str, Any]) -> bool:
    """Entered in error, refuted or cancelled, read from the JSON (the record may not be valid FHIR)."""
    if raw.get("status") in _EXCLUDED_STATUSES:
        return True
    ver = raw.get("verificationStatus")
    codings = ver.get("coding") if isinstance(ver, dict) else None
    return isinstance(codings, list) and any(isinstance(c, dict) and c.get("code") in _EXCLUDED_STATUSES
                                             for c in codings)


def concept_coding_keys(concept: Any) -> list[tuple[str, str]]:
    """The coding keys (engine/codes.py coding_key) of a raw CodeableConcept, in order."""
    codings = concept.get("coding") if isinstance(concept, dict) else None
    if not isinstance(codings, list):
        return []
    keys = (memo_coding_key(c.get("system"), c.get("code")) for c in codings if isinstance(c, dict))
    return [key for key in keys if key is not None]


def concept_texts(concept: Any) -> tuple[str, ...]:
    """The texts of a raw CodeableConcept: its text, then each coding's display."""
    if not isinstance(concept, dict):
        return ()
    text = concept.get("text")
    texts = [text] if isinstance(text, str) else []
    codings = concept.get("coding")
    for coding in codings if isinstance(codings, list) else ():
        display = coding.get("display") if isinstance(coding, dict) else None
        if isinstance(display, str):
            texts.append(display)
    return tuple(texts)


# What each TextMentions says of a text, remembered: the same displays ("Glucose", "HGB") come on
# every chart. By the mentions' identity (they live as long as their trial), bounded per mentions.
_NAMES: dict[int, tuple[TextMentions, dict[str, bool]]] = {}
NAMES_MEMO_SIZE = 4096


def _names_memo(mentions: TextMentions) -> dict[str, bool]:
    entry = _NAMES.get(id(mentions))
    if entry is None or entry[0] is not mentions:
        entry = _NAMES[id(mentions)] = (mentions, {})  # holding it keeps its id from being reused
    return entry[1]


def _names(mentions: TextMentions, text: str, memo: dict[str, bool] | None = None) -> bool:
    memo = _names_memo(mentions) if memo is None else memo
    answer = memo.get(text)
    if answer is None:
        pattern, unless = _compiled(tuple(mentions.patterns)), _compiled(tuple(mentions.except_patterns))
        answer = bool(pattern.search(text)) and not (unless is not None and unless.search(text))
        if len(memo) >= NAMES_MEMO_SIZE:
            memo.clear()
        memo[text] = answer
    return answer


def named_by_text(concept: Any, mentions: TextMentions, read: CodeSet | None,
                  known: CodeSet | None) -> tuple[str, list[tuple[str, str]], Why] | None:
    """(the text, the coding keys, UNRECOGNISED_CODE or TEXT_ONLY) when a raw
    CodeableConcept has no coding in `read` nor in `known`, and a text or coding
    display that names the concept; None otherwise."""
    memo = _names_memo(mentions)
    named = next((text for text in concept_texts(concept) if _names(mentions, text, memo)), None)
    if named is None:
        return None
    keys = concept_coding_keys(concept)
    if any((read is not None and read.contains(k)) or (known is not None and known.contains(k)) for k in keys):
        return None
    return named, keys, Why.UNRECOGNISED_CODE if keys else Why.TEXT_ONLY


def recorded_with(why: Why) -> str:
    """How a record the safety net found was recorded, in words."""
    return "an unrecognised code" if why is Why.UNRECOGNISED_CODE else "text only"


def mention_evidence(ctx: "Context", raw: dict[str, Any], named: tuple[str, list[tuple[str, str]], Why]
                     ) -> Evidence:
    text, keys, why = named
    shown = ", ".join(f"{system}|{code}" for system, code in keys[:2])
    note = (f"code not in the criterion's code sets ({shown}); its text names the concept"
            if why is Why.UNRECOGNISED_CODE else "recorded as text only, without a code")
    return Evidence(reference=ctx.record.reference(raw), role=Role.DECISIVE,
                    code=f"{keys[0][0]}|{keys[0][1]}" if keys else None, display=text, note=note)


def unread_mentions(ctx: "Context", resource_type: str, read: CodeSet, mentions: TextMentions,
                    element: str = "code", keep: Callable[[dict[str, Any]], bool] | None = None
                    ) -> list[tuple[Evidence, Why]]:
    """Records of `resource_type` whose `element` has no coding in `read` (the sets
    the criterion reads) nor in `mentions.other_codes`, but whose text or coding
    display names the concept. Entered-in-error, refuted and cancelled ones are
    left out. Each comes back as decisive evidence with its typed reason."""
    known = ctx.codes(mentions.other_codes) if mentions.other_codes else None
    found: list[tuple[Evidence, Why]] = []
    for raw in ctx.record.all_of(resource_type):
        named = named_by_text(raw.get(element), mentions, read, known)
        if named is not None and not _raw_excluded(raw) and (keep is None or keep(raw)):
            found.append((mention_evidence(ctx, raw, named), named[2]))
    return found


def unrecognised_results(ctx: "Context", since: dt.date) -> list[tuple[tuple[str, ...], list[tuple[int, dict[str, Any]]]]]:
    """The results of named_unrecognised_results dated on or after `since` (by the
    calendar day they were recorded in), grouped by their code's texts (concept_texts):
    each group's results newest first with their rank (raw_observation_rank), the groups
    by their newest result, newest first. Grouped because a criterion asks whether a
    *name* is its concept's, and a chart repeats a few test names many times."""
    key = ("unrecognised-results", since)
    groups = ctx.memo.get(key)
    if groups is None:
        floor = since.isoformat()
        by_texts: dict[tuple[str, ...], list[tuple[int, dict[str, Any]]]] = {}
        for raw in named_unrecognised_results(ctx):
            when = raw.get("effectiveDateTime")
            # ISO dates sort as text: a dateTime on an earlier day is less than the floor's day; so is a
            # partial date ("2026-05"), which cannot be shown as newer than a dated result anyway.
            if type(when) is str and when < floor:  # noqa: E721
                continue
            rank = raw_observation_rank(raw)
            if rank is not None:
                by_texts.setdefault(concept_texts(raw.get("code")), []).append((rank, raw))
        for results in by_texts.values():
            results.sort(key=itemgetter(0), reverse=True)
        groups = sorted(by_texts.items(), key=lambda group: group[1][0][0], reverse=True)
        ctx.memo[key] = groups
    return groups


def named_unrecognised_results(ctx: "Context") -> list[dict[str, Any]]:
    """Resulted (valid status) Observations coded in no code set the trial knows (a local
    lab code alone, a standard code the sets lack, or text only) whose text or a coding
    display a criterion may be looking for (ctx.result_names; None: all of them). Found
    once per evaluation, in one pass. Usually empty: the FHIR searches ask for the
    trial's codes; an EHR that ignores the filter sends other tests, and their names are
    read here, each distinct text once (a chart repeats a few test names many times)."""
    found = ctx.memo.get("named-unrecognised-results")
    if found is not None:
        return found
    names = ctx.result_names
    candidates = ctx.record.not_coded_in("Observation", ctx.library.everything())
    if names is None:
        found = candidates
    else:
        # This runs on every result no set recognises: every result of an EHR that ignores the
        # search's code filter. So the chart's distinct texts are gathered first, in comprehensions,
        # and read once each; only when one of them is named are the results that carry it found.
        concepts = [c for c in (raw.get("code") for raw in candidates) if type(c) is dict]  # noqa: E721
        texts = {c.get("text") for c in concepts}
        texts.update(coding.get("display") for c in concepts if type(codings := c.get("coding")) is list  # noqa: E721
                     for coding in codings if type(coding) is dict)  # noqa: E721
        named = {text for text in texts if type(text) is str and names(text)}  # noqa: E721
        found = [raw for raw in candidates if named and _carries(raw.get("code"), named)]
    found = [raw for raw in found if raw.get("status") in VALID_OBSERVATION_STATUSES]
    ctx.memo["named-unrecognised-results"] = found
    return found


def _carries(concept: Any, texts: set[str]) -> bool:
    """Whether a raw CodeableConcept's text or a coding display is one of `texts`."""
    if type(concept) is not dict:  # noqa: E721
        return False
    if concept.get("text") in texts:
        return True
    codings = concept.get("coding")
    return type(codings) is list and any(  # noqa: E721
        type(coding) is dict and coding.get("display") in texts for coding in codings)  # noqa: E721


def newest_unrecognised_result(ctx: "Context", mentions: TextMentions, since: dt.date, floor: int | None,
                               keep: Callable[[FhirDate], bool]) -> tuple[Evidence, Why, str] | None:
    """The newest of unrecognised_results(ctx, since) whose texts `mentions` names,
    ranked above `floor` (an instant_rank; None: any) and whose date `keep` accepts:
    its evidence (decisive, dated), the typed reason and its day; None when none is."""
    newest: tuple[int, dict[str, Any], FhirDate] | None = None
    for texts, results in unrecognised_results(ctx, since):
        if (floor is not None and results[0][0] <= floor) or (newest is not None and results[0][0] <= newest[0]):
            break  # groups come newest first: the rest hold nothing newer
        if not names_any(mentions, texts):
            continue
        for rank, raw in results:
            if (floor is not None and rank <= floor) or (newest is not None and rank <= newest[0]):
                break
            date = observation_date_of_raw(raw)
            if date is not None and keep(date):
                newest = (rank, raw, date)
                break
    if newest is None:
        return None
    _, raw, date = newest
    named = named_by_text(raw.get("code"), mentions, None, None)  # a text names it: never None here
    assert named is not None
    evidence = mention_evidence(ctx, raw, named)
    evidence.date = date.text
    return evidence, named[2], date.day_text


def any_of_names(mentions: Iterable[TextMentions]) -> Callable[[str], bool] | None:
    """A test of one text: may one of `mentions` name it? Their patterns in one
    expression, except patterns not applied (a pre-filter: each mentions still reads
    for itself); answers remembered by text (a bounded memo), since the same test
    names come on every chart. None when there are no mentions."""
    pattern = _compiled(tuple(p for m in mentions for p in m.patterns))
    if pattern is None:
        return None
    search = pattern.search

    @functools.lru_cache(maxsize=8192)
    def names(text: str) -> bool:
        return search(text) is not None

    return names


def names_any(mentions: TextMentions, texts: tuple[str, ...]) -> bool:
    """Whether one of `texts` names what `mentions` names (remembered by the texts
    together, and by each text)."""
    memo = _names_memo(mentions)
    answer = memo.get(texts)  # type: ignore[call-overload] - the memo holds tuples of texts too
    if answer is None:
        answer = any(_names(mentions, text, memo) for text in texts)
        memo[texts] = answer  # type: ignore[index]
    return answer


def mention_reason(mention: tuple[Evidence, Why], what: str) -> str:
    evidence, why = mention
    return f"'{evidence.display}' is recorded with {recorded_with(why)}: it may be {what}"


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
        read = read_hit(ctx, hit, codes)
        if isinstance(read, Reading):
            readings.append(read)
        else:
            ignored.append(read)
    return readings, ignored


class RankingMismatch(Exception):
    """A validated result's date differs from the date it was ranked by (not
    expected: both come from the same value through the same FHIR type)."""


def read_hit(ctx: Context, hit: Any, codes: CodeSet, ranked_at: int | None = None) -> Reading | Evidence:
    """One result: a Reading, or the ignored Evidence saying why it does not count.
    `ranked_at`: the rank it was read in, which its validated date must agree with."""
    try:
        resource = ctx.record.model(hit.raw)
    except InvalidResource as exc:
        return invalid_evidence(ctx, hit.raw, exc)
    source = resource.component[hit.component] if hit.component is not None else resource
    coding = matching_coding(source.code, codes)
    date = observation_date(resource)
    if ranked_at is not None and observation_rank(resource) != ranked_at:
        raise RankingMismatch(ctx.record.reference(hit.raw))
    ev = Evidence(reference=ctx.record.reference(hit.raw), code=coding_text(coding) if coding else None,
                  display=concept_label(source.code, coding), status=resource.status,
                  date=date.text if date else None)
    if resource.status not in VALID_OBSERVATION_STATUSES:
        ev.role, ev.note = Role.IGNORED, f"status '{resource.status}' is not a valid result; ignored"
        return ev
    if date is not None and date.first_day > ctx.as_of:
        ev.role, ev.note = Role.IGNORED, "dated after the evaluation date; ignored"
        return ev
    return Reading(resource, source, date, ev)


# -- long result histories ----------------------------------------------------

# effective[x] of an Observation as observation_date() reads it, each element with the
# FHIR type the validated model gives it (built on first use, from the model itself).
_date_types: dict[str, Any] = {}
# The usual shape of a lab result's time: a full dateTime with seconds and an offset, as
# FHIR's dateTime pattern allows them (no leap second). Such a string denotes one instant,
# which datetime.fromisoformat reads exactly (and 30x faster than the FHIR type; checked
# against it in tests/test_engine_history.py); every other shape goes through the FHIR type.
_INSTANT = re.compile(r"\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])T(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d"
                      r"(?:\.\d{1,9})?(?:Z|[+-](?:(?:0\d|1[0-3]):[0-5]\d|14:00))")


def _date_type(element: str) -> Any:
    adapter = _date_types.get(element)
    if adapter is None:
        from pydantic import TypeAdapter

        from ..record import model_class

        if element in ("start", "end"):
            from fhir.resources.R4B.period import Period as owner
        else:
            owner = model_class("Observation")
        adapter = _date_types[element] = TypeAdapter(owner.model_fields[element].annotation)
    return adapter


_UNREAD = object()
# Ranks by the element's text, one memo per element (a panel's results share their time; charts
# are reopened). read_latest_results reads effectiveDateTime's memo directly: one look-up a result.
_RANKS: dict[str, dict[str, int | None]] = {e: {} for e in ("effectiveDateTime", "effectiveInstant", "start", "end")}
_DATETIME_RANKS = _RANKS["effectiveDateTime"]
RANK_MEMO_SIZE = 65536
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_MICROSECOND = dt.timedelta(microseconds=1)


def instant_rank(instant: dt.datetime) -> int:
    """An aware instant as whole microseconds since 1970 UTC: the same order and
    equality as the instant itself (datetime's own resolution), but compared
    as an int. Aware datetimes with different offsets compare through
    utcoffset() calls: sorting a 17-result history took 12 µs, as ints 0.5."""
    return (instant - _EPOCH) // _MICROSECOND


@remembered_by_identity
def observation_rank(obs: Any) -> int | None:
    """instant_rank of a validated Observation's date (None when it has none)."""
    date = observation_date(obs)
    return instant_rank(date.sort_key()) if date is not None else None


def _raw_effective(raw: dict[str, Any]) -> tuple[str | None, str]:
    """(the text, the element) of the effective[x] observation_date() reads: dateTime,
    then instant, then the period's start or end; (None, ...) when it is not a string."""
    value, element = raw.get("effectiveDateTime"), "effectiveDateTime"
    if value is None:
        value, element = raw.get("effectiveInstant"), "effectiveInstant"
        if value is None:
            period = raw.get("effectivePeriod")
            if not isinstance(period, dict):
                return None, element
            value, element = (period.get("start"), "start") if period.get("start") else (period.get("end"), "end")
    return (value if isinstance(value, str) else None), element


def raw_observation_rank(raw: dict[str, Any]) -> int | None:
    """instant_rank(observation_date(model).sort_key()) of the validated resource,
    read from the JSON alone: the same element (dateTime, then instant, then the
    period's start or end) through the same FHIR type. None when there is no date
    or it is not valid (such a result is read in full, and found undated or invalid)."""
    value, element = _raw_effective(raw)
    if value is None:
        return None
    memo = _RANKS[element]
    rank = memo.get(value, _UNREAD)
    if rank is _UNREAD:
        time = _read_time(element, value)
        rank = instant_rank(time) if time is not None else None
        if len(memo) >= RANK_MEMO_SIZE:
            memo.clear()
        memo[value] = rank
    return rank


def observation_date_of_raw(raw: dict[str, Any]) -> FhirDate | None:
    """observation_date() of an Observation not validated as a whole: the same
    element, through the same FHIR type (None when absent or not valid)."""
    value, element = _raw_effective(raw)
    if value is None:
        return None
    try:
        return parse_fhir_date(_date_type(element).validate_python(value))
    except ValueError:
        return None


def _read_time(element: str, value: str) -> dt.datetime | None:
    if _INSTANT.fullmatch(value):
        try:
            return dt.datetime.fromisoformat(value)
        except ValueError:  # 30 February: not a valid FHIR date either
            return None
    try:
        date = parse_fhir_date(_date_type(element).validate_python(value))
    except ValueError:  # pydantic's ValidationError is a ValueError
        return None
    return date.sort_key() if date is not None else None


def sorted_newest_first(resources: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Observations as `_sort=-date` returns them: newest first, undated last (a
    reversed sort stays stable: record order among equals)."""
    def key(raw: dict[str, Any]) -> tuple[bool, int]:
        rank = raw_observation_rank(raw)
        return (rank is not None, rank or 0)

    return sorted(resources, key=key, reverse=True)


def newest_first(resources: Iterable[dict[str, Any]]) -> bool:
    """Whether Observations (as a server returned them) come newest first, as
    `_sort=-date` asks: undated ones aside, no result is newer than the one before."""
    previous = None
    for raw in resources:
        rank = raw_observation_rank(raw) if isinstance(raw, dict) else None
        if rank is None:
            continue
        if previous is not None and rank > previous:
            return False
        previous = rank
    return True


@dataclass(slots=True)
class LatestResults:
    """What read_latest_results read: every reading and ignored result it looked
    at, and how many older results it left unread."""

    readings: list[Reading]
    ignored: list[Evidence]
    not_read: int = 0


def read_latest_results(ctx: Context, codes: CodeSet, usable: Callable[[Reading], bool]) -> LatestResults:
    """Observations coded in `codes`, read newest first and only as far as a
    latest-result rule needs: every result without a readable date, and the dated
    ones from the newest down to the latest usable one (valid FHIR, valid status,
    not in the future, and `usable`) with all results at that same time. Older
    results cannot change which result is latest, so they are counted, not
    validated nor listed (the evidence is what decided, and what was skipped on the
    way and why): a chart sending years of daily blood counts costs a few
    validations, not thousands. Results are ranked by
    the time their JSON gives (raw_observation_rank); should a validated date
    ever differ from it, everything is read, as read_results does."""
    hits = ctx.record.find("Observation", codes)
    undated, dated = [], []
    ranks = _DATETIME_RANKS
    for hit in hits:
        try:  # the usual case, a dateTime ranked before: what raw_observation_rank would return
            rank = ranks[hit[0]["effectiveDateTime"]]  # hit[0] is hit.raw, without the attribute call
        except (KeyError, TypeError):  # none, not ranked yet, or not a string
            rank = raw_observation_rank(hit.raw)
        if rank is None:
            undated.append(hit)
        else:
            dated.append((rank, hit))
    dated.sort(key=itemgetter(0), reverse=True)  # stable: record order among equals
    try:
        return _read_newest_first(ctx, codes, usable, undated, dated)
    except RankingMismatch:
        readings, ignored = read_results(ctx, codes)
        return LatestResults(readings, ignored)


def _read_newest_first(ctx: Context, codes: CodeSet, usable: Callable[[Reading], bool], undated: list[Any],
                       dated: list[tuple[int, Any]]) -> LatestResults:
    read: list[tuple[int, Reading | Evidence]] = [(hit.position, read_hit(ctx, hit, codes)) for hit in undated]
    latest = None  # rank of the latest usable result, once found
    not_read = 0
    for i, (rank, hit) in enumerate(dated):
        if latest is not None and rank != latest:
            not_read = len(dated) - i
            break
        result = read_hit(ctx, hit, codes, ranked_at=rank)
        read.append((hit.position, result))
        if latest is None and isinstance(result, Reading) and usable(result):
            latest = rank
    read.sort(key=itemgetter(0))  # record order, as read_results gives them
    readings = [r for _, r in read if isinstance(r, Reading)]
    ignored = [r for _, r in read if not isinstance(r, Reading)]
    return LatestResults(readings, ignored, not_read)
