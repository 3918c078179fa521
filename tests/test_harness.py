"""The harness's behaviour towards a shared FHIR server (the public HAPI sandbox),
which this machine cannot reach: proven here with `responses`; the same run
against a real HAPI server is in test_hapi_integration.py."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import responses
import yaml

from cds_service import harness
from cds_service.harness import HARNESS_SYSTEM, FhirWriter, HarnessError, run, transaction

GOLD = Path(__file__).parent / "gold"
FHIR = "https://sandbox.example.org/baseR4"
SERVICE = "http://127.0.0.1:9999"


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(harness.time, "sleep", lambda seconds: None)


@pytest.fixture
def g001() -> dict:
    (path,) = (GOLD / "patients").glob("g001-*.json")
    return json.loads(path.read_text())


@pytest.fixture
def gold_dir(tmp_path) -> Path:
    """A one-patient gold set (g001, eligible) in the gold set's layout."""
    data = yaml.safe_load((GOLD / "expectations.yaml").read_text())
    data["patients"] = [p for p in data["patients"] if p["patient"] == "g001"]
    (tmp_path / "patients").mkdir()
    shutil.copy(GOLD / "patients" / data["patients"][0]["file"], tmp_path / "patients")
    (tmp_path / "expectations.yaml").write_text(yaml.safe_dump(data))
    return tmp_path


def _references(node) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "reference" and isinstance(v, str)] + \
            [r for k, v in node.items() if k != "reference" for r in _references(v)]
    if isinstance(node, list):
        return [r for item in node for r in _references(item)]
    return []


# -- the transaction ------------------------------------------------------------

def test_shared_transaction_creates_everything_anew(g001):
    tx, patient_ref = transaction(g001, shared=True, run_id="run-1")
    entries = tx["entry"]
    assert tx["type"] == "transaction" and len(entries) == len(g001["entry"])
    assert entries[0]["resource"]["resourceType"] == "Patient" and entries[0]["fullUrl"] == patient_ref
    assert all(e["request"]["method"] == "POST" and "id" not in e["resource"] for e in entries)
    assert {"system": HARNESS_SYSTEM, "value": "run-1"} in entries[0]["resource"]["identifier"]
    # every reference inside the bundle points at an entry of this transaction, none at the gold ids
    full_urls = {e["fullUrl"] for e in entries}
    refs = _references([e["resource"] for e in entries])
    assert refs and all(ref in full_urls for ref in refs), [r for r in refs if r not in full_urls]
    # a second load of the same file never reuses a fullUrl (two runs cannot collide)
    again, _ = transaction(g001, shared=True, run_id="run-1")
    assert not full_urls & {e["fullUrl"] for e in again["entry"]}


def test_private_transaction_keeps_stable_ids(g001):
    tx, patient_ref = transaction(g001, shared=False, run_id="run-1")
    assert patient_ref == "Patient/g001"
    assert all(e["request"] == {"method": "PUT", "url": f"{e['resource']['resourceType']}/{e['resource']['id']}"}
               for e in tx["entry"])
    assert "identifier" not in tx["entry"][0]["resource"] or all(
        i.get("system") != HARNESS_SYSTEM for i in tx["entry"][0]["resource"]["identifier"])
    assert "Patient/g001" in _references([e["resource"] for e in tx["entry"]])


# -- talking to the server ------------------------------------------------------

def _created(tx: dict) -> dict:
    """What a server answers to a transaction of POSTs: one location per entry, in order."""
    return {"resourceType": "Bundle", "type": "transaction-response", "entry": [
        {"response": {"status": "201 Created", "location": f"{e['resource']['resourceType']}/s{i}/_history/1"}}
        for i, e in enumerate(tx["entry"])]}


def _on_transaction(answer):
    def callback(request):
        status, body = answer(json.loads(request.body))
        return status, {"Content-Type": "application/fhir+json"}, json.dumps(body)
    return callback


@responses.activate
def test_load_retries_5xx_and_never_sends_authorization(g001):
    statuses = iter([503, 502, 200])
    responses.add_callback(responses.POST, FHIR, callback=_on_transaction(
        lambda tx: (next(statuses), _created(tx))))
    patient_id, locations = FhirWriter(FHIR).load(g001, shared=True, run_id="r")
    assert patient_id == "s0" and len(locations) == len(g001["entry"])
    assert locations[0] == "Patient/s0" and all("/_history" not in loc for loc in locations)
    assert len(responses.calls) == 3
    assert all("Authorization" not in c.request.headers for c in responses.calls)


@responses.activate
def test_load_gives_up_with_the_servers_diagnostics(g001):
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "processing",
                                                              "diagnostics": "HAPI-0550: database is full"}]}
    responses.add(responses.POST, FHIR, json=outcome, status=500)
    with pytest.raises(HarnessError, match="HAPI-0550: database is full"):
        FhirWriter(FHIR, retries=2).load(g001, shared=True, run_id="r")
    assert len(responses.calls) == 3  # the first try and two retries


@responses.activate
def test_delete_in_one_transaction():
    responses.add(responses.POST, FHIR, json={"resourceType": "Bundle", "type": "transaction-response"})
    assert FhirWriter(FHIR).delete(["Patient/p1", "Observation/o1", "Observation/o1"]) == []
    (call,) = responses.calls
    assert [e["request"] for e in json.loads(call.request.body)["entry"]] == [
        {"method": "DELETE", "url": "Patient/p1"}, {"method": "DELETE", "url": "Observation/o1"}]


@responses.activate
def test_delete_falls_back_to_passes_and_reports_what_stays():
    responses.add(responses.POST, FHIR, status=400, json={"resourceType": "OperationOutcome", "issue": []})
    # The Patient is still referenced until its Observation is gone; Specimen s1 is referenced by
    # someone else's data and never goes; a resource already purged answers 404.
    deleted: set[str] = set()

    def on_delete(request):
        location = request.url[len(FHIR) + 1:]
        if location == "Specimen/s1" or (location == "Patient/p1" and "Observation/o1" not in deleted):
            return 409, {}, json.dumps({"resourceType": "OperationOutcome", "issue": []})
        if location == "Condition/gone":
            return 404, {}, ""
        deleted.add(location)
        return 204, {}, ""

    responses.add_callback(responses.DELETE, responses.matchers.re.compile(FHIR + "/.*"), callback=on_delete)
    left = FhirWriter(FHIR).delete(["Patient/p1", "Observation/o1", "Specimen/s1", "Condition/gone"])
    assert left == ["Specimen/s1"]
    assert deleted == {"Observation/o1", "Patient/p1"}


# -- a whole run against a shared server -------------------------------------------

def _card(status: str, criteria: dict[str, str]) -> dict:
    return {"cards": [{"summary": "s", "indicator": "info", "source": {"label": "l"}, "extension": {
        "trial-eligibility": {"trial": "NCT06462092", "status": status,
                              "criteria": [{"id": cid, "result": result} for cid, result in criteria.items()]}}}]}


@responses.activate
def test_shared_run_reloads_a_purged_patient_and_cleans_up(gold_dir):
    expected = yaml.safe_load((gold_dir / "expectations.yaml").read_text())["patients"][0]
    loads = []
    responses.add(responses.GET, f"{FHIR}/metadata", json={"resourceType": "CapabilityStatement"})

    def on_post(tx):
        if tx["entry"][0]["request"]["method"] == "DELETE":
            return 200, {"resourceType": "Bundle", "type": "transaction-response"}
        loads.append(tx)
        answer = _created(tx)
        for e in answer["entry"]:  # server-assigned ids differ between loads
            e["response"]["location"] = e["response"]["location"].replace("/s", f"/L{len(loads)}-")
        return 200, answer

    responses.add_callback(responses.POST, FHIR, callback=_on_transaction(on_post))
    hook_bodies = []
    # The first hook call finds the patient purged (412); after one reload it is there.
    answers = iter([(412, {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-found",
                                                                          "diagnostics": "patient: not found"}]}),
                    (200, _card("eligible", expected["criteria"]))])

    def on_hook(request):
        hook_bodies.append(json.loads(request.body))
        status, body = next(answers)
        return status, {"Content-Type": "application/json"}, json.dumps(body)

    responses.add_callback(responses.POST, f"{SERVICE}/cds-services/trial-eligibility", callback=on_hook)
    out = io.StringIO()
    code = run(FHIR, service=SERVICE, gold_dir=gold_dir, mode="shared", out=out)
    report = out.getvalue()
    assert code == 0, report
    assert len(loads) == 2
    assert [b["context"]["patientId"] for b in hook_bodies] == ["L1-0", "L2-0"]
    assert all("prefetch" not in b and "fhirAuthorization" not in b and b["fhirServer"] == FHIR
               for b in hook_bodies)
    # both loads' resources are deleted: whatever of the first survived the purge, and the second
    (delete_tx,) = [json.loads(c.request.body) for c in responses.calls
                    if c.request.url.rstrip("/") == FHIR and '"DELETE"' in c.request.body]
    created = {f"{e['resource']['resourceType']}/L{n}-{i}" for n in (1, 2) for i, e in enumerate(loads[n - 1]["entry"])}
    assert {e["request"]["url"] for e in delete_tx["entry"]} == created
    assert f"cleanup: deleted {len(created)} of {len(created)} resources created" in report
    assert "1/1 as expected" in report and "run id " in report
    assert all("Authorization" not in c.request.headers for c in responses.calls)


@responses.activate
def test_run_fails_on_a_mismatch_and_says_which(gold_dir):
    responses.add(responses.GET, f"{FHIR}/metadata", json={"resourceType": "CapabilityStatement"})
    responses.add_callback(responses.POST, FHIR, callback=_on_transaction(
        lambda tx: (200, _created(tx)) if tx["entry"][0]["request"]["method"] != "DELETE"
        else (200, {"resourceType": "Bundle", "type": "transaction-response"})))
    responses.add(responses.POST, f"{SERVICE}/cds-services/trial-eligibility",
                  json=_card("needs-data", {"neutrophils": "unknown"}))
    out = io.StringIO()
    assert run(FHIR, service=SERVICE, gold_dir=gold_dir, mode="private", out=out) == 1
    line = next(x for x in out.getvalue().splitlines() if x.startswith("g001"))
    assert "status needs-data" in line and "neutrophils=unknown" in line
