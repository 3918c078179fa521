"""The medication-exposure kind, through the invented trial TEST-0008 (concurrent systemic
chemotherapy with CNS penetration: review; trastuzumab, lapatinib and hormonal agents allowed;
administrations within 28 days, inclusive): the statuses and intents of orders and statements,
the administration window on both sides, the shapes EHRs send (RxNorm ingredient, clinical and
branded drug codes, a local code beside RxNorm or alone, contained and referenced Medications,
a reference the record cannot resolve), and what never decides silently."""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path

import pytest

from cds_service.engine import PatientRecord, Result, code_element, evaluate
from cds_service.engine.record import Cut
from cds_service.engine.rules.base import Context
from cds_service.fhir.needs import data_needs
from cds_service.trials import DefinitionError, load_trial
from cds_service.trials.loader import load_codesets
from fhirbuild import PATIENT_REF, RXNORM, concept, patient

TRIAL = load_trial(Path(__file__).parent / "trials" / "TEST-0008.yaml")
AS_OF = dt.date(2026, 6, 15)
LOCAL = "http://hospital.example.org/fhir/CodeSystem/formulary"
CAPECITABINE_500 = (RXNORM, "200328", "capecitabine 500 MG Oral Tablet")
XELODA_500 = (RXNORM, "213293", "Xeloda 500 MG Oral Tablet")
TEMOZOLOMIDE_140 = (RXNORM, "700883", "temozolomide 140 MG Oral Capsule")
TRASTUZUMAB = (RXNORM, "224905", "trastuzumab")
HERCEPTIN_HYLECTA = (RXNORM, "2119714", "5 ML hyaluronidase-oysk 2000 UNT/ML / trastuzumab-oysk 120 MG/ML Injection")
LAPATINIB_250 = (RXNORM, "672149", "lapatinib 250 MG Oral Tablet")
_ids = itertools.count(1)


def request(*codings, status="active", intent="order", text=None, **extra):
    r = {"resourceType": "MedicationRequest", "id": f"mr-{next(_ids)}", "status": status, "intent": intent,
         "subject": PATIENT_REF, "authoredOn": "2026-05-20"}
    if codings or text:
        r["medicationCodeableConcept"] = concept(*codings, text=text)
    r.update(extra)
    return r


def statement(*codings, status="active", **extra):
    s = {"resourceType": "MedicationStatement", "id": f"ms-{next(_ids)}", "status": status, "subject": PATIENT_REF,
         "medicationCodeableConcept": concept(*codings), "effectivePeriod": {"start": "2026-04-01"}}
    s.update(extra)
    return s


def administration(*codings, days_ago: int | None = 1, status="completed", **extra):
    a = {"resourceType": "MedicationAdministration", "id": f"ma-{next(_ids)}", "status": status,
         "subject": PATIENT_REF, "medicationCodeableConcept": concept(*codings)}
    if days_ago is not None:
        a["effectiveDateTime"] = f"{AS_OF - dt.timedelta(days=days_ago)}T09:00:00-04:00"
    a.update(extra)
    return a


def judge(*resources, full_urls=None, cuts=()):
    record = PatientRecord([patient()] + list(resources), full_urls, cuts)
    evaluation = evaluate(TRIAL, record, AS_OF)
    return next(c for c in evaluation.criteria if c.id == "cns-chemotherapy")


# -- orders and statements ----------------------------------------------------------------------

def test_an_active_capecitabine_order_is_for_review_with_the_prompt_and_its_evidence():
    c = judge(request(CAPECITABINE_500))
    assert c.result is Result.REVIEW
    assert c.reason == ("capecitabine 500 MG Oral Tablet (active order): confirm LM developed on this agent and "
                        "systemic disease is controlled")
    (e,) = c.evidence
    assert (e.role.value, e.code, e.status, e.date) == ("decisive", f"{RXNORM}|200328", "active", "2026-05-20")


@pytest.mark.parametrize("status, result", [
    ("active", Result.REVIEW), ("on-hold", Result.REVIEW),  # a hold pauses a course: still on the agent
    ("completed", Result.PASS), ("stopped", Result.PASS), ("cancelled", Result.PASS), ("draft", Result.PASS),
    ("entered-in-error", Result.PASS),
])
def test_order_statuses(status, result):
    c = judge(request(CAPECITABINE_500, status=status))
    assert c.result is result
    if result is Result.PASS:
        assert c.evidence[0].role.value == "ignored" and "no current systemic chemotherapy" in c.reason


def test_an_order_of_unknown_status_is_unknown_never_a_pass():
    c = judge(request(CAPECITABINE_500, status="unknown"))
    assert c.result is Result.UNKNOWN and c.why.value == "uninterpretable-value" and "'unknown'" in c.reason


@pytest.mark.parametrize("intent, result", [("order", Result.REVIEW), ("original-order", Result.REVIEW),
                                            ("plan", Result.REVIEW), ("proposal", Result.PASS),
                                            ("option", Result.PASS)])
def test_a_proposal_is_no_decision_to_treat(intent, result):
    c = judge(request(CAPECITABINE_500, intent=intent))
    assert c.result is result
    if result is Result.PASS:
        assert f"a {intent}, not an order" in c.evidence[0].note


@pytest.mark.parametrize("status, result", [
    ("active", Result.REVIEW), ("intended", Result.REVIEW), ("on-hold", Result.REVIEW),
    ("completed", Result.PASS), ("stopped", Result.PASS), ("not-taken", Result.PASS),
    ("entered-in-error", Result.PASS),
])
def test_statement_statuses(status, result):
    assert judge(statement(TEMOZOLOMIDE_140, status=status)).result is result


def test_an_entered_in_error_order_is_ignored_whatever_it_names():
    c = judge(request(CAPECITABINE_500, status="entered-in-error"), request(TRASTUZUMAB))
    assert c.result is Result.PASS and "only allowed agents current (trastuzumab)" in c.reason
    assert [e.note for e in c.evidence if e.role.value == "ignored"] == ["entered in error; ignored"]


# -- administrations: the window ------------------------------------------------------------------

@pytest.mark.parametrize("days_ago, result", [(0, Result.REVIEW), (27, Result.REVIEW), (28, Result.REVIEW),
                                              (29, Result.PASS), (400, Result.PASS)])
def test_an_administration_counts_within_28_days_inclusive(days_ago, result):
    c = judge(administration(TEMOZOLOMIDE_140, days_ago=days_ago))
    assert c.result is result
    assert ("within 28 days" if result is Result.REVIEW else "more than 28 days ago") in c.evidence[0].note


def test_the_window_is_counted_in_the_calendar_day_recorded():
    # 28 days before, late in the evening in its own offset: still that calendar day, inside the window.
    late = administration(TEMOZOLOMIDE_140, days_ago=None, effectiveDateTime="2026-05-18T23:30:00-10:00")
    assert judge(late).result is Result.REVIEW


def test_an_administration_period_counts_by_its_end():
    given = administration(TEMOZOLOMIDE_140, days_ago=None,
                           effectivePeriod={"start": "2026-05-01T08:00:00Z", "end": "2026-05-20T08:00:00Z"})
    assert judge(given).result is Result.REVIEW


@pytest.mark.parametrize("status, result", [("in-progress", Result.REVIEW), ("stopped", Result.REVIEW),
                                            ("on-hold", Result.REVIEW), ("not-done", Result.PASS),
                                            ("entered-in-error", Result.PASS)])
def test_administration_statuses(status, result):
    assert judge(administration(TEMOZOLOMIDE_140, status=status)).result is result


def test_an_undated_administration_is_unknown():
    c = judge(administration(TEMOZOLOMIDE_140, days_ago=None))
    assert c.result is Result.UNKNOWN and c.why.value == "no-date"
    assert c.reason == "temozolomide 140 MG Oral Capsule: administration without a date: cannot tell whether it " \
                       "was recent"
    # a period without start or end says no more
    c = judge(administration(TEMOZOLOMIDE_140, days_ago=None, effectivePeriod={"extension": [
        {"url": "http://example.org/note", "valueString": "charted late"}]}))
    assert c.result is Result.UNKNOWN and c.why.value == "no-date"


def test_an_imprecise_administration_date_across_the_window_is_unknown():
    c = judge(administration(TEMOZOLOMIDE_140, days_ago=None, effectiveDateTime="2026-05"))
    assert c.result is Result.UNKNOWN and c.why.value == "imprecise-date"
    assert judge(administration(TEMOZOLOMIDE_140, days_ago=None, effectiveDateTime="2026-03")).result is Result.PASS


def test_an_administration_dated_after_the_evaluation_date_is_ignored():
    c = judge(administration(TEMOZOLOMIDE_140, days_ago=-3))
    assert c.result is Result.PASS and "after the evaluation date" in c.evidence[0].note


# -- the codes EHRs send ------------------------------------------------------------------------------

def test_the_ingredient_the_clinical_drug_and_the_branded_drug_are_recognised():
    for coding in ((RXNORM, "194000", "capecitabine"), CAPECITABINE_500, XELODA_500):
        c = judge(request(coding))
        assert c.result is Result.REVIEW and c.evidence[0].code == f"{RXNORM}|{coding[1]}"


def test_a_local_code_beside_rxnorm_decides_by_the_rxnorm_code():
    c = judge(request((LOCAL, "CAPE500", "CAPECITABINE 500MG TAB"), XELODA_500))
    assert c.result is Result.REVIEW and c.evidence[0].code == f"{RXNORM}|213293"


def test_a_local_code_alone_or_text_alone_naming_an_agent_is_for_review_never_silent():
    c = judge(request((LOCAL, "CAPE500"), text="capecitabine 500 mg"))
    assert c.result is Result.REVIEW and c.why.value == "unrecognised-code"
    assert "'capecitabine 500 mg'" in c.reason and "unrecognised code" in c.reason
    c = judge(request(text="Temodar 140mg caps"))
    assert c.result is Result.REVIEW and c.why.value == "text-only"
    # named by text, a completed order is not current either
    assert judge(request((LOCAL, "CAPE500"), text="capecitabine 500 mg", status="completed")).result is Result.PASS


def test_other_medications_are_neither_evidence_nor_a_reason_to_look():
    ondansetron = request((RXNORM, "26225", "ondansetron"))
    c = judge(ondansetron, request((LOCAL, "X1"), text="dexamethasone 4 mg"))
    assert c.result is Result.PASS and c.evidence == [] and "among 2 medication records" in c.reason


def test_low_dose_methotrexate_forms_are_recognised_and_not_counted_injectable_methotrexate_is():
    tablet = request((RXNORM, "105586", "methotrexate 10 MG Oral Tablet"))
    assert judge(tablet).result is Result.PASS
    assert judge(request((RXNORM, "311625", "methotrexate 1000 MG Injection"))).result is Result.REVIEW


# -- allowed agents ---------------------------------------------------------------------------------

@pytest.mark.parametrize("coding", [TRASTUZUMAB, HERCEPTIN_HYLECTA, LAPATINIB_250,
                                    (RXNORM, "10324", "tamoxifen"), (RXNORM, "200064", "letrozole 2.5 MG Oral Tablet")])
def test_allowed_agents_pass_and_are_named(coding):
    c = judge(request(coding))
    assert c.result is Result.PASS and c.reason.startswith("only allowed agents current")
    assert c.evidence[0].role.value == "decisive" and c.evidence[0].code == f"{RXNORM}|{coding[1]}"


def test_a_herceptin_order_by_brand_text_only_passes():
    assert judge(request((LOCAL, "HERC440"), text="Herceptin 440 mg IV")).result is Result.PASS


def test_an_allowed_agent_never_hides_a_listed_one():
    c = judge(request(LAPATINIB_250), request(XELODA_500))
    assert c.result is Result.REVIEW and "Xeloda" in c.reason


# -- Medication resources ------------------------------------------------------------------------------

def test_a_contained_medication_is_read():
    r = request(medicationReference={"reference": "#med1"},
                contained=[{"resourceType": "Medication", "id": "med1", "code": concept(XELODA_500)}])
    c = judge(r)
    assert c.result is Result.REVIEW and c.evidence[0].code == f"{RXNORM}|213293"
    assert "(medication #med1)" in c.evidence[0].note


def test_a_medication_in_the_record_is_read_by_reference_or_by_full_url():
    med = {"resourceType": "Medication", "id": "123", "code": concept(TEMOZOLOMIDE_140)}
    given = administration(medicationReference={"reference": "Medication/123"})
    del given["medicationCodeableConcept"]
    assert judge(med, given).result is Result.REVIEW
    urn = "urn:uuid:6f1c3c1e-0d8a-4e59-9d1e-3c2f0a1b2c3d"
    anonymous = {"resourceType": "Medication", "code": concept(TEMOZOLOMIDE_140)}
    r = statement(medicationReference={"reference": urn})
    del r["medicationCodeableConcept"]
    assert judge(anonymous, r, full_urls={urn: anonymous}).result is Result.REVIEW


def test_a_medication_named_by_its_ingredient_is_read():
    med = {"resourceType": "Medication", "id": "cmp1", "code": {"text": "compounded oral suspension"},
           "ingredient": [{"itemCodeableConcept": concept((RXNORM, "194000", "capecitabine"))}]}
    assert judge(med, request(medicationReference={"reference": "Medication/cmp1"})).result is Result.REVIEW


def test_a_reference_the_record_cannot_resolve_is_unknown_never_silent():
    c = judge(request(medicationReference={"reference": "Medication/999"}))
    assert c.result is Result.UNKNOWN and c.why.value == "incomplete-data"
    assert "Medication/999" in c.reason and "it may be systemic chemotherapy" in c.reason
    # ... unless the order is not current anyway
    assert judge(request(medicationReference={"reference": "Medication/999"}, status="completed")).result \
        is Result.PASS
    # a reference by display only is read as text
    c = judge(request(medicationReference={"display": "Xeloda 500mg"}))
    assert c.result is Result.REVIEW and c.why.value == "text-only"


def test_a_record_that_is_not_valid_fhir_is_unknown_when_it_names_a_listed_agent():
    c = judge(request(CAPECITABINE_500, intent=None))
    assert c.result is Result.UNKNOWN and c.why.value == "invalid-resource"
    assert judge(request(TRASTUZUMAB, intent=None)).result is Result.PASS


# -- none, and data cut short ---------------------------------------------------------------------------

def test_none_passes_and_rests_on_the_absence_of_medication_records():
    rule = next(c.rule for c in TRIAL.definition.criteria if c.id == "cns-chemotherapy")
    ctx = Context(PatientRecord([patient()]), AS_OF, TRIAL.library, TRIAL.units)
    outcome = rule.evaluate(ctx)
    assert outcome.result is Result.PASS
    assert outcome.absence_of == ("MedicationRequest", "MedicationStatement", "MedicationAdministration")
    c = judge(request(TRASTUZUMAB), cuts=[Cut("MedicationAdministration")])
    assert c.result is Result.UNKNOWN and c.why.value == "incomplete-data"


# -- a trial with failing agents ------------------------------------------------------------------------

def _rule(**fields):
    from cds_service.engine.rules.medications import MedicationExposureRule

    return MedicationExposureRule.model_validate({"type": "medication-exposure", "label": "the agents",
                                                  "administeredWithinDays": 28, **fields})


def test_fail_codes_fail_and_an_unknown_then_outranks_a_review():
    rule = _rule(failCodes=["cns-penetrant-chemotherapy"], allowedCodes=["trastuzumab"])

    def outcome(*resources):
        return rule.evaluate(Context(PatientRecord([patient(), *resources]), AS_OF, TRIAL.library, TRIAL.units))

    assert outcome(request(XELODA_500)).result is Result.FAIL
    assert outcome(request(medicationReference={"reference": "Medication/9"})).result is Result.UNKNOWN
    # With failCodes, an unknown outranks a review: the unreadable record may be a failing agent.
    rule = _rule(failCodes=["cns-penetrant-chemotherapy"], reviewCodes=["endocrine-therapy"],
                 allowedCodes=["trastuzumab"])
    assert outcome(request((RXNORM, "10324", "tamoxifen"))).result is Result.REVIEW
    assert outcome(request((RXNORM, "10324", "tamoxifen")),
                   request(medicationReference={"reference": "Medication/9"})).result is Result.UNKNOWN
    # review only: an unknown does not hide a fail, so the review stands (TEST-0008)
    c = judge(request(XELODA_500), request(medicationReference={"reference": "Medication/9"}))
    assert c.result is Result.REVIEW


@pytest.mark.parametrize("fields, message", [
    ({"allowedCodes": ["trastuzumab"]}, "give failCodes, reviewCodes or both"),
    ({"reviewCodes": ["trastuzumab"], "allowedCodes": ["trastuzumab"]}, "'trastuzumab' is both allowed and not"),
])
def test_definitions_that_cannot_be_read_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        _rule(**fields)


def test_a_trial_file_naming_a_set_in_both_lists_is_refused_at_load(tmp_path):
    text = (Path(__file__).parent / "trials" / "TEST-0008.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("allowedCodes: [trastuzumab,",
                                "allowedCodes: [cns-penetrant-chemotherapy, trastuzumab,"))
    with pytest.raises(DefinitionError, match="both allowed and not"):
        load_trial(bad)


# -- data layer and code sets ----------------------------------------------------------------------------

def test_every_medication_record_is_fetched_and_indexed_by_its_medication_code():
    needs = {n.resource_type: n for n in data_needs([TRIAL])}
    for rtype in ("MedicationRequest", "MedicationStatement", "MedicationAdministration"):
        assert needs[rtype].codes is None and not needs[rtype].required  # not restricted by code
        assert not any(p == "code" for p, _ in needs[rtype].query.params)
        assert code_element(rtype) == "medicationCodeableConcept"
    assert "Medication" not in needs  # no patient search: it comes with the records that reference it
    record = PatientRecord([request(XELODA_500)])
    assert len(record.find("MedicationRequest", TRIAL.library.get("cns-penetrant-chemotherapy"))) == 1


def test_no_agent_is_both_listed_and_allowed_and_brands_are_in_their_sets():
    sets = load_codesets()
    listed = {(e.system, e.code) for e in sets["cns-penetrant-chemotherapy"].entries}
    for name in ("trastuzumab", "lapatinib", "endocrine-therapy", "methotrexate-low-dose-forms"):
        assert not listed & {(e.system, e.code) for e in sets[name].entries}, name
    assert (RXNORM, "213293") in listed  # Xeloda 500 MG Oral Tablet
    assert (RXNORM, "2119714") in {(e.system, e.code) for e in sets["trastuzumab"].entries}  # Herceptin Hylecta
