"""The CDS Hooks service over HTTP: discovery, the patient-view call with every
prefetch case, the FHIR fallback, 4xx/412 errors, cards, audit."""

import copy
import json
import re
import uuid

import pytest
import responses

from cds_service.cards import find_empty_values
from conftest import EHR
from hookdata import SPEC_EXAMPLE, demo, searchset, without

TOKEN = "tok-3f9a1c-never-log-me"
SERVICE = "/cds-services/trial-eligibility"
ALLOWED_TOKENS = {"context.patientId", "context.userId", "context.encounterId", "userPractitionerId",
                  "userPractitionerRoleId", "userPatientId", "userRelatedPersonId"}


def authorized(request: dict, token: str = TOKEN) -> dict:
    request = copy.deepcopy(request)
    request["fhirServer"] = EHR
    request["fhirAuthorization"] = {"access_token": token, "token_type": "Bearer", "expires_in": 300,
                                    "scope": "user/Patient.read user/Observation.read user/Condition.read "
                                             "user/AllergyIntolerance.read", "subject": "cds-service"}
    return request


def post(client, body, path=SERVICE):
    return client.post(path, data=json.dumps(body), content_type="application/json")


def card_of(response):
    body = response.get_json()
    assert response.status_code == 200, body
    assert len(body["cards"]) == 1, body
    return body["cards"][0]


def trial_result(card, criterion):
    evaluation = card["extension"]["trial-eligibility"]
    return next(c for c in evaluation["criteria"] if c["id"] == criterion)


# -- discovery ----------------------------------------------------------------

def test_discovery_describes_one_patient_view_service(client):
    response = client.get("/cds-services")
    assert response.status_code == 200 and response.mimetype == "application/json"
    services = response.get_json()["services"]
    assert len(services) == 1
    service = services[0]
    assert (service["hook"], service["id"]) == ("patient-view", "trial-eligibility")
    assert service["title"] and "NCT06462092" in service["description"] and service["usageRequirements"]
    prefetch = service["prefetch"]
    assert prefetch["patient"] == "Patient/{{context.patientId}}"
    assert set(prefetch) == {"patient", "conditions", "labResults", "observations", "allergies",
                             "cytologyReports", "specimens"}
    for template in prefetch.values():
        tokens = set(re.findall(r"\{\{(.*?)\}\}", template))
        assert tokens <= ALLOWED_TOKENS, template
        if "?" in template:
            params = [p.split("=")[0] for p in template.split("?", 1)[1].split("&")]
            assert set(params) <= {"patient", "code", "type", "_sort", "_count"}, template
            assert "_count=" in template
    # Lab histories in a query of their own, newest first: a cut there cannot reach the rare tests.
    labs, observations = prefetch["labResults"], prefetch["observations"]
    for template in (labs, observations):
        assert template.startswith("Observation?patient={{context.patientId}}&code=") and "_sort=-date" in template
        assert "51981-9" not in template  # serum HER2 is not read
    assert "http://loinc.org|751-8" in labs and "http://loinc.org|751-8" not in observations
    assert "http://loinc.org|85319-2" in observations and "http://loinc.org|85319-2" not in labs
    assert find_empty_values(response.get_json()) == []


# -- the call: prefetch cases -------------------------------------------------

@responses.activate(assert_all_requests_are_fired=True)
def test_full_prefetch_answers_without_calling_the_fhir_server(client):
    card = card_of(post(client, authorized(demo("eligible"))))
    assert card["indicator"] == "info" and "NCT06462092" in card["summary"]
    assert card["extension"]["trial-eligibility"]["status"] == "eligible"
    assert len(responses.calls) == 0


@responses.activate
def test_absent_key_is_fetched_with_the_bearer_token(client):
    request = authorized(without(demo("eligible"), "labResults"))
    stale_anc = {"resourceType": "Observation", "id": "anc-from-server", "status": "final",
                 "code": {"coding": [{"system": "http://loinc.org", "code": "751-8"}]},
                 "subject": {"reference": "Patient/g001"}, "effectiveDateTime": "2026-06-10T08:00:00Z",
                 "valueQuantity": {"value": 0.9, "unit": "10*3/uL", "system": "http://unitsofmeasure.org",
                                   "code": "10*3/uL"}}
    responses.get(re.compile(re.escape(EHR) + r"/Observation\?.*"), json=searchset(stale_anc))
    response = post(client, request)
    assert response.status_code == 200
    assert response.get_json()["cards"] == []  # fetched ANC 0.9 rules the patient out: no card
    assert len(responses.calls) == 1
    call = responses.calls[0].request
    assert call.headers["Authorization"] == f"Bearer {TOKEN}"
    assert call.headers["Accept"] == "application/fhir+json"
    assert "patient=g001" in call.url and "code=" in call.url


@responses.activate(assert_all_requests_are_fired=True)
def test_null_key_means_no_data_and_no_call(client):
    request = authorized(demo("eligible"))
    request["prefetch"]["allergies"] = None
    card = card_of(post(client, request))
    assert trial_result(card, "study-drug-allergy")["result"] == "review"  # no allergy information
    assert len(responses.calls) == 0


@responses.activate(assert_all_requests_are_fired=True)
def test_empty_bundle_means_no_matches(client):
    request = authorized(demo("eligible"))
    request["prefetch"]["labResults"] = searchset()
    card = card_of(post(client, request))
    assert card["extension"]["trial-eligibility"]["status"] == "needs-data"
    assert trial_result(card, "neutrophils")["reasonCode"] == "no-data"
    assert len(responses.calls) == 0


@responses.activate
@pytest.mark.parametrize("bad_value", [
    {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]},
    {"resourceType": "Bundle", "type": "searchset",
     "entry": [{"resource": {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "x"}]},
                "search": {"mode": "outcome"}}]},
    # one that names the patient as its subject is still an error, not a resource of the chart
    {"resourceType": "Bundle", "type": "searchset",
     "entry": [{"resource": {"resourceType": "OperationOutcome", "subject": {"reference": "Patient/g001"},
                             "issue": [{"severity": "error", "code": "x"}]}}]},
    "<html>Tomcat error</html>",
    {"resourceType": "Patient", "id": "g001"},
])
def test_operation_outcome_or_junk_in_prefetch_is_fetched_instead(make_app, bad_value):
    client = make_app().test_client()
    request = authorized(demo("eligible"))
    conditions = request["prefetch"]["conditions"]
    request["prefetch"]["conditions"] = bad_value
    responses.get(re.compile(re.escape(EHR) + r"/Condition\?.*"), json=conditions)
    card = card_of(post(client, request))
    assert card["extension"]["trial-eligibility"]["status"] == "eligible"
    assert len(responses.calls) == 1 and "/Condition?" in responses.calls[0].request.url


@responses.activate
def test_prefetch_bundle_with_a_next_link_is_paged(client):
    request = authorized(demo("eligible"))
    observations = request["prefetch"]["labResults"]
    anc = next(e for e in observations["entry"] if e["resource"]["id"] == "g001-anc-1")
    observations["entry"].remove(anc)
    observations["link"] = [{"relation": "next", "url": f"{EHR}?_getpages=abc&_getpagesoffset=100"}]
    responses.get(re.compile(re.escape(EHR) + r"\?_getpages=abc.*"), json=searchset(anc["resource"]))
    card = card_of(post(client, request))
    assert trial_result(card, "neutrophils")["result"] == "pass"  # decided by the ANC on page 2
    assert len(responses.calls) == 1


@responses.activate(assert_all_requests_are_fired=True)
def test_diagnoses_cut_short_by_the_page_limit_cannot_rule_out_an_exclusion(make_app):
    # The EHR's prefetch of Conditions pages on beyond the service's page limit: an HIV
    # diagnosis may be on a page never read, so "no HIV recorded" is not a pass.
    client = make_app(allowed_fhir_servers=(EHR,), fhir_page_limit=2).test_client()
    request = authorized(demo("eligible"))
    request["prefetch"]["conditions"]["link"] = [{"relation": "next", "url": f"{EHR}?_getpages=c&_getpagesoffset=1"}]
    # The prefetch is the first page, this the second and last allowed; it links to a third.
    responses.get(f"{EHR}?_getpages=c&_getpagesoffset=1",
                  json=searchset(next_url=f"{EHR}?_getpages=c&_getpagesoffset=2"))
    card = card_of(post(client, request))
    evaluation = card["extension"]["trial-eligibility"]
    immunodeficiency = trial_result(card, "immunodeficiency")
    assert immunodeficiency["result"] == "unknown" and immunodeficiency["reasonCode"] == "incomplete-data"
    assert "cut short" in immunodeficiency["reason"] and evaluation["status"] == "needs-data"
    # What was found stays found: the breast cancer diagnosis still counts.
    assert trial_result(card, "breast-cancer")["result"] == "pass"
    # Labs come newest first: a cut in the Observations would not touch them, and none happened here.
    assert trial_result(card, "neutrophils")["result"] == "pass"


@pytest.mark.parametrize("cytology_sent, expected", [(True, "fail"), (False, "unknown")])
def test_an_optional_query_never_obtained_cannot_rule_a_patient_out(make_app, cytology_sent, expected):
    # No leptomeningeal diagnosis, and no CSF cytology sent: with the cytology reports and
    # specimens prefetched (empty), the inclusion fails (no card unless ineligible ones are shown);
    # without them and no FHIR server to ask, "no cytology recorded" is not known.
    request = demo("eligible")
    conditions = request["prefetch"]["conditions"]
    conditions["entry"] = [e for e in conditions["entry"] if e["resource"]["id"] != "g001-lm-1"]
    if not cytology_sent:
        request = without(without(request, "cytologyReports"), "specimens")
    cards = post(make_app().test_client(), request).get_json()["cards"]
    assert [c["extension"]["trial-eligibility"]["status"] for c in cards] == ([] if expected == "fail" else ["needs-data"])
    lm = trial_result(card_of(post(make_app(show_ineligible=True).test_client(), request)), "leptomeningeal-metastases")
    assert lm["result"] == expected
    if expected == "unknown":
        assert lm["reasonCode"] == "incomplete-data" and "DiagnosticReport data was not obtained" in lm["reason"]


def test_a_search_out_of_time_while_paging_gives_a_card_from_the_pages_read(make_app):
    # A long lab history: the service's own labResults search (newest first) still pages when
    # the deadline comes. The newest page decides the labs, the older pages are given up: not
    # a 412. HER2 and hCG come in their own (prefetched, complete) query: the cut cannot touch them.
    import threading
    import time

    app = make_app(allowed_fhir_servers=(EHR,), fhir_deadline=0.6)
    request = without(authorized(demo("eligible")), "labResults")
    page_one = [e["resource"] for e in demo("eligible")["prefetch"]["labResults"]["entry"]]
    older_anc = dict(page_one[0], id="anc-2026-05-20", effectiveDateTime="2026-05-20T08:00:00Z")
    release = threading.Event()

    def page_two(_request):  # held until the test ends (at most 30 s), far past the deadline
        release.wait(30)
        return 200, {}, json.dumps(searchset(older_anc))

    # A mock of this test's own: the given-up request ends after the test, and must not land in another's.
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.get(re.compile(re.escape(EHR) + r"/Observation\?.*"),
                 json=searchset(*page_one, next_url=f"{EHR}?_getpages=o&_getpagesoffset=9"))
        mock.add_callback(responses.GET, f"{EHR}?_getpages=o&_getpagesoffset=9", callback=page_two)
        started = time.monotonic()
        try:
            response = post(app.test_client(), request)
            elapsed = time.monotonic() - started
        finally:
            release.set()
    card = card_of(response)
    assert elapsed < 10  # answered at its 0.6 s deadline, not when page two would arrive
    evaluation = card["extension"]["trial-eligibility"]
    assert evaluation["status"] == "eligible", evaluation
    assert trial_result(card, "neutrophils")["result"] == "pass"
    assert trial_result(card, "her2-negative")["result"] == "pass"  # its query was not cut
    audit = app.extensions["trial_eligibility"].store.hook_calls()[-1]["data_sources"]
    assert (audit["labResults"]["source"], audit["labResults"]["truncated"], audit["labResults"]["cut"],
            audit["labResults"]["resources"]) == ("fetched", True, "deadline", len(page_one))
    assert "truncated" not in audit["observations"]


def test_a_cut_in_the_rare_tests_own_query_cannot_rule_her2_out(make_app):
    # The other side: the observations query (HER2, hCG, CSF cytology) itself cut by the page
    # limit with no HER2 test among the pages read: "no HER2 result" would not be the whole story.
    with responses.RequestsMock() as mock:
        client = make_app(allowed_fhir_servers=(EHR,), fhir_page_limit=1).test_client()
        request = authorized(demo("eligible"))
        rare = request["prefetch"]["observations"]
        rare["entry"] = [e for e in rare["entry"] if not e["resource"]["id"].startswith("g001-her2")]
        rare["link"] = [{"relation": "next", "url": f"{EHR}?_getpages=r&_getpagesoffset=1"}]
        her2 = trial_result(card_of(post(client, request)), "her2-negative")
        assert (her2["result"], her2["reasonCode"]) == ("unknown", "incomplete-data") and "cut short" in her2["reason"]
        assert len(mock.calls) == 0  # the prefetch was the one page allowed


@responses.activate(assert_all_requests_are_fired=True)
def test_a_lab_history_is_not_paged_past_the_look_back(make_app):
    # The EHR's labResults prefetch is the first page of a long history and already reaches
    # an ANC from April: the next pages are older still and cannot decide (28-day look-back).
    app = make_app(allowed_fhir_servers=(EHR,))
    request = authorized(demo("eligible"))
    labs = request["prefetch"]["labResults"]
    anc = next(e["resource"] for e in labs["entry"] if e["resource"]["id"] == "g001-anc-1")
    labs["entry"].append({"resource": dict(anc, id="anc-april", effectiveDateTime="2026-04-01T08:00:00Z",
                                           valueQuantity=dict(anc["valueQuantity"], value=0.3))})
    labs["link"] = [{"relation": "next", "url": f"{EHR}?_getpages=l&_getpagesoffset=7"}]
    card = card_of(post(app.test_client(), request))
    assert card["extension"]["trial-eligibility"]["status"] == "eligible"
    assert len(responses.calls) == 0, [c.request.url for c in responses.calls]
    audit = app.extensions["trial_eligibility"].store.hook_calls()[-1]["data_sources"]["labResults"]
    assert (audit["source"], audit["truncated"], audit["cut"]) == ("prefetch", True, "look-back")


@responses.activate
def test_the_service_fetches_a_lab_history_only_back_to_the_look_back(make_app):
    app = make_app(allowed_fhir_servers=(EHR,))
    request = without(authorized(demo("eligible")), "labResults")
    page_one = [e["resource"] for e in demo("eligible")["prefetch"]["labResults"]["entry"]]
    page_one.append(dict(page_one[0], id="anc-2025", effectiveDateTime="2025-11-30T08:00:00Z"))
    responses.get(re.compile(re.escape(EHR) + r"/Observation\?.*"),
                  json=searchset(*page_one, next_url=f"{EHR}?_getpages=l&_getpagesoffset=7"))
    page_two = responses.get(f"{EHR}?_getpages=l&_getpagesoffset=7", json=searchset())
    card = card_of(post(app.test_client(), request))
    assert card["extension"]["trial-eligibility"]["status"] == "eligible"
    assert page_two.call_count == 0 and len(responses.calls) == 1
    audit = app.extensions["trial_eligibility"].store.hook_calls()[-1]["data_sources"]["labResults"]
    assert (audit["source"], audit["cut"], audit["requests"]) == ("fetched", "look-back", 1)


@pytest.mark.parametrize("newer_on_page_two, expected", [(False, ("pass", None)),
                                                           (True, ("unknown", "incomplete-data"))])
@responses.activate(assert_all_requests_are_fired=True)
def test_a_cut_lab_search_is_trusted_only_if_it_came_newest_first(make_app, newer_on_page_two, expected):
    client = make_app(allowed_fhir_servers=(EHR,), fhir_page_limit=2).test_client()
    request = authorized(demo("eligible"))
    observations = request["prefetch"]["labResults"]  # as a server honouring _sort=-date sends it
    observations["link"] = [{"relation": "next", "url": f"{EHR}?_getpages=o&_getpagesoffset=1"}]
    anc = next(e["resource"] for e in observations["entry"] if e["resource"]["id"] == "g001-anc-1")
    other = copy.deepcopy(anc)
    other["id"] = "anc-page-two"
    other["effectiveDateTime"] = "2026-06-14T08:00:00Z" if newer_on_page_two else "2020-01-01T08:00:00Z"
    responses.get(f"{EHR}?_getpages=o&_getpagesoffset=1",
                  json=searchset(other, next_url=f"{EHR}?_getpages=o&_getpagesoffset=2"))
    neutrophils = trial_result(card_of(post(client, request)), "neutrophils")
    assert (neutrophils["result"], neutrophils.get("reasonCode")) == expected


@responses.activate(assert_all_requests_are_fired=True)
def test_next_link_to_another_server_is_refused(client):
    request = authorized(demo("eligible"))
    request["prefetch"]["observations"]["link"] = [{"relation": "next", "url": "https://evil.example.com/fhir?p=2"}]
    response = post(client, request)
    assert response.status_code == 412
    assert "observations" in response.get_json()["issue"][0]["diagnostics"]
    assert len(responses.calls) == 0


@responses.activate(assert_all_requests_are_fired=True)
def test_resources_of_another_patient_are_ignored_and_audited(make_app):
    app = make_app()
    request = demo("eligible")
    foreign_low_anc = {"resourceType": "Observation", "id": "other-anc", "status": "final",
                       "code": {"coding": [{"system": "http://loinc.org", "code": "751-8"}]},
                       "subject": {"reference": "Patient/someone-else"}, "effectiveDateTime": "2026-06-14",
                       "valueQuantity": {"value": 0.2, "unit": "10*3/uL", "system": "http://unitsofmeasure.org",
                                         "code": "10*3/uL"}}
    request["prefetch"]["observations"]["entry"].append({"resource": foreign_low_anc})
    card = card_of(post(app.test_client(), request))
    assert trial_result(card, "neutrophils")["result"] == "pass"
    audit = app.extensions["trial_eligibility"].store.hook_calls()[-1]
    assert audit["data_sources"]["observations"]["foreign"] == 1


@responses.activate(assert_all_requests_are_fired=True)
def test_references_to_the_patient_in_other_spellings_are_kept(make_app):
    """Absolute URLs and versioned references name the same patient (the common
    'Patient/<id>' is checked first, the rest normalised)."""
    app = make_app()
    request = demo("eligible")
    entries = request["prefetch"]["observations"]["entry"]
    for entry, reference in zip(entries, ("https://ehr.example.org/fhir/Patient/{id}",
                                          "Patient/{id}/_history/3", "Patient/{id}/")):
        entry["resource"]["subject"] = {"reference": reference.format(id=request["context"]["patientId"])}
    entries[-1]["resource"]["subject"] = {"reference": "https://ehr.example.org/fhir/Patient/someone-else"}
    response = post(app.test_client(), request)
    assert response.status_code == 200
    audit = app.extensions["trial_eligibility"].store.hook_calls()[-1]
    assert audit["data_sources"]["observations"]["foreign"] == 1
    assert audit["data_sources"]["observations"]["resources"] == len(entries) - 1


@responses.activate
def test_prefetched_patient_of_another_id_is_fetched(client):
    request = authorized(demo("eligible"))
    patient = request["prefetch"]["patient"]
    request["prefetch"]["patient"] = dict(patient, id="someone-else")
    responses.get(f"{EHR}/Patient/g001", json=patient)
    card = card_of(post(client, request))
    assert card["extension"]["trial-eligibility"]["patient"] == "g001"
    assert len(responses.calls) == 1


# -- 412 -------------------------------------------------------------------

def test_no_prefetch_and_no_fhir_server_is_412_naming_what_is_missing(client):
    request = demo("eligible")
    del request["prefetch"]
    response = post(client, request)
    assert response.status_code == 412 and response.mimetype == "application/fhir+json"
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome"
    missing = {issue["expression"][0] for issue in body["issue"]}
    assert missing == {"prefetch.patient", "prefetch.conditions", "prefetch.labResults", "prefetch.observations",
                       "prefetch.allergies"}


@responses.activate(assert_all_requests_are_fired=True)
def test_fhir_server_not_on_the_allowlist_is_never_called(make_app):
    client = make_app(allowed_fhir_servers=()).test_client()
    response = post(client, authorized(without(demo("eligible"), "observations")))
    assert response.status_code == 412
    assert "allowlist" in response.get_json()["issue"][0]["diagnostics"]
    assert len(responses.calls) == 0


@responses.activate
@pytest.mark.parametrize("status", [401, 403])
def test_fhir_access_refused_is_412(client, status):
    responses.get(re.compile(re.escape(EHR) + r"/Observation\?.*"), status=status,
                  json={"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "security"}]})
    response = post(client, authorized(without(demo("eligible"), "observations")))
    assert response.status_code == 412
    assert TOKEN not in response.get_data(as_text=True)


@responses.activate
def test_hapi_operation_outcome_error_becomes_412(client):
    responses.get(re.compile(re.escape(EHR) + r"/Condition\?.*"), status=400,
                  json={"resourceType": "OperationOutcome", "issue": [
                      {"severity": "error", "code": "processing",
                       "diagnostics": "HAPI-0524: Unknown search parameter"}]})
    response = post(client, authorized(without(demo("eligible"), "conditions")))
    assert response.status_code == 412
    # Told by its status and error class, in the service's words: never the server's text (issue 14).
    diagnostics = response.get_json()["issue"][0]["diagnostics"]
    assert "conditions" in diagnostics and "fhir-400" in diagnostics and "HAPI-0524" not in diagnostics


def test_slow_fhir_server_gives_412_within_the_deadline(make_app):
    import threading
    import time

    client = make_app(fhir_deadline=0.3).test_client()
    released, answered = threading.Event(), threading.Event()

    def slow(request):  # holds the answer until the test ends (at most 30 s), far past the deadline
        released.wait(30)
        answered.set()
        return 200, {}, json.dumps(searchset())

    # A mock of its own, left only once the held call has ended: the call must not land in another test's.
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_callback(responses.GET, re.compile(re.escape(EHR) + r"/Observation\?.*"), callback=slow)
        started = time.monotonic()
        try:
            response = post(client, authorized(without(demo("eligible"), "observations")))
            elapsed = time.monotonic() - started
        finally:
            released.set()
            answered.wait(5)
    assert response.status_code == 412
    assert elapsed < 10  # answered at its deadline, not when the server would have answered


@responses.activate
def test_fetch_path_queries_run_in_parallel_and_page(client):
    request = authorized(demo("eligible"))
    prefetch = request.pop("prefetch")
    labs = [e["resource"] for e in prefetch["labResults"]["entry"]]

    def observations(call):  # the two Observation queries: lab history (paged), other tests
        if "751-8" in call.url:
            return 200, {}, json.dumps(searchset(*labs[:3], next_url=f"{EHR}?_getpages=x1"))
        return 200, {}, json.dumps(prefetch["observations"])

    responses.get(f"{EHR}/Patient/g001", json=prefetch["patient"])
    responses.get(re.compile(re.escape(EHR) + r"/Condition\?.*"), json=prefetch["conditions"])
    responses.get(re.compile(re.escape(EHR) + r"/AllergyIntolerance\?.*"), json=prefetch["allergies"])
    responses.add_callback(responses.GET, re.compile(re.escape(EHR) + r"/Observation\?.*"), callback=observations)
    responses.get(f"{EHR}?_getpages=x1", json=searchset(*labs[3:]))
    card = card_of(post(client, request))
    assert card["extension"]["trial-eligibility"]["status"] == "eligible"
    # the optional DiagnosticReport / Specimen keys are not fetched: the token's scope does not cover them
    assert len(responses.calls) == 6


@responses.activate(assert_all_requests_are_fired=True)
def test_a_scope_that_cannot_read_what_is_missing_gives_412_without_a_call(client):
    request = authorized(without(demo("eligible"), "observations"))
    request["fhirAuthorization"]["scope"] = "user/Patient.read user/Condition.read"
    response = post(client, request)
    assert response.status_code == 412
    assert "scope does not allow reading Observation" in response.get_json()["issue"][0]["diagnostics"]
    assert len(responses.calls) == 0


@responses.activate
@pytest.mark.parametrize("granted", [False, True])
def test_the_second_trials_resource_types_are_fetched_only_as_the_token_allows(make_app, granted):
    # NCT01325207 reads Procedures and medications (optional keys). Absent from prefetch, they are
    # fetched if the token's scopes allow it; if not, nothing is concluded from their absence.
    client = make_app(trials=("NCT06462092", "NCT01325207")).test_client()
    request = authorized(without(demo("her2-positive-eligible"), "procedures", "medicationRequests"))
    if granted:
        request["fhirAuthorization"]["scope"] += " user/Procedure.read user/MedicationRequest.read"
        responses.get(re.compile(re.escape(EHR) + r"/(Procedure|MedicationRequest)\?.*"), json=searchset())
    card = card_of(post(client, request))
    assert card["extension"]["trial-eligibility"]["trial"] == "NCT01325207"
    radiotherapy, drugs = (trial_result(card, c) for c in ("radiotherapy-recency", "cns-chemotherapy"))
    if granted:
        assert sorted(call.request.url.split("?")[0].rsplit("/", 1)[1] for call in responses.calls) == [
            "MedicationRequest", "Procedure"]
        assert "_include=MedicationRequest:medication" in next(
            c.request.url for c in responses.calls if "MedicationRequest" in c.request.url)
        assert radiotherapy["result"] == drugs["result"] == "pass"
        assert card["extension"]["trial-eligibility"]["status"] == "eligible"
    else:
        assert len(responses.calls) == 0
        for result in (radiotherapy, drugs):
            assert result["result"] == "unknown" and result["reasonCode"] == "incomplete-data"
            assert "data was not obtained" in result["reason"]
        assert card["extension"]["trial-eligibility"]["status"] == "needs-data"


@responses.activate
def test_smart_v2_wildcard_scope_allows_the_fetch(client):
    request = authorized(without(demo("eligible"), "observations"))
    observations = demo("eligible")["prefetch"]["observations"]
    request["fhirAuthorization"]["scope"] = "patient/*.rs"
    responses.get(re.compile(re.escape(EHR) + r"/Observation\?.*"), json=observations)
    assert card_of(post(client, request))["extension"]["trial-eligibility"]["status"] == "eligible"


@responses.activate
def test_patient_unknown_to_the_fhir_server_is_412(client):
    responses.get(f"{EHR}/Patient/g001", status=404,
                  json={"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-found"}]})
    response = post(client, authorized(without(demo("eligible"), "patient")))
    assert response.status_code == 412
    assert "not found on the FHIR server" in response.get_json()["issue"][0]["diagnostics"]


# -- bad requests ------------------------------------------------------------

def _broken(mutate):
    request = demo("eligible")
    mutate(request)
    return request


@pytest.mark.parametrize("mutate, field", [
    (lambda r: r.pop("hook"), "hook"),
    (lambda r: r.pop("hookInstance"), "hookInstance"),
    (lambda r: r.update(hookInstance="not-a-uuid"), "hookInstance"),
    (lambda r: r.pop("context"), "context"),
    (lambda r: r["context"].pop("patientId"), "context.patientId"),
    (lambda r: r["context"].update(userId="Dr. House"), "context.userId"),
    (lambda r: r["context"].update(userId="Practitioner/demo\n"), "context.userId"),  # was echoed into cards
    (lambda r: r["context"].update(patientId="a b/c"), "context.patientId"),
    (lambda r: r.update(fhirAuthorization={"access_token": "x", "token_type": "Bearer", "expires_in": 1,
                                           "scope": "s", "subject": "c"}), "fhirAuthorization"),
    (lambda r: r.update(prefetch=["not", "an", "object"]), "prefetch"),
])
def test_invalid_requests_are_400_with_an_operation_outcome(client, mutate, field):
    response = post(client, _broken(mutate))
    assert response.status_code == 400 and response.mimetype == "application/fhir+json"
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome"
    text = json.dumps(body)
    assert field.split(".")[0] in text


def test_an_invalid_hook_instance_is_not_logged(client, no_secrets_in_logs):
    response = post(client, demo("eligible", hookInstance="Mei Lin MRN-700001"))
    assert response.status_code == 400
    event = json.loads(no_secrets_in_logs.lines[-1])
    assert event["event"] == "hook" and event["status"] == 400 and "hookInstance" not in event


def test_the_hook_must_be_patient_view(client):
    response = post(client, demo("eligible", hook="order-sign"))
    assert response.status_code == 400 and "patient-view" in response.get_json()["issue"][0]["diagnostics"]


def test_fhir_authorization_patient_must_match_context(client):
    request = authorized(demo("eligible"))
    request["fhirAuthorization"]["patient"] = "another"
    assert post(client, request).status_code == 400


def test_token_never_echoed_in_errors(client):
    request = authorized(demo("eligible"))
    request["fhirAuthorization"]["token_type"] = "MAC"
    response = post(client, request)
    assert response.status_code == 400 and TOKEN not in response.get_data(as_text=True)


def test_http_level_errors(client):
    assert client.post(SERVICE, data="{not json", content_type="application/json").status_code == 400
    response = client.post(SERVICE, data="hook=patient-view", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415 and response.get_json()["resourceType"] == "OperationOutcome"
    response = post(client, demo("eligible"), path="/cds-services/no-such-service")
    assert response.status_code == 404 and response.get_json()["resourceType"] == "OperationOutcome"
    response = client.get(SERVICE)
    assert response.status_code == 405 and "POST" in response.headers["Allow"]
    assert response.get_json()["resourceType"] == "OperationOutcome"
    assert client.get("/nowhere").status_code == 404


class _Trickle:
    """A WSGI input that returns at most `step` bytes per read (as sockets may),
    optionally ending before the declared length (a client that went away)."""

    def __init__(self, data: bytes, step: int, stop_at: int | None = None):
        self.data, self.step, self.pos = data, step, 0
        self.end = len(data) if stop_at is None else stop_at

    def read(self, size: int = -1) -> bytes:
        size = self.end - self.pos if size is None or size < 0 else size
        piece = self.data[self.pos:min(self.end, self.pos + min(size, self.step))]
        self.pos += len(piece)
        return piece


def test_body_arriving_in_short_reads_is_read_whole(client):
    body = json.dumps(demo("eligible")).encode()
    response = client.post(SERVICE, content_type="application/json", environ_overrides={
        "wsgi.input": _Trickle(body, 1000), "CONTENT_LENGTH": str(len(body))})
    assert card_of(response)["extension"]["trial-eligibility"]["status"] == "eligible"


def test_body_ending_before_its_content_length_is_400(client):
    body = json.dumps(demo("eligible")).encode()
    response = client.post(SERVICE, content_type="application/json", environ_overrides={
        "wsgi.input": _Trickle(body, 1000, stop_at=len(body) // 2), "CONTENT_LENGTH": str(len(body))})
    assert response.status_code == 400 and response.get_json()["resourceType"] == "OperationOutcome"


def test_request_size_limit_is_413(make_app):
    client = make_app(max_request_bytes=2048).test_client()
    response = post(client, demo("eligible"))
    assert response.status_code == 413 and response.get_json()["resourceType"] == "OperationOutcome"


@responses.activate(assert_all_requests_are_fired=True)
def test_extensions_and_unknown_fields_are_tolerated(client):
    request = demo("eligible", extension={"com.example.ehr": {"tenant": "a", "flags": [1, 2]}},
                   somethingNew={"x": 1})
    request["context"]["extension"] = {"org.example": True}
    assert post(client, request).status_code == 200


@responses.activate(assert_all_requests_are_fired=True)
def test_the_specs_own_example_request_is_accepted(make_app):
    client = make_app(allowed_fhir_servers=("http://hooks.smarthealthit.org:9080",)).test_client()
    # Valid as sent; its token may read only Patient and Observation, and the service also
    # needs Conditions and allergies: 412 naming them, without a single call to the EHR.
    response = post(client, SPEC_EXAMPLE)
    assert response.status_code == 412
    diagnostics = " ".join(i["diagnostics"] for i in response.get_json()["issue"])
    assert "Condition" in diagnostics and "AllergyIntolerance" in diagnostics
    assert len(responses.calls) == 0


@responses.activate
def test_the_specs_own_example_request_with_a_broader_scope(make_app):
    client = make_app(allowed_fhir_servers=("http://hooks.smarthealthit.org:9080",)).test_client()
    request = copy.deepcopy(SPEC_EXAMPLE)
    request["fhirAuthorization"]["scope"] = "user/*.read"
    base = "http://hooks.smarthealthit.org:9080"
    responses.get(f"{base}/Patient/1288992", json=SPEC_EXAMPLE["prefetch"]["patientToGreet"])
    for rtype in ("Condition", "Observation", "AllergyIntolerance", "DiagnosticReport", "Specimen"):
        responses.get(re.compile(re.escape(base) + rf"/{rtype}\?.*"), json=searchset())
    response = post(client, request)
    assert response.status_code == 200
    assert response.get_json() == {"cards": []}  # a 100-year-old man without breast cancer: no card
    assert all(c.request.headers["Authorization"] == "Bearer some-opaque-fhir-access-token"
               for c in responses.calls)


# -- cards in the response -------------------------------------------------------

@pytest.mark.parametrize("name, status", [("eligible", "eligible"), ("her2-equivocal", "needs-data"),
                                          ("stale-anc", "needs-data")])
def test_card_invariants(client, name, status):
    card = card_of(post(client, demo(name)))
    assert card["extension"]["trial-eligibility"]["status"] == status
    assert len(card["summary"]) < 140
    assert card["indicator"] in ("info", "warning", "critical")
    assert card["source"]["label"] and card["source"]["topic"]["code"] == "NCT06462092"
    assert card["suggestions"] and card["selectionBehavior"] in ("at-most-one", "any")
    uuids = [card["uuid"]] + [s["uuid"] for s in card["suggestions"]]
    assert len(set(uuids)) == len(uuids) and all(uuid.UUID(u) for u in uuids)
    assert all(r["display"] and r["code"] and r["system"] for r in card["overrideReasons"])
    assert all(link["type"] == "absolute" for link in card["links"])
    assert find_empty_values(card) == []


def test_ineligible_patient_gets_no_card_unless_configured(make_app):
    assert post(make_app().test_client(), demo("her2-positive")).get_json() == {"cards": []}
    card = card_of(post(make_app(show_ineligible=True).test_client(), demo("her2-positive")))
    assert card["extension"]["trial-eligibility"]["status"] == "ineligible"


def test_needs_data_card_suggests_the_missing_test(client):
    card = card_of(post(client, demo("stale-anc")))
    orders = [a["resource"] for s in card["suggestions"] for a in s.get("actions", [])
              if a["resource"]["code"]["coding"][0]["system"] == "http://loinc.org"]
    assert orders and orders[0]["code"]["coding"][0]["code"] == "57021-8"
    assert orders[0]["status"] == "draft" and orders[0]["subject"] == {"reference": "Patient/g066"}


@pytest.mark.parametrize("code, criterion, field, value", [
    ("1975-2", "bilirubin", "value", "1e999999999999"),  # needed a terabyte to format: 500 (MemoryError)
    ("1975-2", "bilirubin", "value", 1e308),  # the ratio to ULN could not be rounded: 500 (InvalidOperation)
    ("1742-6", "transaminases", "code", "10*400/L"),  # the unit factor underflowed to 0: 500 (DivisionByZero)
])
def test_absurd_lab_values_and_units_give_a_card_not_a_500(client, code, criterion, field, value):
    # found by tests/test_fuzz.py: malformed FHIR in prefetch must never break the service
    request = demo("eligible")
    lab = next(e["resource"] for e in request["prefetch"]["labResults"]["entry"]
               if e["resource"]["code"]["coding"][0]["code"] == code)
    lab["valueQuantity"][field] = value
    card = card_of(post(client, request))
    assert trial_result(card, criterion)["result"] == "unknown"
    assert len(card["summary"]) < 140 and find_empty_values(card) == []


# -- audit and operations ----------------------------------------------------------

@responses.activate
def test_audit_records_sources_statuses_and_no_phi(make_app, tmp_path, caplog):
    app = make_app()
    request = authorized(without(demo("eligible"), "allergies"))
    responses.get(re.compile(re.escape(EHR) + r"/AllergyIntolerance\?.*"),
                  json=request["prefetch"].get("allergies") or searchset())
    with caplog.at_level("INFO", logger="cds_service"):
        card = card_of(post(app.test_client(), request))
    row = app.extensions["trial_eligibility"].store.hook_calls()[-1]
    assert row["hook_instance"] == request["hookInstance"] and row["status_code"] == 200
    assert row["data_sources"]["observations"]["source"] == "prefetch"
    assert row["data_sources"]["allergies"]["source"] == "fetched"
    assert row["trials"] == [{"trial": "NCT06462092", "definitionVersion": "1.2.0", "status": "eligible",
                              "card": card["uuid"], "suggestions": [s["uuid"] for s in card["suggestions"]]}]
    timings = row["timings"]
    assert set(timings) >= {"read", "parse", "gather", "evaluate", "render", "total"}
    assert timings["parse"] > 0 and timings["read"] >= 0
    assert timings["total"] >= sum(timings[k] for k in ("read", "parse", "gather", "evaluate", "render"))
    logged = caplog.text
    assert request["hookInstance"] in logged
    database = (tmp_path / "cds.sqlite3").read_bytes() + b"".join(
        p.read_bytes() for p in tmp_path.glob("cds.sqlite3-*"))
    for secret in (TOKEN, "1978-03-22", "g001"):
        assert secret not in logged
        assert secret.encode() not in database


def test_health_and_readiness(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz").get_json()
    assert ready["status"] == "ready" and ready["trials"] == {"NCT06462092": "1.2.0"}


def test_cors_preflight_for_allowed_origins_only(make_app):
    client = make_app(cors_origins=("https://sandbox.cds-hooks.org",)).test_client()
    preflight = client.options(SERVICE, headers={"Origin": "https://sandbox.cds-hooks.org",
                                                 "Access-Control-Request-Method": "POST",
                                                 "Access-Control-Request-Headers": "Authorization, Content-Type"})
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://sandbox.cds-hooks.org"
    allowed = preflight.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed
    other = client.options(SERVICE, headers={"Origin": "https://evil.example.com",
                                             "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in other.headers
    assert "Access-Control-Allow-Origin" not in make_app().test_client().get(
        "/cds-services", headers={"Origin": "https://sandbox.cds-hooks.org"}).headers


def test_gather_keeps_only_this_patients_resources_in_a_prefetch_bundle():
    from cds_service.fhir.gather import gather
    from cds_service.fhir.queries import Search

    query = Search("Observation")
    own = {"resourceType": "Observation", "id": "a", "subject": {"reference": "Patient/p1"}}
    versioned = {"resourceType": "Observation", "id": "b", "subject": {"reference": "Patient/p1/_history/2"}}
    by_patient_field = {"resourceType": "AllergyIntolerance", "id": "c", "patient": {"reference": "Patient/p1"}}
    other = {"resourceType": "Observation", "id": "d", "subject": {"reference": "Patient/p2"}}
    # a Patient is this patient by its id, whatever else it carries
    impostor = {"resourceType": "Patient", "id": "p2", "subject": {"reference": "Patient/p1"}}
    nameless = {"resourceType": "Observation", "id": "e"}
    # shapes that are no resource at all, though they name the patient: neither kept nor counted
    untyped = {"resourceType": ["Observation"], "id": "f", "subject": {"reference": "Patient/p1"}}
    typeless = {"id": "g", "subject": {"reference": "Patient/p1"}}
    bundle = searchset(own, versioned, by_patient_field, other, impostor, nameless, untyped, typeless)
    bundle["entry"] += [["not", "an", "entry"], {"resource": [own]}, {"resource": {"subject": [own]}}]
    gathered = gather({"observations": query}, set(), {"observations": bundle}, "p1", None, 0.0)
    data = gathered.keys["observations"]
    assert [r["id"] for r in data.resources] == ["a", "b", "c"]
    assert data.foreign == 3 and data.source == "prefetch"


def test_a_blank_next_link_is_no_next_page():
    # As the FHIR client reads a search's pages (answers.link_url): no URL, no more pages.
    from cds_service.fhir.gather import gather
    from cds_service.fhir.queries import Search

    own = {"resourceType": "Observation", "id": "a", "subject": {"reference": "Patient/p1"}}
    bundle = searchset(own)
    bundle["link"] = [{"relation": "next", "url": "  "}]
    data = gather({"observations": Search("Observation")}, {"observations"}, {"observations": bundle}, "p1", None,
                  0.0).keys["observations"]
    assert data.source == "prefetch" and [r["id"] for r in data.resources] == ["a"] and not data.truncated


def test_gather_reads_the_subject_of_any_type_a_kind_adds():
    from cds_service.fhir.gather import gather
    from cds_service.fhir.queries import Search

    def resource(rtype, rid, patient):
        return {"resourceType": rtype, "id": rid, "subject": {"reference": f"Patient/{patient}"}}

    bundle = searchset(resource("Procedure", "a", "p1"), resource("Procedure", "b", "p2"),
                       resource("MedicationRequest", "c", "p1"), resource("OperationOutcome", "d", "p1"))
    gathered = gather({"procedures": Search("Procedure")}, set(), {"procedures": bundle}, "p1", None, 0.0)
    assert gathered.keys["procedures"].source == "missing"  # an OperationOutcome: the prefetch is not used
    del bundle["entry"][-1]
    data = gather({"procedures": Search("Procedure")}, set(), {"procedures": bundle}, "p1", None, 0.0).keys["procedures"]
    assert [r["id"] for r in data.resources] == ["a", "c"] and data.foreign == 1


def test_gather_keeps_a_resource_two_queries_of_its_type_returned_once():
    from cds_service.fhir.gather import gather
    from cds_service.fhir.queries import Search

    def obs(rid, **more):
        return {"resourceType": "Observation", "id": rid, "subject": {"reference": "Patient/p1"}, **more}

    needs = {"labResults": Search("Observation", (("code", "x"),)), "observations": Search("Observation"),
             "specimens": Search("Specimen")}
    odd = [obs(["not", "an", "id"]), {k: v for k, v in obs("z").items() if k != "id"}]  # never matched
    labs = [obs("a"), obs("b"), obs("c"), obs("d"), *odd]  # the larger key keeps its copies
    rest = [obs("c"), obs("h"), obs("a"), obs("h"), *odd]
    specimen = {"resourceType": "Specimen", "id": "a", "subject": {"reference": "Patient/p1"}}  # another type
    gathered = gather(needs, set(), {"labResults": searchset(*labs), "observations": searchset(*rest),
                                     "specimens": searchset(specimen)}, "p1", None, 0.0)
    assert [r.get("id") for r in gathered.keys["labResults"].resources] == ["a", "b", "c", "d", ["not", "an", "id"],
                                                                              None]
    assert [r.get("id") for r in gathered.keys["observations"].resources] == ["h", ["not", "an", "id"], None]
    assert gathered.keys["observations"].audit()["repeated"] == 3
    assert [r["id"] for r in gathered.keys["specimens"].resources] == ["a"]
    assert "repeated" not in gathered.keys["labResults"].audit()


@responses.activate(assert_all_requests_are_fired=True)
def test_an_ehr_ignoring_the_code_filter_gets_each_result_once_on_the_card(make_app):
    # Both Observation keys hold every Observation: the card lists each result once.
    app = make_app()
    request = demo("eligible")
    everything = request["prefetch"]["labResults"]["entry"] + request["prefetch"]["observations"]["entry"]
    request["prefetch"]["labResults"]["entry"] = copy.deepcopy(everything)
    request["prefetch"]["observations"]["entry"] = copy.deepcopy(everything)
    card = card_of(post(app.test_client(), request))
    transaminases = trial_result(card, "transaminases")
    assert [e["reference"] for e in transaminases["evidence"]] == ["Observation/g001-alt-1", "Observation/g001-ast-1"]
    assert card["detail"].count("Observation/g001-anc-1") == 1
    audit = app.extensions["trial_eligibility"].store.hook_calls()[-1]["data_sources"]
    assert audit["observations"]["repeated"] == len(everything) and audit["observations"]["resources"] == 0


def test_the_service_evaluates_the_enrolling_trials_unless_trials_are_named(make_app):
    # NCT01325207 is Completed: by default not evaluated (no card for the patient it suits); named, it is.
    request = demo("her2-positive-eligible")
    default = post(make_app().test_client(), request).get_json()["cards"]
    named = post(make_app(trials=("NCT06462092", "NCT01325207")).test_client(), request).get_json()["cards"]
    assert default == []  # NCT06462092: HER2-positive, ineligible
    assert [c["extension"]["trial-eligibility"]["trial"] for c in named] == ["NCT01325207"]
