"""Answers remembered by the identity of validated models (engine/memo.py) never
change an evaluation: every gold and demo patient evaluated with every memo warm
(from other patients and other dates) gives exactly what it gives with none."""

import datetime as dt
import gc
from pathlib import Path

import pytest

import cds_service.demo
import cds_service.engine.rules as rules_package
from cds_service.engine import PatientRecord, evaluate, memo
from cds_service.engine.memo import remembered_by_identity
from cds_service.fhir.bundles import patient_groups_from_bytes

GOLD = Path(__file__).parent / "gold" / "patients"
DATES = (dt.date(2026, 6, 15), dt.date(2026, 11, 27))


class Box:
    def __init__(self, value):
        self.value = value


def test_an_answer_is_kept_for_the_same_objects_only():
    calls = []

    @remembered_by_identity
    def read(box, scale):
        calls.append(box)
        return box.value * scale

    a, b = Box(2), Box(2)
    assert read(a, 10) == read(a, 10) == 20 and len(calls) == 1
    assert read(b, 10) == 20 and len(calls) == 2  # equal content, another object: computed
    assert read(a, 3) == 6 and len(calls) == 3


def test_an_id_is_not_reused_while_its_answer_is_kept():
    @remembered_by_identity
    def read(box):
        return box.value

    for i in range(200):  # without the entry holding its objects, CPython soon reuses a freed id
        assert read(Box(i)) == i
        gc.collect(0)


def test_the_memo_starts_afresh_when_full(monkeypatch):
    monkeypatch.setattr(memo, "IDENTITY_MEMO_SIZE", 5)

    @remembered_by_identity
    def read(box):
        return box.value

    boxes = [Box(i) for i in range(12)]
    for i, box in enumerate(boxes):
        assert read(box) == i
        assert len(read.entries) <= 5


def _remembered_functions():
    """(module, name, function) of every remembered function as the rule modules see it."""
    return memo.bindings(rules_package)


def _charts():
    for path in sorted(GOLD.glob("*.json")):
        yield from patient_groups_from_bytes(path.read_bytes())
    yield from patient_groups_from_bytes((Path(cds_service.demo.__file__).parent / "patients.json").read_bytes())


def _all_evaluations(trial, charts):
    return [evaluate(trial, PatientRecord(g.resources, g.full_urls), day).to_json()
            for day in DATES for g in charts]


def test_remembered_answers_never_change_an_evaluation(nct06462092, monkeypatch):
    charts = list(_charts())
    assert len(charts) >= 100
    remembered = _remembered_functions()
    assert {name for _, name, _ in remembered} >= {"matching_coding", "observation_date", "condition_date",
                                                  "verification", "clinical_status", "observation_rank", "_judge"}
    # Warm: everything evaluated once in reverse order, then in order (answers from other charts and dates).
    list(reversed(_all_evaluations(nct06462092, charts[::-1])))
    warm = _all_evaluations(nct06462092, charts)
    assert all(fn.entries for _, _, fn in remembered if fn.__module__.endswith((".base", ".labs")))
    for module, name, fn in remembered:
        monkeypatch.setattr(module, name, fn.__wrapped__)
    plain = _all_evaluations(nct06462092, charts)
    assert warm == plain


@pytest.mark.parametrize("drop", [0, 1])
def test_a_key_missing_an_object_would_be_caught(nct06462092, monkeypatch, drop):
    """The check above fails when matching_coding's answers are kept by one of its two objects only."""
    from cds_service.engine.rules import base

    original = base.matching_coding.__wrapped__
    kept = {}

    def by_one_object(concept, codes):
        key = id((concept, codes)[drop])
        if key not in kept:
            kept[key] = ((concept, codes), original(concept, codes))
        return kept[key][1]

    charts = list(_charts())
    plain = _all_evaluations(nct06462092, charts)
    for module, name, fn in _remembered_functions():
        if name == "matching_coding":
            monkeypatch.setattr(module, name, by_one_object)
    assert _all_evaluations(nct06462092, charts) != plain


def test_validations_are_counted_across_a_cleared_memo():
    # The worker's freezer (hooks/server.py) acts on this count; cache_info() would restart at a clear.
    from cds_service.engine.validation import validate_serialized, validations_done
    from fhirbuild import lab

    raw = lab("751-8", 2.4, "10*3/uL", "2026-06-10T08:00:00Z", id="counted-once")
    before = validations_done()
    PatientRecord([raw]).model(raw)
    validate_serialized.cache_clear()
    PatientRecord([raw]).model(raw)
    PatientRecord([raw]).model(raw)  # a hit: not counted
    assert validations_done() == before + 2
