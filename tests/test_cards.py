"""CDS Hooks 2.0 cards rendered from gold-patient evaluations (cds_service.cards)."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import importlib.resources
import itertools
import json
import random
import re
import shutil
import uuid
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
import yaml

from cds_service.cards import CardContext, CardRenderer, find_empty_values, fit_summary, md_escape
from cds_service.cards.templates import load_texts
from cds_service.cards.text import unit_display
from cds_service.engine import PatientRecord, Result, evaluate
from cds_service.engine.model import shown_number, shown_recorded, shown_text
from cds_service.fhir.bundles import patient_groups_from_bytes

GOLD_PATIENTS = Path(__file__).parent / "gold" / "patients"
ALL_GOLD = sorted(GOLD_PATIENTS.glob("*.json"))
AS_OF = dt.date(2026, 6, 15)
NCT = "NCT06462092"
STUDY_URL = "https://clinicaltrials.gov/study/NCT06462092"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
OVERRIDE_SYSTEM = "https://cds-service.org/fhir/CodeSystem/trial-card-override"
TEMPLATE_FILES = ("summary.txt.j2", "detail.md.j2", "text.yaml")


# -- helpers ---------------------------------------------------------------------------------------

def gold_bundle(prefix: str) -> dict:
    (path,) = GOLD_PATIENTS.glob(f"{prefix}-*.json")
    return json.loads(path.read_text(encoding="utf-8"))


def evaluate_bundle(trial, bundle: dict):
    (group,) = patient_groups_from_bytes(json.dumps(bundle).encode())
    return evaluate(trial, PatientRecord(group.resources, group.full_urls), AS_OF)


def evaluate_gold(trial, prefix: str):
    return evaluate_bundle(trial, gold_bundle(prefix))


def ctx_for(evaluation, user_id: str | None = "Practitioner/123", encounter_id: str | None = None) -> CardContext:
    return CardContext(patient_id=evaluation.patient, user_id=user_id, encounter_id=encounter_id)


def entry(bundle: dict, resource_id: str) -> dict:
    return next(e for e in bundle["entry"] if e["resource"].get("id") == resource_id)


def remove_entry(bundle: dict, resource_id: str) -> None:
    bundle["entry"] = [e for e in bundle["entry"] if e["resource"].get("id") != resource_id]


def suggestion_resources(card: dict) -> list[dict]:
    return [a["resource"] for s in card.get("suggestions", []) for a in s["actions"]]


def order_suggestions(card: dict) -> list[dict]:
    return [s for s in card.get("suggestions", [])
            if s["actions"][0]["resource"]["code"]["coding"][0]["system"] == LOINC]


def referral_suggestion(card: dict) -> dict:
    (found,) = [s for s in card["suggestions"]
                if s["actions"][0]["resource"]["code"]["coding"][0] == {
                    "system": SNOMED, "code": "3457005", "display": "Patient referral"}]
    return found


def checklist(detail: str) -> list[str]:
    """The checklist bullets, in order."""
    section = detail.split("**Checklist**", 1)[1].split("\n\n**", 1)[0]
    return [line for line in section.splitlines() if line.startswith("- ")]


def packaged_templates() -> Path:
    return Path(str(importlib.resources.files("cds_service.card_templates")))


@pytest.fixture(scope="module")
def renderer():
    return CardRenderer()


@pytest.fixture(scope="module")
def renderer_all():
    return CardRenderer(show_ineligible=True)


@pytest.fixture(scope="module")
def g001(nct06462092):
    return evaluate_gold(nct06462092, "g001")


@pytest.fixture(scope="module")
def g066(nct06462092):
    return evaluate_gold(nct06462092, "g066")


# -- eligible --------------------------------------------------------------------------------------

def test_eligible_card(renderer, nct06462092, g001):
    assert g001.status.value == "eligible"
    card = renderer.render(nct06462092, g001, ctx_for(g001))
    assert card["indicator"] == "info"
    assert len(card["summary"]) < 140
    assert NCT in card["summary"]
    assert card["summary"] == f"May qualify for trial {NCT}: {nct06462092.definition.short_title}"
    assert card["source"]["url"] == STUDY_URL
    assert card["source"]["label"]
    assert card["source"]["topic"] == {"system": "https://clinicaltrials.gov", "code": NCT,
                                       "display": nct06462092.definition.short_title}
    assert card["links"] == [{"label": "Study page (ClinicalTrials.gov)", "url": STUDY_URL, "type": "absolute"}]
    assert card["extension"] == {"trial-eligibility": g001.to_json()}
    uuid.UUID(card["uuid"])


def test_eligible_card_suggests_a_recommended_referral_only(renderer, nct06462092, g001):
    card = renderer.render(nct06462092, g001, ctx_for(g001, encounter_id="enc-9"))
    assert card["selectionBehavior"] == "any"
    assert order_suggestions(card) == []
    referral = referral_suggestion(card)
    assert referral["label"] == f"Refer to the {NCT} study team"
    assert referral["isRecommended"] is True
    (action,) = referral["actions"]
    assert action["type"] == "create" and action["description"]
    sr = action["resource"]
    assert sr["resourceType"] == "ServiceRequest"
    assert (sr["status"], sr["intent"]) == ("draft", "proposal")
    assert sr["code"]["text"] == f"Referral to the {NCT} study team"
    assert sr["subject"] == {"reference": "Patient/g001"}
    assert sr["requester"] == {"reference": "Practitioner/123"}
    assert sr["encounter"] == {"reference": "Encounter/enc-9"}
    assert sr["reasonCode"] == [{"text": f"Possible eligibility for clinical trial {NCT} "
                                         f"({nct06462092.definition.short_title})"}]
    assert sr["note"] == [{"text": f"Study page: {STUDY_URL}"}]
    assert "category" not in sr


def test_override_reasons_are_codings_with_display(renderer, nct06462092, g001):
    card = renderer.render(nct06462092, g001, ctx_for(g001))
    reasons = card["overrideReasons"]
    assert [r["code"] for r in reasons] == ["not-a-candidate", "already-screened", "patient-declined",
                                           "data-incorrect"]
    for r in reasons:
        assert r["system"] == OVERRIDE_SYSTEM
        assert isinstance(r["display"], str) and r["display"].strip()
    assert reasons[0]["display"] == "Not a candidate for this trial now"


def test_card_is_json_serialisable(renderer, nct06462092, g001):
    card = renderer.render(nct06462092, g001, ctx_for(g001))
    assert orjson.loads(orjson.dumps(card)) == card


# -- needs-data ------------------------------------------------------------------------------------

def test_stale_anc_suggests_a_cbc_order(renderer, nct06462092, g066):
    assert g066.status.value == "needs-data"
    card = renderer.render(nct06462092, g066, ctx_for(g066))
    assert card["indicator"] == "info"
    assert card["summary"] == f"Trial {NCT} possible match — needs: ANC"
    assert card["selectionBehavior"] == "any"
    (order,) = order_suggestions(card)
    assert order["isRecommended"] is True
    assert order["label"] == "Order CBC W Auto Differential panel - Blood (for ANC)"
    (action,) = order["actions"]
    assert action["type"] == "create" and action["description"]
    sr = action["resource"]
    assert sr["resourceType"] == "ServiceRequest"
    assert sr["status"] == "draft"
    assert sr["intent"] == "proposal"
    assert sr["code"] == {"coding": [{"system": LOINC, "code": "57021-8",
                                      "display": "CBC W Auto Differential panel - Blood"}],
                          "text": "CBC W Auto Differential panel - Blood"}
    assert sr["category"] == [{"coding": [{"system": SNOMED, "code": "108252007",
                                           "display": "Laboratory procedure"}]}]
    assert sr["subject"] == {"reference": "Patient/g066"}
    assert sr["requester"] == {"reference": "Practitioner/123"}
    assert sr["reasonCode"] == [{"text": f"Screening for clinical trial {NCT}: "
                                         "Absolute neutrophil count above 1.5 ×10⁹/L"}]
    # A possible match is not yet a referral: offered, not recommended.
    assert referral_suggestion(card)["isRecommended"] is False
    assert [s["label"] for s in card["suggestions"]][-1] == f"Refer to the {NCT} study team"


def test_needs_data_detail_says_what_is_missing(renderer, nct06462092, g066):
    detail = renderer.render(nct06462092, g066, ctx_for(g066))["detail"]
    missing = detail.split("**What is missing**", 1)[1].split("**Checklist**", 1)[0]
    assert "Absolute neutrophil count above 1.5 ×10⁹/L" in missing
    assert "older than 28 days" in missing
    assert "CBC W Auto Differential panel - Blood" in missing
    assert "Observation/g066-anc-1" in detail


def test_missing_hcg_suggests_a_serum_hcg_order(renderer, nct06462092):
    evaluation = evaluate_gold(nct06462092, "g081")
    card = renderer.render(nct06462092, evaluation, ctx_for(evaluation))
    assert "needs: hCG" in card["summary"]
    (order,) = order_suggestions(card)
    coding = order["actions"][0]["resource"]["code"]["coding"][0]
    assert (coding["system"], coding["code"]) == (LOINC, "2118-8")
    assert order["label"].endswith("(for hCG)")


def test_her2_ihc_2plus_suggests_ish(renderer, nct06462092):
    evaluation = evaluate_gold(nct06462092, "g012")
    card = renderer.render(nct06462092, evaluation, ctx_for(evaluation))
    assert "needs: HER2 status" in card["summary"]
    (order,) = order_suggestions(card)
    assert order["actions"][0]["resource"]["code"]["coding"][0]["code"] == "96893-3"


def test_unknown_without_an_order_gives_only_the_referral(renderer, nct06462092):
    evaluation = evaluate_gold(nct06462092, "g004")  # breast cancer provisional: nothing to order
    card = renderer.render(nct06462092, evaluation, ctx_for(evaluation))
    assert card["summary"].startswith(f"Trial {NCT} possible match — needs: ")
    assert order_suggestions(card) == []
    assert len(card["suggestions"]) == 1
    assert card["selectionBehavior"] == "any"


def test_no_her2_result_suggests_the_her2_test(renderer, nct06462092):
    evaluation = evaluate_gold(nct06462092, "g021")  # no HER2 result at all
    card = renderer.render(nct06462092, evaluation, ctx_for(evaluation))
    assert card["summary"] == f"Trial {NCT} possible match — needs: HER2 status"
    orders = order_suggestions(card)
    assert len(orders) == 1 and "HER2 Ag" in orders[0]["label"]
    request = orders[0]["actions"][0]["resource"]
    assert request["code"]["coding"][0]["code"] == "18474-7"


def test_criteria_sharing_an_order_give_one_suggestion(renderer, nct06462092):
    # g066 (ANC stale) with its platelet count made stale too: two unknowns, one CBC.
    bundle = gold_bundle("g066")
    entry(bundle, "g066-plt-1")["resource"]["effectiveDateTime"] = "2026-05-02T09:10:00-04:00"
    evaluation = evaluate_bundle(nct06462092, bundle)
    unknown = [c.id for c in evaluation.criteria if c.result.value == "unknown"]
    assert unknown == ["neutrophils", "platelets"]
    card = renderer.render(nct06462092, evaluation, ctx_for(evaluation))
    (order,) = order_suggestions(card)
    assert order["label"] == "Order CBC W Auto Differential panel - Blood (for ANC, platelets)"
    assert order["actions"][0]["resource"]["reasonCode"][0]["text"] == (
        f"Screening for clinical trial {NCT}: Absolute neutrophil count above 1.5 ×10⁹/L; "
        "Platelets above 90 ×10⁹/L")
    assert "needs: ANC, platelets" in card["summary"]


def test_distinct_orders_give_one_suggestion_each(renderer, nct06462092):
    # g063 (AST missing) + g066 (ANC stale): a CBC and a hepatic panel, CBC first (definition order).
    bundle = gold_bundle("g066")
    remove_entry(bundle, "g066-ast-1")
    evaluation = evaluate_bundle(nct06462092, bundle)
    card = renderer.render(nct06462092, evaluation, ctx_for(evaluation))
    codes = [s["actions"][0]["resource"]["code"]["coding"][0]["code"] for s in order_suggestions(card)]
    assert codes == ["57021-8", "24325-3"]
    assert card["summary"] == f"Trial {NCT} possible match — needs: ANC, ALT/AST"
    assert len(card["suggestions"]) == 3
    assert all(s["isRecommended"] is True for s in order_suggestions(card))


# -- ineligible ------------------------------------------------------------------------------------

def test_ineligible_gives_no_card_by_default(renderer, nct06462092):
    evaluation = evaluate_gold(nct06462092, "g011")
    assert evaluation.status.value == "ineligible"
    assert renderer.render(nct06462092, evaluation, ctx_for(evaluation)) is None


def test_ineligible_card_when_configured(renderer_all, nct06462092):
    evaluation = evaluate_gold(nct06462092, "g011")
    card = renderer_all.render(nct06462092, evaluation, ctx_for(evaluation))
    assert card["indicator"] == "info"
    assert "not eligible" in card["summary"].lower() and NCT in card["summary"]
    assert "HER2-positive" in card["summary"]
    assert "suggestions" not in card and "selectionBehavior" not in card
    assert card["extension"] == {"trial-eligibility": evaluation.to_json()}
    assert "Not eligible" in card["detail"]
    items = checklist(card["detail"])
    assert items[0].startswith("- ✘ HER2-negative")
    assert "Observation/g011-her2-1" in items[0]


def test_ineligible_card_lists_failing_before_unknown(renderer_all, nct06462092):
    evaluation = evaluate_gold(nct06462092, "g102")  # fails 2, unknown 6
    items = checklist(renderer_all.render(nct06462092, evaluation, ctx_for(evaluation))["detail"])
    marks = [line.split()[1] for line in items]
    assert marks[:2] == ["✘", "✘"]
    assert marks[2:8] == ["?"] * 6
    # Without a "What is missing" section the unknowns carry their reason.
    assert "ANC: no valid result" in items[3]


def test_render_all_shows_eligible_first_and_keeps_trials_without_a_card_for_the_audit(renderer, nct06462092,
                                                                                         g001, g066):
    # One patient's evaluations against three trials (here: one trial, the evaluations relabelled).
    needs_data = dataclasses.replace(g066, patient="g001")
    ineligible = dataclasses.replace(evaluate_gold(nct06462092, "g011"), patient="g001")
    rendered = renderer.render_all([(nct06462092, needs_data), (nct06462092, ineligible), (nct06462092, g001)],
                                   CardContext("g001"))
    assert [evaluation for _, evaluation, _ in rendered] == [g001, needs_data, ineligible]
    assert [card is None for _, _, card in rendered] == [False, False, True]


def test_a_test_two_cards_need_is_suggested_once(renderer, nct06462092, g066):
    # Two trials missing the same blood count (here: one trial twice): one order, on the first card.
    first, second = (card for _, _, card in renderer.render_all([(nct06462092, g066), (nct06462092, g066)],
                                                                  ctx_for(g066)))
    orders = [[s["actions"][0]["resource"]["code"]["coding"][0]["code"] for s in card["suggestions"]]
              for card in (first, second)]
    assert orders == [["57021-8", "3457005"], ["3457005"]]  # CBC once; each card keeps its referral
    assert "ANC" in second["detail"] and second["detail"].count("?") == first["detail"].count("?")


def test_an_evaluation_stopped_at_its_first_fail_has_no_card(renderer_all, nct06462092):
    ineligible = evaluate_gold(nct06462092, "g011")
    partial = dataclasses.replace(ineligible, criteria=ineligible.criteria[:3], complete=False)
    with pytest.raises(ValueError, match="stopped at its first failing criterion"):
        renderer_all.render(nct06462092, partial, ctx_for(partial))
    assert renderer_all.render(nct06462092, ineligible, ctx_for(ineligible)) is not None


def test_an_imaging_order_is_not_a_laboratory_procedure(renderer):
    # TEST-0004's LVEF criterion suggests a transthoracic echocardiogram when no LVEF is recorded.
    from cds_service.trials import load_trial

    trial = load_trial(Path(__file__).parent / "trials" / "TEST-0004.yaml")
    patient = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1970-01-01"}
    evaluation = evaluate(trial, [patient], dt.date(2026, 6, 15))
    card = renderer.render(trial, evaluation, CardContext("p1"))
    categories = {s["actions"][0]["resource"]["code"]["coding"][0]["code"]:
                  s["actions"][0]["resource"].get("category", [{}])[0].get("coding", [{}])[0].get("display")
                  for s in card["suggestions"]}
    assert categories["433236007"] == "Imaging" and categories["57021-8"] == "Laboratory procedure"
    lvef = next(c for c in card["extension"]["trial-eligibility"]["criteria"] if c["id"] == "lvef")
    assert lvef["order"]["category"] == "imaging"


# -- identifiers -----------------------------------------------------------------------------------

def test_uuids_are_unique_across_cards_and_suggestions(renderer, nct06462092, g001, g066):
    g081 = evaluate_gold(nct06462092, "g081")
    ids = []
    for evaluation in (g001, g066, g081, g066, g001):
        card = renderer.render(nct06462092, evaluation, ctx_for(evaluation))
        ids.append(card["uuid"])
        ids.extend(s["uuid"] for s in card["suggestions"])
    assert len(ids) == 13  # 5 cards, 8 suggestions
    assert len(set(ids)) == len(ids)
    for value in ids:
        assert str(uuid.UUID(value)) == value


def test_uuid_source_is_injectable(nct06462092, g066):
    counter = itertools.count(1)
    r = CardRenderer(new_uuid=lambda: f"id-{next(counter)}")
    card = r.render(nct06462092, g066, ctx_for(g066))
    assert card["uuid"] == "id-1"
    assert [s["uuid"] for s in card["suggestions"]] == ["id-2", "id-3"]


# -- every gold patient ----------------------------------------------------------------------------

@pytest.mark.parametrize("path", ALL_GOLD, ids=[p.stem.split("-")[0] for p in ALL_GOLD])
def test_every_gold_card_is_valid_cds_hooks(path, renderer_all, nct06462092):
    (group,) = patient_groups_from_bytes(path.read_bytes())
    evaluation = evaluate(nct06462092, PatientRecord(group.resources, group.full_urls), AS_OF)
    card = renderer_all.render(nct06462092, evaluation, ctx_for(evaluation, encounter_id="e1"))
    assert find_empty_values(card) == []
    assert 0 < len(card["summary"]) < 140 and NCT in card["summary"]
    assert "\n" not in card["summary"]
    assert card["indicator"] in ("info", "warning", "critical")
    assert len(card["detail"]) < 2500
    assert not re.search(r"<[A-Za-z/!?]", card["detail"])
    assert len(checklist(card["detail"])) == len(nct06462092.definition.criteria)
    if "suggestions" in card:
        assert card["selectionBehavior"] in ("any", "at-most-one")
        for s in card["suggestions"]:
            assert s["label"] and isinstance(s["isRecommended"], bool)
            for action in s["actions"]:
                assert action["type"] == "create" and action["description"]
                assert action["resource"]["resourceType"] == "ServiceRequest"
    else:
        assert "selectionBehavior" not in card
    for link in card["links"]:
        assert link["type"] == "absolute" and link["url"].startswith("https://")
    assert card["extension"]["trial-eligibility"] == evaluation.to_json()


# -- detail Markdown -------------------------------------------------------------------------------

def test_detail_checklist_order_and_evidence(renderer, nct06462092, g066):
    detail = renderer.render(nct06462092, g066, ctx_for(g066))["detail"]
    assert detail.splitlines()[0].startswith(f"**{NCT}**")
    assert "2026-06-15" in detail.splitlines()[0]
    items = checklist(detail)
    marks = [line.split()[1] for line in items]
    assert marks == sorted(marks, key=["?", "✘", "👁", "✔", "–"].index)
    assert marks[0] == "?" and marks.count("👁") == 3
    anc = items[0]
    assert "3.4 ×10³/µL" in anc and "2026-05-02" in anc and "Observation/g066-anc-1" in anc
    assert "T09:10" not in detail  # the day only
    review = next(line for line in items if "No severe concomitant disease" in line)
    assert review.endswith("No severe concomitant disease: investigator to review")


@pytest.mark.parametrize("unit,shown", [
    ("10*3/uL", "×10³/µL"), ("10^9/L", "×10⁹/L"), ("10*12/L", "×10¹²/L"), ("[IU]/L", "IU/L"),
    ("umol/L", "µmol/L"), ("ug/dL", "µg/dL"), ("/mm3", "/mm³"), ("cells/mm3", "cells/mm³"),
    # left as written: not UCUM powers of ten, or nothing to prettify
    ("U/L", "U/L"), ("mg/dL", "mg/dL"), ("x10E3/uL", "x10E3/µL"), ("K/uL", "K/µL"), ("%", "%"), ("", "")])
def test_units_are_shown_as_clinicians_write_them(unit, shown):
    assert unit_display(unit) == shown


def test_converted_value_hidden_when_it_reads_the_same(renderer, nct06462092):
    # 10^9/L recorded, 10*9/L after conversion: the same number and unit on the card, so shown once.
    bundle = gold_bundle("g001")
    anc = entry(bundle, "g001-anc-1")["resource"]
    anc["valueQuantity"] = {"value": 3.2, "unit": "10^9/L"}
    evaluation = evaluate_bundle(nct06462092, bundle)
    line = next(x for x in checklist(renderer.render(nct06462092, evaluation, ctx_for(evaluation))["detail"])
                if "neutrophil" in x)
    assert "3.2 ×10⁹/L · 2026-06-08" in line and "(=" not in line


def test_detail_shows_converted_value_uln_and_assumed(renderer, renderer_all, nct06462092, g001):
    detail = renderer.render(nct06462092, g001, ctx_for(g001))["detail"]
    anc = next(line for line in checklist(detail) if "neutrophil" in line)
    assert "3.2 ×10³/µL (= 3.2 ×10⁹/L) · 2026-06-08 · Observation/g001-anc-1" in anc
    alt_ast = next(line for line in checklist(detail) if line.startswith("- ✔ ALT and AST"))
    assert "ALT 24 U/L, ULN 55 U/L" in alt_ast and "AST 28 U/L, ULN 48 U/L" in alt_ast
    assert "(assumed)" not in detail
    fallback = evaluate_gold(nct06462092, "g057")  # bilirubin without a reference range
    detail = renderer_all.render(nct06462092, fallback, ctx_for(fallback))["detail"]
    bilirubin = next(line for line in checklist(detail) if "bilirubin" in line)
    assert bilirubin.startswith("- ✘") and "ULN 1.0 mg/dL (assumed)" in bilirubin


def test_transaminases_card_note_is_shown(renderer, nct06462092, g001):
    note = next(c.card_note for c in nct06462092.definition.criteria if c.id == "transaminases")
    assert note
    detail = renderer.render(nct06462092, g001, ctx_for(g001))["detail"]
    notes = detail.split("**How criteria are read**", 1)[1]
    assert f"ALT and AST below 2.5 × ULN: {md_escape(note)}" in notes


def test_data_values_are_escaped(renderer, nct06462092, g066):
    evaluation = copy.deepcopy(g066)
    anc = evaluation.criterion("neutrophils")
    anc.order = dataclasses.replace(anc.order, display="*bold* <script>alert(1)</script> [x](y) & `z`")
    anc.reason = "ANC | _stale_ # 1"
    card = renderer.render(nct06462092, evaluation, ctx_for(evaluation))
    detail = card["detail"]
    assert "<script>" not in detail and "</script>" not in detail
    assert "\\*bold\\* &lt;script&gt;alert(1)&lt;/script&gt; \\[x\\](y) &amp; \\`z\\`" in detail
    assert "ANC \\| \\_stale\\_ \\# 1" in detail
    # Labels and FHIR resources are plain text: not escaped.
    assert order_suggestions(card)[0]["actions"][0]["resource"]["code"]["text"].startswith("*bold* <script>")


def test_md_escape():
    assert md_escape("a*b_c`d[e]f<g>h#i|j&k\\l~m") == "a\\*b\\_c\\`d\\[e\\]f&lt;g&gt;h\\#i\\|j&amp;k\\\\l\\~m"
    assert md_escape("two\nlines\t here") == "two lines here"
    assert md_escape("&lt;") == "&amp;lt;"
    assert md_escape(None) == ""


# -- request context -------------------------------------------------------------------------------

def test_requester_only_for_practitioners(renderer, nct06462092, g066):
    for user, expected in (("Patient/g066", None), ("RelatedPerson/r1", None), (None, None),
                           ("Practitioner/p-1", {"reference": "Practitioner/p-1"}),
                           ("PractitionerRole/pr.2", {"reference": "PractitionerRole/pr.2"})):
        card = renderer.render(nct06462092, g066, ctx_for(g066, user_id=user))
        for sr in suggestion_resources(card):
            assert sr.get("requester") == expected, user
            assert "encounter" not in sr
        assert find_empty_values(card) == []


def test_encounter_included_when_given(renderer, nct06462092, g066):
    for given in ("enc-42", "Encounter/enc-42"):
        card = renderer.render(nct06462092, g066, ctx_for(g066, encounter_id=given))
        resources = suggestion_resources(card)
        assert len(resources) == 2
        assert all(sr["encounter"] == {"reference": "Encounter/enc-42"} for sr in resources)


def test_context_is_checked(renderer, nct06462092, g066, trials):
    with pytest.raises(ValueError, match="patient_id"):
        CardContext("")
    with pytest.raises(ValueError, match="patient_id"):
        CardContext("Patient/g066")
    with pytest.raises(ValueError, match="not g999"):  # never a card about another patient
        renderer.render(nct06462092, g066, CardContext("g999"))
    other = next((t for t in trials.values() if t.id != NCT), None)
    if other is not None:
        with pytest.raises(ValueError, match="trial"):
            renderer.render(other, g066, ctx_for(g066))


def test_render_refuses_to_emit_empty_values(renderer, nct06462092, g066):
    # What the renderer fills in is checked: an order without a code (only a definition the
    # loader would refuse has one) would leave the suggested ServiceRequest's code empty.
    evaluation = copy.deepcopy(g066)
    anc = evaluation.criterion("neutrophils")
    assert anc.order is not None
    anc.order = dataclasses.replace(anc.order, code="")
    with pytest.raises(ValueError, match=r"suggestions\[0\]\.actions\[0\]\.resource\.code\.coding\[0\]\.code$"):
        renderer.render(nct06462092, evaluation, ctx_for(evaluation))


def test_an_empty_field_of_the_evaluation_is_left_out_of_the_extension(renderer, nct06462092, g066):
    evaluation = copy.deepcopy(g066)
    evaluation.criterion("alive").reason = ""
    card = renderer.render(nct06462092, evaluation, ctx_for(evaluation))
    alive = card["extension"]["trial-eligibility"]["criteria"][0]
    assert alive["id"] == "alive" and "reason" not in alive
    assert find_empty_values(card) == []


# -- helpers ---------------------------------------------------------------------------------------

def test_fit_summary_boundaries():
    assert fit_summary("x" * 139) == "x" * 139
    cut = fit_summary("x" * 140)
    assert len(cut) == 139 and cut.endswith("…") and cut[:138] == "x" * 138
    cut = fit_summary("y" * 200)
    assert len(cut) == 139 and cut.endswith("…")
    assert fit_summary("  a \n\t b  ") == "a b"
    assert len(fit_summary("word " * 60)) == 139


def test_find_empty_values():
    assert find_empty_values({"a": 1, "b": [{"c": "x"}], "d": False, "e": 0}) == []
    found = find_empty_values({"a": None, "b": "", "c": [], "d": {}, "e": [{"f": {"g": []}}, "ok"]})
    assert found == ["$.a", "$.b", "$.c", "$.d", "$.e[0].f.g"]
    assert find_empty_values([]) == ["$"]
    # Texts that look like empty JSON values are not empty values.
    assert find_empty_values({"a": "null", "b": "[]", "c": '""', "d": "{}", "": "key"}) == []
    assert find_empty_values({"a": "null", "b": [{"c": ""}]}) == ["$.b[0].c"]
    # Tuples count as lists; other values are not empty.
    assert find_empty_values({"a": Decimal("1"), "b": (), "c": (1,)}) == ["$.b"]
    assert find_empty_values({"a": Decimal("1"), "c": (1,)}) == []


def _empty_paths(value, path="$"):
    """Reference: every empty value's path, by plain recursion."""
    if value is None or (isinstance(value, (str, list, tuple, dict)) and not value):
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _empty_paths(v, f"{path}.{k}")]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in _empty_paths(v, f"{path}[{i}]")]
    return []


@pytest.mark.parametrize("seed", range(40))
def test_find_empty_values_on_random_documents(seed):
    # find_empty_values (a quick check, then paths) against plain recursion: texts that look
    # like empty values ('[]' in prose, a key "null") are not empty, every real empty is found.
    # Per document, empties and such texts are each present or not.
    rng = random.Random(seed)
    p_empty, p_marked = rng.choice([0, 0.06]), rng.choice([0, 0.06])
    clean, marked = ["x", "y", 0, 1.5, True, False, 2], ['say "hi"', 'ends with "', "[]", "{}", "null"]

    def leaf():
        roll = rng.random()
        if roll < p_empty:
            return rng.choice([None, "", [], {}])
        return rng.choice(marked) if roll < p_empty + p_marked else rng.choice(clean)

    def document(depth):
        if depth > 3 or rng.random() < 0.4:
            return leaf()
        if rng.random() < 0.5:
            return [document(depth + 1) for _ in range(3)]
        return {(rng.choice(["null", ""]) if rng.random() < p_marked else "k") + str(i): document(depth + 1)
                for i in range(3)}

    doc = {"cards": [document(0) for _ in range(3)]}
    assert find_empty_values(doc) == _empty_paths(doc)


@pytest.mark.parametrize("seed", range(30))
def test_the_evaluation_json_never_carries_an_empty_value(seed):
    # The card's extension is not walked for empty values at run time: the evaluation's JSON leaves
    # out every field with nothing to say. Every text field here is empty, absent or set at random.
    from cds_service.engine.model import (CriterionResult, Evidence, Measured, Order, Result, Role,
                                          TrialEvaluation, UpperLimit, Why)

    rng = random.Random(seed)

    def text():
        return rng.choice(["", None, "x", "10*3/uL"])

    def decimal():
        return rng.choice([Decimal("0"), Decimal("1.5E+1"), Decimal("-0.00")])

    def evidence():
        return Evidence(reference=rng.choice(["", "Observation/a"]), role=rng.choice(list(Role)), code=text(),
                        display=text(), value=text(), unit=text(), comparator=text(), date=text(), status=text(),
                        note=text(),
                        converted=rng.choice([None, Measured(decimal(), rng.choice(["", "10*9/L"]))]),
                        uln=rng.choice([None, UpperLimit(decimal(), rng.choice(["", "U/L"]),
                                                         rng.choice(["", "fallback"]), rng.random() < 0.5, text())]),
                        ratio_to_uln=rng.choice([None, decimal()]))

    def criterion(i):
        return CriterionResult(f"c{i}", rng.choice(["inclusion", "exclusion"]), rng.choice(list(Result)),
                               rng.choice(["", "a reason"]), [evidence() for _ in range(rng.randint(0, 3))],
                               why=rng.choice([None, *Why]), title=text(), not_read=rng.choice([0, 3]),
                               order=rng.choice([None, Order(text() or "", text() or "", "751-8", text() or "")]))

    evaluation = TrialEvaluation(NCT, "1", rng.choice([None, "", "p1"]), AS_OF,
                                 [criterion(i) for i in range(rng.randint(0, 4))])
    assert find_empty_values(evaluation.to_json()) == []


# -- templates -------------------------------------------------------------------------------------

def copy_templates(tmp_path: Path) -> Path:
    target = tmp_path / "cards"
    target.mkdir()
    for name in TEMPLATE_FILES:
        shutil.copy(packaged_templates() / name, target / name)
    return target


def test_custom_template_dir_changes_the_summary(tmp_path, nct06462092, g001):
    folder = copy_templates(tmp_path)
    (folder / "summary.txt.j2").write_text(
        "{{ trial.nct_id }} ({{ status }}): screening result for {{ patient_id }}\n", encoding="utf-8")
    card = CardRenderer(folder).render(nct06462092, g001, ctx_for(g001))
    assert card["summary"] == f"{NCT} (eligible): screening result for g001"
    assert CardRenderer(str(folder)).render(nct06462092, g001, ctx_for(g001))["summary"] == card["summary"]


def test_templates_keep_jinja_globals(tmp_path, nct06462092, g001):
    # range() and namespace() are Jinja globals; the renderer's flat globals must keep them.
    folder = copy_templates(tmp_path)
    detail = (folder / "detail.md.j2").read_text(encoding="utf-8")
    (folder / "detail.md.j2").write_text(
        detail + "\n{% set ns = namespace(n=0) %}{% for i in range(3) %}{% set ns.n = ns.n + i %}{% endfor %}"
                 "Sum {{ ns.n }}\n", encoding="utf-8")
    card = CardRenderer(folder).render(nct06462092, g001, ctx_for(g001))
    assert card["detail"].endswith("Sum 3")


def test_template_can_lay_out_evidence_itself(tmp_path, nct06462092, g001):
    # `evidence_line` is the default layout; the pieces stay available for another one.
    folder = copy_templates(tmp_path)
    (folder / "detail.md.j2").write_text(
        "{% for item in items %}{% if item.id == 'transaminases' %}{{ item.evidence_line }}\n"
        "{% for ev in item.evidence %}{{ ev.label }}={{ ev.value }} {{ ev.unit }} ({{ ev.reference }}) | "
        "{% endfor %}{% endif %}{% endfor %}", encoding="utf-8")
    card = CardRenderer(folder).render(nct06462092, g001, ctx_for(g001))
    joined, pieces = card["detail"].split("\n")
    assert joined.count("; ") == 1 and joined.startswith("ALT ") and "; AST " in joined
    assert pieces == "ALT=24 U/L (Observation/g001-alt-1) | AST=28 U/L (Observation/g001-ast-1) |"


def test_custom_text_yaml_changes_labels(tmp_path, nct06462092, g066):
    folder = copy_templates(tmp_path)
    text = (folder / "text.yaml").read_text(encoding="utf-8")
    text = text.replace('label: "Order {{ order }} (for {{ criteria }})"', 'label: "Request {{ order }}"')
    (folder / "text.yaml").write_text(text, encoding="utf-8")
    card = CardRenderer(folder).render(nct06462092, g066, ctx_for(g066))
    assert order_suggestions(card)[0]["label"] == "Request CBC W Auto Differential panel - Blood"


@pytest.mark.parametrize("missing", TEMPLATE_FILES)
def test_missing_template_file_is_named(tmp_path, missing):
    folder = copy_templates(tmp_path)
    (folder / missing).unlink()
    with pytest.raises(ValueError, match=re.escape(missing)):
        CardRenderer(folder)


@pytest.mark.parametrize("name, source, message", [
    ("summary.txt.j2", "{{ trail.nct_id }}", "unknown variable.*trail"),
    ("summary.txt.j2", "{% if status %}unclosed", "summary.txt.j2"),
    ("detail.md.j2", "{% for item in items %}{{ item.titel }}{% endfor %}", "detail.md.j2"),
    ("detail.md.j2", "{{ trial.nct_id | nosuchfilter }}", "detail.md.j2"),
    ("detail.md.j2", "<b>{{ trial.nct_id }}</b>", "raw HTML"),
])
def test_broken_templates_fail_at_construction(tmp_path, name, source, message):
    folder = copy_templates(tmp_path)
    (folder / name).write_text(source, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        CardRenderer(folder)


LINK = "link:\n  label: Study page (ClinicalTrials.gov)\n"
SCREENED = "    - code: already-screened\n      display: Already screened or referred\n"


@pytest.mark.parametrize("old, new, message", [
    (LINK, "link:\n  text: Study page\n", "'link.label': Field required"),
    (LINK, "", "'link': Field required"),
    (LINK, "link: Study page\n", "'link': must be a mapping"),
    ("label: Clinical trial screening", 'label: "  "', "'source.label': must be a non-empty string"),
    ("label: Clinical trial screening", "label: 5", "'source.label': Input should be a valid string"),
    ("{{ short_title }})", "{{ shorttitle }})", "'service_request.referral_reason': unknown variable(s) shorttitle; "
                                               "available: nct_id, short_title, study_url, title"),
    ('"Refer to the {{ nct_id }} study team"', '"Refer {{ order }}"',  # an order variable where there is no order
     "'suggestions.referral.label': unknown variable(s) order; available: nct_id, short_title, study_url, title"),
    ("{{ order }} (for", "{{ order } (for", "'suggestions.order.label': line 1: unexpected '}'"),
    ('  review: "👁"\n', "", "'symbols': missing the symbol(s) for review"),
    ('  review: "👁"\n', '  review: "👁"\n  maybe: "~"\n',
     "'symbols': unknown result(s) maybe (the results: pass, fail, unknown, review, not-applicable)"),
    (SCREENED, SCREENED.replace("      display: Already screened or referred\n", ""),
     "'override_reasons.reasons[1].display': Field required"),
    (SCREENED, SCREENED + "      note: why\n", "'override_reasons.reasons[1].note': Extra inputs are not permitted"),
    (SCREENED, "    - already-screened\n", "'override_reasons.reasons[1]': must be a mapping"),
    ("code: already-screened", "code: not-a-candidate",
     "'override_reasons.reasons': repeats the code(s) not-a-candidate"),
    ("  age: age\n", "  age: 5\n", "'short_names.age': Input should be a valid string"),
    ("failed_names:\n", "footer: Screening by the study team\nfailed_names:\n",
     "'footer': Extra inputs are not permitted"),
])
def test_a_bad_text_yaml_is_one_line_naming_the_key(tmp_path, old, new, message):
    folder = copy_templates(tmp_path)
    text = (folder / "text.yaml").read_text(encoding="utf-8")
    assert old in text
    (folder / "text.yaml").write_text(text.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(ValueError) as raised:
        CardRenderer(folder)
    assert str(raised.value) == f"text.yaml: {message}"


def test_text_yaml_that_is_not_yaml_is_one_line_with_the_line(tmp_path):
    folder = copy_templates(tmp_path)
    text = (folder / "text.yaml").read_text(encoding="utf-8")
    (folder / "text.yaml").write_text(text.replace("source:\n", "source: [\n", 1), encoding="utf-8")
    with pytest.raises(ValueError, match=r"^text\.yaml: line \d+: not valid YAML: expected ',' or ']', but got ':'$"):
        CardRenderer(folder)


def test_the_shipped_texts_load_as_written():
    data = yaml.safe_load((packaged_templates() / "text.yaml").read_text(encoding="utf-8"))
    texts = load_texts((packaged_templates() / "text.yaml").read_text(encoding="utf-8"))
    assert texts.templates() == {f"{section}.{key}": value for section in ("source", "link", "service_request")
                                 for key, value in data[section].items()} | {
        f"suggestions.{kind}.{key}": value for kind in ("order", "referral")
        for key, value in data["suggestions"][kind].items()}
    assert len(texts.templates()) == 10
    assert texts.symbol_texts() == {r.value: data["symbols"][r.value] for r in Result}
    assert list(texts.symbol_texts()) == [r.value for r in Result]
    assert texts.override_codings() == [{"system": data["override_reasons"]["system"], **reason}
                                        for reason in data["override_reasons"]["reasons"]]
    assert (texts.short_names, texts.failed_names) == (data["short_names"], data["failed_names"])


def test_packaged_templates_are_the_cards_folder():
    top = Path(__file__).resolve().parent.parent / "cards"
    for name in TEMPLATE_FILES:
        assert (packaged_templates() / name).read_bytes() == (top / name).read_bytes()


# -- numbers at the precision recorded; deceased patients' age (issue 13, item 8) --------------------

UCUM = "http://unitsofmeasure.org"


def _quantity(value, unit, comparator=None) -> dict:
    q = {"value": value, "unit": unit, "system": UCUM, "code": unit}
    if comparator:
        q["comparator"] = comparator
    return q


def _card_line(renderer, trial, bundle: dict, starts: str):
    evaluation = evaluate_bundle(trial, bundle)
    card = renderer.render(trial, evaluation, ctx_for(evaluation))
    return card, next(x for x in checklist(card["detail"]) if x[4:].startswith(starts))


def _extension_evidence(card: dict, criterion: str) -> list[dict]:
    criteria = card["extension"]["trial-eligibility"]["criteria"]
    return next(c for c in criteria if c["id"] == criterion)["evidence"]


def test_a_uln_converted_from_another_unit_is_shown_at_a_sensible_precision(renderer, nct06462092):
    # Bilirubin in µmol/L, its reference range in mg/dL: the ULN is converted (1.2 mg/dL = 20.51282… µmol/L).
    bundle = gold_bundle("g001")
    tbil = entry(bundle, "g001-tbil-1")["resource"]
    tbil["valueQuantity"] = _quantity(12, "umol/L")
    tbil["referenceRange"] = [{"high": _quantity(1.2, "mg/dL")}]
    card, line = _card_line(renderer, nct06462092, bundle, "Total bilirubin")
    assert "— 12 µmol/L, ULN 20.5 µmol/L · 2026-06-08 · Observation/g001-tbil-1" in line
    assert not re.search(r"\d\.\d{4}", card["detail"])
    # The evaluation keeps the ULN as computed: it is data.
    (evidence,) = _extension_evidence(card, "bilirubin")
    assert evidence["uln"]["value"].startswith("20.5128205128") and evidence["value"] == "12"


def test_a_platelet_count_converted_from_per_microlitre(renderer, nct06462092):
    bundle = gold_bundle("g001")
    plt = entry(bundle, "g001-plt-1")["resource"]
    plt["valueQuantity"] = _quantity(314478, "/uL")
    card, line = _card_line(renderer, nct06462092, bundle, "Platelets")
    assert "— 314478 /µL (= 314 ×10⁹/L) · 2026-06-08" in line
    (evidence,) = _extension_evidence(card, "platelets")
    assert evidence["value"] == "314478" and evidence["converted"] == {"value": "314.478", "unit": "10*9/L"}
    # Float noise as Synthea and some interfaces send it: shown as three significant digits, kept as sent.
    plt["valueQuantity"] = _quantity(314.4783871540618, "10*3/uL")
    card, line = _card_line(renderer, nct06462092, bundle, "Platelets")
    assert "— 314 ×10³/µL (= 314 ×10⁹/L) · 2026-06-08" in line and "314.478" not in card["detail"]
    (evidence,) = _extension_evidence(card, "platelets")
    assert evidence["value"] == "314.4783871540618" and evidence["converted"]["value"] == "314.4783871540618"


def test_a_value_keeps_its_comparator_converted_too(renderer_all, nct06462092):
    bundle = gold_bundle("g001")
    entry(bundle, "g001-tbil-1")["resource"]["valueQuantity"] = _quantity(0.2, "mg/dL", "<")
    hb = entry(bundle, "g001-hb-1")["resource"]
    hb["valueQuantity"] = _quantity(7, "g/dL", "<")
    card, line = _card_line(renderer_all, nct06462092, bundle, "Total bilirubin")
    assert "— &lt;0.2 mg/dL, ULN " in line
    card, line = _card_line(renderer_all, nct06462092, bundle, "Haemoglobin")
    assert line.startswith("- ✘") and "— &lt;7 g/dL (= &lt;70 g/L) · " in line


def test_recorded_values_are_shown_as_recorded(renderer, nct06462092):
    # Up to three decimals a number is the lab's: trailing zeros and all, nothing rounded at a threshold.
    bundle = gold_bundle("g001")
    entry(bundle, "g001-anc-1")["resource"]["valueQuantity"] = {"value": 1.505, "unit": "10^9/L"}
    entry(bundle, "g001-hb-1")["resource"]["valueQuantity"] = _quantity(9.10, "g/dL")
    _, anc = _card_line(renderer, nct06462092, bundle, "Absolute neutrophil")
    assert "— 1.505 ×10⁹/L · " in anc
    _, hb = _card_line(renderer, nct06462092, bundle, "Haemoglobin")
    assert "— 9.1 g/dL (= 91.0 g/L) · " in hb  # computed: three significant digits


def test_long_numbers_in_a_reason_are_shown_at_three_significant_digits(renderer, nct06462092, g066):
    evaluation = copy.deepcopy(g066)
    anc = evaluation.criterion("neutrophils")
    anc.reason = "ANC 0.31478387154 10*9/L on 2026-05-01 is stale; ULN 20.51282051282051282051282051 umol/L, <0.2 mg/dL"
    detail = renderer.render(nct06462092, evaluation, ctx_for(evaluation))["detail"]
    missing = detail.split("**What is missing**", 1)[1].split("**Checklist**", 1)[0]
    assert "ANC 0.315 10\\*9/L on 2026-05-01 is stale; ULN 20.5 umol/L, &lt;0.2 mg/dL" in missing


def test_a_deceased_patients_card_shows_no_age(renderer_all, nct06462092):
    bundle = gold_bundle("g002")  # deceased 2026-06-12
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    birth = dt.date.fromisoformat(patient["birthDate"])
    evaluation = evaluate_bundle(nct06462092, bundle)
    card = renderer_all.render(nct06462092, evaluation, ctx_for(evaluation))
    age = next(x for x in checklist(card["detail"]) if x[4:].startswith("Age"))
    assert age.startswith("- ✔") and not re.search(r"\bage \d", card["detail"])
    assert str(AS_OF.year - birth.year) not in age and str(AS_OF.year - birth.year - 1) not in age
    assert not re.search(r"\bage \d|patient is \d", json.dumps(card["extension"]))
    # The same patient alive shows it.
    del patient["deceasedDateTime"]
    living = evaluate_bundle(nct06462092, bundle)
    assert re.search(r"— age \d+ · ", next(x for x in checklist(
        renderer_all.render(nct06462092, living, ctx_for(living))["detail"]) if x[4:].startswith("Age")))


@pytest.mark.parametrize("value, shown", [
    ("20.51282051282051282051282051", "20.5"), ("314.4783871540618", "314"), ("1234.5678", "1235"),
    ("0.70175", "0.702"), ("0.0001234", "0.000123"), ("0.0123", "0.012"), ("3.100", "3.10"), ("123.0", "123"), ("3.2", "3.2"),
    ("91.0", "91.0"), ("1E+1", "10"), ("0", "0"), ("2.5", "2.5"), ("0.125", "0.125"), ("0.1255", "0.126")])
def test_computed_numbers_are_shown_to_three_significant_digits(value, shown):
    assert shown_number(Decimal(value)) == shown


@pytest.mark.parametrize("value, shown", [
    ("314.4783871540618", "314"), ("28.123456", "28.1"), ("3.100", "3.100"), ("1500", "1500"), ("0.005", "0.005"),
    ("Negative", "Negative"), ("2+", "2+"), ("1.2.3.4", "1.2.3.4"), (None, None), ("NaN", "NaN")])
def test_recorded_numbers_are_shown_as_recorded_unless_float_noise(value, shown):
    assert shown_recorded(value) == shown


def test_reasons_keep_their_words_dates_codes_and_comparators():
    text = ("ALT <0.2 mg/dL (<0.44 × ULN) on 2026-06-01T09:30:00.1234Z, OID 2.16.840.1.113883.3.526, "
            "version 1.1.0, ULN 20.51282051282051282051282051 umol/L.")
    assert shown_text(text) == text.replace("20.51282051282051282051282051", "20.5")
