"""The procedure-recency kind, through the invented trial TEST-0007 (radiotherapy in progress or
ended within 14 days excludes; "> 2 weeks" read as 15 days or more): the boundary both sides,
statuses, the shapes EHRs send (mCODE course summaries without a display, CodeX records whose
category says radiotherapy, CPT beside a local code, ICD-10-PCS, contained Procedures, local codes
named only by text), and what never passes (undated, imprecise, unknown status, invalid, a
Procedures search cut short)."""

from __future__ import annotations

import datetime as dt
import json
import itertools
from pathlib import Path

import pytest

from cds_service.engine import Cut, PatientRecord, Result, evaluate
from cds_service.fhir.needs import data_needs
from cds_service.trials import load_trial
from fhirbuild import PATIENT_REF, SNOMED, concept, patient

TRIAL = load_trial(Path(__file__).parent / "trials" / "TEST-0007.yaml")
AS_OF = dt.date(2026, 6, 15)
CPT = "http://www.ama-assn.org/go/cpt"
PCS = "http://www.cms.gov/Medicare/Coding/ICD10"
LOCAL = "urn:oid:1.2.840.114350.1.13.0.1.7.2.696580"  # an Epic-style local procedure code system
COURSE = "1217123003"  # mCODE's radiotherapy course summary code
_ids = itertools.count(1)


def procedure(*codings, status="completed", text=None, **performed):
    p = {"resourceType": "Procedure", "id": f"proc-{next(_ids)}", "status": status, "subject": PATIENT_REF,
         "code": concept(*(codings or ((SNOMED, COURSE),)), text=text)}
    p.update(performed)
    return p


def judge(*procedures, cuts=()):
    evaluation = evaluate(TRIAL, PatientRecord([patient()] + list(procedures), cuts=cuts), AS_OF)
    return next(c for c in evaluation.criteria if c.id == "radiotherapy-recency")


def ended(day, start="2026-04-20"):
    return {"performedPeriod": {"start": start, "end": day}}


@pytest.mark.parametrize("day, result", [("2026-06-02", Result.FAIL), ("2026-06-01", Result.FAIL),
                                         ("2026-05-31", Result.PASS)])
def test_ended_13_and_14_days_before_fails_15_passes(day, result):
    c = judge(procedure(**ended(day)))
    assert c.result is result
    assert c.evidence[0].role.value == "decisive" and c.evidence[0].reference.startswith("Procedure/")
    if result is Result.PASS:
        assert c.reason == ("latest radiotherapy ended 2026-05-31 (15 days before), more than 14 days ago "
                            "(Radiotherapy course of treatment (regime/therapy)): confirm the effects of "
                            "radiotherapy have resolved")
    else:
        assert "within 14 days" in c.reason


def test_days_are_counted_in_the_time_zone_the_date_was_recorded_in():
    # 23:30 in New York on 31 May is 1 June in UTC: the recorded day (31 May, 15 days) decides.
    assert judge(procedure(performedDateTime="2026-05-31T23:30:00-04:00")).result is Result.PASS
    assert judge(procedure(performedDateTime="2026-06-01T00:10:00+02:00")).result is Result.FAIL


@pytest.mark.parametrize("status", ["in-progress", "on-hold"])
def test_in_progress_or_on_hold_fails_whatever_the_dates(status):
    c = judge(procedure(status=status, **ended("2026-03-01", start="2026-02-01")))
    assert c.result is Result.FAIL and c.reason.startswith("radiotherapy in progress")


def test_a_completed_course_without_a_date_or_with_an_imprecise_one_is_unknown():
    c = judge(procedure())
    assert c.result is Result.UNKNOWN and c.why.value == "no-date" and "may have ended within 14 days" in c.reason
    assert judge(procedure(performedDateTime="2026-06")).why.value == "imprecise-date"
    assert judge(procedure(performedDateTime="2026-04")).result is Result.PASS  # all of April is > 14 days


def test_a_start_without_an_end_fails_when_recent_and_is_unknown_otherwise():
    assert judge(procedure(performedPeriod={"start": "2026-06-05"})).result is Result.FAIL
    c = judge(procedure(status="stopped", performedPeriod={"start": "2026-04-01"}))
    assert c.result is Result.UNKNOWN and c.why.value == "no-date" and "started 2026-04-01" in c.reason


def test_stopped_is_read_by_its_end_and_unknown_status_is_unknown():
    assert judge(procedure(status="stopped", **ended("2026-06-10"))).result is Result.FAIL
    assert judge(procedure(status="stopped", **ended("2026-05-01"))).result is Result.PASS
    c = judge(procedure(status="unknown", **ended("2025-01-01", start="2024-12-01")))
    assert c.result is Result.UNKNOWN and c.why.value == "uninterpretable-value"


def test_planned_radiotherapy_is_for_review():
    c = judge(procedure(status="preparation"))
    assert c.result is Result.REVIEW and "in preparation" in c.reason
    c = judge(procedure(performedDateTime="2026-06-20"))
    assert c.result is Result.REVIEW and "after the evaluation date" in c.reason


@pytest.mark.parametrize("status", ["entered-in-error", "not-done"])
def test_entered_in_error_and_not_done_are_ignored(status):
    c = judge(procedure(status=status, performedDateTime="2026-06-10"))
    assert c.result is Result.PASS and c.reason == "no radiotherapy recorded"
    assert c.evidence[0].role.value == "ignored" and status in c.evidence[0].note


def test_none_recorded_passes_and_says_so_unless_the_search_was_cut_short():
    other = procedure((SNOMED, "71651007", "Mammography (procedure)"), performedDateTime="2026-06-10")
    c = judge(other)
    assert c.result is Result.PASS and c.reason == "no radiotherapy recorded" and c.evidence == []
    c = judge(other, cuts=[Cut("Procedure")])
    assert c.result is Result.UNKNOWN and c.why.value == "incomplete-data"
    # an earlier course passes on the absence of a recent one: a cut makes that unknown too
    assert judge(procedure(**ended("2026-01-10")), cuts=[Cut("Procedure")]).why.value == "incomplete-data"


def test_any_failing_record_fails_otherwise_any_unknown_and_the_latest_ended_is_named():
    old, older = procedure(**ended("2026-03-01")), procedure(**ended("2025-11-01", start="2025-10-01"))
    undated, recent = procedure(), procedure(**ended("2026-06-10"))
    assert judge(old, undated, recent).result is Result.FAIL
    assert judge(old, undated).result is Result.UNKNOWN
    c = judge(older, old)
    assert c.result is Result.PASS and "2026-03-01" in c.reason
    assert [e.reference for e in c.evidence] == [f"Procedure/{old['id']}", f"Procedure/{older['id']}"]
    assert c.evidence[1].note == "an earlier one"


def test_cpt_beside_a_local_code_and_cpt_ranges_are_exact():
    both = procedure((LOCAL, "RAD1042", "XRT TREATMENT DELIVERY"), (CPT, "77412"), performedDateTime="2026-06-09")
    c = judge(both)
    assert c.result is Result.FAIL and c.evidence[0].code == f"{CPT}|77412"
    assert judge(procedure((CPT, "77523"), performedDateTime="2026-06-09")).result is Result.FAIL  # proton
    assert judge(procedure((CPT, "77778"), performedDateTime="2026-06-09")).result is Result.FAIL  # brachytherapy
    # imaging (77067 mammography), planning (77263) and hyperthermia (77600) are not radiotherapy
    for code in ("77067", "77263", "77600"):
        assert judge(procedure((CPT, code), performedDateTime="2026-06-09")).result is Result.PASS


def test_icd10_pcs_section_d_and_the_codex_radiotherapy_category():
    assert judge(procedure((PCS, "D020DZZ"), performedDateTime="2026-06-09")).result is Result.FAIL
    assert judge(procedure((PCS, "0DTJ4ZZ"), performedDateTime="2026-06-09")).result is Result.PASS  # not section D
    phase = procedure((LOCAL, "RT-PH-1", "Phase 1"), **ended("2026-06-12"))
    phase["category"] = concept((SNOMED, "1287742003", "Radiotherapy (procedure)"))
    c = judge(phase)
    assert c.result is Result.FAIL and c.evidence[0].code == f"{SNOMED}|1287742003"


def test_a_local_code_alone_whose_text_names_radiotherapy_is_never_silent():
    wbrt = procedure((LOCAL, "ONC-77", "WBRT 30 Gy/10 fx"), performedDateTime="2026-06-08")
    c = judge(wbrt)
    assert c.result is Result.REVIEW and c.why.value == "unrecognised-code"
    assert c.evidence[0].display == "WBRT 30 Gy/10 fx" and "may be radiotherapy" in c.reason
    text_only = {**procedure(status="in-progress"), "code": {"text": "SRS to left frontal lesion"}}
    assert judge(text_only).why.value == "text-only"
    # long over either way: it cannot change the outcome, and is named
    c = judge(procedure((LOCAL, "ONC-77", "WBRT"), performedDateTime="2025-01-08"))
    assert c.result is Result.PASS and c.evidence[0].display == "WBRT"
    # a coded recent course still fails; a simulation is not radiotherapy given
    assert judge(wbrt, procedure(**ended("2026-06-10"))).result is Result.FAIL
    sim = procedure((LOCAL, "ONC-12", "WBRT simulation"), performedDateTime="2026-06-08")
    assert judge(sim).result is Result.PASS


def test_a_contained_procedure_is_read_and_named_by_its_container():
    summary = procedure((LOCAL, "RT-SUMMARY", "Treatment summary"), status="completed",
                        performedDateTime="2026-06-12")
    summary["code"] = {"coding": [{"system": LOCAL, "code": "RT-SUMMARY"}]}  # no text: not a mention
    summary["contained"] = [{"resourceType": "Procedure", "id": "phase1", "status": "completed",
                             "subject": PATIENT_REF, "code": concept((SNOMED, "1222565005")),
                             "performedPeriod": {"start": "2026-05-20", "end": "2026-06-12"}}]
    c = judge(summary)
    assert c.result is Result.FAIL and c.evidence[0].reference == f"Procedure/{summary['id']}#phase1"


def test_an_invalid_radiotherapy_record_is_unknown():
    broken = procedure(performedDateTime="2026-13-45")
    c = judge(broken)
    assert c.result is Result.UNKNOWN and c.why.value == "invalid-resource"
    assert c.evidence[0].reference == f"Procedure/{broken['id']}" and "not valid FHIR" in c.evidence[0].note
    assert judge(dict(broken, status="entered-in-error")).result is Result.PASS  # withdrawn: its shape does not matter


def test_the_kind_fetches_every_procedure_as_its_own_query():
    needs = {n.key: n for n in data_needs([TRIAL])}
    search = needs["procedures"]
    # texts and the category are read on Procedures of any code (and the set holds CPT prefixes):
    # the search is not restricted to codes
    assert search.resource_type == "Procedure" and not search.required and search.codes is None
    assert not any(name == "code" for name, _ in search.query.params)
    assert search.selects(procedure((LOCAL, "ONC-77", "WBRT")))


def test_the_real_mcode_course_summaries_are_read():
    """mCODE 4.0.0's own examples: 1217123003 sent without a display, a Period, ended 2018-10-25."""
    fixtures = Path(__file__).parent / "fixtures" / "mcode-4.0.0"
    for name in ("Procedure-radiotherapy-treatment-summary-chest-wall-jenny-m.json",
                 "Procedure-radiotherapy-treatment-summary-other-with-text.json"):
        course = json.loads((fixtures / name).read_text())
        c = judge(course)
        assert c.result is Result.PASS and "ended 2018-10-25" in c.reason, name
        assert c.evidence[0].display == "Radiotherapy course of treatment (regime/therapy)"
        assert c.evidence[0].date == "2018-08-15 to 2018-10-25"
        recent = dict(course, performedPeriod={"start": "2026-05-01", "end": "2026-06-03"})
        assert judge(recent).result is Result.FAIL
