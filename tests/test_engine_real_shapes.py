"""Diagnoses and allergies as EHRs code them in practice (issue 13): history-of codes,
the mCODE secondary-cancer shape, lifelong HIV, and the safety net — a record whose
code the criterion cannot match, or that has text only, never decides silently."""

import datetime as dt

import pytest

from cds_service.engine import Result, Why, evaluate
from cds_service.engine.model import Role
from fhirbuild import ICD10CM, RXNORM, SNOMED, allergy, concept, condition, lab, patient

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


# -- labs: newer unreadable results, local codes, unit spellings, comparators ----------

HB, ANC, PLT, BILI = "718-7", "751-8", "777-3", "1975-2"
EPIC_LAB = "urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.14"  # an Epic-style local component id system
OLDER, NEWER = "2026-06-05T08:00:00-04:00", "2026-06-12T08:00:00-04:00"


def string_result(code: str, text: str, date: str = NEWER) -> dict:
    """A result as an HL7v2-fed interface sends it: OBX-2 'ST', so valueString."""
    obs = lab(code, None, None, date)
    obs["valueString"] = text
    return obs


@pytest.mark.parametrize("newer", [
    string_result(HB, "8.5"), string_result(HB, "see comment"),
    lab(HB, None, None, NEWER, valueCodeableConcept=concept((SNOMED, "260385009", "Negative"))),
    lab(HB, None, None, NEWER),  # resulted, no value, no dataAbsentReason
])
def test_a_newer_unreadable_result_never_hands_the_decision_to_an_older_one(nct06462092, newer):
    c = run(nct06462092, lab(HB, 13.1, "g/dL", OLDER), newer, criterion="hemoglobin")
    assert (c.result, c.why) == (Result.UNKNOWN, Why.UNINTERPRETABLE)
    assert c.evidence[0].reference == f"Observation/{newer['id']}" and c.evidence[0].role is Role.DECISIVE
    assert any(e.role is Role.SUPPORTING and e.value == "13.1" for e in c.evidence)  # the older one is shown
    assert c.order is not None  # a new CBC settles it


def test_a_newer_result_with_a_data_absent_reason_leaves_the_older_one_deciding(nct06462092):
    absent = lab(HB, None, None, NEWER, dataAbsentReason=concept(
        ("http://terminology.hl7.org/CodeSystem/data-absent-reason", "error", "Error")))
    c = run(nct06462092, lab(HB, 13.1, "g/dL", OLDER), absent, criterion="hemoglobin")
    assert c.result is Result.PASS


def test_an_older_unreadable_result_does_not_stand_in_the_way(nct06462092):
    c = run(nct06462092, string_result(HB, "see comment", OLDER), lab(HB, 13.1, "g/dL", NEWER), criterion="hemoglobin")
    assert c.result is Result.PASS


def test_an_unreadable_result_alone_is_uninterpretable(nct06462092):
    c = run(nct06462092, string_result(HB, "8.5"), criterion="hemoglobin")
    assert (c.result, c.why) == (Result.UNKNOWN, Why.UNINTERPRETABLE)
    assert "'8.5'" in c.reason


def local_lab(text: str, value, unit: str, date: str = NEWER) -> dict:
    obs = lab("1234", value, unit, date, system=EPIC_LAB, ucum=False)
    obs["code"] = concept((EPIC_LAB, "1234", text), text=text)
    return obs


def test_a_newer_result_under_a_local_code_alone_makes_the_lab_unknown(nct06462092):
    c = run(nct06462092, lab(HB, 13.1, "g/dL", OLDER), local_lab("HGB", 7.9, "g/dL"), criterion="hemoglobin")
    assert (c.result, c.why) == (Result.UNKNOWN, Why.UNRECOGNISED_CODE)
    assert c.evidence[0].display == "HGB" and c.evidence[0].date == NEWER


def test_a_later_instant_written_on_an_earlier_day_is_still_newer(nct06462092):
    # 2026-06-08T00:30+14:00 is 06-07 10:30 UTC; 2026-06-06T23:00-12:00 is 06-07 11:00 UTC: newer,
    # although its calendar day is two days before the deciding result's.
    decided = lab(HB, 13.1, "g/dL", "2026-06-08T00:30:00+14:00")
    c = run(nct06462092, decided, local_lab("HGB", 7.9, "g/dL", "2026-06-06T23:00:00-12:00"), criterion="hemoglobin")
    assert (c.result, c.why) == (Result.UNKNOWN, Why.UNRECOGNISED_CODE)
    earlier = local_lab("HGB", 7.9, "g/dL", "2026-06-06T22:00:00-12:00")  # 06-07 10:00 UTC: older
    assert run(nct06462092, decided, earlier, criterion="hemoglobin").result is Result.PASS


@pytest.mark.parametrize("criterion, decided", [("hemoglobin", lab(HB, 13.1, "g/dL", "0001-01-01")),
                                                 ("her2-negative", None)])
def test_results_dated_in_year_one_are_read_without_error(nct06462092, criterion, decided):
    # Dates at the calendar's first day (fuzzed prefetch, a bad interface default) leave no room
    # for "two days before": the search for newer unreadable results starts at the first day.
    if decided is None:
        decided = text_result(IHC, "1+", "0001-01-01")
    c = run(nct06462092, decided, local_lab("HER2 IHC" if criterion == "her2-negative" else "HGB", 7.9, "g/dL",
                                            "0001-01-02"), criterion=criterion)
    assert c.result is Result.UNKNOWN


def test_a_display_alone_may_name_the_analyte_and_odd_shapes_are_passed_over(nct06462092):
    named_by_display = local_lab("Lab result", 7.9, "g/dL")
    named_by_display["code"]["coding"][0]["display"] = "HGB"  # the text says nothing; the display names it
    odd = [local_lab("HGB", 7.9, "g/dL") for _ in range(3)]
    odd[0]["code"] = "HGB"  # not a CodeableConcept
    odd[1]["code"]["coding"] = ["HGB"]  # a coding that is not an object
    odd[1]["code"]["text"] = 42
    odd[2]["code"]["coding"] = {"display": "HGB"}  # not a list
    odd[2]["code"]["text"] = None
    older = lab(HB, 13.1, "g/dL", OLDER)
    c = run(nct06462092, older, named_by_display, *odd, criterion="hemoglobin")
    assert (c.result, c.why) == (Result.UNKNOWN, Why.UNRECOGNISED_CODE)
    assert c.evidence[0].reference == f"Observation/{named_by_display['id']}"
    assert run(nct06462092, older, *odd, criterion="hemoglobin").result is Result.PASS


def test_each_lab_reads_only_its_own_names_among_unrecognised_results(nct06462092):
    # Several analytes' names share one pre-filter (Trial.result_names); each still reads its own.
    newer_plt = local_lab("PLT COUNT", 50, "10*3/uL")
    assert run(nct06462092, lab(HB, 13.1, "g/dL", OLDER), newer_plt, criterion="hemoglobin").result is Result.PASS
    c = run(nct06462092, lab(PLT, 250, "10*3/uL", OLDER), newer_plt, criterion="platelets")
    assert (c.result, c.why) == (Result.UNKNOWN, Why.UNRECOGNISED_CODE)


@pytest.mark.parametrize("other", [local_lab("HGB", 7.9, "g/dL", OLDER), local_lab("Hemoglobin A1c", 9.1, "%"),
                                   local_lab("MCH (mean corpuscular hemoglobin)", 30, "pg")])
def test_older_or_other_local_results_do_not_stand_in_the_way(nct06462092, other):
    c = run(nct06462092, lab(HB, 13.1, "g/dL", "2026-06-08T08:00:00-04:00"), other, criterion="hemoglobin")
    assert c.result is Result.PASS


def test_a_local_code_beside_loinc_is_read_by_its_loinc(nct06462092):
    obs = lab(HB, 8.1, "g/dL", NEWER)
    obs["code"]["coding"].insert(0, {"system": EPIC_LAB, "code": "1234", "display": "HGB"})
    c = run(nct06462092, lab(HB, 13.1, "g/dL", OLDER), obs, criterion="hemoglobin")
    assert c.result is Result.FAIL


@pytest.mark.parametrize("unit, value, result", [
    ("x10(9)/L", "2.0", Result.PASS), ("x10E3/uL", "1.4", Result.FAIL), ("10^3/uL", "1.6", Result.PASS),
    ("thou/mm3", "1.5", Result.FAIL), ("K/\u00b5L", "2.2", Result.PASS), ("K/\u03bcL", "1.2", Result.FAIL),
    ("K/mcL", "3", Result.PASS), ("cells/\u00b5L", "1400", Result.FAIL),
])
def test_anc_unit_spellings_ehrs_send(nct06462092, unit, value, result):
    c = run(nct06462092, lab(ANC, value, unit, NEWER, ucum=False), criterion="neutrophils")
    assert c.result is result, c.reason


@pytest.mark.parametrize("unit, value, result", [("gm/dL", "8.9", Result.FAIL), ("gm/dL", "9.1", Result.PASS),
                                                 ("g/L", "90", Result.FAIL)])
def test_haemoglobin_unit_spellings(nct06462092, unit, value, result):
    assert run(nct06462092, lab(HB, value, unit, NEWER, ucum=False), criterion="hemoglobin").result is result


@pytest.mark.parametrize("unit", ["\u03bcmol/L", "\u00b5mol/L", "mcmol/L", "umol/L"])
def test_bilirubin_in_micromoles_however_spelt(nct06462092, unit):
    # 30 µmol/L = 1.755 mg/dL against ULN 1.0 mg/dL: 1.76 × ULN, >= 1.5 × ULN fails.
    c = run(nct06462092, lab(BILI, 30, unit, NEWER, ucum=False, high=1.0, high_unit="mg/dL"), criterion="bilirubin")
    assert c.result is Result.FAIL, c.reason


def test_a_reason_keeps_the_reported_comparator(nct06462092):
    c = run(nct06462092, lab(BILI, 0.2, "mg/dL", NEWER, comparator="<", high=1.2), criterion="bilirubin")
    assert c.result is Result.PASS
    assert "<0.2 mg/dL" in c.reason


def test_a_unit_that_cannot_be_read_is_parsed_once(nct06462092):
    # Parsing a unit takes ~0.1-1 ms and units come from the data: what UCUM cannot read is
    # remembered too (quantities._parse, a bounded lru_cache), not parsed again on every call.
    from cds_service.engine import quantities

    table = nct06462092.units
    for _ in range(3):
        assert table.ucum_of(None, "weird-unit", None) == "weird-unit"
        with pytest.raises(quantities.NotConvertible, match="'weird-unit' cannot be converted to 'g/L'"):
            table.factor("weird-unit", "g/L")
        if _ == 0:
            misses = quantities._parse.cache_info().misses
    assert quantities._parse.cache_info().misses == misses
    assert quantities._parse.cache_info().maxsize is not None


# -- HER2 sent as text; no HER2 at all -----------------------------------------------------

IHC, INTERPRETATION = "85319-2", "48676-1"


def text_result(code: str, text: str, date: str = "2025-03-02") -> dict:
    obs = lab(code, None, None, date)
    obs["valueString"] = text
    return obs


@pytest.mark.parametrize("code, text, result", [
    (INTERPRETATION, "Negative", Result.PASS), (INTERPRETATION, "NEGATIVE.", Result.PASS),
    (INTERPRETATION, "Positive", Result.FAIL), (IHC, "1+", Result.PASS), (IHC, "Score 0", Result.PASS),
    (IHC, "3+", Result.FAIL), (IHC, "2+", Result.UNKNOWN), (IHC, "IHC 2+", Result.UNKNOWN),
    (INTERPRETATION, "Negative (see comment)", Result.UNKNOWN), (IHC, "1+ to 2+", Result.UNKNOWN),
    (INTERPRETATION, "low", Result.UNKNOWN),
])
def test_her2_sent_as_text_is_read_only_by_exact_words(nct06462092, code, text, result):
    c = run(nct06462092, text_result(code, text), criterion="her2-negative")
    assert c.result is result, c.reason


def test_an_unreadable_newer_her2_text_does_not_hand_over_to_an_older_result(nct06462092):
    c = run(nct06462092, text_result(INTERPRETATION, "Negative", "2024-01-10"),
            text_result(INTERPRETATION, "Positive - see addendum", "2025-03-02"), criterion="her2-negative")
    assert (c.result, c.why) == (Result.UNKNOWN, Why.UNINTERPRETABLE)


def test_no_her2_result_suggests_the_her2_immunostain(nct06462092):
    c = run(nct06462092, criterion="her2-negative")
    assert (c.result, c.why) == (Result.UNKNOWN, Why.NO_DATA)
    assert c.order is not None and c.order.code == "18474-7"
    two_plus = run(nct06462092, text_result(IHC, "2+"), criterion="her2-negative")
    assert two_plus.order is not None and two_plus.order.code == "96893-3"


PATHOLOGY_LOCAL = "urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.61"  # a pathology system's local test codes


def local_her2(text: str, value: str, date: str) -> dict:
    obs = text_result("x", value, date)
    obs["code"] = concept((PATHOLOGY_LOCAL, "HER2-IHC-77", text), text=text)
    return obs


@pytest.mark.parametrize("newer", [local_her2("HER2 (ERBB2) IHC", "3+", "2025-03-02"),
                                   local_her2("HER-2/NEU BY FISH", "AMPLIFIED", "2025-03-02"),
                                   local_her2("HER2 IHC", "3+", "2024-01-10")])  # the same day counts too
def test_a_her2_result_under_a_local_code_as_new_as_the_latest_assessment_makes_her2_unknown(nct06462092, newer):
    c = run(nct06462092, text_result(IHC, "1+", "2024-01-10"), newer, criterion="her2-negative")
    assert (c.result, c.why) == (Result.UNKNOWN, Why.UNRECOGNISED_CODE), c.reason
    assert c.evidence[0].reference == f"Observation/{newer['id']}" and c.evidence[0].role is Role.DECISIVE
    assert any(e.value == "1+" and e.role is Role.SUPPORTING for e in c.evidence)  # the IHC 1+ is still shown
    assert c.order is None  # the unread result may already settle it


@pytest.mark.parametrize("other", [local_her2("HER2 IHC", "3+", "2023-11-02"),  # older than the IHC 1+
                                   local_her2("HER2 extracellular domain, serum", "12.1", "2025-03-02"),
                                   local_her2("Neutrophils", "2.1", "2025-03-02")])
def test_older_or_other_local_results_leave_her2_decided(nct06462092, other):
    assert run(nct06462092, text_result(IHC, "1+", "2024-01-10"), other, criterion="her2-negative").result \
        is Result.PASS


def test_her2_recorded_only_under_a_local_code_is_named_not_ordered(nct06462092):
    c = run(nct06462092, local_her2("HER2 IHC", "0", "2024-01-10"), criterion="her2-negative")
    assert (c.result, c.why) == (Result.UNKNOWN, Why.UNRECOGNISED_CODE)
    assert "HER2 IHC" in c.reason and c.order is None


# -- pregnancy and lactation: how recent a diagnosis is, hCG sent as text -------------------

URINE_HCG = "2106-3"


def hcg_text(text: str, date: str = "2026-06-12T10:00:00-04:00") -> dict:
    obs = lab(URINE_HCG, None, None, date)
    obs["valueString"] = text
    return obs


@pytest.mark.parametrize("onset, result", [
    ("2026-05-25", Result.FAIL),  # three weeks ago, active: current
    ("2025-08-25", Result.FAIL),  # 42 weeks (294 days) back to the day: still within
    ("2025-08-24", Result.UNKNOWN),  # 42 weeks and a day: a past pregnancy; no test -> unknown (age 51)
    ("2019-03-02", Result.UNKNOWN),
])
def test_a_pregnancy_diagnosis_is_current_only_within_42_weeks(nct06462092, onset, result):
    c = run(nct06462092, condition(ICD10CM, "Z33.1", onset=onset), criterion="pregnancy-breastfeeding")
    assert c.result is result, c.reason
    if result is Result.UNKNOWN:
        assert c.why is Why.NO_DATA and c.evidence[0].role is Role.IGNORED and "past state" in c.evidence[0].note


def test_an_old_encounter_diagnosis_without_clinical_status_is_history(nct06462092):
    prenatal = condition(ICD10CM, "O09.511", clinical=None, verification=None, onset=None, recordedDate="2019-05-14")
    c = run(nct06462092, prenatal, hcg_text("Negative"), criterion="pregnancy-breastfeeding")
    assert c.result is Result.PASS


def test_an_undated_pregnancy_diagnosis_without_status_is_unknown(nct06462092):
    undated = condition(ICD10CM, "Z33.1", clinical=None, onset=None)
    c = run(nct06462092, undated, hcg_text("Negative"), criterion="pregnancy-breastfeeding")
    assert (c.result, c.why) == (Result.UNKNOWN, Why.NO_DATE)


@pytest.mark.parametrize("onset, result", [("2025-12-15", Result.FAIL), ("2024-06-01", Result.UNKNOWN)])
def test_a_lactation_diagnosis_counts_within_12_months(nct06462092, onset, result):
    c = run(nct06462092, condition(SNOMED, "413712001", onset=onset), criterion="pregnancy-breastfeeding")
    assert c.result is result


@pytest.mark.parametrize("text, result, why", [
    ("POSITIVE", Result.FAIL, None), ("Negative.", Result.PASS, None), ("neg", Result.PASS, None),
    ("weakly positive", Result.UNKNOWN, Why.UNINTERPRETABLE), ("see note", Result.UNKNOWN, Why.UNINTERPRETABLE),
])
def test_hcg_sent_as_text(nct06462092, text, result, why):
    c = run(nct06462092, hcg_text(text), criterion="pregnancy-breastfeeding")
    assert (c.result, c.why) == (result, why)


def test_a_positive_hcg_string_outranks_an_older_negative(nct06462092):
    c = run(nct06462092, hcg_text("Negative", "2026-06-02T10:00:00-04:00"), hcg_text("POSITIVE"),
            criterion="pregnancy-breastfeeding")
    assert c.result is Result.FAIL


def test_an_unreadable_newer_hcg_does_not_hand_over_to_an_older_negative(nct06462092):
    c = run(nct06462092, hcg_text("Negative", "2026-06-02T10:00:00-04:00"), hcg_text("equivocal, repeat"),
            criterion="pregnancy-breastfeeding")
    assert (c.result, c.why) == (Result.UNKNOWN, Why.UNINTERPRETABLE)


@pytest.mark.parametrize("entry, why", [(local_condition("Pregnancy, 8 weeks"), Why.UNRECOGNISED_CODE),
                                        (text_only_condition("Breastfeeding"), Why.TEXT_ONLY)])
def test_pregnancy_named_by_text_turns_a_negative_test_into_review(nct06462092, entry, why):
    c = run(nct06462092, entry, hcg_text("Negative"), criterion="pregnancy-breastfeeding")
    assert (c.result, c.why) == (Result.REVIEW, why)


@pytest.mark.parametrize("entry", [local_condition("Not pregnant"), local_condition("Pregnancy test negative"),
                                   local_condition("Pregnancy", clinical="resolved"),
                                   local_condition("Encounter for contraceptive management")])
def test_what_names_pregnancy_without_being_one_leaves_the_negative_test_deciding(nct06462092, entry):
    c = run(nct06462092, entry, hcg_text("Negative"), criterion="pregnancy-breastfeeding")
    assert c.result is Result.PASS


def test_a_snomed_substance_allergy_to_pemetrexed_fails(nct06462092):
    # Cerner-style: the allergen coded as the SNOMED CT substance, with the brand as text.
    substance = allergy(SNOMED, "409159000", text="ALIMTA")
    c = run(nct06462092, substance, criterion="study-drug-allergy")
    assert c.result is Result.FAIL and c.evidence[0].code == f"{SNOMED}|409159000"


@pytest.mark.parametrize("code, result, why", [
    ("D05.11", Result.UNKNOWN, Why.NONSPECIFIC_CODE),  # intraductal carcinoma in situ: confirm the invasive primary
    ("D0511", Result.UNKNOWN, Why.NONSPECIFIC_CODE),
    ("C44.511", Result.FAIL, None),  # basal cell carcinoma of the skin of the breast: not a breast primary
    ("C43.52", Result.FAIL, None),
])
def test_in_situ_and_skin_of_breast_codes(nct06462092, code, result, why):
    c = run(nct06462092, condition(ICD10CM, code), criterion="breast-cancer")
    assert (c.result, c.why) == (result, why)


def test_a_converted_uln_is_shown_briefly_in_the_reason(nct06462092):
    # 30 µmol/L against a ULN of 1.2 mg/dL: the ULN in µmol/L is 20.51282051282051282051282051 exactly
    c = run(nct06462092, lab(BILI, 30, "umol/L", NEWER, high=1.2, high_unit="mg/dL"), criterion="bilirubin")
    assert "ULN 20.5 umol/L" in c.reason and "20.5128" not in c.reason
    assert c.evidence[0].uln.value > 20.51  # the evaluation keeps the exact value


@pytest.mark.parametrize("day, why", [("2026-05-18", Why.UNRECOGNISED_CODE),  # 28 days back: within the look-back
                                      ("2026-05-17", Why.NO_DATA)])  # 29 days back: too old to matter
def test_a_local_code_result_counts_only_within_the_look_back(nct06462092, day, why):
    c = run(nct06462092, local_lab("HGB", 7.9, "g/dL", f"{day}T23:30:00-10:00"), criterion="hemoglobin")
    assert (c.result, c.why) == (Result.UNKNOWN, why)


def test_a_text_only_result_without_a_code_is_a_mention_too(nct06462092):
    obs = local_lab("Hemoglobin", 7.9, "g/dL")
    obs["code"] = {"text": "Hemoglobin"}
    c = run(nct06462092, lab(HB, 13.1, "g/dL", OLDER), obs, criterion="hemoglobin")
    assert (c.result, c.why) == (Result.UNKNOWN, Why.TEXT_ONLY)


def test_only_resources_filed_under_no_known_code_are_unrecognised(nct06462092):
    from cds_service.engine import PatientRecord

    known, local, bare = lab(HB, 13.1, "g/dL"), local_lab("HGB", 7.9, "g/dL"), local_lab("x", 1, "g/dL")
    bare["code"] = {"text": "free text only"}
    known["code"]["coding"].append({"system": EPIC_LAB, "code": "1234", "display": "HGB"})  # LOINC beside local
    record = PatientRecord([patient(), known, local, bare])
    assert record.not_coded_in("Observation", nct06462092.library.everything()) == [local, bare]
    assert PatientRecord([patient(), known]).not_coded_in("Observation", nct06462092.library.everything()) == []


@pytest.mark.parametrize("site, result, why", [
    ((EPIC_DX, "BS-77", "Leptomeninges"), Result.UNKNOWN, Why.UNRECOGNISED_CODE),
    ((SNOMED, "999999002", "Subarachnoid space, spinal"), Result.UNKNOWN, Why.UNRECOGNISED_CODE),
    ((EPIC_DX, "BS-78", "Dura mater"), Result.FAIL, None),  # a dural metastasis is not leptomeningeal
    ((SNOMED, "12738006", "Brain structure"), Result.FAIL, None),
])
def test_a_secondary_cancer_site_the_set_lacks_is_unknown_when_its_text_names_the_meninges(nct06462092, site, result,
                                                                                          why):
    c = run(nct06462092, secondary_cancer(site), criterion="leptomeningeal-metastases")
    assert (c.result, c.why) == (result, why)


def test_a_site_given_as_text_only(nct06462092):
    c = secondary_cancer()
    c["bodySite"] = [{"text": "leptomeninges (lumbar)"}]
    out = run(nct06462092, c, criterion="leptomeningeal-metastases")
    assert (out.result, out.why) == (Result.UNKNOWN, Why.TEXT_ONLY)


@pytest.mark.parametrize("text, analyte", [("Carboxyhemoglobin", "hemoglobin"), ("Hemoglobin A2", "hemoglobin"),
                                           ("Neutrophil cytoplasmic Ab (ANCA)", "neutrophils"),
                                           ("Platelet factor 4 Ab", "platelets")])
def test_tests_that_share_a_word_with_an_analyte_do_not_stand_in_the_way(nct06462092, text, analyte):
    code = {"hemoglobin": (HB, 13.1, "g/dL"), "neutrophils": (ANC, 3.2, "10*3/uL"), "platelets": (PLT, 212, "10*3/uL")}
    c = run(nct06462092, lab(*code[analyte], OLDER), local_lab(text, 1, "%"), criterion=analyte)
    assert c.result is Result.PASS
