"""Lab criteria: latest valid result, windows, units, ULN, evidence."""

import datetime as dt
from decimal import Decimal

import pytest

from cds_service.engine import Result, Why, evaluate
from cds_service.engine.model import Role
from fhirbuild import LOINC, lab, patient

AS_OF = dt.date(2026, 6, 15)


def run(trial, *resources, criterion):
    return evaluate(trial, [patient(), *resources], AS_OF).criterion(criterion)


def test_evidence_carries_recorded_and_converted_value(nct06462092):
    c = run(nct06462092, lab("751-8", 1500, "/mm3", high=7500), criterion="neutrophils")
    assert c.result is Result.FAIL
    ev = c.evidence[0]
    assert ev.role is Role.DECISIVE
    assert (ev.value, ev.unit) == ("1500", "/mm3")
    assert ev.converted.value == Decimal("1.5") and ev.converted.unit == "10*9/L"
    assert ev.date.startswith("2026-06-01T09:30:00") and ev.status == "final"
    assert ev.code == f"{LOINC}|751-8"
    assert ev.reference.startswith("Observation/")
    assert c.to_json()["evidence"][0]["converted"] == {"value": "1.500", "unit": "10*9/L"}


def test_latest_result_decides_even_when_an_older_one_differs(nct06462092):
    old_low = lab("751-8", 0.9, "10*3/uL", "2026-05-25T08:00:00Z")
    new_ok = lab("751-8", 2.4, "10*3/uL", "2026-06-10T08:00:00Z")
    c = run(nct06462092, old_low, new_ok, criterion="neutrophils")
    assert c.result is Result.PASS
    assert [e.role for e in c.evidence] == [Role.DECISIVE] and c.not_read == 1  # the older one is only counted


def test_stale_latest_result_is_unknown_even_if_it_would_fail(nct06462092):
    c = run(nct06462092, lab("777-3", 40, "10*3/uL", "2026-05-01"), criterion="platelets")
    assert (c.result, c.why) == (Result.UNKNOWN, Why.STALE)
    assert c.order is not None and c.order.code == "57021-8"


def test_an_undated_result_never_decides(nct06462092):
    c = run(nct06462092, lab("777-3", 40, "10*3/uL", date=None), criterion="platelets")
    assert (c.result, c.why) == (Result.UNKNOWN, Why.NO_DATE)
    fresh = lab("777-3", 150, "10*3/uL", "2026-06-12")
    c = run(nct06462092, lab("777-3", 40, "10*3/uL", date=None), fresh, criterion="platelets")
    assert c.result is Result.PASS


@pytest.mark.parametrize("status, counts", [("final", True), ("amended", True), ("corrected", True),
                                            ("preliminary", True), ("entered-in-error", False),
                                            ("cancelled", False), ("registered", False)])
def test_observation_status_filter(nct06462092, status, counts):
    older_ok = lab("718-7", 12.5, "g/dL", "2026-06-01")
    newer_low = lab("718-7", 7.0, "g/dL", "2026-06-10", status=status)
    c = run(nct06462092, older_ok, newer_low, criterion="hemoglobin")
    assert c.result is (Result.FAIL if counts else Result.PASS)


def test_results_after_the_evaluation_date_are_ignored(nct06462092):
    c = run(nct06462092, lab("718-7", 12.5, "g/dL", "2026-06-01"), lab("718-7", 7.0, "g/dL", "2026-06-20"),
            criterion="hemoglobin")
    assert c.result is Result.PASS
    assert any("after the evaluation date" in (e.note or "") for e in c.evidence)


def test_same_instant_disagreement_is_conflicting(nct06462092):
    at = "2026-06-10T08:00:00Z"
    c = run(nct06462092, lab("718-7", 12.5, "g/dL", at), lab("718-7", 85, "g/L", at), criterion="hemoglobin")
    assert (c.result, c.why) == (Result.UNKNOWN, Why.CONFLICTING_RESULTS)
    # the same value reported twice (two units) is not a conflict
    c = run(nct06462092, lab("718-7", 12.5, "g/dL", at), lab("718-7", 125, "g/L", at), criterion="hemoglobin")
    assert c.result is Result.PASS


@pytest.mark.parametrize("comparator, value, expected", [
    ("<", 0.5, Result.FAIL),  # certainly below 1.5
    ("<", 1.5, Result.FAIL),  # below 1.5 is <= 1.5
    ("<=", 1.5, Result.FAIL),
    ("<", 2.0, Result.UNKNOWN),  # could be either side
    (">", 1.5, Result.PASS),  # above 1.5
    (">=", 1.5, Result.UNKNOWN),  # could be exactly 1.5
    (">", 1.4, Result.UNKNOWN),
])
def test_reported_comparators_are_intervals(nct06462092, comparator, value, expected):
    c = run(nct06462092, lab("751-8", value, "10*3/uL", comparator=comparator), criterion="neutrophils")
    assert c.result is expected
    if expected is Result.UNKNOWN:
        assert c.why is Why.UNINTERPRETABLE


def test_uln_from_reference_range_converted_to_the_value_unit(nct06462092):
    # value in umol/L, range given in mg/dL: ULN 1.2 mg/dL = 20.51 umol/L; 31 umol/L = 1.51 x ULN -> fail
    c = run(nct06462092, lab("1975-2", 31, "umol/L", high=1.2, high_unit="mg/dL"), criterion="bilirubin")
    assert c.result is Result.FAIL
    ev = c.evidence[0]
    assert ev.uln.source == "referenceRange.high" and not ev.uln.assumed and ev.uln.unit == "umol/L"
    assert abs(ev.uln.value - Decimal("20.512820")) < Decimal("0.0001")


def test_fallback_uln_is_flagged_as_assumed(nct06462092):
    c = run(nct06462092, lab("1975-2", 1.5, "mg/dL"), criterion="bilirubin")
    assert c.result is Result.FAIL  # exactly 1.5 x the fallback 1.0 mg/dL
    ev = c.evidence[0]
    assert ev.uln.assumed and ev.uln.source == "fallback" and ev.uln.value == Decimal("1.0")
    assert "assumed" in c.reason
    assert ev.to_json()["uln"]["assumed"] is True


def test_reference_range_without_unit_is_taken_in_the_value_unit(nct06462092):
    c = run(nct06462092, lab("1742-6", 100, "U/L", high=40, high_unit=None), lab("1920-8", 20, "U/L", high=40),
            criterion="transaminases")
    assert c.result is Result.FAIL  # 100 >= 2.5 x 40
    assert "taken to be the result's unit" in c.evidence[0].uln.note


def test_transaminases_any_high_fails_and_missing_one_is_unknown(nct06462092):
    alt_high = lab("1742-6", 101, "U/L", high=40)
    ast_ok = lab("1920-8", 20, "U/L", high=40)
    assert run(nct06462092, alt_high, criterion="transaminases").result is Result.FAIL  # AST missing, ALT fails
    alt_ok = lab("1742-6", 30, "U/L", high=40)
    c = run(nct06462092, alt_ok, criterion="transaminases")
    assert (c.result, c.why) == (Result.UNKNOWN, Why.NO_DATA) and "AST" in c.reason
    assert run(nct06462092, alt_ok, ast_ok, criterion="transaminases").result is Result.PASS


def test_unconvertible_unit_is_unknown(nct06462092):
    c = run(nct06462092, lab("751-8", 62, "%"), criterion="neutrophils")
    assert (c.result, c.why) == (Result.UNKNOWN, Why.UNIT_NOT_CONVERTIBLE)


def test_value_from_an_observation_component(nct06462092):
    panel = lab("58410-2", date="2026-06-05T10:00:00Z")
    panel["component"] = [
        {"code": {"coding": [{"system": LOINC, "code": "777-3"}]},
         "valueQuantity": {"value": 88, "unit": "10*3/uL", "system": "http://unitsofmeasure.org",
                           "code": "10*3/uL"}}]
    c = run(nct06462092, panel, criterion="platelets")
    assert c.result is Result.FAIL


def test_invalid_resource_is_reported_not_fatal(nct06462092):
    broken = lab("751-8", 2.0, "10*3/uL")
    broken["valueQuantity"]["value"] = "two"
    c = run(nct06462092, broken, criterion="neutrophils")
    assert (c.result, c.why) == (Result.UNKNOWN, Why.INVALID_RESOURCE)
    assert "valueQuantity.value" in c.evidence[0].note
    # a valid result next to it still decides
    c = run(nct06462092, broken, lab("751-8", 2.0, "10*3/uL"), criterion="neutrophils")
    assert c.result is Result.PASS


@pytest.mark.parametrize("value", ["1e999999999999", "-1e400", 1e308, "1" * 400, "0." + "0" * 40 + "1",
                                   "0E+999999999", "1e-400"])
@pytest.mark.parametrize("code, criterion", [("751-8", "neutrophils"), ("1975-2", "bilirubin")])
def test_a_number_far_beyond_any_lab_value_is_invalid_not_fatal(nct06462092, value, code, criterion):
    # fhir.resources takes "1e999999999999": formatting it needed a terabyte, and arithmetic on
    # such values overflowed or failed to round (500s found by tests/test_fuzz.py)
    c = run(nct06462092, lab(code, value, "mg/dL" if code == "1975-2" else "10*3/uL", high=1.2),
            criterion=criterion)
    assert (c.result, c.why) == (Result.UNKNOWN, Why.INVALID_RESOURCE)
    assert "valueQuantity.value: number out of range" in c.evidence[0].note
    c = run(nct06462092, lab("1975-2", 0.6, "mg/dL", high=value), criterion="bilirubin")
    assert (c.result, c.why) == (Result.UNKNOWN, Why.INVALID_RESOURCE)


@pytest.mark.parametrize("value, unit, high, high_unit", [
    ("1e30", "mg/dL", "1e-30", "mg/dL"),  # both within range; the ratio has 61 digits
    (0.6, "10*30.mg/dL", 1.2, "10*-30.mg/dL"),
])
def test_an_extreme_ratio_to_uln_is_kept_not_fatal(nct06462092, value, unit, high, high_unit):
    c = run(nct06462092, lab("1975-2", value, unit, high=high, high_unit=high_unit), criterion="bilirubin")
    assert c.result is Result.FAIL
    assert c.evidence[0].ratio_to_uln > Decimal("1e50")
    assert c.to_json()["evidence"][0]["ratioToUln"]


def test_codes_matched_by_code_not_display(nct06462092):
    # a platelet count mislabelled with the ANC display is still a platelet count
    plt = lab("777-3", 50, "10*3/uL")
    plt["code"]["coding"][0]["display"] = "Neutrophils [#/volume] in Blood by Automated count"
    assert run(nct06462092, plt, criterion="neutrophils").why is Why.NO_DATA
    # a local code with the right display is not read as an ANC (0.4 would fail): it is named, so unknown
    local = lab("NEUT-ABS", 0.4, "10*3/uL", system="http://lab.example.org/codes")
    local["code"]["coding"][0]["display"] = "Neutrophils [#/volume] in Blood by Automated count"
    c = run(nct06462092, local, criterion="neutrophils")
    assert (c.result, c.why) == (Result.UNKNOWN, Why.UNRECOGNISED_CODE)
