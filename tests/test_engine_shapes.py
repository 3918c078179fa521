"""The shapes EHRs send results in (issue 13, item 5): resources contained in their
DiagnosticReport or panel, report -> result links, hasMember panels, and references
of every form (relative, absolute, versioned, urn:uuid:, #contained) -- and the CSF
cytology read from them (items 4 and 6). A shape the engine cannot read never
decides silently: cytology it cannot read is unknown, never a fail."""

from __future__ import annotations

import copy
import datetime as dt

import pytest

from cds_service.engine import PatientRecord, Result, Why, evaluate
from cds_service.engine.model import Role
from fhirbuild import LOINC, SNOMED, UCUM, concept, lab, patient

AS_OF = dt.date(2026, 6, 15)
V2_0487 = "http://terminology.hl7.org/CodeSystem/v2-0487"
EPIC_LAB = "urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.0"  # an Epic-style local lab code system
CYTOLOGY = (LOINC, "47523-6", "Cytology report of Body fluid Cyto stain")
POSITIVE = (LOINC, "LA6576-8", "Positive")
NEGATIVE = (LOINC, "LA6577-6", "Negative")
SNOMED_NEGATIVE = (SNOMED, "260385009", "Negative (qualifier value)")
CSF = (SNOMED, "258450006", "Cerebrospinal fluid sample (specimen)")
LM = "leptomeningeal-metastases"


def run(trial, *resources, criterion, full_urls=None):
    record = PatientRecord([patient(), *resources], full_urls)
    return evaluate(trial, record, AS_OF).criterion(criterion)


def quantity(value, unit="10*3/uL"):
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def epic_cbc_report(rid="dr-cbc", date="2026-06-12T07:40:00-04:00", **values) -> dict:
    """A CBC DiagnosticReport as some EHR lab interfaces send it: each result an Observation
    contained in the report, referenced from `result` as "#id", without its own subject or
    effective time (both are the report's)."""
    codes = {"anc": ("751-8", "Neutrophils [#/volume] in Blood by Automated count"),
             "plt": ("777-3", "Platelets [#/volume] in Blood by Automated count"),
             "hb": ("718-7", "Hemoglobin [Mass/volume] in Blood")}
    contained = []
    for key, value in values.items():
        code, display = codes[key]
        contained.append({"resourceType": "Observation", "id": key, "status": "final",
                          "code": concept((EPIC_LAB, f"LAB{code}", display.split(" ")[0].upper()),
                                          (LOINC, code, display)),
                          "valueQuantity": quantity(*value) if isinstance(value, tuple) else quantity(value)})
    return {"resourceType": "DiagnosticReport", "id": rid, "status": "final",
            "category": [concept(("http://terminology.hl7.org/CodeSystem/v2-0074", "LAB", "Laboratory"))],
            "code": concept((LOINC, "58410-2", "CBC panel - Blood by Automated count"), text="CBC"),
            "subject": {"reference": "Patient/p1", "display": "Testpatient, Ada"},
            "effectiveDateTime": date, "issued": "2026-06-12T09:02:11-04:00",
            "contained": contained, "result": [{"reference": f"#{c['id']}"} for c in contained]}


# -- contained results ------------------------------------------------------------------

def test_an_anc_contained_in_its_report_is_read_and_named_by_its_container(nct06462092):
    older = lab("751-8", 3.2, "10*3/uL", "2026-06-08T08:00:00-04:00")
    report = epic_cbc_report(anc=0.9)
    c = run(nct06462092, older, report, criterion="neutrophils")
    assert c.result is Result.FAIL
    decisive = c.evidence[0]
    assert decisive.role is Role.DECISIVE and decisive.reference == "DiagnosticReport/dr-cbc#anc"
    assert decisive.value == "0.9" and decisive.date == "2026-06-12T07:40:00-04:00"  # the report's time


def test_a_contained_result_keeps_its_own_time_and_subject(nct06462092):
    report = epic_cbc_report(anc=0.9)
    report["contained"][0]["effectiveDateTime"] = "2026-04-01T08:00:00-04:00"  # drawn long before: stale
    c = run(nct06462092, report, criterion="neutrophils")
    assert (c.result, c.why) == (Result.UNKNOWN, Why.STALE)


def test_the_input_is_not_changed_by_reading_contained_resources(nct06462092):
    report = epic_cbc_report(anc=0.9, plt=250, hb=(12.1, "g/dL"))
    sent = copy.deepcopy(report)
    for criterion in ("neutrophils", "platelets", "hemoglobin"):
        run(nct06462092, report, criterion=criterion)
    assert report == sent


def test_contained_results_of_every_analyte_decide_their_criteria(nct06462092):
    report = epic_cbc_report(anc=2.4, plt=60, hb=(12.1, "g/dL"))
    evaluation = evaluate(nct06462092, [patient(), report], AS_OF)
    assert evaluation.criterion("neutrophils").result is Result.PASS
    assert evaluation.criterion("platelets").result is Result.FAIL
    assert evaluation.criterion("platelets").evidence[0].reference == "DiagnosticReport/dr-cbc#plt"
    assert evaluation.criterion("hemoglobin").result is Result.PASS


def test_an_invalid_contained_result_does_not_discard_its_report_nor_decide(nct06462092):
    report = epic_cbc_report(anc=2.4, plt=250)
    report["contained"][1]["valueQuantity"]["value"] = "lots"  # not a decimal
    c = run(nct06462092, report, criterion="platelets")
    assert (c.result, c.why) == (Result.UNKNOWN, Why.INVALID_RESOURCE)
    assert run(nct06462092, report, criterion="neutrophils").result is Result.PASS


def test_contained_ids_are_local_to_their_container():
    a, b = epic_cbc_report("dr-a", anc=1.0), epic_cbc_report("dr-b", anc=2.0)
    standalone = lab("751-8", 3.0, "10*3/uL", id="anc")
    record = PatientRecord([patient(), a, b, standalone])
    assert record.resolve("#anc", a)["valueQuantity"]["value"] == 1.0
    assert record.resolve("#anc", b)["valueQuantity"]["value"] == 2.0
    assert record.resolve("Observation/anc") is standalone  # never a contained one
    assert record.resolve("#anc") is None  # "#id" means nothing outside a resource
    inner = record.resolve("#anc", b)
    assert record.container(inner) is b and record.resolve("#", inner) is b
    assert record.reference(inner) == "DiagnosticReport/dr-b#anc"
    assert record.reports_listing(inner) == [b]


def test_a_contained_resource_of_a_container_without_id_is_named_by_the_containers_full_url():
    report = epic_cbc_report(anc=1.0)
    del report["id"]
    record = PatientRecord([patient(), report], {"urn:uuid:7f0c5b86-6c3e-4f7e-9b8e-0a1d2c3b4a59": report})
    inner = record.resolve("#anc", report)
    assert record.reference(inner) == "urn:uuid:7f0c5b86-6c3e-4f7e-9b8e-0a1d2c3b4a59#anc"


# -- hasMember panels ------------------------------------------------------------------

def cbc_panel(members: list[str], date="2026-06-12T07:40:00-04:00", **extra) -> dict:
    return {"resourceType": "Observation", "id": "cbc-panel", "status": "final",
            "code": concept((LOINC, "58410-2", "CBC panel - Blood by Automated count")),
            "subject": {"reference": "Patient/p1"}, "effectiveDateTime": date,
            "hasMember": [{"reference": m} for m in members], **extra}


def test_a_cbc_panel_with_members_in_the_bundle(nct06462092):
    members = [lab("751-8", 0.8, "10*3/uL", "2026-06-12T07:40:00-04:00", id="m-anc"),
               lab("777-3", 210, "10*3/uL", "2026-06-12T07:40:00-04:00", id="m-plt")]
    panel = cbc_panel(["Observation/m-anc", "https://ehr.example.org/fhir/Observation/m-plt"])
    evaluation = evaluate(nct06462092, [patient(), panel, *members], AS_OF)
    assert evaluation.criterion("neutrophils").result is Result.FAIL
    assert evaluation.criterion("neutrophils").evidence[0].reference == "Observation/m-anc"
    assert evaluation.criterion("platelets").result is Result.PASS
    record = PatientRecord([patient(), panel, *members])
    assert record.referenced(panel, "hasMember") == members


def test_a_cbc_panel_with_contained_members(nct06462092):
    plt = {"resourceType": "Observation", "id": "plt", "status": "final",
           "code": concept((LOINC, "777-3", "Platelets [#/volume] in Blood by Automated count")),
           "valueQuantity": quantity(60)}
    older = lab("777-3", 250, "10*3/uL", "2026-06-08T08:00:00-04:00")
    panel = cbc_panel(["#plt"], contained=[plt])
    c = run(nct06462092, older, panel, criterion="platelets")
    assert c.result is Result.FAIL and c.evidence[0].reference == "Observation/cbc-panel#plt"


# -- CSF cytology: values ------------------------------------------------------------

def csf_specimen(sid="csf-1", coding=CSF) -> dict:
    return {"resourceType": "Specimen", "id": sid, "type": concept(coding),
            "subject": {"reference": "Patient/p1"}, "collection": {"collectedDateTime": "2026-05-20T10:00:00-04:00"}}


def cytology_obs(oid="cyto-1", specimen: str | None = "Specimen/csf-1", **value) -> dict:
    obs = {"resourceType": "Observation", "id": oid, "status": "final",
           "category": [concept(("http://terminology.hl7.org/CodeSystem/observation-category", "laboratory"))],
           "code": concept(CYTOLOGY), "subject": {"reference": "Patient/p1"},
           "effectiveDateTime": "2026-05-20T10:00:00-04:00", **value}
    if specimen:
        obs["specimen"] = {"reference": specimen}
    return obs


@pytest.mark.parametrize("value", [{"valueCodeableConcept": concept(POSITIVE)},
                                   {"valueString": "POSITIVE"}, {"valueString": "Detected"},
                                   {"valueString": " positive. "}])
def test_positive_csf_cytology_passes(nct06462092, value):
    c = run(nct06462092, cytology_obs(**value), csf_specimen(), criterion=LM)
    assert c.result is Result.PASS
    assert c.evidence[0].reference == "Observation/cyto-1" and c.evidence[0].role is Role.DECISIVE


@pytest.mark.parametrize("value", [{"valueCodeableConcept": concept(NEGATIVE)},
                                   {"valueCodeableConcept": concept(SNOMED_NEGATIVE)},
                                   {"valueString": "Negative"}, {"valueString": "not detected"},
                                   {"dataAbsentReason": concept(
                                       ("http://terminology.hl7.org/CodeSystem/data-absent-reason",
                                        "not-performed", "Not Performed"))}])
def test_negative_or_absent_csf_cytology_does_not_establish_lm(nct06462092, value):
    c = run(nct06462092, cytology_obs(**value), csf_specimen(), criterion=LM)
    assert c.result is Result.FAIL
    assert c.evidence[0].reference == "Observation/cyto-1" and c.evidence[0].role is Role.IGNORED


@pytest.mark.parametrize("value, shown", [
    ({"valueString": "malignant cells present"}, "malignant cells present"),
    ({"valueString": "see report"}, "see report"),
    ({"valueString": "Positive for malignant cells"}, "Positive for malignant cells"),
    ({"valueCodeableConcept": concept((SNOMED, "22033007", "Atypical"))}, "Atypical"),
    ({"valueCodeableConcept": concept((EPIC_LAB, "SUSP", "Suspicious"))}, "Suspicious"),
    ({"valueCodeableConcept": {"text": "Positive"}}, "Positive"),  # text, no code: never read
    ({"valueBoolean": True}, "True"),
    ({}, None),  # resulted, no value, no dataAbsentReason
])
def test_unreadable_csf_cytology_is_unknown_never_a_fail(nct06462092, value, shown):
    c = run(nct06462092, cytology_obs(**value), csf_specimen(), criterion=LM)
    assert (c.result, c.why) == (Result.UNKNOWN, Why.UNINTERPRETABLE)
    assert c.evidence[0].reference == "Observation/cyto-1"
    assert (shown is None and c.evidence[0].value is None) or shown in c.evidence[0].value


def test_a_positive_outranks_an_unreadable_result(nct06462092):
    c = run(nct06462092, cytology_obs("cyto-1", valueString="see report"),
            cytology_obs("cyto-2", valueCodeableConcept=concept(POSITIVE)), csf_specimen(), criterion=LM)
    assert c.result is Result.PASS and c.evidence[0].reference == "Observation/cyto-2"


# -- CSF cytology: specimens ---------------------------------------------------------

def test_a_specimen_typed_with_hl7_v2_0487_csf(nct06462092):
    specimen = csf_specimen(coding=(V2_0487, "CSF", "Cerebral spinal fluid"))
    c = run(nct06462092, cytology_obs(valueCodeableConcept=concept(POSITIVE)), specimen, criterion=LM)
    assert c.result is Result.PASS


def test_a_specimen_of_another_type_is_not_csf(nct06462092):
    pleural = csf_specimen(coding=(SNOMED, "418564007", "Pleural fluid specimen"))
    c = run(nct06462092, cytology_obs(valueCodeableConcept=concept(POSITIVE)), pleural, criterion=LM)
    assert (c.result, c.why) == (Result.UNKNOWN, Why.SPECIMEN_NOT_CONFIRMED)


def test_a_specimen_named_only_by_text_is_not_read(nct06462092):
    obs = cytology_obs(specimen=None, valueCodeableConcept=concept(POSITIVE))
    obs["specimen"] = {"display": "CSF"}
    c = run(nct06462092, obs, criterion=LM)
    assert (c.result, c.why) == (Result.UNKNOWN, Why.SPECIMEN_NOT_CONFIRMED)


@pytest.mark.parametrize("reference", ["Specimen/csf-1", "https://ehr.example.org/fhir/Specimen/csf-1",
                                       "https://ehr.example.org/fhir/Specimen/csf-1/_history/3",
                                       "urn:uuid:0b7e3f52-92b5-4a0f-8d6e-2f1c9b1e6a11"])
def test_a_specimen_referenced_in_every_form(nct06462092, reference):
    specimen = csf_specimen()
    full_urls = {"urn:uuid:0b7e3f52-92b5-4a0f-8d6e-2f1c9b1e6a11": specimen}
    c = run(nct06462092, cytology_obs(specimen=reference, valueCodeableConcept=concept(POSITIVE)), specimen,
            criterion=LM, full_urls=full_urls)
    assert c.result is Result.PASS


def test_a_specimen_contained_in_the_observation(nct06462092):
    obs = cytology_obs(specimen="#spec", valueCodeableConcept=concept(POSITIVE))
    obs["contained"] = [{"resourceType": "Specimen", "id": "spec", "type": concept(CSF)}]
    assert run(nct06462092, obs, criterion=LM).result is Result.PASS


def cytology_report(rid="dr-cyto", results=(), specimen: str | None = "Specimen/csf-1", **extra) -> dict:
    report = {"resourceType": "DiagnosticReport", "id": rid, "status": "final",
              "category": [concept(("http://terminology.hl7.org/CodeSystem/v2-0074", "CP", "Cytopathology"))],
              "code": concept(CYTOLOGY), "subject": {"reference": "Patient/p1"},
              "effectiveDateTime": "2026-05-20T10:00:00-04:00", "issued": "2026-05-21T15:10:00-04:00",
              "result": [{"reference": r} for r in results], **extra}
    if specimen:
        report["specimen"] = [{"reference": specimen}]
    return report


@pytest.mark.parametrize("reference", ["Observation/cyto-1", "https://ehr.example.org/fhir/Observation/cyto-1",
                                       "urn:uuid:5d3c2a10-1f0e-4d7b-a9c8-7b6a5f4e3d21"])
def test_the_specimen_given_by_the_report_listing_the_result(nct06462092, reference):
    obs = cytology_obs(specimen=None, valueCodeableConcept=concept(POSITIVE))
    report = cytology_report(results=[reference])
    c = run(nct06462092, obs, report, csf_specimen(), criterion=LM,
            full_urls={"urn:uuid:5d3c2a10-1f0e-4d7b-a9c8-7b6a5f4e3d21": obs})
    assert c.result is Result.PASS
    assert c.evidence[0].reference == "Observation/cyto-1" and c.evidence[0].role is Role.DECISIVE
    # The report has no finding of its own: its result is read, not the report twice.
    report_evidence = next(e for e in c.evidence if e.reference == "DiagnosticReport/dr-cyto")
    assert report_evidence.role is Role.IGNORED and "Observation/cyto-1" in report_evidence.note


def test_a_report_listing_the_result_of_another_report_does_not_lend_it_its_specimen(nct06462092):
    obs = cytology_obs(specimen=None, valueCodeableConcept=concept(POSITIVE))
    other = cytology_report("dr-other", results=["Observation/not-this-one"])
    c = run(nct06462092, obs, other, csf_specimen(), criterion=LM)
    assert (c.result, c.why) == (Result.UNKNOWN, Why.SPECIMEN_NOT_CONFIRMED)


def test_an_epic_style_cytology_report_with_its_result_and_specimen_contained(nct06462092):
    report = cytology_report(results=["#r1"], specimen="#s1", contained=[
        {"resourceType": "Specimen", "id": "s1", "type": concept((V2_0487, "CSF", "Cerebral spinal fluid"))},
        {"resourceType": "Observation", "id": "r1", "status": "final", "code": concept(CYTOLOGY),
         "valueString": "Positive", "specimen": {"reference": "#s1"}}])
    c = run(nct06462092, report, criterion=LM)
    assert c.result is Result.PASS
    assert c.evidence[0].reference == "DiagnosticReport/dr-cyto#r1" and c.evidence[0].value == "Positive"


def test_a_cytology_report_whose_coded_result_carries_the_value(nct06462092):
    # The report is coded as the cytology; its result, under a local code, carries the finding.
    finding = {"resourceType": "Observation", "id": "cyto-finding", "status": "final",
               "code": concept((EPIC_LAB, "CYTDX", "Cytology interpretation")),
               "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2026-05-20T10:00:00-04:00",
               "valueCodeableConcept": concept(POSITIVE)}
    report = cytology_report(results=["Observation/cyto-finding"])
    c = run(nct06462092, report, finding, csf_specimen(), criterion=LM)
    assert c.result is Result.PASS
    assert c.evidence[0].reference == "DiagnosticReport/dr-cyto" and c.evidence[0].value == "Positive"
    assert "Observation/cyto-finding" in c.evidence[0].note
    finding["valueCodeableConcept"] = concept(NEGATIVE)
    assert run(nct06462092, report, finding, csf_specimen(), criterion=LM).result is Result.FAIL
    finding["valueCodeableConcept"] = concept((SNOMED, "22033007", "Atypical"))
    c = run(nct06462092, report, finding, csf_specimen(), criterion=LM)
    assert (c.result, c.why) == (Result.UNKNOWN, Why.UNINTERPRETABLE)


def test_a_report_whose_results_are_not_in_the_record_is_unknown(nct06462092):
    report = cytology_report(results=["Observation/not-fetched"])
    c = run(nct06462092, report, csf_specimen(), criterion=LM)
    assert (c.result, c.why) == (Result.UNKNOWN, Why.UNINTERPRETABLE)
    assert "not in the record" in c.evidence[0].note


@pytest.mark.parametrize("conclusion, result", [
    ({"conclusionCode": [concept(POSITIVE)]}, Result.PASS),
    ({"conclusionCode": [concept(SNOMED_NEGATIVE)]}, Result.FAIL),
    ({"conclusionCode": [concept((SNOMED, "22033007", "Atypical"))]}, Result.UNKNOWN),
    ({"conclusion": "Negative."}, Result.FAIL),
    ({"conclusion": "POSITIVE"}, Result.PASS),
    ({"conclusion": "Malignant cells present, consistent with metastatic carcinoma."}, Result.UNKNOWN),
    # A coded conclusion decides; its free-text summary beside it is not read.
    ({"conclusionCode": [concept(NEGATIVE)], "conclusion": "No malignant cells; reactive lymphocytes"},
     Result.FAIL),
    ({}, Result.UNKNOWN),
])
def test_a_cytology_report_read_by_its_conclusion(nct06462092, conclusion, result):
    c = run(nct06462092, cytology_report(**conclusion), csf_specimen(), criterion=LM)
    assert c.result is result
    assert result is not Result.UNKNOWN or c.why is Why.UNINTERPRETABLE


def test_an_appended_report_is_a_result(nct06462092):
    report = cytology_report(status="appended", conclusionCode=[concept(POSITIVE)])
    assert run(nct06462092, report, csf_specimen(), criterion=LM).result is Result.PASS
    report = cytology_report(status="registered", conclusionCode=[concept(POSITIVE)])
    assert run(nct06462092, report, csf_specimen(), criterion=LM).result is Result.FAIL


def test_a_result_without_value_whose_report_carries_the_finding(nct06462092):
    obs = cytology_obs(specimen=None)  # no value: the narrative is in the report
    report = cytology_report(results=["Observation/cyto-1"], conclusionCode=[concept(POSITIVE)])
    c = run(nct06462092, obs, report, csf_specimen(), criterion=LM)
    assert c.result is Result.PASS and c.evidence[0].reference == "DiagnosticReport/dr-cyto"
    report["conclusionCode"] = [concept(NEGATIVE)]
    assert run(nct06462092, obs, report, csf_specimen(), criterion=LM).result is Result.FAIL
