"""Diagnoses, HER2, allergy, pregnancy and applicability: the cases the gold
set does not spell out, with the evidence they must show."""

import datetime as dt

from cds_service.engine import Result, Status, Why, evaluate
from cds_service.engine.model import Role
from fhirbuild import ICD10CM, LOINC, RXNORM, SNOMED, allergy, coded_obs, condition, lab, patient

AS_OF = dt.date(2026, 6, 15)
IHC = "85319-2"
ISH = "85318-4"
SCORE_1, SCORE_2, SCORE_3 = (LOINC, "LA11841-6", "1+"), (LOINC, "LA11842-4", "2+"), (LOINC, "LA11843-2", "3+")
NEGATIVE, POSITIVE = (LOINC, "LA6577-6", "Negative"), (LOINC, "LA6576-8", "Positive")


def run(trial, *resources, criterion, pat=None):
    return evaluate(trial, [pat or patient(), *resources], AS_OF).criterion(criterion)


# -- HER2 -------------------------------------------------------------------

def test_her2_newer_result_decides_and_older_discordant_one_is_noted(nct06462092):
    c = run(nct06462092, coded_obs(IHC, SCORE_3, "2019-04-02"), coded_obs(IHC, SCORE_1, "2025-03-02"),
            criterion="her2-negative")
    assert c.result is Result.PASS
    assert "older discordant" in c.reason
    older = [e for e in c.evidence if e.role is not Role.DECISIVE]
    assert older and "disagrees" in older[0].note


def test_her2_latest_2plus_is_not_settled_by_an_older_ish(nct06462092):
    c = run(nct06462092, coded_obs(ISH, NEGATIVE, "2022-01-10"), coded_obs(IHC, SCORE_2, "2025-03-02"),
            criterion="her2-negative")
    assert (c.result, c.why) == (Result.UNKNOWN, Why.EQUIVOCAL)
    assert "without an ISH" in c.reason and "older: ISH negative (2022-01-10)" in c.reason
    assert c.order is not None and c.order.code == "96893-3"


def test_her2_same_day_ish_resolves_a_timed_ihc(nct06462092):
    c = run(nct06462092, coded_obs(IHC, SCORE_2, "2025-03-02T09:00:00+01:00"), coded_obs(ISH, NEGATIVE, "2025-03-02"),
            criterion="her2-negative")
    assert c.result is Result.PASS


def test_her2_ihc_as_a_component_of_a_status_panel(nct06462092):
    panel = coded_obs("85310-1", None, "2025-03-02")
    panel["component"] = [{"code": {"coding": [{"system": LOINC, "code": IHC}]},
                           "valueCodeableConcept": {"coding": [{"system": LOINC, "code": "LA11843-2"}]}}]
    assert run(nct06462092, panel, criterion="her2-negative").result is Result.FAIL


def test_her2_ihc_positive_without_score_and_numeric_ish_do_not_decide(nct06462092):
    c = run(nct06462092, coded_obs(IHC, POSITIVE), criterion="her2-negative")
    assert (c.result, c.why) == (Result.UNKNOWN, Why.EQUIVOCAL)
    ratio = lab("49683-6", 2.6, "{ratio}", "2025-03-02")
    c = run(nct06462092, ratio, criterion="her2-negative")
    assert (c.result, c.why) == (Result.UNKNOWN, Why.UNINTERPRETABLE)


def test_her2_undated_results_count_but_rank_oldest(nct06462092):
    c = run(nct06462092, coded_obs(IHC, SCORE_3, date=None), coded_obs(IHC, SCORE_1, "2024-05-01"),
            criterion="her2-negative")
    assert c.result is Result.PASS
    assert run(nct06462092, coded_obs(IHC, SCORE_1, date=None), criterion="her2-negative").result is Result.PASS


def test_her2_serum_test_is_not_tumour_status(nct06462092):
    serum = coded_obs("51981-9", POSITIVE)
    c = run(nct06462092, serum, coded_obs(IHC, SCORE_1), criterion="her2-negative")
    assert c.result is Result.PASS and all("51981-9" not in (e.code or "") for e in c.evidence)


# -- diagnoses --------------------------------------------------------------

def test_breast_cancer_general_code_with_another_body_site_is_ignored(nct06462092):
    lung = condition(SNOMED, "363346000", bodySite=[{"coding": [{"system": SNOMED, "code": "39607008"}]}])
    c = run(nct06462092, lung, criterion="breast-cancer")
    assert c.result is Result.FAIL
    assert c.evidence[0].role is Role.IGNORED


def test_icd_code_sent_with_the_oid_system(nct06462092):
    c = run(nct06462092, condition("urn:oid:2.16.840.1.113883.6.90", "C50.912"), criterion="breast-cancer")
    assert c.result is Result.PASS


def test_lm_from_a_cytology_report_with_a_contained_csf_specimen(nct06462092):
    report = {"resourceType": "DiagnosticReport", "id": "dr-1", "status": "final",
              "contained": [{"resourceType": "Specimen", "id": "csf",
                             "type": {"coding": [{"system": SNOMED, "code": "258450006"}]}}],
              "code": {"coding": [{"system": LOINC, "code": "47523-6"}]}, "subject": {"reference": "Patient/p1"},
              "effectiveDateTime": "2026-05-20", "specimen": [{"reference": "#csf"}],
              "conclusionCode": [{"coding": [{"system": SNOMED, "code": "10828004"}]}]}
    c = run(nct06462092, report, criterion="leptomeningeal-metastases")
    assert c.result is Result.PASS and c.evidence[0].reference == "DiagnosticReport/dr-1"


def test_negative_csf_cytology_alone_does_not_establish_lm(nct06462092):
    obs = coded_obs("47523-6", NEGATIVE, "2026-05-20")
    assert run(nct06462092, obs, criterion="leptomeningeal-metastases").result is Result.FAIL


def test_exclusion_diagnosis_states(nct06462092):
    assert run(nct06462092, condition(ICD10CM, "B20"), criterion="immunodeficiency").result is Result.FAIL
    c = run(nct06462092, condition(ICD10CM, "B20", verification="refuted"), criterion="immunodeficiency")
    assert c.result is Result.PASS and c.evidence[0].role is Role.IGNORED
    c = run(nct06462092, condition(ICD10CM, "D81.810"), criterion="immunodeficiency")  # biotinidase deficiency
    assert c.result is Result.PASS
    # Primary immunodeficiency and HIV are lifelong: recorded as resolved, they still exclude.
    c = run(nct06462092, condition(ICD10CM, "D81.1", clinical="resolved"), criterion="immunodeficiency")
    assert c.result is Result.FAIL
    c = run(nct06462092, condition(ICD10CM, "D84.821", clinical="resolved"), criterion="immunodeficiency")
    assert c.result is Result.PASS


def test_invalid_condition_cannot_silently_pass_an_exclusion(nct06462092):
    broken = condition(ICD10CM, "B20", onset="last spring")
    c = run(nct06462092, broken, criterion="immunodeficiency")
    assert (c.result, c.why) == (Result.UNKNOWN, Why.INVALID_RESOURCE)


# -- allergy ----------------------------------------------------------------

def test_allergy_entries_that_say_nothing_about_drugs(nct06462092):
    nkfa = allergy(SNOMED, "429625007")
    assert run(nct06462092, nkfa, criterion="study-drug-allergy").result is Result.REVIEW
    no_info = allergy("http://hl7.org/fhir/uv/ips/CodeSystem/absent-unknown-uv-ips", "no-allergy-info")
    assert run(nct06462092, no_info, criterion="study-drug-allergy").result is Result.REVIEW
    nkda = allergy(SNOMED, "409137002")
    assert run(nct06462092, nkfa, nkda, criterion="study-drug-allergy").result is Result.PASS


def test_allergy_to_a_study_drug_outranks_no_known_allergy(nct06462092):
    c = run(nct06462092, allergy(SNOMED, "716186003"), allergy(RXNORM, "68446"), criterion="study-drug-allergy")
    assert c.result is Result.FAIL and c.evidence[0].code == f"{RXNORM}|68446"


# -- pregnancy and applicability -------------------------------------------

def test_breastfeeding_status_observation(nct06462092):
    hcg_negative = lab("21198-7", 1, "[IU]/L", "2026-06-10")
    feeding = coded_obs("63895-7", (LOINC, "LA29252-6", "Currently breastfeeding"), "2026-06-01")
    assert run(nct06462092, hcg_negative, feeding, criterion="pregnancy-breastfeeding").result is Result.FAIL
    not_feeding = coded_obs("63895-7", (LOINC, "LA29253-4"), "2026-06-01")
    assert run(nct06462092, hcg_negative, not_feeding, criterion="pregnancy-breastfeeding").result is Result.PASS
    boolean = coded_obs("63895-7", None, "2026-06-01", valueBoolean=True)
    assert run(nct06462092, hcg_negative, boolean, criterion="pregnancy-breastfeeding").result is Result.FAIL


def test_latest_pregnancy_test_decides(nct06462092):
    old_positive = coded_obs("2118-8", POSITIVE, "2026-06-03")
    new_negative = coded_obs("2118-8", NEGATIVE, "2026-06-12")
    c = run(nct06462092, old_positive, new_negative, criterion="pregnancy-breastfeeding")
    assert c.result is Result.PASS


def test_unknown_pregnancy_suggests_an_hcg_order(nct06462092):
    c = run(nct06462092, criterion="pregnancy-breastfeeding")
    assert (c.result, c.why) == (Result.UNKNOWN, Why.NO_DATA)
    assert c.order.code == "2118-8" and c.to_json()["order"]["system"] == LOINC


def test_sex_and_age_unknown_keep_criteria_applicable(nct06462092):
    unknown = patient(birth_date=None, gender="unknown")
    e = evaluate(nct06462092, [unknown], AS_OF)
    assert e.criterion("pregnancy-breastfeeding").result is Result.UNKNOWN
    assert e.criterion("contraception").result is Result.REVIEW
    assert e.criterion("age").why is Why.NO_DATA


def test_alive_and_missing_patient(nct06462092):
    assert run(nct06462092, criterion="alive", pat=patient(deceasedBoolean=True)).result is Result.FAIL
    assert run(nct06462092, criterion="alive", pat=patient(deceasedBoolean=False)).result is Result.PASS
    e = evaluate(nct06462092, [condition(ICD10CM, "C50.912")], AS_OF)
    assert e.criterion("alive").why is Why.NO_DATA and e.patient is None


def test_status_rules(nct06462092):
    e = evaluate(nct06462092, [patient()], AS_OF)
    assert e.status is Status.INELIGIBLE  # no breast cancer, no LM: fail beats unknown
    body = e.to_json()
    assert body["trial"] == "NCT06462092" and body["asOf"] == "2026-06-15" and body["status"] == "ineligible"
    assert [c["id"] for c in body["criteria"]][:3] == ["alive", "breast-cancer", "her2-negative"]
    assert all(v not in (None, "", [], {}) for c in body["criteria"] for v in c.values())
