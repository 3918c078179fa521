"""The optional terminology server (CDS_TERMINOLOGY_SERVER, fhir/terminology.py):
codes the shipped code sets lack, answered by CodeSystem/$subsumes or
ValueSet/$validate-code, cached, inside the deadline, never required.

Unit tests mock the server (responses) and use a fake clock for the deadline and
the cache's TTL; the integration tests load a small CodeSystem (a hierarchy) and a
ValueSet into the local HAPI server and ask it for real."""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
import time
import uuid
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses

from cds_service.engine import PatientRecord, Result, evaluate
from cds_service.engine.codes import ICD10CM, CodeEntry, CodeSet
from cds_service.engine.definition import TrialDefinition
from cds_service.engine.evaluate import Trial
from cds_service.engine.rules.base import CodeLibrary
from cds_service.fhir.client import FhirClient
from cds_service.fhir.terminology import TerminologyClient
from cds_service.hooks.config import ConfigError, Settings
from cds_service.hooks.service import TrialEligibilityService
from cds_service.trials.loader import load_units
from conftest import EHR
from hookdata import searchset

TX = "https://tx.example.org/fhir"
TEST_SYSTEM = "http://example.org/fhir/CodeSystem/cds-test-conditions"
TEST_VALUE_SET = "http://example.org/fhir/ValueSet/cds-test-exclusions"
AS_OF = dt.date(2026, 6, 15)
TOKEN = "tok-3f9a1c-never-log-me"
SUBSUMES = re.compile(re.escape(TX) + r"/CodeSystem/\$subsumes\?.*")
VALIDATE = re.compile(re.escape(TX) + r"/ValueSet/\$validate-code\?.*")

# The test code system's hierarchy (loaded into HAPI by the integration tests):
#   NEO-100 malignant neoplasm (the diagnosis set's root: shipped)
#     NEO-110 carcinoma (not shipped)
#       NEO-111 lobular carcinoma (not shipped)
#   BEN-200 benign neoplasm (outside the root)
#   EXC-300 excluding disorder (shipped in the exclusion set), EXC-310 (in its ValueSet only)


# -- fixtures -----------------------------------------------------------------------

class FakeClock:
    """The deadline's clock (and the cache's timer), moved by the test only."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_trial(system: str = TEST_SYSTEM, value_set: str = TEST_VALUE_SET) -> Trial:
    definition = TrialDefinition.model_validate({
        "schemaVersion": 1, "nctId": "TEST-TX01", "definitionVersion": "0.1.0",
        "title": "An invented study for the terminology-server tests", "shortTitle": "Terminology test study",
        "phase": "Phase 2", "status": "Recruiting", "studyUrl": "https://example.org/studies/TEST-TX01",
        "protocolSource": "invented for the test suite",
        "criteria": [
            {"id": "diagnosis", "kind": "inclusion", "title": "Malignant neoplasm",
             "protocolText": "A malignant neoplasm.", "interpretation": "Any descendant of the root counts.",
             "rule": {"type": "condition-present", "label": "malignant neoplasm", "codes": ["tx-diagnosis"]}},
            {"id": "excluding-disorder", "kind": "exclusion", "title": "No excluding disorder",
             "protocolText": "An excluding disorder.", "interpretation": "Any code of the ValueSet fails.",
             "rule": {"type": "condition-absent", "label": "excluding disorder", "failCodes": ["tx-exclusion"],
                      "inactiveResult": "fail"}},
        ]})
    sets = {
        "tx-diagnosis": CodeSet("tx-diagnosis", "Malignant neoplasm (test)", [
            CodeEntry(system, "NEO-100", None, "Malignant neoplasm", "test code system"),
            # An ICD-10-CM chapter too, as the real breast-cancer set has: the Condition search is not
            # filtered by code, so a chart's Conditions arrive whatever they are coded with.
            CodeEntry(ICD10CM, None, "C50", "Malignant neoplasm of breast", "ICD-10-CM")],
            intension=((system, "NEO-100"),)),
        "tx-exclusion": CodeSet("tx-exclusion", "Excluding disorder (test)", [
            CodeEntry(system, "EXC-300", None, "Excluding disorder", "test code system")], value_set=value_set),
    }
    return Trial(definition=definition, library=CodeLibrary(sets), units=load_units())


@pytest.fixture(scope="module")
def trial() -> Trial:
    return make_trial()


@pytest.fixture(scope="module")
def dx_trial() -> Trial:
    """The test trial with no ValueSet on its exclusion set: only $subsumes is asked."""
    return make_trial(value_set=None)


def condition(cid: str, code: str, display: str, system: str = TEST_SYSTEM) -> dict:
    """A problem-list Condition as a US Core EHR sends it."""
    return {"resourceType": "Condition", "id": cid, "meta": {"lastUpdated": "2026-05-02T10:14:07Z"},
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                           "code": "active", "display": "Active"}]},
            "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                                               "code": "confirmed", "display": "Confirmed"}]},
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category",
                                      "code": "problem-list-item", "display": "Problem List Item"}]}],
            "code": {"coding": [{"system": system, "code": code, "display": display}], "text": display},
            "subject": {"reference": "Patient/tx-pat-1", "display": "Ada Testpatient"},
            "onsetDateTime": "2025-11-03", "recordedDate": "2025-11-04T09:30:00Z"}


PATIENT = {"resourceType": "Patient", "id": "tx-pat-1", "gender": "female", "birthDate": "1968-04-12",
           "name": [{"family": "Testpatient", "given": ["Ada"]}]}


def record(*conditions: dict) -> PatientRecord:
    return PatientRecord([PATIENT, *conditions])


def results(trial: Trial, rec: PatientRecord) -> dict[str, Result]:
    return {c.id: c.result for c in evaluate(trial, rec, AS_OF).criteria}


def subsumes_answer(outcome: str) -> dict:
    return {"resourceType": "Parameters", "parameter": [{"name": "outcome", "valueCode": outcome}]}


def validate_answer(result: bool) -> dict:
    return {"resourceType": "Parameters", "parameter": [{"name": "result", "valueBoolean": result},
                                                        {"name": "display", "valueString": "Excluding disorder"}]}


def params(call) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(call.request.url).query).items()}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def tx(clock):
    client = TerminologyClient(TX, clock=clock, timeout=5.0)
    yield client
    client.close()


# -- $subsumes and $validate-code ----------------------------------------------------

@responses.activate
def test_a_descendant_of_the_root_becomes_a_member_and_the_inclusion_passes(dx_trial, tx, clock):
    responses.get(SUBSUMES, json=subsumes_answer("subsumes"))
    rec = record(condition("c1", "NEO-111", "Lobular carcinoma"))
    assert results(dx_trial, rec)["diagnosis"] is Result.FAIL  # the shipped set alone: not a member
    lookup = tx.lookup([dx_trial], rec, clock.now + 2)
    assert lookup.extra == {"TEST-TX01": {"tx-diagnosis": frozenset({(TEST_SYSTEM, "NEO-111")})}}
    extended = lookup.for_trial(dx_trial)
    assert results(extended, rec)["diagnosis"] is Result.PASS
    assert results(dx_trial, rec)["diagnosis"] is Result.FAIL  # the shipped trial is not changed
    assert len(responses.calls) == 1
    assert params(responses.calls[0]) == {"system": TEST_SYSTEM, "codeA": "NEO-100", "codeB": "NEO-111"}
    assert lookup.audit["asked"] == 1 and lookup.audit["answered"] == 1 and lookup.audit["members"] == 1
    entry = extended.library.sets["tx-diagnosis"].entries[-1]
    assert (entry.code, entry.source) == ("NEO-111", "terminology server $subsumes << NEO-100")


@pytest.mark.parametrize("outcome, member", [("subsumes", True), ("equivalent", True), ("subsumed-by", False),
                                             ("not-subsumed", False)])
@responses.activate
def test_subsumes_outcomes(dx_trial, tx, clock, outcome, member):
    responses.get(SUBSUMES, json=subsumes_answer(outcome))
    rec = record(condition("c1", "NEO-110", "Carcinoma"))
    lookup = tx.lookup([dx_trial], rec, clock.now + 2)
    assert results(lookup.for_trial(dx_trial), rec)["diagnosis"] is (Result.PASS if member else Result.FAIL)
    assert (lookup.for_trial(dx_trial) is dx_trial) is not member


@pytest.mark.parametrize("answer, expected", [(True, Result.FAIL), (False, Result.PASS)])
@responses.activate
def test_validate_code_against_the_sets_value_set(trial, tx, clock, answer, expected):
    """The exclusion set has a ValueSet and no intension root: a code it lacks goes
    to $validate-code."""
    responses.get(VALIDATE, json=validate_answer(answer))
    responses.get(SUBSUMES, json=subsumes_answer("not-subsumed"))  # EXC-310 under the diagnosis root?
    rec = record(condition("c1", "EXC-310", "Excluding disorder, other"))
    assert results(trial, rec)["excluding-disorder"] is Result.PASS
    lookup = tx.lookup([trial], rec, clock.now + 2)
    assert results(lookup.for_trial(trial), rec)["excluding-disorder"] is expected
    asked = [params(c) for c in responses.calls if "$validate-code" in c.request.url]
    assert asked == [{"url": TEST_VALUE_SET, "system": TEST_SYSTEM, "code": "EXC-310"}]


@responses.activate
def test_only_codes_no_shipped_set_holds_and_an_intension_or_value_set_covers_are_asked(trial, tx, clock):
    """EXC-300 is in the exclusion set: recognised, so never asked under the diagnosis
    root though it is in the root's system (a code the trial's sets know is what they
    say). NEO-100 is the diagnosis root and C50.911 is in its set by prefix. Only the
    local code, in no set and in no root's system, goes to the exclusion ValueSet."""
    responses.get(VALIDATE, json=validate_answer(False))
    responses.get(SUBSUMES, json=subsumes_answer("subsumes"))
    rec = record(condition("c1", "EXC-300", "Excluding disorder"), condition("c2", "NEO-100", "Malignant neoplasm"),
                 condition("c3", "C50.911", "Malignant neoplasm of right female breast", ICD10CM),
                 condition("c4", "LA-1", "Local problem-list code", "urn:oid:1.2.840.114350.1.13.0.1.7.2.696871"))
    lookup = tx.lookup([trial], rec, clock.now + 2)
    assert [(c.request.url.split("?")[0], params(c)["code"]) for c in responses.calls] == [
        (f"{TX}/ValueSet/$validate-code", "LA-1")]
    assert lookup.extra == {} and lookup.audit["questions"] == 1


def site_trial() -> Trial:
    """A general code that counts with a qualifying body site (the mCODE secondary-cancer
    shape): the site set has an intension root; the general set does not."""
    definition = TrialDefinition.model_validate({
        "schemaVersion": 1, "nctId": "TEST-TX02", "definitionVersion": "0.1.0",
        "title": "An invented study: a general code qualified by its body site", "shortTitle": "Body-site test",
        "phase": "Phase 2", "status": "Recruiting", "studyUrl": "https://example.org/studies/TEST-TX02",
        "protocolSource": "invented for the test suite",
        "criteria": [{"id": "sited", "kind": "inclusion", "title": "Secondary neoplasm of the meninges",
                      "protocolText": "Metastasis to the meninges.", "interpretation": "General code with a site.",
                      "rule": {"type": "condition-present", "label": "meningeal metastasis", "codes": ["tx-specific"],
                               "siteDependent": [{"codes": ["tx-general"], "bodySiteCodes": ["tx-site"],
                                                  "withoutBodySite": "ignore"}]}}]})
    sets = {
        "tx-specific": CodeSet("tx-specific", "Specific (test)", [
            CodeEntry(TEST_SYSTEM, "SEC-410", None, "Meningeal metastasis", "test code system")]),
        "tx-general": CodeSet("tx-general", "General (test)", [
            CodeEntry(TEST_SYSTEM, "SEC-400", None, "Secondary malignant neoplasm", "test code system")]),
        "tx-site": CodeSet("tx-site", "Meninges (test)", [
            CodeEntry(TEST_SYSTEM, "SITE-1", None, "Meninges structure", "test code system")],
            intension=((TEST_SYSTEM, "SITE-1"),)),
    }
    return Trial(definition=definition, library=CodeLibrary(sets), units=load_units())


@responses.activate
def test_a_body_site_set_is_matched_against_body_sites_only(tx, clock):
    trial = site_trial()
    responses.get(SUBSUMES, json=subsumes_answer("subsumes"))
    sited = condition("c1", "SEC-400", "Secondary malignant neoplasm")
    sited["bodySite"] = [{"coding": [{"system": TEST_SYSTEM, "code": "SITE-1.2", "display": "Leptomeninges"}]}]
    other = condition("c2", "NEO-111", "Lobular carcinoma")  # a Condition code: never asked as a body site
    rec = record(sited, other)
    assert results(trial, rec)["sited"] is Result.FAIL
    lookup = tx.lookup([trial], rec, clock.now + 2)
    assert [params(c) for c in responses.calls] == [{"system": TEST_SYSTEM, "codeA": "SITE-1", "codeB": "SITE-1.2"}]
    assert results(lookup.for_trial(trial), rec)["sited"] is Result.PASS


def test_a_root_not_shipped_is_a_member_without_asking(clock):
    trial = make_trial()
    sets = dict(trial.library.sets)
    shipped = sets["tx-diagnosis"]
    sets["tx-diagnosis"] = CodeSet(shipped.name, shipped.title, shipped.entries[1:], intension=shipped.intension)
    trial = Trial(definition=trial.definition, library=CodeLibrary(sets), units=trial.units)
    tx = TerminologyClient(TX, clock=clock, max_lookups=0)  # no request possible
    rec = record(condition("c1", "NEO-100", "Malignant neoplasm"))
    with responses.RequestsMock() as mock:
        lookup = tx.lookup([trial], rec, clock.now + 2)
        assert len(mock.calls) == 0
    assert results(lookup.for_trial(trial), rec)["diagnosis"] is Result.PASS


# -- answers that are not answers ------------------------------------------------------

@pytest.mark.parametrize("body", [
    b"not json",
    b'{"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "processing"}]}',
    b'{"resourceType": "Parameters"}',
    b'{"resourceType": "Parameters", "parameter": [{"name": "outcome", "valueCode": "maybe"}]}',
    b'{"resourceType": "Parameters", "parameter": [{"name": "outcome", "valueString": "subsumes"}]}',
    b'{"resourceType": "Parameters", "parameter": [{"name": "outcome", "valueCode": "subsumes"}, '
    b'{"name": "outcome", "valueCode": "not-subsumed"}]}',
    b'{"resourceType": "Parameters", "parameter": [{"name": "result", "valueBoolean": true}]}',
    b'{"resourceType": "Parameters", "parameter": "outcome=subsumes"}',
    b'[{"name": "outcome", "valueCode": "subsumes"}]',
])
@responses.activate
def test_malformed_subsumes_answers_add_nothing_and_are_asked_again(dx_trial, tx, clock, body):
    responses.get(SUBSUMES, body=body, content_type="application/fhir+json")
    rec = record(condition("c1", "NEO-111", "Lobular carcinoma"))
    lookup = tx.lookup([dx_trial], rec, clock.now + 2)
    assert lookup.extra == {} and lookup.for_trial(dx_trial) is dx_trial
    assert lookup.audit["errors"] == {"malformed answer": 1} and lookup.audit["answered"] == 0
    tx.lookup([dx_trial], rec, clock.now + 2)
    assert len(responses.calls) == 2  # no answer: nothing cached


@pytest.mark.parametrize("body", [
    b'{"resourceType": "Parameters", "parameter": [{"name": "result", "valueString": "true"}]}',
    b'{"resourceType": "Parameters", "parameter": [{"name": "result", "valueCode": "true"}]}',
    b'{"resourceType": "Parameters", "parameter": [{"name": "message", "valueString": "ok"}]}',
    b'{"resourceType": "Parameters", "parameter": [{"name": "outcome", "valueCode": "subsumes"}]}',
])
@responses.activate
def test_malformed_validate_code_answers_add_nothing(trial, tx, clock, body):
    responses.get(VALIDATE, body=body, content_type="application/fhir+json")
    responses.get(SUBSUMES, json=subsumes_answer("not-subsumed"))  # EXC-310 under the diagnosis root: no
    rec = record(condition("c1", "EXC-310", "Excluding disorder, other"))
    lookup = tx.lookup([trial], rec, clock.now + 2)
    assert lookup.extra == {} and lookup.audit["errors"] == {"malformed answer": 1}
    assert results(lookup.for_trial(trial), rec)["excluding-disorder"] is Result.PASS


@responses.activate
def test_a_server_error_adds_nothing_and_is_asked_again(dx_trial, tx, clock):
    responses.get(SUBSUMES, status=500, json={"resourceType": "OperationOutcome", "issue": []})
    rec = record(condition("c1", "NEO-111", "Lobular carcinoma"))
    lookup = tx.lookup([dx_trial], rec, clock.now + 2)
    assert lookup.extra == {} and lookup.audit["errors"] == {"status 500": 1}
    assert results(lookup.for_trial(dx_trial), rec)["diagnosis"] is Result.FAIL
    tx.lookup([dx_trial], rec, clock.now + 2)
    assert len(responses.calls) == 2


@responses.activate
def test_a_settled_4xx_is_remembered_as_no_answer(dx_trial, tx, clock):
    """An unknown code (HAPI: 400 with an OperationOutcome) will not change on a retry:
    remembered like a no, so the chart reopened asks nothing."""
    responses.get(SUBSUMES, status=400, json={"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "processing", "diagnostics": "Unknown code"}]})
    rec = record(condition("c1", "NEO-999", "Neoplasm, code unknown to the server"))
    first = tx.lookup([dx_trial], rec, clock.now + 2)
    assert first.extra == {} and first.audit["errors"] == {"status 400": 1}
    second = tx.lookup([dx_trial], rec, clock.now + 2)
    assert len(responses.calls) == 1 and second.audit["cached"] == 1 and "errors" not in second.audit


@responses.activate
def test_a_redirect_is_not_followed_to_another_host(dx_trial, tx, clock):
    responses.get(SUBSUMES, status=302, headers={"Location": "https://elsewhere.example.com/fhir/CodeSystem/x"})
    responses.get(re.compile(r"https://elsewhere\.example\.com/.*"), json=subsumes_answer("subsumes"))
    rec = record(condition("c1", "NEO-111", "Lobular carcinoma"))
    lookup = tx.lookup([dx_trial], rec, clock.now + 2)
    assert lookup.extra == {} and lookup.audit["errors"] == {"status 302": 1}
    assert [urlsplit(c.request.url).hostname for c in responses.calls] == ["tx.example.org"]


@responses.activate
def test_no_authorization_header_is_ever_sent(trial, tx, clock, tmp_path, monkeypatch):
    """Not even one requests would take from a netrc file for the server's host."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine tx.example.org login someone password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert requests.utils.get_netrc_auth(TX) == ("someone", "secret")  # what a plain request would send
    responses.get(SUBSUMES, json=subsumes_answer("subsumes"))
    responses.get(VALIDATE, json=validate_answer(False))
    tx.lookup([trial], record(condition("c1", "NEO-111", "Lobular carcinoma"),
                              condition("c2", "EXC-310", "Excluding disorder, other")), clock.now + 2)
    assert len(responses.calls) == 4  # each code: $subsumes under the diagnosis root, the exclusion ValueSet
    for call in responses.calls:
        assert "Authorization" not in call.request.headers
        assert call.request.headers["Accept"] == "application/fhir+json"


# -- the deadline (a fake clock) ---------------------------------------------------------

@responses.activate
def test_no_time_left_means_no_request(dx_trial, tx, clock):
    rec = record(condition("c1", "NEO-111", "Lobular carcinoma"))
    lookup = tx.lookup([dx_trial], rec, clock.now - 0.001)
    assert len(responses.calls) == 0
    assert lookup.extra == {} and lookup.audit["skipped"] == 1 and lookup.audit["asked"] == 0


@responses.activate
def test_an_answer_after_the_deadline_is_not_used_but_kept_for_the_next_call(dx_trial, tx, clock):
    def late(request):
        clock.now += 3  # the server took 3 s of a 2 s deadline
        return 200, {}, json.dumps(subsumes_answer("subsumes"))

    responses.add_callback(responses.GET, SUBSUMES, callback=late, content_type="application/fhir+json")
    rec = record(condition("c1", "NEO-111", "Lobular carcinoma"))
    lookup = tx.lookup([dx_trial], rec, clock.now + 2)
    assert lookup.extra == {} and lookup.audit["errors"] == {"deadline": 1}
    assert results(lookup.for_trial(dx_trial), rec)["diagnosis"] is Result.FAIL
    for _ in range(1000):  # the worker stores the late answer once it has it
        if tx.cache_size():
            break
        time.sleep(0.005)
    again = tx.lookup([dx_trial], rec, clock.now + 2)
    assert len(responses.calls) == 1 and again.audit["cached"] == 1
    assert results(again.for_trial(dx_trial), rec)["diagnosis"] is Result.PASS


@responses.activate
def test_the_terminology_timeout_caps_a_longer_hook_deadline(dx_trial, clock):
    tx = TerminologyClient(TX, clock=clock, timeout=0.5)

    def slow(request):
        clock.now += 1  # within the hook's 2 s, beyond the terminology timeout
        return 200, {}, json.dumps(subsumes_answer("subsumes"))

    responses.add_callback(responses.GET, SUBSUMES, callback=slow, content_type="application/fhir+json")
    lookup = tx.lookup([dx_trial], record(condition("c1", "NEO-111", "Lobular carcinoma")), clock.now + 2)
    assert lookup.extra == {} and lookup.audit["errors"] == {"deadline": 1}
    tx.close()


@responses.activate
def test_a_request_timeout_adds_nothing_and_is_asked_again(dx_trial, tx, clock):
    responses.get(SUBSUMES, body=requests.exceptions.ReadTimeout("read timed out"))
    rec = record(condition("c1", "NEO-111", "Lobular carcinoma"))
    lookup = tx.lookup([dx_trial], rec, clock.now + 2)
    assert lookup.extra == {} and lookup.audit["errors"] == {"timeout": 1}
    tx.lookup([dx_trial], rec, clock.now + 2)
    assert len(responses.calls) == 2


# -- the cache ----------------------------------------------------------------------------

@pytest.mark.parametrize("outcome", ["subsumes", "not-subsumed"])
@responses.activate
def test_yes_and_no_are_cached_so_a_reopened_chart_makes_no_call(dx_trial, tx, clock, outcome):
    responses.get(SUBSUMES, json=subsumes_answer(outcome))
    rec = record(condition("c1", "NEO-111", "Lobular carcinoma"))
    first = tx.lookup([dx_trial], rec, clock.now + 2)
    reopened = record(condition("c1", "NEO-111", "Lobular carcinoma"))  # the same chart sent again
    second = tx.lookup([dx_trial], reopened, clock.now + 2)
    assert len(responses.calls) == 1
    assert second.audit["asked"] == 0 and second.audit["cached"] == 1
    assert second.extra == first.extra
    # The same answer extends dx_trial alike (or, not a member, leaves it as it is).
    member = outcome == "subsumes"
    for lookup in (first, second):
        assert lookup.for_trial(dx_trial).library.sets["tx-diagnosis"].contains((TEST_SYSTEM, "NEO-111")) is member


@responses.activate
def test_the_cache_is_bounded_and_answers_expire(dx_trial, clock):
    tx = TerminologyClient(TX, clock=clock, cache_size=2, cache_ttl=60)
    responses.get(SUBSUMES, json=subsumes_answer("not-subsumed"))
    rec = record(*(condition(f"c{i}", f"NEO-5{i}", f"Neoplasm {i}") for i in range(3)))
    tx.lookup([dx_trial], rec, clock.now + 2)
    assert len(responses.calls) == 3 and tx.cache_size() == 2
    one = record(condition("c9", "NEO-52", "Neoplasm 2"))
    tx.lookup([dx_trial], one, clock.now + 2)
    assert len(responses.calls) == 3  # among the two kept
    clock.now += 61
    tx.lookup([dx_trial], one, clock.now + 2)
    assert len(responses.calls) == 4  # expired: asked again
    tx.close()


@responses.activate
def test_at_most_max_lookups_requests_a_call(dx_trial, clock):
    tx = TerminologyClient(TX, clock=clock, max_lookups=2)
    responses.get(SUBSUMES, json=subsumes_answer("subsumes"))
    rec = record(*(condition(f"c{i}", f"NEO-6{i}", f"Neoplasm {i}") for i in range(3)))
    first = tx.lookup([dx_trial], rec, clock.now + 2)
    assert len(responses.calls) == 2 and first.audit["skipped"] == 1 and first.audit["members"] == 2
    second = tx.lookup([dx_trial], rec, clock.now + 2)  # the two answers cached, the third asked now
    assert len(responses.calls) == 3 and second.audit["members"] == 3 and second.audit["cached"] == 2
    tx.close()


# -- the engine side: Trial.with_extra_codes ---------------------------------------------

def test_with_extra_codes_keeps_the_shipped_members_and_normalises_keys(trial):
    assert trial.with_extra_codes({}) is trial
    assert trial.with_extra_codes({"tx-diagnosis": []}) is trial
    assert trial.with_extra_codes({"not-a-set-of-this-trial": [(TEST_SYSTEM, "X")]}) is trial
    # A key the set already holds (by prefix, once normalised) adds nothing.
    assert trial.with_extra_codes({"tx-diagnosis": [(ICD10CM, "c50.9")]}) is trial
    extended = trial.with_extra_codes({"tx-exclusion": [(ICD10CM, "d84.821 ")]})
    exclusion = extended.library.sets["tx-exclusion"]
    assert exclusion.contains((ICD10CM, "D84821")) and exclusion.contains((TEST_SYSTEM, "EXC-300"))
    assert exclusion.entries[-1].source == f"terminology server $validate-code {TEST_VALUE_SET}"
    assert extended.library.sets["tx-diagnosis"] is trial.library.sets["tx-diagnosis"]  # untouched sets shared
    assert not trial.library.sets["tx-exclusion"].contains((ICD10CM, "D84821"))
    again = trial.with_extra_codes({"tx-exclusion": [(ICD10CM, "D84.821")]})  # the same addition, spelt otherwise
    assert [(e.system, e.code) for e in again.library.sets["tx-exclusion"].entries] == \
        [(e.system, e.code) for e in exclusion.entries]


# -- configuration -------------------------------------------------------------------------

def test_settings_read_and_validate_the_terminology_server():
    s = Settings.from_env({"CDS_TERMINOLOGY_SERVER": " https://TX.example.org/fhir/ ", "CDS_TERMINOLOGY_TIMEOUT": "0.5",
                           "CDS_TERMINOLOGY_CACHE_TTL": "600", "CDS_TERMINOLOGY_CACHE_SIZE": "50",
                           "CDS_TERMINOLOGY_MAX_LOOKUPS": "8"})
    assert (s.terminology_server, s.terminology_timeout, s.terminology_cache_ttl, s.terminology_cache_size,
            s.terminology_max_lookups) == ("https://tx.example.org/fhir", 0.5, 600.0, 50, 8)
    assert s.allowed_fhir_servers == ()  # its own allowlist: never a FHIR server for patient data
    off = Settings.from_env({"CDS_TERMINOLOGY_SERVER": ""})
    assert off.terminology_server is None and off.terminology_max_lookups == 32
    for bad in ("tx.example.org/fhir", "ftp://tx.example.org/fhir", "https://user:pw@tx.example.org/fhir",
                "https://tx.example.org/fhir?x=1", "https://tx.example.org/fhir/../admin"):
        with pytest.raises(ConfigError, match="CDS_TERMINOLOGY_SERVER") as err:
            Settings.from_env({"CDS_TERMINOLOGY_SERVER": bad})
        assert "pw" not in str(err.value)
    with pytest.raises(ConfigError, match="CDS_TERMINOLOGY_MAX_LOOKUPS"):
        Settings.from_env({"CDS_TERMINOLOGY_MAX_LOOKUPS": "-1"})


# -- the hook --------------------------------------------------------------------------

def hook_request(*conditions: dict) -> dict:
    return {"hook": "patient-view", "hookInstance": str(uuid.uuid4()), "fhirServer": EHR,
            "fhirAuthorization": {"access_token": TOKEN, "token_type": "Bearer", "expires_in": 300,
                                  "scope": "user/Condition.read", "subject": "cds-service"},
            "context": {"userId": "Practitioner/p-1", "patientId": "tx-pat-1"},
            "prefetch": {"conditions": searchset(*conditions)}}


def test_server_unset_adds_no_client(make_app):
    service = make_app().extensions["trial_eligibility"]
    assert service.terminology is None


@responses.activate
def test_the_hook_uses_the_servers_answer_and_a_second_call_asks_nothing(make_app):
    app = make_app(terminology_server=TX)
    shipped = app.extensions["trial_eligibility"]
    assert isinstance(shipped.terminology, TerminologyClient)
    assert not shipped.client.is_allowed(TX + "/Condition")  # not on the patient-data allowlist
    trial = make_trial()
    app.extensions["trial_eligibility"] = TrialEligibilityService(
        shipped.settings, [trial], shipped.client, shipped.renderer, shipped.store, shipped.terminology)
    responses.get(SUBSUMES, json=subsumes_answer("subsumes"))
    responses.get(VALIDATE, json=validate_answer(False))  # NEO-111 is not an excluding disorder
    client = app.test_client()
    request = hook_request(condition("c1", "NEO-111", "Lobular carcinoma"))
    first = client.post("/cds-services/trial-eligibility", json=request)
    assert first.status_code == 200
    cards = first.get_json()["cards"]
    assert len(cards) == 1
    evaluation = cards[0]["extension"]["trial-eligibility"]
    assert evaluation["status"] == "eligible"
    assert next(c for c in evaluation["criteria"] if c["id"] == "diagnosis")["result"] == "pass"
    assert len(responses.calls) == 2
    for call in responses.calls:
        call = call.request
        assert urlsplit(call.url).hostname == "tx.example.org"
        assert "Authorization" not in call.headers and TOKEN not in call.url and "tx-pat-1" not in call.url
    audit = shipped.store.hook_calls()[-1]
    assert audit["data_sources"]["terminology"] == {**audit["data_sources"]["terminology"], "questions": 2,
                                                    "asked": 2, "answered": 2, "cached": 0, "members": 1}
    assert "terminology" in audit["timings"]
    again = client.post("/cds-services/trial-eligibility", json=dict(copy.deepcopy(request),
                                                                      hookInstance=str(uuid.uuid4())))
    assert [c["extension"]["trial-eligibility"]["status"] for c in again.get_json()["cards"]] == ["eligible"]
    assert len(responses.calls) == 2  # the reopened chart: no terminology request
    assert shipped.store.hook_calls()[-1]["data_sources"]["terminology"]["cached"] == 2


@responses.activate
def test_the_hook_answers_normally_when_the_server_fails(make_app):
    app = make_app(terminology_server=TX)
    shipped = app.extensions["trial_eligibility"]
    app.extensions["trial_eligibility"] = TrialEligibilityService(
        shipped.settings, [make_trial()], shipped.client, shipped.renderer, shipped.store, shipped.terminology)
    responses.get(SUBSUMES, status=503)
    responses.get(VALIDATE, status=503)
    response = app.test_client().post("/cds-services/trial-eligibility",
                                      json=hook_request(condition("c1", "NEO-111", "Lobular carcinoma")))
    assert response.status_code == 200 and response.get_json()["cards"] == []  # the shipped set: ineligible
    terminology = shipped.store.hook_calls()[-1]["data_sources"]["terminology"]
    assert terminology["errors"] == {"status 503": 2} and terminology["members"] == 0


def test_the_hook_without_a_server_makes_no_terminology_entry(make_app):
    app = make_app()
    shipped = app.extensions["trial_eligibility"]
    app.extensions["trial_eligibility"] = TrialEligibilityService(
        shipped.settings, [make_trial()], shipped.client, shipped.renderer, shipped.store)
    with responses.RequestsMock() as mock:
        response = app.test_client().post("/cds-services/trial-eligibility",
                                          json=hook_request(condition("c1", "NEO-111", "Lobular carcinoma")))
        assert len(mock.calls) == 0
    assert response.status_code == 200 and response.get_json()["cards"] == []
    audit = shipped.store.hook_calls()[-1]
    assert "terminology" not in audit["data_sources"] and "terminology" not in audit["timings"]


# -- against a real HAPI FHIR server ---------------------------------------------------------

@pytest.fixture(scope="module")
def hapi_terminology(hapi):
    """A small CodeSystem with a hierarchy and a ValueSet, under URLs of this run's own."""
    run = uuid.uuid4().hex[:10]
    system = f"http://example.org/fhir/CodeSystem/cds-test-conditions-{run}"
    value_set = f"http://example.org/fhir/ValueSet/cds-test-exclusions-{run}"
    code_system = {
        "resourceType": "CodeSystem", "id": f"cds-test-{run}", "url": system, "version": "1", "status": "active",
        "content": "complete", "hierarchyMeaning": "is-a", "caseSensitive": True,
        "concept": [
            {"code": "NEO-100", "display": "Malignant neoplasm", "concept": [
                {"code": "NEO-110", "display": "Carcinoma", "concept": [
                    {"code": "NEO-111", "display": "Lobular carcinoma"}]}]},
            {"code": "BEN-200", "display": "Benign neoplasm"},
            {"code": "EXC-300", "display": "Excluding disorder"},
            {"code": "EXC-310", "display": "Excluding disorder, other"}]}
    vs = {"resourceType": "ValueSet", "id": f"cds-test-{run}", "url": value_set, "version": "1", "status": "active",
          "compose": {"include": [{"system": system, "concept": [{"code": "EXC-300"}, {"code": "EXC-310"}]}]}}
    headers = {"Content-Type": "application/fhir+json"}
    for resource in (code_system, vs):
        response = requests.put(f"{hapi}/{resource['resourceType']}/{resource['id']}", json=resource,
                                headers=headers, timeout=60)
        assert response.status_code in (200, 201), response.text[:500]
    # HAPI stores a CodeSystem's concepts (and indexes the hierarchy) after the write returns.
    for _ in range(120):
        answer = requests.get(f"{hapi}/CodeSystem/$subsumes", params={"system": system, "codeA": "NEO-100",
                                                                      "codeB": "NEO-111"}, timeout=30)
        if answer.status_code == 200:
            break
        time.sleep(0.5)
    return system, value_set


def test_hapi_answers_flip_the_criteria_and_nothing_changes_without_the_server(hapi, hapi_terminology):
    system, value_set = hapi_terminology
    trial = make_trial(system, value_set)
    rec = PatientRecord([PATIENT, condition("c1", "NEO-111", "Lobular carcinoma", system),
                         condition("c2", "BEN-200", "Benign neoplasm", system),
                         condition("c3", "EXC-310", "Excluding disorder, other", system)])
    # Without a server: the shipped sets alone (NEO-100 and EXC-300) decide.
    assert results(trial, rec) == {"diagnosis": Result.FAIL, "excluding-disorder": Result.PASS}
    tx = TerminologyClient(hapi, timeout=30.0)
    try:
        lookup = tx.lookup([trial], rec, time.monotonic() + 30)
        assert lookup.audit.get("errors") is None, lookup.audit
        assert lookup.extra == {"TEST-TX01": {"tx-diagnosis": frozenset({(system, "NEO-111")}),
                                              "tx-exclusion": frozenset({(system, "EXC-310")})}}
        assert results(lookup.for_trial(trial), rec) == {"diagnosis": Result.PASS,
                                                         "excluding-disorder": Result.FAIL}
        # BEN-200 is outside NEO-100 (not-subsumed) and not in the ValueSet: asked, not added.
        assert lookup.audit["members"] == 2 and lookup.audit["answered"] == lookup.audit["asked"]
        again = tx.lookup([trial], rec, time.monotonic() + 30)
        assert again.audit["asked"] == 0 and again.extra == lookup.extra
    finally:
        tx.close()


def test_hapi_unknown_code_and_unknown_value_set_add_nothing(hapi, hapi_terminology):
    system, _ = hapi_terminology
    trial = make_trial(system, "http://example.org/fhir/ValueSet/no-such-value-set")
    rec = PatientRecord([PATIENT, condition("c1", "NEO-404", "Neoplasm, code not in the code system", system)])
    tx = TerminologyClient(hapi, timeout=30.0)
    try:
        lookup = tx.lookup([trial], rec, time.monotonic() + 30)
    finally:
        tx.close()
    assert lookup.extra == {}
    assert results(lookup.for_trial(trial), rec) == {"diagnosis": Result.FAIL, "excluding-disorder": Result.PASS}


def test_hapi_is_not_a_patient_data_server_for_the_terminology_client(hapi):
    """The FHIR client's allowlist is separate: configuring a terminology server lets
    no patient search go there."""
    assert not FhirClient([EHR]).is_allowed(f"{hapi}/Condition")
