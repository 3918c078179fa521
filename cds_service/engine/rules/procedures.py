"""Procedure recency: a procedure (radiotherapy, surgery) in progress, or ended within a
window before the evaluation date, fails; one that ended earlier passes, named with its date
(the definition's note says what a clinician still confirms); none recorded passes.

When a procedure ended is read from performed[x]: performedPeriod.end, else
performedDateTime (that day). A completed or stopped procedure with only a start ended on or
after it: a start within the window fails, an earlier one is unknown (it may have run into the
window). in-progress and on-hold (a paused course is not over) fail whatever their dates; a
procedure in preparation, or dated after the evaluation date, is planned: review (it would be
concurrent, but a clinician schedules it, and the record does not show it given). not-done and
entered-in-error are ignored; status unknown is unknown. A record coded in no set of the rule
whose text names the procedure (a local code, text only) never decides silently: it is read
with the same dates and, where it would fail or leave the criterion open, gives review.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

from pydantic import Field

from ..codes import CodeSet, coding_key
from ..dates import FhirDate, Recency, parse_fhir_date, recency
from ..model import Evidence, Result, Role, Why
from ..validation import InvalidResource
from .base import Context, Outcome, RuleModel, coding_text, concept_label, matching_coding
from .conditions import decided
from .mentions import TextMentions, coded_in, named_by_text, recorded_with
from .readers import invalid_evidence

_IGNORED_STATUSES = frozenset({"entered-in-error", "not-done"})
_UNDER_WAY = frozenset({"in-progress", "on-hold"})


class _Stand(Enum):
    FAIL = "fail"
    UNKNOWN = "unknown"
    REVIEW = "review"
    PASS = "pass"
    IGNORED = "ignored"


@dataclass(slots=True)
class _Seen:
    """One procedure read: where it stands, why (a short reason), and when it ended (a pass)."""

    evidence: Evidence
    stand: _Stand
    reason: str
    why: Why | None = None
    ended: FhirDate | None = None
    named: Why | None = None  # found by its text (UNRECOGNISED_CODE or TEXT_ONLY), not by a code


class ProcedureRecencyRule(RuleModel):
    """fail: a procedure coded in `codes` (or whose category is in `categoryCodes`) in progress,
    on hold, or ended within `withinDays` (inclusive) before the evaluation date; review: one
    planned, or one named only by text that may be recent; unknown: one without a usable date
    or status; pass: every one ended earlier (the latest is named, with `note`), or none."""

    type: Literal["procedure-recency"]
    elements_read = {"Procedure": ("category", "performedDateTime", "performedPeriod")}
    label: str = Field(min_length=1)  # the procedure in words: "radiotherapy"
    codes: list[str] = Field(min_length=1)  # Procedure.code
    category_codes: list[str] = []  # Procedure.category: radiotherapy records (CodeX) carry it there
    within_days: int = Field(ge=0)  # ended this many days before the evaluation date or fewer: fail
    note: str | None = None  # what a clinician confirms when an earlier one passes
    mentions: TextMentions | None = None  # the procedure's names, for records coded otherwise

    def reads(self) -> dict[str, list[str]]:
        # Texts and categories are read on Procedures of any code: a search restricted to the
        # codes would never bring the local-coded "WBRT" the safety net is for.
        if self.mentions is not None or self.category_codes:
            return {"Procedure": []}
        return {"Procedure": list(self.codes)}

    def evaluate(self, ctx: Context) -> Outcome:
        codes = ctx.codes(self.codes)
        categories = ctx.codes(self.category_codes) if self.category_codes else None
        known = ctx.codes(self.mentions.other_codes) if self.mentions and self.mentions.other_codes else None
        seen: list[_Seen] = []
        by_code = {id(hit.raw) for hit in ctx.record.find("Procedure", codes)}  # the record's index
        for raw in ctx.record.all_of("Procedure"):
            coded = id(raw) in by_code or (categories is not None and coded_in(raw.get("category"), categories))
            named = None
            if not coded and self.mentions is not None:
                named = named_by_text(ctx, raw.get("code"), self.mentions, codes, known)
            if coded or named is not None:
                seen.append(self._read(ctx, raw, codes, categories, named))
        return self._decide(seen, ctx.as_of)

    def _read(self, ctx: Context, raw: dict[str, Any], codes: CodeSet, categories: CodeSet | None,
              named: tuple[str, list[tuple[str, str]], Why] | None) -> _Seen:
        why_named = named[2] if named is not None else None
        try:
            proc = ctx.record.model(raw)
        except InvalidResource as exc:
            ev = invalid_evidence(ctx, raw, exc)
            if raw.get("status") in _IGNORED_STATUSES:  # withdrawn: its shape does not matter
                return _Seen(ev, _Stand.IGNORED, "", named=why_named)
            return _Seen(ev, _Stand.UNKNOWN, f"a {self.label} record is not valid FHIR", Why.INVALID_RESOURCE,
                         named=why_named)
        coding = matching_coding(proc.code, codes) or (matching_coding(proc.category, categories)
                                                       if categories is not None else None)
        start, end, when = _performed(proc)
        ev = Evidence(reference=ctx.record.reference(raw), code=coding_text(coding) if coding else None,
                      display=named[0] if named is not None else _display(proc, coding, codes, categories),
                      status=proc.status, date=_date_text(start, end, when))
        if named is not None:
            keys = ", ".join(f"{s}|{c}" for s, c in named[1][:2])
            ev.note = (f"code not in the criterion's code sets ({keys}); its text names {self.label}"
                       if keys else f"recorded as text only; it names {self.label}")
        return self._stand(ctx, ev, proc.status, start, end, when, why_named)

    def _stand(self, ctx: Context, ev: Evidence, status: str | None, start: FhirDate | None,
               end: FhirDate | None, when: FhirDate | None, named: Why | None) -> _Seen:
        label, days = self.label, self.within_days
        if status in _IGNORED_STATUSES:
            ev.role, ev.note = Role.IGNORED, f"status '{status}'; ignored"
            return _Seen(ev, _Stand.IGNORED, "", named=named)
        if status in _UNDER_WAY:
            pause = " (on hold: a paused course is not over)" if status == "on-hold" else ""
            return _Seen(ev, _Stand.FAIL, f"{label} in progress{pause}", named=named)
        if status not in ("completed", "stopped", "preparation"):  # 'unknown', or none
            return _Seen(ev, _Stand.UNKNOWN, f"{label} recorded with status '{status or 'none'}': whether it "
                         "is over cannot be shown", Why.UNINTERPRETABLE, named=named)
        first = start or when or end
        if status == "preparation" or (first is not None and first.first_day > ctx.as_of):
            what = "in preparation" if status == "preparation" else f"dated {first.day_text}, after the evaluation date"  # type: ignore[union-attr]
            return _Seen(ev, _Stand.REVIEW, f"{label} planned ({what}): concurrent {label} is not allowed; "
                         "confirm when it will be given", named=named)
        ended = end or when
        if ended is None:
            if start is not None and recency(start, ctx.as_of, days) is Recency.FRESH:
                return _Seen(ev, _Stand.FAIL, f"{label} started {start.day_text}, within {days} days, "
                             f"and is {status}", named=named)
            since = f"started {start.day_text}, no end date" if start is not None else "no date"
            return _Seen(ev, _Stand.UNKNOWN, f"{label} recorded {status} with {since}: it may have ended within "
                         f"{days} days", Why.NO_DATE, named=named)
        stand = recency(ended, ctx.as_of, days)
        if stand is Recency.FRESH:
            return _Seen(ev, _Stand.FAIL, f"{label} ended {ended.day_text}{_ago(ended, ctx.as_of)}, within "
                         f"{days} days", named=named)
        if stand is Recency.FUTURE:  # begun, with an end after today: under way today
            return _Seen(ev, _Stand.FAIL, f"{label} recorded as running until {ended.day_text}", named=named)
        if stand is Recency.IMPRECISE:
            return _Seen(ev, _Stand.UNKNOWN, f"{label} ended {ended.text}: too imprecise to show it was more "
                         f"than {days} days ago", Why.IMPRECISE_DATE, named=named)
        return _Seen(ev, _Stand.PASS, "", ended=ended, named=named)

    def _decide(self, seen: list[_Seen], as_of: dt.date) -> Outcome:
        everything = [s.evidence for s in seen]
        by = {stand: [s for s in seen if s.stand is stand] for stand in _Stand}
        label, days = self.label, self.within_days
        # A record found only by its text never fails nor leaves the criterion unknown: it may be
        # the procedure, so a clinician looks (review), as the safety net does everywhere.
        coded_fail = [s for s in by[_Stand.FAIL] if s.named is None]
        if coded_fail:
            return decided(Result.FAIL, coded_fail[0].reason, [s.evidence for s in coded_fail], everything)
        coded_unknown = [s for s in by[_Stand.UNKNOWN] if s.named is None]
        if coded_unknown:
            first = coded_unknown[0]
            return decided(Result.UNKNOWN, first.reason, [s.evidence for s in coded_unknown], everything, first.why)
        named = [s for s in by[_Stand.FAIL] + by[_Stand.UNKNOWN] + by[_Stand.REVIEW] if s.named is not None]
        if named:
            first = named[0]
            return decided(Result.REVIEW, f"'{first.evidence.display}' is recorded with {recorded_with(first.named)}"  # type: ignore[arg-type]
                           f" ({first.reason}): it may be {label}", [s.evidence for s in named], everything,
                           first.named)
        if by[_Stand.REVIEW]:
            first = by[_Stand.REVIEW][0]
            return decided(Result.REVIEW, first.reason, [s.evidence for s in by[_Stand.REVIEW]], everything)
        if by[_Stand.PASS]:
            latest = max(by[_Stand.PASS], key=lambda s: s.ended.sort_key())  # type: ignore[union-attr]
            for s in by[_Stand.PASS]:
                if s is not latest:
                    s.evidence.note = s.evidence.note or "an earlier one"
            when = latest.ended.day_text + _ago(latest.ended, as_of)  # type: ignore[union-attr]
            reason = (f"latest {label} ended {when}, more than {days} days ago"
                      + (f" ({latest.evidence.display})" if latest.evidence.display else "")
                      + (f": {self.note}" if self.note else ""))
            return decided(Result.PASS, reason, [latest.evidence], everything, absence_of=("Procedure",))
        return decided(Result.PASS, f"no {label} recorded", [], everything, absence_of=("Procedure",))


def _performed(proc: Any) -> tuple[FhirDate | None, FhirDate | None, FhirDate | None]:
    """(period start, period end, performedDateTime), each None when not recorded."""
    period = proc.performedPeriod
    start = parse_fhir_date(period.start) if period is not None else None
    end = parse_fhir_date(period.end) if period is not None else None
    return start, end, parse_fhir_date(proc.performedDateTime)


def _display(proc: Any, coding: Any, codes: CodeSet, categories: CodeSet | None) -> str | None:
    """The record's own label, else the code set's display of the matching coding (a code sent
    without a display, as mCODE's course summaries send 1217123003)."""
    label = concept_label(proc.code, coding)
    if label is None and coding is not None:
        key = coding_key(coding.system, coding.code)
        label = codes.display_for(key) or (categories.display_for(key) if categories is not None else None)  # type: ignore[arg-type]
    return label


def _date_text(start: FhirDate | None, end: FhirDate | None, when: FhirDate | None) -> str | None:
    if when is not None:
        return when.text
    if start is not None or end is not None:
        return f"{start.text if start else '?'} to {end.text if end else '(no end)'}"
    return None


def _ago(ended: FhirDate, as_of: dt.date) -> str:
    return f" ({(as_of - ended.last_day).days} days before)" if ended.is_precise else ""
