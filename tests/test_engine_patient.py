"""Alive and age: a deceased patient's age is counted to the date of death,
never past it, and is never shown (issue 13, item 8)."""

import datetime as dt
import json
import re

import pytest

from cds_service.engine import Result, Status, Why, evaluate
from cds_service.engine.dates import age_range_at_death, parse_fhir_date
from fhirbuild import patient

AS_OF = dt.date(2026, 6, 15)


def _evaluate(trial, pat, as_of=AS_OF):
    return evaluate(trial, [pat], as_of)


def _no_age_shown(evaluation, *ages: int):
    """No reason or evidence of the evaluation names one of these ages."""
    shown = [(c.reason, [e.to_json() for e in c.evidence]) for c in evaluation.criteria]
    text = json.dumps(shown, ensure_ascii=False).replace("18–75", "").replace("age 55", "")
    for age in ages:
        assert not re.search(rf"(?<![\d-]){age}(?![\d-])", text), f"age {age} shown: {text}"
    assert not re.search(r"\bage \d|patient is \d", text)


def test_a_living_patient_shows_the_age(nct06462092):
    age = _evaluate(nct06462092, patient("1975-04-02")).criterion("age")
    assert (age.result, age.reason, age.evidence[0].value) == (Result.PASS, "age 51 (required 18–75)", "age 51")


def test_age_is_counted_to_the_date_of_death_not_past_it(nct06462092):
    # 75 on the day of death; 76 on the evaluation date: counted past death, the patient would be too old.
    dead = patient("1950-06-12", deceasedDateTime="2026-06-11T22:10:00-04:00")
    e = _evaluate(nct06462092, dead)
    age = e.criterion("age")
    assert age.result is Result.PASS
    assert age.reason == "deceased; age on the date of death within 18–75"
    assert e.criterion("alive").result is Result.FAIL and e.status is Status.INELIGIBLE
    _no_age_shown(e, 75, 76)
    # The same patient alive is 76 and too old: the date of death, not the evaluation date, decided.
    assert _evaluate(nct06462092, patient("1950-06-12")).criterion("age").result is Result.FAIL


def test_age_at_death_below_the_minimum_fails_without_showing_it(nct06462092):
    e = _evaluate(nct06462092, patient("2003-02-01", deceasedDateTime="2020-08-30"))  # 17 at death, 23 now
    age = e.criterion("age")
    assert (age.result, age.reason) == (Result.FAIL, "deceased; age on the date of death outside 18–75")
    assert age.evidence and age.evidence[0].value is None and "not shown" in age.evidence[0].note
    _no_age_shown(e, 17, 23)


def test_deceased_without_a_date_is_unknown_unless_the_whole_range_decides(nct06462092):
    # Death on any day from birth to today: 0–51 straddles 18, so the age cannot be known.
    e = _evaluate(nct06462092, patient("1975-04-02", deceasedBoolean=True))
    age = e.criterion("age")
    assert (age.result, age.why) == (Result.UNKNOWN, Why.NO_DATE)
    assert age.reason == "deceased without a date of death: age at death unknown (required 18–75)"
    _no_age_shown(e, 51)
    # 0–11: every possible age is under 18.
    child = _evaluate(nct06462092, patient("2015-01-20", deceasedBoolean=True)).criterion("age")
    assert child.result is Result.FAIL
    # deceasedBoolean false is a living patient.
    assert _evaluate(nct06462092, patient("1975-04-02", deceasedBoolean=False)).criterion("age").reason == \
        "age 51 (required 18–75)"


def test_a_partial_date_of_death_decides_only_when_its_whole_range_does(nct06462092):
    # Died in 2026: on 1 January the patient was 75, by 15 June (the evaluation date) 76.
    age = _evaluate(nct06462092, patient("1950-06-12", deceasedDateTime="2026")).criterion("age")
    assert (age.result, age.why) == (Result.UNKNOWN, Why.PARTIAL_DATE)
    assert not re.search(r"\d{2}\b(?!–)", age.reason.replace("18–75", ""))
    # Died in March 2019: 68 whatever the day.
    assert _evaluate(nct06462092, patient("1950-06-12", deceasedDateTime="2019-03")).criterion("age").result \
        is Result.PASS


def test_an_evaluation_dated_before_the_death_counts_to_its_own_date(nct06462092):
    # Evaluated as of 2020 for a patient who died in 2024: 17 on the evaluation date (18 only at death).
    pat = patient("2003-02-01", deceasedDateTime="2024-05-02")
    assert _evaluate(nct06462092, pat, dt.date(2020, 6, 15)).criterion("age").result is Result.FAIL
    assert _evaluate(nct06462092, pat).criterion("age").result is Result.PASS


def test_applicability_by_age_uses_the_age_at_death_and_does_not_show_it(nct06462092):
    # contraception applies to women up to 55: 50 at death (2021), 55 would be 2026-06-10, 56 never.
    dead = patient("1970-06-10", deceasedDateTime="2021-01-05")
    e = _evaluate(nct06462092, dead)
    assert e.criterion("contraception").result is Result.REVIEW
    _no_age_shown(e, 50, 56)
    old = patient("1940-01-01", deceasedDateTime="2010-01-05")  # 70 at death
    c = _evaluate(nct06462092, old).criterion("contraception")
    assert c.result is Result.NOT_APPLICABLE and c.reason == "applies up to age 55; the patient was older at death"


@pytest.mark.parametrize("birth, death, expected", [
    ("1950-06-12", "2026-06-11", (75, 75)),
    ("1950-06-12", "2026-06-12", (76, 76)),
    ("1950-06-12", "2030-01-01", (76, 76)),  # a death after the evaluation date: counted to that date
    ("1950", "2000-06-30", (49, 50)),
    ("1950-06-12", "2026", (75, 76)),
    ("1950-06-12", None, (0, 76)),
    ("2020-01-01", "2019-12-31", (0, 0)),  # a death recorded before the birth is no negative age
])
def test_age_range_at_death(birth, death, expected):
    assert age_range_at_death(parse_fhir_date(birth), parse_fhir_date(death), AS_OF) == expected
