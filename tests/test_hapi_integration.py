"""Against a real HAPI FHIR R4 server on 127.0.0.1 (tests/hapi/, built from
Maven Central): what mocks cannot prove. The server pages by 2 (hapi_server.PAGE_SIZE),
so every gold patient's searches span several `_getpages` pages.

Locally these tests skip when Java or Maven is missing; under CI=true they never skip."""

from __future__ import annotations

import copy
import io
import json
import time
import uuid
from pathlib import Path

import pytest
import requests

from cds_service.fhir.client import FhirClient
from cds_service.fhir.queries import Read, Search
from cds_service.harness import FhirWriter, load_gold_set, run

GOLD = Path(__file__).parent / "gold"
LOINC = "http://loinc.org"


def _observation(patient: str, code: str, day: int, value: float) -> dict:
    return {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": LOINC, "code": code}]}, "subject": {"reference": f"Patient/{patient}"},
            "effectiveDateTime": f"2026-05-{day:02d}T08:00:00Z",
            "valueQuantity": {"value": value, "unit": "10*3/uL", "system": "http://unitsofmeasure.org",
                              "code": "10*3/uL"}}


@pytest.fixture(scope="module")
def labs_patient(hapi):
    """A patient with 12 ANC/PLT results and 3 unrelated ones, loaded by transaction."""
    pid = f"it-{uuid.uuid4().hex[:12]}"
    entries = [{"resource": {"resourceType": "Patient", "id": pid, "gender": "female", "birthDate": "1970-01-01"},
                "request": {"method": "PUT", "url": f"Patient/{pid}"}}]
    for day in range(1, 13):
        code = "751-8" if day % 2 else "777-3"
        entries.append({"resource": _observation(pid, code, day, day), "request": {"method": "POST",
                                                                                  "url": "Observation"}})
    for day in range(13, 16):
        entries.append({"resource": _observation(pid, "2345-7", day, 5), "request": {"method": "POST",
                                                                                    "url": "Observation"}})
    response = requests.post(hapi, json={"resourceType": "Bundle", "type": "transaction", "entry": entries},
                             headers={"Content-Type": "application/fhir+json"}, timeout=60)
    assert response.status_code == 200, response.text[:500]
    return pid


def _client(hapi, **kwargs) -> FhirClient:
    return FhirClient([hapi], cache_ttl=0, **kwargs)


def _search(hapi, pid, **kwargs):
    query = Search("Observation", (("code", f"{LOINC}|751-8,{LOINC}|777-3"), ("_sort", "-date"), ("_count", "100")))
    return _client(hapi, **kwargs).fetch(hapi, None, {"obs": query}, pid, time.monotonic() + 30)["obs"]


def test_or_codes_sorted_by_date_paged_to_the_end(hapi, labs_patient):
    result = _search(hapi, labs_patient)
    assert result.error is None
    dates = [r["effectiveDateTime"] for r in result.resources]
    assert len(dates) == 12  # both OR'ed codes, not the unrelated 2345-7
    assert dates == sorted(dates, reverse=True)
    assert result.pages >= 2  # _count=100 was capped by the server: next links were followed


def test_page_limit_truncates(hapi, labs_patient):
    result = _search(hapi, labs_patient, page_limit=1)
    assert result.truncated and len(result.resources) < 12


def test_expired_page_reruns_the_search_once(hapi, labs_patient):
    client = _client(hapi)
    first = requests.get(f"{hapi}/Observation", params={"patient": labs_patient, "code": f"{LOINC}|751-8,{LOINC}|777-3",
                                                        "_sort": "-date"}, timeout=30).json()
    assert any(link["relation"] == "next" and "_getpages" in link["url"] for link in first["link"])
    expired = copy.deepcopy(first)
    for link in expired["link"]:
        if link["relation"] == "next":
            link["url"] = f"{hapi}?_getpages={uuid.uuid4()}&_getpagesoffset=5&_count=5&_bundletype=searchset"
    gone = requests.get(next(l["url"] for l in expired["link"] if l["relation"] == "next"), timeout=30)
    assert gone.status_code == 410  # HAPI: the search has expired
    rest = client.follow_next(hapi, None, expired, "obs", time.monotonic() + 30)
    assert rest.error is None
    page_one = {r["id"] for r in (e["resource"] for e in first["entry"])}
    assert len(page_one) + len(rest.resources) == 12 and not page_one & {r["id"] for r in rest.resources}


def test_a_write_is_seen_by_the_next_search(hapi, labs_patient):
    before = len(_search(hapi, labs_patient).resources)
    created = requests.post(f"{hapi}/Observation", json=_observation(labs_patient, "751-8", 20, 2.5),
                            headers={"Content-Type": "application/fhir+json"}, timeout=30)
    assert created.status_code == 201
    after = _search(hapi, labs_patient)
    assert len(after.resources) == before + 1  # Cache-Control: no-cache defeats HAPI's search reuse
    assert after.resources[0]["effectiveDateTime"].startswith("2026-05-20")
    requests.delete(f"{hapi}/{created.headers['Location'].split('/_history')[0].split('/fhir/')[-1]}", timeout=30)


def test_read_of_a_missing_patient(hapi):
    result = _client(hapi).fetch(hapi, None, {"p": Read("Patient")}, "no-such-patient", time.monotonic() + 30)["p"]
    assert result.not_found and result.error is None


def test_hapi_operation_outcome_becomes_412(hapi, make_app, labs_patient):
    app = make_app(allowed_fhir_servers=(hapi,), fhir_deadline=20.0)
    # _sort=-date is not a Condition search: HAPI answers 400 with an OperationOutcome
    service = app.extensions["trial_eligibility"]
    service.queries["conditions"] = Search("Condition", (("_sort", "-nonsense"),))
    body = {"hookInstance": str(uuid.uuid4()), "hook": "patient-view", "fhirServer": hapi,
            "context": {"userId": "Practitioner/x", "patientId": labs_patient}}
    response = app.test_client().post("/cds-services/trial-eligibility", data=json.dumps(body),
                                      content_type="application/json")
    assert response.status_code == 412
    diagnostics = " ".join(i["diagnostics"] for i in response.get_json()["issue"])
    # Told by its status and error class, never HAPI's own text (issue 14).
    assert "conditions" in diagnostics and "fhir-400" in diagnostics and "HAPI-" not in diagnostics


def test_gold_searches_span_several_pages(hapi):
    """The server's small pages make the service page through every gold patient's main searches."""
    from cds_service.hooks.discovery import data_needs
    from cds_service.trials import load_trials

    needs = {n.key: n.query for n in data_needs(load_trials().values())}
    writer = FhirWriter(hapi)
    pid, locations = writer.load(json.loads((GOLD / "patients" / "g001-baseline-eligible.json").read_text()),
                                 shared=False, run_id="pages")
    try:
        results = _client(hapi).fetch(hapi, None, {k: needs[k] for k in ("labResults", "conditions")}, pid,
                                      time.monotonic() + 30)
        for key, result in results.items():
            assert result.error is None and result.pages >= 2, (key, result.pages)
    finally:
        writer.delete(locations)


def test_long_lab_history_paged_newest_first_on_a_real_server(hapi, make_app):
    """60 older neutrophil counts (low: they would fail, were they recent) on a server that
    pages by 2: the service pages the date-sorted lab search only until it reaches results
    older than the 28-day look-back (not to its page limit), the cut is audited, and the
    newest count decides. The 2022 HER2 test comes in the other Observation query, which no
    lab history can cut: it still counts."""
    import datetime as dt

    bundle = json.loads((GOLD / "patients" / "g001-baseline-eligible.json").read_text())
    anc = next(e["resource"] for e in bundle["entry"] if e["resource"].get("id") == "g001-anc-1")
    for i in range(60):
        older = copy.deepcopy(anc)
        older["id"] = f"g001-anc-old-{i}"
        older["effectiveDateTime"] = f"{dt.date(2026, 5, 1) - dt.timedelta(days=i)}T08:00:00Z"
        older["valueQuantity"] = dict(anc["valueQuantity"], value=0.4)
        bundle["entry"].insert(1, {"resource": older})  # created before the current count
    writer = FhirWriter(hapi)
    pid, locations = writer.load(bundle, shared=True, run_id="history")
    try:
        app = make_app(allowed_fhir_servers=(hapi,), fhir_deadline=60.0, fhir_page_limit=20)
        evaluation = _evaluation_without_prefetch(app, hapi, pid)
        neutrophils = next(c for c in evaluation["criteria"] if c["id"] == "neutrophils")
        assert neutrophils["result"] == "pass"
        assert [e["value"] for e in neutrophils["evidence"]] == [str(anc["valueQuantity"]["value"])]
        assert neutrophils["notRead"] == 2  # the two old counts on the last page read (pages of 2)
        audit = app.extensions["trial_eligibility"].store.hook_calls()[-1]
        labs, rest = audit["data_sources"]["labResults"], audit["data_sources"]["observations"]
        # 6 current results in 3 pages, then a page of old counts reaches past the look-back: 4, not 20
        assert (labs["truncated"], labs["cut"], labs["requests"]) == (True, "look-back", 4)
        assert "truncated" not in rest
        # The 2022 HER2 test is older than every count: in one query with them it would have been cut.
        her2 = next(c for c in evaluation["criteria"] if c["id"] == "her2-negative")
        assert her2["result"] == "pass" and evaluation["status"] == "eligible"
    finally:
        writer.delete(locations)


def _evaluation_without_prefetch(app, hapi: str, pid: str) -> dict:
    """The trial evaluation of a patient-view call without prefetch (the service reads HAPI)."""
    body = {"hookInstance": str(uuid.uuid4()), "hook": "patient-view", "fhirServer": hapi,
            "context": {"userId": "Practitioner/x", "patientId": pid}}
    response = app.test_client().post("/cds-services/trial-eligibility", data=json.dumps(body),
                                      content_type="application/json")
    assert response.status_code == 200, response.get_json()
    return response.get_json()["cards"][0]["extension"]["trial-eligibility"]


def test_cytology_report_search_includes_its_result_and_a_specimen_without_subject(hapi, make_app):
    """The shapes a real server hands back: the service's own DiagnosticReport search asks
    _include=DiagnosticReport:result and :specimen (HAPI lists both in its CapabilityStatement),
    and gets the report's result, coded only locally, and its CSF specimen, which names no
    patient and so no Specimen?patient= search finds. LM is then read from them alone."""
    metadata = requests.get(f"{hapi}/metadata", headers={"Accept": "application/fhir+json"}, timeout=30).json()
    report_type = next(r for rest in metadata["rest"] for r in rest["resource"] if r["type"] == "DiagnosticReport")
    assert {"DiagnosticReport:result", "DiagnosticReport:specimen"} <= set(report_type.get("searchInclude", []))

    bundle = json.loads((GOLD / "patients" / "g001-baseline-eligible.json").read_text())
    bundle["entry"] = [e for e in bundle["entry"] if e["resource"].get("id") != "g001-lm-1"]  # LM only by cytology
    local = "urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.0"
    bundle["entry"] += [{"resource": r} for r in (
        {"resourceType": "Specimen", "id": "it-csf", "type": {"coding": [
            {"system": "http://terminology.hl7.org/CodeSystem/v2-0487", "code": "CSF"}]}},
        {"resourceType": "Observation", "id": "it-cyto-dx", "status": "final",
         "code": {"coding": [{"system": local, "code": "CYTDX", "display": "Cytology interpretation"}]},
         "subject": {"reference": "Patient/g001"}, "effectiveDateTime": "2026-05-20T10:00:00Z",
         "valueCodeableConcept": {"coding": [{"system": LOINC, "code": "LA6576-8", "display": "Positive"}]}},
        {"resourceType": "DiagnosticReport", "id": "it-cyto", "status": "final",
         "code": {"coding": [{"system": LOINC, "code": "47523-6"}]}, "subject": {"reference": "Patient/g001"},
         "effectiveDateTime": "2026-05-20T10:00:00Z", "result": [{"reference": "Observation/it-cyto-dx"}],
         "specimen": [{"reference": "Specimen/it-csf"}]})]
    writer = FhirWriter(hapi)
    pid, locations = writer.load(bundle, shared=True, run_id="include")
    try:
        app = make_app(allowed_fhir_servers=(hapi,), fhir_deadline=60.0, fhir_cache_ttl=0)
        evaluation = _evaluation_without_prefetch(app, hapi, pid)
        lm = next(c for c in evaluation["criteria"] if c["id"] == "leptomeningeal-metastases")
        assert lm["result"] == "pass" and evaluation["status"] == "eligible", lm
        report = [loc for loc in locations if loc.startswith("DiagnosticReport/")][-1]  # ours, added last
        assert lm["evidence"][0]["reference"] == report and lm["evidence"][0]["value"] == "Positive"
        audit = app.extensions["trial_eligibility"].store.hook_calls()[-1]["data_sources"]
        assert audit["cytologyReports"]["resources"] == 3 and "foreign" not in audit["cytologyReports"]
        assert audit["specimens"]["resources"] == 0  # the Specimen names no patient: only the include finds it
    finally:
        writer.delete(locations)


def test_harness_on_the_gold_set(hapi, capsys):
    cases = load_gold_set(GOLD).cases
    out = io.StringIO()
    code = run(hapi, service=None, gold_dir=GOLD, mode="private", out=out)
    report = out.getvalue()
    print(report)
    assert code == 0, report
    assert f"{len(cases)}/{len(cases)} as expected" in report


def _counts(hapi) -> dict[str, int]:
    types = ("Patient", "Condition", "Observation", "AllergyIntolerance", "DiagnosticReport", "Specimen")
    return {t: requests.get(f"{hapi}/{t}", params={"_summary": "count"}, timeout=30,
                            headers={"Cache-Control": "no-cache"}).json()["total"] for t in types}


def test_harness_shared_mode_leaves_nothing_behind(hapi):
    # As against the public sandbox: server-assigned ids, a run identifier on each Patient,
    # everything deleted afterwards (HAPI checks referential integrity on delete).
    before = _counts(hapi)
    out = io.StringIO()
    code = run(hapi, service=None, gold_dir=GOLD, mode="shared", out=out)
    report = out.getvalue()
    assert code == 0, report
    cases = load_gold_set(GOLD).cases
    assert f"{len(cases)}/{len(cases)} as expected" in report
    created = int(report.split("cleanup: deleted ")[1].split(" of ")[0])
    assert f"cleanup: deleted {created} of {created} resources created\n" in report and created > len(cases)
    assert _counts(hapi) == before


def test_deleting_twice_is_harmless(hapi):
    (path,) = (GOLD / "patients").glob("g001-*.json")
    writer = FhirWriter(hapi)
    _, locations = writer.load(json.loads(path.read_text()), shared=True, run_id="twice")
    assert writer.delete(locations) == []
    assert requests.get(f"{hapi}/{locations[0]}", timeout=30).status_code == 410
    assert writer.delete(locations) == []
