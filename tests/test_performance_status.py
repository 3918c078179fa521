"""The performance-status kind, through the invented trial TEST-0003 (KPS > 50, read as
KPS >= 60; ECOG only when no KPS is recorded in the 30 days): boundaries, the preferred
scale, the shapes EHRs send (valueInteger, unitless quantities, LOINC answers, SNOMED
findings as code or value, strings), and what never decides (stale, undated, unreadable,
a newer result under a local code)."""

from __future__ import annotations

import datetime as dt
import itertools
import textwrap
from pathlib import Path

import pytest

from cds_service.engine import Result, evaluate
from cds_service.fhir.needs import data_needs
from cds_service.trials import DefinitionError, load_trial
from fhirbuild import LOINC, PATIENT_REF, SNOMED, UCUM, concept, patient

TRIAL = load_trial(Path(__file__).parent / "trials" / "TEST-0003.yaml")
AS_OF = dt.date(2026, 6, 15)
KPS, ECOG = "89243-0", "89247-1"
_ids = itertools.count(1)


def assessment(code, date="2026-06-10T10:00:00-04:00", *, system=LOINC, text=None, **value):
    obs = {"resourceType": "Observation", "id": f"ps-{next(_ids)}",
           "status": "final", "code": concept((system, code), text=text), "subject": PATIENT_REF,
           "category": [concept(("http://terminology.hl7.org/CodeSystem/observation-category", "survey"))]}
    if date:
        obs["effectiveDateTime"] = date
    obs.update(value)
    return obs


def judge(*observations):
    evaluation = evaluate(TRIAL, [patient()] + list(observations), AS_OF)
    return next(c for c in evaluation.criteria if c.id == "performance-status")


@pytest.mark.parametrize("score, result", [(100, Result.PASS), (60, Result.PASS), (50, Result.FAIL),
                                           (0, Result.FAIL)])
def test_karnofsky_boundaries_as_written(score, result):
    c = judge(assessment(KPS, valueInteger=score))
    assert c.result is result and f"KPS {score}" in c.reason
    assert c.evidence[0].role.value == "decisive" and c.evidence[0].value == str(score)


@pytest.mark.parametrize("score, result", [(0, Result.PASS), (1, Result.PASS), (3, Result.FAIL), (4, Result.FAIL),
                                           (5, Result.FAIL)])
def test_ecog_decides_when_no_karnofsky_is_recorded(score, result):
    assert judge(assessment(ECOG, valueInteger=score)).result is result


def test_ecog_2_is_unknown_and_says_why_without_an_order():
    c = judge(assessment(ECOG, valueInteger=2))
    assert c.result is Result.UNKNOWN and c.why.value == "equivocal"
    assert "ECOG 2 spans KPS 50-70; record a KPS" in c.reason and c.order is None


def test_a_recent_karnofsky_decides_over_a_newer_ecog():
    c = judge(assessment(KPS, "2026-06-01", valueInteger=50), assessment(ECOG, "2026-06-12", valueInteger=0))
    assert c.result is Result.FAIL and "KPS 50" in c.reason


def test_a_stale_karnofsky_hands_over_to_a_recent_ecog_and_only_stale_ones_are_unknown():
    assert judge(assessment(KPS, "2026-04-01", valueInteger=90),
                 assessment(ECOG, "2026-06-12", valueInteger=3)).result is Result.FAIL
    c = judge(assessment(KPS, "2026-04-01", valueInteger=90))
    assert c.result is Result.UNKNOWN and c.why.value == "stale" and "older than 30 days" in c.reason


def test_the_look_back_is_inclusive():
    assert judge(assessment(KPS, "2026-05-16", valueInteger=80)).result is Result.PASS  # 30 days before
    assert judge(assessment(KPS, "2026-05-15", valueInteger=80)).why.value == "stale"  # 31 days before


def test_none_recorded_is_unknown_without_an_order():
    c = judge()
    assert c.result is Result.UNKNOWN and c.why.value == "no-data" and c.order is None
    assert "no performance status (KPS or ECOG)" in c.reason


@pytest.mark.parametrize("value, result", [
    ({"valueQuantity": {"value": 70, "unit": "{score}", "system": UCUM, "code": "{score}"}}, Result.PASS),
    ({"valueQuantity": {"value": 40}}, Result.FAIL),  # no unit at all
    ({"valueQuantity": {"value": 70.0, "unit": "%"}}, Result.UNKNOWN),  # a unit: not a score
    ({"valueQuantity": {"value": 75}}, Result.UNKNOWN),  # not a KPS score (tens)
    ({"valueInteger": 110}, Result.UNKNOWN),  # outside the scale
    ({"valueString": "70"}, Result.UNKNOWN),  # strings are not read
    ({"valueCodeableConcept": concept((LOINC, "LA29176-7", "Able to carry on normal activity"))}, Result.UNKNOWN),
])
def test_karnofsky_shapes(value, result):
    c = judge(assessment(KPS, **value))
    assert c.result is result
    if result is Result.UNKNOWN:
        assert c.why.value == "uninterpretable-value" and "cannot be read" in c.reason


def test_ecog_as_a_loinc_answer_or_a_snomed_finding_in_the_value_or_as_the_code():
    assert judge(assessment(ECOG, valueCodeableConcept=concept((LOINC, "LA9623-5")))).result is Result.PASS
    assert judge(assessment(ECOG, valueCodeableConcept=concept((SNOMED, "423053003")))).result is Result.FAIL
    # The finding itself as the Observation's code, no value (as problem-list style EHRs send it).
    c = judge(assessment("422894000", system=SNOMED))
    assert c.result is Result.UNKNOWN and c.why.value == "equivocal"


def test_an_unreadable_latest_score_never_hands_over_to_an_older_one():
    c = judge(assessment(KPS, "2026-06-01", valueInteger=90), assessment(KPS, "2026-06-12", valueString="good"))
    assert c.result is Result.UNKNOWN and c.why.value == "uninterpretable-value" and "'good'" in c.reason
    # a known absence (dataAbsentReason, no value) does not stand in the way
    absent = assessment(KPS, "2026-06-12", dataAbsentReason=concept(
        ("http://terminology.hl7.org/CodeSystem/data-absent-reason", "not-performed")))
    assert judge(assessment(KPS, "2026-06-01", valueInteger=90), absent).result is Result.PASS


def test_scores_at_the_same_time_that_disagree_are_unknown():
    c = judge(assessment(KPS, valueInteger=90), assessment(KPS, valueInteger=40))
    assert c.result is Result.UNKNOWN and c.why.value == "conflicting-results"


def test_undated_entered_in_error_and_future_results_do_not_decide():
    assert judge(assessment(KPS, None, valueInteger=90)).why.value == "no-date"
    wrong = assessment(KPS, valueInteger=90)
    wrong["status"] = "entered-in-error"
    assert judge(wrong).why.value == "no-data"
    assert judge(assessment(KPS, "2026-07-01", valueInteger=90)).why.value == "no-data"


def test_a_newer_result_under_a_local_code_named_like_a_scale_makes_it_unknown():
    local = assessment("PS-KARN", "2026-06-12", system="urn:oid:1.2.840.114350.1.13.0.1.7.2.768282",
                       text="Karnofsky score", valueInteger=40)
    c = judge(assessment(KPS, "2026-06-01", valueInteger=90), local)
    assert c.result is Result.UNKNOWN and c.why.value == "unrecognised-code"
    assert c.evidence[0].display == "Karnofsky score"
    # older than the deciding score: it does not matter
    older = dict(local, effectiveDateTime="2026-05-20")
    assert judge(assessment(KPS, "2026-06-01", valueInteger=90), older).result is Result.PASS


def test_the_kind_adds_its_codes_to_the_newest_first_results_query():
    needs = {n.key: n for n in data_needs([TRIAL])}
    search = needs["labResults"]
    assert search.lookback_days == 30 and search.newest_first
    assert {("http://loinc.org", KPS), ("http://loinc.org", ECOG), ("http://snomed.info/sct", "423053003")} <= \
        search.codes


@pytest.mark.parametrize("scale, message", [
    ("{name: KPS, minimum: 0, maximum: 100, step: 10, codes: [karnofsky-performance-status], "
     "passes: {atLeast: 60}, fails: {atMost: 60}}", "score 60 would both pass and fail"),
    ("{name: KPS, minimum: 0, maximum: 100, codes: [karnofsky-performance-status], "
     "passes: {atLeast: 60}, fails: {atMost: 50}}", "some scores neither pass nor fail"),
    ("{name: KPS, minimum: 0, maximum: 100, step: 10, passes: {atLeast: 60}, fails: {atMost: 50}}",
     "give codes, grades or both"),
    ("{name: KPS, minimum: 0, maximum: 100, step: 10, codes: [karnofsky-performance-status], "
     "passes: {atLeast: 60, atMost: 90}, fails: {atMost: 50}}", "give either atLeast or atMost"),
    ("{name: ECOG, minimum: 0, maximum: 5, grades: [{score: 7, codes: [ecog-grade-0]}], "
     "passes: {atMost: 1}, fails: {atLeast: 2}}", "grade 7 is not a score of the scale"),
])
def test_a_scale_that_cannot_decide_every_score_is_refused_when_the_trial_loads(tmp_path, scale, message):
    text = (Path(__file__).parent / "trials" / "TEST-0003.yaml").read_text()
    start = text.index("      scales:")
    end = text.index("      mentions:")
    broken = text[:start] + textwrap.indent(f"scales:\n  - {scale}\n", "      ") + text[end:]
    path = tmp_path / "TEST-0003.yaml"
    path.write_text(broken)
    with pytest.raises(DefinitionError, match=message):
        load_trial(path)
