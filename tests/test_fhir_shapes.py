"""The shapes EHRs send, on the way in (issue 13, item 5): whose a resource is when
its subject is a urn:uuid, an absolute URL, an identifier, or nothing at all (a
Specimen a report includes); contained resources going with their container;
`_include` on the searches the service runs itself (never in prefetch templates);
and the same readings in files (fhir/bundles.py). Each is checked through what
the clinician gets: the criterion's result and the evidence it names."""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
import uuid

import pytest
import responses

from cds_service.engine import PatientRecord, evaluate
from cds_service.fhir import gather as gather_module
from cds_service.fhir.bundles import patient_groups_from_bytes, read_patient_file
from cds_service.fhir.gather import gather
from cds_service.fhir.needs import data_needs
from cds_service.fhir.prefetch import usable_resources
from cds_service.fhir.queries import PATIENT_TOKEN, Search
from conftest import EHR
from hookdata import demo, searchset

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
V2_0487 = "http://terminology.hl7.org/CodeSystem/v2-0487"
TOKEN = "tok-3f9a1c-never-log-me"
SERVICE = "/cds-services/trial-eligibility"
AS_OF = dt.date(2026, 6, 15)
INCLUDES = "_include=DiagnosticReport:result&_include=DiagnosticReport:specimen"


def concept(system, code, display=None):
    return {"coding": [{"system": system, "code": code, **({"display": display} if display else {})}]}


def cytology_report(rid, subject, results=(), specimens=(), **extra):
    return {"resourceType": "DiagnosticReport", "id": rid, "status": "final",
            "category": [concept("http://terminology.hl7.org/CodeSystem/v2-0074", "CP", "Cytopathology")],
            "code": concept(LOINC, "47523-6", "Cytology report of Body fluid Cyto stain"),
            "subject": subject, "effectiveDateTime": "2026-05-20T10:00:00-04:00",
            "result": [{"reference": r} for r in results], "specimen": [{"reference": s} for s in specimens],
            **extra}


def finding(oid, subject=None, value=("http://loinc.org", "LA6576-8", "Positive"), code=None):
    obs = {"resourceType": "Observation", "id": oid, "status": "final",
           "code": code or concept("urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.0", "CYTDX", "Cytology interpretation"),
           "effectiveDateTime": "2026-05-20T10:00:00-04:00", "valueCodeableConcept": concept(*value)}
    if subject:
        obs["subject"] = subject
    return obs


def csf_specimen(sid, subject=None, coding=(V2_0487, "CSF", "Cerebral spinal fluid")):
    specimen = {"resourceType": "Specimen", "id": sid, "type": concept(*coding)}
    if subject:
        specimen["subject"] = subject
    return specimen


def entries(*pairs):
    """A searchset of (fullUrl, resource, mode) entries."""
    return {"resourceType": "Bundle", "type": "searchset",
            "entry": [{"fullUrl": url, "resource": r, "search": {"mode": mode}} for url, r, mode in pairs]}


def ids(data):
    return [r["id"] for r in data.resources]


# -- whose a resource is (prefetch) ------------------------------------------------

def test_subjects_in_every_reference_form():
    query = Search("Observation")
    me = f"{EHR}/Patient/p1"
    urn_me, urn_other = f"urn:uuid:{uuid.uuid4()}", f"urn:uuid:{uuid.uuid4()}"
    bundle = entries(
        (urn_me, {"resourceType": "Patient", "id": "p1"}, "include"),
        (urn_other, {"resourceType": "Patient", "id": "p2"}, "include"),
        (f"urn:uuid:{uuid.uuid4()}", {"resourceType": "Observation", "id": "absolute",
                                       "subject": {"reference": me}}, "match"),
        (f"urn:uuid:{uuid.uuid4()}", {"resourceType": "Observation", "id": "urn-mine",
                                       "subject": {"reference": urn_me}}, "match"),
        (f"urn:uuid:{uuid.uuid4()}", {"resourceType": "Observation", "id": "urn-theirs",
                                       "subject": {"reference": urn_other}}, "match"),
        (f"urn:uuid:{uuid.uuid4()}", {"resourceType": "Observation", "id": "urn-unknown",
                                       "subject": {"reference": f"urn:uuid:{uuid.uuid4()}"}}, "match"),
        (f"urn:uuid:{uuid.uuid4()}", {"resourceType": "Observation", "id": "mrn-only",
                                       "subject": {"identifier": {"system": "urn:mrn", "value": "7"}}}, "match"),
        (f"urn:uuid:{uuid.uuid4()}", {"resourceType": "Observation", "id": "group",
                                       "subject": {"reference": "Group/ward-7"}}, "match"))
    data = gather({"observations": query}, set(), {"observations": bundle}, "p1", None, 0.0).keys["observations"]
    # The patient's own (absolute URL, urn: resolved in the Bundle) and those whose reference cannot be
    # checked (a urn: the Bundle does not hold, an identifier): kept, and the latter counted.
    assert ids(data) == ["p1", "absolute", "urn-mine", "urn-unknown", "mrn-only"]
    assert (data.foreign, data.unresolved) == (3, 2)
    assert data.audit()["unresolved"] == 2
    assert set(data.full_urls) == {urn_me, bundle["entry"][2]["fullUrl"], bundle["entry"][3]["fullUrl"],
                                   bundle["entry"][5]["fullUrl"], bundle["entry"][6]["fullUrl"]}


def test_a_resource_naming_no_patient_is_kept_when_a_kept_one_links_to_it():
    query = Search("DiagnosticReport")
    mine, theirs = {"reference": "Patient/p1"}, {"reference": "Patient/p2"}
    bundle = searchset(
        cytology_report("dr-1", mine, results=[f"{EHR}/Observation/res-1"], specimens=["Specimen/spec-1"]),
        finding("res-1"),  # included, no subject
        csf_specimen("spec-1"),  # included, no subject
        cytology_report("dr-2", theirs, specimens=["Specimen/spec-2"]),
        csf_specimen("spec-2"),  # another patient's report's
        csf_specimen("spec-3"))  # nobody's
    data = gather({"cytologyReports": query}, set(), {"cytologyReports": bundle}, "p1", None, 0.0).keys[
        "cytologyReports"]
    assert ids(data) == ["dr-1", "res-1", "spec-1"]
    assert data.foreign == 3


def test_contained_resources_go_with_their_container():
    query = Search("DiagnosticReport")
    mine = cytology_report("dr-1", {"reference": "Patient/p1"}, results=["#r"], specimens=["#s"],
                           contained=[finding("r"), csf_specimen("s")])
    theirs = copy.deepcopy(mine)
    theirs.update(id="dr-2", subject={"reference": "Patient/p2"})
    data = gather({"cytologyReports": query}, set(), {"cytologyReports": searchset(mine, theirs)}, "p1", None,
                  0.0).keys["cytologyReports"]
    assert ids(data) == ["dr-1"] and data.foreign == 1
    c = evaluate_lm(data.resources)
    assert c.result.value == "pass" and c.evidence[0].reference == "DiagnosticReport/dr-1"
    assert "DiagnosticReport/dr-1#r" in c.evidence[0].note


def evaluate_lm(resources, full_urls=None, trial=None):
    from cds_service.trials import load_trials

    trial = trial or load_trials()["NCT06462092"]
    patient = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1975-04-02"}
    return evaluate(trial, PatientRecord([patient, *resources], full_urls), AS_OF).criterion(
        "leptomeningeal-metastases")


# -- _include on the service's own searches ------------------------------------------

def test_includes_are_asked_by_the_service_but_not_in_prefetch_templates(nct06462092):
    needs = {n.key: n for n in data_needs([nct06462092])}
    reports = needs["cytologyReports"].query
    assert reports.includes == ("DiagnosticReport:result", "DiagnosticReport:specimen")
    assert "_include" not in reports.prefetch_template()
    assert reports.prefetch_template().startswith(f"DiagnosticReport?patient={PATIENT_TOKEN}&code=")
    assert reports.relative_url("p1").endswith(f"&{INCLUDES}")
    assert reports.without_includes().relative_url("p1") == reports.relative_url("p1").removesuffix(
        f"&{INCLUDES}")
    assert all(not n.query.includes for key, n in needs.items() if key not in ("cytologyReports", "patient"))


def test_a_prescription_search_includes_the_medication_it_references(trials):
    # FHIR R4's MedicationRequest?code= reads medicationCodeableConcept only: a prescription coded by
    # reference is found only by fetching the type whole with its Medication (which names no patient).
    from cds_service.fhir.ownership import own_resources

    searches = {n.resource_type: n.query for n in data_needs([trials["NCT01325207"]])}
    for rtype in ("MedicationRequest", "MedicationStatement", "MedicationAdministration"):
        assert searches[rtype].includes == (f"{rtype}:medication",) and searches[rtype].params == (("_count", "100"),)
        assert searches[rtype].relative_url("p1").endswith(f"&_include={rtype}:medication")
        assert "_include" not in searches[rtype].prefetch_template()
    assert not searches["Procedure"].includes
    request = {"resourceType": "MedicationRequest", "id": "rx1", "status": "active", "intent": "order",
               "subject": {"reference": "Patient/p1"}, "medicationReference": {"reference": "Medication/m1"}}
    medication = {"resourceType": "Medication", "id": "m1",
                  "code": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "194000"}]}}
    unrelated = {"resourceType": "Medication", "id": "m2"}
    kept, foreign, _ = own_resources([request, medication, unrelated], "p1")
    assert [r["id"] for r in kept] == ["rx1", "m1"] and foreign == 1


@pytest.mark.parametrize("bad", ["DiagnosticReport", "diagnosticReport:result", "DiagnosticReport:result&x=1",
                                 "*", "DiagnosticReport:result:observation"])
def test_an_include_that_is_not_one_is_refused(bad):
    with pytest.raises(ValueError):
        Search("DiagnosticReport", includes=(bad,))


def authorized(request):
    request = copy.deepcopy(request)
    request["fhirServer"] = EHR
    request["fhirAuthorization"] = {"access_token": TOKEN, "token_type": "Bearer", "expires_in": 300,
                                    "scope": "user/*.read", "subject": "cds-service"}
    return request


def post(client, body):
    return client.post(SERVICE, data=json.dumps(body), content_type="application/json")


def lm_of(response):
    body = response.get_json()
    assert response.status_code == 200, body
    evaluation = body["cards"][0]["extension"]["trial-eligibility"]
    return next(c for c in evaluation["criteria"] if c["id"] == "leptomeningeal-metastases"), evaluation


def without_lm_condition(request):
    conditions = request["prefetch"]["conditions"]
    conditions["entry"] = [e for e in conditions["entry"] if e["resource"]["id"] != "g001-lm-1"]
    return request


def cytology_search(patient="g001"):
    """A server's answer to the cytology search with both _include: the report (match), its
    result under a local code and its specimen without subject (include), absolute fullUrls."""
    mine = {"reference": f"Patient/{patient}"}
    return entries(
        (f"{EHR}/DiagnosticReport/dr-9", cytology_report("dr-9", mine, results=["Observation/res-9"],
                                                         specimens=[f"{EHR}/Specimen/spec-9"]), "match"),
        (f"{EHR}/Observation/res-9", finding("res-9", mine), "include"),
        (f"{EHR}/Specimen/spec-9", csf_specimen("spec-9"), "include"))


@responses.activate
def test_a_fetched_cytology_search_brings_its_results_and_specimen(make_app):
    gather_module._REFUSES_INCLUDES.clear()
    request = authorized(without_lm_condition(demo("eligible")))
    del request["prefetch"]["cytologyReports"], request["prefetch"]["specimens"]
    responses.get(re.compile(re.escape(EHR) + r"/DiagnosticReport\?.*"), json=cytology_search())
    responses.get(re.compile(re.escape(EHR) + r"/Specimen\?.*"), json=searchset())
    lm, evaluation = lm_of(post(make_app().test_client(), request))
    assert evaluation["status"] == "eligible"
    assert lm["result"] == "pass" and lm["evidence"][0]["reference"] == "DiagnosticReport/dr-9"
    asked = [c.request.url for c in responses.calls if "/DiagnosticReport?" in c.request.url]
    assert len(asked) == 1 and asked[0].endswith(INCLUDES)


@responses.activate
def test_a_server_that_refuses_include_is_searched_without_it(make_app):
    gather_module._REFUSES_INCLUDES.clear()
    request = authorized(without_lm_condition(demo("eligible")))
    del request["prefetch"]["cytologyReports"]
    refusal = {"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "processing", "diagnostics": "Invalid _include parameter value"}]}
    report_only = entries(*[(e["fullUrl"], e["resource"], "match") for e in cytology_search()["entry"][:1]])

    def reports(call):
        if "_include" in call.url:
            return 400, {}, json.dumps(refusal)
        return 200, {}, json.dumps(report_only)

    responses.add_callback(responses.GET, re.compile(re.escape(EHR) + r"/DiagnosticReport\?.*"), callback=reports)
    app = make_app(fhir_cache_ttl=0)
    lm, _ = lm_of(post(app.test_client(), request))
    # The report came, without the result it lists: not read, never a fail.
    assert lm["result"] == "unknown" and "not in the record" in lm["evidence"][0]["note"]
    urls = [c.request.url for c in responses.calls]
    assert len(urls) == 2 and "_include" in urls[0] and "_include" not in urls[1]
    audit = app.extensions["trial_eligibility"].store.hook_calls()[-1]["data_sources"]["cytologyReports"]
    assert audit["source"] == "fetched" and audit["requests"] == 2
    # The next call to that server does not ask again.
    responses.calls.reset()
    post(app.test_client(), request)
    assert ["_include" in c.request.url for c in responses.calls] == [False]


@responses.activate
def test_a_result_both_included_and_searched_is_read_once(make_app):
    gather_module._REFUSES_INCLUDES.clear()
    request = authorized(without_lm_condition(demo("eligible")))
    del request["prefetch"]["cytologyReports"]
    search = cytology_search()
    result = copy.deepcopy(search["entry"][1]["resource"])
    result["code"] = concept(LOINC, "47523-6", "Cytology report of Body fluid Cyto stain")  # also a cytology result
    search["entry"][1]["resource"] = result
    request["prefetch"]["observations"]["entry"].append({"fullUrl": f"{EHR}/Observation/res-9",
                                                         "resource": copy.deepcopy(result)})
    request["prefetch"]["specimens"] = searchset(csf_specimen("spec-9", {"reference": "Patient/g001"}))
    search["entry"] = search["entry"][:2]
    responses.get(re.compile(re.escape(EHR) + r"/DiagnosticReport\?.*"), json=search)
    app = make_app()
    lm, _ = lm_of(post(app.test_client(), request))
    assert lm["result"] == "pass"
    assert [e["reference"] for e in lm["evidence"]].count("Observation/res-9") == 1
    audit = app.extensions["trial_eligibility"].store.hook_calls()[-1]["data_sources"]["cytologyReports"]
    assert audit["repeated"] == 1


# -- prefetch shapes through the hook --------------------------------------------------

def test_prefetch_with_urn_uuid_references_between_entries(client):
    request = without_lm_condition(demo("eligible"))
    report_url, result_url, specimen_url = (f"urn:uuid:{uuid.uuid4()}" for _ in range(3))
    mine = {"reference": "Patient/g001"}
    request["prefetch"]["cytologyReports"] = entries(
        (report_url, cytology_report("dr-5", mine, results=[result_url], specimens=[specimen_url]), "match"),
        (result_url, finding("res-5", mine), "include"),
        (specimen_url, csf_specimen("spec-5"), "include"))
    lm, evaluation = lm_of(post(client, request))
    assert evaluation["status"] == "eligible"
    assert lm["result"] == "pass" and lm["evidence"][0]["reference"] == "DiagnosticReport/dr-5"


def test_prefetch_epic_style_report_with_contained_results(make_app, nct06462092):
    request = demo("eligible")
    labs = request["prefetch"]["labResults"]
    anc = next(e for e in labs["entry"] if e["resource"]["id"] == "g001-anc-1")["resource"]
    newer = {k: v for k, v in copy.deepcopy(anc).items() if k not in ("subject", "effectiveDateTime", "meta")}
    newer.update(id="anc", valueQuantity={**anc["valueQuantity"], "value": 0.9})
    report = {"resourceType": "DiagnosticReport", "id": "dr-cbc", "status": "final",
              "code": concept(LOINC, "58410-2", "CBC panel - Blood by Automated count"),
              "subject": {"reference": f"{EHR}/Patient/g001"}, "effectiveDateTime": "2026-06-12T07:40:00-04:00",
              "contained": [newer], "result": [{"reference": "#anc"}]}
    request["prefetch"]["cytologyReports"] = searchset(report)  # an EHR ignoring the code filter
    app = make_app()
    body = post(app.test_client(), request).get_json()
    assert body["cards"] == []  # ineligible (the newer ANC is low): no card by default
    trials = app.extensions["trial_eligibility"].store.hook_calls()[-1]["trials"]
    assert trials[0]["status"] == "ineligible"
    # The same prefetch through the engine: the contained ANC decides, named by its report.
    resources = [request["prefetch"]["patient"]] + [e["resource"] for key, v in request["prefetch"].items()
                                                   if key != "patient" for e in v["entry"]]
    c = evaluate(nct06462092, PatientRecord(resources), AS_OF).criterion("neutrophils")
    assert c.result.value == "fail" and c.evidence[0].reference == "DiagnosticReport/dr-cbc#anc"


# -- files ---------------------------------------------------------------------------

def two_patient_file(report_refs_specimen_of="a") -> bytes:
    def patient(pid):
        return {"fullUrl": f"urn:uuid:{pid}0000000-0000-4000-8000-000000000000",
                "resource": {"resourceType": "Patient", "id": pid, "gender": "female", "birthDate": "1975-04-02"}}

    a, b = patient("a"), patient("b")
    spec_url = "urn:uuid:5bec0000-0000-4000-8000-000000000000"
    report = cytology_report("dr-a", {"reference": a["fullUrl"]}, results=["#r"], specimens=[spec_url],
                             contained=[finding("r")])
    other = cytology_report("dr-b", {"reference": "https://ehr.example.org/fhir/Patient/b/_history/4"},
                            specimens=[spec_url] if report_refs_specimen_of == "both" else [])
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
        a, b, {"fullUrl": "urn:uuid:d0000000-0000-4000-8000-00000000000a", "resource": report},
        {"fullUrl": "urn:uuid:d0000000-0000-4000-8000-00000000000b", "resource": other},
        {"fullUrl": spec_url, "resource": csf_specimen("spec")}]}
    return json.dumps(bundle).encode()


def test_a_file_gives_a_specimen_without_subject_to_the_patient_whose_report_links_it():
    groups = {g.patient_key: g for g in patient_groups_from_bytes(two_patient_file())}
    a, b = groups["Patient/a"], groups["Patient/b"]
    assert [r["id"] for r in a.resources] == ["a", "dr-a", "spec"]
    assert [r["id"] for r in b.resources] == ["b", "dr-b"]
    c = evaluate_lm([r for r in a.resources if r["resourceType"] != "Patient"], a.full_urls)
    assert c.result.value == "pass" and c.evidence[0].reference == "DiagnosticReport/dr-a"


def test_a_file_does_not_guess_between_two_patients_linking_one_specimen():
    grouping = read_patient_file(two_patient_file("both"))
    assert all("spec" not in [r["id"] for r in g.resources] for g in grouping.groups)
    assert sum(grouping.skipped.values()) == 1


@pytest.mark.parametrize("value, said", [
    ({"resourceType": "Observation", "id": "x"}, "prefetch holds an Observation, not a search Bundle"),
    ({"resourceType": "Ada Testpatient 1978-03-22"}, "prefetch holds a resource of another type, not a search Bundle"),
])
def test_a_prefetch_of_the_wrong_type_is_named_in_the_services_words_only(value, said):
    # The audit keeps why a prefetch key was not used; text the EHR put in resourceType is not repeated.
    resources, foreign, why = usable_resources(value, Search("Condition", {}), "p1")
    assert resources is None and why == said
