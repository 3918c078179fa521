"""Performance status: the latest score on a scale (Karnofsky, ECOG) within a look-back,
against the scores that pass and those that fail.

Scales are read in the order the definition lists them: the first with a result in the
look-back decides (a protocol written in KPS reads a KPS when one is recorded, and an ECOG
only when none is). A score is recorded as a number (valueInteger, or a unitless
valueQuantity), as a coded answer (LOINC answer list) or as a finding (a SNOMED CT
"ECOG grade 1" as the Observation's code or value). What cannot be read as a score on the
scale (a string, an unknown answer, a score outside the scale) is unknown when it is the
latest: it never hands the decision to an older result or to another scale. None in the
look-back: unknown without an order (a clinician assesses and records it at the visit).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from pydantic import Field, model_validator

from ..dates import Recency, recency
from ..model import Evidence, Result, Role, Why
from .base import Context, Outcome, RuleModel, concept_label, matching_coding
from .mentions import TextMentions, mention_reason, newer_mention
from .readers import Reading, has_invalid, read_results, unreadable_value


class Bound(RuleModel):
    """Scores at least or at most a value."""

    at_least: int | None = None
    at_most: int | None = None

    @model_validator(mode="after")
    def _one(self) -> "Bound":
        if (self.at_least is None) == (self.at_most is None):
            raise ValueError("give either atLeast or atMost")
        return self

    def holds(self, score: int) -> bool:
        return score >= self.at_least if self.at_least is not None else score <= self.at_most  # type: ignore[operator]

    def text(self) -> str:
        return f"≥ {self.at_least}" if self.at_least is not None else f"≤ {self.at_most}"


class Grade(RuleModel):
    """Codes that mean one score: LOINC answers (Observation.value) or findings (the code or value)."""

    score: int
    codes: list[str] = Field(min_length=1)


class Scale(RuleModel):
    name: str = Field(min_length=1)  # as cards show it: "KPS", "ECOG"
    minimum: int
    maximum: int
    step: int = Field(default=1, gt=0)  # the scale's scores: minimum, minimum + step, ... (KPS: tens)
    codes: list[str] = []  # the assessment's codes, whose value is the score (LOINC 89243-0, 89247-1)
    grades: list[Grade] = []
    passes: Bound
    fails: Bound
    # Why a score that neither passes nor fails is unknown ("{score}" stands for it). Without it,
    # the scale may not leave a score undecided.
    otherwise: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "Scale":
        if not self.codes and not self.grades:
            raise ValueError(f"scale {self.name}: give codes, grades or both")
        scores = self.scores()
        both = [s for s in scores if self.passes.holds(s) and self.fails.holds(s)]
        if both:
            raise ValueError(f"scale {self.name}: score {both[0]} would both pass and fail")
        if self.otherwise is None and any(not self.passes.holds(s) and not self.fails.holds(s) for s in scores):
            raise ValueError(f"scale {self.name}: some scores neither pass nor fail; say why in `otherwise`")
        outside = [g.score for g in self.grades if g.score not in scores]
        if outside:
            raise ValueError(f"scale {self.name}: grade {outside[0]} is not a score of the scale")
        return self

    def scores(self) -> range:
        return range(self.minimum, self.maximum + 1, self.step)

    def all_codes(self) -> list[str]:
        return self.codes + [n for g in self.grades for n in g.codes]


class PerformanceStatusRule(RuleModel):
    type: Literal["performance-status"]
    elements_read = {"Observation": ("valueInteger",)}  # mCODE records the score as an integer
    lookback_days: int = Field(gt=0)
    scales: list[Scale] = Field(min_length=1)  # in order of preference
    mentions: TextMentions | None = None  # the scales' names, for results coded in no set of the trial

    def latest_within_days(self) -> int | None:
        return self.lookback_days  # the latest score within it decides

    def reads(self) -> dict[str, list[str]]:
        return {"Observation": [n for s in self.scales for n in s.all_codes()]}

    def result_mentions(self) -> list[TextMentions]:
        return [self.mentions] if self.mentions is not None else []

    def evaluate(self, ctx: Context) -> Outcome:
        everything: list[Evidence] = []
        stale: list[_Score] = []
        undated = 0
        for scale in self.scales:
            readings, ignored = read_results(ctx, ctx.codes(scale.all_codes()))
            everything += ignored
            scores = [_score(ctx, scale, r) for r in readings]
            everything += [s.reading.evidence for s in scores]
            scores = [s for s in scores if not s.absent]  # a known absence does not stand in the way
            dated = sorted((s for s in scores if s.reading.date is not None),
                           key=lambda s: s.reading.date.sort_key(), reverse=True)  # type: ignore[union-attr]
            undated += len(scores) - len(dated)
            for s in scores:
                if s.reading.date is None:
                    s.reading.evidence.note = "no effective date; cannot show recency"
            if not dated:
                continue
            latest = dated[0]
            stand = recency(latest.reading.date, ctx.as_of, self.lookback_days)  # type: ignore[arg-type]
            if stand is Recency.STALE:
                latest.reading.evidence.note = f"older than {self.lookback_days} days"
                stale.append(latest)
                continue
            outcome = self._decide(scale, latest, dated, stand)
            return self._unless_newer_mention(ctx, outcome, latest, everything)
        return self._unless_newer_mention(ctx, self._none_fresh(stale, undated, everything), None, everything)

    def _decide(self, scale: Scale, latest: "_Score", dated: list["_Score"], stand: Recency) -> Outcome:
        evidence = latest.reading.evidence
        evidence.role = Role.DECISIVE
        when = latest.reading.date.day_text  # type: ignore[union-attr]
        if stand is Recency.IMPRECISE:
            return Outcome(Result.UNKNOWN, f"{scale.name}: the date of the latest score "
                           f"({latest.reading.date.text}) is too imprecise to show it is within "  # type: ignore[union-attr]
                           f"{self.lookback_days} days", why=Why.IMPRECISE_DATE, newest_of=("Observation",))
        same_time = [s for s in dated if s.reading.date.sort_key() == latest.reading.date.sort_key()]  # type: ignore[union-attr]
        if len({s.score for s in same_time}) > 1:
            for s in same_time:
                s.reading.evidence.role = Role.DECISIVE
            return Outcome(Result.UNKNOWN, f"{scale.name} scores recorded at the same time ({when}) disagree",
                           why=Why.CONFLICTING_RESULTS, newest_of=("Observation",))
        for s in dated[1:]:
            s.reading.evidence.note = s.reading.evidence.note or "older result; not used"
        if latest.score is None:
            return Outcome(Result.UNKNOWN, f"{scale.name}: the latest result ({when}) was recorded as "
                           f"'{latest.reading.evidence.value}', not a score on the scale: it cannot be read, and "
                           "older results do not decide", why=Why.UNINTERPRETABLE, newest_of=("Observation",))
        shown = f"{scale.name} {latest.score} ({when})"
        if scale.passes.holds(latest.score):
            return Outcome(Result.PASS, f"{shown} is {scale.passes.text()}", newest_of=("Observation",))
        if scale.fails.holds(latest.score):
            return Outcome(Result.FAIL, f"{shown} is {scale.fails.text()}", newest_of=("Observation",))
        reason = (scale.otherwise or "").replace("{score}", str(latest.score))
        return Outcome(Result.UNKNOWN, f"{shown}: {reason}", why=Why.EQUIVOCAL, newest_of=("Observation",))

    def _none_fresh(self, stale: list["_Score"], undated: int, everything: list[Evidence]) -> Outcome:
        names = " or ".join(s.name for s in self.scales)
        if stale:
            newest = max(stale, key=lambda s: s.reading.date.sort_key())  # type: ignore[union-attr]
            newest.reading.evidence.role = Role.DECISIVE
            return Outcome(Result.UNKNOWN, f"latest performance status ({newest.scale.name}, "
                           f"{newest.reading.date.day_text}) is older than {self.lookback_days} days",  # type: ignore[union-attr]
                           why=Why.STALE, newest_of=("Observation",))
        if undated:
            return Outcome(Result.UNKNOWN, f"{names} recorded without a date: recency cannot be shown", why=Why.NO_DATE)
        if has_invalid(everything):
            return Outcome(Result.UNKNOWN, f"{names} results found are not valid FHIR", why=Why.INVALID_RESOURCE)
        # No order: performance status is assessed and recorded by a clinician, not ordered.
        return Outcome(Result.UNKNOWN, f"no performance status ({names}) recorded in the last {self.lookback_days} "
                       "days", why=Why.NO_DATA, absence_of=("Observation",))

    def _unless_newer_mention(self, ctx: Context, outcome: Outcome, latest: "_Score | None",
                              everything: list[Evidence]) -> Outcome:
        """The outcome with its evidence, unless a result coded in no set of the trial whose
        text names a scale is newer than the deciding score: then unknown, as it may be one."""
        decided_at = latest.reading.date if latest is not None else None
        mention = newer_mention(ctx, self.mentions, decided_at, self.lookback_days)
        decisive = [e for e in everything if e.role is Role.DECISIVE]
        rest = [e for e in everything if e.role is not Role.DECISIVE]
        if mention is None:
            outcome.evidence = decisive + rest
            return outcome
        evidence, why, _ = mention
        for e in decisive:
            e.role = Role.SUPPORTING
        return Outcome(Result.UNKNOWN, mention_reason((evidence, why), "a newer performance status"),
                       [evidence] + decisive + rest, why, newest_of=("Observation",))


@dataclass(slots=True)
class _Score:
    scale: Scale
    reading: Reading
    score: int | None  # None: recorded, but not readable as a score on the scale
    absent: bool = False  # no value, with a dataAbsentReason: not a result at all


def _score(ctx: Context, scale: Scale, reading: Reading) -> _Score:
    """The score a result records, with its evidence filled in (value as recorded)."""
    source, evidence = reading.source, reading.evidence
    evidence.role = Role.SUPPORTING
    grade = _grade(ctx, scale, source.code)  # a finding as the code: "ECOG performance status - grade 1"
    if grade is not None:
        evidence.value = str(grade)
        return _Score(scale, reading, grade)
    number = _number(source)
    if number is not None:
        evidence.value = format(number, "f")
        if number == number.to_integral_value() and int(number) in scale.scores():
            return _Score(scale, reading, int(number))
        evidence.note = f"not a {scale.name} score; cannot be read"
        return _Score(scale, reading, None)
    grade = _grade(ctx, scale, source.valueCodeableConcept)
    if grade is not None:
        evidence.value = str(grade)
        return _Score(scale, reading, grade)
    sent = unreadable_value(source)
    if sent is None:  # a dataAbsentReason, and no value
        evidence.role = Role.IGNORED
        evidence.note = f"no value (data absent: {concept_label(source.dataAbsentReason) or 'no reason given'}); ignored"
        return _Score(scale, reading, None, absent=True)
    evidence.value = sent
    evidence.note = "not a score on the scale; cannot be read"
    return _Score(scale, reading, None)


def _grade(ctx: Context, scale: Scale, concept: Any) -> int | None:
    for grade in scale.grades:
        if matching_coding(concept, ctx.codes(grade.codes)) is not None:
            return grade.score
    return None


def _number(source: Any) -> Decimal | None:
    """A score sent as a number: valueInteger, or a valueQuantity without a unit or with a
    unitless UCUM code ("{score}", "1"). A quantity with a unit is not a score."""
    if source.valueInteger is not None:
        return Decimal(source.valueInteger)
    q = source.valueQuantity
    if q is None or q.value is None or q.comparator is not None:
        return None
    unit = q.code or q.unit
    if unit is None or unit in ("1", "{score}", "{Score}"):
        return Decimal(q.value)
    return None
