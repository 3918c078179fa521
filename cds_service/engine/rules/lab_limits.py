"""The limits a lab result is compared with: a threshold, and a conditional limit that a
recorded diagnosis puts in its place ("transaminases < 3.0 x ULN, except in known hepatic
metastasis, wherein may be < 5 x ULN").

A diagnosis is *known* when a Condition coded in the limit's sets is confirmed (or has no
verificationStatus, as the condition kinds read it) and active, recurrent or relapsed: then
its limit applies. Inactive, resolved or in remission: the usual limit applies, and the
reason says why. Unconfirmed (provisional, differential), not valid FHIR, or named only by
text or a code no set holds: it may be the diagnosis, so it never decides silently. A
result both limits judge alike is decided whatever the diagnosis; one between them is
unknown, and an order would not settle it (the diagnosis would).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Callable, Literal, Protocol, TypeVar

from pydantic import Field, model_validator

from ..model import Evidence, Result, Role, Why
from .base import CONFIRMED, Context, Outcome, RuleModel
from .conditions import FoundCondition, find_conditions
from .mentions import TextMentions, mention_reason, unread_mentions
from .readers import is_invalid

if TYPE_CHECKING:
    from .labs import Analyte

Comparator = Literal["<", "<=", ">", ">="]


class Threshold(RuleModel):
    """The values that rule the patient out: `value comparator threshold`."""

    comparator: Comparator
    value: Decimal | None = None
    unit: str | None = None
    uln_multiple: Decimal | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_kind(self) -> "Threshold":
        if (self.value is None) == (self.uln_multiple is None):
            raise ValueError("give either value (with unit) or ulnMultiple")
        if self.value is not None and not self.unit:
            raise ValueError("an absolute threshold needs a unit")
        return self

    @property
    def text(self) -> str:
        """The limit in words, for reasons: "3.0 × ULN", "1.5 mg/dL"."""
        if self.uln_multiple is not None:
            return f"{format(self.uln_multiple, 'f')} × ULN"
        return f"{format(self.value, 'f')} {self.unit}"


class ConditionalLimit(RuleModel):
    """The analyte's limit when a diagnosis is known, in place of its failWhen."""

    label: str  # the diagnosis in words, as the reason names it: "known hepatic metastasis"
    condition_codes: list[str] = Field(min_length=1)
    fail_when: Threshold
    # Conditions whose codes no set holds (a local code alone, text only) named like the
    # diagnosis: a result between the two limits is then unknown, never a silent fail.
    mentions: TextMentions | None = None


def condition_reads(analytes: list["Analyte"]) -> dict[str, list[str]]:
    """The Conditions the analytes' conditional limits read (for LabRule.reads)."""
    names = [n for a in analytes if a.conditional_limit for n in a.conditional_limit.condition_codes]
    return {"Condition": list(dict.fromkeys(names))} if names else {}


def limit_units(analytes: list["Analyte"]) -> list[str]:
    """The units the analytes' conditional limits write (for LabRule.units_used)."""
    return [a.conditional_limit.fail_when.unit for a in analytes
            if a.conditional_limit and a.conditional_limit.fail_when.unit]


class _Judged(Protocol):  # labs._Judgement: what the limits need of it
    result: Result
    reason: str
    why: Why | None


J = TypeVar("J", bound=_Judged)


@dataclass(slots=True)
class _Diagnosis:
    """What the record says of one conditional limit's diagnosis."""

    known: list[FoundCondition]
    unsure: list[tuple[Evidence, Why, str]]  # evidence, typed reason, what the reason says of it
    not_current: list[FoundCondition]
    ignored: list[Evidence]

    def evidence(self) -> list[Evidence]:
        return [f.evidence for f in self.known] + [e for e, _, _ in self.unsure] + \
            [f.evidence for f in self.not_current] + self.ignored


def _named(f: FoundCondition) -> str:
    return f"{f.evidence.display or f.evidence.code or 'a Condition'} ({f.evidence.reference})"


def _read(ctx: Context, limit: ConditionalLimit) -> _Diagnosis:
    found, ignored = find_conditions(ctx, limit.condition_codes)  # refuted, entered in error: ignored
    known = [f for f in found if f.active and f.verification == CONFIRMED]
    not_current = [f for f in found if not f.active]  # inactive, resolved, in remission: confirmed or not
    unsure: list[tuple[Evidence, Why, str]] = []
    for f in known:
        f.evidence.note = f"counts as {limit.label}: its limit applies"
    for f in not_current:
        f.evidence.note = f"{f.clinical}: not current, so not {limit.label}"
    for f in found:
        if f.active and f.verification != CONFIRMED:  # provisional, differential, unconfirmed
            f.evidence.note = f"not confirmed, so not {limit.label}; it may be"
            unsure.append((f.evidence, Why.DIAGNOSIS_UNCONFIRMED,
                           f"{_named(f)} is recorded as {f.evidence.status}, not confirmed"))
    invalid = [e for e in ignored if is_invalid(e)]
    if invalid:
        bad = invalid[0]
        unsure.append((bad, Why.INVALID_RESOURCE, f"{bad.reference} may be {limit.label} but is not valid FHIR"))
    if not known and limit.mentions is not None:
        for evidence, why in unread_mentions(ctx, "Condition", ctx.codes(limit.condition_codes), limit.mentions):
            evidence.role = Role.SUPPORTING  # decisive only where it leaves a result unknown
            unsure.append((evidence, why, f"{mention_reason((evidence, why), limit.label)} ({evidence.reference})"))
    return _Diagnosis(known, unsure, not_current, [e for e in ignored if not is_invalid(e)])


@dataclass(slots=True)
class ConditionalLimits:
    """The conditional limits of one criterion's analytes, for one evaluation: each
    diagnosis read once (ALT and AST share it), the outcomes it decided remembered by
    reason, so that the criterion's outcome can say what it rests on (`settled`)."""

    ctx: Context
    _diagnoses: dict[str, _Diagnosis] = field(default_factory=dict)
    _by_diagnosis: set[str] = field(default_factory=set)  # reasons of outcomes the diagnosis changed or left unknown
    _on_absence: set[str] = field(default_factory=set)  # reasons of verdicts that differ were it known

    def judge(self, analyte: "Analyte", judge: Callable[[Threshold], J]) -> J:
        """The result judged under the limit that applies (`judge` applies one threshold)."""
        usual = judge(analyte.fail_when)
        limit = analyte.conditional_limit
        if limit is None:
            return usual
        other = judge(limit.fail_when)
        key = limit.model_dump_json(include={"condition_codes", "mentions", "label"})  # ALT's and AST's alike
        if key not in self._diagnoses:
            self._diagnoses[key] = _read(self.ctx, limit)
        diagnosis = self._diagnoses[key]
        differ = usual.result is not other.result
        usual_limit = f"limit {analyte.fail_when.text}"
        if diagnosis.known:
            reason = f"{other.reason} (limit {limit.fail_when.text}: {limit.label}, " \
                     f"{diagnosis.known[0].evidence.reference})"
            if differ:
                for f in diagnosis.known:
                    f.evidence.role = Role.DECISIVE
                self._by_diagnosis.add(reason)
            return replace(other, reason=reason)
        if diagnosis.unsure and differ:
            for evidence, _, _ in diagnosis.unsure:
                evidence.role = Role.DECISIVE
            _, why, said = diagnosis.unsure[0]
            reason = f"{usual.reason}, but {'' if other.result is Result.FAIL else 'not '}" \
                     f"{limit.fail_when.comparator} {limit.fail_when.text}, the limit with {limit.label}; {said}"
            self._by_diagnosis.add(reason)
            return replace(usual, result=Result.UNKNOWN, reason=reason, why=why)
        if diagnosis.unsure:
            reason = f"{usual.reason} ({usual_limit}, or {limit.fail_when.text} with {limit.label}: the same " \
                     f"result; {diagnosis.unsure[0][2]})"
        elif diagnosis.not_current:
            f = diagnosis.not_current[0]
            reason = f"{usual.reason} ({usual_limit}: {_named(f)} is {f.clinical}, not current)"
        else:
            reason = f"{usual.reason} ({usual_limit}: no {limit.label} recorded)"
        if differ:
            self._on_absence.add(reason)
        return replace(usual, reason=reason)

    def settled(self, outcome: Outcome, analytes: list[Outcome]) -> Outcome:
        """The criterion's outcome with the diagnoses read (each once; a deciding one beside the
        first result it decided, so that a card showing the first decisive evidence shows it),
        resting on the absence of a known one where that decided it (see evaluate._cut_short),
        and suggesting no order where only a diagnosis would settle it."""
        read = [e for diagnosis in self._diagnoses.values() for e in diagnosis.evidence()]
        beside = [e for e in read if e.role is Role.DECISIVE]
        evidence: list[Evidence] = []
        for o in analytes:  # LabRule.evaluate's evidence: each analyte's, in order
            evidence += o.evidence[:1]
            if o.reason in self._by_diagnosis:
                evidence, beside = evidence + beside, []
            evidence += o.evidence[1:]
        outcome.evidence = evidence + beside + [e for e in read if e.role is not Role.DECISIVE]
        decided = [o for o in analytes if o.result is outcome.result]
        if outcome.result is Result.UNKNOWN:
            outcome.orderable = outcome.orderable and not all(o.reason in self._by_diagnosis for o in decided)
        elif decided and (all if outcome.result is Result.FAIL else any)(o.reason in self._on_absence
                                                                          for o in decided):
            outcome.absence_of = ("Condition",)
        return outcome
