"""Long result histories: a lab rule reads results newest first and stops once
the latest usable result (and any at the same time) is read. Whatever the history, the decision must be the one reading everything
gives."""

import datetime as dt
import random

import pytest

import cds_service.engine.rules.readers as readers
import cds_service.engine.rules.labs as labs
from cds_service.engine import PatientRecord, Result, Why, evaluate
from cds_service.engine.model import Role
from fhirbuild import lab, patient

AS_OF = dt.date(2026, 6, 15)
ANC = "751-8"


def run(trial, resources, criterion="neutrophils"):
    return evaluate(trial, [patient(), *resources], AS_OF).criterion(criterion)


def read_everything(ctx, codes, usable):
    """The reference: every result read, as before results were read newest first."""
    return readers.LatestResults(*readers.read_results(ctx, codes))


def run_reading_everything(trial, resources, criterion="neutrophils"):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(labs, "read_latest_results", read_everything)
        return run(trial, resources, criterion)


def decision(c):
    decisive = [e.to_json() for e in c.evidence if e.role is Role.DECISIVE]
    return c.result, c.why, c.reason, c.order, decisive


def daily_history(days: int, *, start: dt.date = AS_OF, value=lambda i: 2.0 + (i % 5) / 10) -> list[dict]:
    return [lab(ANC, value(i), "10*3/uL", f"{start - dt.timedelta(days=i)}T07:30:00-05:00") for i in range(days)]


def test_years_of_daily_counts_read_only_the_latest(nct06462092):
    history = daily_history(400)
    random.Random(7).shuffle(history)  # record order says nothing about time
    c = run(nct06462092, history)
    assert c.result is Result.PASS
    assert [e.role for e in c.evidence] == [Role.DECISIVE]
    assert c.evidence[0].date.startswith(AS_OF.isoformat())
    assert c.not_read == 399 and c.to_json()["notRead"] == 399
    assert decision(c) == decision(run_reading_everything(nct06462092, history))


def test_only_a_handful_of_results_are_validated(nct06462092, monkeypatch):
    validated = []
    real = PatientRecord.model

    def counting(self, raw):
        validated.append(raw["id"])
        return real(self, raw)

    monkeypatch.setattr(PatientRecord, "model", counting)
    run(nct06462092, daily_history(300))
    assert len([v for v in validated if v.startswith("obs-")]) == 1


def test_newer_results_that_do_not_count_are_skipped_and_listed(nct06462092):
    newest = f"{AS_OF}T09:00:00Z"
    skipped = [lab(ANC, 0.5, "10*3/uL", newest, status="entered-in-error"),
               lab(ANC, 0.5, "10*3/uL", f"{AS_OF + dt.timedelta(days=3)}T09:00:00Z"),  # after the evaluation date
               lab(ANC, None, None, newest,  # no value, and the lab says why: a known absence
                   dataAbsentReason={"coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
                                                 "code": "error", "display": "Error"}]}),
               lab(ANC, 0.5, "10*3/uL", newest, valueString="x")]  # two values: not valid FHIR
    history = skipped + daily_history(50, start=AS_OF - dt.timedelta(days=2))
    c = run(nct06462092, history)
    assert c.result is Result.PASS
    assert c.evidence[0].role is Role.DECISIVE
    assert c.evidence[0].date.startswith((AS_OF - dt.timedelta(days=2)).isoformat())
    notes = [e.note for e in c.evidence if e.role is Role.IGNORED]
    assert len(notes) == 4 and any("entered-in-error" in n for n in notes)
    assert any("after the evaluation date" in n for n in notes) and any("no numeric value" in n for n in notes)
    assert any("not valid FHIR" in n for n in notes)
    assert c.not_read == 49
    assert decision(c) == decision(run_reading_everything(nct06462092, history))


def test_results_at_the_latest_time_are_all_read(nct06462092):
    at = f"{AS_OF - dt.timedelta(days=1)}T08:00:00Z"
    same_time = [lab(ANC, 2.0, "10*3/uL", at), lab(ANC, 2000, "/mm3", at),
                 lab(ANC, 0.9, "10*3/uL", "2026-06-14T03:00:00-05:00")]  # the same instant, written otherwise
    history = daily_history(30, start=AS_OF - dt.timedelta(days=2)) + same_time
    c = run(nct06462092, history)
    assert (c.result, c.why) == (Result.UNKNOWN, Why.CONFLICTING_RESULTS)
    assert [e.role for e in c.evidence] == [Role.DECISIVE] * 3
    assert c.not_read == 30
    assert decision(c) == decision(run_reading_everything(nct06462092, history))


def test_a_stale_latest_result_is_still_found(nct06462092):
    history = daily_history(100, start=AS_OF - dt.timedelta(days=60))
    c = run(nct06462092, history)
    assert (c.result, c.why) == (Result.UNKNOWN, Why.STALE)
    assert c.not_read == 99
    assert decision(c) == decision(run_reading_everything(nct06462092, history))


def test_undated_results_are_all_read_and_never_decide(nct06462092):
    history = [lab(ANC, 0.2, "10*3/uL", date=None) for _ in range(3)] + daily_history(20)
    c = run(nct06462092, history)
    assert c.result is Result.PASS
    assert sum(1 for e in c.evidence if e.note and "no effective date" in e.note) == 3
    assert decision(c) == decision(run_reading_everything(nct06462092, history))


def test_a_date_the_ranking_misreads_falls_back_to_reading_everything(nct06462092, monkeypatch):
    history = daily_history(40)
    expected = run_reading_everything(nct06462092, history)
    # A ranking that puts the oldest result first: its validated date disagrees, so all is read.
    real = readers.raw_observation_rank
    future = readers.instant_rank(dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc))
    monkeypatch.setattr(readers, "raw_observation_rank", lambda raw: future if raw is history[-1] else real(raw))
    c = run(nct06462092, history)
    assert decision(c) == decision(expected)
    assert c.not_read == 0 and len(c.evidence) == 40


def _random_result(rng: random.Random, i: int) -> dict:
    day = AS_OF - dt.timedelta(days=rng.randint(-3, 40))
    shape = rng.random()
    if shape < 0.45:  # few distinct times, so that results often share the latest one
        date = {"effectiveDateTime": f"{day}T{rng.choice(['08', '13'])}:00:00{rng.choice(['Z', '+00:00'])}"}
    elif shape < 0.6:
        date = {"effectiveDateTime": str(day)}
    elif shape < 0.68:
        date = {"effectiveDateTime": str(day)[:7]}  # a month
    elif shape < 0.76:
        date = {"effectivePeriod": {"start": f"{day}T06:00:00Z", "end": f"{day}T07:00:00Z"}}
    elif shape < 0.82:
        date = {"effectiveInstant": f"{day}T06:00:00.123+01:00"}
    elif shape < 0.88:
        date = {"effectiveDateTime": f"{day}T06:00:00"}  # no offset: not valid FHIR
    elif shape < 0.92:
        date = {"effectiveDateTime": f"{day}T06:00"}  # no seconds: read through the FHIR type
    else:
        date = {}
    status = rng.choice(["final"] * 6 + ["amended", "preliminary", "entered-in-error", "cancelled"])
    value = None if rng.random() < 0.1 else rng.choice([0.9, 1.4, 1.5, 1.6, 2.5, 1200, 1600])
    unit = "/mm3" if value is not None and value > 100 else "10*3/uL"
    obs = lab(ANC, value, unit if value is not None else None, date=None, status=status, **date)
    obs["id"] = f"h{i}"
    return obs


@pytest.mark.parametrize("seed", range(80))
def test_random_histories_decide_as_reading_everything_does(nct06462092, seed):
    rng = random.Random(seed)
    history = [_random_result(rng, i) for i in range(rng.randint(1, 40))]
    c = run(nct06462092, history)
    everything = run_reading_everything(nct06462092, history)
    assert decision(c) == decision(everything)
    # What is listed is what reading everything lists, minus older results, in the same order.
    listed = [e.reference for e in c.evidence]
    full = [e.reference for e in everything.evidence]
    assert [r for r in full if r in listed] == listed
    assert len(full) - len(listed) == c.not_read


TIMES = ["2026-06-08T08:00:00Z", "2026-06-08T08:00:00.5-05:00", "2026-06-08T08:00:00.123456789+01:00",
         "2026-06-08T08:00:00-00:00", "2026-06-08T08:00:00+14:00", "2026-06-08T08:00:00+05:60",
         "2026-06-08T24:00:00Z", "2026-06-08T23:59:60Z", "2026-02-30T08:00:00Z", "2024-02-29T23:59:59+13:59",
         "2026-06-08T08:00Z", "2026-06-08T08:00:00", "2026-06-08", "2026-06", "2026", "26-06-08", "", "soon"]


@pytest.mark.parametrize("value", TIMES)
@pytest.mark.parametrize("element", ["effectiveDateTime", "effectiveInstant"])
def test_ranking_time_is_the_validated_models_time(element, value):
    from cds_service.engine.dates import parse_fhir_date
    from cds_service.engine.rules.base import observation_date
    from cds_service.engine.rules.readers import _date_type, instant_rank, raw_observation_rank

    try:
        date = parse_fhir_date(_date_type(element).validate_python(value))
    except ValueError:
        date = None
    expected = date.sort_key() if date is not None else None  # a leap second stays text: undated
    assert raw_observation_rank({element: value}) == (instant_rank(expected) if expected is not None else None)
    if expected is not None:  # and the whole resource agrees
        from fhir.resources.R4B.observation import Observation
        model = Observation.model_validate({"resourceType": "Observation", "status": "final",
                                            "code": {"text": "x"}, element: value})
        assert observation_date(model).sort_key() == expected


def test_rank_orders_and_equates_instants_as_the_instants_do():
    from cds_service.engine.rules.readers import instant_rank

    rng = random.Random(7)
    offsets = [dt.timezone(dt.timedelta(minutes=m)) for m in (-720, -300, 0, 60, 330, 840)]
    instants = []
    for _ in range(300):
        base_time = dt.datetime(rng.choice([2, 1969, 1970, 2026, 9998]), rng.randint(1, 12), rng.randint(1, 28),
                                rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59),
                                rng.choice([0, 1, 999999]), tzinfo=dt.timezone.utc)
        instants.append(base_time.astimezone(rng.choice(offsets)))
        instants.append((base_time + dt.timedelta(microseconds=rng.choice([0, 1, -1]))).astimezone(rng.choice(offsets)))
    for a, b in zip(instants, instants[1:]):
        assert (instant_rank(a) < instant_rank(b)) == (a < b)
        assert (instant_rank(a) == instant_rank(b)) == (a == b)
