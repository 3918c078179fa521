"""Pregnancy and breastfeeding, from diagnoses, pregnancy status and hCG tests."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from pydantic import Field

from ..dates import FhirDate, Recency, recency
from ..model import Evidence, Measured, Result, Role, Why
from ..quantities import NotConvertible
from .base import (CONFIRMED, NEGATIVE, POSITIVE, UNCONFIRMED, Context, Outcome, RuleModel, concept_label,
                   condition_date, matching_coding, qualitative_word)
from .mentions import TextMentions, mention_reason, unread_mentions
from .readers import read_results
from .conditions import decided, find_conditions
from .labs import classify

INDETERMINATE, UNREADABLE = "indeterminate", "unreadable"  # beside base's POSITIVE and NEGATIVE


class CodedTest(RuleModel):
    """An observation whose coded value says positive or negative."""

    label: str
    codes: list[str] = Field(min_length=1)
    positive_value_codes: list[str] = Field(min_length=1)
    negative_value_codes: list[str] = []


class QuantitativeTest(RuleModel):
    """A numeric test read against two cut-offs; between them it decides nothing."""

    label: str
    codes: list[str] = Field(min_length=1)
    unit: str
    negative_below: Decimal
    positive_at_or_above: Decimal


class WhenNoData(RuleModel):
    max_age: int | None = None
    result: Literal["unknown", "review"]


@dataclass(slots=True)
class _Test:
    outcome: str
    date: FhirDate
    evidence: Evidence


class PregnancyRule(RuleModel):
    type: Literal["pregnancy"]
    lookback_days: int = Field(gt=0)
    pregnancy_condition_codes: list[str] = Field(min_length=1)
    breastfeeding_condition_codes: list[str] = []
    coded_tests: list[CodedTest] = []
    quantitative_tests: list[QuantitativeTest] = []
    breastfeeding_tests: list[CodedTest] = []
    when_no_data: list[WhenNoData] = Field(min_length=1)
    order: str | None = None
    # How long a diagnosis can show a current state: a pregnancy Condition dated more than
    # 42 weeks back is a past pregnancy (a term pregnancy lasts 40), a lactation Condition
    # older than 12 months a past one. Either without a date cannot show it is current.
    pregnancy_condition_days: int = Field(default=294, gt=0)
    breastfeeding_condition_days: int = Field(default=365, gt=0)
    mentions: TextMentions | None = None  # pregnancy or lactation named by text, for Conditions no set holds

    def reads(self) -> dict[str, list[str]]:
        tests = [n for t in self.coded_tests + self.quantitative_tests + self.breastfeeding_tests for n in t.codes]
        return {"Condition": self.pregnancy_condition_codes + self.breastfeeding_condition_codes,
                "Observation": tests}

    def units_used(self) -> list[str]:
        return [t.unit for t in self.quantitative_tests]

    def default_order(self) -> str | None:
        return self.order

    def evaluate(self, ctx: Context) -> Outcome:
        pregnant, ignored = find_conditions(ctx, self.pregnancy_condition_codes)
        feeding, more_ignored = find_conditions(ctx, self.breastfeeding_condition_codes,
                                                unless=ctx.codes(self.pregnancy_condition_codes))
        ignored += more_ignored
        current, undated = [], []
        for found, days in ((pregnant, self.pregnancy_condition_days), (feeding, self.breastfeeding_condition_days)):
            for f in found:
                if not f.active:
                    f.evidence.role, f.evidence.note = Role.IGNORED, f"{f.clinical}; not current"
                    continue
                date = condition_date(f.model)
                stand = recency(date, ctx.as_of, days) if date is not None else None
                if stand is Recency.FRESH:
                    current.append(f)
                elif stand is Recency.STALE:
                    f.evidence.role = Role.IGNORED
                    f.evidence.note = f"dated more than {_span(days)} ago: a past state, not current"
                else:  # no date, or one too imprecise to place within the span
                    f.evidence.note = f"{'no date' if date is None else 'date too imprecise'}: cannot show it is " \
                                      f"within the last {_span(days)}"
                    undated.append(f)
        tests, feeding_tests, stale, test_ignored = self._tests(ctx)
        everything = [f.evidence for f in pregnant + feeding] + [t.evidence for t in tests + feeding_tests] + \
            stale + ignored + test_ignored
        confirmed = [f for f in current if f.verification == CONFIRMED]
        if confirmed:
            return decided(Result.FAIL, f"{confirmed[0].evidence.display or 'pregnancy or breastfeeding'} recorded",
                           [f.evidence for f in confirmed], everything)
        positive_feeding = [t for t in feeding_tests if t.outcome == POSITIVE]
        if positive_feeding:
            return decided(Result.FAIL, f"breastfeeding ({positive_feeding[0].date.day_text})",
                           [t.evidence for t in positive_feeding], everything)
        latest = _latest(tests)
        outcomes = {t.outcome for t in latest}
        if UNREADABLE in outcomes and POSITIVE not in outcomes:  # never hand over to an older or same-day negative
            unread = next(t for t in latest if t.outcome == UNREADABLE)
            return decided(Result.UNKNOWN, f"{unread.evidence.display or 'pregnancy test'} of "
                           f"{unread.date.day_text} was sent as '{unread.evidence.value}': it cannot be read",
                           [t.evidence for t in latest if t.outcome == UNREADABLE], everything, Why.UNINTERPRETABLE)
        if POSITIVE in outcomes and NEGATIVE in outcomes:
            return decided(Result.UNKNOWN, "pregnancy tests on the same day disagree", [t.evidence for t in latest],
                           everything, Why.CONFLICTING_RESULTS)
        if outcomes == {POSITIVE}:
            return decided(Result.FAIL, f"positive {latest[0].evidence.display or 'pregnancy test'} "
                           f"({latest[0].date.day_text})", [t.evidence for t in latest], everything)
        if undated:
            return decided(Result.UNKNOWN, f"{undated[0].evidence.display or 'pregnancy or lactation'} recorded "
                           f"without a usable date: it may be current", [f.evidence for f in undated], everything,
                           Why.NO_DATE if condition_date(undated[0].model) is None else Why.IMPRECISE_DATE)
        unconfirmed = [f for f in current if f.verification == UNCONFIRMED]
        if unconfirmed:
            return decided(Result.UNKNOWN, f"{unconfirmed[0].evidence.display or 'pregnancy'} recorded but not "
                           "confirmed", [f.evidence for f in unconfirmed], everything, Why.DIAGNOSIS_UNCONFIRMED)
        named = self._named(ctx)
        if NEGATIVE in outcomes and named:
            return decided(Result.REVIEW, mention_reason(named[0], "a current pregnancy or lactation") +
                           f"; the latest test ({latest[0].date.day_text}) is negative", [e for e, _ in named],
                           everything, named[0][1])
        if NEGATIVE in outcomes:
            return decided(Result.PASS, f"negative {latest[0].evidence.display or 'pregnancy test'} "
                           f"({latest[0].date.day_text}); no breastfeeding recorded", [t.evidence for t in latest],
                           everything, absence_of=("Condition",))  # no pregnancy diagnosis among those received
        if outcomes == {INDETERMINATE}:
            why, what = Why.EQUIVOCAL, f"indeterminate pregnancy test ({latest[0].date.day_text})"
        elif stale:
            why, what = Why.STALE, f"no pregnancy test within {self.lookback_days} days"
        else:
            why, what = Why.NO_DATA, f"no pregnancy test within {self.lookback_days} days"
        age = ctx.age  # never counted past death
        for rule in self.when_no_data:
            if rule.max_age is None or age is None or age.youngest <= rule.max_age:
                if rule.result == "review":
                    return decided(Result.REVIEW, f"{what}; pregnancy unlikely at this age — confirm", [],
                                   everything)
                outcome = decided(Result.UNKNOWN, what, [], everything, why)
                outcome.orderable = True
                return outcome
        return decided(Result.REVIEW, what, [], everything)  # pragma: no cover - definitions end with a catch-all

    def _named(self, ctx: Context) -> list:
        """Active Conditions whose code no pregnancy or lactation set holds but whose text
        names one: they may be current, so a negative test alone does not pass."""
        if self.mentions is None:
            return []
        read = ctx.codes(self.pregnancy_condition_codes + self.breastfeeding_condition_codes)
        return unread_mentions(ctx, "Condition", read, self.mentions, keep=lambda raw: not _raw_inactive(raw))

    def _tests(self, ctx: Context):
        tests, feeding, stale, ignored = [], [], [], []
        readers = [(t, self._read_coded, tests) for t in self.coded_tests] + \
                  [(t, self._read_quantity, tests) for t in self.quantitative_tests] + \
                  [(t, self._read_coded, feeding) for t in self.breastfeeding_tests]
        for test, read, into in readers:
            readings, more_ignored = read_results(ctx, ctx.codes(test.codes), components=False)
            ignored += more_ignored
            for r in readings:
                ev = r.evidence
                ev.display = test.label
                if r.date is None:
                    ev.role, ev.note = Role.IGNORED, "no date; cannot show it is current"
                    ignored.append(ev)
                    continue
                if recency(r.date, ctx.as_of, self.lookback_days) is not Recency.FRESH:
                    ev.role, ev.note = Role.IGNORED, f"not within {self.lookback_days} days; ignored"
                    stale.append(ev)
                    continue
                outcome = read(ctx, test, r.resource, ev)
                if outcome is None:
                    ev.role = Role.IGNORED
                    ignored.append(ev)
                else:
                    into.append(_Test(outcome, r.date, ev))
        return tests, feeding, stale, ignored

    @staticmethod
    def _read_coded(ctx: Context, test: CodedTest, obs, ev: Evidence) -> str | None:
        if obs.valueBoolean is not None:  # e.g. breastfeeding status sent as true / false
            ev.value = "yes" if obs.valueBoolean else "no"
            return POSITIVE if obs.valueBoolean else NEGATIVE
        if obs.valueString is not None:  # an HL7v2-fed result: read by exact words only
            ev.value = obs.valueString
            word = qualitative_word(obs.valueString)
            if word is None:
                ev.note = "text that is not an exact positive or negative word; cannot be read"
                return UNREADABLE
            return word
        value = obs.valueCodeableConcept
        if value is None and obs.valueQuantity is None and obs.dataAbsentReason is None:
            ev.value, ev.note = "no value", "resulted without a value or a reason for its absence"
            return UNREADABLE
        for names, outcome in ((test.positive_value_codes, POSITIVE), (test.negative_value_codes, NEGATIVE)):
            if names:
                coding = matching_coding(value, ctx.codes(names))
                if coding is not None:
                    ev.value = coding.display or coding.code
                    return outcome
        ev.value = concept_label(value) if value is not None else None
        ev.note = "value neither positive nor negative"
        return INDETERMINATE if value is not None else None

    @staticmethod
    def _read_quantity(ctx: Context, test: QuantitativeTest, obs, ev: Evidence) -> str | None:
        q = obs.valueQuantity
        if q is None or q.value is None:
            ev.note = "no numeric value; ignored"
            return None
        ev.value, ev.unit, ev.comparator = format(q.value, "f"), q.unit or q.code, q.comparator
        unit = ctx.units.ucum_of(q.code, q.unit, q.system)
        try:
            value = ctx.units.convert(Decimal(q.value), unit or "", test.unit)
        except NotConvertible:
            ev.note = f"unit '{q.unit or q.code}' cannot be converted to {test.unit}"
            return INDETERMINATE
        ev.converted = Measured(value, test.unit)
        if classify(value, q.comparator, "<", test.negative_below):
            return NEGATIVE
        if classify(value, q.comparator, ">=", test.positive_at_or_above):
            return POSITIVE
        ev.note = f"between {test.negative_below} and {test.positive_at_or_above} {test.unit}: indeterminate"
        return INDETERMINATE


def _raw_inactive(raw) -> bool:
    status = raw.get("clinicalStatus")
    codings = status.get("coding") if isinstance(status, dict) else None
    return isinstance(codings, list) and any(isinstance(c, dict) and c.get("code") in ("inactive", "resolved",
                                                                                        "remission")
                                             for c in codings)


def _span(days: int) -> str:
    return f"{days // 7} weeks" if days % 7 == 0 and days < 365 else \
        ("12 months" if days == 365 else f"{days} days")


def _latest(tests: list[_Test]) -> list[_Test]:
    if not tests:
        return []
    day = max(t.date.last_day for t in tests)
    return [t for t in tests if t.date.last_day == day]
