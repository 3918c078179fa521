"""The lab kind's conditionalLimit, through the invented trial TEST-0005 ("transaminases <
3.0 x ULN, except in known hepatic metastasis, wherein may be < 5 x ULN", NCT01325207):
both limits at their boundaries, what counts as known hepatic metastasis (confirmed or
status-less, active), what never decides silently (provisional, text only, a local code
alone, not valid FHIR), that the reason always names the limit that applied and why, what
the outcome rests on when a search is cut short, and the card."""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path

import pytest

from cds_service.cards import CardContext, CardRenderer
from cds_service.engine import PatientRecord, Result, evaluate
from cds_service.engine.codes import coding_key
from cds_service.engine.record import Cut
from cds_service.fhir.needs import data_needs
from cds_service.trials import DefinitionError, load_trial
from fhirbuild import ICD10CM, PATIENT_REF, SNOMED, concept, condition, lab, patient

TRIAL_FILE = Path(__file__).parent / "trials" / "TEST-0005.yaml"
TRIAL = load_trial(TRIAL_FILE)
AS_OF = dt.date(2026, 6, 15)
ALT, AST = "1742-6", "1920-8"
LIVER_METS = "94381002"
LOCAL = "urn:oid:1.2.840.114350.1.13.0.1.7.2.696580"  # an EHR's local diagnosis codes
_ids = itertools.count(1)


def alt(value, **extra):
    """ALT in U/L with ULN 40 U/L: 120 is exactly 3.0 × ULN, 200 exactly 5.0 × ULN."""
    return lab(ALT, value, "U/L", high=40, **extra)


def ast(value=20):
    return lab(AST, value, "U/L", high=40)


DISPLAYS = {LIVER_METS: "Metastatic malignant neoplasm to liver (disorder)",
            "C78.7": "Secondary malignant neoplasm of liver and intrahepatic bile duct"}


def mets(system=SNOMED, code=LIVER_METS, **kw):
    found = condition(system, code, id=f"liver-{next(_ids)}", **kw)
    if code in DISPLAYS:
        found["code"] = concept((system, code, DISPLAYS[code]))
    return found


def run(*resources, cuts=()):
    record = PatientRecord([patient(), *resources], cuts=cuts)
    evaluation = evaluate(TRIAL, record, AS_OF)
    return evaluation, next(c for c in evaluation.criteria if c.id == "transaminases")


def judge(*resources):
    return run(*resources)[1]


def decisive(c):
    return [e.reference for e in c.evidence if e.role.value == "decisive"]


# -- the two limits, each at its boundary -------------------------------------

@pytest.mark.parametrize("value, result", [(120, Result.FAIL), (119.6, Result.PASS), (200, Result.FAIL),
                                           (20, Result.PASS)])
def test_without_hepatic_metastasis_the_limit_is_3_uln(value, result):
    c = judge(alt(value), ast())
    assert c.result is result
    assert "(limit 3.0 × ULN: no known hepatic metastasis recorded)" in c.reason
    assert not any(e.reference.startswith("Condition/") for e in c.evidence)


@pytest.mark.parametrize("value, result", [(200, Result.FAIL), (199.6, Result.PASS), (120, Result.PASS),
                                           (119.6, Result.PASS), (400, Result.FAIL)])
def test_with_known_hepatic_metastasis_the_limit_is_5_uln(value, result):
    liver = mets()
    c = judge(alt(value), ast(), liver)
    assert c.result is result
    assert f"(limit 5.0 × ULN: known hepatic metastasis, Condition/{liver['id']})" in c.reason
    ev = next(e for e in c.evidence if e.reference == f"Condition/{liver['id']}")
    assert ev.code == f"{SNOMED}|{LIVER_METS}" and ev.status == "active/confirmed" and ev.date == "2025-01-10"
    # decisive where it changed the verdict (between the limits), supporting where both limits agree
    assert ev.role.value == ("decisive" if 120 <= value < 200 else "supporting")
    assert ev.note == "counts as known hepatic metastasis: its limit applies"


def test_ast_follows_the_same_limit_and_the_condition_is_listed_once():
    liver = mets()
    c = judge(alt(20), lab(AST, 160, "U/L", high=40), liver)
    assert c.result is Result.PASS and "AST 160 U/L (4.00 × ULN)" in c.reason
    assert [e.reference for e in c.evidence].count(f"Condition/{liver['id']}") == 1
    c = judge(alt(20), lab(AST, 160, "U/L", high=40))
    assert c.result is Result.FAIL and "AST 160 U/L (4.00 × ULN)" in c.reason and "limit 3.0 × ULN" in c.reason


@pytest.mark.parametrize("kw", [
    {"system": ICD10CM, "code": "C78.7"},
    {"system": ICD10CM, "code": "C787"},  # undotted, as many EHRs send ICD-10-CM
    {"system": ICD10CM, "code": "C7B.02"},
    {"verification": None},  # problem lists often omit it: read as confirmed
    {"clinical": "recurrence"},
    {"clinical": "relapse"},
    {"clinical": None},  # no clinicalStatus: active
])
def test_what_counts_as_known(kw):
    assert judge(alt(160), ast(), mets(**kw)).result is Result.PASS


def test_a_snomed_code_beside_a_local_one_counts():
    liver = mets()
    liver["code"] = concept((LOCAL, "LIVMET", "Liver mets"), (SNOMED, LIVER_METS, "Secondary malignant neoplasm of liver"))
    c = judge(alt(160), ast(), liver)
    assert c.result is Result.PASS and "limit 5.0 × ULN: known hepatic metastasis" in c.reason


@pytest.mark.parametrize("code", ["315000005", "1186612004"])  # metastasis FROM the liver; metastatic HCC
def test_primary_liver_cancer_is_not_hepatic_metastasis(code):
    assert judge(alt(160), ast(), mets(code=code)).result is Result.FAIL


# -- not known: the usual limit, and the reason says why -------------------------

@pytest.mark.parametrize("clinical", ["resolved", "inactive", "remission"])
def test_an_inactive_one_is_not_known_and_the_reason_names_it(clinical):
    liver = mets(clinical=clinical)
    c = judge(alt(160), ast(), liver)
    assert c.result is Result.FAIL
    assert f"(limit 3.0 × ULN: Metastatic malignant neoplasm to liver (disorder) (Condition/{liver['id']}) is " \
           f"{clinical}, not current)" in c.reason
    ev = next(e for e in c.evidence if e.reference == f"Condition/{liver['id']}")
    assert ev.note == f"{clinical}: not current, so not known hepatic metastasis"


@pytest.mark.parametrize("verification", ["refuted", "entered-in-error"])
def test_refuted_and_entered_in_error_are_ignored(verification):
    liver = mets(verification=verification)
    c = judge(alt(160), ast(), liver)
    assert c.result is Result.FAIL and "no known hepatic metastasis recorded" in c.reason
    ev = next(e for e in c.evidence if e.reference == f"Condition/{liver['id']}")
    assert ev.role.value == "ignored"


def test_a_future_dated_one_is_ignored():
    assert judge(alt(160), ast(), mets(onset="2026-09-01")).result is Result.FAIL


# -- may be hepatic metastasis: never a silent fail --------------------------------

@pytest.mark.parametrize("verification", ["provisional", "differential", "unconfirmed"])
def test_an_unconfirmed_one_leaves_a_value_between_the_limits_unknown_without_an_order(verification):
    liver = mets(verification=verification)
    c = judge(alt(160), ast(), liver)
    assert c.result is Result.UNKNOWN and c.why.value == "diagnosis-unconfirmed" and c.order is None
    assert "is >= 3.0 × ULN 40 U/L, but not >= 5.0 × ULN, the limit with known hepatic metastasis" in c.reason
    assert f"(Condition/{liver['id']}) is recorded as active/{verification}, not confirmed" in c.reason
    assert f"Condition/{liver['id']}" in decisive(c)


@pytest.mark.parametrize("value, result", [(119.6, Result.PASS), (200, Result.FAIL)])
def test_outside_the_two_limits_an_unconfirmed_one_does_not_matter(value, result):
    liver = mets(verification="provisional")
    c = judge(alt(value), ast(), liver)
    assert c.result is result
    assert "(limit 3.0 × ULN, or 5.0 × ULN with known hepatic metastasis: the same result;" in c.reason
    assert f"Condition/{liver['id']}" not in decisive(c)


def test_a_provisional_one_is_outweighed_by_a_confirmed_one():
    assert judge(alt(160), ast(), mets(verification="provisional"), mets()).result is Result.PASS


def test_another_missing_result_still_suggests_the_panel():
    c = judge(alt(160), mets(verification="provisional"))  # AST missing: a panel would settle that
    assert c.result is Result.UNKNOWN and c.order is not None and c.order.code == "24325-3"


@pytest.mark.parametrize("code, why", [
    ({"text": "Liver metastases"}, "text-only"),
    ({"coding": [{"system": LOCAL, "code": "LIVMET", "display": "Mets to liver"}]}, "unrecognised-code"),
    ({"coding": [{"system": SNOMED, "code": "128462008", "display": "Metastatic malignant neoplasm (disorder)"}],
      "text": "Metastatic breast cancer to the liver"}, "unrecognised-code"),
])
def test_a_condition_naming_it_by_text_or_a_local_code_is_not_a_silent_fail(code, why):
    named = {"resourceType": "Condition", "id": "named", "subject": PATIENT_REF, "code": code}
    c = judge(alt(160), ast(), named)
    assert c.result is Result.UNKNOWN and c.why.value == why and c.order is None
    assert "it may be known hepatic metastasis (Condition/named)" in c.reason
    assert "Condition/named" in decisive(c)
    # under 3.0 × ULN it passes whatever the text says
    assert judge(alt(100), ast(), named).result is Result.PASS


@pytest.mark.parametrize("text", ["Metastasis from malignant tumor of liver", "Liver cyst", "No evidence of liver metastasis"])
def test_texts_that_name_something_else_are_not_read(text):
    named = {"resourceType": "Condition", "id": "other", "subject": PATIENT_REF, "code": {"text": text}}
    assert judge(alt(160), ast(), named).result is Result.FAIL


def test_an_entered_in_error_text_mention_is_ignored():
    named = {"resourceType": "Condition", "id": "named", "subject": PATIENT_REF, "code": {"text": "Liver metastases"},
             "verificationStatus": concept(("http://terminology.hl7.org/CodeSystem/condition-ver-status",
                                            "entered-in-error"))}
    assert judge(alt(160), ast(), named).result is Result.FAIL


def test_a_liver_metastasis_condition_that_is_not_valid_fhir_is_not_a_silent_fail():
    broken = mets(system=ICD10CM, code="C78.7", onset="last spring")
    c = judge(alt(160), ast(), broken)
    assert c.result is Result.UNKNOWN and c.why.value == "invalid-resource" and c.order is None
    assert f"Condition/{broken['id']} may be known hepatic metastasis but is not valid FHIR" in c.reason


# -- what the outcome rests on ---------------------------------------------------

def test_a_fail_between_the_limits_rests_on_no_hepatic_metastasis_being_found():
    cut = [Cut("Condition")]
    _, c = run(alt(160), ast(), cuts=cut)
    assert c.result is Result.UNKNOWN and c.why.value == "incomplete-data"
    assert "the FHIR server's answer for Condition was cut short" in c.reason
    # over 5.0 × ULN, or under 3.0 × ULN, what the Conditions say cannot change it
    assert run(alt(200), ast(), cuts=cut)[1].result is Result.FAIL
    assert run(alt(100), ast(), cuts=cut)[1].result is Result.PASS
    # a known one was found: the cut cannot take it away
    assert run(alt(160), ast(), mets(), cuts=cut)[1].result is Result.PASS


def test_a_stricter_conditional_limit_is_read_the_same_way(tmp_path):
    """Generality: an absolute limit stricter than the usual one (a pass rests on absence)."""
    text = TRIAL_FILE.read_text().replace(
        'failWhen: {comparator: ">=", ulnMultiple: 5.0}', 'failWhen: {comparator: ">=", value: 100, unit: "U/L"}')
    path = tmp_path / "TEST-0005.yaml"
    path.write_text(text)
    trial = load_trial(path)

    def check(*resources, cuts=()):
        ev = evaluate(trial, PatientRecord([patient(), *resources], cuts=cuts), AS_OF)
        return next(c for c in ev.criteria if c.id == "transaminases")

    assert check(alt(110), ast(), mets()).result is Result.FAIL
    c = check(alt(110), ast())
    assert c.result is Result.PASS and "limit 3.0 × ULN: no known hepatic metastasis recorded" in c.reason
    assert check(alt(110), ast(), cuts=[Cut("Condition")]).why.value == "incomplete-data"
    assert check(alt(99), ast(), mets()).result is Result.PASS


def test_a_conditional_limit_with_a_unit_that_is_not_ucum_is_refused(tmp_path):
    text = TRIAL_FILE.read_text().replace(
        'failWhen: {comparator: ">=", ulnMultiple: 5.0}', 'failWhen: {comparator: ">=", value: 100, unit: "units"}')
    path = tmp_path / "TEST-0005.yaml"
    path.write_text(text)
    with pytest.raises(DefinitionError, match="units"):
        load_trial(path)


# -- the data it needs -------------------------------------------------------------

def test_the_condition_query_carries_the_liver_codes_and_no_look_back():
    criterion = next(c for c in TRIAL.definition.criteria if c.id == "transaminases")
    assert criterion.rule.reads() == {"Observation": ["alt", "ast"], "Condition": ["liver-metastasis"]}
    needs = {n.key: n for n in data_needs([TRIAL])}
    conditions, labs = needs["conditions"], needs["labResults"]
    assert conditions.lookback_days is None and not conditions.newest_first
    assert {coding_key(SNOMED, LIVER_METS), coding_key(ICD10CM, "C78.7")} <= conditions.codes
    assert labs.lookback_days == 28 and labs.newest_first and ("http://loinc.org", ALT) in labs.codes
    bilirubin = next(c for c in TRIAL.definition.criteria if c.id == "bilirubin")
    assert "Condition" not in bilirubin.rule.reads()


# -- the card ----------------------------------------------------------------------

def test_the_card_shows_which_limit_applied():
    renderer = CardRenderer()
    liver = mets(verification="provisional")
    bilirubin = lab("1975-2", 0.5, "mg/dL", high=1.2)
    evaluation, _ = run(alt(160), ast(), liver, bilirubin)
    card = renderer.render(TRIAL, evaluation, CardContext(patient_id=evaluation.patient, user_id="Practitioner/1"))
    assert evaluation.status.value == "needs-data" and "**What is missing**" in card["detail"]
    missing = card["detail"].split("**What is missing**")[1].split("**Checklist**")[0]
    assert "is &gt;= 3.0 × ULN 40 U/L, but not &gt;= 5.0 × ULN, the limit with known hepatic metastasis" in missing
    assert f"(Condition/{liver['id']}) is recorded as active/provisional, not confirmed" in missing
    line = next(line for line in card["detail"].splitlines() if line.startswith("- ? ALT and AST"))
    assert "ALT 160 U/L" in line and f"Condition/{liver['id']}" in line  # shown beside the value it leaves open
    assert not [s for s in card.get("suggestions", []) if "24325-3" in str(s)]  # a lab order would not settle it

    known = mets()
    evaluation, c = run(alt(160), ast(), known, bilirubin)
    card = renderer.render(TRIAL, evaluation, CardContext(patient_id=evaluation.patient, user_id="Practitioner/1"))
    assert evaluation.status.value == "eligible"
    line = next(line for line in card["detail"].splitlines() if "ALT and AST below 3.0" in line)
    assert f"Condition/{known['id']}" in line and "Metastatic malignant neoplasm to liver" in line  # the reason for 5.0
    assert "≥ 5.0 × ULN with known (confirmed, active) hepatic metastasis" in card["detail"]  # the card note
    reasons = {r["id"]: r["reason"] for r in card["extension"]["trial-eligibility"]["criteria"]}
    assert f"(limit 5.0 × ULN: known hepatic metastasis, Condition/{known['id']})" in reasons["transaminases"]
