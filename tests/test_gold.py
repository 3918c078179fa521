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


# -- real-world shapes (issue 13) ----------------------------------------------
# Patients in the shapes EHRs, lab interfaces and HIEs send (tests/gold/real-shapes/),
# expectations from the written decisions. A case marked `pendingEngine: true` is a
# strict xfail: it must be un-marked the moment the engine gets it right. To see what
# the engine still gets wrong, case by case (expected vs got):
#   pytest tests/test_gold.py -k real_shapes --runxfail

REAL = yaml.safe_load((GOLD / "real-shapes.yaml").read_text(encoding="utf-8"))
REAL_AS_OF = dt.date.fromisoformat(REAL["asOf"])
REAL_CASES = REAL["patients"]
PENDING = pytest.mark.xfail(strict=True, reason="issue 13: engine not yet reading this shape")


def _real_param(case):
    pending = case.get("pendingEngine")
    marks = [pytest.mark.xfail(strict=True, reason=pending) if isinstance(pending, str) else PENDING] \
        if pending else []
    return pytest.param(case, id=case["file"].removesuffix(".json"), marks=marks)


def _status_of(results) -> str:
    if "fail" in results:
        return "ineligible"
    return "needs-data" if "unknown" in results else "eligible"


def test_real_shapes_section_is_large_and_complete(nct06462092):
    assert REAL["trial"] == nct06462092.definition.nct_id
    assert len(REAL_CASES) >= 40
    criterion_ids = [c.id for c in nct06462092.definition.criteria]
    files = sorted(p.name for p in (GOLD / "real-shapes").glob("*.json"))
    assert files == sorted(c["file"] for c in REAL_CASES), "every patient file has exactly one case"
    assert len({c["patient"] for c in REAL_CASES} | {c["patient"] for c in CASES}) == len(REAL_CASES) + len(CASES)
    for case in REAL_CASES:
        name = case["file"]
        assert sorted(case["criteria"]) == sorted(criterion_ids), name
        assert case["targets"] and set(case["targets"]) <= set(criterion_ids), name
        assert case["description"].strip(), name
        # the status is the trial's rule applied to the criteria, and every typed reason or order
        # belongs to a criterion that is unknown (or, for a reason, a review a record's text prompted)
        assert case["status"] == _status_of(set(case["criteria"].values())), name
        for cid in case.get("reasons") or {}:
            assert case["criteria"][cid] in ("unknown", "review"), (name, cid)
        for cid in case.get("orders") or {}:
            assert case["criteria"][cid] == "unknown", (name, cid)
        assert set(case) <= {"file", "patient", "description", "targets", "status", "criteria", "reasons", "orders",
                             "pendingEngine"}, name


def _differences(case, evaluation) -> list[str]:
    """Expected vs got, one line per difference."""
    out = []
    if evaluation.patient != case["patient"]:
        out.append(f"patient: expected {case['patient']!r}, got {evaluation.patient!r}")
    got = {c.id: c for c in evaluation.criteria}
    for cid, expected in case["criteria"].items():
        result = got[cid]
        if result.result.value != expected:
            out.append(f"{cid}: expected {expected}, got {result.result.value} ({result.reason})")
    reasons = {c.id: c.why.value for c in evaluation.criteria if c.why is not None}
    for cid in sorted(set(reasons) | set(case.get("reasons") or {})):
        expected = (case.get("reasons") or {}).get(cid)
        if reasons.get(cid) != expected:
            out.append(f"{cid} reason: expected {expected}, got {reasons.get(cid)}")
    for cid, key in (case.get("orders") or {}).items():
        order = got[cid].order
        if order is None or order.key != key:
            out.append(f"{cid} order: expected {key}, got {order.key if order else None}")
    if evaluation.status.value != case["status"]:
        out.append(f"status: expected {case['status']}, got {evaluation.status.value}")
    return out


@pytest.mark.parametrize("case", [_real_param(c) for c in REAL_CASES])
def test_real_shapes_patient(case, nct06462092):
    evaluation = evaluate_file(nct06462092, GOLD / "real-shapes" / case["file"], REAL_AS_OF)
    differences = _differences(case, evaluation)
    assert not differences, f"{case['file']}: {case['description']}\n  " + "\n  ".join(differences)


# -- evaluating only until a criterion fails (the service, when ineligible trials show no card) --

@pytest.mark.parametrize("case", CASES, ids=[c["file"].removesuffix(".json") for c in CASES])
def test_evaluating_until_ineligible_gives_the_same_status(case, trials):
    groups = patient_groups_from_bytes((GOLD / "patients" / case["file"]).read_bytes())
    record = PatientRecord(groups[0].resources, groups[0].full_urls)
    for trial in trials.values():
        full = evaluate(trial, record, AS_OF)
        partial = evaluate(trial, record, AS_OF, until_ineligible=True)
        assert partial.status is full.status
        assert partial.criteria == full.criteria[:len(partial.criteria)]  # the same results, in order
        stopped = len(partial.criteria) < len(full.criteria)
        assert partial.complete is not stopped and (not stopped or partial.criteria[-1].result.value == "fail")
        if full.status.value != "ineligible":
            assert partial.complete and partial.to_json() == full.to_json()


def test_a_her2_negative_patient_is_read_against_the_her2_positive_trial_only_until_her2(trials):
    groups = patient_groups_from_bytes((GOLD / "patients" / "g001-baseline-eligible.json").read_bytes())
    partial = evaluate(trials["NCT01325207"], PatientRecord(groups[0].resources, groups[0].full_urls), AS_OF,
                       until_ineligible=True)
    assert [c.id for c in partial.criteria] == ["alive", "breast-cancer", "her2-positive"]
    assert partial.status.value == "ineligible" and partial.to_json()["complete"] is False
