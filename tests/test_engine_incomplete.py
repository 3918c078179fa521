"""Data cut short: when a FHIR search stopped at the page limit, some resources
of that type may never have arrived. An answer that rests on finding nothing
("no HIV recorded", "no breast cancer recorded", "no study-drug allergy") is then
unknown; an answer resting on what was found stands."""

import datetime as dt

import pytest

from cds_service.engine import PatientRecord, Result, Why, evaluate
from fhirbuild import ICD10CM, SNOMED, allergy, condition, lab, patient

AS_OF = dt.date(2026, 6, 15)


def run(trial, *resources, criterion, incomplete=()):
    record = PatientRecord([patient(), *resources], incomplete=incomplete)
    return evaluate(trial, record, AS_OF).criterion(criterion)


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
    c = run(nct06462092, *resources, criterion=criterion, incomplete={cut})
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
               incomplete={"Condition", "AllergyIntolerance", "Observation"}).result is result


def test_lab_results_come_newest_first_so_a_cut_does_not_touch_them(nct06462092):
    fresh = lab("751-8", 2.4, "10*3/uL", "2026-06-10T08:00:00Z")
    assert run(nct06462092, fresh, criterion="neutrophils", incomplete={"Observation"}).result is Result.PASS


def test_a_cut_search_out_of_date_order_leaves_no_lab_result_certain(nct06462092):
    # The server ignored _sort=-date: the page limit may have dropped the newest count.
    fresh = lab("751-8", 2.4, "10*3/uL", "2026-06-10T08:00:00Z")
    record = PatientRecord([patient(), fresh], incomplete={"Observation"}, out_of_order={"Observation"})
    c = evaluate(nct06462092, record, AS_OF).criterion("neutrophils")
    assert (c.result, c.why) == (Result.UNKNOWN, Why.INCOMPLETE_DATA) and "not in date order" in c.reason
    assert c.order is not None  # a new count settles it


def test_newest_first_order_of_a_servers_answer():
    from cds_service.engine.rules.base import newest_first

    assert newest_first([lab("751-8", 1, "10*3/uL", "2026-06-10T08:00:00Z"), lab("751-8", 1, "10*3/uL", None),
                         lab("751-8", 1, "10*3/uL", "2026-06-10T09:00:00+02:00"),
                         lab("751-8", 1, "10*3/uL", "2026-05-01")])
    assert not newest_first([lab("751-8", 1, "10*3/uL", "2026-05-01"), lab("751-8", 1, "10*3/uL", "2026-06-10")])


def test_a_cut_in_another_type_changes_nothing(nct06462092):
    c = run(nct06462092, criterion="immunodeficiency", incomplete={"AllergyIntolerance", "Observation"})
    assert c.result is Result.PASS


def test_the_published_schema_knows_every_reason_code_and_field():
    # card.extension["trial-eligibility"] is described in /openapi.json with additionalProperties false.
    import json
    from importlib import resources

    from cds_service.engine.model import CriterionResult, Evidence, Order, Role

    schemas = json.loads(resources.files("cds_service.hooks").joinpath("openapi.json").read_bytes())[
        "components"]["schemas"]
    criterion = schemas["CriterionResult"]["properties"]
    assert set(criterion["reasonCode"]["enum"]) == {w.value for w in Why}
    full = CriterionResult("c", "exclusion", Result.UNKNOWN, "r", [Evidence("Observation/1", Role.DECISIVE)],
                           why=Why.STALE, order=Order("k", "s", "c", "d"), title="t", not_read=2).to_json()
    assert set(full) <= set(criterion) and "notRead" in full
