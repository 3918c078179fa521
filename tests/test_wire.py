"""The wire format typed once: /openapi.json is generated from the models (hooks/wire.py
for what the service writes, hooks/validation.py for what clients send), and what the
service writes — every card the renderer makes for the gold and demo patients, real hook
answers, discovery, feedback, health and the errors — validates against those models
(pydantic) and against the JSON Schema of the served document (jsonschema_rs)."""

from __future__ import annotations

import copy
import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import jsonschema_rs
import orjson
import pytest
from fhir.resources.R4B.operationoutcome import OperationOutcome as FhirOperationOutcome
from fhir.resources.R4B.servicerequest import ServiceRequest
from pydantic import TypeAdapter, ValidationError

from cds_service.cards import CardContext, CardRenderer
from cds_service.demo import DEMO_PATIENTS, RECORDED_AS_OF, demo_patients, hook_request
from cds_service.engine import PatientRecord, evaluate
from cds_service.fhir.bundles import entries_of, group_by_patient, patient_groups_from_bytes
from cds_service.hooks import wire
from cds_service.hooks.openapi import RESPONSES, component_schemas, openapi_document
from hookdata import SPEC_EXAMPLE

GOLD = Path(__file__).parent / "gold"
SERVICE = "/cds-services/trial-eligibility"
FEEDBACK = f"{SERVICE}/feedback"
REF = "#/components/schemas/"


def validator(document: dict[str, Any], schema: dict[str, Any]) -> jsonschema_rs.Draft202012Validator:
    """A validator for `schema`, its $refs resolved in `document` (formats asserted too)."""
    return jsonschema_rs.Draft202012Validator({**schema, "components": document["components"]},
                                              validate_formats=True)


def component(document: dict[str, Any], name: str) -> jsonschema_rs.Draft202012Validator:
    return validator(document, {"$ref": REF + name})


def on_the_wire(value: Any) -> Any:
    return orjson.loads(orjson.dumps(value))


@pytest.fixture(scope="module")
def document(trials) -> dict[str, Any]:
    from cds_service.fhir.needs import data_needs
    return openapi_document(data_needs(trials.values()))


# -- the document ----------------------------------------------------------------------------------

def test_the_served_document_is_the_one_generated_from_the_models(make_app):
    app = make_app()
    served = app.test_client().get("/openapi.json")
    assert served.status_code == 200 and served.mimetype == "application/json"
    assert served.get_json() == on_the_wire(openapi_document(app.extensions["trial_eligibility"].needs))
    # Every schema is a model's, but for the prefetch object, whose keys are the service's.
    schemas = served.get_json()["components"]["schemas"]
    models = on_the_wire(component_schemas())
    assert set(schemas) == set(models) | {"Prefetch"}
    assert all(schemas[name] == models[name] for name in models if name != "HookRequest")
    assert schemas["HookRequest"]["properties"]["prefetch"] == {"$ref": REF + "Prefetch"}
    assert set(schemas["Prefetch"]["properties"]) == set(app.extensions["trial_eligibility"].queries)


def test_every_reference_resolves_and_every_shape_says_whether_it_is_open(document):
    schemas = document["components"]["schemas"]

    def refs(node):
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                yield node["$ref"]
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    found = set(refs(document))
    assert found, "no reference at all"
    for ref in found:
        kind, _, name = ref.removeprefix("#/components/").partition("/")
        assert name in document["components"][kind], ref
    # What clients send is open (the spec lets them add fields); what the service writes is closed,
    # FHIR resources inside it (a suggestion's ServiceRequest) apart.
    client_written = {"HookRequest", "FhirAuthorization", "PatientViewContext", "FeedbackRequest", "FeedbackItem",
                      "AcceptedSuggestion", "OverrideReason", "Coding"}
    for name, schema in schemas.items():
        if schema.get("type") != "object" or name == "Prefetch":
            continue
        assert schema["additionalProperties"] is (name in client_written or name == "FhirResource"), name
    assert {m.__name__ for m in RESPONSES} <= set(schemas)


def test_the_documented_requests_accept_what_clients_send(document):
    request = component(document, "HookRequest")
    for name in DEMO_PATIENTS:
        request.validate(hook_request(name))
    spec_example = copy.deepcopy(SPEC_EXAMPLE)
    request.validate(spec_example)
    example = document["paths"]["/cds-services/{service_id}"]["post"]["requestBody"]["content"]["application/json"]
    request.validate(example["example"])
    feedback = document["paths"]["/cds-services/{service_id}/feedback"]["post"]["requestBody"]["content"]
    component(document, "FeedbackRequest").validate(feedback["application/json"]["example"])
    assert not request.is_valid({**hook_request("eligible"), "hookInstance": "not-a-uuid"})
    assert not request.is_valid({**hook_request("eligible"), "fhirServer": None})  # never null (§Use of JSON)


# -- cards -----------------------------------------------------------------------------------------

CARD = TypeAdapter(wire.Card)


def _patients() -> list[tuple[str, PatientRecord, dt.date]]:
    """Every gold patient (every set, each on its own date) and every demo patient."""
    import yaml
    out = []
    for folder, expectations in (("patients", "expectations.yaml"), ("real-shapes", "real-shapes.yaml"),
                                 ("nct01325207", "nct01325207.yaml")):
        as_of = dt.date.fromisoformat(yaml.safe_load((GOLD / expectations).read_text(encoding="utf-8"))["asOf"])
        for path in sorted((GOLD / folder).glob("*.json")):
            for group in patient_groups_from_bytes(path.read_bytes()):
                out.append((f"{folder}/{path.name}", PatientRecord(group.resources, group.full_urls), as_of))
    for group in group_by_patient(entries_of(demo_patients())):
        out.append((f"demo/{group.patient_key}", PatientRecord(group.resources, group.full_urls), RECORDED_AS_OF))
    return out


@pytest.fixture(scope="module")
def rendered(trials) -> list[tuple[str, dict[str, Any]]]:
    """The card of every trial for every patient, ineligible ones too, as it goes on the wire."""
    renderer = CardRenderer(show_ineligible=True)
    cards = []
    for name, record, as_of in _patients():
        for trial in trials.values():
            evaluation = evaluate(trial, record, as_of)
            context = CardContext(evaluation.patient or "no-patient", "Practitioner/p-1", "enc-1")
            cards.append((name, on_the_wire(renderer.render(trial, evaluation, context))))
    return cards


def test_every_card_for_the_gold_and_demo_patients_is_a_card(rendered, document):
    assert len(rendered) >= 100
    schema = component(document, "Card")
    statuses, with_suggestions = set(), 0
    for name, card in rendered:
        CARD.validate_python(card)
        errors = [e.message for e in schema.iter_errors(card)]
        assert not errors, (name, errors)
        for suggestion in card.get("suggestions", []):
            for action in suggestion["actions"]:
                ServiceRequest.model_validate(action["resource"])  # the resource is valid FHIR R4B
        statuses.add(card["extension"]["trial-eligibility"]["status"])
        with_suggestions += "suggestions" in card
    assert statuses == {"eligible", "needs-data", "ineligible"} and with_suggestions


def test_a_field_the_models_do_not_name_or_a_null_is_refused(rendered, document):
    _, card = next((n, c) for n, c in rendered if "suggestions" in c and any(
        "evidence" in k for k in c["extension"]["trial-eligibility"]["criteria"]))
    schema = component(document, "Card")

    def changed(edit) -> dict:
        copied = copy.deepcopy(card)
        edit(copied)
        return copied

    CARD.validate_python(card)
    assert schema.is_valid(card)
    bad = [changed(lambda c: c.update(note="new")),
           changed(lambda c: c.update(detail=None)),
           changed(lambda c: c["source"].update(icon="https://example.org/i.png")),
           changed(lambda c: c["suggestions"][0].update(extra=True)),
           changed(lambda c: c["extension"].update(other={})),
           changed(lambda c: c["extension"]["trial-eligibility"]["criteria"][0].update(score=1)),
           changed(lambda c: next(k for k in c["extension"]["trial-eligibility"]["criteria"]
                                  if "evidence" in k)["evidence"][0].update(weight=1)),
           changed(lambda c: c.update(summary="x" * 140)),
           changed(lambda c: c["extension"]["trial-eligibility"]["criteria"][0].update(result="maybe"))]
    for value in bad:
        assert not schema.is_valid(value)
        with pytest.raises(ValidationError):
            CARD.validate_python(value)
    # Suggestions without selectionBehavior: a rule the JSON Schema states (dependentRequired).
    assert not schema.is_valid(changed(lambda c: c.pop("selectionBehavior")))


# -- what the service answers ----------------------------------------------------------------------

def _response_schema(document, path: str, method: str, status: int, media: str):
    response = document["paths"][path][method]["responses"][str(status)]
    if "$ref" in response:
        response = document["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    return validator(document, response["content"][media]["schema"])


@pytest.mark.parametrize("name", list(DEMO_PATIENTS))
def test_a_real_hook_answer_is_a_response_of_cards(make_app, name):
    client = make_app(show_ineligible=True).test_client()
    document = client.get("/openapi.json").get_json()
    answer = client.post(SERVICE, json=hook_request(name))
    assert answer.status_code == 200
    body = answer.get_json()
    assert len(body["cards"]) == 1
    TypeAdapter(wire.CdsServiceResponse).validate_python(body)
    _response_schema(document, "/cds-services/{service_id}", "post", 200, "application/json").validate(body)


def test_discovery_feedback_and_operations_answer_their_models(make_app):
    client = make_app().test_client()
    document = client.get("/openapi.json").get_json()
    answers = [
        ("/cds-services", "get", client.get("/cds-services"), wire.DiscoveryResponse),
        ("/healthz", "get", client.get("/healthz"), wire.Health),
        ("/readyz", "get", client.get("/readyz"), wire.Readiness),
        ("/cds-services/{service_id}/feedback", "post", client.post(FEEDBACK, json={"feedback": [{
            "card": str(uuid.uuid4()), "outcome": "overridden", "outcomeTimestamp": "2026-06-15T10:21:33Z",
            "overrideReason": {"userComment": "seen"}}]}), wire.FeedbackResult),
    ]
    for path, method, answer, model in answers:
        assert answer.status_code == 200 and answer.mimetype == "application/json", path
        TypeAdapter(model).validate_python(answer.get_json())
        _response_schema(document, path, method, 200, "application/json").validate(answer.get_json())
    assert answers[0][2].get_json()["services"][0]["prefetch"]


def test_every_error_is_a_documented_operation_outcome(make_app):
    client = make_app().test_client()
    document = client.get("/openapi.json").get_json()
    call, feedback = "/cds-services/{service_id}", "/cds-services/{service_id}/feedback"
    no_data = hook_request("eligible")
    del no_data["prefetch"]["labResults"]
    errors = [
        (call, "post", client.post(SERVICE, json={"hook": "patient-view"}), 400),
        (call, "post", client.post(SERVICE, json={**hook_request("eligible"), "hook": "order-sign"}), 400),
        (call, "post", client.post(SERVICE, data=b"{", content_type="application/json"), 400),
        (call, "post", client.post("/cds-services/nope", json=hook_request("eligible")), 404),
        (call, "post", client.get(SERVICE), 405),  # documented with the route's one operation
        (call, "post", make_app(max_request_bytes=4096).test_client().post(
            SERVICE, data=b"x" * 5000, content_type="application/json"), 413),
        (call, "post", client.post(SERVICE, data=b"{}", content_type="text/plain"), 415),
        (feedback, "post", client.post(FEEDBACK, json={"feedback": [{"outcome": "maybe"}]}), 400),
        (feedback, "post", client.post(FEEDBACK, json={"feedback": "no"}), 400),
        (call, "post", client.post(SERVICE, json=no_data), 412),
    ]
    outcome = TypeAdapter(wire.OperationOutcome)
    for path, method, answer, status in errors:
        assert answer.status_code == status and answer.mimetype == "application/fhir+json", (path, status)
        body = answer.get_json()
        outcome.validate_python(body)
        FhirOperationOutcome.model_validate(body)  # and valid FHIR R4B
        _response_schema(document, path, method, status, "application/fhir+json").validate(body)
    assert any(len(a.get_json()["issue"]) > 1 for *_, a, _ in errors)  # one issue per problem


def test_every_issue_type_the_service_maps_a_status_to_is_a_fhir_issue_type():
    from typing import get_args

    from cds_service.hooks.responses import ISSUE_TYPES
    assert set(ISSUE_TYPES.values()) <= set(get_args(wire.IssueType))
    assert {"invalid", "not-found", "transient", "login"} <= set(get_args(wire.IssueType))
