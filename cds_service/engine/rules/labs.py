"""Lab thresholds: the latest valid result within a look-back window against an
absolute threshold or a multiple of the upper limit of normal (ULN).

One rule may hold several analytes (ALT and AST): any analyte failing fails
the criterion; all passing passes it; anything else is unknown.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from pydantic import Field, model_validator

from ..dates import FhirDate, Recency, recency
from ..model import Evidence, Measured, Result, Role, UpperLimit, Why, shown_number
from ..quantities import NotConvertible, UnitTable
from .base import Context, Outcome, RuleModel, concept_label
from .lab_limits import ConditionalLimit, ConditionalLimits, Threshold, condition_reads, limit_units
from .mentions import TextMentions, newer_mention, recorded_with
from .readers import Reading, has_invalid, read_latest_results, unreadable_value


class FallbackUln(RuleModel):
    value: Decimal = Field(gt=0)
    unit: str
    source: str


class Analyte(RuleModel):
    name: str
    codes: list[str] = Field(min_length=1)
    conversions: str | None = None  # key of the analyte's unit bridges in units.yaml
    fail_when: Threshold
    fallback_uln: FallbackUln | None = None
    valid_range: tuple[Decimal, Decimal] | None = None  # [low, high] possible in failWhen's unit; outside: unread
    # The analyte's names, for results whose codes no set of the trial holds (a local lab code
    # alone): one newer than the deciding result makes the analyte unknown (see mentions.newer_mention).
    mentions: TextMentions | None = None
    conditional_limit: ConditionalLimit | None = None  # the limit when a diagnosis is known (lab_limits.py)

    @model_validator(mode="after")
    def _range_in_unit(self) -> "Analyte":
        if self.valid_range and (self.fail_when.unit is None or self.valid_range[0] >= self.valid_range[1]):
            raise ValueError("validRange needs an absolute failWhen (value, unit) and low < high")
        return self


class LabRule(RuleModel):
    type: Literal["lab"]
    lookback_days: int = Field(gt=0)
    analytes: list[Analyte] = Field(min_length=1)
    order: str | None = None

    def latest_within_days(self) -> int | None:
        return self.lookback_days  # the latest result of each analyte within it decides

    def reads(self) -> dict[str, list[str]]:
        return {"Observation": [n for a in self.analytes for n in a.codes]} | condition_reads(self.analytes)

    def result_mentions(self) -> list[TextMentions]:
        return [a.mentions for a in self.analytes if a.mentions is not None]

    def units_used(self) -> list[str]:
        out = []
        for a in self.analytes:
            if a.fail_when.unit:
                out.append(a.fail_when.unit)
            if a.fallback_uln:
                out.append(a.fallback_uln.unit)
        return out + limit_units(self.analytes)

    def unit_bridges(self) -> list[str]:
        return [a.conversions for a in self.analytes if a.conversions]

    def default_order(self) -> str | None:
        return self.order

    def evidence_labels(self) -> list[tuple[str, list[str]]]:
        return [(a.name, a.codes) for a in self.analytes]

    def evaluate(self, ctx: Context) -> Outcome:
        limits = ConditionalLimits(ctx)  # the diagnoses that change a limit, each read once
        outcomes = [_evaluate_analyte(ctx, a, self.lookback_days, limits) for a in self.analytes]
        evidence = [e for o in outcomes for e in o.evidence]
        # Every outcome rests on the newest results: see evaluate._cut_short.
        rests = {"not_read": sum(o.not_read for o in outcomes), "newest_of": ("Observation",)}
        failed = [o for o in outcomes if o.result is Result.FAIL]
        if failed:
            return limits.settled(Outcome(Result.FAIL, "; ".join(o.reason for o in failed), evidence, **rests), outcomes)
        unknown = [o for o in outcomes if o.result is Result.UNKNOWN]
        if unknown:
            return limits.settled(Outcome(Result.UNKNOWN, "; ".join(o.reason for o in unknown), evidence,
                                          why=unknown[0].why, orderable=True, **rests), outcomes)
        return limits.settled(Outcome(Result.PASS, "; ".join(o.reason for o in outcomes), evidence, **rests), outcomes)


# -- one analyte ----------------------------------------------------------

def _has_number(reading: Reading) -> bool:
    q = reading.source.valueQuantity
    return q is not None and q.value is not None


def _evaluate_analyte(ctx: Context, analyte: Analyte, lookback_days: int, limits: ConditionalLimits) -> Outcome:
    found = read_latest_results(ctx, ctx.codes(analyte.codes), _has_number)
    outcome = _decide(ctx, analyte, lookback_days, found.readings, found.ignored, limits)
    outcome.not_read = found.not_read
    if analyte.mentions is not None and (outcome.result is not Result.UNKNOWN or outcome.why in _SILENT):
        newer = newer_mention(ctx, analyte.mentions, outcome.decided_at, lookback_days)
        if newer is not None:
            evidence, why, day = newer
            outcome = Outcome(Result.UNKNOWN, f"{analyte.name}: a {'newer ' if outcome.decided_at else ''}"
                                      f"result ({day}) is recorded as '{evidence.display}' with "
                                      f"{recorded_with(why)}: it cannot be read" + (", and the older one does not decide"
                                                               if outcome.decided_at else ""),
                                      [evidence] + _demoted(outcome.evidence), why, not_read=outcome.not_read)
    return outcome


def _demoted(evidence: list[Evidence]) -> list[Evidence]:
    for e in evidence:
        if e.role is Role.DECISIVE:
            e.role, e.note = Role.SUPPORTING, e.note or "older than an unreadable newer result; does not decide"
    return evidence


# Unknowns that a result under an unrecognised code explains better: there is a result, the
# engine cannot read its code.
_SILENT = (Why.NO_DATA, Why.STALE)


def _decide(ctx: Context, analyte: Analyte, lookback_days: int, readings: list[Reading],
            ignored: list[Evidence], limits: ConditionalLimits) -> Outcome:
    name = analyte.name
    dated: list[Reading] = []
    undated: list[Reading] = []
    no_value = 0
    unreadable: list[Reading] = []  # resulted, but what was sent is not a number (see readers.unreadable_value)
    for r in readings:
        q, ev = r.source.valueQuantity, r.evidence
        ev.role = Role.IGNORED
        if q is None or q.value is None:
            no_value += 1
            absent = concept_label(r.source.dataAbsentReason)
            sent = unreadable_value(r.source)
            if sent is not None:
                ev.value = sent
                ev.note = "not a numeric value; cannot be read"
                unreadable.append(r)
            else:
                ev.note = "no numeric value" + (f" (data absent: {absent})" if absent else "") + "; ignored"
            ignored.append(ev)
            continue
        ev.value, ev.unit, ev.comparator = format(q.value, "f"), q.unit or q.code, q.comparator
        (dated if r.date is not None else undated).append(r)

    if dated:
        if len(dated) > 1:
            dated.sort(key=lambda c: c.date.sort_key(), reverse=True)
        latest = dated[0]
        for c in undated:
            c.evidence.note = "no effective date; cannot show recency; ignored"
        older = dated[1:]
        stand = recency(latest.date, ctx.as_of, lookback_days)
        if stand is Recency.STALE:
            latest.evidence.role = Role.DECISIVE
            latest.evidence.note = f"older than {lookback_days} days"
            _note_older(older)
            return Outcome(Result.UNKNOWN, f"{name}: latest result ({latest.date.day_text}) is older than "
                                   f"{lookback_days} days", _collect(latest, older, undated, ignored),
                                   Why.STALE, decided_at=latest.date)
        if stand is Recency.IMPRECISE:
            latest.evidence.role = Role.DECISIVE
            latest.evidence.note = f"date too imprecise to place within {lookback_days} days"
            _note_older(older)
            return Outcome(Result.UNKNOWN, f"{name}: date of latest result ({latest.date.text}) is too "
                                   f"imprecise to show it is within {lookback_days} days",
                                   _collect(latest, older, undated, ignored), Why.IMPRECISE_DATE)
        latest_key = latest.date.sort_key()
        newer = [r for r in unreadable if r.date is not None and r.date.sort_key() > latest_key]
        if newer:  # never hand the decision to an older result
            newest = max(newer, key=lambda r: r.date.sort_key())
            newest.evidence.role = Role.DECISIVE
            _note_older(dated)
            return Outcome(Result.UNKNOWN, f"{name}: the latest result ({newest.date.day_text}) was sent as "
                                   f"'{newest.evidence.value}', not a number: it cannot be read, and older results "
                                   "do not decide", [newest.evidence] + [c.evidence for c in dated] +
                                   [c.evidence for c in undated] + [e for e in ignored if e is not newest.evidence],
                                   Why.UNINTERPRETABLE)
        same_time = [latest] + [c for c in dated[1:] if c.date.sort_key() == latest_key]
        judged = [(c, limits.judge(analyte, lambda rule: _judge(ctx.units, analyte, c.date, c.source, rule)))
                  for c in same_time]
        outcomes = {j.result for _, j in judged}
        for c, j in judged:
            ev = c.evidence
            ev.role, ev.converted, ev.uln, ev.ratio_to_uln = Role.DECISIVE, j.converted, j.uln, j.ratio_to_uln
        rest = dated[len(same_time):]  # sorted newest first: the same-time results lead
        _note_older(rest)
        evidence = [c.evidence for c in same_time] + [c.evidence for c in rest] + \
                   [c.evidence for c in undated] + ignored
        if len(outcomes) > 1:
            return Outcome(Result.UNKNOWN, f"{name}: results at the same time disagree",
                                   evidence, Why.CONFLICTING_RESULTS)
        judgement = judged[0][1]
        return Outcome(judgement.result, judgement.reason, evidence, judgement.why, decided_at=latest.date)

    if undated:
        for c in undated:
            c.evidence.note = "no effective date; cannot show recency"
        return Outcome(Result.UNKNOWN, f"{name}: result has no date, so recency cannot be shown",
                               [c.evidence for c in undated] + ignored, Why.NO_DATE)
    fresh_unreadable = [r for r in unreadable if r.date is not None and
                        recency(r.date, ctx.as_of, lookback_days) is Recency.FRESH]
    if fresh_unreadable:
        r = fresh_unreadable[0]
        r.evidence.role = Role.DECISIVE
        return Outcome(Result.UNKNOWN, f"{name}: the result of {r.date.day_text} was sent as "
                               f"'{r.evidence.value}', not a number: it cannot be read", ignored, Why.UNINTERPRETABLE)
    if no_value:
        return Outcome(Result.UNKNOWN, f"{name}: no usable value in the results found", ignored,
                               Why.NO_VALUE)
    if has_invalid(ignored):
        return Outcome(Result.UNKNOWN, f"{name}: results found are not valid FHIR", ignored,
                               Why.INVALID_RESOURCE)
    return Outcome(Result.UNKNOWN, f"{name}: no valid result", ignored, Why.NO_DATA)


def _note_older(older: list[Reading]) -> None:
    for c in older:
        c.evidence.role = Role.SUPPORTING
        c.evidence.note = c.evidence.note or "older result; not used"


def _collect(latest: Reading, older: list[Reading], undated: list[Reading],
             ignored: list[Evidence]) -> list[Evidence]:
    return [latest.evidence] + [c.evidence for c in older] + [c.evidence for c in undated] + ignored


@dataclass(frozen=True, slots=True)
class _Judgement:
    """The threshold applied to one result: the outcome, and what the evidence shows for it."""

    result: Result
    reason: str
    why: Why | None = None
    converted: Measured | None = None
    uln: UpperLimit | None = None
    ratio_to_uln: Decimal | None = None


def _judge(units: UnitTable, analyte: Analyte, date: FhirDate | None, source: Any, rule: Threshold) -> _Judgement:
    """Apply the threshold to one dated, fresh result: `source` is the part of the
    validated Observation carrying the value (the resource or a component), `date` its date."""
    q, name = source.valueQuantity, analyte.name
    unit = units.ucum_of(q.code, q.unit, q.system)
    if unit is None:
        return _Judgement(Result.UNKNOWN, f"{name}: result has no unit", Why.UNIT_NOT_CONVERTIBLE)
    value = Decimal(q.value)
    converted = uln = ratio = None
    if rule.value is not None:
        try:
            compared = units.convert(value, unit, rule.unit, analyte.conversions)
        except NotConvertible:
            return _Judgement(Result.UNKNOWN, f"{name}: unit '{q.unit or q.code}' cannot be converted to "
                              f"{rule.unit}", Why.UNIT_NOT_CONVERTIBLE)
        converted = Measured(compared, rule.unit)
        bounds = analyte.valid_range
        if bounds and not bounds[0] <= compared <= bounds[1]:
            return _Judgement(Result.UNKNOWN, f"{name} sent as {format(value, 'f')} '{q.unit or q.code}' is "
                              f"{_computed(compared)} {rule.unit}, outside the possible {bounds[0]}-{bounds[1]} "
                              f"{rule.unit}: cannot be read", Why.UNINTERPRETABLE, converted)
        limit, limit_text = rule.value, rule.text
        shown = f"{q.comparator or ''}{_computed(compared)} {rule.unit}"
    else:
        uln = _upper_limit(units, analyte, source, unit)
        if isinstance(uln, _Judgement):
            return uln
        ratio = _ratio(value, uln.value)
        limit = rule.uln_multiple * uln.value
        limit_text = f"{rule.text} {shown_number(uln.value)} {uln.unit}" + (" (assumed ULN)" if uln.assumed else "")
        shown = f"{q.comparator or ''}{format(value, 'f')} {unit} ({q.comparator or ''}{ratio} × ULN)"
        compared = value
    verdict = classify(compared, q.comparator, rule.comparator, limit)
    when = date.day_text if date else "undated"
    if verdict is None:
        return _Judgement(Result.UNKNOWN, f"{name} reported as {q.comparator}{format(value, 'f')}: cannot "
                          f"tell whether it is {rule.comparator} {limit_text}", Why.UNINTERPRETABLE,
                          converted, uln, ratio)
    if verdict:
        return _Judgement(Result.FAIL, f"{name} {shown} on {when} is {rule.comparator} {limit_text}", None,
                          converted, uln, ratio)
    return _Judgement(Result.PASS, f"{name} {shown} on {when} is not {rule.comparator} {limit_text}", None,
                      converted, uln, ratio)


def _computed(value: Decimal) -> str:
    """A converted value in a reason: at most 3 decimals, every significant digit before
    them kept (so the comparison it states stays true); a ULN is shown to 3 significant
    digits (one converted from µmol/L has 28). The evidence keeps the exact values."""
    return shown_number(value, significant=None)


def _ratio(value: Decimal, uln: Decimal) -> Decimal:
    """value / ULN to two decimals. A ratio too large to keep two decimals within the
    context's 28 digits (a unit such as 10*300.U/L) keeps its significant digits instead."""
    ratio = value / uln
    try:
        return ratio.quantize(Decimal("0.01"))
    except InvalidOperation:
        return ratio


_NORMAL_RANGE = {("http://terminology.hl7.org/CodeSystem/referencerange-meaning", "normal")}


def _upper_limit(units: UnitTable, analyte: Analyte, source: Any, unit: str) -> UpperLimit | _Judgement:
    """The ULN in the result's unit: the result's own reference range, else the
    configured fallback (flagged as assumed)."""
    for rr in source.referenceRange or ():
        if rr.high is None or rr.high.value is None:
            continue
        if rr.type is not None and not any((c.system, c.code) in _NORMAL_RANGE for c in rr.type.coding or ()):
            continue
        high_unit = units.ucum_of(rr.high.code, rr.high.unit, rr.high.system)
        high = Decimal(rr.high.value)
        if high <= 0:
            continue
        if high_unit is None:
            return UpperLimit(high, unit, "referenceRange.high", assumed=False,
                              note="the range gives no unit; taken to be the result's unit")
        try:
            converted = units.convert(high, high_unit, unit, analyte.conversions)
        except NotConvertible:
            return _Judgement(Result.UNKNOWN, f"{analyte.name}: reference range unit '{high_unit}' cannot be "
                              f"converted to the result's unit '{unit}'", Why.UNIT_NOT_CONVERTIBLE)
        return UpperLimit(converted, unit, "referenceRange.high", assumed=False)
    fallback = analyte.fallback_uln
    if fallback is None:
        return _Judgement(Result.UNKNOWN, f"{analyte.name}: result has no reference range and no fallback "
                          "ULN is configured", Why.NO_REFERENCE_RANGE)
    try:
        converted = units.convert(fallback.value, fallback.unit, unit, analyte.conversions)
    except NotConvertible:
        return _Judgement(Result.UNKNOWN, f"{analyte.name}: unit '{unit}' cannot be converted to the fallback "
                          f"ULN's unit {fallback.unit}", Why.UNIT_NOT_CONVERTIBLE)
    return UpperLimit(converted, unit, "fallback", assumed=True,
                      note=f"no reference range on the result; fallback ULN {format(fallback.value, 'f')} "
                           f"{fallback.unit} ({fallback.source})")


# -- interval arithmetic for reported comparators ("<0.2") ------------------

def classify(value: Decimal, reported: str | None, comparator: str, limit: Decimal) -> bool | None:
    """True when every value the result can stand for satisfies `x comparator
    limit`, False when none does, None when the report does not tell."""
    lo, lo_closed, hi, hi_closed = value, True, value, True
    if reported in ("<", "<="):
        lo, lo_closed, hi_closed = None, False, reported == "<="
    elif reported in (">", ">="):
        hi, hi_closed, lo_closed = None, False, reported == ">="
    if comparator in ("<", "<="):  # region (-inf, limit)
        inside = hi is not None and (hi < limit or (hi == limit and (comparator == "<=" or not hi_closed)))
        outside = lo is not None and (lo > limit or (lo == limit and (comparator == "<" or not lo_closed)))
    else:  # region (limit, +inf)
        inside = lo is not None and (lo > limit or (lo == limit and (comparator == ">=" or not lo_closed)))
        outside = hi is not None and (hi < limit or (hi == limit and (comparator == ">" or not hi_closed)))
    if inside:
        return True
    if outside:
        return False
    return None
