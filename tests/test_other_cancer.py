"""The other-cancer kind, through the invented trial TEST-0006 (NCT01325207's "no history of any
other cancer (except non-melanoma skin cancer or carcinoma in-situ of the cervix) unless in
complete remission and off all therapy for a minimum of 3 years"): what counts as another
cancer and what is exempt (an exemption inside a code range wins), the 3-year boundary both
sides with full and partial dates, statuses, history codes, and what never decides silently
(unconfirmed, site-less, local codes, text only)."""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path

import pytest

from cds_service.engine import Cut, PatientRecord, Result, Why, evaluate
from cds_service.engine.codes import coding_key
from cds_service.fhir.needs import data_needs
from cds_service.trials import DefinitionError, load_trial
from fhirbuild import ICD10CM, SNOMED, concept, condition, patient

TRIAL = load_trial(Path(__file__).parent / "trials" / "TEST-0006.yaml")
AS_OF = dt.date(2026, 6, 15)
LOCAL = "urn:oid:1.2.840.114350.1.13.0.1.7.2.696871"  # an Epic-style local diagnosis code system
_ids = itertools.count(1)


def cancer(code, system=ICD10CM, *, clinical="active", display=None, **extra):
    c = condition(system, code, clinical=clinical, onset="2019-03-02", **extra)
    if display:
        c["code"]["coding"][0]["display"] = display
    c["category"] = [concept(("http://terminology.hl7.org/CodeSystem/condition-category", "problem-list-item"))]
    return c


def judge(*conditions, cuts=()):
    record = PatientRecord([patient()] + list(conditions), cuts=cuts)
    return evaluate(TRIAL, record, AS_OF).criterion("other-cancer")


def decisive(c):
    return [e for e in c.evidence if e.role.value == "decisive"]


# -- what counts --------------------------------------------------------------------------------

def test_active_melanoma_fails_and_says_what_and_how():
    c = judge(cancer("C43.9", display="Malignant melanoma of skin, unspecified"))
    assert c.result is Result.FAIL
    assert c.reason == "other cancer: Malignant melanoma of skin, unspecified (C43.9), active"
    (e,) = decisive(c)
    assert e.code == f"{ICD10CM}|C43.9" and e.status == "active/confirmed" and e.date == "2019-03-02"


@pytest.mark.parametrize("code", ["C50.911", "C50911", "c50.912"])  # the trial's own cancer, dotted or not
def test_breast_cancer_inside_the_c5_range_is_not_another_cancer(code):
    c = judge(cancer(code))
    assert c.result is Result.PASS and c.reason == "no other cancer recorded"
    assert c.evidence[0].role.value == "ignored" and "exempt" in c.evidence[0].note


@pytest.mark.parametrize("code, system", [
    ("C44.91", ICD10CM),  # basal cell carcinoma of skin, inside the C4 range
    ("C44.42", ICD10CM),  # squamous cell carcinoma of skin of scalp and neck
    ("Z85.3", ICD10CM),  # personal history of breast cancer
    ("Z85.828", ICD10CM),  # personal history of other (non-melanoma) skin cancer, inside Z85
])
def test_exempt_cancers_inside_the_ranges_pass_as_exempt(code, system):
    c = judge(cancer(code, system))
    assert c.result is Result.PASS and c.reason == "no other cancer recorded"
    assert c.evidence[0].role.value == "ignored" and "exempt" in c.evidence[0].note


@pytest.mark.parametrize("code, system", [
    ("C79.31", ICD10CM),  # brain metastasis (the trial's own cancer spread): C77-C7B are not in the set
    ("C7931", ICD10CM),
    ("C79.32", ICD10CM),  # leptomeningeal
    ("D06.9", ICD10CM),  # carcinoma in situ of the cervix: outside C00-C96
    ("254701007", SNOMED),  # basal cell carcinoma of skin: not among the cancer set's SNOMED codes
])
def test_exempt_diagnoses_outside_the_cancer_set_are_no_other_cancer(code, system):
    c = judge(cancer(code, system))
    assert c.result is Result.PASS and c.reason == "no other cancer recorded"


def test_the_library_holds_the_exempt_codes_inside_the_cancer_ranges():
    # The exemption is the rule's, not the code set's: the ranges do contain them.
    cancers = TRIAL.library.get("malignant-neoplasm")
    assert cancers.contains(coding_key(ICD10CM, "C50911")) and cancers.contains(coding_key(ICD10CM, "C4491"))
    assert not cancers.contains(coding_key(ICD10CM, "C80.1")) and not cancers.contains(coding_key(ICD10CM, "C79.31"))


@pytest.mark.parametrize("code, system", [
    ("C4A.9", ICD10CM),  # Merkel cell carcinoma: a skin cancer, but not exempt
    ("C46.0", ICD10CM),  # Kaposi sarcoma of skin
    ("C61", ICD10CM),
    ("C91.10", ICD10CM),  # CLL not having achieved remission
    ("92814006", SNOMED),  # CLL, as mCODE's example records it
    ("254637007", SNOMED),  # NSCLC
])
def test_other_active_cancers_fail(code, system):
    assert judge(cancer(code, system)).result is Result.FAIL


def test_a_snomed_code_beside_a_local_code_decides():
    c = cancer("93655004", SNOMED, display="Malignant melanoma of skin (disorder)")
    c["code"]["coding"].insert(0, {"system": LOCAL, "code": "1234567", "display": "Melanoma of back"})
    result = judge(c)
    assert result.result is Result.FAIL and "(93655004)" in result.reason
    assert decisive(result)[0].code == f"{SNOMED}|93655004"


def test_a_condition_coded_both_as_another_cancer_and_as_an_exempt_one_is_for_review():
    c = cancer("C44.91")
    c["code"]["coding"].append({"system": SNOMED, "code": "93655004", "display": "Malignant melanoma of skin"})
    result = judge(c)
    assert result.result is Result.REVIEW and "exempt" in result.reason


def test_a_site_less_malignancy_is_for_review_unless_a_specific_code_says_breast():
    c = judge(cancer("363346000", SNOMED, display="Malignant neoplastic disease"))
    assert c.result is Result.REVIEW and "nonspecific code" in c.reason
    assert judge(cancer("C80.1")).result is Result.REVIEW
    both = cancer("363346000", SNOMED)
    both["code"]["coding"].append({"system": ICD10CM, "code": "C50.912"})
    assert judge(both).result is Result.PASS  # the breast code says which malignancy it is
    melanoma = cancer("C80.1")
    melanoma["code"]["coding"].append({"system": ICD10CM, "code": "C43.9"})
    assert judge(melanoma).result is Result.FAIL  # a specific other cancer beside a site-less code


@pytest.mark.parametrize("code, system", [("Z85.46", ICD10CM), ("Z8546", ICD10CM), ("266987004", SNOMED)])
def test_a_personal_history_code_is_for_review(code, system):
    c = judge(cancer(code, system, clinical="resolved"))
    assert c.result is Result.REVIEW and "history of" in c.reason and "3 years" in c.reason


# -- the remission window -----------------------------------------------------------------------

@pytest.mark.parametrize("abated, result, words", [
    ("2024-06-15", Result.FAIL, "less than 3 years"),  # 2 years
    ("2023-06-16", Result.FAIL, "less than 3 years"),  # 3 years less one day
    ("2023-06-15", Result.REVIEW, "3+ years"),  # exactly 3 years: the minimum is met
    ("2022-06-15", Result.REVIEW, "3+ years"),  # 4 years
    ("2023-06-15T23:30:00-04:00", Result.REVIEW, "3+ years"),  # the calendar day as recorded
    ("2024", Result.FAIL, "less than 3 years"),  # every day of 2024 is too recent
    ("2023", Result.REVIEW, "too imprecise"),  # 2023-01-01 is 3 years, 2023-12-31 is not
    ("2023-06", Result.REVIEW, "too imprecise"),
    ("2023-05", Result.REVIEW, "3+ years"),  # every day of May 2023 is 3 years or more
    ("2022", Result.REVIEW, "3+ years"),
])
def test_the_remission_window_as_written_with_partial_dates_read_conservatively(abated, result, words):
    c = judge(cancer("C61", clinical="remission", abatementDateTime=abated))
    assert c.result is result and words in c.reason, c.reason
    assert decisive(c)[0].date == abated


def test_review_says_what_to_confirm():
    c = judge(cancer("C61", clinical="resolved", abatementDateTime="2020-01-10",
                     display="Malignant neoplasm of prostate"))
    assert c.reason == ("other cancer: Malignant neoplasm of prostate (C61), resolved since 2020-01-10 (3+ years): "
                        "confirm off all therapy for 3 years")


@pytest.mark.parametrize("clinical", ["remission", "resolved", "inactive"])
def test_past_without_a_date_is_for_review(clinical):
    c = judge(cancer("C61", clinical=clinical))
    assert c.result is Result.REVIEW and "without a remission date" in c.reason


def test_abatement_shapes():
    period = {"start": "2020-02-01", "end": "2021-05-01"}
    assert judge(cancer("C61", clinical="remission", abatementPeriod=period)).result is Result.REVIEW
    recent = {"start": "2025-01-01"}  # resolved at some time since 2025: surely under 3 years
    assert judge(cancer("C61", clinical="remission", abatementPeriod=recent)).result is Result.FAIL
    old = {"start": "2019-01-01"}  # resolved at some time since 2019: cannot show 3 years
    assert judge(cancer("C61", clinical="remission", abatementPeriod=old)).result is Result.REVIEW
    age = judge(cancer("C61", clinical="remission", abatementAge={"value": 48, "unit": "a",
                                                                  "system": "http://unitsofmeasure.org", "code": "a"}))
    assert age.result is Result.REVIEW and "recorded as age" in age.reason
    text = judge(cancer("C61", clinical="resolved", abatementString="after radiotherapy"))
    assert text.result is Result.REVIEW and "recorded as string" in text.reason
    future = judge(cancer("C61", clinical="remission", abatementDateTime="2026-09-01"))
    assert future.result is Result.REVIEW and "after the evaluation date" in future.reason


def test_statuses():
    assert judge(cancer("C61", clinical="recurrence", abatementDateTime="2015-01-01")).result is Result.FAIL
    assert judge(cancer("C61", clinical="relapse")).result is Result.FAIL
    # No clinicalStatus (an encounter diagnosis): not known to be active, so not a fail.
    no_status = judge(cancer("C61", clinical=None))
    assert no_status.result is Result.REVIEW and "no clinical status: confirm whether active" in no_status.reason
    # FHIR con-4: an abatement means not active; without a status the abatement dates it
    assert judge(cancer("C61", clinical=None, abatementDateTime="2024-01-01")).result is Result.FAIL
    assert judge(cancer("C61", clinical=None, abatementDateTime="2020-01-01")).result is Result.REVIEW
    contradictory = judge(cancer("C61", clinical="active", abatementDateTime="2020-01-01"))
    assert contradictory.result is Result.REVIEW and "recorded active with an abatement" in contradictory.reason


def test_a_code_that_says_in_remission_is_read_as_remission_whatever_the_status():
    c = judge(cancer("C91.11", clinical="active"))  # CLL in remission, an active problem-list entry
    assert c.result is Result.REVIEW and "in remission without a remission date" in c.reason
    assert judge(cancer("C9111", clinical="active", abatementDateTime="2025-02-01")).result is Result.FAIL
    assert judge(cancer("94704006", SNOMED, abatementDateTime="2021-02-01")).result is Result.REVIEW
    assert judge(cancer("C91.10", clinical="active", abatementDateTime="2020-02-01")).result is Result.REVIEW


@pytest.mark.parametrize("verification", ["provisional", "differential", "unconfirmed"])
def test_unconfirmed_is_for_review_never_a_fail(verification):
    c = judge(cancer("C43.9", verification=verification))
    assert c.result is Result.REVIEW and f"not confirmed ({verification})" in c.reason


@pytest.mark.parametrize("verification", ["refuted", "entered-in-error"])
def test_refuted_and_entered_in_error_are_ignored(verification):
    c = judge(cancer("C43.9", verification=verification))
    assert c.result is Result.PASS and c.evidence[0].role.value == "ignored"


def test_a_fail_outweighs_reviews_and_lists_each_other_cancer():
    c = judge(cancer("C61", clinical="remission", abatementDateTime="2020-01-01"), cancer("C43.9"), cancer("C18.9"))
    assert c.result is Result.FAIL and "(and 1 more)" in c.reason
    assert [e.code.split("|")[1] for e in decisive(c)] == ["C43.9", "C18.9"]


# -- never silent -------------------------------------------------------------------------------

def test_a_local_code_or_text_naming_a_cancer_is_for_review():
    local = {"resourceType": "Condition", "id": "local-1", "subject": {"reference": "Patient/p1"},
             "clinicalStatus": concept(("http://terminology.hl7.org/CodeSystem/condition-clinical", "active")),
             "code": {"coding": [{"system": LOCAL, "code": "88231"}], "text": "Diffuse large B-cell lymphoma"}}
    c = judge(local)
    assert c.result is Result.REVIEW and c.why is Why.UNRECOGNISED_CODE and "lymphoma" in c.reason
    text_only = dict(local, code={"text": "h/o melanoma, excised"})
    c = judge(text_only)
    assert c.result is Result.REVIEW and c.why is Why.TEXT_ONLY
    for words in ("Family history of colon cancer", "Breast cancer, left", "Basal cell carcinoma, nose"):
        assert judge(dict(local, code={"text": words})).result is Result.PASS, words


def test_an_invalid_condition_is_unknown():
    bad = cancer("C61", clinical="remission", abatementDateTime="2023-02-30")
    c = judge(bad)
    assert c.result is Result.UNKNOWN and c.why is Why.INVALID_RESOURCE


def test_none_recorded_passes_and_rests_on_absence():
    c = judge()
    assert c.result is Result.PASS and c.reason == "no other cancer recorded"
    cut = judge(cuts=[Cut("Condition", newest_first=True)])
    assert cut.result is Result.UNKNOWN and cut.why is Why.INCOMPLETE_DATA
    # exempt cancers only: still a pass resting on absence
    assert judge(cancer("C50.911"), cuts=[Cut("Condition", newest_first=True)]).why is Why.INCOMPLETE_DATA
    assert judge(cancer("C43.9"), cuts=[Cut("Condition", newest_first=True)]).result is Result.FAIL


def test_the_kind_asks_for_every_condition():
    # prefix sets (ICD-10-CM ranges) fetch the type whole: a code filter could not express them
    (need,) = [n for n in data_needs([TRIAL]) if n.resource_type == "Condition"]
    assert need.codes is None


def test_remission_years_must_be_positive(tmp_path):
    path = tmp_path / "TEST-0006.yaml"
    path.write_text((Path(__file__).parent / "trials" / "TEST-0006.yaml").read_text().replace(
        "remissionYears: 3", "remissionYears: 0"))
    with pytest.raises(DefinitionError, match="remissionYears"):
        load_trial(path)


def test_a_clinical_status_that_cannot_be_read_is_for_review_not_a_fail():
    c = cancer("C61")
    c["clinicalStatus"] = {"text": "Resolved"}
    assert judge(c).result is Result.REVIEW
    c["clinicalStatus"] = {"coding": [{"system": LOCAL, "code": "R"}], "text": "Resolved"}
    assert judge(c).result is Result.REVIEW


@pytest.mark.parametrize("as_of, result", [(dt.date(2027, 2, 28), Result.FAIL), (dt.date(2027, 3, 1), Result.REVIEW)])
def test_a_29_february_abatement_reaches_3_years_on_1_march(as_of, result):
    record = PatientRecord([patient(), cancer("C61", clinical="remission", abatementDateTime="2024-02-29")])
    assert evaluate(TRIAL, record, as_of).criterion("other-cancer").result is result


def test_a_long_problem_list_is_read_only_until_the_outcome_is_settled():
    c = judge(*[cancer("C43.9") for _ in range(5)], cancer("C61", clinical="remission"))
    assert c.result is Result.FAIL and len(decisive(c)) == 3 and c.not_read == 3
