"""The gold set: hand-written patients with the expected result of every
criterion, derived from the protocol reading (not from running the engine)."""

import datetime as dt
from pathlib import Path

import pytest
import yaml

from cds_service.engine import PatientRecord, evaluate
from cds_service.fhir.bundles import patient_groups_from_bytes

GOLD = Path(__file__).parent / "gold"
EXPECTATIONS = yaml.safe_load((GOLD / "expectations.yaml").read_text())
AS_OF = dt.date.fromisoformat(EXPECTATIONS["asOf"])
CASES = EXPECTATIONS["patients"]


def evaluate_file(trial, path: Path, as_of=AS_OF):
    groups = patient_groups_from_bytes(path.read_bytes())
    assert len(groups) == 1, f"{path.name} should hold one patient"
    return evaluate(trial, PatientRecord(groups[0].resources, groups[0].full_urls), as_of)


def test_gold_set_is_large_and_complete(nct06462092):
    assert len(CASES) >= 40
    criterion_ids = [c.id for c in nct06462092.definition.criteria]
    for case in CASES:
        assert sorted(case["criteria"]) == sorted(criterion_ids), case["file"]


@pytest.mark.parametrize("case", CASES, ids=[c["file"].removesuffix(".json") for c in CASES])
def test_gold_patient(case, nct06462092):
    evaluation = evaluate_file(nct06462092, GOLD / "patients" / case["file"])
    assert evaluation.patient == case["patient"]
    got = {c.id: c.result.value for c in evaluation.criteria}
    mismatches = {k: (v, got[k]) for k, v in case["criteria"].items() if got[k] != v}
    assert not mismatches, f"{case['description']}: (expected, got) {mismatches}"
    reasons = {c.id: c.why.value for c in evaluation.criteria if c.why is not None}
    assert reasons == (case.get("reasons") or {})
    assert evaluation.status.value == case["status"]
