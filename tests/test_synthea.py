"""Synthea R4 bundles (issue 13, item 10): real output of the Synthea generator,
read as files and through the hook, without errors.

The bundles are generated, not committed: tests/fixtures/synthea/generate.sh runs
Synthea 3.3.0 from Maven Central with fixed seeds (see its README). Locally these
tests skip when Java or Maven is missing; under CI=true they never skip."""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import responses

from cds_service.engine import PatientRecord, evaluate
from cds_service.fhir.bundles import patient_groups_from_bytes
from cds_service.fhir.needs import data_needs
from conftest import EHR

SYNTHEA = Path(__file__).parent / "fixtures" / "synthea"
AS_OF = dt.date(2026, 6, 15)  # Synthea's reference date in generate.sh
SERVICE = "/cds-services/trial-eligibility"


@pytest.fixture(scope="module")
def bundles() -> dict[str, list[Path]]:
    """The generated bundles by set (men, breast-cancer)."""
    missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Synthea needs Java and Maven ({' and '.join(missing)} missing)")
        pytest.skip(f"Synthea needs Java and Maven ({' and '.join(missing)} missing)")
    out = SYNTHEA / "target" / "bundles"
    run = subprocess.run(["bash", str(SYNTHEA / "generate.sh"), str(out)], capture_output=True, text=True,
                         timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    found = {name: sorted((out / name / "fhir").glob("*.json")) for name in ("men", "breast-cancer")}
    assert len(found["men"]) >= 1 and len(found["breast-cancer"]) == 2, found
    return found


def _all(bundles) -> list[Path]:
    return [path for paths in bundles.values() for path in paths]


def _patient_of(bundle: dict) -> dict:
    (patient,) = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"]
    return patient


def _evaluate(trial, path: Path):
    groups = patient_groups_from_bytes(path.read_bytes())
    assert len(groups) == 1, f"{path.name}: one patient per Synthea bundle"
    return evaluate(trial, PatientRecord(groups[0].resources, groups[0].full_urls), AS_OF)


def test_every_synthea_bundle_evaluates_with_a_result_and_reason_for_each_criterion(bundles, nct06462092):
    criterion_ids = [c.id for c in nct06462092.definition.criteria]
    deceased = 0
    for path in _all(bundles):
        bundle = json.loads(path.read_bytes())
        assert bundle["type"] == "transaction"  # Synthea's shape: urn:uuid fullUrls and references
        patient = _patient_of(bundle)
        evaluation = _evaluate(nct06462092, path)
        assert evaluation.patient == patient["id"], path.name
        assert [c.id for c in evaluation.criteria] == criterion_ids, path.name
        for criterion in evaluation.criteria:
            assert criterion.result is not None and criterion.reason.strip(), (path.name, criterion.id)
        out = evaluation.to_json()
        assert json.loads(json.dumps(out))["patient"] == patient["id"]
        if "deceasedDateTime" in patient:
            deceased += 1
            assert evaluation.criterion("alive").result.value == "fail", path.name
    assert deceased >= 1  # the generated set holds a dead patient (Synthea exports them)


def test_synthea_men_are_not_asked_about_pregnancy(bundles, nct06462092):
    for path in bundles["men"]:
        evaluation = _evaluate(nct06462092, path)
        assert evaluation.criterion("pregnancy-breastfeeding").result.value == "not-applicable", path.name
        assert evaluation.criterion("contraception").result.value == "not-applicable", path.name


def test_synthea_breast_cancer_is_read_as_the_breast_primary(bundles, nct06462092):
    # Synthea codes breast cancer as SNOMED 254837009: a primary breast cancer whatever its
    # clinicalStatus. Synthea never records leptomeningeal disease, so LM fails and no card is due.
    for path in bundles["breast-cancer"]:
        evaluation = _evaluate(nct06462092, path)
        assert evaluation.criterion("breast-cancer").result.value == "pass", path.name
        assert evaluation.criterion("leptomeningeal-metastases").result.value == "fail", path.name
        assert evaluation.status.value == "ineligible", path.name


# -- through the hook ------------------------------------------------------------

def _as_stored(bundle: dict) -> list[dict]:
    """The bundle's resources as a FHIR server stores a transaction: each urn:uuid
    reference rewritten to the Type/id it was given (Synthea's ids are those uuids)."""
    targets = {e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle["entry"]}

    def rewrite(value):
        if isinstance(value, dict):
            return {k: (targets.get(v, v) if k == "reference" and isinstance(v, str) else rewrite(v))
                    for k, v in value.items()}
        if isinstance(value, list):
            return [rewrite(v) for v in value]
        return value

    return [rewrite(copy.deepcopy(e["resource"])) for e in bundle["entry"]]


def _hook_request(trials, resources: list[dict]) -> dict:
    """A patient-view call with every prefetch key the service asks for, filled from the
    patient's resources as the EHR's searches would return them."""
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    prefetch: dict = {}
    for need in data_needs(trials.values()):
        selected = [r for r in resources if need.selects(r)]
        if need.key == "patient":
            prefetch["patient"] = selected[0]
            continue
        prefetch[need.key] = {"resourceType": "Bundle", "type": "searchset", "total": len(selected), "entry": [
            {"fullUrl": f"{EHR}/{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": "match"}}
            for r in selected]}
    return {"hookInstance": str(uuid.uuid4()), "hook": "patient-view", "fhirServer": EHR,
            "fhirAuthorization": {"access_token": "tok-3f9a1c-never-log-me", "token_type": "Bearer",
                                  "expires_in": 300, "scope": "user/Patient.read user/Observation.read "
                                  "user/Condition.read user/AllergyIntolerance.read", "subject": "cds-service"},
            "context": {"userId": "Practitioner/synthea-test", "patientId": patient["id"]}, "prefetch": prefetch}


@responses.activate  # every prefetch key is filled: a call to the EHR would fail the test
def test_a_hook_call_with_each_synthea_patient_prefetched_answers_200(bundles, client, trials):
    for path in _all(bundles):
        request = _hook_request(trials, _as_stored(json.loads(path.read_bytes())))
        response = client.post(SERVICE, data=json.dumps(request), content_type="application/json")
        body = response.get_json()
        assert response.status_code == 200, (path.name, body)
        assert isinstance(body["cards"], list), path.name
        for card in body["cards"]:
            evaluation = card["extension"]["trial-eligibility"]
            assert evaluation["patient"] == request["context"]["patientId"], path.name
    assert len(responses.calls) == 0
