"""Cytology: a result positive for malignant cells on a specimen of a named type
(CSF), read from Observations and DiagnosticReports in the shapes EHRs send them.

What a result says (its value), read by code, or from text only when the whole
text is an exact qualitative word (base.qualitative_word):
  Observation        valueCodeableConcept, valueString; no value and a dataAbsentReason:
                     nothing to read; no value and none: its cytology report is read instead
                     when one lists it, else it is unreadable
  DiagnosticReport   conclusionCode; without one, the values of the results it lists (a
                     cytology result among them is read on its own), else its `conclusion`
                     text; a positive anywhere among these counts; with nothing to read, or
                     results that are not in the record, unreadable
A coded value in the positive set is positive; in the negative set (`negativeValueCodes`:
LOINC LA6577-6 / SNOMED 260385009 "Negative"...) negative; any other code, a text that is
not an exact word, or a value of another type is unreadable: the result may be positive,
so it never counts as negative (the lead's rule turns it into unknown).

Where the specimen is (its type read by code, in `specimenTypeCodes`): the Observation's
`specimen`, or that of any DiagnosticReport listing the Observation in `result`; a
report's own `specimen`, or its results'. Each is a reference in any form the record
resolves (relative, absolute, urn:uuid:, "#id" contained in the resource or its container).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from pydantic import Field

from ..codes import CodeSet
from ..model import Evidence, Role
from ..validation import InvalidResource
from .base import (NEGATIVE, POSITIVE, Context, RuleModel, coding_text, concept_in, matching_coding, observation_date,
                   qualitative_word)
from .readers import Reading, invalid_evidence, read_hit


class Cytology(RuleModel):
    """A positive cytology result on a named specimen type also qualifies."""

    codes: list[str] = Field(min_length=1)
    specimen_type_codes: list[str] = Field(min_length=1)
    positive_value_codes: list[str] = Field(min_length=1)
    # Coded answers that mean "no malignant cells". A coded value in neither set cannot be read:
    # without this list every coded value that is not positive is unreadable.
    negative_value_codes: list[str] = []
    label: str


class CytologyFindings(NamedTuple):
    positive: list[Evidence]  # positive for malignant cells, on the named specimen type
    unsure: list[Evidence]  # positive, on a specimen not recorded as that type
    unreadable: list[Evidence]  # resulted, but the value cannot be read: it may be positive
    ignored: list[Evidence]


# What one value says.
_UNREADABLE = "unreadable"


class _Value(NamedTuple):
    state: str  # POSITIVE, NEGATIVE or _UNREADABLE
    shown: str | None  # the value as recorded, for the evidence (None: there is none)


class _Sets(NamedTuple):
    cytology: CodeSet
    positive: CodeSet
    negative: CodeSet | None
    specimen: CodeSet


# DiagnosticReport statuses that are results, beyond the Observation statuses read_results takes:
# appended (final, with content added since) and partial (some results out: read as preliminary).
_MORE_REPORT_STATUSES = frozenset({"appended", "partial"})


def read_cytology(ctx: Context, spec: Cytology) -> CytologyFindings:
    sets = _Sets(ctx.codes(spec.codes), ctx.codes(spec.positive_value_codes),
                 ctx.codes(spec.negative_value_codes) if spec.negative_value_codes else None,
                 ctx.codes(spec.specimen_type_codes))
    found = CytologyFindings([], [], [], [])
    observations = ctx.record.find("Observation", sets.cytology)
    cytology_observations = {id(hit.raw) for hit in observations}
    reports = ctx.record.find("DiagnosticReport", sets.cytology)
    cytology_reports = {id(hit.raw) for hit in reports}
    for hit in observations:
        if hit.component is None:
            read = _read(ctx, hit, sets.cytology, "Observation")
            if isinstance(read, Reading):
                _observation(ctx, spec, sets, hit.raw, read, cytology_reports, found)
            else:
                found.ignored.append(read)
    for hit in reports:
        read = _read(ctx, hit, sets.cytology, "DiagnosticReport")
        if isinstance(read, Reading):
            _report(ctx, spec, sets, hit.raw, read, cytology_observations, found)
        else:
            found.ignored.append(read)
    return found


def _read(ctx: Context, hit: Any, codes: CodeSet, rtype: str) -> Reading | Evidence:
    read = read_hit(ctx, hit, codes)
    if isinstance(read, Reading) or rtype != "DiagnosticReport" or hit.raw.get("status") not in \
            _MORE_REPORT_STATUSES:
        return read
    try:  # a report appended to, or partial: a result like any other
        report = ctx.record.model(hit.raw)
    except InvalidResource as exc:  # pragma: no cover - read_hit has reported it already
        return invalid_evidence(ctx, hit.raw, exc)
    date = observation_date(report)
    read.role, read.note = Role.SUPPORTING, None
    if date is not None and date.first_day > ctx.as_of:
        read.role, read.note = Role.IGNORED, "dated after the evaluation date; ignored"
        return read
    return Reading(report, report, date, read)


def _observation(ctx: Context, spec: Cytology, sets: _Sets, raw: dict[str, Any], read: Reading,
                 cytology_reports: set[int], found: CytologyFindings) -> None:
    obs, ev = read.resource, read.evidence
    reports = ctx.record.reports_listing(raw)
    value = _observation_value(obs, sets)
    if value is None:  # no value
        if obs.dataAbsentReason is not None:
            reason = matching_text(obs.dataAbsentReason)
            ev.role, ev.note = Role.IGNORED, f"no value ({reason})" if reason else "no value"
            found.ignored.append(ev)
            return
        listing = [r for r in reports if id(r) in cytology_reports]
        if listing:  # a result whose report carries the finding: the report is read
            ev.role = Role.IGNORED
            ev.note = f"no value of its own; its report {ctx.record.reference(listing[0])} is read"
            found.ignored.append(ev)
            return
        value = _Value(_UNREADABLE, None)
    specimens = [(raw, ref) for ref in _refs(raw.get("specimen"))]
    specimens += [(report, ref) for report in reports for ref in _refs(report.get("specimen"))]
    _classify(ctx, spec, sets, value, ev, specimens, found)


def _report(ctx: Context, spec: Cytology, sets: _Sets, raw: dict[str, Any], read: Reading,
            cytology_observations: set[int], found: CytologyFindings) -> None:
    report, ev = read.resource, read.evidence
    results = ctx.record.referenced(raw, "result")
    coded = _concept_value(list(report.conclusionCode), sets) if report.conclusionCode else None
    text = _text_value(report.conclusion) if coded is None and report.conclusion else None
    from_results: list[tuple[_Value, dict[str, Any]]] = []
    deferred = []  # cytology results among its results: read on their own
    for result in results:
        if id(result) in cytology_observations:
            deferred.append(result)
        elif result.get("resourceType") == "Observation":
            try:
                model = ctx.record.model(result)
            except InvalidResource as exc:  # the finding may be in it
                found.ignored.append(invalid_evidence(ctx, result, exc))
                from_results.append((_Value(_UNREADABLE, None), result))
                continue
            if model.status in ("entered-in-error", "cancelled"):
                continue
            result_value = _observation_value(model, sets)
            if result_value is not None:
                from_results.append((result_value, result))
    positive = next(((v, r) for v, r in from_results if v.state == POSITIVE), None)
    unreadable = next(((v, r) for v, r in from_results if v.state == _UNREADABLE), None)
    if coded is not None and coded.state == POSITIVE:
        value = coded
    elif text is not None and text.state == POSITIVE:
        value = text
    elif positive is not None or (coded is None and from_results):
        # A positive result outranks the report's negative; without a coded conclusion, the
        # results' values are the report's (free text beside them is only their summary).
        value, result = positive or unreadable or from_results[0]
        ev.note = f"value from its result {ctx.record.reference(result)}"
    elif coded is not None:
        value = coded
    elif deferred:
        ev.role = Role.IGNORED
        ev.note = f"no coded finding of its own; its result {ctx.record.reference(deferred[0])} is read"
        found.ignored.append(ev)
        return
    elif text is not None:
        value = text
    else:
        value = _Value(_UNREADABLE, None)
        if _listed_missing(raw, results):
            ev.note = "no finding of its own, and the results it lists are not in the record"
    specimens = [(raw, ref) for ref in _refs(raw.get("specimen"))]
    specimens += [(result, ref) for result in results for ref in _refs(result.get("specimen"))]
    _classify(ctx, spec, sets, value, ev, specimens, found)


def _classify(ctx: Context, spec: Cytology, sets: _Sets, value: _Value, ev: Evidence,
              specimens: list[tuple[dict[str, Any], Any]], found: CytologyFindings) -> None:
    ev.value = value.shown
    if value.state == NEGATIVE:
        ev.role = Role.IGNORED
        ev.note = _join("negative for malignant cells", ev.note)
        found.ignored.append(ev)
        return
    on_type = any(_specimen_is(ctx, holder, ref, sets.specimen) for holder, ref in specimens)
    if value.state == POSITIVE:
        if on_type:
            found.positive.append(ev)
        else:
            ev.note = _join("specimen type not recorded as " + spec.label, ev.note)
            found.unsure.append(ev)
        return
    what = "value cannot be read" if value.shown is not None else "resulted without a readable value"
    ev.note = _join(what + ("" if on_type else f"; specimen type not recorded as {spec.label}"), ev.note)
    found.unreadable.append(ev)


def _join(first: str, then: str | None) -> str:
    return f"{first}; {then}" if then else first


def _observation_value(obs: Any, sets: _Sets) -> _Value | None:
    """What an Observation's value says; None when it has no value at all."""
    if obs.valueCodeableConcept is not None:
        return _concept_value([obs.valueCodeableConcept], sets)
    if obs.valueString is not None:
        return _text_value(obs.valueString)
    for name in ("valueQuantity", "valueBoolean", "valueInteger", "valueRange", "valueRatio",
                 "valueSampledData", "valueTime", "valueDateTime", "valuePeriod"):
        other = getattr(obs, name, None)
        if other is not None:
            return _Value(_UNREADABLE, str(getattr(other, "value", other)))
    return None


def _concept_value(concepts: list[Any], sets: _Sets) -> _Value:
    """Positive if any concept is, negative if every one is, else unreadable."""
    states = []
    for concept in concepts:
        coding = matching_coding(concept, sets.positive)
        if coding is not None:
            return _Value(POSITIVE, coding.display or coding.code)
        coding = matching_coding(concept, sets.negative) if sets.negative is not None else None
        if coding is not None:
            states.append(_Value(NEGATIVE, coding.display or coding.code))
        else:
            states.append(_Value(_UNREADABLE, _shown(concept)))
    return next((s for s in states if s.state == _UNREADABLE), None) or states[0]


def _shown(concept: Any) -> str | None:
    for coding in concept.coding or ():
        if coding.code:
            return f"{coding.display} ({coding_text(coding)})" if coding.display else coding_text(coding)
    return concept.text


def _text_value(text: str) -> _Value:
    word = qualitative_word(text)
    return _Value(word, text) if word is not None else _Value(_UNREADABLE, text)


def matching_text(concept: Any) -> str | None:
    for coding in concept.coding or ():
        if coding.code:
            return coding.display or coding.code
    return concept.text


def _refs(value: Any) -> list[str]:
    refs = value if isinstance(value, list) else [value]
    return [r["reference"] for r in refs if isinstance(r, dict) and isinstance(r.get("reference"), str)]


def _listed_missing(raw: dict[str, Any], results: list[dict[str, Any]]) -> bool:
    return len(_refs(raw.get("result"))) > len(results)


def _specimen_is(ctx: Context, holder: dict[str, Any], reference: str, types: CodeSet) -> bool:
    target = ctx.record.resolve(reference, holder)
    if target is None or target.get("resourceType") != "Specimen":
        return False
    try:
        specimen = ctx.record.model(target)
    except InvalidResource:
        return False
    return concept_in(specimen.type, types)
