"""Property-based fuzzing of the HTTP API, in process over WSGI (no network).

1. Schemathesis, driven by the OpenAPI description the service serves (GET
   /openapi.json, generated from the wire models by hooks/openapi.py): for every operation, the
   document's examples, its coverage cases (boundary values, missing and
   wrong-typed fields, unexpected methods, unsupported media types) and
   Hypothesis-generated requests in both generation modes: positive (valid by
   the schema) and negative (wrong types, missing required fields, off-pattern
   and out-of-range values, unicode, malformed JSON).
2. Hostile bodies no generator produces on its own: 100 kB to 2 MB strings,
   nesting within and beyond the JSON parser's depth limit, lone surrogates,
   invalid UTF-8, NUL bytes, non-JSON, bodies over the size limit.
3. Hypothesis over the FHIR data: syntactically valid hook requests for the
   eligible demo patient whose prefetch holds malformed FHIR (wrong types,
   absurd numbers, units and dates, wrong resource types, another patient's
   resources, 200-level extensions, non-dict entries, entry not a list, ...).

The property: never a 5xx and never a traceback; every 4xx is a FHIR
OperationOutcome sent as application/fhir+json; every 200 is JSON, and a
service call's 200 holds only valid cards (summary under 140 characters, no
null or empty value, one evaluation of every criterion). 401 cannot happen here
(no client JWT trust is configured); a 401 with a body is held to the
OperationOutcome rule, a bare 401 challenge is accepted. OPTIONS gets Flask's
automatic empty 200 (with Allow; CORS preflights use it).

The app runs with a temporary SQLite database, evaluation date 2026-06-15, no
FHIR server on its allowlist (a request's fhirServer is refused without a
connection) and no client authentication. Runs are reproducible: Hypothesis is
derandomized and keeps no example database. Every request is counted, and the
last test checks that the module sent at least MIN_REQUESTS.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
from collections import Counter
from urllib.parse import urlsplit

import pytest
import schemathesis
from flask.testing import FlaskClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (content_type_conformance, not_a_server_error, response_schema_conformance,
                                 status_code_conformance)

from cds_service.cards import find_empty_values
from cds_service.fhir.needs import data_needs
from cds_service.hooks.app import create_app
from cds_service.hooks.config import Settings
from cds_service.hooks.openapi import openapi_document
from cds_service.trials import load_trials
from conftest import assert_no_secrets_in_files
from hookdata import demo

pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

EVALUATION_DATE = dt.date(2026, 6, 15)
SERVICE = "/cds-services/trial-eligibility"
FEEDBACK = f"{SERVICE}/feedback"
CRITERIA = {trial.id: len(trial.definition.criteria) for trial in load_trials().values()}  # every one, every card
# Generated examples per test; schemathesis adds the document's examples and its
# coverage cases (355 more requests for the service call, 238 for feedback, 30 for
# the GETs). Drawing a nested JSON body costs 10-40 ms, far more than the call. Two
# budgets, both derandomized (the same requests every run): `make test` (and CI) sends
# about 1,800 in under a minute; `make fuzz` (CDS_FUZZ_BUDGET=full) sends 10,168 in
# about three minutes on a 2-core machine.
FULL = os.environ.get("CDS_FUZZ_BUDGET", "").strip().lower() == "full"
MIN_REQUESTS = 10_000 if FULL else 1_500
SERVICE_EXAMPLES = 5_000 if FULL else 500
FEEDBACK_EXAMPLES = 400 if FULL else 100
GET_EXAMPLES = 300 if FULL else 60
PREFETCH_EXAMPLES = 3_800 if FULL else 400

REQUESTS: Counter[str] = Counter()  # requests sent, by operation and source
STATUSES: Counter[int] = Counter()
KINDS: Counter[str] = Counter()  # schemathesis requests by phase and generation mode
RAN: set[str] = set()

FUZZ_SETTINGS = dict(deadline=None, derandomize=True, database=None, phases=[Phase.explicit, Phase.generate],
                     suppress_health_check=list(HealthCheck), print_blob=True)


class ClosingClient(FlaskClient):
    """Buffers and closes every response as a WSGI server does, so the audit
    write deferred to response close runs (and would fail loudly) in the call."""

    def open(self, *args, **kwargs):
        kwargs.setdefault("buffered", True)
        return super().open(*args, **kwargs)


def _app(directory, **overrides):
    """Like conftest's make_app, but with no FHIR server, every bundled trial, and shared by a whole module."""
    options = dict(database=directory / "cds.sqlite3", evaluation_date=EVALUATION_DATE, allowed_fhir_servers=(),
                   trusted_clients=None, trials=tuple(load_trials()))  # every bundled trial, the completed one too
    options.update(overrides)
    app = create_app(Settings(**options))
    app.test_client_class = ClosingClient
    return app


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory):
    directory = tmp_path_factory.mktemp("fuzz")
    yield _app(directory)
    assert_no_secrets_in_files(p for p in directory.glob("*.sqlite3*") if p.is_file())


@pytest.fixture(scope="module")
def fuzz_client(fuzz_app):
    return fuzz_app.test_client()


@pytest.fixture(scope="module")
def prefetch_client(tmp_path_factory):
    """Shows every trial's card, ineligible too, so every 200 carries an evaluation to check."""
    directory = tmp_path_factory.mktemp("fuzz-prefetch")
    yield _app(directory, show_ineligible=True).test_client()
    assert_no_secrets_in_files(p for p in directory.glob("*.sqlite3*") if p.is_file())


# -- the property ----------------------------------------------------------------------------------

def check_response(method: str, path: str, status: int, content_type: str, body: bytes) -> None:
    """What every answer of the service must be, whatever it was sent."""
    assert status < 500, f"{status} for {method} {path}: {body[:500]!r}"
    assert b"Traceback (most recent call last)" not in body, body[:500]
    if method == "OPTIONS" and status == 200:
        assert body == b""  # Flask's automatic answer, with the Allow header
        return
    if status == 401 and not body:
        return  # a bare challenge (only with client JWT verification configured)
    mimetype = content_type.split(";")[0].strip()
    if 400 <= status < 500:
        assert mimetype == "application/fhir+json", (status, content_type)
        outcome = json.loads(body)
        assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"], outcome
        for issue in outcome["issue"]:
            assert issue["severity"] in ("fatal", "error", "warning", "information"), issue
            assert isinstance(issue["code"], str) and issue["code"], issue
        assert find_empty_values(outcome) == [], outcome
        return
    assert status == 200, (status, body[:300])
    assert mimetype == "application/json", content_type
    answer = json.loads(body)
    if method == "POST" and path.startswith("/cds-services/") and not path.endswith("/feedback"):
        check_cards(answer)


def check_cards(answer) -> None:
    assert set(answer) == {"cards"} and isinstance(answer["cards"], list), answer
    for card in answer["cards"]:
        assert find_empty_values(card) == [], find_empty_values(card)
        assert isinstance(card["summary"], str) and 0 < len(card["summary"]) < 140, card["summary"]
        assert card["indicator"] in ("info", "warning", "critical")
        assert card["source"]["label"]
        if "suggestions" in card:
            assert card["selectionBehavior"] in ("at-most-one", "any")
        assert all(reason["display"] for reason in card.get("overrideReasons", []))
        evaluation = card["extension"]["trial-eligibility"]
        assert len(evaluation["criteria"]) == CRITERIA[evaluation["trial"]]
        for criterion in evaluation["criteria"]:
            assert criterion["kind"] in ("inclusion", "exclusion")
            assert criterion["result"] in ("pass", "fail", "unknown", "review", "not-applicable")
            assert isinstance(criterion["reason"], str) and criterion["reason"]


# -- 1. schemathesis over the OpenAPI description --------------------------------------------------

OPENAPI = openapi_document(data_needs(load_trials().values()))  # what the fuzz app serves (checked below)
schema = schemathesis.openapi.from_dict(OPENAPI)
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], deterministic=True)
schema.config.phases.update(phases=["examples", "coverage", "fuzzing"])
# Besides the property: responses match the document (status codes, media types, schemas).
SCHEMA_CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def _send(case, app, client):
    response = case.call(app=app, session=client)
    REQUESTS[case.operation.label] += 1
    STATUSES[response.status_code] += 1
    if case.meta is not None:
        KINDS[f"{case.meta.phase.name.value}/{case.meta.generation.mode.value}"] += 1
    check_response(response.request.method, urlsplit(response.request.url).path, response.status_code,
                   (response.headers.get("content-type") or [""])[0], response.content)
    case.validate_response(response, checks=SCHEMA_CHECKS)


def test_openapi_document_is_served_and_describes_every_route(fuzz_app, fuzz_client):
    response = fuzz_client.get("/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    document = response.get_json()
    assert document == OPENAPI
    routes = {(rule.rule.replace("<service_id>", "{service_id}"), method.lower())
              for rule in fuzz_app.url_map.iter_rules() if rule.endpoint != "static"
              for method in rule.methods - {"HEAD", "OPTIONS"}}
    documented = {(path, method) for path, item in document["paths"].items() for method in item
                  if method in ("get", "put", "post", "delete", "patch")}
    assert documented == routes
    assert document["components"]["securitySchemes"]["cdsHooksJwt"]["bearerFormat"] == "JWT"
    assert document["paths"]["/healthz"]["get"]["security"] == [] == document["paths"]["/readyz"]["get"]["security"]
    # The prefetch keys it documents are the ones discovery advertises, and its example request is answered.
    advertised = fuzz_client.get("/cds-services").get_json()["services"][0]["prefetch"]
    assert set(document["components"]["schemas"]["Prefetch"]["properties"]) == set(advertised)
    example = document["paths"]["/cds-services/{service_id}"]["post"]["requestBody"]["content"][
        "application/json"]["example"]
    assert set(example["prefetch"]) == set(advertised)
    assert fuzz_client.post("/cds-services/trial-eligibility", json=example).status_code == 200


@settings(max_examples=SERVICE_EXAMPLES, **FUZZ_SETTINGS)
@schema.include(path="/cds-services/{service_id}", method="POST").parametrize()
def test_schemathesis_service_call(case, fuzz_app, fuzz_client):
    RAN.add("service")
    _send(case, fuzz_app, fuzz_client)


@settings(max_examples=FEEDBACK_EXAMPLES, **FUZZ_SETTINGS)
@schema.include(path="/cds-services/{service_id}/feedback", method="POST").parametrize()
def test_schemathesis_feedback(case, fuzz_app, fuzz_client):
    RAN.add("feedback")
    _send(case, fuzz_app, fuzz_client)


@settings(max_examples=GET_EXAMPLES, **FUZZ_SETTINGS)
@schema.include(method="GET").parametrize()
def test_schemathesis_get_operations(case, fuzz_app, fuzz_client):
    RAN.add("get")
    _send(case, fuzz_app, fuzz_client)


# -- helpers ---------------------------------------------------------------------------------------

def _set(obj, path, value):
    """Set obj[path] (segments; digits index lists), making containers on the way and
    replacing whatever is in the way."""
    *parents, last = [int(p) if isinstance(p, str) and p.isdigit() else p for p in path]
    for i, segment in enumerate(parents):
        following = (parents[i + 1:] + [last])[0]
        fresh = [] if isinstance(following, int) else {}
        if isinstance(segment, int):
            if not isinstance(obj, list):
                return
            while len(obj) <= segment:
                obj.append(copy.deepcopy(fresh))
            if not isinstance(obj[segment], type(fresh)):
                obj[segment] = fresh
            obj = obj[segment]
        else:
            if not isinstance(obj, dict):
                return
            if not isinstance(obj.get(segment), type(fresh)):
                obj[segment] = fresh
            obj = obj[segment]
    if isinstance(last, int):
        if isinstance(obj, list):
            while len(obj) <= last:
                obj.append(None)
            obj[last] = value
    elif isinstance(obj, dict):
        obj[last] = value


def _delete(obj, path):
    for segment in path[:-1]:
        obj = obj[int(segment)] if isinstance(obj, list) and segment.isdigit() and int(segment) < len(obj) else \
            obj.get(segment) if isinstance(obj, dict) else None
    if isinstance(obj, dict):
        obj.pop(path[-1], None)


# -- 2. hostile bodies -----------------------------------------------------------------------------

def _nested(depth: int, leaf=None) -> dict:
    value = leaf if leaf is not None else {"url": "https://example.org/leaf", "valueString": "x"}
    for level in range(depth):
        value = {"url": f"https://example.org/level-{level}", "extension": [value]}
    return value


def _raw(body: bytes, content_type: str = "application/json"):
    return body, content_type


def _hook(**changes) -> dict:
    request = copy.deepcopy(EDGE_REQUEST)
    for path, value in changes.items():
        _set(request, path.split("__"), value)
    return request


def _feedback(**changes) -> dict:
    body = {"feedback": [{"card": "9368d37b-283f-44a0-93ea-547cebab93ed", "outcome": "overridden",
                          "outcomeTimestamp": "2026-06-15T10:21:33Z"}]}
    for path, value in changes.items():
        _set(body["feedback"][0], path.split("__"), value)
    return body


BIG = "é" * 50_000  # 100 kB of UTF-8
EDGE_REQUEST = {"hookInstance": "0d2d6d0e-4c0e-4d39-9a43-6a1b0ad6a6f1", "hook": "patient-view",
                "context": {"userId": "Practitioner/demo", "patientId": "g001"},
                "prefetch": {"patient": None, "conditions": None, "labResults": None, "observations": None,
                             "allergies": None}}
EDGE_BODIES = {
    # name: (path, body, expected statuses); a body is a JSON value, or raw bytes and a
    # content type, or a function making one (the 20 MiB ones, made only when sent)
    "huge hookInstance": (SERVICE, _hook(hookInstance=BIG), {400}),
    "huge patientId": (SERVICE, _hook(context__patientId=BIG), {400}),
    "huge userId": (SERVICE, _hook(context__userId="Practitioner/" + BIG), {400}),
    "huge hook": (SERVICE, _hook(hook=BIG), {400}),
    "huge extension": (SERVICE, _hook(extension={"org.example": BIG * 20}), {200}),
    "huge unknown field": (SERVICE, _hook(**{"x" * 10_000: BIG}), {200}),
    "huge prefetch key": (SERVICE, _hook(prefetch__observations={"resourceType": "Bundle", "entry": [BIG] * 30}),
                          {200}),
    "huge token": (SERVICE, _hook(fhirServer="https://ehr.example.org/fhir",
                                  fhirAuthorization={"access_token": BIG * 10, "token_type": "Bearer",
                                                     "expires_in": 300, "scope": "user/*.read", "subject": BIG}),
                   {200}),
    "200-level extension": (SERVICE, _hook(extension={"org.example": _nested(200)}), {200}),
    "900-level context": (SERVICE, _hook(context__extension=_nested(450)), {200}),
    "5000-level body": (SERVICE, _raw(b'{"a":' * 5000 + b"1" + b"}" * 5000), {400}),
    "100000-level list": (SERVICE, _raw(b"[" * 100_000 + b"]" * 100_000), {400}),
    "lone surrogate": (SERVICE, _raw(b'{"hook": "patient-view", "hookInstance": "\\ud800"}'), {400}),
    "invalid UTF-8": (SERVICE, _raw(b'{"hook": "patient-view\xff\xfe"}'), {400}),
    "NUL in patientId": (SERVICE, _hook(context__patientId="g001\u0000"), {400}),
    "newline after patientId": (SERVICE, _hook(context__patientId="g001\n"), {400}),
    "newline after userId": (SERVICE, _hook(context__userId="Practitioner/demo\n"), {400}),
    "right-to-left override": (SERVICE, _hook(context__encounterId="\u202egnp.exe"), {400}),
    "emoji everywhere": (SERVICE, _hook(hook="patient-view", extension={"😀": "🏥" * 1000}), {200}),
    "big integer": (SERVICE, _raw(b'{"hook": "patient-view", "x": 1' + b"0" * 5000 + b"}"), {400}),
    "huge float": (SERVICE, _raw(b'{"hook": "patient-view", "x": 1e400}'), {400}),
    "NaN": (SERVICE, _raw(b'{"hook": NaN}'), {400}),
    "empty body": (SERVICE, _raw(b""), {400}),
    "JSON null": (SERVICE, _raw(b"null"), {400}),
    "JSON array": (SERVICE, [EDGE_REQUEST], {400}),
    "JSON string": (SERVICE, "patient-view", {400}),
    "trailing garbage": (SERVICE, _raw(json.dumps(EDGE_REQUEST).encode() + b"}"), {400}),
    "duplicate keys": (SERVICE, _raw(b'{"hook": 1, "hook": "patient-view"}'), {400}),
    "text/plain": (SERVICE, _raw(json.dumps(EDGE_REQUEST).encode(), "text/plain"), {415}),
    "no content type": (SERVICE, _raw(json.dumps(EDGE_REQUEST).encode(), ""), {415}),
    "form": (SERVICE, _raw(b"hook=patient-view", "application/x-www-form-urlencoded"), {415}),
    "charset parameter": (SERVICE, _raw(json.dumps(EDGE_REQUEST).encode(), "application/json; charset=utf-8"),
                          {200}),
    "over the size limit": (SERVICE, lambda: _raw(b" " * (20 * 1024 * 1024 + 1)), {413}),
    "feedback: huge card": (FEEDBACK, _feedback(card=BIG), {400}),
    "feedback: huge comment": (FEEDBACK, _feedback(overrideReason={"userComment": BIG * 10}), {200}),
    "feedback: NUL card": (FEEDBACK, _feedback(card="c\u0000"), {400}),  # a card id is a UUID
    "feedback: 101 items": (FEEDBACK, {"feedback": _feedback()["feedback"] * 101}, {400}),
    "feedback: 100 items": (FEEDBACK, {"feedback": _feedback()["feedback"] * 100}, {200}),
    "feedback: deep reason": (FEEDBACK, _feedback(overrideReason={"reason": {"code": "x", "extension": _nested(200)}}),
                              {200}),
    "feedback: year 0": (FEEDBACK, _feedback(outcomeTimestamp="0000-01-01T00:00:00Z"), {400}),
    "feedback: year 9999 +14": (FEEDBACK, _feedback(outcomeTimestamp="9999-12-31T23:59:59+14:00"), {200}),
    "feedback: leap second": (FEEDBACK, _feedback(outcomeTimestamp="2026-06-30T23:59:60Z"), {400}),
    "feedback: huge suggestions": (FEEDBACK, _feedback(outcome="accepted", acceptedSuggestions=[{"id": BIG}] * 50),
                                   {400}),  # a suggestion id is a UUID
    "feedback: many suggestions": (FEEDBACK, _feedback(outcome="accepted", acceptedSuggestions=[
        {"id": "0b6f1e0a-3c5e-4a57-9d1b-6a8f0c2e4d11"}] * 50), {200}),
    "feedback: not JSON": (FEEDBACK, _raw(b"{feedback}"), {400}),
    "feedback: over the size limit": (FEEDBACK, lambda: _raw(b"[" + b"1," * (10 * 1024 * 1024) + b"1]"), {413}),
}


@pytest.mark.parametrize("name", list(EDGE_BODIES))
def test_hostile_bodies(name, fuzz_client):
    RAN.add("hostile")
    path, body, expected = EDGE_BODIES[name]
    if callable(body):
        body = body()
    if isinstance(body, tuple):
        data, content_type = body
    else:
        data, content_type = json.dumps(body).encode(), "application/json"
    response = fuzz_client.post(path, data=data, headers={"Content-Type": content_type} if content_type else {})
    REQUESTS[f"POST {path} (hostile bodies)"] += 1
    STATUSES[response.status_code] += 1
    check_response("POST", path, response.status_code, response.content_type or "", response.get_data())
    assert response.status_code in expected, (response.status_code, response.get_data()[:300])


# -- 3. valid hook requests, malformed FHIR in prefetch --------------------------------------------

ELIGIBLE = demo("eligible")
PATIENT_ID = ELIGIBLE["context"]["patientId"]
BUNDLE_KEYS = sorted(k for k, v in ELIGIBLE["prefetch"].items() if k != "patient")
# Where a resource sits: ("patient", None) or (bundle key, entry index).
TARGETS = [("patient", None)] + [(key, i) for key in BUNDLE_KEYS
                                 for i in range(len(ELIGIBLE["prefetch"][key]["entry"]))]
OBSERVATIONS = [t for t in TARGETS if t[0] in ("labResults", "observations")]
FIELDS = [
    "resourceType", "id", "status", "subject", "subject.reference", "patient", "patient.reference",
    "code", "code.coding", "code.coding.0", "code.coding.0.system", "code.coding.0.code", "code.text",
    "valueQuantity", "valueQuantity.value", "valueQuantity.unit", "valueQuantity.code", "valueQuantity.system",
    "valueQuantity.comparator", "valueCodeableConcept", "valueCodeableConcept.coding",
    "valueCodeableConcept.coding.0.code", "valueString", "valueInteger", "valueBoolean", "valueRange",
    "effectiveDateTime", "effectivePeriod", "effectivePeriod.start", "effectiveInstant", "issued",
    "onsetDateTime", "onsetPeriod", "onsetString", "recordedDate", "abatementDateTime",
    "clinicalStatus", "clinicalStatus.coding", "clinicalStatus.coding.0.code", "verificationStatus",
    "verificationStatus.coding.0.code", "referenceRange", "referenceRange.0", "referenceRange.0.high",
    "referenceRange.0.high.value", "referenceRange.0.high.unit", "referenceRange.0.low.value",
    "referenceRange.0.type", "interpretation", "component", "component.0.valueQuantity.value",
    "category", "category.0.coding", "criticality", "type", "reaction", "reaction.0.substance",
    "reaction.0.manifestation", "birthDate", "gender", "deceasedBoolean", "deceasedDateTime", "extension",
    "meta", "meta.lastUpdated", "specimen", "specimen.reference", "result", "result.0.reference",
    "conclusion", "conclusionCode", "collection.collectedDateTime", "note", "text", "identifier", "bodySite",
    "stage", "evidence", "hasMember", "derivedFrom", "dataAbsentReason", "name", "active",
]
ODD_TEXT = ["", " ", "NaN", "Infinity", "-Infinity", "1e400", "-0", "0x10", "1,5", "١٢٣", "½", "1.5e3", "3.2 ",
            "2026-13-45", "2026-02-30", "2026-02-30T25:61:00Z", "0000-00-00", "0001-01-01", "9999-12-31T23:59:59+14:00",
            "2026", "2026-06", "2026-06-15T10:00", "2026-06-15T10:00:00", "T", "--", "\x00", "\u202e", "\ud7ff",
            "null", "true", "[]", "{}", "<b>", "**x**", "{{context.patientId}}", "Patient/g002", "Patient/",
            "Patient/g001/_history/1", "urn:uuid:x", "final", "entered-in-error", "C50.9", "10*3/uL", "10*9/L",
            "mg/dL", "%", "[IU]/L", "{cells}/uL", "http://loinc.org", "http://unitsofmeasure.org", "<", ">=",
            "active", "confirmed", "refuted", "unknown"]
# Numbers a FHIR decimal may carry, as JSON numbers or strings: extremes of binary floating point,
# exponents far beyond it, thousands of digits.
NUMBERS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False), st.integers(min_value=-(2 ** 63), max_value=2 ** 63 - 1),
    st.sampled_from([0, -0.0, 1e308, -1e308, 5e-324, 2.2250738585072014e-308, 1e16 + 1, 0.1 + 0.2]),
    st.sampled_from(["1e400", "-1e400", "1e-400", "1e999999", "1e-999999", "1e99999999", "-1e99999999",
                     "1" * 5000, "0." + "0" * 5000 + "1", "1E+2", "+1", "1.", ".5", "0x1A", "NaN", "-Infinity"]),
)
UNIT_TEXT = st.sampled_from(["10*3/uL", "10*9/L", "/uL", "g/dL", "g/L", "mmol/L", "U/L", "[IU]/L", "mg/dL",
                             "umol/L", "%", "1", "", " ", "10*400/L", "10*-400/L", "10*308.U/L", "10*-308.U/L",
                             "m/s", "{cells}/uL", "K/uL", "kU/L", "mU/mL", "[iU]/L", "(", "10.*3/uL", "\x00"])
NUMBER_FIELDS = ["valueQuantity.value", "referenceRange.0.high.value", "referenceRange.0.low.value",
                 "component.0.valueQuantity.value"]
UNIT_FIELDS = ["valueQuantity.unit", "valueQuantity.code", "valueQuantity.system", "referenceRange.0.high.unit",
               "referenceRange.0.high.code", "referenceRange.0.high.system"]
DATE_FIELDS = ["effectiveDateTime", "effectiveInstant", "effectivePeriod.start", "effectivePeriod.end", "issued",
               "onsetDateTime", "onsetPeriod.start", "recordedDate", "abatementDateTime", "birthDate",
               "deceasedDateTime", "meta.lastUpdated"]
DATES = st.one_of(
    st.sampled_from(["0001", "0001-01", "0001-01-01", "0001-01-01T00:00:00+14:00", "9999", "9999-12", "9999-12-31",
                     "9999-12-31T23:59:59-12:00", "2026", "2026-06", "2026-06-15", "2026-06-15T00:00:00Z",
                     "2026-06-15T23:59:59.999999999+14:00", "2026-06-16T00:00:00-12:00", "2026-02-29", "2024-02-29",
                     "2026-06-15T24:00:00Z", "2026-06-15T10:00:00", "2026-06-15T10:00Z", "20260615", "-2026-06-15",
                     "+2026-06-15", "2026-6-1", "1970-01-01T00:00:00Z", "2038-01-19T03:14:08Z", "10000-01-01"]),
    st.dates().map(str), st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, st.sampled_from(ODD_TEXT), st.text(max_size=20))
HUGE = st.sampled_from(["x" * 100_000, "1" * 100_000, "😀" * 25_000])  # 100 kB; kept out of JUNK: Hypothesis
# holds on to what it drew for its cached examples, and 100 kB leaves in nested junk cost ~1 GB over a run
JUNK = st.recursive(SCALARS, lambda children: st.lists(children, max_size=4)
                    | st.dictionaries(st.sampled_from(FIELDS + ["", "x"]), children, max_size=4), max_leaves=8)
RESOURCE_TYPES = ["Patient", "Observation", "Condition", "AllergyIntolerance", "DiagnosticReport", "Specimen",
                  "OperationOutcome", "Bundle", "Encounter", "", "observation", 7, None, ["Observation"]]


def _resource(prefetch, target):
    key, index = target
    if index is None:
        return prefetch.get("patient")
    bundle = prefetch.get(key)
    entries = bundle.get("entry") if isinstance(bundle, dict) else None
    if isinstance(entries, list) and index < len(entries) and isinstance(entries[index], dict):
        return entries[index].get("resource")
    return None


# A mutation: (kind, where, what). Those that may leave required data unusable allow a 412.
SET = st.tuples(st.just("set"), st.sampled_from(TARGETS), st.tuples(st.sampled_from(FIELDS), JUNK))
MUTATIONS = st.one_of(
    SET, SET, SET,  # wrong types for fields: the most likely way real data goes wrong
    st.tuples(st.just("set"), st.sampled_from(OBSERVATIONS), st.tuples(st.sampled_from(NUMBER_FIELDS), NUMBERS)),
    st.tuples(st.just("set"), st.sampled_from(OBSERVATIONS), st.tuples(st.sampled_from(UNIT_FIELDS), UNIT_TEXT)),
    st.tuples(st.just("set"), st.sampled_from(TARGETS), st.tuples(st.sampled_from(DATE_FIELDS), DATES)),
    st.tuples(st.just("set"), st.sampled_from(TARGETS), st.tuples(st.sampled_from(FIELDS), HUGE)),
    st.tuples(st.just("delete"), st.sampled_from(TARGETS), st.sampled_from(FIELDS)),
    st.tuples(st.just("retype"), st.sampled_from(TARGETS), st.sampled_from(RESOURCE_TYPES)),
    st.tuples(st.just("foreign"), st.sampled_from(TARGETS), st.sampled_from(["g002", "Patient/g002", "g001x", ""])),
    st.tuples(st.just("deep"), st.sampled_from(TARGETS), st.integers(min_value=1, max_value=200)),
    st.tuples(st.just("not-a-resource"), st.sampled_from(TARGETS), JUNK),
    st.tuples(st.just("duplicate"), st.sampled_from(TARGETS[1:]), st.integers(min_value=2, max_value=60)),
    st.tuples(st.just("junk-entries"), st.sampled_from(BUNDLE_KEYS), st.lists(JUNK, min_size=1, max_size=5)),
    st.tuples(st.just("entry-not-a-list"), st.sampled_from(BUNDLE_KEYS),
              JUNK.filter(lambda v: not isinstance(v, list))),
    st.tuples(st.just("bundle-field"), st.sampled_from(BUNDLE_KEYS),
              st.tuples(st.sampled_from(["type", "total", "link", "meta", "id", "timestamp"]), JUNK)),
    st.tuples(st.just("next-link"), st.sampled_from(BUNDLE_KEYS), st.sampled_from(
        ["https://ehr.example.org/fhir?page=2", "javascript:alert(1)", "", "//evil.example/x"])),
    st.tuples(st.just("replace-key"), st.sampled_from(["patient"] + BUNDLE_KEYS), st.one_of(
        JUNK, st.just({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}))),
)


def _apply(request, mutation) -> bool:
    """Apply one mutation in place; True when it may legitimately make required data unusable."""
    kind, where, what = mutation
    prefetch = request["prefetch"]
    if kind in ("set", "delete", "retype", "foreign", "deep", "not-a-resource", "duplicate"):
        resource = _resource(prefetch, where)
        if not isinstance(resource, dict):
            return False
        patient = where[1] is None
        if kind == "set":
            field, value = what
            _set(resource, field.split("."), value)
            return patient and field in ("id", "resourceType") or field == "resourceType"
        if kind == "delete":
            _delete(resource, what.split("."))
            return patient and what in ("id", "resourceType")
        if kind == "retype":
            resource["resourceType"] = what
            return True
        if kind == "foreign":
            if patient:
                resource["id"] = what.removeprefix("Patient/")
                return True
            for field in ("subject", "patient"):
                if field in resource:
                    resource[field] = {"reference": what}
            return False
        if kind == "deep":
            resource["extension"] = [_nested(what)]
            return False
        if kind == "not-a-resource":
            if patient:
                prefetch["patient"] = what
            else:
                prefetch[where[0]]["entry"][where[1]]["resource"] = what
            return True
        if kind == "duplicate":
            entries = prefetch[where[0]].get("entry")
            if isinstance(entries, list) and where[1] < len(entries):
                entries.extend(copy.deepcopy(entries[where[1]]) for _ in range(what))
            return False
    bundle = prefetch.get(where)
    if kind == "replace-key":
        prefetch[where] = what
        return True
    if not isinstance(bundle, dict):
        return False
    if kind == "junk-entries":
        entries = bundle.get("entry")
        if isinstance(entries, list):
            entries.extend(what)
        return True  # an entry can be an OperationOutcome
    if kind == "entry-not-a-list":
        bundle["entry"] = what
        return True
    if kind == "bundle-field":
        field, value = what
        bundle[field] = value
        return field == "link"
    if kind == "next-link":
        bundle["link"] = [{"relation": "next", "url": what}]
        return True
    raise AssertionError(kind)


@settings(max_examples=PREFETCH_EXAMPLES, **FUZZ_SETTINGS)
@given(mutations=st.lists(MUTATIONS, min_size=1, max_size=5), hook_instance=st.uuids(),
       encounter=st.sampled_from([None, "enc-1"]))
def test_malformed_fhir_in_prefetch_never_breaks_the_service(prefetch_client, mutations, hook_instance, encounter):
    RAN.add("prefetch")
    request = copy.deepcopy(ELIGIBLE)
    request["hookInstance"] = str(hook_instance)
    if encounter:
        request["context"]["encounterId"] = encounter
    may_412 = False
    for mutation in mutations:
        may_412 |= _apply(request, mutation)
    response = prefetch_client.post(SERVICE, data=json.dumps(request, allow_nan=False),
                                    content_type="application/json")
    REQUESTS["POST /cds-services/{service_id} (malformed FHIR in prefetch)"] += 1
    STATUSES[response.status_code] += 1
    body = response.get_data()
    check_response("POST", SERVICE, response.status_code, response.content_type, body)
    # 412 only when a mutation could leave required data unusable; otherwise the data is there
    assert response.status_code in ((200, 412) if may_412 else (200,)), body[:500]
    if response.status_code == 200:
        cards = json.loads(body)["cards"]
        assert len(cards) == len(CRITERIA)  # show_ineligible: one card per trial, whatever the data
        evaluation = cards[0]["extension"]["trial-eligibility"]  # its 16 criteria checked above
        assert evaluation.get("patient", PATIENT_ID) == PATIENT_ID  # absent when the Patient is null
        assert evaluation["asOf"] == EVALUATION_DATE.isoformat()


# -- last: the count -------------------------------------------------------------------------------

def test_zz_enough_requests_were_sent():
    """Last in the module: everything above sent at least MIN_REQUESTS requests."""
    if RAN != {"service", "feedback", "get", "hostile", "prefetch"}:
        pytest.skip(f"only part of the module ran ({', '.join(sorted(RAN)) or 'nothing'}); counts need a full run")
    total = sum(REQUESTS.values())
    print(f"\nfuzz: {total} requests")
    for label, count in sorted(REQUESTS.items()):
        print(f"  {count:6d}  {label}")
    print("schemathesis cases by phase/mode: " + ", ".join(f"{k} {v}" for k, v in sorted(KINDS.items())))
    print("statuses: " + ", ".join(f"{k}: {v}" for k, v in sorted(STATUSES.items())))
    assert total >= MIN_REQUESTS, f"only {total} requests"
