"""Data cut short: when a FHIR search stopped at the page limit or the deadline,
some resources it asked for may never have arrived. An answer that rests on
finding nothing of those ("no HIV recorded", "no breast cancer recorded", "no
study-drug allergy") is then unknown; an answer resting on what was found
stands, and so does one resting on resources the cut search did not ask for."""

import datetime as dt

import pytest

from cds_service.engine import Cut, PatientRecord, Result, Why, evaluate
from cds_service.engine.codes import coding_key
from fhirbuild import ICD10CM, SNOMED, allergy, condition, lab, patient

AS_OF = dt.date(2026, 6, 15)


def run(trial, *resources, criterion, cuts=()):
    record = PatientRecord([patient(), *resources], cuts=cuts)
    return evaluate(trial, record, AS_OF).criterion(criterion)


def loinc(*codes):
    return frozenset(coding_key("http://loinc.org", c) for c in codes)


BLOOD_COUNTS = loinc("751-8", "777-3", "718-7")  # what a cut lab history query asked for


@pytest.mark.parametrize("criterion, resources, cut, complete_result", [
    ("immunodeficiency", [], "Condition", Result.PASS),  # no HIV recorded
    ("breast-cancer", [], "Condition", Result.FAIL),  # no breast cancer recorded: never silently ruled out
    ("leptomeningeal-metastases", [], "Observation", Result.FAIL),  # a CSF cytology may be missing
    ("study-drug-allergy", [allergy(SNOMED, "409137002")], "AllergyIntolerance", Result.PASS),  # NKDA
    ("pregnancy-breastfeeding", [lab("21198-7", 1, "[IU]/L", "2026-06-10")], "Condition", Result.PASS),
    ("her2-negative", [], "Observation", Result.UNKNOWN),  # no HER2 result: unknown either way, but say why
])
def test_an_answer_resting_on_absence_is_unknown_when_data_was_cut(nct06462092, criterion, resources, cut,
                                                                  complete_result):
    assert run(nct06462092, *resources, criterion=criterion).result is complete_result
    c = run(nct06462092, *resources, criterion=criterion, cuts=[Cut(cut, newest_first=True)])
    assert (c.result, c.why) == (Result.UNKNOWN, Why.INCOMPLETE_DATA)
    assert "cut short" in c.reason and cut in c.reason
    assert c.to_json()["reasonCode"] == "incomplete-data"


@pytest.mark.parametrize("criterion, resources, result", [
    ("immunodeficiency", [condition(ICD10CM, "B20")], Result.FAIL),  # HIV found: found is found
    ("breast-cancer", [condition(ICD10CM, "C50.912")], Result.PASS),
    ("study-drug-allergy", [allergy("http://www.nlm.nih.gov/research/umls/rxnorm", "68446")], Result.FAIL),
])
def test_an_answer_resting_on_what_was_found_stands(nct06462092, criterion, resources, result):
    assert run(nct06462092, *resources, criterion=criterion,
               cuts=[Cut(t) for t in ("Condition", "AllergyIntolerance", "Observation")]).result is result


def test_lab_results_come_newest_first_so_a_cut_does_not_touch_them(nct06462092):
    fresh = lab("751-8", 2.4, "10*3/uL", "2026-06-10T08:00:00Z")
    for cut in (Cut("Observation", newest_first=True), Cut("Observation", BLOOD_COUNTS, newest_first=True)):
        assert run(nct06462092, fresh, criterion="neutrophils", cuts=[cut]).result is Result.PASS


def test_a_lab_left_unknown_by_a_cut_history_says_older_results_were_not_fetched(nct06462092):
    # Newest first and cut: older results cannot decide, but the card should not read as if
    # the patient had never had the test (a stale count may sit beyond the cut).
    c = run(nct06462092, criterion="neutrophils", cuts=[Cut("Observation", BLOOD_COUNTS, newest_first=True)])
    assert (c.result, c.why) == (Result.UNKNOWN, Why.NO_DATA) and "older results were not fetched" in c.reason
    assert "not fetched" not in run(nct06462092, criterion="neutrophils").reason


def test_a_cut_search_out_of_date_order_leaves_no_lab_result_certain(nct06462092):
    # The server ignored _sort=-date: the page limit may have dropped the newest count.
    fresh = lab("751-8", 2.4, "10*3/uL", "2026-06-10T08:00:00Z")
    record = PatientRecord([patient(), fresh], cuts=[Cut("Observation", BLOOD_COUNTS, newest_first=False)])
    c = evaluate(nct06462092, record, AS_OF).criterion("neutrophils")
    assert (c.result, c.why) == (Result.UNKNOWN, Why.INCOMPLETE_DATA) and "not in date order" in c.reason
    assert c.order is not None  # a new count settles it


def test_sorted_newest_first_orders_as_sort_date_returns():
    from cds_service.engine.rules.readers import newest_first, sorted_newest_first

    results = [lab("751-8", 1, "10*3/uL", "2026-05-01"), lab("751-8", 2, "10*3/uL", None),
               lab("751-8", 3, "10*3/uL", "2026-06-10T09:00:00+02:00"), lab("751-8", 4, "10*3/uL", None),
               lab("751-8", 5, "10*3/uL", "2026-06-10T07:00:00Z"), lab("751-8", 6, "10*3/uL", "1969-12-31")]
    ordered = sorted_newest_first(results)
    # 09:00+02:00 and 07:00Z are one instant: record order among equals; undated last, in record order
    assert [r["valueQuantity"]["value"] for r in ordered] == [3, 5, 1, 6, 2, 4]
    assert newest_first(ordered) and not newest_first(results)


def test_newest_first_order_of_a_servers_answer():
    from cds_service.engine.rules.readers import newest_first

    assert newest_first([lab("751-8", 1, "10*3/uL", "2026-06-10T08:00:00Z"), lab("751-8", 1, "10*3/uL", None),
                         lab("751-8", 1, "10*3/uL", "2026-06-10T09:00:00+02:00"),
                         lab("751-8", 1, "10*3/uL", "2026-05-01")])
    assert not newest_first([lab("751-8", 1, "10*3/uL", "2026-05-01"), lab("751-8", 1, "10*3/uL", "2026-06-10")])


def test_a_cut_in_another_type_changes_nothing(nct06462092):
    c = run(nct06462092, criterion="immunodeficiency", cuts=[Cut("AllergyIntolerance"), Cut("Observation")])
    assert c.result is Result.PASS


@pytest.mark.parametrize("criterion, resources, complete_result", [
    ("her2-negative", [], Result.UNKNOWN),  # no HER2 result: no-data, not incomplete-data
    ("leptomeningeal-metastases", [], Result.FAIL),  # no CSF cytology among the rare tests
    ("pregnancy-breastfeeding", [lab("21198-7", 1, "[IU]/L", "2026-06-10")], Result.PASS),
])
def test_a_cut_lab_history_does_not_touch_the_tests_it_did_not_ask_for(nct06462092, criterion, resources,
                                                                       complete_result):
    # The lab history query (blood counts) was cut, even out of date order; HER2, CSF
    # cytology and hCG come in a query of their own, which was complete.
    for newest_first in (True, False):
        c = run(nct06462092, *resources, criterion=criterion, cuts=[Cut("Observation", BLOOD_COUNTS, newest_first)])
        assert c.result is complete_result and c.why is not Why.INCOMPLETE_DATA


def test_a_cut_that_asked_for_the_criterions_tests_makes_it_unknown(nct06462092):
    her2_tests = loinc("85319-2", "48676-1", "85318-4", "18474-7")
    c = run(nct06462092, criterion="her2-negative", cuts=[Cut("Observation", her2_tests, newest_first=True)])
    assert (c.result, c.why) == (Result.UNKNOWN, Why.INCOMPLETE_DATA)


def test_the_published_schema_knows_every_reason_code_and_field():
    # card.extension["trial-eligibility"] is described in /openapi.json with additionalProperties false.
    from cds_service.engine.model import CriterionResult, Evidence, Order, Role
    from cds_service.hooks.openapi import component_schemas

    schemas = component_schemas()
    criterion = schemas["CriterionResult"]["properties"]
    assert schemas["CriterionResult"]["additionalProperties"] is False
    assert set(schemas[criterion["reasonCode"]["$ref"].rsplit("/", 1)[1]]["enum"]) == {w.value for w in Why}
    full = CriterionResult("c", "exclusion", Result.UNKNOWN, "r", [Evidence("Observation/1", Role.DECISIVE)],
                           why=Why.STALE, order=Order("k", "s", "c", "d"), title="t", not_read=2).to_json()
    assert set(full) <= set(criterion) and "notRead" in full
