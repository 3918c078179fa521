"""Hook requests for tests, built from the demo patients (recorded as of 2026-06-15)."""

from __future__ import annotations

import copy
import uuid

from cds_service.demo import hook_request

SPEC_EXAMPLE = {  # CDS Hooks 2.0 §Calling a CDS Service, Example (verbatim but for indentation)
    "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
    "fhirServer": "http://hooks.smarthealthit.org:9080",
    "hook": "patient-view",
    "fhirAuthorization": {
        "access_token": "some-opaque-fhir-access-token",
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "user/Patient.read user/Observation.read",
        "subject": "cds-service4",
    },
    "context": {"userId": "Practitioner/example", "patientId": "1288992", "encounterId": "89284"},
    "prefetch": {
        "patientToGreet": {
            "resourceType": "Patient",
            "gender": "male",
            "birthDate": "1925-12-23",
            "id": "1288992",
            "active": True,
        }
    },
}


def demo(name: str = "eligible", **changes) -> dict:
    request = hook_request(name, hook_instance=str(uuid.uuid4()))
    request.update(changes)
    return request


def without(request: dict, *keys: str) -> dict:
    request = copy.deepcopy(request)
    for key in keys:
        request["prefetch"].pop(key)
    return request


def searchset(*resources, next_url: str | None = None) -> dict:
    bundle = {"resourceType": "Bundle", "type": "searchset",
              "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources]}
    if next_url:
        bundle["link"] = [{"relation": "next", "url": next_url}]
    return bundle
