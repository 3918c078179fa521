"""Diagnoses sent again and again: EHRs send a Condition for every encounter
diagnosis. A diagnosis rule reads them in record order and stops once three
decide; whatever the list, the decision must be the one reading everything gives."""

import datetime as dt
import random

import pytest

import cds_service.engine.rules.conditions as conditions
from cds_service.engine import Result, evaluate
from cds_service.engine.model import Role
from fhirbuild import condition, patient

AS_OF = dt.date(2026, 6, 15)
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED = "http://snomed.info/sct"


def run(trial, resources, criterion):
    return evaluate(trial, [patient(), *resources], AS_OF).criterion(criterion)


def run_reading_everything(trial, resources, criterion):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(conditions, "DECIDING_CONDITIONS_LISTED", 10**9)
        return run(trial, resources, criterion)


def decision(c):
    return c.result, c.why, c.reason


def encounter_diagnoses(n: int, code: str = "C50.912", **kw) -> list[dict]:
    return [condition(ICD, code, onset=None, recordedDate=str(AS_OF - dt.timedelta(days=7 * i)),
                      category=[{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category",
                                             "code": "encounter-diagnosis"}]}], **kw) for i in range(n)]


def test_three_years_of_encounter_diagnoses_are_not_all_read(nct06462092, monkeypatch):
    from cds_service.engine.record import PatientRecord
    validated, real_model = [], PatientRecord.model

    def counting(self, raw):
        validated.append(raw["id"])
        return real_model(self, raw)

    monkeypatch.setattr(PatientRecord, "model", counting)
    history = encounter_diagnoses(150)
    c = run(nct06462092, history, "breast-cancer")
    assert c.result is Result.PASS
    assert [e.role for e in c.evidence] == [Role.DECISIVE] * 3
    assert c.not_read == 147 and c.to_json()["notRead"] == 147
    assert len({v for v in validated if v.startswith("cond-")}) == 3  # only the three listed


def test_refuted_and_unconfirmed_ones_before_the_deciding_ones_are_listed(nct06462092):
    history = [condition(ICD, "C50.912", verification="refuted"),
               condition(ICD, "C50.912", verification="unconfirmed")] + encounter_diagnoses(40)
    c = run(nct06462092, history, "breast-cancer")
    everything = run_reading_everything(nct06462092, history, "breast-cancer")
    assert decision(c) == decision(everything) and c.result is Result.PASS
    assert c.reason == everything.reason
    assert any(e.note and "refuted" in e.note for e in c.evidence)
    assert c.not_read == 37


def test_an_exclusion_recorded_at_every_visit_fails_after_three(nct06462092):
    history = encounter_diagnoses(60, code="B20")
    c = run(nct06462092, history, "immunodeficiency")
    assert c.result is Result.FAIL and c.not_read == 57
    assert decision(c) == decision(run_reading_everything(nct06462092, history, "immunodeficiency"))


def test_a_resolved_lifelong_diagnosis_decides_and_stops_the_reading(nct06462092):
    # HIV is lifelong: recorded as resolved it still excludes, so it decides like an active one.
    history = [condition(ICD, "B20", clinical="resolved") for _ in range(5)] + [condition(ICD, "B20")]
    c = run(nct06462092, history, "immunodeficiency")
    assert c.result is Result.FAIL and c.not_read == 3
    assert decision(c) == decision(run_reading_everything(nct06462092, history, "immunodeficiency"))


@pytest.mark.parametrize("criterion, code, result", [("leptomeningeal-metastases", "C79.32", Result.PASS)])
def test_confirmed_but_resolved_ones_do_not_stop_the_reading(nct06462092, criterion, code, result):
    # The rule gives review for an inactive diagnosis: only an active one decides.
    history = [condition(ICD, code, clinical="resolved") for _ in range(5)] + [condition(ICD, code)]
    c = run(nct06462092, history, criterion)
    assert c.result is result and c.not_read == 0
    assert decision(c) == decision(run_reading_everything(nct06462092, history, criterion))


def test_when_none_decides_everything_is_read(nct06462092):
    history = encounter_diagnoses(30, verification="unconfirmed")
    c = run(nct06462092, history, "breast-cancer")
    assert c.result is Result.UNKNOWN and c.not_read == 0 and len(c.evidence) == 30


def _random_condition(rng: random.Random) -> dict:
    code = rng.choice([(ICD, "C50.912"), (ICD, "C50912"), (ICD, "C50.1"), (SNOMED, "254837009"),
                       (SNOMED, "363346000"), (ICD, "B20"), (ICD, "D84.9"), (ICD, "C79.32"), (ICD, "E11.9")])
    extra = {}
    if code == (SNOMED, "363346000") and rng.random() < 0.6:  # a general code, with or without a breast site
        extra["bodySite"] = [{"coding": [{"system": SNOMED, "code": rng.choice(["76752008", "80248007", "39607008"])}]}]
    onset = rng.choice([None, str(AS_OF - dt.timedelta(days=rng.randint(-5, 900))), "2024"])
    return condition(*code, clinical=rng.choice(["active", "active", "recurrence", "remission", "resolved", None]),
                     verification=rng.choice(["confirmed"] * 4 + ["unconfirmed", "provisional", "refuted",
                                                                   "entered-in-error", None]),
                     onset=onset, **extra)


@pytest.mark.parametrize("criterion", ["breast-cancer", "immunodeficiency", "leptomeningeal-metastases"])
@pytest.mark.parametrize("seed", range(40))
def test_random_diagnosis_lists_decide_as_reading_everything_does(nct06462092, criterion, seed):
    rng = random.Random(seed)
    history = [_random_condition(rng) for _ in range(rng.randint(1, 30))]
    c = run(nct06462092, history, criterion)
    everything = run_reading_everything(nct06462092, history, criterion)
    assert decision(c) == decision(everything)
    listed = [e.reference for e in c.evidence]
    full = [e.reference for e in everything.evidence]
    assert [r for r in full if r in listed] == listed  # a subset, in the same order
    assert c.not_read == len(full) - len(listed)
