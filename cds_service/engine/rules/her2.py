"""HER2 status of a breast tumour from IHC, ISH, an overall interpretation or a
HER2-coded diagnosis, as ASCO/CAP reads them: IHC 0 / 1+ negative, IHC 3+
positive, IHC 2+ equivocal until ISH decides.

The most recent assessment decides. Results of one calendar day form one
assessment (an ISH reported the same day resolves an IHC 2+). If the most
recent assessment holds no definitive result, the status is unknown even
when older results were definitive: the tumour may have changed, and the
clinician is told which older results exist. HER2 results do not expire.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from ..dates import FhirDate, days_before
from ..model import Evidence, Result, Role, Why
from .base import (CONFIRMED, EXCLUDED, NEGATIVE, POSITIVE, Context, Outcome, RuleModel, concept_label, condition_date,
                   matching_coding, qualitative_word)
from .mentions import TextMentions, named_unrecognised_results, newest_unrecognised_result, recorded_with
from .readers import read_results
from .conditions import decided, find_conditions

OPEN = "not definitive"  # beside base's NEGATIVE and POSITIVE, which qualitative_word answers


@dataclass(slots=True)
class Finding:
    category: str  # NEGATIVE / POSITIVE / OPEN
    label: str  # "IHC 2+", "ISH negative"
    date: FhirDate | None
    evidence: Evidence
    why: Why = Why.EQUIVOCAL  # for OPEN findings: equivocal or uninterpretable

    @property
    def day(self):
        return self.date.last_day if self.date else None


class Her2Rule(RuleModel):
    type: Literal["her2-status"]
    require: Literal["negative", "positive"] = "negative"
    ihc_codes: list[str] = Field(min_length=1)
    interpretation_codes: list[str] = []
    ish_codes: list[str] = []
    ish_numeric_codes: list[str] = []  # ratio / copy number: not interpreted on their own
    negative_condition_codes: list[str] = []
    positive_condition_codes: list[str] = []
    ihc_negative_score_codes: list[str] = Field(min_length=1)  # IHC 0, 1+
    ihc_equivocal_score_codes: list[str] = Field(min_length=1)  # IHC 2+, indeterminate
    ihc_positive_score_codes: list[str] = Field(min_length=1)  # IHC 3+
    negative_value_codes: list[str] = Field(min_length=1)  # Negative, Absent
    positive_value_codes: list[str] = Field(min_length=1)  # Positive, Present
    equivocal_value_codes: list[str] = Field(min_length=1)
    order: str | None = None  # settles an IHC 2+ (ISH)
    order_when_none: str | None = None  # settles no HER2 result at all (IHC, reflexed to ISH)
    # HER2 tests' names, for results coded in no set of the trial (a pathology system's local
    # code): one on or after the latest assessment's day, or the only one, makes the status unknown.
    mentions: TextMentions | None = None

    def result_mentions(self) -> list[TextMentions]:
        return [self.mentions] if self.mentions is not None else []

    def default_order(self) -> str | None:
        return self.order  # an IHC 2+ awaits its ISH; no result at all names order_when_none itself

    def orders(self) -> list[str]:
        return super().orders() + ([self.order_when_none] if self.order_when_none else [])

    def reads(self) -> dict[str, list[str]]:
        return {"Observation": self.ihc_codes + self.interpretation_codes + self.ish_codes + self.ish_numeric_codes,
                "Condition": self.negative_condition_codes + self.positive_condition_codes}

    def evaluate(self, ctx: Context) -> Outcome:
        findings, ignored = self._findings(ctx)
        outcome = self._decide(findings, ignored)
        if self.mentions is None or not named_unrecognised_results(ctx):
            return outcome
        # A HER2 result the engine cannot read, as new as the latest assessment (or the only one): the
        # status is not known, and an order would be premature (it may be the ISH an IHC 2+ awaits).
        # Dated only by month or year, it cannot be shown as new.
        days = [f.day for f in findings if f.day is not None]
        latest_day = max(days) if days else None
        since = days_before(latest_day, 2) if latest_day is not None else dt.date.min
        unread = newest_unrecognised_result(ctx, self.mentions, since, None,
                                            lambda date: latest_day is None or date.last_day >= latest_day)
        if unread is None:
            return outcome
        evidence, why, day = unread
        reason = f"a HER2 result ({day}) is recorded as '{evidence.display}' with {recorded_with(why)}: it cannot be read"
        if findings:
            reason += f"; the assessment of {latest_day.isoformat() if latest_day else 'no date'} does not decide"
            for e in outcome.evidence:
                if e.role is Role.DECISIVE:
                    e.role = Role.SUPPORTING
        return Outcome(Result.UNKNOWN, reason, [evidence] + outcome.evidence, why)

    def _decide(self, findings: list[Finding], ignored: list[Evidence]) -> Outcome:
        everything = [f.evidence for f in findings] + ignored
        if not findings:
            invalid = any((e.note or "").startswith("not valid FHIR") for e in ignored)
            # Nothing found: if the search for HER2 tests or diagnoses was cut short, some may exist.
            outcome = decided(Result.UNKNOWN, "HER2 result not valid FHIR" if invalid else "no HER2 result recorded",
                              [], everything, Why.INVALID_RESOURCE if invalid else Why.NO_DATA,
                              absence_of=("Observation", "Condition"))
            if not invalid and self.order_when_none:
                outcome.orderable, outcome.order = True, self.order_when_none
            return outcome
        # Latest day first; undated results count but rank as the oldest.
        days = sorted({f.day for f in findings if f.day is not None}, reverse=True)
        latest_day = days[0] if days else None
        latest = [f for f in findings if f.day == latest_day]
        older = [f for f in findings if f.day != latest_day]
        definitive = [f for f in latest if f.category != OPEN]
        categories = {f.category for f in definitive}
        when = f" on {latest_day.isoformat()}" if latest_day else " (undated)"
        if len(categories) > 1:
            return decided(Result.UNKNOWN, f"HER2 results{when} disagree: "
                           + ", ".join(f.label for f in definitive), [f.evidence for f in definitive],
                           everything, Why.CONFLICTING_RESULTS)
        older_definitive = [f for f in older if f.category != OPEN]
        if not definitive:
            older_text = (f"; older: {', '.join(_dated(f) for f in older_definitive)}"
                          if older_definitive else "")
            first = latest[0]
            if first.why is Why.EQUIVOCAL and any("2+" in f.label for f in latest):
                reason = f"HER2 IHC 2+{when} without an ISH result"
            else:
                reason = f"HER2 {first.label}{when} is not definitive"
            outcome = decided(Result.UNKNOWN, reason + older_text, [f.evidence for f in latest], everything,
                              first.why)
            outcome.orderable = first.why is Why.EQUIVOCAL
            return outcome
        category = categories.pop()
        discordant = [f for f in older_definitive if f.category != category]
        for f in discordant:
            f.evidence.note = f"older result disagrees with the deciding one ({category})"
        reason = f"HER2-{category}: " + ", ".join(f.label for f in definitive) + when
        if discordant:
            reason += "; older discordant: " + ", ".join(_dated(f) for f in discordant)
        result = Result.PASS if category == self.require else Result.FAIL
        return decided(result, reason, [f.evidence for f in definitive], everything)

    def _findings(self, ctx: Context) -> tuple[list[Finding], list[Evidence]]:
        c = ctx.codes
        findings: list[Finding] = []
        ignored: list[Evidence] = []
        sources = (
            (self.ihc_codes, "IHC", self._read_ihc),
            (self.interpretation_codes, "overall", self._read_result),
            (self.ish_codes, "ISH", self._read_result),
            (self.ish_numeric_codes, "ISH", None),
        )
        for names, label, reader in sources:
            if not names:
                continue
            readings, more_ignored = read_results(ctx, c(names))
            ignored += more_ignored
            for r in readings:
                if reader is None:
                    r.evidence.value = _value_text(r.source)
                    findings.append(Finding(OPEN, f"{label} numbers only ({r.evidence.value})", r.date, r.evidence,
                                            Why.UNINTERPRETABLE))
                else:
                    findings.append(reader(ctx, label, r.source, r.date, r.evidence))
        for names, category in ((self.negative_condition_codes, NEGATIVE),
                                (self.positive_condition_codes, POSITIVE)):
            found, more_ignored = find_conditions(ctx, names)
            ignored += more_ignored
            for f in found:
                if f.verification == CONFIRMED:
                    findings.append(Finding(category, f"diagnosis {f.evidence.display or category}",
                                            condition_date(f.model), f.evidence))
                elif f.verification != EXCLUDED:
                    f.evidence.note = "diagnosis not confirmed"
                    findings.append(Finding(OPEN, f"unconfirmed diagnosis {f.evidence.display or ''}".strip(),
                                            condition_date(f.model), f.evidence, Why.DIAGNOSIS_UNCONFIRMED))
        return findings, ignored

    def _read_ihc(self, ctx: Context, label: str, source, date, ev: Evidence) -> Finding:
        value = source.valueCodeableConcept
        for names, category, why in ((self.ihc_negative_score_codes, NEGATIVE, None),
                                     (self.ihc_positive_score_codes, POSITIVE, None),
                                     (self.ihc_equivocal_score_codes, OPEN, Why.EQUIVOCAL)):
            coding = matching_coding(value, ctx.codes(names))
            if coding is not None:
                score = ctx.codes(names).display_for((coding.system, coding.code)) or coding.display or coding.code
                ev.value = score
                return Finding(category, f"IHC {score}", date, ev, why or Why.EQUIVOCAL)
        coding = matching_coding(value, ctx.codes(self.negative_value_codes))
        if coding is not None:
            ev.value = coding.display or coding.code
            return Finding(NEGATIVE, "IHC negative", date, ev)
        if matching_coding(value, ctx.codes(self.positive_value_codes)) is not None:
            ev.value = "positive (no score)"
            ev.note = "IHC positive without a score does not decide HER2 status"
            return Finding(OPEN, "IHC positive without a score", date, ev, Why.EQUIVOCAL)
        if matching_coding(value, ctx.codes(self.equivocal_value_codes)) is not None:
            ev.value = "equivocal"
            return Finding(OPEN, "IHC equivocal", date, ev, Why.EQUIVOCAL)
        score = _ihc_score_text(source.valueString)
        if score is not None:
            ev.value = source.valueString
            return Finding(score[0], f"IHC {score[1]}", date, ev, Why.EQUIVOCAL)
        word = qualitative_word(source.valueString)
        if word == NEGATIVE:
            ev.value = source.valueString
            return Finding(NEGATIVE, "IHC negative", date, ev)
        if word == POSITIVE:
            ev.value, ev.note = source.valueString, "IHC positive without a score does not decide HER2 status"
            return Finding(OPEN, "IHC positive without a score", date, ev, Why.EQUIVOCAL)
        ev.value = _value_text(source)
        ev.note = "value cannot be interpreted"
        return Finding(OPEN, f"IHC result '{ev.value}'", date, ev, Why.UNINTERPRETABLE)

    def _read_result(self, ctx: Context, label: str, source, date, ev: Evidence) -> Finding:
        value = source.valueCodeableConcept
        for names, category, text in ((self.negative_value_codes, NEGATIVE, "negative"),
                                      (self.positive_value_codes, POSITIVE, "positive")):
            coding = matching_coding(value, ctx.codes(names))
            if coding is not None:
                ev.value = coding.display or coding.code
                return Finding(category, f"{label} {text}", date, ev)
        if matching_coding(value, ctx.codes(self.equivocal_value_codes)) is not None:
            ev.value = "equivocal"
            return Finding(OPEN, f"{label} equivocal", date, ev, Why.EQUIVOCAL)
        word = qualitative_word(source.valueString)  # "Negative", "POSITIVE": exact words only
        if word is not None:
            ev.value = source.valueString
            return Finding(word, f"{label} {word}", date, ev)
        ev.value = _value_text(source)
        ev.note = "value cannot be interpreted"
        return Finding(OPEN, f"{label} result '{ev.value}'", date, ev, Why.UNINTERPRETABLE)


_IHC_SCORES = {"0": (NEGATIVE, "0"), "0+": (NEGATIVE, "0"), "1+": (NEGATIVE, "1+"), "2+": (OPEN, "2+"),
               "3+": (POSITIVE, "3+")}


def _ihc_score_text(text: str | None) -> tuple[str, str] | None:
    """(category, score) for an IHC score sent as a string: exactly "0", "1+", "2+" or
    "3+", optionally after "IHC" or "score" ("Score 2+"); anything else is not read."""
    if not isinstance(text, str):
        return None
    words = text.strip().lower().split()
    if len(words) == 2 and words[0] in ("ihc", "score"):
        words = words[1:]
    return _IHC_SCORES.get(words[0]) if len(words) == 1 else None


def _dated(f: Finding) -> str:
    return f"{f.label} ({f.date.day_text if f.date else 'undated'})"


def _value_text(source) -> str:
    if source.valueQuantity is not None and source.valueQuantity.value is not None:
        q = source.valueQuantity
        return f"{format(q.value, 'f')} {q.unit or q.code or ''}".strip()
    if source.valueString:
        return source.valueString[:80]
    if source.valueCodeableConcept is not None:
        return concept_label(source.valueCodeableConcept) or "coded value"
    return "no value"
