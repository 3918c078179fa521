"""/openapi.json, generated once at start-up from the wire models: what clients send
(hooks/validation.py) and what the service writes (hooks/wire.py), as their JSON Schema
(pydantic) in components/schemas, and a path for every route.

The routes, their statuses and the texts for integrators are written here; every
schema comes from a model, except the prefetch object, whose keys are the enabled
trials' data needs (the keys discovery advertises).
"""

from __future__ import annotations

import copy
import functools
from typing import Any, Iterable

from pydantic import TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from .. import __version__
from ..fhir.needs import DataNeed
from ..fhir.queries import Read
from .discovery import HOOK, SERVICE_ID
from .responses import FHIR_JSON
from .validation import FeedbackRequest, HookRequest
from .wire import CdsServiceResponse, DiscoveryResponse, FeedbackResult, Health, OperationOutcome, Readiness

REF = "#/components/schemas/{model}"
JSON = "application/json"
REQUESTS = (HookRequest, FeedbackRequest)
RESPONSES = (CdsServiceResponse, DiscoveryResponse, FeedbackResult, Health, Readiness, OperationOutcome)


class WireSchema(GenerateJsonSchema):
    """Pydantic's JSON Schema, less what would mislead a reader of the wire format: no
    title on every property, and an optional field is absent, never null (CDS Hooks 2.0
    §Use of JSON), though the request models accept a null for one."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        if schema.get("default", ...) is None:
            return self.generate_inner(schema["schema"])
        return super().default_schema(schema)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def component_schemas() -> dict[str, Any]:
    """The JSON Schema of every wire model, by name, referring to each other as
    #/components/schemas/<name>."""
    return copy.deepcopy(_component_schemas())


@functools.lru_cache(maxsize=1)  # the models do not change; pydantic takes ~25 ms to describe them
def _component_schemas() -> dict[str, Any]:
    inputs = [(m, "validation", TypeAdapter(m)) for m in REQUESTS] + \
             [(m, "serialization", TypeAdapter(m)) for m in RESPONSES]
    _, defs = TypeAdapter.json_schemas(inputs, ref_template=REF, schema_generator=WireSchema)
    return defs["$defs"]


def _prefetch_schema(needs: Iterable[DataNeed]) -> dict[str, Any]:
    properties = {}
    for need in needs:
        answer = f"the {need.resource_type}" if isinstance(need.query, Read) else \
            f"a searchset Bundle of {need.resource_type} resources (a `next` link means more pages)"
        use = "required: when neither prefetch nor the FHIR server gives it, the answer is 412" if need.required \
            else "optional: never a 412"
        properties[need.key] = {"description": f"What the `{need.key}` template from discovery returned: {answer}; "
                                               f"an OperationOutcome when the query failed, or null for no data ({use})."}
    return {"type": "object", "properties": properties, "additionalProperties": {"description": "Ignored."},
            "description": "Prefetched data keyed by the template keys from discovery. An absent key means the client "
                           "did not satisfy the template; a value that is not a usable FHIR resource is treated as "
                           "absent. Other keys are ignored."}


def _example_request(needs: Iterable[DataNeed]) -> dict[str, Any]:
    patient = "example-patient"
    prefetch = {n.key: {"resourceType": "Patient", "id": patient, "gender": "female", "birthDate": "1978-03-02"}
                if isinstance(n.query, Read) else {"resourceType": "Bundle", "type": "searchset", "total": 0,
                                                   "entry": []} if n.required else None for n in needs}
    return {"hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea", "hook": HOOK,
            "context": {"userId": "Practitioner/example", "patientId": patient}, "prefetch": prefetch}


FEEDBACK_EXAMPLE = {"feedback": [{"card": "9368d37b-283f-44a0-93ea-547cebab93ed", "outcome": "accepted",
                                  "acceptedSuggestions": [{"id": "e56e1945-20b3-4393-8503-a1a20fd73152"}],
                                  "outcomeTimestamp": "2026-06-15T10:21:33Z"}]}

# The error answers: (name, description, header sent with it or None). Every one is an OperationOutcome.
ERRORS: dict[int, tuple[str, str, tuple[str, str] | None]] = {
    400: ("BadRequest", "The body is not valid JSON, or breaks the CDS Hooks 2.0 request format (one issue per "
          "problem; `expression` names the field), or asks for a hook this service does not answer.", None),
    401: ("Unauthorized", "Client JWT verification is configured and the request carries no valid CDS Client JWT. "
          "The OperationOutcome does not say what was wrong with the token (the service log does).",
          ("WWW-Authenticate", "The bearer challenge.")),
    404: ("NotFound", "No CDS service with that id.", None),
    405: ("MethodNotAllowed", "The method is not supported on this path.", ("Allow", "The methods the path supports.")),
    412: ("PreconditionFailed", "Required FHIR data could not be obtained, neither from prefetch nor from the FHIR "
          "server (CDS Hooks 2.0 §Prefetch: SHALL respond 412). One issue per missing prefetch key; `expression` is "
          "`prefetch.<key>`.", None),
    413: ("PayloadTooLarge", "The body is larger than the configured limit (CDS_MAX_REQUEST_BYTES).", None),
    415: ("UnsupportedMediaType", "The body is not declared as JSON (Content-Type must be application/json or "
          "application/fhir+json).", None),
    503: ("ServiceUnavailable", "A dependency is unavailable: the JWT replay store (authentication fails closed) or, "
          "for readiness, the database.", None),
}


def _error_responses() -> dict[str, Any]:
    out = {}
    for name, description, header in ERRORS.values():
        response: dict[str, Any] = {"description": description,
                                    "content": {FHIR_JSON: {"schema": _ref("OperationOutcome")}}}
        if header is not None:
            response["headers"] = {header[0]: {"description": header[1], "schema": {"type": "string"}}}
        out[name] = response
    return out


def _operation(operation_id: str, tag: str, summary: str, ok: tuple[str, dict[str, Any]], errors: Iterable[int], *,
               description: str | None = None, body: tuple[str, dict[str, Any]] | None = None,
               open_: bool = False) -> dict[str, Any]:
    """One operation: its 200 (description, schema) and the error statuses it may answer."""
    operation: dict[str, Any] = {"operationId": operation_id, "tags": [tag], "summary": summary}
    if description:
        operation["description"] = description
    if open_:
        operation["security"] = []
    if body is not None:
        model, example = body
        operation["requestBody"] = {"required": True, "content": {
            JSON: {"schema": _ref(model), "example": example}, FHIR_JSON: {"schema": _ref(model)}}}
    responses: dict[str, Any] = {"200": {"description": ok[0], "content": {JSON: {"schema": ok[1]}}}}
    for status in errors:
        responses[str(status)] = {"$ref": f"#/components/responses/{ERRORS[status][0]}"}
    operation["responses"] = responses
    return operation


def openapi_document(needs: list[DataNeed]) -> dict[str, Any]:
    """The OpenAPI 3.1 description of the service whose data needs are `needs`."""
    schemas = component_schemas()
    schemas["Prefetch"] = _prefetch_schema(needs)
    schemas["HookRequest"]["properties"]["prefetch"] = _ref("Prefetch")
    service_id = {"name": "service_id", "in": "path", "required": True, "schema": {"type": "string",
                  "enum": [SERVICE_ID]}, "example": SERVICE_ID,
                  "description": f"The `id` of a service from discovery. This server offers one: `{SERVICE_ID}`; "
                                 f"any other id is 404."}
    paths = {
        "/cds-services": {"get": _operation(
            "discovery", "cds-hooks", "Discovery: the CDS services this server offers (CDS Hooks 2.0 §Discovery).",
            ("The services, with the prefetch templates they want.", _ref("DiscoveryResponse")), (401, 405, 503))},
        "/cds-services/{service_id}": {"parameters": [service_id], "post": _operation(
            "callService", "cds-hooks", f"Call the CDS service with a {HOOK} hook request (CDS Hooks 2.0 §Calling a "
            "CDS Service).", ("Cards: one `info` card per trial the patient may qualify for or that needs data to "
                              "decide (`{\"cards\": []}` when there is no guidance).", _ref("CdsServiceResponse")),
            (400, 401, 404, 405, 412, 413, 415, 503), body=("HookRequest", _example_request(needs)), description=(
                "Data comes from `prefetch` first; a prefetch key that is absent, unusable (not a FHIR resource, an "
                "OperationOutcome, another patient's record) or paginated is fetched from `fhirServer` when that "
                "server is on the service's allowlist and `fhirAuthorization` grants the read. A key set to `null` "
                "means the client found no data. When required data cannot be obtained, the answer is 412."))},
        "/cds-services/{service_id}/feedback": {"parameters": [service_id], "post": _operation(
            "feedback", "cds-hooks", "What the user did with the cards (CDS Hooks 2.0 §Feedback).",
            ("The feedback was stored.", _ref("FeedbackResult")), (400, 401, 404, 405, 413, 415, 503),
            body=("FeedbackRequest", FEEDBACK_EXAMPLE),
            description="Entries are stored once: sending the same entry again counts as a duplicate.")},
        "/healthz": {"get": _operation("healthz", "operations", "Liveness: the process answers. Open (no "
                                       "authentication).", ("Alive.", _ref("Health")), (405,), open_=True)},
        "/readyz": {"get": _operation(
            "readyz", "operations", "Readiness: the database is usable; the enabled trials and their definition "
            "versions. Open (no authentication).", ("Ready to answer hooks.", _ref("Readiness")), (405, 503),
            open_=True)},
        "/openapi.json": {"get": _operation(
            "openapi", "operations", "This document: the OpenAPI 3.1 description of the service. Open (no "
            "authentication).", ("The description.", {"type": "object"}), (405,), open_=True)},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Clinical trial eligibility — CDS Hooks 2.0 service", "version": __version__,
            "summary": f"A CDS Hooks 2.0 service answering the {HOOK} hook with clinical-trial eligibility cards.",
            "description": (
                f"Discovery, the `{SERVICE_ID}` CDS service (hook `{HOOK}`), its feedback endpoint and health "
                "checks, as described by CDS Hooks 2.0 (https://cds-hooks.hl7.org/2.0/).\n\nSuccessful answers are "
                "`application/json`. Every error is a FHIR R4 `OperationOutcome` sent as `application/fhir+json`; "
                "its diagnostics name the offending field but never repeat a submitted value (a request may carry "
                "an access token).\n\nAuthentication: CDS Clients authenticate with a signed JWT in the "
                "`Authorization: Bearer` header (CDS Hooks 2.0 §Trusting CDS Clients). `/healthz`, `/readyz` and "
                "`/openapi.json` are open; when JWT verification is not configured, no endpoint requires a token."),
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": [{"url": "/", "description": "The service's base URL ({baseUrl} in CDS Hooks)."}],
        "security": [{"cdsHooksJwt": []}],
        "tags": [{"name": "cds-hooks", "description": "CDS Hooks 2.0 endpoints."},
                 {"name": "operations", "description": "Health checks and this document (open)."}],
        "paths": paths,
        "components": {
            "securitySchemes": {"cdsHooksJwt": {
                "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                "description": "CDS Hooks 2.0 §Trusting CDS Clients: the CDS Client signs a short-lived JWT (iss = "
                               "the client, aud = the service endpoint, exp, iat, jti; signed with an asymmetric key "
                               "the service resolves from the client's JWK Set) and sends it as `Authorization: "
                               "Bearer <jwt>` on discovery, service and feedback calls. The service verifies it when "
                               "client JWT verification is configured."}},
            "responses": _error_responses(),
            "schemas": schemas,
        },
    }
