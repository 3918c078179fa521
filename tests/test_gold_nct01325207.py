"""The NCT01325207 gold set (tests/gold/nct01325207/, tests/gold/nct01325207.yaml): hand-written
patients with the expected result of every criterion, derived from the trial's written reading, not
from running the engine. A case marked `pendingEngine: "<why>"` is a strict xfail: un-mark it the
moment the engine gets it right. To see what the engine still gets wrong, case by case:
    pytest tests/test_gold_nct01325207.py --runxfail

Also: patients evaluated against both trials at once, through the service."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml

from test_gold import _differences, _real_param, _status_of, evaluate_file

GOLD = Path(__file__).parent / "gold"
SET = GOLD / "nct01325207"
EXPECTATIONS = yaml.safe_load((GOLD / "nct01325207.yaml").read_text(encoding="utf-8"))
AS_OF = dt.date.fromisoformat(EXPECTATIONS["asOf"])
CASES = EXPECTATIONS["patients"]


@pytest.fixture(scope="module")
def nct01325207(trials):
    return trials["NCT01325207"]


def test_gold_set_is_large_and_complete(nct01325207):
    assert EXPECTATIONS["trial"] == nct01325207.definition.nct_id
    assert len(CASES) >= 40
    criterion_ids = [c.id for c in nct01325207.definition.criteria]
    files = sorted(p.name for p in SET.glob("*.json"))
    assert files == sorted(c["file"] for c in CASES), "every patient file has exactly one case"
    assert len({c["patient"] for c in CASES}) == len(CASES)
    keys = {"file", "patient", "description", "status", "criteria", "reasons", "orders", "pendingEngine",
            "prefetchOnly"}
    for case in CASES:
        criteria = case["criteria"]
        assert list(criteria) == criterion_ids, case["file"]  # every criterion, in the trial's order
        assert case["description"].strip() and set(case) <= keys, case["file"]
        # the status follows from the criteria; a typed reason belongs to an unknown or review, an order to an unknown
        assert case["status"] == _status_of(set(criteria.values())), case["file"]
        misplaced = [c for c in case.get("reasons") or {} if criteria[c] not in ("unknown", "review")] + \
                    [c for c in case.get("orders") or {} if criteria[c] != "unknown"]
        assert not misplaced, (case["file"], misplaced)


def test_gold_patient_ids_differ_from_the_first_trials():
    """The harness PUTs every gold set with its stable ids into one server: no id may be shared."""
    first = {c["patient"] for name in ("expectations.yaml", "real-shapes.yaml")
             for c in yaml.safe_load((GOLD / name).read_text(encoding="utf-8"))["patients"]}
    assert not first & {c["patient"] for c in CASES}


@pytest.mark.parametrize("case", [_real_param(c) for c in CASES])
def test_gold_patient(case, nct01325207):
    evaluation = evaluate_file(nct01325207, SET / case["file"], AS_OF)
    differences = _differences(case, evaluation)
    assert not differences, f"{case['file']}: {case['description']}\n  " + "\n  ".join(differences)


# -- both trials at once, through the service -----------------------------------------------------------
# The same clinic sees both: breast-cancer LM fits NCT06462092 (HER2-negative) or NCT01325207
# (HER2-positive) by HER2 status. Each patient's whole record goes in as prefetch, every key the two
# trials' queries need, as an EHR would send it (a prescription's referenced Medication included).

BOTH = ("NCT06462092", "NCT01325207")
ISH_ORDER, IHC_ORDER = ("http://loinc.org", "96893-3"), ("http://loinc.org", "18474-7")


def _prefetch(bundle: dict, trials) -> dict:
    from cds_service.fhir.needs import data_needs

    resources = [e["resource"] for e in bundle["entry"]]
    by_ref = {f"{r['resourceType']}/{r['id']}": r for r in resources}
    prefetch = {}
    for need in data_needs(trials):
        matches = [r for r in resources if need.selects(r)]
        if need.key == "patient":
            prefetch["patient"] = matches[0]
            continue
        included = [by_ref[ref] for ref in (r.get("medicationReference", {}).get("reference") for r in matches)
                    if ref in by_ref]
        prefetch[need.key] = {"resourceType": "Bundle", "type": "searchset", "total": len(matches),
                              "entry": [{"resource": r, "search": {"mode": "match"}} for r in matches]
                              + [{"resource": r, "search": {"mode": "include"}} for r in included]}
    return prefetch


def _call(make_app, trials, path: Path, **settings) -> list[dict]:
    import json
    import uuid

    bundle = json.loads(path.read_text(encoding="utf-8"))
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    body = {"hookInstance": str(uuid.uuid4()), "hook": "patient-view",
            "context": {"userId": "Practitioner/onc-1", "patientId": patient["id"]},
            "prefetch": _prefetch(bundle, [trials[t] for t in BOTH])}
    app = make_app(trials=BOTH, **settings)
    response = app.test_client().post("/cds-services/trial-eligibility", json=body)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["cards"]


def _evaluation(card: dict) -> dict:
    return card["extension"]["trial-eligibility"]


def _orders(card: dict) -> list[tuple[str, str]]:
    """The tests a card suggests ordering (its referral, SNOMED 3457005, left out)."""
    return [(c["system"], c["code"]) for s in card.get("suggestions", []) for a in s["actions"]
            for c in a["resource"]["code"]["coding"] if c["code"] != "3457005"]


def _case(prefix: str) -> Path:
    (path,) = SET.glob(f"{prefix}-*.json")
    return path


def test_her2_negative_lm_patient_gets_the_first_trials_card_only(make_app, trials):
    g001 = GOLD / "patients" / "g001-baseline-eligible.json"
    cards = _call(make_app, trials, g001)
    assert [(_evaluation(c)["trial"], _evaluation(c)["status"]) for c in cards] == [("NCT06462092", "eligible")]
    shown = {_evaluation(c)["trial"]: _evaluation(c) for c in _call(make_app, trials, g001, show_ineligible=True)}
    assert shown["NCT01325207"]["status"] == "ineligible"
    results = {c["id"]: c["result"] for c in shown["NCT01325207"]["criteria"]}
    assert results["her2-positive"] == "fail"


def test_her2_positive_lm_patient_gets_the_second_trials_card_only(make_app, trials):
    # On IV trastuzumab, prescribed by medicationReference: the Medication comes in the prefetch as an include.
    (case,) = [c for c in CASES if c["file"].endswith("-trastuzumab-active-reference.json")]
    cards = _call(make_app, trials, SET / case["file"])
    assert [(_evaluation(c)["trial"], _evaluation(c)["status"]) for c in cards] == [("NCT01325207", "eligible")]
    drugs = next(c for c in _evaluation(cards[0])["criteria"] if c["id"] == "cns-chemotherapy")
    assert drugs["result"] == "pass" and drugs["evidence"], drugs  # read from the included Medication
    shown = {_evaluation(c)["trial"]: _evaluation(c)
             for c in _call(make_app, trials, SET / case["file"], show_ineligible=True)}
    results = {c["id"]: c["result"] for c in shown["NCT06462092"]["criteria"]}
    assert shown["NCT06462092"]["status"] == "ineligible" and results["her2-negative"] == "fail"


def test_her2_unknown_lm_patient_gets_two_needs_data_cards_and_one_her2_order(make_app, trials):
    (case,) = [c for c in CASES if c["file"].endswith("-her2-none.json")]
    cards = _call(make_app, trials, SET / case["file"])
    assert [(_evaluation(c)["trial"], _evaluation(c)["status"]) for c in cards] == [
        ("NCT06462092", "needs-data"), ("NCT01325207", "needs-data")]  # needs-data cards in trial order
    for card, her2 in zip(cards, ("her2-negative", "her2-positive")):
        result = next(c for c in _evaluation(card)["criteria"] if c["id"] == her2)
        assert result["result"] == "unknown" and result["reasonCode"] == "no-data"
    suggested = [order for card in cards for order in _orders(card)]
    assert suggested.count(IHC_ORDER) == 1 and IHC_ORDER in _orders(cards[0])  # once, on the first card
    assert ISH_ORDER not in suggested
    assert "HER2" in cards[1]["detail"]  # the later card still says what is missing


# -- the harness: this gold set loaded into a FHIR server, the hook called without prefetch ---------------

def test_harness_reads_a_gold_set_from_its_expectations_file():
    from cds_service.harness import load_gold_set

    gold = load_gold_set(GOLD / "nct01325207.yaml")
    assert (gold.as_of, gold.trial, len(gold.cases)) == (AS_OF, "NCT01325207", len(CASES))
    assert all(c.file.is_file() for c in gold.cases)
    assert [c.patient for c in gold.cases if c.pending] == [c["patient"] for c in CASES if c.get("pendingEngine")]
    first = load_gold_set(GOLD)  # the directory form, as before
    assert first.trial == "NCT06462092" and all(c.file.parent == GOLD / "patients" for c in first.cases)
    assert len(first.cases) == len(yaml.safe_load((GOLD / "expectations.yaml").read_text())["patients"])
    shapes = load_gold_set(GOLD / "real-shapes.yaml")  # X.yaml with its patients in X/
    assert all(c.file.is_file() for c in shapes.cases)
    assert len(shapes.cases) == len(yaml.safe_load((GOLD / "real-shapes.yaml").read_text())["patients"]) > 0


def _one_case_set(tmp_path, prefix: str, **changes) -> Path:
    """A gold file holding one case of this set (its patient copied), with changes."""
    import shutil

    (case,) = [dict(c, **changes) for c in CASES if c["patient"] == prefix]
    (tmp_path / "one").mkdir()
    shutil.copy(SET / case["file"], tmp_path / "one")
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump(dict(EXPECTATIONS, patients=[case])), encoding="utf-8")
    return path


def _mocked_run(gold: Path, card: dict | None) -> tuple[int, str]:
    import io
    import json

    import responses

    from cds_service.harness import run
    from test_harness import FHIR, SERVICE, _created, _on_transaction

    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add(responses.GET, f"{FHIR}/metadata", json={"resourceType": "CapabilityStatement"})
        mock.add_callback(responses.POST, FHIR, callback=_on_transaction(
            lambda tx: (200, {"resourceType": "Bundle", "type": "transaction-response"})
            if tx["entry"][0]["request"]["method"] == "DELETE" else
            (200, _created(tx))))
        if card is not None:
            mock.add(responses.POST, f"{SERVICE}/cds-services/trial-eligibility", json={"cards": [card]})
        out = io.StringIO()
        code = run(FHIR, service=SERVICE, gold_dir=gold, mode="private", out=out)
    return code, out.getvalue()


def _card_for(case: dict, **criteria) -> dict:
    results = dict(case["criteria"], **criteria)
    return {"summary": "s", "indicator": "info", "source": {"label": "l"}, "extension": {"trial-eligibility": {
        "trial": "NCT01325207", "status": _status_of(set(results.values())),
        "criteria": [{"id": cid, "result": r, **({"reasonCode": case.get("reasons", {})[cid]}
                                                 if cid in case.get("reasons", {}) else {})}
                     for cid, r in results.items()]}}}


def test_harness_compares_the_gold_sets_own_trial(tmp_path):
    gold = _one_case_set(tmp_path, "h002")  # KPS 50: ineligible
    (case,) = yaml.safe_load(gold.read_text())["patients"]
    code, report = _mocked_run(gold, _card_for(case))
    assert code == 0 and "1/1 as expected" in report, report
    code, report = _mocked_run(gold, _card_for(case, **{"performance-status": "pass"}))
    assert code == 1 and "performance-status=pass" in report, report


def test_harness_reports_a_pending_case_and_fails_once_it_is_right(tmp_path):
    gold = _one_case_set(tmp_path, "h002", pendingEngine="engine: reads KPS 50 as passing")
    (case,) = yaml.safe_load(gold.read_text())["patients"]
    code, report = _mocked_run(gold, _card_for(case, **{"performance-status": "pass"}))  # the known gap
    assert code == 0 and "[pending: engine: reads KPS 50 as passing]" in report, report
    assert "0/1 as expected, 1 pending (known engine gaps)" in report
    code, report = _mocked_run(gold, _card_for(case))  # the gap closed: the mark must go
    assert code == 1 and "un-mark it" in report, report


def test_harness_does_not_run_a_prefetch_only_case(tmp_path):
    (case,) = [c for c in CASES if c.get("prefetchOnly")]
    gold = _one_case_set(tmp_path, case["patient"])
    code, report = _mocked_run(gold, None)
    assert code == 0 and f"{case['patient']}: not run (prefetch only: " in report, report
    assert "loading 0 gold patients" in report


# Against a real HAPI server (tests/hapi/): Procedures with performedPeriod and performedDateTime, a
# MedicationRequest coded by medicationReference (the service's _include brings the Medication), a
# MedicationStatement with a contained Medication, a MedicationAdministration, a conditional ALT limit.
HAPI_CASES = ("baseline-eligible", "rt-ended-13-days", "rt-ended-14-days", "capecitabine-active",
              "trastuzumab-active-reference", "capecitabine-statement-contained", "temozolomide-administered",
              "alt-3x-liver-met")


@pytest.mark.parametrize("mode", ["private", "shared"])
def test_harness_on_some_of_this_gold_set_against_hapi(hapi, mode):
    import io

    from cds_service.harness import run

    only = [c["file"].removesuffix(".json") for c in CASES if c["file"][5:-5] in HAPI_CASES]
    assert len(only) == len(HAPI_CASES)
    out = io.StringIO()
    code = run(hapi, service=None, gold_dir=GOLD / "nct01325207.yaml", mode=mode, only=only, out=out)
    report = out.getvalue()
    print(report)
    assert code == 0, report
    assert f"{len(only)}/{len(only)} as expected" in report


def test_the_gold_files_are_what_the_generator_writes(tmp_path):
    # tests/gold/generator/cases.py is where a case is changed; the files are its output, committed.
    import importlib.util

    spec = importlib.util.spec_from_file_location("gold_generate", GOLD / "generator" / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    generate.main(tmp_path / "nct01325207")
    assert (tmp_path / "nct01325207.yaml").read_text() == (GOLD / "nct01325207.yaml").read_text()
    written = sorted(p.name for p in (tmp_path / "nct01325207").glob("*.json"))
    assert written == sorted(p.name for p in SET.glob("*.json"))
    for name in written:
        assert (tmp_path / "nct01325207" / name).read_text() == (SET / name).read_text(), name
