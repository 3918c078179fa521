"""Evaluate one trial for one patient on a given date."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, Callable, Iterable, Mapping

from .codes import CodeEntry, CodeSet, coding_key
from .definition import AppliesTo, Criterion, TrialDefinition
from .model import CriterionResult, Result, TrialEvaluation, Why
from .quantities import UnitTable
from .record import Cut, PatientRecord
from .rules.base import CodeLibrary, Context, Outcome
from .rules.mentions import any_of_names


@dataclass
class Trial:
    """A trial definition with the code sets and unit table it was validated against."""

    definition: TrialDefinition
    library: CodeLibrary
    units: UnitTable

    @property
    def id(self) -> str:
        return self.definition.nct_id

    def codesets_used(self) -> dict[str, CodeSet]:
        names = {n for c in self.definition.criteria for n in c.rule.codeset_names()}
        return {n: self.library.sets[n] for n in sorted(names)}

    def with_extra_codes(self, extra: Mapping[str, Iterable[tuple[str, str]]]) -> "Trial":
        """This trial with more members in some of its named code sets: (system, code)
        keys a terminology server said belong to the set (its intension or ValueSet).
        The shipped members all stay. Names the trial does not use, and keys a set
        already holds, are left out; when nothing is left, the trial itself."""
        added = []
        for name, keys in extra.items():
            codeset = self.library.sets.get(name)
            if codeset is None or name not in self._names_used:
                continue
            new = frozenset(k for k in (coding_key(*key) for key in keys) if k is not None and not codeset.contains(k))
            if new:
                added.append((name, new))
        if not added:
            return self
        sets = dict(self.library.sets)
        for name, keys in added:
            sets[name] = _with_members(sets[name], keys)
        return Trial(definition=self.definition, library=CodeLibrary(sets), units=self.units)

    @cached_property
    def result_names(self) -> Callable[[str], bool] | None:
        """What the criteria look for among results coded in none of the trial's sets."""
        return any_of_names(self.definition.result_mentions())

    @cached_property
    def _names_used(self) -> frozenset[str]:
        return frozenset(n for c in self.definition.criteria for n in c.rule.codeset_names())


def _with_members(codeset: CodeSet, keys: frozenset[tuple[str, str]]) -> CodeSet:
    """A copy of `codeset` with the given keys as members, each sourced to the terminology
    server's answer: $subsumes for a code in the system of one of the set's intension roots,
    else $validate-code against its ValueSet. No display: evidence shows the record's own."""
    entries = list(codeset.entries)
    for system, code in sorted(keys):
        roots = [root for root_system, root in codeset.intension if root_system == system]
        if roots:
            source = "terminology server $subsumes " + " or ".join(f"<< {root}" for root in roots)
        elif codeset.value_set:
            source = f"terminology server $validate-code {codeset.value_set}"
        else:
            source = "terminology server"
        entries.append(CodeEntry(system=system, code=code, prefix=None, display="", source=source))
    return CodeSet(name=codeset.name, title=codeset.title, entries=entries, provenance=codeset.provenance,
                   intension=codeset.intension, value_set=codeset.value_set)


def evaluate(trial: Trial, record: PatientRecord | Iterable[dict[str, Any]], as_of: dt.date, *,
             until_ineligible: bool = False) -> TrialEvaluation:
    """Pure: the same record and date always give the same evaluation. `until_ineligible`:
    stop at the first criterion that fails, since the trial is then ineligible whatever the
    rest say (complete=False); for an answer that shows no card for an ineligible trial, where
    several trials are screened and most patients fail one of them early (HER2 status)."""
    if not isinstance(record, PatientRecord):
        record = PatientRecord(record)
    ctx = Context(record=record, as_of=as_of, library=trial.library, units=trial.units,
                  result_names=trial.result_names)
    results = []
    complete = True
    for criterion in trial.definition.criteria:
        results.append(_evaluate_criterion(trial, criterion, ctx))
        if until_ineligible and results[-1].result is Result.FAIL:
            complete = len(results) == len(trial.definition.criteria)
            break
    patient_id = record.patient_raw.get("id") if record.patient_raw else None
    return TrialEvaluation(trial=trial.id, definition_version=trial.definition.definition_version,
                           patient=patient_id if isinstance(patient_id, str) else None, as_of=as_of,
                           criteria=results, complete=complete)


def _evaluate_criterion(trial: Trial, criterion: Criterion, ctx: Context) -> CriterionResult:
    if criterion.applies_to is not None:
        outside = _outside(criterion.applies_to, ctx)
        if outside:
            return CriterionResult(criterion.id, criterion.kind, Result.NOT_APPLICABLE, outside,
                                   title=criterion.title)
    outcome = criterion.rule.evaluate(ctx)
    if ctx.record.cuts:
        outcome = _cut_short(outcome, criterion, ctx)
    order = None
    why = outcome.why if outcome.result is Result.UNKNOWN or outcome.result is Result.REVIEW else None
    if outcome.result is Result.UNKNOWN:
        if outcome.orderable:
            order_key = outcome.order or criterion.rule.default_order()
            if order_key:
                order = trial.definition.orders[order_key].as_order(order_key)
    # Positional (id, kind, result, reason, evidence, why, order, title, not_read): made for every
    # criterion of every call.
    return CriterionResult(criterion.id, criterion.kind, outcome.result, outcome.reason, outcome.evidence, why,
                           order, criterion.title, outcome.not_read)


def _cut_short(outcome: Outcome, criterion: Criterion, ctx: Context) -> Outcome:
    """The outcome, or unknown (incomplete-data) if what it rests on may be among
    what a FHIR search cut short (page limit, deadline, look-back) left out, or what an
    optional query never obtained (Cut.not_obtained): resources of
    which it found none, or the newest results of its tests when the search's
    pages did not come newest first (a newer result would settle the latter). Called
    only when some search was cut or not made (ctx.record.cuts)."""
    if not (outcome.absence_of or outcome.newest_of):
        return outcome
    reads = criterion.rule.reads()
    covering: dict[str, list[Cut]] = {  # each type the outcome rests on -> the cuts that may hide some of it
        t: [c for c in ctx.record.cuts if c.covers(t, ctx.library.get(reads[t]) if reads.get(t) else None)]
        for t in {*outcome.absence_of, *outcome.newest_of}}

    def cut_types(types: tuple[str, ...], out_of_order: bool) -> list[str]:
        return [t for t in types if any(not out_of_order or not c.newest_first for c in covering[t])]

    missing, newer = cut_types(outcome.absence_of, False), False
    if not missing:
        missing, newer = cut_types(outcome.newest_of, True), True
        if not missing:
            if outcome.result is Result.UNKNOWN and cut_types(outcome.newest_of, False):
                # Older results were cut: they cannot decide, but a stale one would have been named.
                return replace(outcome, reason=f"{outcome.reason} (older results were not fetched: the FHIR "
                                               "search was cut short)")
            return outcome
    if not newer and all(c.not_obtained for t in missing for c in covering[t]):
        return Outcome(Result.UNKNOWN, f"{outcome.reason}, but {', '.join(missing)} data was not obtained (not "
                       "prefetched, and not fetched): it cannot be ruled out", outcome.evidence,
                       why=Why.INCOMPLETE_DATA, not_read=outcome.not_read)
    how = ("was cut short (page or time limit) and not in date order: a newer result may be missing" if newer
           else "was cut short (page or time limit): it cannot be ruled out")
    return Outcome(Result.UNKNOWN, f"{outcome.reason}, but the FHIR server's answer for {', '.join(missing)} {how}",
                   outcome.evidence, why=Why.INCOMPLETE_DATA, orderable=newer, not_read=outcome.not_read)


def _outside(groups: list[AppliesTo], ctx: Context) -> str | None:
    """Why the criterion concerns none of its groups of patients, or None if it concerns
    (or may concern) the patient. Of several groups, the reason given is that of the first
    whose sex is the patient's (its age is what rules the patient out)."""
    reasons = []
    for applies in groups:
        reason = _outside_group(applies, ctx)
        if reason is None:
            return None
        reasons.append((applies.sex is not None and applies.sex == ctx.sex, reason))
    return next((reason for same_sex, reason in reasons if same_sex), reasons[0][1])


def _outside_group(applies: AppliesTo, ctx: Context) -> str | None:
    if applies.sex is not None and ctx.sex is not None and ctx.sex != applies.sex:
        return f"applies to {applies.sex} patients only"
    if applies.max_age is None and applies.min_age is None:
        return None
    age = ctx.age  # a deceased patient's age at death, never shown
    if age is not None:
        if applies.max_age is not None and age.youngest > applies.max_age:
            return f"applies up to age {applies.max_age}; " + \
                ("the patient was older at death" if age.deceased else f"patient is {age.youngest}")
        if applies.min_age is not None and age.oldest < applies.min_age:
            return f"applies from age {applies.min_age}; " + \
                ("the patient was younger at death" if age.deceased else f"patient is {age.oldest}")
    return None
