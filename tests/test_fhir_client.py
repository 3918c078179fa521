"""FHIR client: allowlist, headers, paging, retries, status mapping, deadline,
cache, token hygiene; and the query objects' templates and URLs. No network:
every HTTP call goes to a `responses` mock."""

import json
import logging
import threading
import time

import pytest
import requests
import responses

from cds_service.fhir.client import FhirClient
from cds_service.fhir.errors import FhirAccessDenied, FhirBadResponse, FhirNotAllowed, FhirOutOfTime, FhirUnavailable
from cds_service.fhir.queries import PATIENT_TOKEN, Read, Search
from cds_service.fhir.results import DEADLINE, LOOK_BACK, PAGE_LIMIT, FetchResult

BASE = "https://ehr.example.org/fhir"
TOKEN = "tok-SECRET-9f8e7d"
PATIENT = "pat-7731"
OBS = Search("Observation", (("code", "http://loinc.org|751-8"), ("_count", "2")))
OBS_URL = f"{BASE}/Observation?patient={PATIENT}&code=http://loinc.org|751-8&_count=2"
COND = Search("Condition")
COND_URL = f"{BASE}/Condition?patient={PATIENT}"
PATIENT_URL = f"{BASE}/Patient/{PATIENT}"


def soon(seconds: float = 5.0) -> float:
    return time.monotonic() + seconds


def observation(n: int) -> dict:
    return {"resourceType": "Observation", "id": f"o{n}", "subject": {"reference": f"Patient/{PATIENT}"}}


def bundle(*resources: dict, next_url: str | None = None, self_url: str | None = None) -> dict:
    links = [{"relation": r, "url": u} for r, u in (("self", self_url), ("next", next_url)) if u]
    return {"resourceType": "Bundle", "type": "searchset", "link": links,
            "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources]}


def outcome(diagnostics: str) -> dict:
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "processing", "diagnostics": diagnostics}]}


def ids(result: FetchResult) -> list[str]:
    return [r["id"] for r in result.resources]


@pytest.fixture
def client():
    c = FhirClient([BASE])
    yield c
    c.close()


@pytest.fixture
def mock():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


# --- allowlist -------------------------------------------------------------

def test_allowlist_normalises_case_port_and_trailing_slash():
    c = FhirClient(["HTTPS://EHR.Example.org:443/fhir/", "http://open.example.com:80"])
    try:
        assert c.is_allowed("https://ehr.example.org/fhir")
        assert c.is_allowed("https://ehr.example.org/fhir/")
        assert c.is_allowed("https://ehr.example.org:443/fhir/Patient/1")
        assert c.is_allowed("https://EHR.EXAMPLE.ORG/fhir?_getpages=abc")
        assert c.is_allowed("http://open.example.com/Observation?patient=1")
        assert not c.is_allowed("https://ehr.example.org:8443/fhir")
        assert not c.is_allowed("http://ehr.example.org/fhir")  # scheme is part of the base
        assert not c.is_allowed("https://ehr.example.org/FHIR")  # paths are case-sensitive
    finally:
        c.close()


@pytest.mark.parametrize("url", [
    "https://ehr.example.org.evil.com/fhir",
    "https://ehr.example.org/fhir-other",
    "https://ehr.example.org/fhirPatient/1",
    "https://ehr.example.org",
    "https://ehr.example.org@evil.com/fhir",
    "https://user:pw@ehr.example.org/fhir",
    "https://ehr.example.org/fhir/../admin",
    "https://ehr.example.org/fhir/%2e%2e/admin",
    "https://ehr.example.org\\@evil.com/fhir",
    "ftp://ehr.example.org/fhir",
    "not a url",
])
def test_allowlist_refuses_lookalikes(client, url):
    assert not client.is_allowed(url)


def test_empty_allowlist_allows_nothing():
    c = FhirClient([])
    try:
        assert not c.is_allowed(BASE)
    finally:
        c.close()


def test_allowlist_entry_that_is_not_an_http_base_is_a_configuration_error():
    with pytest.raises(ValueError):
        FhirClient(["ehr.example.org/fhir"])


def test_refused_base_makes_no_request(client, mock):
    results = client.fetch("https://ehr.example.org.evil.com/fhir", TOKEN, {"obs": OBS, "patient": Read("Patient")},
                           PATIENT, soon())
    assert len(mock.calls) == 0
    assert set(results) == {"obs", "patient"}
    for key, result in results.items():
        assert isinstance(result.error, FhirNotAllowed) and result.error.key == key
        assert result.requests == 0 and result.resources == []


def test_next_link_to_another_host_is_refused_without_calling_it(client, mock):
    mock.get(OBS_URL, json=bundle(observation(1), next_url="https://evil.example.com/fhir?_getpages=x"))
    evil = mock.get("https://evil.example.com/fhir", json=bundle(observation(2)))
    result = client.fetch(BASE, TOKEN, {"obs": OBS}, PATIENT, soon())["obs"]
    assert isinstance(result.error, FhirNotAllowed)
    assert result.resources == [] and result.requests == 1
    assert evil.call_count == 0


def test_next_link_to_another_allowed_server_is_refused_too(mock):
    """The token was issued for one server; it must not travel to another one."""
    c = FhirClient([BASE, "https://other.example.org/fhir"])
    try:
        mock.get(OBS_URL, json=bundle(observation(1), next_url="https://other.example.org/fhir?page=2"))
        other = mock.get("https://other.example.org/fhir", json=bundle(observation(2)))
        result = c.fetch(BASE, TOKEN, {"obs": OBS}, PATIENT, soon())["obs"]
        assert isinstance(result.error, FhirNotAllowed) and other.call_count == 0
    finally:
        c.close()


def test_redirect_is_not_followed(client, mock):
    mock.get(PATIENT_URL, status=302, headers={"Location": "https://evil.example.com/steal"})
    evil = mock.get("https://evil.example.com/steal", json={"resourceType": "Patient"})
    result = client.fetch(BASE, TOKEN, {"patient": Read("Patient")}, PATIENT, soon())["patient"]
    assert isinstance(result.error, FhirBadResponse) and result.error.status == 302
    assert evil.call_count == 0


# --- headers -----------------------------------------------------------------

def test_bearer_token_and_accept_headers(client, mock):
    mock.get(PATIENT_URL, json={"resourceType": "Patient", "id": PATIENT})
    result = client.fetch(BASE, TOKEN, {"patient": Read("Patient")}, PATIENT, soon())["patient"]
    assert result.error is None and ids(result) == [PATIENT]
    headers = mock.calls[0].request.headers
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert headers["Accept"] == "application/fhir+json"
    assert headers["Cache-Control"] == "no-cache"  # never a server-side cached search


def test_no_authorization_header_without_a_token(client, mock):
    mock.get(PATIENT_URL, json={"resourceType": "Patient", "id": PATIENT})
    result = client.fetch(BASE, None, {"patient": Read("Patient")}, PATIENT, soon())["patient"]
    assert result.error is None
    assert "Authorization" not in mock.calls[0].request.headers


def test_server_cookies_are_not_sent_on_later_requests(client, mock):
    mock.get(PATIENT_URL, json={"resourceType": "Patient", "id": PATIENT}, headers={"Set-Cookie": "JSESSIONID=abc"})
    client.fetch(BASE, TOKEN, {"patient": Read("Patient")}, PATIENT, soon(), no_cache=True)
    client.fetch(BASE, "other-token", {"patient": Read("Patient")}, PATIENT, soon(), no_cache=True)
    assert len(mock.calls) == 2
    assert "Cookie" not in mock.calls[1].request.headers


# --- paging ------------------------------------------------------------------

def test_pages_are_followed_including_a_relative_next_link(client, mock):
    page2 = f"{BASE}?_getpages=s1&_getpagesoffset=2"
    mock.get(OBS_URL, json=bundle(observation(1), observation(2), next_url=page2))
    mock.get(page2, json=bundle(observation(3), observation(4), next_url="?_getpages=s1&_getpagesoffset=4"))
    mock.get(f"{BASE}/?_getpages=s1&_getpagesoffset=4", json=bundle(observation(5)))
    result = client.fetch(BASE, TOKEN, {"obs": OBS}, PATIENT, soon())["obs"]
    assert result.error is None
    assert ids(result) == ["o1", "o2", "o3", "o4", "o5"]
    assert (result.pages, result.requests, result.truncated) == (3, 3, False)
    assert all(call.request.headers["Authorization"] == f"Bearer {TOKEN}" for call in mock.calls)


def test_page_limit_truncates(mock):
    c = FhirClient([BASE], page_limit=2)
    try:
        mock.get(OBS_URL, json=bundle(observation(1), next_url=f"{BASE}?page=2"))
        mock.get(f"{BASE}?page=2", json=bundle(observation(2), next_url=f"{BASE}?page=3"))
        page3 = mock.get(f"{BASE}?page=3", json=bundle(observation(3)))
        result = c.fetch(BASE, TOKEN, {"obs": OBS}, PATIENT, soon())["obs"]
        assert result.error is None and result.truncated
        assert ids(result) == ["o1", "o2"] and result.pages == 2
        assert page3.call_count == 0
    finally:
        c.close()


def test_next_link_loop_stops_paging(client, mock):
    mock.get(OBS_URL, json=bundle(observation(1), next_url=f"{BASE}?page=2"))
    mock.get(f"{BASE}?page=2", json=bundle(observation(2), next_url=f"{BASE}?page=2"))
    result = client.fetch(BASE, TOKEN, {"obs": OBS}, PATIENT, soon())["obs"]
    assert result.error is None and not result.truncated
    assert ids(result) == ["o1", "o2"] and result.requests == 2


def test_expired_page_reruns_the_search_once(client, mock):
    mock.get(OBS_URL, json=bundle(observation(1), next_url=f"{BASE}?_getpages=old"))
    mock.get(f"{BASE}?_getpages=old", status=410, json=outcome("Search id old has expired"))
    mock.get(OBS_URL, json=bundle(observation(1), next_url=f"{BASE}?_getpages=new"))
    mock.get(f"{BASE}?_getpages=new", json=bundle(observation(2)))
    result = client.fetch(BASE, TOKEN, {"obs": OBS}, PATIENT, soon())["obs"]
    assert result.error is None
    assert ids(result) == ["o1", "o2"]  # page 1 of the first run not counted twice
    assert result.requests == 4


def test_second_expired_page_is_unavailable(client, mock):
    mock.get(OBS_URL, json=bundle(observation(1), next_url=f"{BASE}?_getpages=old"))
    mock.get(f"{BASE}?_getpages=old", status=410)
    mock.get(OBS_URL, json=bundle(observation(1), next_url=f"{BASE}?_getpages=new"))
    mock.get(f"{BASE}?_getpages=new", status=410)
    result = client.fetch(BASE, TOKEN, {"obs": OBS}, PATIENT, soon())["obs"]
    assert isinstance(result.error, FhirUnavailable) and result.error.status == 410
    assert result.resources == [] and result.requests == 4


def test_outcome_entries_are_dropped_from_search_results(client, mock):
    body = bundle(observation(1))
    body["entry"].append({"resource": outcome("warning: code not indexed"), "search": {"mode": "outcome"}})
    body["entry"].append({"resource": observation(2), "search": {"mode": "outcome"}})
    mock.get(OBS_URL, json=body)
    result = client.fetch(BASE, TOKEN, {"obs": OBS}, PATIENT, soon())["obs"]
    assert result.error is None and ids(result) == ["o1"]


def test_follow_next_returns_only_the_following_pages(client, mock):
    prefetched = bundle(observation(1), next_url=f"{BASE}?page=2", self_url=OBS_URL)
    mock.get(f"{BASE}?page=2", json=bundle(observation(2), next_url="?page=3"))
    mock.get(f"{BASE}/?page=3", json=bundle(observation(3)))
    result = client.follow_next(BASE, TOKEN, prefetched, "obs", soon())
    assert result.error is None and ids(result) == ["o2", "o3"]
    assert result.pages == 2 and result.requests == 2


def test_follow_next_without_next_link_is_empty(client, mock):
    result = client.follow_next(BASE, TOKEN, bundle(observation(1)), "obs", soon())
    assert (result.key, result.resources, result.error, result.pages, result.truncated) == ("obs", [], None, 0, False)
    assert result.requests == 0 and len(mock.calls) == 0


def test_follow_next_reruns_an_expired_search_from_its_self_link(client, mock):
    prefetched = bundle(observation(1), next_url=f"{BASE}?_getpages=old", self_url=OBS_URL)
    mock.get(f"{BASE}?_getpages=old", status=410)
    mock.get(OBS_URL, json=bundle(observation(1), next_url=f"{BASE}?_getpages=new"))
    mock.get(f"{BASE}?_getpages=new", json=bundle(observation(2)))
    result = client.follow_next(BASE, TOKEN, prefetched, "obs", soon())
    assert result.error is None and ids(result) == ["o2"]  # the caller already holds page 1


def test_follow_next_refuses_a_base_off_the_allowlist(client, mock):
    result = client.follow_next("https://evil.example.com/fhir", TOKEN,
                                bundle(observation(1), next_url="https://evil.example.com/fhir?page=2"), "obs", soon())
    assert isinstance(result.error, FhirNotAllowed) and len(mock.calls) == 0


# --- retries -----------------------------------------------------------------

def test_429_with_retry_after_zero_then_success(client, mock):
    mock.get(PATIENT_URL, status=429, headers={"Retry-After": "0"})
    mock.get(PATIENT_URL, json={"resourceType": "Patient", "id": PATIENT})
    result = client.fetch(BASE, TOKEN, {"patient": Read("Patient")}, PATIENT, soon())["patient"]
    assert result.error is None and ids(result) == [PATIENT]
    assert result.requests == 2


def test_503_three_times_is_unavailable(mock):
    pauses: list[float] = []
    client = FhirClient([BASE], sleep=pauses.append)
    mock.get(PATIENT_URL, status=503)
    result = client.fetch(BASE, TOKEN, {"patient": Read("Patient")}, PATIENT, soon())["patient"]
    client.close()
    assert isinstance(result.error, FhirUnavailable) and result.error.status == 503
    assert result.requests == 3 and len(mock.calls) == 3
    assert pauses == [0.1, 0.2]  # backoff 0.1 s then 0.2 s


def test_connection_error_is_retried(client, mock):
    mock.get(PATIENT_URL, body=requests.exceptions.ConnectionError("refused"))
    mock.get(PATIENT_URL, json={"resourceType": "Patient", "id": PATIENT})
    result = client.fetch(BASE, TOKEN, {"patient": Read("Patient")}, PATIENT, soon())["patient"]
    assert result.error is None and result.requests == 2


def test_retry_after_beyond_the_deadline_gives_up_at_once(mock):
    pauses: list[float] = []
    client = FhirClient([BASE], sleep=pauses.append)
    mock.get(PATIENT_URL, status=429, headers={"Retry-After": "30"})
    result = client.fetch(BASE, TOKEN, {"patient": Read("Patient")}, PATIENT, soon(1.0))["patient"]
    client.close()
    assert isinstance(result.error, FhirUnavailable) and result.error.status == 429
    assert "deadline" in result.error.reason
    assert pauses == [] and result.requests == 1  # no wait at all


def test_retry_after_as_an_http_date(mock):
    pauses: list[float] = []
    client = FhirClient([BASE], sleep=pauses.append)  # records the wait instead of taking it
    mock.get(PATIENT_URL, status=503, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})  # already past
    mock.get(PATIENT_URL, json={"resourceType": "Patient", "id": PATIENT})
    result = client.fetch(BASE, TOKEN, {"patient": Read("Patient")}, PATIENT, soon())["patient"]
    client.close()
    assert result.error is None and result.requests == 2
    assert pauses == [0.0]  # the date, not the 0.1 s backoff, set the wait


def test_500_is_not_retried(client, mock):
    mock.get(PATIENT_URL, status=500)
    result = client.fetch(BASE, TOKEN, {"patient": Read("Patient")}, PATIENT, soon())["patient"]
    assert isinstance(result.error, FhirUnavailable) and result.requests == 1


# --- status mapping ----------------------------------------------------------

@pytest.mark.parametrize("status", [401, 403])
def test_access_denied(client, mock, status):
    mock.get(COND_URL, status=status, json=outcome("token expired"))
    result = client.fetch(BASE, TOKEN, {"cond": COND}, PATIENT, soon())["cond"]
    assert isinstance(result.error, FhirAccessDenied)
    assert result.error.status == status and result.error.key == "cond" and result.requests == 1


def test_read_404_is_not_found(client, mock):
    mock.get(PATIENT_URL, status=404, json=outcome("Resource Patient/pat-7731 is not known"))
    result = client.fetch(BASE, TOKEN, {"patient": Read("Patient")}, PATIENT, soon())["patient"]
    assert result.error is None and result.not_found and result.resources == []


def test_search_404_is_a_bad_response(client, mock):
    mock.get(COND_URL, status=404)
    result = client.fetch(BASE, TOKEN, {"cond": COND}, PATIENT, soon())["cond"]
    assert isinstance(result.error, FhirBadResponse) and result.error.status == 404


def test_a_4xx_is_told_by_its_status_and_class_never_the_servers_text(client, mock):
    # The diagnostics may repeat the patient's name, birth date or the request path.
    mock.get(COND_URL, status=400, json=outcome("Unknown search parameter \"foo\" for Ada Testpatient (1978-03-22)"))
    result = client.fetch(BASE, TOKEN, {"cond": COND}, PATIENT, soon())["cond"]
    assert isinstance(result.error, FhirBadResponse) and result.error.status == 400
    assert result.error.error_class == "fhir-400"
    assert result.error.reason == "the FHIR server answered 400 (fhir-400)"
    assert "foo" not in repr(result.error) and "foo" not in str(result.error)


def test_what_the_fetch_threads_log_names_the_hook_call(client, mock):
    # The queries run on threads of their own, each in a copy of the caller's context; a line is
    # formatted when it is logged, on the thread that logs it.
    from cds_service.hooks.server_logging import JsonLineFormatter, hook_instance_logged

    class Lines(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.setFormatter(JsonLineFormatter())
            self.lines = []

        def emit(self, record):
            self.lines.append(json.loads(self.format(record)))

    handler, logger = Lines(), logging.getLogger("cds_service.fhir.client")
    instance = "5c7b1a3e-0d5e-4b8f-9a41-2f1f7e0c6d11"
    mock.get(COND_URL, status=400, json=outcome("x"))
    logger.addHandler(handler)
    try:
        with hook_instance_logged(instance):
            client.fetch(BASE, TOKEN, {"cond": COND}, PATIENT, soon())
    finally:
        logger.removeHandler(handler)
    assert handler.lines and all(line.get("hookInstance") == instance for line in handler.lines)


@pytest.mark.parametrize("status", [404, 409, 422])
def test_other_4xx_statuses_have_their_own_class(client, mock, status):
    mock.get(COND_URL, status=status, json=outcome("x" * 1000))
    result = client.fetch(BASE, TOKEN, {"cond": COND}, PATIENT, soon())["cond"]
    assert result.error.error_class == f"fhir-{status}" and "x" not in result.error.reason


def test_non_json_200_is_a_bad_response(client, mock):
    mock.get(COND_URL, body="<html>Login</html>", content_type="text/html")
    result = client.fetch(BASE, TOKEN, {"cond": COND}, PATIENT, soon())["cond"]
    assert isinstance(result.error, FhirBadResponse) and result.error.error_class == "not-json"
    assert "Login" not in result.error.reason


def test_operation_outcome_200_is_a_bad_response(client, mock):
    mock.get(COND_URL, json=outcome("search failed"))
    result = client.fetch(BASE, TOKEN, {"cond": COND}, PATIENT, soon())["cond"]
    assert isinstance(result.error, FhirBadResponse) and result.error.error_class == "operation-outcome"
    assert "search failed" not in result.error.reason


def test_read_of_the_wrong_type_is_a_bad_response(client, mock):
    mock.get(PATIENT_URL, json=bundle())
    result = client.fetch(BASE, TOKEN, {"patient": Read("Patient")}, PATIENT, soon())["patient"]
    assert isinstance(result.error, FhirBadResponse) and result.error.error_class == "wrong-type"
    # A server's resource type is its text too: the reason names what was expected only.
    mock.replace(responses.GET, PATIENT_URL, json={"resourceType": "Name: Ada Testpatient"})
    result = client.fetch(BASE, TOKEN, {"patient": Read("Patient")}, PATIENT, soon(), no_cache=True)["patient"]
    assert result.error.error_class == "wrong-type" and "Ada" not in result.error.reason


def test_empty_search_is_an_empty_result(client, mock):
    mock.get(COND_URL, json={"resourceType": "Bundle", "type": "searchset", "total": 0})
    result = client.fetch(BASE, TOKEN, {"cond": COND}, PATIENT, soon())["cond"]
    assert result.error is None and result.resources == [] and result.pages == 1


def test_a_patient_id_that_is_not_a_fhir_id_is_refused(client, mock):
    with pytest.raises(ValueError):
        client.fetch(BASE, TOKEN, {"cond": COND}, "", soon())
    assert len(mock.calls) == 0


# --- parallelism and deadline ------------------------------------------------

def _delayed(seconds: float, body: dict):
    def callback(request):
        time.sleep(seconds)
        return 200, {}, json.dumps(body)
    return callback


def test_queries_run_in_parallel(client, mock):
    # Each answer waits until all three requests are in: one after another, none would be answered.
    together = threading.Barrier(3, timeout=10)

    def all_at_once(body):
        def callback(request):
            together.wait()
            return 200, {}, json.dumps(body)
        return callback

    mock.add_callback("GET", PATIENT_URL, callback=all_at_once({"resourceType": "Patient", "id": PATIENT}))
    mock.add_callback("GET", COND_URL, callback=all_at_once(bundle()))
    mock.add_callback("GET", OBS_URL, callback=all_at_once(bundle(observation(1))))
    results = client.fetch(BASE, TOKEN, {"patient": Read("Patient"), "cond": COND, "obs": OBS}, PATIENT, soon(20))
    assert all(r.error is None for r in results.values())
    assert list(results) == ["patient", "cond", "obs"]


def test_a_hanging_request_does_not_hold_up_fetch_past_the_deadline(client, mock):
    release = threading.Event()

    def hang(request):
        release.wait(30)  # a server that never answers within the budget
        return 200, {}, json.dumps(bundle())

    mock.add_callback("GET", COND_URL, callback=hang)
    mock.get(PATIENT_URL, json={"resourceType": "Patient", "id": PATIENT})
    mock.get(OBS_URL, json=bundle(observation(1)))
    started = time.monotonic()
    try:
        results = client.fetch(BASE, TOKEN, {"patient": Read("Patient"), "cond": COND, "obs": OBS}, PATIENT,
                               soon(0.3))
        elapsed = time.monotonic() - started
    finally:
        release.set()
    assert elapsed < 10  # at the deadline, not when the server would answer
    assert isinstance(results["cond"].error, FhirUnavailable) and results["cond"].error.error_class == "timeout"
    assert results["patient"].error is None and ids(results["patient"]) == [PATIENT]
    assert results["obs"].error is None and ids(results["obs"]) == ["o1"]


# Out of time while paging: the pages read stand, marked cut short by the deadline (as the
# page limit cuts): a newest-first search loses only older results, and the caller treats
# what it rests on as incomplete. Out of time on the first page is still a failure.

class FakeClock:
    """The client's clock, moved on by the test (a mock answer "takes" the seconds it adds)."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def taking(self, seconds: float, body: dict):
        """A mock callback whose answer arrives `seconds` later on this clock."""
        def callback(request):
            self.now += seconds
            return 200, {}, json.dumps(body)
        return callback


@pytest.mark.parametrize("first_page_seconds, second_asked", [(30, False), (10, True)])
def test_a_page_that_would_not_arrive_in_time_is_not_asked_for(mock, first_page_seconds, second_asked):
    # The next page is judged by the slowest so far: after a page of 30 s, 20 s left is too little (cut
    # short, page 2 never asked); after one of 10 s, 40 s left is enough. Time here is the fake clock's.
    clock = FakeClock()
    client = FhirClient([BASE], clock=clock)
    mock.add_callback("GET", OBS_URL, callback=clock.taking(first_page_seconds,
                                                            bundle(observation(1), next_url=f"{BASE}?page=2")))
    page2 = mock.get(f"{BASE}?page=2", json=bundle(observation(2)))
    started = time.monotonic()
    try:
        result = client.fetch(BASE, TOKEN, {"obs": OBS}, PATIENT, clock() + 50)["obs"]
    finally:
        client.close()
    # Answered when paging stopped, not held to the deadline (20 s or more of real waiting).
    assert time.monotonic() - started < 15
    assert result.error is None and result.elapsed_ms == first_page_seconds * 1000
    if second_asked:
        assert not result.truncated and ids(result) == ["o1", "o2"] and page2.call_count == 1
    else:
        assert result.truncated and result.cut == DEADLINE
        assert ids(result) == ["o1"] and page2.call_count == 0 and result.requests == 1


def test_a_page_still_loading_at_the_deadline_leaves_the_pages_read(client, mock):
    release = threading.Event()

    def hang(request):
        release.wait(30)
        return 200, {}, json.dumps(bundle(observation(3)))

    mock.get(OBS_URL, json=bundle(observation(1), next_url=f"{BASE}?page=2"))
    mock.get(f"{BASE}?page=2", json=bundle(observation(2), next_url=f"{BASE}?page=3"))
    mock.add_callback("GET", f"{BASE}?page=3", callback=hang)
    started = time.monotonic()
    try:
        result = client.fetch(BASE, TOKEN, {"obs": OBS}, PATIENT, soon(0.4))["obs"]
        elapsed = time.monotonic() - started
    finally:
        release.set()
    assert 0.35 < elapsed < 10  # at the deadline (0.4 s), not when the page would arrive
    assert result.error is None and result.truncated and result.cut == DEADLINE
    assert ids(result) == ["o1", "o2"] and result.pages == 2


def test_a_retry_that_would_pass_the_deadline_on_a_later_page_cuts_the_search(client, mock):
    mock.get(OBS_URL, json=bundle(observation(1), next_url=f"{BASE}?page=2"))
    mock.get(f"{BASE}?page=2", status=503, headers={"Retry-After": "30"})
    result = client.fetch(BASE, TOKEN, {"obs": OBS}, PATIENT, soon(1.0))["obs"]
    assert result.error is None and result.truncated and result.cut == DEADLINE and ids(result) == ["o1"]


def test_a_failure_on_a_later_page_that_is_not_about_time_still_fails(client, mock):
    mock.get(OBS_URL, json=bundle(observation(1), next_url=f"{BASE}?page=2"))
    mock.get(f"{BASE}?page=2", status=500)
    result = client.fetch(BASE, TOKEN, {"obs": OBS}, PATIENT, soon())["obs"]
    assert isinstance(result.error, FhirUnavailable) and result.resources == [] and not result.truncated


def test_out_of_time_on_the_first_page_is_a_failure(client, mock):
    mock.add_callback("GET", OBS_URL, callback=_delayed(0.5, bundle(observation(1))))
    result = client.fetch(BASE, TOKEN, {"obs": OBS}, PATIENT, soon(0.2))["obs"]
    assert isinstance(result.error, FhirOutOfTime) and result.resources == [] and not result.truncated


def test_following_a_prefetched_page_out_of_time_keeps_the_held_page(client, mock):
    # The caller holds page 1 (the prefetch); page 2 hangs: nothing more, cut short, no error.
    release = threading.Event()

    def hang(request):
        release.wait(2.0)
        return 200, {}, json.dumps(bundle(observation(2)))

    mock.add_callback("GET", f"{BASE}?page=2", callback=hang)
    held = bundle(observation(1), next_url=f"{BASE}?page=2")
    try:
        result = client.follow_next(BASE, TOKEN, held, "obs", soon(0.3))
    finally:
        release.set()
    assert result.error is None and result.truncated and result.cut == DEADLINE and result.resources == []


def test_a_search_stops_paging_when_the_caller_has_enough(client, mock):
    mock.get(OBS_URL, json=bundle(observation(1), observation(2), next_url=f"{BASE}?page=2"))
    mock.get(f"{BASE}?page=2", json=bundle(observation(3), next_url=f"{BASE}?page=3"))
    page3 = mock.get(f"{BASE}?page=3", json=bundle(observation(4)))
    asked = []

    def enough(resources):
        asked.append(ids(FetchResult("obs", resources)))
        return len(resources) >= 3

    result = client.fetch(BASE, TOKEN, {"obs": OBS}, PATIENT, soon(), enough={"obs": enough})["obs"]
    assert result.error is None and result.truncated and result.cut == LOOK_BACK
    assert ids(result) == ["o1", "o2", "o3"] and page3.call_count == 0
    assert asked == [["o1", "o2"], ["o1", "o2", "o3"]]  # asked after each page with a next one


def test_following_a_prefetched_page_stops_when_the_caller_has_enough(client, mock):
    mock.get(f"{BASE}?page=2", json=bundle(observation(2), next_url=f"{BASE}?page=3"))
    page3 = mock.get(f"{BASE}?page=3", json=bundle(observation(3)))
    held = bundle(observation(1), next_url=f"{BASE}?page=2")
    result = client.follow_next(BASE, TOKEN, held, "obs", soon(), enough=lambda resources: bool(resources))
    assert result.truncated and result.cut == LOOK_BACK and ids(result) == ["o2"] and page3.call_count == 0


def test_page_limit_cut_says_so(mock):
    c = FhirClient([BASE], page_limit=1)
    try:
        mock.get(OBS_URL, json=bundle(observation(1), next_url=f"{BASE}?page=2"))
        result = c.fetch(BASE, TOKEN, {"obs": OBS}, PATIENT, soon())["obs"]
        assert result.truncated and result.cut == PAGE_LIMIT and ids(result) == ["o1"]
    finally:
        c.close()


def test_deadline_already_passed_makes_no_request(client, mock):
    result = client.fetch(BASE, TOKEN, {"cond": COND}, PATIENT, time.monotonic() - 1)["cond"]
    assert isinstance(result.error, FhirUnavailable) and len(mock.calls) == 0


# --- cache -------------------------------------------------------------------

def test_second_identical_fetch_is_served_from_the_cache(client, mock):
    mock.get(OBS_URL, json=bundle(observation(1), next_url=f"{BASE}?page=2"))
    mock.get(f"{BASE}?page=2", json=bundle(observation(2)))
    first = client.fetch(BASE, TOKEN, {"obs": OBS}, PATIENT, soon())["obs"]
    second = client.fetch(BASE, TOKEN, {"obs": OBS}, PATIENT, soon())["obs"]
    assert first.requests == 2 and second.requests == 0 and len(mock.calls) == 2
    assert ids(second) == ids(first) == ["o1", "o2"] and second.pages == 2


def test_cached_resources_are_not_shared_objects(client, mock):
    mock.get(PATIENT_URL, json={"resourceType": "Patient", "id": PATIENT})
    first = client.fetch(BASE, TOKEN, {"patient": Read("Patient")}, PATIENT, soon())["patient"]
    first.resources[0]["id"] = "changed by a caller"
    second = client.fetch(BASE, TOKEN, {"patient": Read("Patient")}, PATIENT, soon())["patient"]
    assert second.requests == 0 and ids(second) == [PATIENT]


def test_cache_is_not_shared_between_tokens(client, mock):
    mock.get(PATIENT_URL, json={"resourceType": "Patient", "id": PATIENT})
    client.fetch(BASE, TOKEN, {"patient": Read("Patient")}, PATIENT, soon())
    other = client.fetch(BASE, "another-token", {"patient": Read("Patient")}, PATIENT, soon())["patient"]
    anonymous = client.fetch(BASE, None, {"patient": Read("Patient")}, PATIENT, soon())["patient"]
    assert other.requests == 1 and anonymous.requests == 1 and len(mock.calls) == 3


def test_no_cache_refetches_and_says_so(client, mock):
    mock.get(PATIENT_URL, json={"resourceType": "Patient", "id": PATIENT})
    client.fetch(BASE, TOKEN, {"patient": Read("Patient")}, PATIENT, soon())
    fresh = client.fetch(BASE, TOKEN, {"patient": Read("Patient")}, PATIENT, soon(), no_cache=True)["patient"]
    assert fresh.requests == 1 and len(mock.calls) == 2
    assert mock.calls[1].request.headers["Cache-Control"] == "no-cache"


def test_cache_keeps_no_token_in_clear(client, mock):
    mock.get(PATIENT_URL, json={"resourceType": "Patient", "id": PATIENT})
    client.fetch(BASE, TOKEN, {"patient": Read("Patient")}, PATIENT, soon())
    assert client._cache and all(TOKEN not in part for key in client._cache for part in key)


def test_errors_are_not_cached(client, mock):
    mock.get(PATIENT_URL, status=503)
    mock.get(PATIENT_URL, json={"resourceType": "Patient", "id": PATIENT})
    c = FhirClient([BASE], retries=0)
    try:
        assert isinstance(c.fetch(BASE, TOKEN, {"p": Read("Patient")}, PATIENT, soon())["p"].error, FhirUnavailable)
        assert c.fetch(BASE, TOKEN, {"p": Read("Patient")}, PATIENT, soon())["p"].error is None
    finally:
        c.close()


# --- the token and the patient id stay out of errors and logs ----------------

def test_token_never_appears_in_errors_results_or_logs(client, mock, caplog):
    caplog.set_level(logging.DEBUG)
    mock.get(PATIENT_URL, status=401, json=outcome(f"Invalid token {TOKEN}"))
    mock.get(COND_URL, status=400, json=outcome(f"Bad request with Authorization: Bearer {TOKEN}"))
    mock.get(OBS_URL, body=requests.exceptions.ConnectionError(f"failed {OBS_URL}"))
    results = client.fetch(BASE, TOKEN, {"patient": Read("Patient"), "cond": COND, "obs": OBS}, PATIENT, soon())
    refused = client.fetch("https://evil.example.com", TOKEN, {"cond": COND}, PATIENT, soon())
    assert all(r.error is not None for r in [*results.values(), *refused.values()])
    assert [results[k].error.error_class for k in ("patient", "cond", "obs")] == \
        ["access-denied", "fhir-400", "connection"]
    for result in [*results.values(), *refused.values()]:
        for text in (result.error.reason, str(result.error), repr(result.error), repr(result)):
            assert TOKEN not in text and PATIENT not in text
    assert TOKEN not in caplog.text and PATIENT not in caplog.text


# --- queries -----------------------------------------------------------------

LABS = Search("Observation", (("code", "http://loinc.org|751-8,http://loinc.org|777-3"), ("_sort", "-date"),
                              ("_count", "100")))


def test_search_prefetch_template_keeps_codes_readable():
    assert LABS.prefetch_template() == ("Observation?patient={{context.patientId}}"
                                        "&code=http://loinc.org|751-8,http://loinc.org|777-3&_sort=-date&_count=100")


def test_search_relative_url():
    assert LABS.relative_url("123") == \
        "Observation?patient=123&code=http://loinc.org|751-8,http://loinc.org|777-3&_sort=-date&_count=100"


def test_search_encodes_what_would_break_the_query():
    query = Search("Condition", (("code:text", "breast cancer & more#?"),), patient_param="subject")
    assert query.prefetch_template() == \
        "Condition?subject={{context.patientId}}&code:text=breast%20cancer%20%26%20more%23%3F"
    assert query.relative_url("a&b") == "Condition?subject=a%26b&code:text=breast+cancer+%26+more%23%3F"


def test_search_without_params():
    assert Search("Condition").prefetch_template() == f"Condition?patient={PATIENT_TOKEN}"
    assert Search("Condition").relative_url("123") == "Condition?patient=123"


def test_read_templates():
    assert Read("Patient").prefetch_template() == "Patient/{{context.patientId}}"
    assert Read("Patient").relative_url("123") == "Patient/123"
    assert Read("Patient").relative_url("a/b c") == "Patient/a%2Fb%20c"


@pytest.mark.parametrize("make", [
    lambda: Read("patient"),
    lambda: Read("Patient/1"),
    lambda: Search("Observation?x=1"),
    lambda: Search("Observation", (("co de", "x"),)),
    lambda: Search("Observation", (("code&_id", "x"),)),
    lambda: Search("Observation", patient_param="patient="),
])
def test_invalid_queries_are_refused(make):
    with pytest.raises(ValueError):
        make()


def test_queries_are_hashable_values():
    assert Search("Condition", (("code", "x"),)) == Search("Condition", (("code", "x"),))
    assert len({Read("Patient"), Read("Patient"), Search("Condition")}) == 2
