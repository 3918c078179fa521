"""Other cancers: a malignancy other than the trial's own, unless it has been in remission
for long enough ("no history of any other cancer ... unless in complete remission and off
all therapy for a minimum of 3 years").

A Condition coded in `cancerCodes` and in none of `exceptCodes` (the trial's own cancer,
its metastases, the exempt cancers) is another cancer: active, or abated less than
`remissionYears` before the evaluation date, fails; abated at least that long ago is for
review (the protocol also asks for no therapy in that time, which a Condition does not
record); abated without a readable date, unconfirmed, coded only by a nonspecific code (it
may be the trial's own cancer), or a personal-history code (dates unknown): review. The
exception wins per coding; a Condition coded both as another cancer and as an exempt one
is for review. Never a fail on a guess: a partial date fails only when every day it may
denote is too recent."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

from pydantic import Field

from ..codes import CodeSet, coding_key
from ..dates import FhirDate, age_on, parse_fhir_date
from ..model import Evidence, Result, Role, Why
from .base import UNCONFIRMED, Context, Outcome, RuleModel, concept_label
from .conditions import FoundCondition, decided, find_conditions_until, ver_text
from .mentions import TextMentions, concept_coding_keys, mention_reason, unread_mentions
from .readers import has_invalid

_PAST = frozenset({"inactive", "remission", "resolved"})
# abatement[x] shapes that say the disease abated but give no date the rule can count from.
_UNDATED_ABATEMENT = ("abatementAge", "abatementRange", "abatementString", "abatementBoolean")


@dataclass(slots=True)
class _Judged:
    """One Condition's reading: its result (fail or review), what it is, and its state in words."""

    found: FoundCondition
    result: Result
    what: str  # "melanoma (C43.9)"
    state: str  # "active", "abated 2024-03-01, less than 3 years ago"


class OtherCancerRule(RuleModel):
    type: Literal["other-cancer"]
    elements_read = {"Condition": ("abatementDateTime", "abatementPeriod") + _UNDATED_ABATEMENT}
    label: str = "other cancer"  # how reasons name it: "other cancer: melanoma (C43.9), active"
    cancer_codes: list[str] = Field(min_length=1)  # what counts as a cancer
    except_codes: list[str] = []  # the trial's own cancer, its metastases, the exempt cancers
    nonspecific_codes: list[str] = []  # a malignancy without a site: may be the trial's own (review)
    history_codes: list[str] = []  # personal history of a malignancy, dates unknown (review)
    remission_codes: list[str] = []  # codes that say "in remission" themselves (ICD-10-CM C91.01)
    remission_years: int = Field(gt=0)
    mentions: TextMentions | None = None

    @cached_property
    def _searched(self) -> list[str]:
        return self.cancer_codes + self.nonspecific_codes + self.history_codes + self.remission_codes

    def reads(self) -> dict[str, list[str]]:
        return {"Condition": self._searched}  # a Condition coded only in exceptCodes decides nothing

    def evaluate(self, ctx: Context) -> Outcome:
        sets = _Sets(*(ctx.codes(names) if names else _NONE for names in (
            self.cancer_codes, self.except_codes, self.nonspecific_codes, self.history_codes, self.remission_codes)))
        judged: dict[int, _Judged | None] = {}

        def fails(f: FoundCondition) -> bool:
            judged[id(f)] = self._judge(ctx, sets, f)
            return (j := judged[id(f)]) is not None and j.result is Result.FAIL

        found, ignored, not_read = find_conditions_until(ctx, self._searched, fails)
        readings = [j for f in found if (j := judged[id(f)]) is not None]  # `fails` read every one found
        everything = [f.evidence for f in found] + ignored
        outcome = self._decide(ctx, readings, everything)
        outcome.not_read = not_read
        return outcome

    def _decide(self, ctx: Context, readings: list[_Judged], everything: list[Evidence]) -> Outcome:
        for result in (Result.FAIL, Result.REVIEW):
            deciding = [j for j in readings if j.result is result]
            if deciding and (result is Result.FAIL or not has_invalid(everything)):
                first = deciding[0]
                more = f" (and {len(deciding) - 1} more)" if len(deciding) > 1 else ""
                return decided(result, f"{self.label}: {first.what}, {first.state}{more}",
                               [j.found.evidence for j in deciding], everything)
        if has_invalid(everything):
            return decided(Result.UNKNOWN, f"a possibly relevant record is not valid FHIR; cannot rule out "
                           f"{self.label}", [], everything, Why.INVALID_RESOURCE)
        if self.mentions is not None:
            known = ctx.codes(self._searched + self.except_codes)
            named = unread_mentions(ctx, "Condition", known, self.mentions)
            if named:
                return decided(Result.REVIEW, mention_reason(named[0], self.label), [e for e, _ in named],
                               everything, named[0][1])
        return decided(Result.PASS, f"no {self.label} recorded", [], everything, absence_of=("Condition",))

    def _judge(self, ctx: Context, sets: "_Sets", f: FoundCondition) -> _Judged | None:
        """A Condition's reading, or None when it does not count (an exempt cancer); its evidence
        is filled in (the deciding coding, the abatement date, a note)."""
        keys = concept_coding_keys(f.raw.get("code"))
        excepted = [k for k in keys if sets.excepted(k)]
        # Per coding, an exemption wins over a cancer, and a site-less code over a cancer range.
        other = [k for k in keys if (sets.cancer.contains(k) or sets.remission.contains(k))
                 and not sets.excepted(k) and not sets.nonspecific.contains(k)]
        if other:
            what = _name(f, other[0])
            if excepted:
                f.evidence.note = f"also coded as an exempt cancer ({_name(f, excepted[0])}): the codes disagree"
                return _Judged(f, Result.REVIEW, what, "also coded as an exempt cancer: confirm which")
            in_remission = any(map(sets.remission.contains, keys))
            return self._by_status(ctx, f, what, in_remission)
        if excepted:
            f.evidence.role = Role.IGNORED
            f.evidence.note = f"exempt ({_name(f, excepted[0])}): not another cancer"
            return None
        what = _name(f, keys[0]) if keys else (f.evidence.display or "condition")
        if not any(map(sets.nonspecific.contains, keys)) and any(map(sets.history.contains, keys)):
            f.evidence.note = "personal history of a malignancy: its dates and treatment are not recorded"
            return _Judged(f, Result.REVIEW, what, f"history of: confirm remission and no therapy for "
                           f"{self.remission_years} years")
        f.evidence.note = "malignancy without a site: it may be the trial's own cancer"
        return _Judged(f, Result.REVIEW, what, "nonspecific code: confirm which cancer")

    def _by_status(self, ctx: Context, f: FoundCondition, what: str, in_remission: bool) -> _Judged:
        years = self.remission_years
        if f.verification == UNCONFIRMED:
            status = ver_text(f.model, f.verification)
            f.evidence.note = f"not confirmed ({status}): never rules out"
            return _Judged(f, Result.REVIEW, what, f"not confirmed ({status})")
        recorded = f.model.clinicalStatus is not None
        abated = _abatement(f.model)
        status_codes = {c.code for c in f.model.clinicalStatus.coding or ()} if recorded else set()
        if recorded and f.clinical == "active" and "active" not in status_codes:
            # A status sent as text or in a local system reads as active (base.clinical_status): not a fail
            return self._noted(f, Result.REVIEW, what, "clinical status not readable: confirm")
        if f.clinical in ("recurrence", "relapse"):
            return self._noted(f, Result.FAIL, what, f.clinical)
        if f.clinical == "active" and not in_remission:
            if abated is None:
                if not recorded:  # an encounter diagnosis of a cancer treated long ago looks the same: not a fail
                    return self._noted(f, Result.REVIEW, what, "no clinical status: confirm whether active, and "
                                       f"if not, {years} years in complete remission, off therapy")
                return self._noted(f, Result.FAIL, what, "active")
            if recorded:  # FHIR (con-4): an abated condition is not active; the record contradicts itself
                return self._noted(f, Result.REVIEW, what, "recorded active with an abatement: confirm")
        elif f.clinical not in _PAST and not (f.clinical == "active" and in_remission):
            return self._noted(f, Result.REVIEW, what, f"clinical status '{f.clinical}'")
        past = "in remission" if f.clinical == "remission" or in_remission else \
            f.clinical if recorded else "abated (no clinical status)"
        if abated is None or isinstance(abated, str):
            how = f" (abatement recorded as {abated})" if abated else ""
            return self._noted(f, Result.REVIEW, what, f"{past} without a remission date{how}: confirm "
                               f"{years} years in complete remission, off therapy")
        f.evidence.date = abated.text
        if abated.first_day > ctx.as_of:
            return self._noted(f, Result.REVIEW, what, f"{past}, abatement dated {abated.text}, after the "
                               "evaluation date")
        if age_on(abated.last_day, ctx.as_of) >= years:  # every day the date may denote is long enough ago
            return self._noted(f, Result.REVIEW, what, f"{past} since {abated.text} ({years}+ years): confirm "
                               f"off all therapy for {years} years")
        if age_on(abated.first_day, ctx.as_of) < years:  # every day it may denote is too recent
            return self._noted(f, Result.FAIL, what, f"{past} since {abated.text}, less than {years} years")
        return self._noted(f, Result.REVIEW, what, f"{past} since {abated.text}: the date is too imprecise to "
                           f"show {years} years")

    @staticmethod
    def _noted(f: FoundCondition, result: Result, what: str, state: str) -> _Judged:
        f.evidence.note = state
        return _Judged(f, result, what, state)


@dataclass(slots=True)
class _Sets:
    cancer: CodeSet
    exempt: CodeSet
    nonspecific: CodeSet
    history: CodeSet
    remission: CodeSet

    def excepted(self, key: tuple[str, str]) -> bool:
        return self.exempt.contains(key)


_NONE = CodeSet("none", "no codes", [])


def _name(f: FoundCondition, key: tuple[str, str]) -> str:
    """'melanoma of skin (C43.9)': the coding's display (else the Condition's text) and its code
    as recorded; the evidence names that coding."""
    for coding in f.model.code.coding or ():
        if coding_key(coding.system, coding.code) == key:
            f.evidence.code = f"{coding.system}|{coding.code}"
            label = concept_label(f.model.code, coding)
            f.evidence.display = label
            return f"{label} ({coding.code})" if label else coding.code
    return f.evidence.display or key[1]  # pragma: no cover - the key came from these codings


def _abatement(cond: Any) -> FhirDate | str | None:
    """When the condition abated, as days the rule can count from: abatementDateTime, or the
    end of abatementPeriod (a period with only a start: from its start to no known end); a text
    naming the element when it abated without a date (an age, a range, a string, a boolean);
    None when no abatement is recorded."""
    if cond.abatementDateTime is not None:
        return parse_fhir_date(cond.abatementDateTime)
    period = cond.abatementPeriod
    if period is not None and period.end is not None:
        return parse_fhir_date(period.end)
    if period is not None and period.start is not None:
        start = parse_fhir_date(period.start)
        if start is not None:  # at the earliest its start; the latest is unknown
            return FhirDate(start.first_day, _FAR_FUTURE, None, f"{start.text} or later")
    for element in _UNDATED_ABATEMENT:
        if getattr(cond, element, None) is not None:
            return element.removeprefix("abatement").lower()
    return None


_FAR_FUTURE = parse_fhir_date("9999-12-31").last_day  # type: ignore[union-attr]
