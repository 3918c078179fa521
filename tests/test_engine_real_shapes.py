"""Diagnoses and allergies as EHRs code them in practice (issue 13): history-of codes,
the mCODE secondary-cancer shape, lifelong HIV, and the safety net — a record whose
code the criterion cannot match, or that has text only, never decides silently."""

import datetime as dt

import pytest

from cds_service.engine import Result, Why, evaluate
from cds_service.engine.model import Role
from fhirbuild import ICD10CM, RXNORM, SNOMED, allergy, concept, condition, patient

AS_OF = dt.date(2026, 6, 15)
EPIC_DX = "urn:oid:1.2.840.114350.1.13.0.1.7.2.696871"  # an Epic-style local diagnosis code system
MENINGES = (SNOMED, "1231004", "Meninges structure")


def run(trial, *resources, criterion):
    return evaluate(trial, [patient(), *resources], AS_OF).criterion(criterion)


def local_condition(text: str, *codings, **kw) -> dict:
    """A problem-list entry as Epic sends one without a standard code: a local code and text."""
    c = condition(EPIC_DX, "99123", **kw)
    c["code"] = concept(*(codings or ((EPIC_DX, "99123", text),)), text=text)
    return c


def text_only_condition(text: str, **kw) -> dict:
    c = condition(EPIC_DX, "x", **kw)
    c["code"] = {"text": text}
    return c


# -- breast cancer --------------------------------------------------------------

@pytest.mark.parametrize("code", ["Z85.3", "Z853"])
def test_history_of_breast_cancer_counts_as_the_primary(nct06462092, code):
    c = run(nct06462092, condition(ICD10CM, code, clinical="resolved"), criterion="breast-cancer")
    assert c.result is Result.PASS
    assert "history of" in c.reason
    assert c.evidence[0].role is Role.DECISIVE and "history of" in c.evidence[0].note


def test_an_unconfirmed_history_of_breast_cancer_is_unknown(nct06462092):
    c = run(nct06462092, condition(ICD10CM, "Z85.3", verification="provisional"), criterion="breast-cancer")
    assert (c.result, c.why) == (Result.UNKNOWN, Why.DIAGNOSIS_UNCONFIRMED)


def test_a_breast_cancer_local_code_is_unknown_not_fail(nct06462092):
    c = run(nct06462092, local_condition("Invasive ductal carcinoma of left breast"), criterion="breast-cancer")
    assert (c.result, c.why) == (Result.UNKNOWN, Why.UNRECOGNISED_CODE)
    assert c.evidence[0].display == "Invasive ductal carcinoma of left breast"
    assert c.evidence[0].code == f"{EPIC_DX}|99123"


def test_breast_cancer_as_text_only_is_unknown(nct06462092):
    c = run(nct06462092, text_only_condition("CA left breast - malignant, on chemo"), criterion="breast-cancer")
    assert (c.result, c.why) == (Result.UNKNOWN, Why.TEXT_ONLY)


def test_a_snomed_code_missing_from_the_set_is_unrecognised(nct06462092):
    # A SNOMED code the shipped set does not hold (made up here), named by its display.
    c = run(nct06462092, local_condition("Neoplasm of breast, malignant", (SNOMED, "999999001", "Malignant tumour "
                                                                            "of breast, unusual")),
            criterion="breast-cancer")
    assert (c.result, c.why) == (Result.UNKNOWN, Why.UNRECOGNISED_CODE)


@pytest.mark.parametrize("entry", [
    condition(ICD10CM, "C79.81"),  # secondary neoplasm of breast: known, does not count
    condition(ICD10CM, "Z80.3"),  # family history
    local_condition("Family history of breast cancer (mother)"),
    local_condition("Screening for malignant neoplasm of breast"),
    local_condition("Benign neoplasm of breast"),
    text_only_condition("Type 2 diabetes mellitus"),
])
def test_what_names_breast_cancer_without_being_the_primary_still_fails(nct06462092, entry):
    c = run(nct06462092, entry, criterion="breast-cancer")
    assert c.result is Result.FAIL


def test_text_never_passes_even_beside_a_recognised_code(nct06462092):
    # The text says breast cancer, the code says something else: the code decides (C79.81 does not count).
    c = condition(ICD10CM, "C79.81")
    c["code"]["text"] = "Breast cancer, metastatic"
    assert run(nct06462092, c, criterion="breast-cancer").result is Result.FAIL


def test_an_entered_in_error_local_record_is_not_a_mention(nct06462092):
    c = run(nct06462092, local_condition("Carcinoma of breast", verification="entered-in-error"),
            criterion="breast-cancer")
    assert c.result is Result.FAIL


# -- leptomeningeal metastasis ----------------------------------------------------

def secondary_cancer(*sites) -> dict:
    """mCODE's SecondaryCancerCondition: a general code, the site in bodySite."""
    c = condition(SNOMED, "128462008")
    c["code"]["coding"][0]["display"] = "Secondary malignant neoplastic disease (disorder)"
    c["meta"] = {"profile": ["http://hl7.org/fhir/us/mcode/StructureDefinition/mcode-secondary-cancer-condition"]}
    if sites:
        c["bodySite"] = [concept(s) for s in sites]
    return c


def test_mcode_secondary_cancer_of_the_meninges_is_leptomeningeal(nct06462092):
    c = run(nct06462092, secondary_cancer(MENINGES), criterion="leptomeningeal-metastases")
    assert c.result is Result.PASS
    assert "body site" in c.evidence[0].note


@pytest.mark.parametrize("sites", [[(SNOMED, "12738006", "Brain structure")], []])
def test_mcode_secondary_cancer_elsewhere_or_without_a_site_does_not_count(nct06462092, sites):
    c = run(nct06462092, secondary_cancer(*sites), criterion="leptomeningeal-metastases")
    assert c.result is Result.FAIL
    assert c.evidence and c.evidence[0].role is Role.IGNORED


def test_a_leptomeningeal_code_is_not_read_twice_as_a_secondary_cancer(nct06462092):
    c = run(nct06462092, condition(SNOMED, "1155991005"), criterion="leptomeningeal-metastases")
    assert c.result is Result.PASS and len(c.evidence) == 1


def test_leptomeningeal_disease_as_a_local_code_is_unknown(nct06462092):
    c = run(nct06462092, local_condition("Leptomeningeal carcinomatosis"), criterion="leptomeningeal-metastases")
    assert (c.result, c.why) == (Result.UNKNOWN, Why.UNRECOGNISED_CODE)


@pytest.mark.parametrize("entry", [condition(ICD10CM, "C70.0"), condition(ICD10CM, "C79.31"),
                                   local_condition("Meningioma, benign"), local_condition("Bacterial meningitis")])
def test_primary_meningeal_tumours_and_brain_metastases_are_not_mentions(nct06462092, entry):
    assert run(nct06462092, entry, criterion="leptomeningeal-metastases").result is Result.FAIL


# -- HIV and immunodeficiency -------------------------------------------------------

@pytest.mark.parametrize("clinical", ["inactive", "resolved", "remission", None])
def test_hiv_excludes_whatever_its_clinical_status(nct06462092, clinical):
    c = run(nct06462092, condition(ICD10CM, "Z21", clinical=clinical), criterion="immunodeficiency")
    assert c.result is Result.FAIL


def test_drug_induced_immunodeficiency_stays_for_review(nct06462092):
    c = run(nct06462092, condition(ICD10CM, "D84.821"), criterion="immunodeficiency")
    assert c.result is Result.REVIEW and c.why is None


@pytest.mark.parametrize("entry, why", [(local_condition("HIV disease"), Why.UNRECOGNISED_CODE),
                                        (text_only_condition("h/o HIV, on ART"), Why.TEXT_ONLY),
                                        (text_only_condition("AIDS"), Why.TEXT_ONLY)])
def test_hiv_named_only_in_text_is_for_review_never_a_pass(nct06462092, entry, why):
    c = run(nct06462092, entry, criterion="immunodeficiency")
    assert (c.result, c.why) == (Result.REVIEW, why)


@pytest.mark.parametrize("entry", [
    local_condition("HIV negative"), local_condition("HIV-1/2 Ab non-reactive"),
    local_condition("Encounter for screening for HIV"), condition(ICD10CM, "Z20.6"),
    local_condition("PrEP for HIV prevention"), text_only_condition("Uses hearing aids"),
    local_condition("Hypertension"),
])
def test_negative_findings_screening_and_unrelated_text_pass(nct06462092, entry):
    assert run(nct06462092, entry, criterion="immunodeficiency").result is Result.PASS


# -- allergies ------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["PEMETREXED", "Alimta (pemetrexed) - rash", "Trodelvy", "irinotecan",
                                  "Chemotherapy agent (name not recorded)"])
def test_an_allergy_naming_a_study_drug_by_text_is_for_review(nct06462092, text):
    local = allergy("urn:oid:1.2.840.114350.1.13.0.1.7.2.657517", "33112", text=text)
    c = run(nct06462092, local, criterion="study-drug-allergy")
    assert (c.result, c.why) == (Result.REVIEW, Why.UNRECOGNISED_CODE)
    assert c.evidence[0].display == text
    only_text = run(nct06462092, allergy(None, None, text=text), criterion="study-drug-allergy")
    assert (only_text.result, only_text.why) == (Result.REVIEW, Why.TEXT_ONLY)


def test_other_allergies_coded_or_not_do_not_block_a_pass(nct06462092):
    c = run(nct06462092, allergy(RXNORM, "7980"), allergy(None, None, text="Shellfish - hives"),
            criterion="study-drug-allergy")
    assert c.result is Result.PASS and c.why is None


def test_an_inactive_allergy_named_by_text_is_ignored(nct06462092):
    inactive = allergy(None, None, text="pemetrexed", clinical="inactive")
    c = run(nct06462092, inactive, allergy(RXNORM, "7980"), criterion="study-drug-allergy")
    assert c.result is Result.PASS


def test_a_coded_study_drug_allergy_still_fails_beside_a_text_one(nct06462092):
    c = run(nct06462092, allergy(None, None, text="Trodelvy"), allergy(RXNORM, "68446"),
            criterion="study-drug-allergy")
    assert c.result is Result.FAIL


def test_an_hiv_infection_with_an_undetectable_viral_load_is_not_a_negative_finding(nct06462092):
    c = run(nct06462092, local_condition("HIV infection, viral load not detected"), criterion="immunodeficiency")
    assert (c.result, c.why) == (Result.REVIEW, Why.UNRECOGNISED_CODE)
