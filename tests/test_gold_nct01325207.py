"""The NCT01325207 gold set (tests/gold/nct01325207/, tests/gold/nct01325207.yaml): hand-written
patients with the expected result of every criterion, derived from the trial's written reading, not
from running the engine. A case marked `pendingEngine: "<why>"` is a strict xfail: un-mark it the
moment the engine gets it right. To see what the engine still gets wrong, case by case:
    pytest tests/test_gold_nct01325207.py --runxfail

Also: patients evaluated against both trials at once, through the service."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml

from test_gold import _differences, _status_of, evaluate_file

GOLD = Path(__file__).parent / "gold"
SET = GOLD / "nct01325207"
EXPECTATIONS = yaml.safe_load((GOLD / "nct01325207.yaml").read_text(encoding="utf-8"))
AS_OF = dt.date.fromisoformat(EXPECTATIONS["asOf"])
CASES = EXPECTATIONS["patients"]


@pytest.fixture(scope="module")
def nct01325207(trials):
    return trials["NCT01325207"]


def _param(case):
    pending = case.get("pendingEngine")
    marks = [pytest.mark.xfail(strict=True, reason=pending)] if pending else []
    return pytest.param(case, id=case["file"].removesuffix(".json"), marks=marks)


def test_gold_set_is_large_and_complete(nct01325207):
    assert EXPECTATIONS["trial"] == nct01325207.definition.nct_id
    assert len(CASES) >= 40
    criterion_ids = [c.id for c in nct01325207.definition.criteria]
    files = sorted(p.name for p in SET.glob("*.json"))
    assert files == sorted(c["file"] for c in CASES), "every patient file has exactly one case"
    assert len({c["patient"] for c in CASES}) == len(CASES)
    keys = {"file", "patient", "description", "status", "criteria", "reasons", "orders", "pendingEngine"}
    for case in CASES:
        criteria = case["criteria"]
        assert list(criteria) == criterion_ids, case["file"]  # every criterion, in the trial's order
        assert case["description"].strip() and set(case) <= keys, case["file"]
        # the status follows from the criteria; a typed reason belongs to an unknown or review, an order to an unknown
        assert case["status"] == _status_of(set(criteria.values())), case["file"]
        misplaced = [c for c in case.get("reasons") or {} if criteria[c] not in ("unknown", "review")] + \
                    [c for c in case.get("orders") or {} if criteria[c] != "unknown"]
        assert not misplaced, (case["file"], misplaced)


def test_gold_patient_ids_differ_from_the_first_trials():
    """The harness PUTs every gold set with its stable ids into one server: no id may be shared."""
    first = {c["patient"] for name in ("expectations.yaml", "real-shapes.yaml")
             for c in yaml.safe_load((GOLD / name).read_text(encoding="utf-8"))["patients"]}
    assert not first & {c["patient"] for c in CASES}


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_gold_patient(case, nct01325207):
    evaluation = evaluate_file(nct01325207, SET / case["file"], AS_OF)
    differences = _differences(case, evaluation)
    assert not differences, f"{case['file']}: {case['description']}\n  " + "\n  ".join(differences)
