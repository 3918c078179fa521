"""NCT01325207's LVEF, WBC and creatinine limits, through the invented trial TEST-0004: all
three read by the `lab` kind (LVEF is an imaging measurement, read the same way). Boundaries
on both sides in every unit the table converts, what is never guessed (no unit, a unit that is
not UCUM, a fraction sent under %, text values), the windows, the orders, and what never
decides (stale, entered in error, a newer result under a local code)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest

from cds_service.engine import Result, evaluate
from cds_service.fhir.needs import data_needs
from cds_service.trials import DefinitionError, load_trial
from fhirbuild import LOINC, UCUM, concept, lab, patient

HERE = Path(__file__).parent
TRIAL = load_trial(HERE / "trials" / "TEST-0004.yaml")
AS_OF = dt.date(2026, 6, 15)
LVEF, LVEF_ECHO, WBC, CREAT, CREAT_MOLAR = "10230-1", "18043-0", "6690-2", "2160-0", "14682-9"
LOCAL = "urn:oid:1.2.840.114350.1.13.0.1.7.2.768282"  # an Epic-style local component code system
IMAGING = concept(("http://terminology.hl7.org/CodeSystem/observation-category", "imaging"))


def echo(value, unit="%", date="2026-06-01T10:00:00-04:00", *, code=LVEF, **extra):
    """An LVEF as an echo report sends it: imaging category, usually UCUM %."""
    return lab(code, value, unit, date, category=[IMAGING], **extra)


def judge(criterion, *observations):
    evaluation = evaluate(TRIAL, [patient()] + list(observations), AS_OF)
    return next(c for c in evaluation.criteria if c.id == criterion)


# -- LVEF -------------------------------------------------------------------

@pytest.mark.parametrize("value, unit, result", [
    (50, "%", Result.FAIL), (51, "%", Result.PASS), (50.0, "%", Result.FAIL), (50.1, "%", Result.PASS),
    (Decimal("0.50"), "1", Result.FAIL), (Decimal("0.51"), "1", Result.PASS),  # a fraction in UCUM 1
    (25, "%", Result.FAIL), (65, "%", Result.PASS)])
def test_lvef_boundary_as_written_in_percent_and_as_a_fraction(value, unit, result):
    c = judge("lvef", echo(value, unit))
    assert c.result is result and c.order is None
    decisive = c.evidence[0]
    assert decisive.role.value == "decisive" and decisive.code == f"{LOINC}|{LVEF}" and decisive.unit == unit
    assert decisive.date.startswith("2026-06-01") and decisive.converted.unit == "%"
    assert ("is <= 50 %" if result is Result.FAIL else "is not <= 50 %") in c.reason


def test_a_fraction_is_shown_converted_to_percent():
    c = judge("lvef", echo(Decimal("0.55"), "1"))
    assert c.result is Result.PASS and c.evidence[0].value == "0.55" and c.evidence[0].converted.value == 55
    assert "LVEF 55" in c.reason


def test_a_reported_comparator_decides_only_what_it_can():
    assert judge("lvef", echo(55, comparator=">")).result is Result.PASS  # ">55 %"
    assert judge("lvef", echo(50, comparator=">")).result is Result.PASS  # above 50: not <= 50
    assert judge("lvef", echo(20, comparator="<")).result is Result.FAIL
    c = judge("lvef", echo(55, comparator="<"))
    assert c.result is Result.UNKNOWN and c.why.value == "uninterpretable-value"


@pytest.mark.parametrize("quantity, why, words", [
    ({"value": 55}, "unit-not-convertible", "has no unit"),  # 0.55 or 55? never guessed
    ({"value": 0.55}, "unit-not-convertible", "has no unit"),
    ({"value": 55, "unit": "percent"}, "unit-not-convertible", "cannot be converted"),  # not UCUM
    # UCUM: an annotation alone is the unity 1, so 55 {ratio} is 5,500 %
    ({"value": 55, "unit": "{ratio}", "system": UCUM, "code": "{ratio}"}, "uninterpretable-value", "is 5500 %"),
    ({"value": 0.55, "unit": "%", "system": UCUM, "code": "%"}, "uninterpretable-value", "outside the possible 1-100 %"),
    ({"value": 55, "unit": "1", "system": UCUM, "code": "1"}, "uninterpretable-value", "is 5500 %"),
])
def test_a_value_whose_scale_cannot_be_known_is_unknown_and_suggests_the_echo(quantity, why, words):
    obs = echo(None, None, valueQuantity=quantity)
    c = judge("lvef", obs)
    assert c.result is Result.UNKNOWN and c.why.value == why and words in c.reason
    assert c.order.key == "echocardiogram" and c.order.code == "433236007"


@pytest.mark.parametrize("text", ["55%", "55-60", "normal", "55"])
def test_a_text_value_is_unknown_and_never_hands_over_to_an_older_result(text):
    older = echo(65, date="2026-05-01T10:00:00Z")
    c = judge("lvef", older, echo(None, valueString=text))
    assert c.result is Result.UNKNOWN and c.why.value == "uninterpretable-value" and f"'{text}'" in c.reason


def test_the_90_day_window_is_inclusive_and_a_stale_or_missing_lvef_suggests_an_echocardiogram():
    assert judge("lvef", echo(60, date="2026-03-17")).result is Result.PASS  # 90 days before
    stale = judge("lvef", echo(60, date="2026-03-16"))  # 91 days before
    assert stale.result is Result.UNKNOWN and stale.why.value == "stale" and "older than 90 days" in stale.reason
    none = judge("lvef")
    assert none.result is Result.UNKNOWN and none.why.value == "no-data"
    for c in (stale, none):
        assert (c.order.key, c.order.system, c.order.code) == ("echocardiogram", "http://snomed.info/sct", "433236007")


def test_method_specific_codes_count_and_the_latest_decides_whichever_method():
    c = judge("lvef", echo(60, date="2026-04-01", code=LVEF), echo(45, code=LVEF_ECHO),
              echo(58, date="2026-05-01", code="8811-2"))
    assert c.result is Result.FAIL and c.evidence[0].code == f"{LOINC}|{LVEF_ECHO}"


def test_a_local_code_beside_loinc_is_read_by_its_loinc_coding():
    obs = echo(62)
    obs["code"] = concept((LOCAL, "1234567", "LVEF (ECHO)"), (LOINC, LVEF_ECHO, "Left ventricular Ejection fraction by US"),
                          text="LVEF")
    c = judge("lvef", obs)
    assert c.result is Result.PASS and c.evidence[0].code == f"{LOINC}|{LVEF_ECHO}"


def test_a_newer_lvef_under_a_local_code_alone_makes_it_unknown_an_older_one_does_not():
    local = echo(35, date="2026-06-10T09:00:00Z")
    local["code"] = concept((LOCAL, "1234567"), text="LVEF")
    c = judge("lvef", echo(60), local)
    assert c.result is Result.UNKNOWN and c.why.value == "unrecognised-code"
    assert c.evidence[0].display == "LVEF" and "does not decide" in c.reason
    older = dict(local, effectiveDateTime="2026-05-20T09:00:00Z")
    assert judge("lvef", echo(60), older).result is Result.PASS
    # a right ventricular EF or the method beside the value is not an LVEF
    rv = dict(local, code=concept((LOCAL, "222"), text="RV EF (TAPSE-derived)"))
    method = echo(None, date="2026-06-10T09:00:00Z", valueString="biplane method of disks",
                  code="55406-3")
    method["code"]["coding"][0]["display"] = "Left ventricular Cardiac ejection fraction method"
    assert judge("lvef", echo(60), rv, method).result is Result.PASS


def test_entered_in_error_and_future_lvefs_are_ignored():
    wrong = echo(30, date="2026-06-10", status="entered-in-error")
    c = judge("lvef", echo(60), wrong)
    assert c.result is Result.PASS and any("entered-in-error" in (e.note or "") for e in c.evidence)
    assert judge("lvef", echo(30, date="2026-06-20")).why.value == "no-data"
    assert judge("lvef", echo(30, date=None)).why.value == "no-date"


# -- WBC --------------------------------------------------------------------

@pytest.mark.parametrize("value, unit, ucum, result", [
    (3.0, "10*3/uL", True, Result.FAIL), (3.1, "10*3/uL", True, Result.PASS),
    (3.0, "10*9/L", True, Result.FAIL), (3.1, "10*9/L", True, Result.PASS),
    (3000, "/uL", True, Result.FAIL), (3100, "/uL", True, Result.PASS),
    (3000, "/mm3", True, Result.FAIL), (3001, "/mm3", True, Result.PASS),
    (3.0, "K/uL", False, Result.FAIL), (3.1, "K/uL", False, Result.PASS),  # local spelling, alias table
    (3.0, "x10E3/uL", False, Result.FAIL), (3000, "cells/uL", False, Result.FAIL),
])
def test_wbc_boundary_in_every_unit(value, unit, ucum, result):
    c = judge("wbc", lab(WBC, value, unit, ucum=ucum))
    assert c.result is result and c.evidence[0].converted.unit == "10*9/L"
    assert ("is <= 3.0 10*9/L" if result is Result.FAIL else "is not <= 3.0 10*9/L") in c.reason


def test_wbc_siblings_count_and_a_missing_wbc_suggests_the_cbc():
    assert judge("wbc", lab("26464-8", 2.9, "10*3/uL")).result is Result.FAIL
    assert judge("wbc", lab("804-5", 4.2, "10*3/uL")).result is Result.PASS
    c = judge("wbc")
    assert c.result is Result.UNKNOWN and c.order.key == "cbc-with-differential" and c.order.code == "57021-8"


def test_a_csf_or_urine_count_is_not_a_blood_wbc():
    csf = lab("26465-5", 250, "/uL", "2026-06-10T09:00:00Z")
    csf["code"] = concept((LOINC, "26465-5", "Leukocytes [#/volume] in Cerebral spinal fluid"))
    urine = lab("LAB-UWBC", 40, "/[HPF]", "2026-06-10T09:00:00Z", system=LOCAL, ucum=False)
    urine["code"]["text"] = "WBC, urine"
    assert judge("wbc", lab(WBC, 5.1, "10*3/uL"), csf, urine).result is Result.PASS


def test_a_newer_wbc_under_a_local_code_alone_makes_it_unknown():
    local = lab("LAB-WBC", 2.1, "K/uL", "2026-06-10T09:00:00Z", system=LOCAL, ucum=False)
    local["code"]["text"] = "WBC"
    c = judge("wbc", lab(WBC, 5.1, "10*3/uL"), local)
    assert c.result is Result.UNKNOWN and c.why.value == "unrecognised-code"


# -- creatinine ---------------------------------------------------------------

@pytest.mark.parametrize("value, result", [(1.5, Result.FAIL), (1.49, Result.PASS), (2.0, Result.FAIL),
                                           (0.8, Result.PASS)])
def test_creatinine_boundary_against_the_results_own_uln(value, result):
    c = judge("creatinine", lab(CREAT, value, "mg/dL", high=1.0))
    assert c.result is result
    uln = c.evidence[0].uln
    assert uln.source == "referenceRange.high" and not uln.assumed and uln.value == 1
    assert ("is >= 1.5 × ULN 1.0 mg/dL" if result is Result.FAIL else "is not >= 1.5 × ULN") in c.reason


@pytest.mark.parametrize("value, result", [(1.8, Result.FAIL), (1.79, Result.PASS)])
def test_without_a_reference_range_the_fallback_uln_is_used_and_flagged(value, result):
    c = judge("creatinine", lab(CREAT, value, "mg/dL"))
    assert c.result is result and "(assumed ULN)" in c.reason
    uln = c.evidence[0].uln
    assert uln.assumed and uln.source == "fallback" and uln.value == Decimal("1.2") and "Quest" in uln.note


def test_molar_creatinine_against_its_own_range_and_through_the_bridge_to_the_fallback():
    assert judge("creatinine", lab(CREAT_MOLAR, 135, "umol/L", high=90)).result is Result.FAIL  # exactly 1.5 ×
    assert judge("creatinine", lab(CREAT_MOLAR, 134, "umol/L", high=90)).result is Result.PASS
    # no range: 1.2 mg/dL / 0.01131 = 106.1 umol/L, 1.5 × = 159.15
    assert judge("creatinine", lab(CREAT_MOLAR, 160, "µmol/L", ucum=False)).result is Result.FAIL
    c = judge("creatinine", lab(CREAT_MOLAR, 159, "umol/L"))
    assert c.result is Result.PASS and c.evidence[0].uln.assumed


def test_creatinine_siblings_count_and_post_dialysis_or_urine_draws_do_not():
    assert judge("creatinine", lab("38483-4", 2.0, "mg/dL", high=1.1)).result is Result.FAIL
    post = lab("11041-1", 0.9, "mg/dL", "2026-06-10T09:00:00Z", high=1.1)
    post["code"]["coding"][0]["display"] = "Creatinine [Mass/volume] in Serum or Plasma --post dialysis"
    urine = lab("2161-8", 0.5, "mg/dL", "2026-06-10T09:00:00Z")  # newer, and would pass if it were read
    urine["code"]["coding"][0]["display"] = "Creatinine [Mass/volume] in Urine"
    c = judge("creatinine", lab(CREAT, 2.0, "mg/dL", high=1.1), post, urine)
    assert c.result is Result.FAIL
    none = judge("creatinine")
    assert none.result is Result.UNKNOWN and none.order.key == "comprehensive-metabolic-panel"


def test_the_three_criteria_add_their_codes_to_the_newest_first_results_query():
    needs = {n.key: n for n in data_needs([TRIAL])}
    search = needs["labResults"]
    assert search.lookback_days == 90 and search.newest_first  # the longest window: LVEF's
    assert {(LOINC, LVEF), (LOINC, LVEF_ECHO), (LOINC, WBC), (LOINC, CREAT), (LOINC, "38483-4")} <= search.codes


@pytest.mark.parametrize("old, new, message", [
    ("validRange: [1, 100]", "validRange: [100, 1]", "low < high"),
    ('failWhen: {comparator: ">=", ulnMultiple: 1.5}',
     'failWhen: {comparator: ">=", ulnMultiple: 1.5}\n          validRange: [0, 10]', "needs an absolute failWhen"),
])
def test_a_valid_range_needs_an_absolute_threshold_and_low_below_high(tmp_path, old, new, message):
    text = (HERE / "trials" / "TEST-0004.yaml").read_text()
    assert old in text
    path = tmp_path / "TEST-0004.yaml"
    path.write_text(text.replace(old, new))
    with pytest.raises(DefinitionError, match=message):
        load_trial(path)


@pytest.mark.parametrize("unit", ["1", "{1}", "{ratio}", "{fraction}"])
def test_a_fraction_under_unity_or_an_annotation_alone_is_converted(unit):
    # UCUM §2.4.4: an annotation standing alone is the unity 1, as "1" is.
    def lvef(value):
        return judge("lvef", echo(None, None, valueQuantity={"value": value, "unit": unit, "system": UCUM,
                                                              "code": unit}))

    assert lvef(0.50).result is Result.FAIL and lvef(0.51).result is Result.PASS
