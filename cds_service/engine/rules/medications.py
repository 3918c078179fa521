"""Exposure to named medications: a current order or statement, or a recent administration,
of an agent that fails the criterion or needs a clinician's review; agents the protocol
allows never do.

An EHR names the agent in medicationCodeableConcept, or in a Medication the record holds
(contained "#med1", "Medication/123", a urn:uuid fullUrl) that medicationReference names:
its code, or the codes of its ingredients. A reference the record cannot resolve is
unknown, never silent. A record whose codes no set of the criterion holds but whose text
names an agent (a local code with "capecitabine 500 mg") is for review (`mentions`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, model_validator

from ..codes import CodeSet, coding_key
from ..dates import FhirDate, Recency, parse_fhir_date, recency
from ..model import Evidence, Result, Role, Why
from ..validation import InvalidResource
from .base import Context, Outcome, RuleModel
from .conditions import decided
from .mentions import TextMentions, concept_texts, named_by_text, recorded_with
from .readers import invalid_evidence

REQUEST, STATEMENT, ADMINISTRATION = "MedicationRequest", "MedicationStatement", "MedicationAdministration"
MEDICATION_TYPES = (REQUEST, STATEMENT, ADMINISTRATION)

# What each status says of exposure now. A request on hold is current: a hold pauses a course
# (a toxicity, a procedure) that is expected to resume, so the patient is still on the agent.
# A draft is not yet an order. "unknown" cannot be placed either way: a clinician looks.
_CURRENT = {REQUEST: {"active", "on-hold"}, STATEMENT: {"active", "intended", "on-hold"}}
_NOT_CURRENT = {REQUEST: {"completed", "stopped", "cancelled", "draft"},
                STATEMENT: {"completed", "stopped", "not-taken"}}
# An administration in these statuses put some of the agent into the patient (a stopped or held
# infusion too); "not-done" did not.
_GIVEN = {"completed", "in-progress", "stopped", "on-hold"}
# Request intents that are no decision to treat: a suggestion (CDS, a proposed plan) or an option.
_NOT_DECIDED = {"proposal", "option"}

FAIL, REVIEW, ALLOWED = "fail", "review", "allowed"


@dataclass(slots=True)
class _Sets:
    fail: CodeSet | None
    review: CodeSet | None
    allowed: CodeSet | None
    known: CodeSet | None  # mentions.otherCodes: recognised, not counted

    def listed(self, key: tuple[str, str]) -> str | None:
        """The strictest list a coding is in (an agent listed both as failing or for review and
        as allowed is not allowed: the stricter reading wins)."""
        for name, codes in ((FAIL, self.fail), (REVIEW, self.review), (ALLOWED, self.allowed)):
            if codes is not None and codes.contains(key):
                return name
        return None


class MedicationExposureRule(RuleModel):
    """fail / review: an active or on-hold MedicationRequest (intent not a proposal), an active,
    intended or on-hold MedicationStatement, or a MedicationAdministration given within
    `administeredWithinDays` (inclusive), of an agent in `failCodes` / `reviewCodes`; agents in
    `allowedCodes` pass; unknown: an administration of a listed agent without a (precise enough)
    date, a medicationReference the record cannot resolve, a record that is not valid FHIR;
    review: a record named by `mentions` only; pass: none (absence_of the medication types)."""

    type: Literal["medication-exposure"]
    code_elements = {t: "medicationCodeableConcept" for t in MEDICATION_TYPES}
    elements_read = {REQUEST: ("intent", "medicationCodeableConcept", "medicationReference", "authoredOn"),
                     STATEMENT: ("medicationCodeableConcept", "medicationReference", "effectiveDateTime",
                                 "effectivePeriod"),
                     ADMINISTRATION: ("medicationCodeableConcept", "medicationReference", "effectiveDateTime",
                                      "effectivePeriod")}
    label: str = Field(min_length=1)  # "systemic chemotherapy with CNS penetration"
    fail_codes: list[str] = []
    review_codes: list[str] = []
    allowed_codes: list[str] = []  # never fail nor review: "may continue on IV trastuzumab, ..."
    administered_within_days: int = Field(gt=0)
    prompt: str | None = None  # what the reviewer confirms, after a review agent's name
    mentions: TextMentions | None = None  # the agents' names, for records their codes cannot match

    @model_validator(mode="after")
    def _lists(self) -> "MedicationExposureRule":
        if not self.fail_codes and not self.review_codes:
            raise ValueError("give failCodes, reviewCodes or both")
        both = set(self.allowed_codes) & set(self.fail_codes + self.review_codes)
        if both:
            raise ValueError(f"code set '{sorted(both)[0]}' is both allowed and not")
        return self

    def reads(self) -> dict[str, list[str]]:
        # Every record of each type: FHIR R4's `code` search parameter covers only
        # medicationCodeableConcept, so a search by code would miss medicationReference-coded ones.
        return {t: [] for t in MEDICATION_TYPES}

    def includes(self) -> dict[str, tuple[str, ...]]:
        return {t: (f"{t}:medication",) for t in MEDICATION_TYPES}  # the Medication medicationReference names

    def evaluate(self, ctx: Context) -> Outcome:
        sets = _Sets(ctx.codes(self.fail_codes) if self.fail_codes else None,
                     ctx.codes(self.review_codes) if self.review_codes else None,
                     ctx.codes(self.allowed_codes) if self.allowed_codes else None,
                     ctx.codes(self.mentions.other_codes) if self.mentions and self.mentions.other_codes else None)
        read = ctx.codes(self.fail_codes + self.review_codes + self.allowed_codes)
        found: dict[str, list[Evidence]] = {FAIL: [], REVIEW: [], ALLOWED: []}
        unknown: list[tuple[Evidence, Why]] = []
        named: list[tuple[Evidence, Why]] = []
        everything: list[Evidence] = []
        count = 0
        for rtype in MEDICATION_TYPES:
            for raw in ctx.record.all_of(rtype):
                count += 1
                seen = self._read(ctx, raw, sets, read)
                if seen is None:
                    continue  # another medication: not evidence
                everything.append(seen.evidence)
                if seen.unknown is not None:
                    unknown.append((seen.evidence, seen.unknown))
                elif seen.listed is not None:
                    found[seen.listed].append(seen.evidence)
                elif seen.named is not None:
                    named.append((seen.evidence, seen.named))
        return self._decide(found, unknown, named, everything, count)

    def _decide(self, found: dict[str, list[Evidence]], unknown: list[tuple[Evidence, Why]],
                named: list[tuple[Evidence, Why]], everything: list[Evidence], count: int) -> Outcome:
        if found[FAIL]:
            first = found[FAIL][0]
            return decided(Result.FAIL, f"{first.display or 'a listed agent'}: {first.note}", found[FAIL], everything)
        # An unknown outranks a review only where it may hide a fail.
        if unknown and (self.fail_codes or not found[REVIEW]):
            evidence, why = unknown[0]
            reason = f"{evidence.display}: {evidence.note}" if evidence.display else \
                f"{evidence.note}: it may be {self.label}"
            return decided(Result.UNKNOWN, reason, [e for e, _ in unknown], everything, why)
        if found[REVIEW]:
            first = found[REVIEW][0]
            reason = f"{first.display or 'a listed agent'} ({first.note})"
            return decided(Result.REVIEW, f"{reason}: {self.prompt}" if self.prompt else f"{reason}: a clinician's "
                           "call", found[REVIEW], everything)
        if named:
            evidence, why = named[0]
            return decided(Result.REVIEW, f"'{evidence.display}' ({evidence.note}) is recorded with "
                           f"{recorded_with(why)}: it may be {self.label}", [e for e, _ in named], everything, why)
        types = MEDICATION_TYPES
        if found[ALLOWED]:
            shown = ", ".join(dict.fromkeys(e.display or "an allowed agent" for e in found[ALLOWED]))
            return decided(Result.PASS, f"only allowed agents current ({shown}); no {self.label}", found[ALLOWED],
                           everything, absence_of=types)
        among = f"among {count} medication records" if count else "(no medication records)"
        return decided(Result.PASS, f"no current {self.label} {among}", [], everything, absence_of=types)

    def _read(self, ctx: Context, raw: dict[str, Any], sets: _Sets, read: CodeSet) -> "_Seen | None":
        """What one medication record says, or None when it names no agent the criterion reads
        (nor may name one)."""
        concepts, via = _concepts(ctx, raw)
        listed = why = coding = mention = None
        if concepts is not None:
            listed, coding = _listed(concepts, sets)
            if coding is None:
                if self.mentions is None:
                    return None  # another medication (most records): no evidence made for it
                mention = next((m for m in (named_by_text(ctx, c, self.mentions, read, sets.known) for c in concepts)
                                if m is not None), None)
                if mention is None:
                    return None
        evidence = Evidence(reference=ctx.record.reference(raw))
        if coding is not None:
            evidence.code = f"{coding[0]}|{coding[1]}"
            evidence.display = coding[2] or next((t for c in concepts for t in concept_texts(c)), None)
        elif mention is not None:
            evidence.display, why = mention[0], mention[2]
        try:
            model = ctx.record.model(raw)
        except InvalidResource as exc:
            bad = invalid_evidence(ctx, raw, exc)
            if concepts is None or listed == ALLOWED or raw.get("status") in ("entered-in-error", "not-done"):
                return _Seen(bad)  # cannot matter: an unknown medication, an allowed one, or not given
            if raw["resourceType"] == ADMINISTRATION and not _dated(raw):  # FHIR requires effective[x]
                evidence.role, evidence.status = Role.DECISIVE, _str(raw.get("status"))
                evidence.note = "administration without a date: cannot tell whether it was recent"
                return _Seen(evidence, named=why) if why else _Seen(evidence, unknown=Why.NO_DATE)
            bad.code, bad.display, bad.role = evidence.code, evidence.display, Role.DECISIVE
            return _Seen(bad, unknown=Why.INVALID_RESOURCE)
        evidence.status = model.status
        exposure = self._exposure(ctx, raw["resourceType"], model, evidence)
        if concepts is None:  # a reference the record cannot resolve: matters only if current or recent
            if exposure is None:
                return None
            evidence.role = Role.DECISIVE
            evidence.note = f"{evidence.note}; its medication ({via}) is not among the records received"
            return _Seen(evidence, unknown=Why.INCOMPLETE_DATA)
        if via:
            evidence.note = f"{evidence.note} (medication {via})"
        if exposure is None:
            evidence.role = Role.IGNORED
            return _Seen(evidence)
        if listed == ALLOWED:  # named as current only when it is: an allowed agent decides nothing else
            return _Seen(evidence, listed=listed) if exposure is True else _Seen(evidence)
        if isinstance(exposure, Why) and why is None:  # a listed agent that may be current: cannot tell
            evidence.role = Role.DECISIVE
            return _Seen(evidence, unknown=exposure)
        return _Seen(evidence, listed=listed, named=why)  # named by text: never decides, whatever its status

    def _exposure(self, ctx: Context, rtype: str, model: Any, evidence: Evidence) -> bool | Why | None:
        """True: a current or recent exposure (evidence.note says which); a Why: cannot be told;
        None: not an exposure (evidence.note says why it is ignored)."""
        status = model.status
        if status == "entered-in-error":
            evidence.note = "entered in error; ignored"
            return None
        if rtype == ADMINISTRATION:
            return self._administered(ctx, model, evidence)
        kind = "order" if rtype == REQUEST else "medication statement"
        if rtype == REQUEST and model.intent in _NOT_DECIDED:
            evidence.note = f"a {model.intent}, not an order; ignored"
            return None
        if rtype == REQUEST:
            evidence.date = _text(model.authoredOn)
        else:
            evidence.date = _text(model.effectiveDateTime or (model.effectivePeriod.start if model.effectivePeriod
                                                              else None))
        if status in _CURRENT[rtype]:
            evidence.note = f"{status} {kind}"
            return True
        if status in _NOT_CURRENT[rtype]:
            evidence.note = f"{status} {kind}; not current"
            return None
        evidence.note = f"{kind} with status '{status}': cannot tell whether it is current"
        return Why.UNINTERPRETABLE

    def _administered(self, ctx: Context, model: Any, evidence: Evidence) -> bool | Why | None:
        if model.status not in _GIVEN:
            evidence.note = f"administration {model.status}; ignored" if model.status == "not-done" else \
                f"administration with status '{model.status}': cannot tell whether it was given"
            return None if model.status == "not-done" else Why.UNINTERPRETABLE
        date = _administration_date(model)
        if date is None:
            evidence.note = "administration without a date: cannot tell whether it was recent"
            return Why.NO_DATE
        evidence.date = date.text
        stand = recency(date, ctx.as_of, self.administered_within_days)
        if stand is Recency.FRESH:
            evidence.note = f"administered {date.day_text}, within {self.administered_within_days} days"
            return True
        if stand is Recency.STALE:
            evidence.note = f"administered {date.day_text}, more than {self.administered_within_days} days ago"
            return None
        if stand is Recency.FUTURE:
            evidence.note = "dated after the evaluation date; ignored"
            return None
        evidence.note = f"administered {date.text}: too imprecise to tell whether within " \
                        f"{self.administered_within_days} days"
        return Why.IMPRECISE_DATE


@dataclass(slots=True)
class _Seen:
    evidence: Evidence
    listed: str | None = None  # FAIL, REVIEW or ALLOWED: current or recent, coded in that list
    named: Why | None = None  # current or recent, named by text only
    unknown: Why | None = None  # may be current or recent, or may be the agent: cannot tell


def _concepts(ctx: Context, raw: dict[str, Any]) -> tuple[list[Any] | None, str | None]:
    """(the raw CodeableConcepts naming the record's medication, the reference read): its
    medicationCodeableConcept, or the code and ingredients of the Medication its
    medicationReference names (a reference with a display only: that text). None for the
    concepts when the reference names nothing in the record."""
    concept = raw.get("medicationCodeableConcept")
    if isinstance(concept, dict):
        return [concept], None
    ref = raw.get("medicationReference")
    if not isinstance(ref, dict):
        return [], None
    target = ref.get("reference")
    if not isinstance(target, str) or not target:
        display = ref.get("display")
        return ([{"text": display}] if isinstance(display, str) else []), None
    medication = ctx.record.resolve(target, within=raw)
    if medication is None or medication.get("resourceType") != "Medication":
        return None, target
    ingredients = medication.get("ingredient")
    parts = [i.get("itemCodeableConcept") for i in ingredients if isinstance(i, dict)] \
        if isinstance(ingredients, list) else []
    return [c for c in [medication.get("code"), *parts] if isinstance(c, dict)], target


def _listed(concepts: list[Any], sets: _Sets) -> tuple[str | None, tuple[str, str, str | None] | None]:
    """The strictest list any coding of the concepts is in, and that coding (system, code, display)."""
    best: tuple[str | None, tuple[str, str, str | None] | None] = (None, None)
    order = (FAIL, REVIEW, ALLOWED)
    for concept in concepts:
        codings = concept.get("coding")
        for coding in codings if isinstance(codings, list) else ():
            if not isinstance(coding, dict):
                continue
            key = coding_key(coding.get("system"), coding.get("code"))
            listed = sets.listed(key) if key is not None else None
            if listed is not None and (best[0] is None or order.index(listed) < order.index(best[0])):
                display = coding.get("display") if isinstance(coding.get("display"), str) else None
                best = (listed, (key[0], key[1], display))
    return best


def _administration_date(model: Any) -> FhirDate | None:
    """When an administration was given: effectiveDateTime, else the period's end (the last of
    the agent given), else its start."""
    if model.effectiveDateTime is not None:
        return parse_fhir_date(model.effectiveDateTime)
    period = model.effectivePeriod
    if period is not None and (period.end or period.start):
        return parse_fhir_date(period.end or period.start)
    return None


def _dated(raw: dict[str, Any]) -> bool:
    period = raw.get("effectivePeriod")
    return raw.get("effectiveDateTime") is not None or (isinstance(period, dict) and bool(
        period.get("start") or period.get("end")))


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.isoformat() if hasattr(value, "isoformat") else str(value)
